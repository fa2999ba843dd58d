"""Channels: the promotion rule's preflight gate — a plan of the release passed on every agent
subscribed to the channel within N hours (docs/governance.md, docs/rollouts.md).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preflight_within_h", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.drop_column("preflight_within_h")
