"""Refuse replayed SAML responses: remember the IDs of processed responses and assertions
until their ``NotOnOrAfter``.

:class:`ReplayCache` keeps the IDs in a small SQLite file of its own
(``<data_dir>/saml-replay.sqlite3``), shared by every hub worker process on the host. An ID
is claimed by an ``INSERT`` against a primary key, so two workers racing with the same
response cannot both win. Expired IDs are purged on every claim, and the store is bounded
(:data:`MAX_ENTRIES`): when full of unexpired IDs, new logins are refused rather than
forgetting IDs that could still be replayed.

This module does not validate anything about a response (python3-saml does, before an ID
is claimed) and is not shared between hosts: several hub hosts behind one IdP need the
store moved into the hub database (see docs/web-login.md).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

__all__ = ["MAX_ENTRIES", "ReplayCache", "ReplayCacheFullError", "ReplayedError"]

MAX_ENTRIES = 100_000  # remembered IDs (each lives until its NotOnOrAfter)
BUSY_TIMEOUT_S = 10.0  # seconds a claim waits for another process's lock


class ReplayedError(Exception):
    """The ID was processed before (and has not expired)."""


class ReplayCacheFullError(Exception):
    """The store holds MAX_ENTRIES unexpired IDs."""


class ReplayCache:
    """IDs already seen, each until its expiry time."""

    def __init__(self, path: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS seen_ids "
                "(id TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
            )
        conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def claim(self, ids: Iterable[str], expires_at: datetime, now: datetime) -> None:
        """Remember ``ids`` until ``expires_at``; all or none are stored.

        Raises:
            ReplayedError: one of the IDs was claimed before and has not expired.
            ReplayCacheFullError: the store is full of unexpired IDs.
        """
        unique = sorted({i for i in ids if i})
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM seen_ids WHERE expires_at <= ?", (now.timestamp(),))
                (count,) = conn.execute("SELECT COUNT(*) FROM seen_ids").fetchone()
                if count + len(unique) > self.max_entries:
                    conn.execute("ROLLBACK")
                    raise ReplayCacheFullError(
                        f"SAML replay cache {self.path} holds {count} unexpired IDs, the "
                        f"limit is {self.max_entries}"
                    )
                try:
                    conn.executemany(
                        "INSERT INTO seen_ids (id, expires_at) VALUES (?, ?)",
                        [(i, expires_at.timestamp()) for i in unique],
                    )
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK")
                    raise ReplayedError("SAML response or assertion ID seen before") from exc
                conn.execute("COMMIT")
            finally:
                conn.close()

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            conn = self._connect()
            try:
                row = conn.execute(
                    "SELECT 1 FROM seen_ids WHERE id = ?", (str(message_id),)
                ).fetchone()
            finally:
                conn.close()
        return row is not None
