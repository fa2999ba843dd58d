"""The hub's own timed work: scheduled exports of an environment to a file share on a cron
(hub.services.hub_schedules).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("target_dir", sa.Text(), nullable=False),
        sa.Column("cron", sa.String(length=120), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.Column("removed_at", _DATETIME, nullable=True),
        sa.Column("last_fire_at", _DATETIME, nullable=True),
        sa.Column("last_result", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"],
            name=op.f("fk_hub_schedules_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_schedules")),
    )


def downgrade() -> None:
    op.drop_table("hub_schedules")
