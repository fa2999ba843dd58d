"""Refuse replayed SAML responses: remember the IDs of processed responses and assertions
until their ``NotOnOrAfter``.

:class:`ReplayCache` keeps the IDs in the hub database (table ``saml_replay``, migration
0002), so every worker process and every hub host behind the same IdP shares them. An ID is
claimed by an ``INSERT`` against a primary key, so two workers (or hosts) racing with the
same response cannot both win. Expired IDs are purged on every claim, and the store is
bounded (:data:`MAX_ENTRIES`): when full of unexpired IDs, new logins are refused rather
than forgetting IDs that could still be replayed.

This module does not validate anything about a response (python3-saml does, before an ID
is claimed).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from hub.db import SamlReplay

__all__ = ["MAX_ENTRIES", "ReplayCache", "ReplayCacheFullError", "ReplayedError"]

MAX_ENTRIES = 100_000  # remembered IDs (each lives until its NotOnOrAfter)


class ReplayedError(Exception):
    """The ID was processed before (and has not expired)."""


class ReplayCacheFullError(Exception):
    """The store holds MAX_ENTRIES unexpired IDs."""


class ReplayCache:
    """IDs already seen, each until its expiry time, in the hub database."""

    def __init__(self, engine: Engine, max_entries: int = MAX_ENTRIES) -> None:
        self.engine = engine
        self.max_entries = max_entries

    def claim(self, ids: Iterable[str], expires_at: datetime, now: datetime) -> None:
        """Remember ``ids`` until ``expires_at``; all or none are stored.

        Raises:
            ReplayedError: one of the IDs was claimed before and has not expired.
            ReplayCacheFullError: the store is full of unexpired IDs.
        """
        unique = sorted({i for i in ids if i})
        table = SamlReplay.__table__
        with self.engine.connect() as conn:
            with conn.begin():
                conn.execute(delete(table).where(table.c.expires_at <= now))
            try:
                with conn.begin():
                    count = conn.execute(select(func.count()).select_from(table)).scalar_one()
                    if count + len(unique) > self.max_entries:
                        raise ReplayCacheFullError(
                            f"the SAML replay store (table saml_replay) holds {count} "
                            f"unexpired IDs, the limit is {self.max_entries}"
                        )
                    if unique:
                        conn.execute(insert(table),
                                     [{"message_id": i, "expires_at": expires_at}
                                      for i in unique])
            except IntegrityError as exc:
                raise ReplayedError("SAML response or assertion ID seen before") from exc

    def __contains__(self, message_id: object) -> bool:
        table = SamlReplay.__table__
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table.c.message_id).where(table.c.message_id == str(message_id))
            ).first()
        return row is not None
