"""An index on agents.status: the live server's push loop asks four times a second which
agents are no longer enrolled (revoked), and with it that costs the agents not enrolled, not
a scan of every agent (1.5 ms per poll at 10,000 agents; docs/benchmarks.md, "Session 9:
10,000 idle agents").

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.create_index(batch_op.f("ix_agents_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_status"))
