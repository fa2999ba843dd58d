"""Fleet rollouts: rollouts, their batches and target agents (hub.services.rollouts).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("strategy", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("current_batch", sa.Integer(), nullable=False),
        sa.Column("failures_accepted", sa.Integer(), nullable=False),
        sa.Column("rolled_back", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _DATETIME, nullable=False),
        sa.Column("updated_at", _DATETIME, nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name=op.f("fk_rollouts_release_id_releases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_release_id"), "rollouts", ["release_id"])
    op.create_table(
        "rollout_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", _DATETIME, nullable=True),
        sa.Column("done_at", _DATETIME, nullable=True),
        sa.Column("confirmed_by", sa.String(length=64), nullable=True),
        sa.Column("confirmed_at", _DATETIME, nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"],
                                name=op.f("fk_rollout_batches_rollout_id_rollouts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_batches")),
        sa.UniqueConstraint("rollout_id", "number", name=op.f("uq_rollout_batches_rollout_id")),
    )
    op.create_index(op.f("ix_rollout_batches_rollout_id"), "rollout_batches", ["rollout_id"])
    op.create_table(
        "rollout_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"],
                                name=op.f("fk_rollout_targets_rollout_id_rollouts")),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"],
                                name=op.f("fk_rollout_targets_agent_id_agents")),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"],
                                name=op.f("fk_rollout_targets_deployment_id_deployments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_targets")),
        sa.UniqueConstraint("rollout_id", "agent_id", name=op.f("uq_rollout_targets_rollout_id")),
    )
    op.create_index(op.f("ix_rollout_targets_rollout_id"), "rollout_targets", ["rollout_id"])
    op.create_index(op.f("ix_rollout_targets_agent_id"), "rollout_targets", ["agent_id"])
    op.create_index(op.f("ix_rollout_targets_deployment_id"), "rollout_targets",
                    ["deployment_id"])


def downgrade() -> None:
    for table, columns in (("rollout_targets", ("rollout_id", "agent_id", "deployment_id")),
                           ("rollout_batches", ("rollout_id",)),
                           ("rollouts", ("release_id",))):
        for column in columns:
            op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
        op.drop_table(table)
