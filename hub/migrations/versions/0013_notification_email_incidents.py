"""Notifications: e-mail targets beside webhooks, per-environment thresholds for the
agent-offline and result-overdue events, and the incidents the scheduler opened.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notification_webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False,
                                      server_default="webhook"))
    op.create_table(
        "notification_thresholds",
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("agent_offline_s", sa.Integer(), nullable=True),
        sa.Column("result_overdue_s", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"],
            name=op.f("fk_notification_thresholds_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("environment_id", name=op.f("pk_notification_thresholds")),
    )
    op.create_table(
        "notification_incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("opened_at", _DATETIME, nullable=False),
        sa.Column("cleared_at", _DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"],
            name=op.f("fk_notification_incidents_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_incidents")),
    )
    with op.batch_alter_table("notification_incidents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_incidents_kind_subject"), ["kind", "subject"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("notification_incidents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_incidents_kind_subject"))
    op.drop_table("notification_incidents")
    op.drop_table("notification_thresholds")
    with op.batch_alter_table("notification_webhooks", schema=None) as batch_op:
        batch_op.drop_column("kind")
