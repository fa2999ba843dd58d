"""Incidents the hub notices on its own clock: an agent offline too long, a result overdue.

docs/operations.md ("Notifications"). The rules:

* **Thresholds per environment** (:func:`set_thresholds`, admins, audited
  ``notification.thresholds.set``): ``agent_offline_s`` and ``result_overdue_s``; None
  turns that event off for the environment (the default: both off).
* **agent.offline**: an enrolled agent of the environment whose last sign of life —
  ``last_seen`` (a live session or an imported result), the live presence
  ``online_until``, or its enrollment when it never called — is older than the threshold,
  and that is not online now.
* **result.overdue**: a deployment of the environment exported (to media or pushed live)
  whose result has not come back — still ``exported``, ``delivered`` or ``running`` —
  longer than the threshold after ``exported_at``.
* **Once per incident.** :func:`check` (the hub scheduler, each tick) opens one
  :class:`~hub.db.NotificationIncident` per agent or deployment that crosses its threshold
  (audited ``notification.incident.open``, notified with ``state: "open"``) and does
  nothing more while it lasts; when the condition ends — the agent is seen again, the
  result arrives or the deployment ends otherwise, the threshold is raised or turned off,
  the agent is revoked — it is cleared (``notification.incident.clear``, notified with
  ``state: "resolved"``). A later new crossing is a new incident.

Safe if two schedulers run (each check is one transaction; an incident opened twice by a
race is cleared twice): redundant only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from hub.db import Agent, Deployment, Environment, NotificationIncident, NotificationThresholds
from hub.services import audit
from hub.services.channels import format_duration, parse_duration
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.notifications import enqueue
from hub.services.users import require_ctx

__all__ = ["KINDS", "Thresholds", "check", "get_thresholds", "list_incidents",
           "set_thresholds"]

KINDS = ("agent.offline", "result.overdue")
MAX_THRESHOLD_S = 365 * 86400  # seconds: a threshold of at most a year
WAITING = ("exported", "delivered", "running")  # exported, its result not back


@dataclass(frozen=True)
class Thresholds:
    environment: str
    agent_offline_s: int | None
    result_overdue_s: int | None
    updated_by: str = ""
    updated_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "agent_offline_s": self.agent_offline_s,
                "result_overdue_s": self.result_overdue_s, "updated_by": self.updated_by,
                "updated_at": self.updated_at}

    def describe(self) -> str:
        def one(s: int | None) -> str:
            return "off" if s is None else format_duration(s)
        return (f"agent offline after {one(self.agent_offline_s)}, result overdue after "
                f"{one(self.result_overdue_s)}")


def _thresholds(env: Environment, row: NotificationThresholds | None) -> Thresholds:
    if row is None:
        return Thresholds(env.name, None, None)
    return Thresholds(env.name, row.agent_offline_s, row.result_overdue_s, row.updated_by,
                      row.updated_at.isoformat())


def parse_threshold(text: str, what: str) -> int | None:
    """``off`` (None) or a duration (``90m``, ``6h``, ``2d``) of at least one minute.

    Raises:
        ValidationError: not a duration, under a minute or over a year.
    """
    from hub.errors import ValidationError

    if text.strip().lower() in ("off", "none", ""):
        return None
    seconds = parse_duration(text, what, MAX_THRESHOLD_S)
    if seconds < 60:
        raise ValidationError(f"{what} {text}: at least 1 minute (60 s), or 'off'")
    return seconds


def get_thresholds(ctx: ServiceContext, environment: str) -> Thresholds:
    """``environment``'s thresholds (both None when never set).

    Raises:
        NotFoundError, PermissionDeniedError.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "view", env)
    return _thresholds(env, ctx.session.get(NotificationThresholds, env.id))


def set_thresholds(ctx: ServiceContext, environment: str, *, agent_offline_s: int | None,
                   result_overdue_s: int | None) -> Thresholds:
    """Set both thresholds of ``environment`` (None: that event off); admins; audited.
    Open incidents that no longer cross are cleared at the next :func:`check`.

    Raises:
        NotFoundError, PermissionDeniedError, ValidationError (under 60 s or over a year).
    """
    from hub.errors import ValidationError

    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    for what, value in (("agent offline threshold", agent_offline_s),
                        ("result overdue threshold", result_overdue_s)):
        if value is not None and not 60 <= value <= MAX_THRESHOLD_S:
            raise ValidationError(f"{what} {value} s: must be 60 s to {MAX_THRESHOLD_S} s "
                                  "(a year), or off")
    row = ctx.session.get(NotificationThresholds, env.id)
    if row is None:
        row = NotificationThresholds(environment_id=env.id)
        ctx.session.add(row)
    row.agent_offline_s = agent_offline_s
    row.result_overdue_s = result_overdue_s
    row.updated_by = ctx.actor_name
    row.updated_at = ctx.now()
    ctx.session.flush()
    audit.record(ctx, "notification.thresholds.set", "environment", env.name,
                 {"agent_offline_s": agent_offline_s, "result_overdue_s": result_overdue_s})
    return _thresholds(env, row)


def _last_alive(agent: Agent) -> datetime:
    times = [t for t in (agent.last_seen, agent.online_until) if t is not None]
    return max(times) if times else agent.enrolled_at


def _crossing(ctx: ServiceContext) -> dict[tuple[str, str], tuple[Environment, dict[str, Any]]]:
    """Every (kind, subject) over its environment's threshold now, with its details."""
    now = ctx.now()
    out: dict[tuple[str, str], tuple[Environment, dict[str, Any]]] = {}
    for th in ctx.session.scalars(select(NotificationThresholds)):
        env = th.environment
        if th.agent_offline_s is not None:
            limit = now - timedelta(seconds=th.agent_offline_s)
            for agent in ctx.session.scalars(select(Agent).where(
                    Agent.environment_id == env.id, Agent.status == "enrolled")):
                last = _last_alive(agent)
                if last <= limit:
                    out[("agent.offline", agent.agent_id)] = (env, {
                        "agent": agent.agent_id, "last_seen": last.isoformat(),
                        "threshold_s": th.agent_offline_s})
        if th.result_overdue_s is not None:
            limit = now - timedelta(seconds=th.result_overdue_s)
            for dep in ctx.session.scalars(select(Deployment).where(
                    Deployment.environment_id == env.id, Deployment.state.in_(WAITING),
                    Deployment.exported_at.is_not(None), Deployment.exported_at <= limit)):
                assert dep.exported_at is not None
                out[("result.overdue", str(dep.id))] = (env, {
                    "deployment": dep.id, "release": dep.release.label,
                    "agent": dep.agent.agent_id if dep.agent is not None else None,
                    "sequence": dep.sequence, "bundle_id": dep.bundle_id,
                    "exported_at": dep.exported_at.isoformat(),
                    "threshold_s": th.result_overdue_s})
    return out


def check(ctx: ServiceContext) -> tuple[list[int], list[int]]:
    """Open an incident for each new crossing and clear those that ended (see the module
    docstring), in the caller's transaction; returns (opened ids, cleared ids)."""
    now = ctx.now()
    crossing = _crossing(ctx)
    opened: list[int] = []
    cleared: list[int] = []
    open_rows = list(ctx.session.scalars(select(NotificationIncident).where(
        NotificationIncident.cleared_at.is_(None)).order_by(NotificationIncident.id)))
    known = set()
    for inc in open_rows:
        key = (inc.kind, inc.subject)
        if key in crossing and key not in known:
            known.add(key)
            continue
        inc.cleared_at = now
        audit.record(ctx, "notification.incident.clear", "incident", str(inc.id),
                     {"kind": inc.kind, "environment": inc.environment.name,
                      "subject": inc.subject, "opened_at": inc.opened_at.isoformat()})
        enqueue(ctx, inc.kind, inc.environment, {**inc.details, "state": "resolved",
                                                  "incident": inc.id,
                                                  "opened_at": inc.opened_at.isoformat()})
        cleared.append(inc.id)
    for (kind, subject), (env, details) in sorted(crossing.items()):
        if (kind, subject) in known:
            continue
        inc = NotificationIncident(kind=kind, environment_id=env.id, subject=subject,
                                   details=details, opened_at=now)
        ctx.session.add(inc)
        ctx.session.flush()
        audit.record(ctx, "notification.incident.open", "incident", str(inc.id),
                     {"kind": kind, "environment": env.name, **details})
        enqueue(ctx, kind, env, {**details, "state": "open", "incident": inc.id})
        opened.append(inc.id)
    ctx.session.flush()
    return opened, cleared


def list_incidents(ctx: ServiceContext, environment: str | None = None, *,
                   open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """The newest incidents (of ``environment``).

    Raises:
        NotFoundError, PermissionDeniedError.
    """
    env = get_environment(ctx.session, environment) if environment is not None else None
    require_ctx(ctx, "view", env)
    query = select(NotificationIncident)
    if env is not None:
        query = query.where(NotificationIncident.environment_id == env.id)
    if open_only:
        query = query.where(NotificationIncident.cleared_at.is_(None))
    rows = ctx.session.scalars(query.order_by(NotificationIncident.id.desc()).limit(limit))
    return [{"id": r.id, "kind": r.kind, "environment": r.environment.name,
             "subject": r.subject, "details": r.details, "opened_at": r.opened_at.isoformat(),
             "cleared_at": r.cleared_at.isoformat() if r.cleared_at else None}
            for r in rows]
