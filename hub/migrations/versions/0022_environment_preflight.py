"""Environments: the preflight policy — every deployment queued here needs a preflight plan
of its release passed on each target agent within N hours (docs/rollouts.md, "Preflight
policy of an environment").

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preflight_within_h", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("preflight_within_h")
