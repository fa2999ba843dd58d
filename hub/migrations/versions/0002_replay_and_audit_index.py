"""SAML replay IDs move into the hub database; audit events get an (action, object_id) index.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saml_replay",
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("expires_at", _DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_saml_replay")),
    )
    with op.batch_alter_table("saml_replay", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_saml_replay_expires_at"), ["expires_at"],
                              unique=False)
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_action_object_id", ["action", "object_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_action_object_id")
    with op.batch_alter_table("saml_replay", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_saml_replay_expires_at"))
    op.drop_table("saml_replay")
