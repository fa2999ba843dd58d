"""The hub's scheduler: acts when a maintenance window opens or a freeze ends.

**Where it runs: exactly one process**, ``tiangong hub scheduler``, which ``hub serve``
starts as its child beside gunicorn (and the live server), and stops with it. Not in a
gunicorn worker (there are several, forked) nor in the live server (optional: media-only
hubs run none). The process holds an exclusive lock on ``<data_dir>/scheduler.lock`` for
its whole life: a second ``tiangong hub scheduler`` for the same hub refuses to start and
names the holder; the scheduler child of a second ``hub serve`` on the same data directory
stands by and takes over when the first stops. (Hub hosts that share a database but not a
data directory each run one; everything it does is safe if two run — claims and
conditional updates — only redundant.)

**What it does**, each time it wakes (:func:`tick`; APScheduler's ``BackgroundScheduler``
wakes it at the next moment something changes — a hold ending, a one-off freeze ending, an
override request or an approval expiring — and at least every :data:`RESYNC_S` seconds,
to see rules other processes changed):

1. expires one-off freezes that are over (``freeze.expire``), override requests nobody
   confirmed in time (``override.expire``) and records each approval whose validity ended
   (``approval.expire``; the approval rules stop counting it at that moment anyway), as
   ``system:scheduler``;
2. recomputes the hold of every queued deployment
   (:func:`hub.services.windows.refresh_holds`): a deployment whose window opened or whose
   freeze ended is released, and **the live server pushes it to its online agent** at once
   (its push loop reads the hold; the hold's time also releases it there on its own);
3. for the environments named in ``scheduled_export`` (hub.toml; ``"*"``: all), writes the
   bundles of released deployments — inside their window, outside every freeze — into
   ``export_dir``, the file share those sites read (:func:`export_environment`, the same
   function the CLI and the web media page call; ``INDEX-<env>.txt`` says what is there);
   and runs the export schedules whose cron fire time has come (``tiangong hub schedule
   export``: :func:`hub.services.hub_schedules.run_due`), waking at their next fire time.

It opens and clears the incidents of the environments' notification thresholds
(:func:`hub.services.incidents.check`: an agent offline too long, a result overdue), once
per incident, audited.

Last, it sends the notifications that are due (:func:`hub.services.notifications.
deliver_due`: webhooks and e-mail through the ``[smtp]`` relay, retried with backoff), for
at most :data:`DELIVERY_BUDGET` per tick, and wakes when the next retry is due (at once when
some were left).

It also advances running rollouts (:func:`hub.services.rollouts.advance_all`): a batch whose
soak time ended starts the next one; it wakes when the earliest soak ends.

Deliberately not here: deciding anything about windows (``hub.services.windows``), or
exporting early: media exports by hand still go out early (the agent holds the bundle).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Approval, AuditEvent, Deployment, DeploymentOverride, PolicyRule
from hub.errors import ConfigError, HubError
from hub.services import audit
from hub.services.context import Clock, HubKeys, ServiceContext, utc_now
from hub.services.notifications import SmtpSettings
from tiangong.stopsignals import stop_signals

__all__ = ["LOCK_FILE", "RESYNC_S", "SYSTEM_ACTOR", "HubScheduler", "TickReport",
           "scheduled_environments", "tick"]

log = logging.getLogger("tiangong.hub.scheduler")

RESYNC_S = 60.0  # seconds between two looks at the rules at most (other processes change them)
PARENT_POLL_S = 1.0  # seconds between two checks that `hub serve` (the parent) still runs
LOCK_FILE = "scheduler.lock"  # in the data directory: one scheduler per hub
#: Time one tick spends starting webhook deliveries at most (what is left stays due and the
#: next tick follows at once), so a slow receiver does not hold up windows and rollouts.
DELIVERY_BUDGET = timedelta(seconds=20)
SYSTEM_ACTOR = "scheduler"  # ServiceContext.system (audited as system:scheduler)


@dataclass
class TickReport:
    """What one :func:`tick` did, and when the next should run."""

    at: datetime
    expired_freezes: list[int] = field(default_factory=list)
    expired_overrides: list[int] = field(default_factory=list)
    expired_approvals: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # deployments whose hold lifted
    exported: dict[str, list[int]] = field(default_factory=dict)  # env -> deployments
    failed: list[tuple[int, str]] = field(default_factory=list)
    notified: list[int] = field(default_factory=list)  # notifications delivered
    incidents_opened: list[int] = field(default_factory=list)
    incidents_cleared: list[int] = field(default_factory=list)
    scheduled: dict[int, dict[str, Any]] = field(default_factory=dict)  # schedule -> outcome
    next_run: datetime | None = None


def scheduled_environments(setting: str) -> frozenset[str] | None:
    """``scheduled_export`` (``"prod, lab"``; ``"*"``: every environment; empty: none) as a
    set; None means every environment."""
    names = {n.strip() for n in setting.split(",") if n.strip()}
    return None if "*" in names else frozenset(names)


def tick(session_factory: Callable[[], Session], keys: HubKeys, clock: Clock = utc_now, *,
         export_dir: Path | None = None,
         export_environments: frozenset[str] | None = frozenset(),
         smtp: SmtpSettings | None = None) -> TickReport:
    """One round (see the module docstring); commits after each step. ``export_environments``
    None: every environment (with ``export_dir``). ``smtp``: the relay of e-mail targets."""
    from hub.services import hub_schedules, incidents
    from hub.services.exchange import export_environment
    from hub.services.notifications import deliver_due
    from hub.services.rollouts import advance_all
    from hub.services.windows import expire_freezes, expire_overrides, refresh_holds

    session = session_factory()
    try:
        ctx = ServiceContext(session, clock, None, keys, system=SYSTEM_ACTOR)
        now = ctx.now()
        report = TickReport(now)
        report.expired_freezes = expire_freezes(ctx)
        report.expired_overrides = expire_overrides(ctx)
        report.expired_approvals = _expire_approvals(ctx)
        session.commit()
        advance_all(ctx)  # rollouts whose soak time ended start their next batch
        session.commit()
        report.incidents_opened, report.incidents_cleared = incidents.check(ctx)
        session.commit()
        lifted = refresh_holds(session, now)
        report.released = [d.id for d in lifted]
        session.commit()
        if lifted:
            log.info("scheduler: released deployment(s) %s", report.released)
        if export_dir is not None:
            ready = session.scalars(select(Deployment).where(Deployment.state == "queued",
                                                             Deployment.hold_until.is_(None)))
            envs = sorted({d.environment.name for d in ready})
            session.commit()
            for env in envs:
                if export_environments is not None and env not in export_environments:
                    continue
                try:
                    written = export_environment(ctx, env, export_dir, live=True)
                except (HubError, OSError) as exc:
                    session.rollback()
                    log.error("scheduler: export of %s to %s failed: %s", env, export_dir, exc)
                    report.failed.append((0, f"{env}: {exc}"))
                    continue
                if written.written:
                    report.exported[env] = [b.deployment_id for b in written.written]
                    log.info("scheduler: wrote %d bundle(s) of %s to %s",
                             len(written.written), env, export_dir)
                report.failed += written.failed
        report.scheduled = hub_schedules.run_due(ctx)  # `hub schedule export` crons
        report.notified = deliver_due(session_factory, clock, budget=DELIVERY_BUDGET,
                                      smtp=smtp).delivered
        report.next_run = _next_run(session, now)
        session.commit()
        return report
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _expire_approvals(ctx: ServiceContext) -> list[int]:
    """Record ``approval.expire`` once for each approval whose ``expires_at`` has passed
    (the approval rules already stop counting it then: :func:`hub.services.approval_rules.
    counted_approvals`); returns their ids. Deployments that needed it say so in "waiting
    for" (approvals)."""
    now = ctx.now()
    expired = ctx.session.scalars(select(Approval).where(
        Approval.decision == "approve", Approval.expires_at.is_not(None),
        Approval.expires_at <= now).order_by(Approval.id)).all()
    if not expired:
        return []
    done = set(ctx.session.scalars(select(AuditEvent.object_id).where(
        AuditEvent.action == "approval.expire",
        AuditEvent.object_id.in_([str(a.id) for a in expired]))))
    out = []
    for a in expired:
        if str(a.id) in done:
            continue
        assert a.expires_at is not None
        audit.record(ctx, "approval.expire", "approval", str(a.id), {
            "release": a.release.label, "approver": a.approver.username,
            "environment": a.environment.name if a.environment else None,
            "expired_at": a.expires_at.isoformat()})
        out.append(a.id)
    return out


def _next_run(session: Session, now: datetime) -> datetime:
    """The earliest future moment a tick has work: a hold ends, a one-off freeze ends, an
    override request expires; at most :data:`RESYNC_S` from ``now``."""
    from hub.services.windows import OVERRIDE_REQUEST_TTL

    candidates = [now + timedelta(seconds=RESYNC_S)]
    hold = session.scalar(select(Deployment.hold_until)
                          .where(Deployment.state == "queued", Deployment.hold_until > now)
                          .order_by(Deployment.hold_until).limit(1))
    if hold is not None:
        candidates.append(hold)
    for spec in session.scalars(select(PolicyRule.spec).where(PolicyRule.kind == "freeze",
                                                               PolicyRule.ended_at.is_(None))):
        if spec.get("kind") == "once":
            candidates.append(datetime.fromtimestamp(int(spec["end"]), UTC))
    asked = session.scalar(select(DeploymentOverride.requested_at)
                           .where(DeploymentOverride.state == "requested")
                           .order_by(DeploymentOverride.requested_at).limit(1))
    if asked is not None:
        candidates.append(asked + OVERRIDE_REQUEST_TTL)
    expiring = session.scalar(select(Approval.expires_at)
                              .where(Approval.decision == "approve",
                                     Approval.expires_at > now)
                              .order_by(Approval.expires_at).limit(1))
    if expiring is not None:
        candidates.append(expiring)
    from hub.services.notifications import next_due
    from hub.services.rollouts import next_wakeup

    retry = next_due(session)
    if retry is not None:
        candidates.append(max(retry, now))

    from hub.services.hub_schedules import next_fire

    fire = next_fire(session, now)
    if fire is not None:
        candidates.append(fire)

    soak = next_wakeup(session)
    if soak is not None and soak > now:
        candidates.append(soak)
    return max(now, min(candidates))


class HubScheduler:
    """APScheduler around :func:`tick`: one job that runs a tick and schedules the next at
    the tick's ``next_run``. :meth:`start` / :meth:`stop`; tests call :meth:`run_once`."""

    def __init__(self, session_factory: Callable[[], Session], keys: HubKeys, *,
                 clock: Clock = utc_now, export_dir: Path | None = None,
                 export_environments: frozenset[str] | None = frozenset(),
                 smtp: SmtpSettings | None = None,
                 keys_source: Callable[[], HubKeys] | None = None) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.session_factory = session_factory
        self.keys = keys
        self._keys_source = keys_source  # KeysReloader.current: a new root used at once
        self.clock = clock
        self.export_dir = export_dir
        self.export_environments = export_environments
        self.smtp = smtp
        self.last: TickReport | None = None
        self.ticks = 0
        self._aps = BackgroundScheduler(timezone=UTC)
        self._running = threading.Lock()  # held while a tick runs
        self._stopping = threading.Event()

    def run_once(self) -> TickReport:
        """One tick now; logs (never raises) a database or service error, and tries again
        after :data:`RESYNC_S`."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            if self._keys_source is not None:
                self.keys = self._keys_source()
            report = tick(self.session_factory, self.keys, self.clock,
                          export_dir=self.export_dir,
                          export_environments=self.export_environments, smtp=self.smtp)
        except (SQLAlchemyError, HubError, OSError) as exc:
            log.error("scheduler: %s: %s; trying again in %s s", type(exc).__name__, exc,
                      RESYNC_S)
            report = TickReport(self.clock(),
                                next_run=self.clock() + timedelta(seconds=RESYNC_S))
        self.last = report
        self.ticks += 1
        return report

    def _job(self) -> None:
        with self._running:
            if self._stopping.is_set():
                return
            report = self.run_once()
            if not self._stopping.is_set():
                self._schedule_after(report)

    def _schedule_after(self, report: TickReport) -> None:
        assert report.next_run is not None
        # The wall clock of this process decides when APScheduler fires; the tick's own
        # clock (injected) decides what is due.
        delay = max(0.0, (report.next_run - self.clock()).total_seconds())
        self._schedule(datetime.now(UTC) + timedelta(seconds=delay))

    def _schedule(self, at: datetime) -> None:
        from apscheduler.triggers.date import DateTrigger

        self._aps.add_job(self._job, DateTrigger(run_date=at, timezone=UTC), id="tick",
                          replace_existing=True, misfire_grace_time=None, max_instances=1)

    def start(self) -> None:
        """Start the background thread; the first tick runs at once."""
        self._schedule(datetime.now(UTC))
        self._aps.start()

    def stop(self) -> None:
        """Stop; a tick under way finishes first. (Not ``shutdown(wait=True)``: APScheduler
        holds its job-store lock while it waits, and a tick adds the next job under it.)"""
        self._stopping.set()
        self._aps.shutdown(wait=False)
        with self._running:
            pass


def _lock_holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"


@contextmanager
def exclusive_lock(data_dir: Path, *, standby: Callable[[], bool] | None = None
                   ) -> Iterator[int | None]:
    """Hold ``<data_dir>/scheduler.lock`` (with our pid in it) for the block.

    ``standby``: while another scheduler holds the lock, call it every
    :data:`PARENT_POLL_S` seconds and take the lock when it is free (a second ``hub serve``
    on the same data directory keeps a scheduler in reserve); when it returns True, give
    up and yield None.

    Raises:
        ConfigError: another scheduler holds it and there is no ``standby`` (names its pid).
    """
    path = Path(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if standby is None:
                    raise ConfigError(f"another scheduler (process {_lock_holder(fd)}) runs "
                                      f"for this hub: it holds {path}; one scheduler per "
                                      "hub") from None
                if not said:
                    log.info("scheduler: standing by: process %s holds %s",
                             _lock_holder(fd), path)
                    said = True
                if standby():
                    yield None
                    return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)


def run_configured(config: Any, *, parent_pid: int | None = None) -> None:
    """``tiangong hub scheduler``: run until SIGTERM/SIGINT (or until ``parent_pid`` is
    gone), holding the scheduler lock. As ``hub serve``'s child (``parent_pid``) it stands
    by while another scheduler of the hub runs, and takes over when that one stops.

    Raises:
        ConfigError: not an initialised hub, or (run on its own) another scheduler runs.
    """
    from hub.db import make_engine, make_session_factory
    from hub.keystore import KeysReloader

    if not (config.data_dir / "root.json").exists():
        raise ConfigError(f"{config.data_dir} is not an initialised hub: run `tiangong hub "
                          "init`")
    stop = threading.Event()

    def on_signal(signum: int) -> None:  # in a helper thread (tiangong.stopsignals)
        stop.set()

    def done() -> bool:
        """Wait a little; True once stopped or orphaned."""
        if stop.wait(PARENT_POLL_S):
            return True
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("scheduler: parent process %d is gone; stopping", parent_pid)
            return True
        return False

    with stop_signals(on_signal), exclusive_lock(config.data_dir,
                        standby=done if parent_pid is not None else None) as held:
        if held is None:
            return
        reloader = KeysReloader(config.data_dir)
        keys = reloader.current()
        engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
        targets = scheduled_environments(config.scheduled_export)
        export_dir = config.export_path if (targets is None or targets) else None
        if targets and export_dir is None:
            log.warning("scheduler: scheduled_export names %s but export_dir is not "
                        "set: nothing is written to a file share",
                        ", ".join(sorted(targets)))
        scheduler = HubScheduler(make_session_factory(engine), keys,
                                 export_dir=export_dir, export_environments=targets,
                                 smtp=SmtpSettings.from_config(config),
                                 keys_source=reloader.current)
        scheduler.start()
        log.info("scheduler: running (process %d)", os.getpid())
        try:
            while not done():
                pass
        finally:
            scheduler.stop()
            engine.dispose()
