"""The hub's own timed work: scheduled exports and reports to a file share
(docs/operations.md, "Scheduled exports at the hub").

* :func:`add_export` (admins; audited ``schedule.add``): at each fire time of a cron
  expression — five fields (minute hour day-of-month month day-of-week), or six with a
  leading seconds field — in an IANA time zone, the hub scheduler writes what is queued for
  the environment into a directory (a file share the sites' media are filled from). The
  cron is APScheduler's ``CronTrigger``, as for site jobs (:mod:`agent.jobs`).
* :func:`run_due` (the scheduler, each tick): for each active schedule whose fire time has
  come it first **claims** that fire time (a conditional update of ``last_fire_at``: two
  schedulers on one database run it once), then calls
  :func:`hub.services.export.export_environment` — the same export as ``hub export`` and
  the Media page: each bundle written to a temporary name and renamed, its claim, sequence
  and ``bundle.written`` event in the database, ``INDEX-<env>.txt`` replaced atomically —
  and records the outcome on the schedule (``last_result``) and, when it wrote or failed
  something, as ``schedule.run`` (audited, by ``system:scheduler``; a fire time with nothing
  queued adds no event, so a frequent schedule does not fill the log). Fire times missed
  while no scheduler ran are coalesced into one run. A fire time before the schedule was
  added never runs.
* A scheduler killed after the claim (crash point ``hub.schedule-claimed``) does not run
  that fire time again: what it would have written stays queued and goes at the next fire
  time (a killed export itself is completed by the next export, as for ``hub export``).
* Bundles go out as ``live=True`` exports do: a freeze or a closed window holds them (they
  are written at a later fire time once released).

* :func:`add_report`: at each fire time the scheduler writes ``REPORT-<env>.json`` (its
  agents, deployments by state, failures since the previous report, results still awaited,
  open incidents, undelivered notifications: :func:`report`) into the directory, replacing
  the previous one atomically; audited ``schedule.run`` like an export that wrote.

Deliberately not here: what an export writes (:mod:`hub.services.export`), when the
scheduler wakes (:mod:`hub.scheduler` asks :func:`next_fire`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.db import HubSchedule
from hub.errors import HubError, NotFoundError, ValidationError
from hub.faults import crash_point
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require_ctx

__all__ = ["ScheduleInfo", "add_export", "add_report", "list_schedules", "next_fire",
           "remove_schedule", "report", "run_due", "trigger"]

MAX_CATCH_UP = 100_000  # fire times counted when coalescing missed ones


@dataclass(frozen=True)
class ScheduleInfo:
    id: int
    kind: str
    environment: str
    target_dir: str
    cron: str
    timezone: str
    created_by: str
    created_at: str
    last_fire_at: str | None
    last_result: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "environment": self.environment,
                "to": self.target_dir, "cron": self.cron, "timezone": self.timezone,
                "created_by": self.created_by, "created_at": self.created_at,
                "last_fire_at": self.last_fire_at, "last_result": self.last_result}


def _info(s: HubSchedule) -> ScheduleInfo:
    return ScheduleInfo(s.id, s.kind, s.environment.name, s.target_dir, s.cron, s.timezone,
                        s.created_by, s.created_at.isoformat(),
                        s.last_fire_at.isoformat() if s.last_fire_at else None, s.last_result)


def trigger(cron: str, timezone: str) -> Any:
    """APScheduler's ``CronTrigger`` for ``cron`` (5 fields, or 6 with seconds first).

    Raises:
        ValidationError: not 5 or 6 valid fields, or an unknown time zone.
    """
    from tiangong.cron import cron_trigger

    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"time zone {timezone[:64]!r} is not known (an IANA name such "
                              "as UTC or Europe/Berlin)") from None
    try:
        return cron_trigger(cron, zone)
    except ValueError as exc:
        raise ValidationError(f"cron {cron[:120]!r}: {exc}") from None


def _latest_fire(s: HubSchedule, now: datetime) -> tuple[datetime | None, int]:
    """The latest fire time of ``s`` in (its last fire time or creation, ``now``] and how
    many earlier ones it stands for."""
    trig = trigger(s.cron, s.timezone)
    after = s.last_fire_at or s.created_at
    fire = trig.get_next_fire_time(None, after + timedelta(microseconds=1))
    latest: datetime | None = None
    count = 0
    while fire is not None and fire <= now and count < MAX_CATCH_UP:
        latest = fire
        count += 1
        fire = trig.get_next_fire_time(fire, fire + timedelta(microseconds=1))
    return (latest.astimezone(UTC) if latest else None), max(count - 1, 0)


def add_export(ctx: ServiceContext, environment: str, target_dir: str, cron: str,
               timezone: str = "UTC") -> ScheduleInfo:
    """Export ``environment``'s queued deployments into ``target_dir`` at each fire time of
    ``cron`` (admins; audited ``schedule.add``).

    Raises:
        NotFoundError, PermissionDeniedError, ValidationError (cron, time zone, a directory
        that is not absolute or exists as something other than a directory).
    """
    return _add(ctx, "export", environment, target_dir, cron, timezone)


def add_report(ctx: ServiceContext, environment: str, target_dir: str, cron: str,
               timezone: str = "UTC") -> ScheduleInfo:
    """Write ``environment``'s report (:func:`report`) as ``REPORT-<env>.json`` into
    ``target_dir`` at each fire time of ``cron`` (admins; audited ``schedule.add``).

    Raises:
        the same as :func:`add_export`.
    """
    return _add(ctx, "report", environment, target_dir, cron, timezone)


def _add(ctx: ServiceContext, kind: str, environment: str, target_dir: str, cron: str,
         timezone: str) -> ScheduleInfo:
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    trigger(cron, timezone)
    path = Path(target_dir)
    if not path.is_absolute():
        raise ValidationError(f"{kind} directory {target_dir[:200]!r}: give an absolute path "
                              "(the scheduler runs elsewhere than this command)")
    if path.exists() and not path.is_dir():
        raise ValidationError(f"{kind} directory {target_dir[:200]}: exists and is not a "
                              "directory")
    s = HubSchedule(kind=kind, environment_id=env.id, target_dir=str(path),
                    cron=" ".join(cron.split()), timezone=timezone,
                    created_by=ctx.actor_name, created_at=ctx.now())
    ctx.session.add(s)
    ctx.session.flush()
    audit.record(ctx, "schedule.add", "schedule", str(s.id),
                 {"kind": kind, "environment": env.name, "to": s.target_dir,
                  "cron": s.cron, "timezone": timezone})
    return _info(s)


def report(ctx: ServiceContext, environment: str, since: datetime | None) -> dict[str, Any]:
    """``environment`` now: its agents (last seen, online), deployments by state and those
    that failed since ``since``, what still waits for a result, open incidents and
    undelivered notifications. For the scheduler (no permission check)."""
    from hub.db import (
        Agent,
        Deployment,
        NotificationIncident,
        NotificationOutbox,
        NotificationWebhook,
    )

    env = get_environment(ctx.session, environment)
    now = ctx.now()
    agents = ctx.session.scalars(select(Agent).where(
        Agent.environment_id == env.id, Agent.status == "enrolled").order_by(Agent.agent_id))
    deps = list(ctx.session.scalars(select(Deployment).where(
        Deployment.environment_id == env.id).order_by(Deployment.id)))
    states: dict[str, int] = {}
    for d in deps:
        states[d.state] = states.get(d.state, 0) + 1
    failed = [{"deployment": d.id, "release": d.release.label,
               "agent": d.agent.agent_id if d.agent else None,
               "at": d.updated_at.isoformat()}
              for d in deps if d.state == "failed" and (since is None or d.updated_at > since)]
    waiting = [{"deployment": d.id, "release": d.release.label,
                "agent": d.agent.agent_id if d.agent else None,
                "exported_at": d.exported_at.isoformat() if d.exported_at else None}
               for d in deps if d.state in ("exported", "delivered", "running")]
    undelivered = ctx.session.scalars(select(NotificationOutbox.state).join(
        NotificationWebhook).where(NotificationWebhook.environment_id == env.id,
                                   NotificationOutbox.state.in_(("pending", "failed"))))
    notes: dict[str, int] = {}
    for state in undelivered:
        notes[state] = notes.get(state, 0) + 1
    return {
        "environment": env.name, "generated_at": now.isoformat(),
        "since": since.isoformat() if since else None,
        "agents": [{"agent": a.agent_id, "last_seen": a.last_seen.isoformat()
                    if a.last_seen else None,
                    "online": bool(a.online_until and a.online_until > now)} for a in agents],
        "deployments": states, "failed_since": failed, "waiting_for_result": waiting,
        "open_incidents": [{"kind": i.kind, "subject": i.subject,
                            "opened_at": i.opened_at.isoformat()}
                           for i in ctx.session.scalars(select(NotificationIncident).where(
                               NotificationIncident.environment_id == env.id,
                               NotificationIncident.cleared_at.is_(None))
                               .order_by(NotificationIncident.id))],
        "notifications_undelivered": notes,
    }


def _write_report(ctx: ServiceContext, s: HubSchedule, since: datetime | None) -> str:
    """Write ``REPORT-<env>.json`` into the schedule's directory atomically (a temporary
    file, fsynced, renamed); returns its name."""
    import json
    import os
    import tempfile

    from signing.fileio import fsync_dir

    doc = report(ctx, s.environment.name, since)
    folder = Path(s.target_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"REPORT-{s.environment.name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return name


def _active(ctx: ServiceContext) -> Iterable[HubSchedule]:
    return ctx.session.scalars(select(HubSchedule).where(HubSchedule.removed_at.is_(None))
                               .order_by(HubSchedule.id))


def list_schedules(ctx: ServiceContext) -> list[ScheduleInfo]:
    """The active schedules of the environments the caller may view."""
    from hub.services.users import can

    return [_info(s) for s in _active(ctx)
            if ctx.actor is None or can(ctx.actor, "view", s.environment)]


def remove_schedule(ctx: ServiceContext, schedule_id: int) -> ScheduleInfo:
    """End schedule ``schedule_id`` (admins; audited ``schedule.remove``).

    Raises:
        NotFoundError (no such active schedule), PermissionDeniedError.
    """
    s = ctx.session.get(HubSchedule, schedule_id)
    if s is None or s.removed_at is not None:
        raise NotFoundError(f"schedule {schedule_id}: no such active schedule")
    require_ctx(ctx, "environment.update", s.environment)
    s.removed_at = ctx.now()
    ctx.session.flush()
    audit.record(ctx, "schedule.remove", "schedule", str(s.id),
                 {"kind": s.kind, "environment": s.environment.name, "to": s.target_dir})
    return _info(s)


def _claim(ctx: ServiceContext, s: HubSchedule, fire: datetime) -> bool:
    """Take fire time ``fire`` of ``s`` (commits); False when another scheduler took it."""
    previous = s.last_fire_at
    cond = (HubSchedule.last_fire_at.is_(None) if previous is None
            else HubSchedule.last_fire_at == previous)
    done = ctx.session.execute(update(HubSchedule).where(HubSchedule.id == s.id, cond)
                               .values(last_fire_at=fire))
    ctx.session.commit()
    return bool(getattr(done, "rowcount", 0))


def run_due(ctx: ServiceContext) -> dict[int, dict[str, Any]]:
    """Run every schedule whose fire time has come (see the module docstring); returns
    {schedule id: outcome}. Commits."""
    from hub.services.export import export_environment

    now = ctx.now()
    out: dict[int, dict[str, Any]] = {}
    for s in list(_active(ctx)):
        fire, missed = _latest_fire(s, now)
        since = s.last_fire_at
        if fire is None or not _claim(ctx, s, fire):
            continue
        crash_point("hub.schedule-claimed")
        s = ctx.session.get(HubSchedule, s.id)  # type: ignore[assignment]
        outcome: dict[str, Any] = {"fire_at": fire.isoformat(), "missed": missed}
        try:
            if s.kind == "report":
                outcome.update(written=[_write_report(ctx, s, since)], failed=[], held=[],
                               error="")
            else:
                done = export_environment(ctx, s.environment.name, Path(s.target_dir),
                                          live=True)
                outcome.update(written=[b.deployment_id for b in done.written],
                               failed=[[d, why[:200]] for d, why in done.failed],
                               held=[d for d, _ in done.held], error="")
        except (HubError, OSError) as exc:
            ctx.session.rollback()
            s = ctx.session.get(HubSchedule, s.id)  # type: ignore[assignment]
            outcome.update(written=[], failed=[], held=[], error=str(exc)[:500])
        s.last_result = outcome
        if outcome["written"] or outcome["failed"] or outcome["error"]:
            audit.record(ctx, "schedule.run", "schedule", str(s.id),
                         {"kind": s.kind, "environment": s.environment.name,
                          "to": s.target_dir, **outcome})
        ctx.session.commit()
        out[s.id] = outcome
    return out


def next_fire(session: Session, now: datetime) -> datetime | None:
    """The earliest fire time after ``now`` of the active schedules (None: none)."""
    times = []
    for s in session.scalars(select(HubSchedule).where(HubSchedule.removed_at.is_(None))):
        fire = trigger(s.cron, s.timezone).get_next_fire_time(None, now)
        if fire is not None:
            times.append(fire.astimezone(UTC))
    return min(times) if times else None
