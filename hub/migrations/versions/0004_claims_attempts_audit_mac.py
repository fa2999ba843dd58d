"""Export claims and intents, deployment attempts, and a MAC column on audit events.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", _DATETIME, nullable=True))
        batch_op.add_column(sa.Column("export_intent", sa.JSON(), nullable=True))
    op.create_table(
        "deployment_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("result_seq", sa.Integer(), nullable=False),
        sa.Column("result_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", _DATETIME, nullable=True),
        sa.Column("finished_at", _DATETIME, nullable=True),
        sa.Column("imported_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_attempts_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_attempts")),
        sa.UniqueConstraint(
            "deployment_id", "attempt", name=op.f("uq_deployment_attempts_deployment_id")
        ),
    )
    with op.batch_alter_table("deployment_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_attempts_deployment_id"), ["deployment_id"], unique=False
        )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("mac")
    with op.batch_alter_table("deployment_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_attempts_deployment_id"))
    op.drop_table("deployment_attempts")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("export_intent")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("claimed_by")
