"""Rollback releases: the deployment a release rolls back, and the release whose approvals
it inherits (issue 14 §2: a rollout's automatic rollback, docs/rollouts.md).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("rollback_of_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("approvals_from_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_releases_rollback_of", "deployments",
                                 ["rollback_of_id"], ["id"])
        batch.create_foreign_key("fk_releases_approvals_from", "releases",
                                 ["approvals_from_id"], ["id"])
        batch.create_unique_constraint("uq_releases_rollback_of", ["rollback_of_id"])


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_constraint("uq_releases_rollback_of", type_="unique")
        batch.drop_constraint("fk_releases_approvals_from", type_="foreignkey")
        batch.drop_constraint("fk_releases_rollback_of", type_="foreignkey")
        batch.drop_column("approvals_from_id")
        batch.drop_column("rollback_of_id")
