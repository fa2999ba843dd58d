"""Maintenance windows and change freezes, hub overrides, and a deployment's hold.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=True),
        sa.Column("product_id", sa.Integer(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.Column("ended_at", _DATETIME, nullable=True),
        sa.Column("ended_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"],
            name=op.f("fk_policy_rules_environment_id_environments"),
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_policy_rules_product_id_products"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_rules")),
    )
    with op.batch_alter_table("policy_rules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_policy_rules_environment_id"), ["environment_id"], unique=False
        )
    op.create_table(
        "deployment_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", _DATETIME, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("confirmed_by", sa.String(length=64), nullable=True),
        sa.Column("confirmed_at", _DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"],
            name=op.f("fk_deployment_overrides_deployment_id_deployments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_overrides")),
    )
    with op.batch_alter_table("deployment_overrides", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_overrides_deployment_id"), ["deployment_id"],
            unique=False,
        )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hold_until", _DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("hold_until")
    with op.batch_alter_table("deployment_overrides", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_overrides_deployment_id"))
    op.drop_table("deployment_overrides")
    with op.batch_alter_table("policy_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_rules_environment_id"))
    op.drop_table("policy_rules")
