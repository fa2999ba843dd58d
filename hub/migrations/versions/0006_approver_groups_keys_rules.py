"""Approver groups, personal approver keys, per-channel approval rules, signed approvals.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("added_at", _DATETIME, nullable=False),
        sa.Column("added_by", sa.String(length=140), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_groups_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_groups")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_user_groups_user_id")),
    )
    with op.batch_alter_table("user_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_groups_user_id"), ["user_id"], unique=False)
    op.create_table(
        "approver_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("public", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("added_at", _DATETIME, nullable=False),
        sa.Column("added_by", sa.String(length=140), nullable=False),
        sa.Column("revoked_at", _DATETIME, nullable=True),
        sa.Column("revoked_by", sa.String(length=140), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_approver_keys_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approver_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_approver_keys_key_id")),
    )
    with op.batch_alter_table("approver_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approver_keys_user_id"), ["user_id"], unique=False)
    op.create_table(
        "approval_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("min_groups", sa.Integer(), nullable=False),
        sa.Column("updated_at", _DATETIME, nullable=False),
        sa.Column("updated_by", sa.String(length=140), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_approval_rules_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_rules")),
        sa.UniqueConstraint(
            "environment_id", "channel", name=op.f("uq_approval_rules_environment_id")
        ),
    )
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("approval_groups", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("approval_min_groups", sa.Integer(), nullable=False, server_default="1")
        )
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.alter_column("approval_groups", server_default=None)
        batch_op.alter_column("approval_min_groups", server_default=None)
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("envelope", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("expires_at", _DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("key_id")
        batch_op.drop_column("envelope")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("approval_min_groups")
        batch_op.drop_column("approval_groups")
    op.drop_table("approval_rules")
    with op.batch_alter_table("approver_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approver_keys_user_id"))
    op.drop_table("approver_keys")
    with op.batch_alter_table("user_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_groups_user_id"))
    op.drop_table("user_groups")
