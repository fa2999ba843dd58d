"""``tiangong agent sql unlock CONNECTION``: clear a schema lock a killed SQL step left behind.

A SQL step holds ``tiangong_schema_lock`` (:mod:`~agent.executors.sqlhistory`) while it
applies its script and renews it; if the agent dies with its database, the lock stays until it
expires (``lock_ttl_s``, 10 minutes by default), and other SQL steps wait for it. This clears
it now — the operator's decision, so:

* a lock that is free or expired is reported, or simply cleared (nothing can be using it);
* a live lock whose holder is a process of *this* host that no longer exists is cleared;
* a live lock whose holder may still be running (another host, or a live process here) is
  cleared only with ``force=True``: the message names the holder and asks for ``--force``.

What was cleared, and from whom, is recorded in the agent's journal and reported in its next
signed result (``operator_actions``), so the hub sees it too.

This module deliberately does not touch the history table: an attempt the killed step left
``did not finish`` stays recorded as such.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from agent.config import AgentConfig, ConfigError, resolve_connection
from agent.executors.sqlconn import (
    CONNECT_TIMEOUT_S,
    ConnectError,
    DsnError,
    StatementError,
    open_session,
    parse_target,
)
from agent.executors.sqlhistory import LockHolder, SchemaStore
from agent.journal import Journal

__all__ = ["UnlockError", "UnlockReport", "unlock"]

_HOLDER = re.compile(r"^(?P<host>\S+) pid (?P<pid>\d+) ")


class UnlockError(Exception):
    """The lock was not cleared; the message says why and what to do."""


@dataclass(frozen=True)
class UnlockReport:
    connection: str
    holder: LockHolder | None  # None: the lock was free
    cleared: bool


def unlock(config: AgentConfig, journal: Journal, name: str, *, force: bool = False
           ) -> UnlockReport:
    """Clear the schema lock of site connection ``name`` (see the module docstring).

    Raises:
        UnlockError: the connection is not a SQL connection, the database cannot be reached,
            or the holder may be alive and ``force`` is not set (nothing changed).
    """
    try:
        conn = resolve_connection(config, name)
        if conn.type not in ("postgres", "mysql"):
            raise UnlockError(f"connection {name!r} is of type {conn.type!r}, not a SQL "
                              "connection (postgres or mysql)")
        target = parse_target(conn, "postgres" if conn.type == "postgres" else "mysql")
        session = open_session(target, CONNECT_TIMEOUT_S, read_timeout_s=CONNECT_TIMEOUT_S,
                               statement_timeout_s=CONNECT_TIMEOUT_S)
    except (ConfigError, DsnError, ConnectError) as exc:
        raise UnlockError(f"connection {name!r}: {exc}") from exc
    where = f"{conn.type} connection {name!r} ({target.where()}/{target.database})"
    try:
        store = SchemaStore.open(session)
        holder = store.holder()
        if holder is None:
            return UnlockReport(name, None, False)
        if not holder.expired and _may_be_alive(holder.holder) and not force:
            raise UnlockError(
                f"the schema lock on {where} is held by {holder.holder} until "
                f"{holder.until()}, and that process may still be running (it is not a "
                "process of this host that has ended). If you are sure it is dead, run again "
                "with --force; otherwise wait for it to finish or for the lock to expire")
        store.clear(holder.holder)
    except StatementError as exc:
        raise UnlockError(f"{where}: {target.redact(str(exc))}") from exc
    finally:
        session.close()
    state = "expired" if holder.expired else "live" + (", --force" if force else "")
    journal.record_action("sql unlock", f"cleared the schema lock on {where} held by "
                          f"{holder.holder} until {holder.until()} ({state})")
    return UnlockReport(name, holder, True)


def _may_be_alive(holder: str) -> bool:
    """False only for a holder that was a process of this host which no longer exists."""
    m = _HOLDER.match(holder)
    if m is None or m.group("host") != socket.gethostname():
        return True
    try:
        os.kill(int(m.group("pid")), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
