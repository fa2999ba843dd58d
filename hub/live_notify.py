"""Wake-ups for the live servers' push loops: PostgreSQL ``LISTEN``/``NOTIFY``.

Deployments are queued and agents revoked by other processes (web workers, the CLI, other
hub hosts). On PostgreSQL, triggers installed by migration 0008 send ``NOTIFY tiangong_live``
in the same transaction (delivered at its commit; identical notifications of one
transaction fold into one). :func:`listen` holds one extra connection per live process with
``LISTEN tiangong_live`` and calls ``wake()`` for every notification, so a deployment queued
anywhere is looked at by every live process at once (a wake-up starts the push loop's next
poll without waiting for its interval;
:data:`hub.live_guard.WAKE_GAP_SECONDS` apart at least), and the push loop's database poll
becomes a safety net (:data:`NOTIFY_FALLBACK_POLL_S`) instead of a query four times a
second.

Any other database has no such signal: on SQLite the committing process wakes the live
servers itself, on the same host (:mod:`hub.live_wake`), and the push loop keeps polling
every ``poll_interval`` as the safety net; on MariaDB it only polls. While the listening
connection is down (database restart), ``listening`` is false and the loop polls too; on
reconnect ``wake()`` is called once, for whatever was queued while nobody listened.

Deliberately not here: what a wake-up does (:meth:`hub.live_hub.LiveHub.poll_once`), and
payloads (a wake-up carries no data: the poll query reads the truth from the tables).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.engine import make_url

from hub.db import normalize_url

__all__ = ["CHANNEL", "NOTIFY_FALLBACK_POLL_S", "RECONNECT_S", "Listener", "listen_dsn"]

log = logging.getLogger("tiangong.hub.live")

CHANNEL = "tiangong_live"  # = the triggers of migration 0008
NOTIFY_FALLBACK_POLL_S = 5.0  # seconds between polls while LISTEN works (a safety net)
RECONNECT_S = 5.0  # seconds between two attempts to (re)open the listening connection


def listen_dsn(database_url: str) -> str | None:
    """The libpq URL for the listening connection, or None when the database is not
    PostgreSQL (no wake-ups: the push loop polls)."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One listening connection, run as a task on the live server's event loop."""

    def __init__(self, dsn: str, wake: Callable[[], None]) -> None:
        self.dsn = dsn
        self.wake = wake
        self.listening = False  # LISTEN is in effect now

    async def run(self) -> None:
        """Listen until cancelled; reconnect every :data:`RECONNECT_S` after a failure."""
        import psycopg  # only a hub on PostgreSQL listens (not imported on SQLite, MariaDB)

        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    log.info("live: listening for wake-ups (PostgreSQL NOTIFY %s)", CHANNEL)
                    self.wake()  # whatever was queued while nobody listened
                    async for _ in conn.notifies():
                        self.wake()
            except psycopg.Error as exc:
                if self.listening:
                    log.error("live: the wake-up connection to PostgreSQL was lost (%s); "
                              "polling every round until it is back", exc)
                else:
                    log.error("live: cannot listen for wake-ups on PostgreSQL (%s); polling "
                              "meanwhile, next try in %g s", exc, RECONNECT_S)
            finally:
                self.listening = False
            await asyncio.sleep(RECONNECT_S)
