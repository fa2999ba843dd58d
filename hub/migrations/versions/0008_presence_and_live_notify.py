"""Presence that sees a disconnect, and PostgreSQL wake-ups for the live servers.

``agents.online_until``: until when the agent counts as online (the live server writes it at
authentication and with every heartbeat: one heartbeat interval and a grace ahead; on a clean
or detected disconnect: the moment of it). ``agents.live_conn``: the live connection that
holds the agent now (another live process's late disconnect must not mark it offline).

On PostgreSQL, triggers send ``NOTIFY tiangong_live`` when a deployment becomes ``queued`` and
when an agent's status changes (revocation), so every live server's push loop wakes up at
once instead of waiting for its next poll (hub/live_notify.py). PostgreSQL folds identical
notifications of one transaction into one. Other databases keep polling.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHANNEL = "tiangong_live"  # = hub.live_notify.CHANNEL

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tiangong_live_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_TRIGGERS = (
    "CREATE TRIGGER tiangong_live_queued AFTER INSERT OR UPDATE OF state ON deployments "
    "FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION tiangong_live_notify()",
    "CREATE TRIGGER tiangong_live_status AFTER UPDATE OF status ON agents "
    "FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status) "
    "EXECUTE FUNCTION tiangong_live_notify()",
)


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("online_until", _DATETIME, nullable=True))
        batch_op.add_column(sa.Column("live_conn", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)
        for trigger in _TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tiangong_live_status ON agents")
        op.execute("DROP TRIGGER IF EXISTS tiangong_live_queued ON deployments")
        op.execute("DROP FUNCTION IF EXISTS tiangong_live_notify()")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("live_conn")
        batch_op.drop_column("online_until")
