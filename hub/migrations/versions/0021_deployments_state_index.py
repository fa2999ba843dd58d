"""An index on deployments.state: the live server's push loop asks four times a second for
the deployments waiting (queued, or exporting without a claim), and with it that costs what
is waiting, not the whole history of deployments (docs/benchmarks.md, "10,000 agents").

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_state"))
