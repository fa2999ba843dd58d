"""Presence: is an agent online, and when was it last seen?

The live server (:mod:`hub.live_hub`) writes ``agents.last_seen`` when an agent
authenticates and on each of its heartbeats. The web workers and the CLI run in other
processes and cannot see the live server's memory, so "online" is derived from that column
alone: an enrolled agent is **online** when it was seen within
:data:`ONLINE_FACTOR` × the heartbeat interval (2.5 × 30 s by default — one missed
heartbeat is tolerated, a dead connection shows as offline within 75 s).

Also here: :func:`live_work`, the one indexed query the live server's push loop runs every
poll interval for all of its connected agents (revoked? queued deployments?). The queueing
and the revocation happen in other processes (gunicorn workers, the CLI); this database poll
is the cross-process signal.

Deliberately not here: writing ``last_seen`` (the live server does it), and any notion of
"offline" for a revoked agent (revoked agents are reported as ``revoked``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from bundle.sync import DEFAULT_HEARTBEAT_SECONDS
from hub.db import Agent, Deployment
from hub.services.agents import list_agents
from hub.services.context import ServiceContext
from hub.services.users import require

__all__ = [
    "ONLINE_FACTOR",
    "AgentPresence",
    "LiveWork",
    "agent_presence",
    "list_presence",
    "live_work",
    "online_window",
]

ONLINE_FACTOR = 2.5  # heartbeat intervals an agent may stay silent and still count as online
QUERY_BATCH = 500  # agent ids per IN (...) list: SQLite caps bound parameters per statement


def online_window(heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> timedelta:
    """How recently an agent must have been seen to count as online."""
    return timedelta(seconds=ONLINE_FACTOR * heartbeat)


@dataclass(frozen=True)
class AgentPresence:
    """One agent's presence as the web pages and the CLI show it.

    ``state`` is ``online``, ``offline`` (seen before, not recently), ``never`` (enrolled,
    never connected live) or ``revoked``.
    """

    agent_id: str
    environment: str
    status: str
    online: bool
    last_seen: datetime | None
    state: str


def agent_presence(agent: Agent, now: datetime,
                   heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> AgentPresence:
    """The presence of ``agent`` at ``now`` (the caller's clock, so tests need no sleep)."""
    seen = agent.last_seen
    online = (agent.status == "enrolled" and seen is not None
              and now - seen <= online_window(heartbeat))
    if agent.status != "enrolled":
        state = agent.status
    elif seen is None:
        state = "never"
    else:
        state = "online" if online else "offline"
    return AgentPresence(agent.agent_id, agent.environment.name, agent.status, online, seen,
                         state)


def list_presence(ctx: ServiceContext, environment: str | None = None, *,
                  heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> list[AgentPresence]:
    """Presence of every agent (of ``environment``), ordered by agent id.

    Raises:
        PermissionDeniedError (needs ``view``), NotFoundError (unknown environment).
    """
    require(ctx.actor, "view")
    now = ctx.now()
    return [agent_presence(a, now, heartbeat) for a in list_agents(ctx.session, environment)]


@dataclass(frozen=True)
class LiveWork:
    """What the live server must do for one connected agent.

    ``queued`` counts its deployments in state ``queued``; ``newest`` is the highest of their
    ids (with ``queued``, a cheap fingerprint: a new deployment changes it).
    """

    agent_id: str
    status: str
    queued: int
    newest: int | None


def live_work(session: Session, agent_ids: Iterable[str]) -> list[LiveWork]:
    """For the connected ``agent_ids``: their status and queued deployments, in one grouped
    query per :data:`QUERY_BATCH` agents (agents by their unique id, deployments by their
    indexed ``agent_id``). Agents the database does not know are left out."""
    ids: Sequence[str] = sorted(set(agent_ids))
    work: list[LiveWork] = []
    for start in range(0, len(ids), QUERY_BATCH):
        batch = ids[start:start + QUERY_BATCH]
        query = (
            select(Agent.agent_id, Agent.status, func.count(Deployment.id),
                   func.max(Deployment.id))
            .outerjoin(Deployment, and_(Deployment.agent_id == Agent.id,
                                        Deployment.state == "queued"))
            .where(Agent.agent_id.in_(batch))
            .group_by(Agent.agent_id, Agent.status)
        )
        work += [LiveWork(a, s, int(n), m) for a, s, n, m in session.execute(query).all()]
    return work
