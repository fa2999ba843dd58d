"""Presence: is an agent online, and when was it last seen?

The web workers and the CLI run in other processes than the live servers and cannot see
their memory, so presence lives in the database. A live server (:mod:`hub.live_hub`) writes,
for each agent it holds:

* at authentication and with each heartbeat: ``last_seen`` and ``online_until`` = that moment
  + one heartbeat interval + :func:`presence_grace` (and ``live_conn``, its connection);
* when the connection ends — a clean close, or a peer whose socket the kernel closed (a
  killed agent) — ``online_until`` = that moment, within one poll of the push loop.

An enrolled agent is **online** while ``online_until`` lies ahead: a clean disconnect shows
at once, a connection lost without a close (a cut cable, a frozen host) one heartbeat interval
and the grace after the agent's last heartbeat; a live process that died leaves its agents'
``online_until`` to run out the same way. An agent no live server has recorded yet
(``online_until`` empty: never connected live since this version, or only seen through media
imports) keeps the old rule: online while ``last_seen`` is within :data:`ONLINE_FACTOR` ×
the heartbeat interval.

Also here: :func:`live_work`, the one indexed query the live server's push loop runs every
poll interval for all of its connected agents (revoked? queued deployments?). The queueing
and the revocation happen in other processes (gunicorn workers, the CLI); this database poll
is the cross-process signal.

Deliberately not here: writing ``last_seen`` (the live server does it), and any notion of
"offline" for a revoked agent (revoked agents are reported as ``revoked``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, true
from sqlalchemy.orm import Session

from bundle.sync import DEFAULT_HEARTBEAT_SECONDS
from hub.db import Agent, Deployment, PlanBundle
from hub.services.agents import list_agents
from hub.services.context import ServiceContext
from hub.services.users import require

__all__ = [
    "GRACE_MIN_S",
    "ONLINE_FACTOR",
    "AgentPresence",
    "LiveWork",
    "agent_presence",
    "list_presence",
    "live_work",
    "live_work_of",
    "online_window",
    "presence_grace",
    "presence_state",
    "presence_until",
]

ONLINE_FACTOR = 2.5  # heartbeat intervals a never-recorded agent counts as online (old rule)
GRACE_MIN_S = 2.0  # seconds a heartbeat may come late (transit, the live server's batched write)
QUERY_BATCH = 500  # agent ids per IN (...) list: SQLite caps bound parameters per statement


def online_window(heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> timedelta:
    """How recently an agent must have been seen to count as online."""
    return timedelta(seconds=ONLINE_FACTOR * heartbeat)


def presence_grace(heartbeat: int) -> timedelta:
    """How late a heartbeat may be before the agent shows offline: a tenth of the interval,
    at least :data:`GRACE_MIN_S` (the live server writes heartbeats once a second)."""
    return timedelta(seconds=max(GRACE_MIN_S, heartbeat / 10))


def presence_until(seen: datetime, heartbeat: int) -> datetime:
    """``online_until`` for an agent heard at ``seen`` that heartbeats every ``heartbeat``
    seconds: its next heartbeat is due by then."""
    return seen + timedelta(seconds=heartbeat) + presence_grace(heartbeat)


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
    state = presence_state(agent.status, agent.last_seen, agent.online_until, now, heartbeat)
    return AgentPresence(agent.agent_id, agent.environment.name, agent.status,
                         state == "online", agent.last_seen, state)


def presence_state(status: str, last_seen: datetime | None, online_until: datetime | None,
                   now: datetime, heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> str:
    """``online``, ``offline``, ``never`` or the status of a non-enrolled agent, from the
    columns alone (the metrics count thousands of agents without loading them)."""
    if status != "enrolled":
        return status
    if last_seen is None:
        return "never"
    if online_until is not None:  # kept by a live server
        return "online" if now < online_until else "offline"
    return "online" if now - last_seen <= online_window(heartbeat) else "offline"


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

    ``queued`` counts its deployments waiting for an export: in state ``queued`` that no
    window or freeze holds (:attr:`~hub.db.Deployment.hold_until` unset or passed), or left
    ``exporting`` with no claim (an export that failed after claiming released it: the next
    export resumes it — without this the push loop never looked at them again while the agent
    stayed connected, and a burst stalled); ``newest`` is the highest of their ids (with
    ``queued``, a cheap fingerprint: a new deployment changes it). ``plan`` is the newest
    unexpired preflight plan addressed to it (to it, or to its environment), whose bundle
    waits in its live spool (:mod:`hub.services.plans`).
    """

    agent_id: str
    status: str
    queued: int
    newest: int | None
    plan: int | None = None


def live_work(session: Session, agent_ids: Iterable[str], *,
              now: datetime | None = None) -> list[LiveWork]:
    """For the connected ``agent_ids``: their status and queued deployments (with ``now``:
    those not held at ``now``), in one grouped query per :data:`QUERY_BATCH` agents (agents
    by their unique id, deployments by their indexed ``agent_id``). Agents the database
    does not know are left out."""
    ids: Sequence[str] = sorted(set(agent_ids))
    work: list[LiveWork] = []
    for start in range(0, len(ids), QUERY_BATCH):
        batch = ids[start:start + QUERY_BATCH]
        newest_plan = (
            select(func.max(PlanBundle.id))
            .where(or_(PlanBundle.agent_id == Agent.id,
                       and_(PlanBundle.agent_id.is_(None),
                            PlanBundle.environment_id == Agent.environment_id)),
                   true() if now is None else PlanBundle.expires_at > now)
            .correlate(Agent).scalar_subquery())
        query = (
            select(Agent.agent_id, Agent.status, func.count(Deployment.id),
                   func.max(Deployment.id), newest_plan)
            .outerjoin(Deployment, and_(
                Deployment.agent_id == Agent.id,
                or_(and_(Deployment.state == "queued",
                         true() if now is None else or_(Deployment.hold_until.is_(None),
                                                        Deployment.hold_until <= now)),
                    and_(Deployment.state == "exporting", Deployment.claimed_by.is_(None)))))
            .where(Agent.agent_id.in_(batch))
            .group_by(Agent.agent_id, Agent.status, Agent.id, Agent.environment_id)
        )
        work += [LiveWork(a, s, int(n), m, p) for a, s, n, m, p in session.execute(query).all()]
    return work


def live_work_of(session: Session, connected: Collection[str], *,
                 now: datetime | None = None, busy: Collection[str] = (),
                 after: int | None = None) -> list[LiveWork]:
    """What the push loop must do, for the agents in ``connected``: those with queued work
    (as :func:`live_work` counts it), those with an unexpired preflight plan (``plan``, as
    :func:`live_work` says it) and those no longer enrolled — every other connected agent is
    left out, ordered by agent id.

    Unlike :func:`live_work` it costs what there is to do, not what is connected: one query
    for the deployments waiting (by the index on ``deployments.state``) and one for the
    agents not enrolled, whatever the number of connected agents. With 10,000 agents
    connected the other way asked 20 grouped queries of 500 agents four times a second
    (docs/benchmarks.md, "10,000 agents").

    Agents in ``busy`` (their queued work is being exported already: a burst) are left
    out unless they are no longer enrolled: during a burst to 10,000 agents every poll
    made an object for each agent still waiting in it (docs/benchmarks.md, "Session 8:
    live burst").

    ``after``: only deployments with a greater id count as queued work (the push loop's
    polls during a burst: what was queued before it is in it, or handled once it ended;
    reading those rows again each poll cost 1.3 s of a burst to 10,000 agents)."""
    waiting = or_(and_(Deployment.state == "queued",
                       true() if now is None else or_(Deployment.hold_until.is_(None),
                                                      Deployment.hold_until <= now)),
                  and_(Deployment.state == "exporting", Deployment.claimed_by.is_(None)))
    queued = session.execute(
        select(Agent.agent_id, Agent.status, func.count(Deployment.id), func.max(Deployment.id))
        .join(Agent, Deployment.agent_id == Agent.id)
        .where(Deployment.state.in_(("queued", "exporting")), waiting,
               true() if after is None else Deployment.id > after)
        .group_by(Agent.agent_id, Agent.status)).all()
    found = {a: LiveWork(a, s, int(n), m) for a, s, n, m in queued
             if a in connected and a not in busy}
    # "!= enrolled" as two ranges, which the index on agents.status answers (a "!=" scans
    # every agent: 1.5 ms four times a second at 10,000 agents, for the few revoked)
    for agent_id, status in session.execute(
            select(Agent.agent_id, Agent.status)
            .where(or_(Agent.status < "enrolled", Agent.status > "enrolled"))).all():
        if agent_id in connected and agent_id not in found:
            found[agent_id] = LiveWork(agent_id, status, 0, None)
    # Unexpired preflight plans (rare, short-lived): the newest addressed to each agent, to
    # it or to its environment. Costs a row per agent addressed while a plan is unexpired.
    if session.scalar(select(func.count(PlanBundle.id)).where(
            true() if now is None else PlanBundle.expires_at > now)):
        plans = session.execute(
            select(Agent.agent_id, Agent.status, func.max(PlanBundle.id))
            .join(PlanBundle, or_(PlanBundle.agent_id == Agent.id,
                                  and_(PlanBundle.agent_id.is_(None),
                                       PlanBundle.environment_id == Agent.environment_id)))
            .where(true() if now is None else PlanBundle.expires_at > now)
            .group_by(Agent.agent_id, Agent.status)).all()
        for agent_id, status, plan in plans:
            if agent_id in connected:
                w = found.get(agent_id) or LiveWork(agent_id, status, 0, None)
                found[agent_id] = LiveWork(w.agent_id, w.status, w.queued, w.newest, plan)
    return [found[a] for a in sorted(found)]
