"""Which export writes which deployment: atomic claims, so every deployment is exported once.

Any number of exports may run at once — ``hub export`` processes, the web media page, the
live server — on SQLite or PostgreSQL. Each reads the queued list without a lock, then
*claims* a deployment with a conditional update::

    UPDATE deployments SET state='exporting', claimed_by=:me, claimed_at=:now
     WHERE id=:id AND state='queued'

and goes on only if exactly one row changed (SQLite takes its write lock, PostgreSQL a row
lock: of two exports racing for one row, the second sees ``state='exporting'`` after the
first commits and changes nothing). The loser reports the deployment as "exported by
another process".

A claim names its process, ``<host>:<pid>:<start time>``. A claim whose process is gone (on
this host: no process with that pid and start time; on another host: older than
:data:`STALE_CLAIM`) is *stale*: the export was killed or failed after it recorded its
bundle, and the next export of that environment takes it over (:func:`take_over`) — again
with a conditional update, so only one export does.

This module decides nothing about bundles (:mod:`hub.services.export` does).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from hub.db import Agent, Deployment, Environment
from hub.services.environments import environment_id

__all__ = [
    "STALE_CLAIM",
    "claim",
    "claim_is_live",
    "claim_many",
    "claims_judge",
    "my_token",
    "release_dead_claims",
    "show_loaded",
    "stale_claims",
    "take_over",
]

_DEPLOYMENT = inspect(Deployment)  # its mapper: the identity keys of loaded rows
STALE_CLAIM = timedelta(hours=6)  # a claim from another host this old is taken over
_IN_CHUNK = 500  # ids in one SQL IN list


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode("ascii") if len(fields) > 19 else None


@cache
def my_token() -> str:
    """This process's claim token: ``<host>:<pid>:<start time>``."""
    pid = os.getpid()
    return f"{socket.gethostname()[:120]}:{pid}:{_start_time(pid) or '?'}"


def claim_is_live(token: str | None, claimed_at: datetime | None, now: datetime) -> bool:
    """Whether the export that wrote ``token`` may still be running."""
    if not token:
        return False
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname()[:120] or not pid_text.isdecimal():
        return claimed_at is not None and now - claimed_at < STALE_CLAIM
    return _start_time(int(pid_text)) == start


def claims_judge(now: datetime) -> Callable[[str | None, datetime | None], bool]:
    """:func:`claim_is_live` at ``now`` for many rows: each (token, claimed at) is judged
    once (the rows one batch claimed share both, so its process is looked up once, not
    once a row)."""
    judged: dict[tuple[str | None, datetime | None], bool] = {}

    def live(token: str | None, claimed_at: datetime | None) -> bool:
        key = (token, claimed_at)
        if key not in judged:
            judged[key] = claim_is_live(token, claimed_at, now)
        return judged[key]

    return live


def claim(session: Session, deployment_id: int, now: datetime) -> bool:
    """Claim a queued deployment for this process (in the session's transaction: the caller
    records the intent and commits). Returns False when another export claimed it first."""
    changed = session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.state == "queued")
        .values(state="exporting", claimed_by=my_token(), claimed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(changed.rowcount == 1)  # type: ignore[attr-defined]


def claim_many(session: Session, deployment_ids: Collection[int], now: datetime) -> set[int]:
    """:func:`claim` for many queued deployments with one conditional update; the ids this
    process claimed (the others were claimed by another export first).

    Call it holding the audit head (every export does, :mod:`hub.services.export`): then no
    other export of this process claims at the same instant, so the rows this update
    changed are exactly those now claimed by this process at ``now``.
    """
    ids = sorted(set(deployment_ids))
    if not ids:
        return set()
    changed = 0
    for start in range(0, len(ids), _IN_CHUNK):
        changed += session.execute(
            _CLAIM, {"ids": ids[start:start + _IN_CHUNK], "token": my_token(), "now": now}
        ).rowcount  # type: ignore[attr-defined]
    if changed == len(ids):
        mine = set(ids)
    else:
        mine = set()
        for start in range(0, len(ids), _IN_CHUNK):
            mine.update(session.scalars(select(Deployment.id).where(
                Deployment.id.in_(ids[start:start + _IN_CHUNK]),
                Deployment.state == "exporting", Deployment.claimed_by == my_token(),
                Deployment.claimed_at == now)))
    for dep_id in mine:
        show_loaded(session, dep_id, state="exporting", claimed_by=my_token(), claimed_at=now,
                    updated_at=now)
    return mine


_TABLE = Deployment.__table__
_NOW = bindparam("now", type_=_TABLE.c.claimed_at.type)
#: claim_many's conditional update (Core: no session object to synchronise; the claimed rows
#: it holds are given the new values by show_loaded), made once
_CLAIM = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("ids", expanding=True)), _TABLE.c.state == "queued")
    .values(state="exporting", claimed_by=bindparam("token", type_=_TABLE.c.claimed_by.type),
            claimed_at=_NOW, updated_at=_NOW)
)


def show_loaded(session: Session, deployment_id: int, *,
                unless_set: Mapping[str, Any] | None = None, **values: Any) -> None:
    """Give the deployment ``deployment_id``, if ``session`` holds it as an object, the column
    ``values`` a Core UPDATE just wrote behind the ORM's back, as loaded values (nothing to
    flush, nothing read again): a session without expire-on-commit (the web's) went on
    showing a batch's deployments ``exporting`` after it had committed them ``exported``.
    ``unless_set``: columns the UPDATE wrote with ``coalesce(column, value)``, given where
    the loaded value is None, and read again at their next use where none is loaded (an
    object this session inserted holds no value for a column it never set)."""
    loaded = session.identity_map.get(_DEPLOYMENT.identity_key_from_primary_key((deployment_id,)))
    if loaded is None:
        return  # not held
    state = inspect(loaded)
    if state.expired:
        return  # read again at its next use anyway
    held = state.dict  # the loaded values (an unloaded column is not in it)
    unknown = []
    for key, value in (unless_set or {}).items():
        if key not in held:
            unknown.append(key)
        elif held[key] is None:
            values[key] = value
    if not state.modified and not state.expired_attributes and not state.callables:
        # Nothing pending, expired or to be loaded on this row: a committed value is just
        # the value (what set_committed_value leaves, without its per-column bookkeeping;
        # an export sets nine columns of each of a batch's rows)
        held.update(values)
    else:
        for key, value in values.items():
            set_committed_value(loaded, key, value)
    if unknown:
        session.expire(loaded, unknown)


def stale_claims(
    session: Session, environment: str | Environment, agent_id: str | None, now: datetime,
    *, agent_ids: Collection[str] | None = None,
) -> list[Deployment]:
    """Deployments of ``environment`` (its name, or the environment already loaded;
    optionally one agent, or the agents ``agent_ids``) left ``exporting`` by an export that
    is gone, oldest first."""
    env_id = environment_id(session, environment)
    if agent_ids is not None and agent_id is None:  # the live server's, once a call: made once
        found = session.scalars(_STALE_OF_AGENTS, {"env_id": env_id,
                                                   "agent_ids": sorted(agent_ids)})
    else:
        query = (
            select(Deployment)
            .where(
                Deployment.environment_id == env_id,
                Deployment.state == "exporting",
            )
            .order_by(Deployment.id)
        )
        if agent_id is not None:
            query = query.join(Agent, Deployment.agent_id == Agent.id).where(
                Agent.agent_id == agent_id
            )
        found = session.scalars(query)
    live = claims_judge(now)
    return [d for d in found
            if d.claimed_by != my_token() and not live(d.claimed_by, d.claimed_at)]


#: stale_claims for the agents ``agent_ids`` of the environment ``env_id``
_STALE_OF_AGENTS = (
    select(Deployment)
    .join(Agent, Deployment.agent_id == Agent.id)
    .where(Deployment.environment_id == bindparam("env_id"),
           Deployment.state == "exporting",
           Agent.agent_id.in_(bindparam("agent_ids", expanding=True)))
    .order_by(Deployment.id)
)


def release_dead_claims(session: Session, now: datetime) -> int:
    """Release the claims of exports that are gone (``claimed_by`` set to NULL on each
    ``exporting`` deployment whose claim is not live): the live server's push loop counts
    only unclaimed ``exporting`` rows as work, so a deployment a killed ``hub live`` (or
    ``hub export``) left claimed waited for other work for its agent. The next export takes
    it over as any stale claim. Returns how many were released (in the session's
    transaction: the caller commits)."""
    live = claims_judge(now)
    dead: dict[str | None, list[int]] = {}  # token (never None here) -> its dead claims
    for dep_id, token, at in session.execute(
            select(Deployment.id, Deployment.claimed_by, Deployment.claimed_at)
            .where(Deployment.state == "exporting", Deployment.claimed_by.is_not(None))
            .order_by(Deployment.id)).all():
        if token != my_token() and not live(token, at):
            dead.setdefault(token, []).append(dep_id)
    released = 0
    for token, ids in dead.items():  # one update per IN list, not one a row
        for start in range(0, len(ids), _IN_CHUNK):
            changed = session.execute(
                update(Deployment)
                .where(Deployment.id.in_(ids[start:start + _IN_CHUNK]),
                       Deployment.state == "exporting", Deployment.claimed_by == token)
                .values(claimed_by=None)
                .execution_options(synchronize_session=False))
            released += int(changed.rowcount)  # type: ignore[attr-defined]
    return released


def take_over(session: Session, dep: Deployment, now: datetime) -> bool:
    """Claim a stale ``exporting`` deployment for this process; False when another export
    took it over first (or it moved on)."""
    old = dep.claimed_by
    cond = Deployment.claimed_by.is_(None) if old is None else Deployment.claimed_by == old
    changed = session.execute(
        update(Deployment)
        .where(Deployment.id == dep.id, Deployment.state == "exporting", cond)
        .values(claimed_by=my_token(), claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(changed.rowcount == 1)  # type: ignore[attr-defined]
