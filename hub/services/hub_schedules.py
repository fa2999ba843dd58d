"""The hub's own timed work: scheduled exports to a file share (docs/operations.md,
"Scheduled exports at the hub").

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

__all__ = ["ScheduleInfo", "add_export", "list_schedules", "next_fire", "remove_schedule",
           "run_due", "trigger"]

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
    from apscheduler.triggers.cron import CronTrigger

    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"time zone {timezone[:64]!r} is not known (an IANA name such "
                              "as UTC or Europe/Berlin)") from None
    fields = cron.split()
    try:
        if len(fields) == 5:
            return CronTrigger.from_crontab(cron, timezone=zone)
        if len(fields) == 6:
            second, minute, hour, day, month, dow = fields
            return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                               day_of_week=dow, timezone=zone)
    except ValueError as exc:
        raise ValidationError(f"cron {cron[:120]!r}: {exc}") from None
    raise ValidationError(f"cron {cron[:120]!r}: give 5 fields (minute hour day-of-month "
                          "month day-of-week) or 6 (seconds first)")


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
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    trigger(cron, timezone)
    path = Path(target_dir)
    if not path.is_absolute():
        raise ValidationError(f"export directory {target_dir[:200]!r}: give an absolute path "
                              "(the scheduler runs elsewhere than this command)")
    if path.exists() and not path.is_dir():
        raise ValidationError(f"export directory {target_dir[:200]}: exists and is not a "
                              "directory")
    s = HubSchedule(kind="export", environment_id=env.id, target_dir=str(path),
                    cron=" ".join(cron.split()), timezone=timezone,
                    created_by=ctx.actor_name, created_at=ctx.now())
    ctx.session.add(s)
    ctx.session.flush()
    audit.record(ctx, "schedule.add", "schedule", str(s.id),
                 {"kind": "export", "environment": env.name, "to": s.target_dir,
                  "cron": s.cron, "timezone": timezone})
    return _info(s)


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
        if fire is None or not _claim(ctx, s, fire):
            continue
        crash_point("hub.schedule-claimed")
        s = ctx.session.get(HubSchedule, s.id)  # type: ignore[assignment]
        outcome: dict[str, Any] = {"fire_at": fire.isoformat(), "missed": missed}
        try:
            report = export_environment(ctx, s.environment.name, Path(s.target_dir),
                                        live=True)
        except (HubError, OSError) as exc:
            ctx.session.rollback()
            s = ctx.session.get(HubSchedule, s.id)  # type: ignore[assignment]
            outcome.update(written=[], failed=[], held=[], error=str(exc)[:500])
        else:
            outcome.update(written=[b.deployment_id for b in report.written],
                           failed=[[d, why[:200]] for d, why in report.failed],
                           held=[d for d, _ in report.held], error="")
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
