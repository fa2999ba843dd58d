"""Preflight plans: the plan bundles the hub made (their id is the plan sequence) and each
agent's signed outcome (docs/rollouts.md, "Preflight bundles").

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_bundles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=True),
        sa.Column("bundle_id", sa.String(length=128), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.Column("expires_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name=op.f("fk_plan_bundles_release_id_releases")),
        sa.ForeignKeyConstraint(["environment_id"], ["environments.id"],
                                name=op.f("fk_plan_bundles_environment_id_environments")),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"],
                                name=op.f("fk_plan_bundles_agent_id_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_bundles")),
        sa.UniqueConstraint("bundle_id", name=op.f("uq_plan_bundles_bundle_id")),
    )
    with op.batch_alter_table("plan_bundles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_bundles_release_id"), ["release_id"],
                              unique=False)
    op.create_table(
        "plan_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("result_seq", sa.Integer(), nullable=False),
        sa.Column("received_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plan_bundles.id"],
                                name=op.f("fk_plan_outcomes_plan_id_plan_bundles")),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name=op.f("fk_plan_outcomes_release_id_releases")),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"],
                                name=op.f("fk_plan_outcomes_agent_id_agents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_outcomes")),
        sa.UniqueConstraint("plan_id", "agent_id", name=op.f("uq_plan_outcomes_plan_id")),
    )
    with op.batch_alter_table("plan_outcomes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_outcomes_plan_id"), ["plan_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_plan_outcomes_release_id"), ["release_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_plan_outcomes_agent_id"), ["agent_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("plan_outcomes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_outcomes_agent_id"))
        batch_op.drop_index(batch_op.f("ix_plan_outcomes_release_id"))
        batch_op.drop_index(batch_op.f("ix_plan_outcomes_plan_id"))
    op.drop_table("plan_outcomes")
    with op.batch_alter_table("plan_bundles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_bundles_release_id"))
    op.drop_table("plan_bundles")
