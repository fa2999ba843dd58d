"""Scheduled site jobs: cron jobs that travel in a signed bundle and run on the agent's clock.

A release declares its jobs in a file ``schedule.toml`` at its root (a release file like any
other: hashed, signed, carried in the bundle; docs/operations.md, "Scheduled jobs")::

    [[schedule]]
    name = "nightly-backup"        # [a-z0-9][a-z0-9._-]*, unique in the file
    cron = "30 2 * * *"            # minute hour day-of-month month day-of-week
    timezone = "Europe/Berlin"     # IANA name; default UTC
    retries = 2                    # further attempts after a failed one (0..10, default 0)
    timeout = 600                  # seconds per attempt (1..86400, default 3600)
    script = "jobs/backup.sh"      # a file of the release, run with bash
    # or, instead of script, a sequence of steps run in order (the first failure ends the
    # attempt; a retry starts again from the first):
    # scripts = ["jobs/dump.sh", "jobs/rotate.sh"]

When a bundle whose release holds ``schedule.toml`` ends ``succeeded``, its schedule *replaces*
the installed one (:func:`install_schedule`): the scripts are copied to
``<home>/jobs/<bundle id>/`` and the jobs recorded in the journal (``job_schedule``). A
``schedule.toml`` without ``[[schedule]]`` entries removes every job; a release without the
file leaves the schedule as it is.

:class:`JobScheduler` decides with APScheduler's cron triggers (``CronTrigger``) when each job
is due, on the agent's own clock (``agent.holds.PolicyClock``: the system clock, never earlier
than the journal's time floor, and the ``TIANGONG_CLOCK_FILE`` test hook) — no connection to
the hub is needed. The journal is the job store: a run is committed as ``running`` before its
command starts (crash point ``job-started``) and its outcome after it ends (``job-ran``); a
run found ``running`` at start-up is recorded ``interrupted`` and not started again. Fire
times missed while the agent was stopped are coalesced into one run (its ``missed`` count
says how many were skipped). Every finished run goes into the agent's next signed result
(``scheduled_jobs`` in its body), batched with whatever that result reports; the hub audits
each one on import (``job.run``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.executors.base import LogLine, StepContext, StepLog
from agent.executors.shell import ShellExecutor
from agent.faults import crash_point
from agent.journal import Journal
from signing.fileio import fsync_dir
from tiangong.cron import cron_trigger

if TYPE_CHECKING:  # imported by tiangong.cron when a schedule is parsed
    from apscheduler.triggers.cron import CronTrigger

__all__ = ["SCHEDULE_FILE", "JobScheduler", "JobSpec", "ScheduleError", "install_schedule",
           "installed_schedule", "job_runs", "parse_schedule"]

log = logging.getLogger("tiangong.agent")

SCHEDULE_FILE = "schedule.toml"
MAX_JOBS = 100
MAX_RETRIES = 10
MAX_TIMEOUT_S = 86400
DEFAULT_TIMEOUT_S = 3600
MAX_OUTPUT_CHARS = 2000  # tail of a run's output kept in its summary
JOB_LOG_CAP_BYTES = 64 * 1024  # bytes of a run's output held while it runs (the tail is kept)
REPORT_AFTER_S = 6 * 3600  # a finished run waits at most this long for a result
MAX_CATCH_UP = 100_000  # fire times counted when coalescing missed runs
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_KEYS = ("name", "cron", "timezone", "retries", "timeout", "script", "scripts")
MAX_SCRIPTS = 20  # steps of one job


class ScheduleError(ValueError):
    """A ``schedule.toml`` that breaks a rule; the message names the file, entry and rule."""


@dataclass(frozen=True)
class JobSpec:
    name: str
    cron: str
    timezone: str
    retries: int
    timeout: int
    script: str  # the first (or only) step
    scripts: tuple[str, ...] = ()  # every step, in order, when there are several

    def steps(self) -> tuple[str, ...]:
        """The release files this job runs, in order."""
        return tuple(self.scripts) or (self.script,)

    def trigger(self) -> CronTrigger:
        return cron_trigger(self.cron, ZoneInfo(self.timezone))


def parse_schedule(data: bytes, files: Sequence[str], source: str = SCHEDULE_FILE
                   ) -> list[JobSpec]:
    """The jobs of a ``schedule.toml``; ``files`` are the release's file names.

    Raises:
        ScheduleError: the file breaks a rule (named in the message, with the entry number).
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScheduleError(f"{source}: not valid UTF-8 TOML ({exc})") from exc
    extra = sorted(set(doc) - {"schedule"})
    if extra:
        raise ScheduleError(f"{source}: unknown top-level key {extra[0]!r} (only [[schedule]])")
    entries = doc.get("schedule", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ScheduleError(f"{source}: 'schedule' must be an array of tables ([[schedule]])")
    if len(entries) > MAX_JOBS:
        raise ScheduleError(f"{source}: {len(entries)} jobs; at most {MAX_JOBS}")
    jobs: list[JobSpec] = []
    for n, entry in enumerate(entries, 1):
        jobs.append(_job(entry, f"{source}: [[schedule]] entry {n}", set(files)))
    names = [j.name for j in jobs]
    for name in names:
        if names.count(name) > 1:
            raise ScheduleError(f"{source}: job name {name!r} is used {names.count(name)} times;"
                                " names must be unique")
    return jobs


def _job(entry: Mapping[str, Any], where: str, files: set[str]) -> JobSpec:
    for key in entry:
        if key not in _KEYS:
            raise ScheduleError(f"{where}: unknown key {key!r} (known: {', '.join(_KEYS)})")
    for key in ("name", "cron"):
        if not isinstance(entry.get(key), str):
            raise ScheduleError(f"{where}: {key!r} is required and must be a string")
    name, cron = entry["name"], entry["cron"]
    steps = _steps(entry, where)
    if not _NAME.fullmatch(name):
        raise ScheduleError(f"{where}: name {name!r} must match [a-z0-9][a-z0-9._-]* "
                            "(at most 64 characters)")
    tz = entry.get("timezone", "UTC")
    if not isinstance(tz, str):
        raise ScheduleError(f"{where} ({name}): 'timezone' must be a string")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"{where} ({name}): unknown time zone {tz!r}") from exc
    try:
        if len(cron.split()) != 5:
            raise ValueError(f"{len(cron.split())} fields")
        cron_trigger(cron, zone)
    except ValueError as exc:
        raise ScheduleError(f"{where} ({name}): cron {cron!r} is not a 5-field cron "
                            f"expression ({exc})") from exc
    retries = _int(entry, "retries", 0, 0, MAX_RETRIES, where, name)
    timeout = _int(entry, "timeout", DEFAULT_TIMEOUT_S, 1, MAX_TIMEOUT_S, where, name)
    for script in steps:
        if script not in files:
            raise ScheduleError(f"{where} ({name}): script {script!r} is not a file of the "
                                "release")
    return JobSpec(name, cron, tz, retries, timeout, steps[0],
                   steps if "scripts" in entry else ())


def _steps(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """``script`` (one) or ``scripts`` (1 to :data:`MAX_SCRIPTS`, in order): exactly one."""
    if ("script" in entry) == ("scripts" in entry):
        raise ScheduleError(f"{where}: give 'script' (one file) or 'scripts' (a list of files "
                            "run in order), not both or neither")
    if "script" in entry:
        if not isinstance(entry["script"], str):
            raise ScheduleError(f"{where}: 'script' must be a string")
        return (entry["script"],)
    steps = entry["scripts"]
    if (not isinstance(steps, list) or not all(isinstance(x, str) for x in steps)
            or not 1 <= len(steps) <= MAX_SCRIPTS):
        raise ScheduleError(f"{where}: 'scripts' must be a list of 1 to {MAX_SCRIPTS} file "
                            "names")
    return tuple(steps)


def _step_file(index: int, job: JobSpec, step: int) -> str:
    """The installed copy of step ``step`` of job ``index`` (the first keeps the name a
    one-script job has always had)."""
    return f"{index:03d}-{job.name}.sh" if step == 0 else f"{index:03d}-{job.name}.{step}.sh"


def _int(entry: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str,
         name: str) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScheduleError(f"{where} ({name}): {key!r} must be a whole number from {low} to "
                            f"{high}, not {value!r}")
    return value


def install_schedule(journal: Journal, jobs_dir: Path, bundle_id: str,
                     jobs: Sequence[JobSpec], files: Mapping[str, Path],
                     now: int | None = None) -> None:
    """Make ``jobs`` (from bundle ``bundle_id``; ``files``: its verified payload paths) the
    agent's schedule, replacing the installed one, installed at ``now`` — the clock the jobs
    are judged by (:class:`JobScheduler`'s), so no fire time before the install runs even
    when that clock is ahead of the journal's. Scripts are copied and fsynced before the
    journal names them; the previous bundle's copies are removed afterwards."""
    target = jobs_dir / bundle_id
    tmp = jobs_dir / f".{bundle_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    for i, job in enumerate(jobs):
        for k, script in enumerate(job.steps()):
            dest = tmp / _step_file(i, job, k)
            shutil.copyfile(files[script], dest)
            os.chmod(dest, 0o600)
            with dest.open("rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    fsync_dir(jobs_dir)
    payload = [asdict(j) for j in jobs]
    journal.set_schedule(bundle_id, payload, now)
    for old in jobs_dir.iterdir():
        if old.name != bundle_id:
            shutil.rmtree(old, ignore_errors=True)


def installed_schedule(journal: Journal) -> tuple[str | None, list[JobSpec], int]:
    """The installed schedule: (bundle id, jobs, installed at); (None, [], 0) when none."""
    found = journal.schedule()
    if found is None:
        return None, [], 0
    bundle_id, jobs, installed_at = found
    return bundle_id, [JobSpec(**{**j, "scripts": tuple(j.get("scripts") or ())})
                       for j in jobs], installed_at


def job_runs(journal: Journal, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent runs, newest first (``agent status``)."""
    return journal.job_runs(limit)


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def due_time(job: JobSpec, after: int, now: int) -> tuple[int | None, int]:
    """The latest fire time of ``job`` in (after, now] and how many earlier ones it covers."""
    trigger = job.trigger()
    fire = trigger.get_next_fire_time(None, _dt(after + 1))
    latest: int | None = None
    count = 0
    while fire is not None and fire <= _dt(now) and count < MAX_CATCH_UP:
        latest = int(fire.timestamp())
        count += 1
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return latest, max(count - 1, 0)


class JobScheduler:
    """Runs the installed jobs when due. ``tick`` is called by the agent's loop.

    Args:
        journal: the agent's journal (schedule and runs).
        jobs_dir: ``<home>/jobs`` (installed scripts).
        clock: the agent's policy clock (Unix seconds).
    """

    parse = staticmethod(parse_schedule)

    def __init__(self, journal: Journal, jobs_dir: Path, clock: Callable[[], int],
                 report: Callable[[int], None] | None = None,
                 report_after: int = REPORT_AFTER_S) -> None:
        self.journal = journal
        self.jobs_dir = jobs_dir
        self.clock = clock
        self.report = report
        self.report_after = report_after

    def recover(self) -> int:
        """At start-up: runs left ``running`` by a crash become ``interrupted``."""
        return self.journal.interrupt_job_runs(self.clock())

    def tick(self) -> list[int]:
        """Run every job that is due now (one run each); returns the ids of the runs."""
        bundle_id, jobs, installed_at = installed_schedule(self.journal)
        if bundle_id is None:
            return []
        now = self.clock()
        ran = []
        for i, job in enumerate(jobs):
            last = self.journal.last_job_due(job.name, bundle_id)
            due, missed = due_time(job, max(last or 0, installed_at), now)
            if due is None:
                continue
            run_id = self.journal.job_started(job.name, bundle_id, due, now, missed)
            if run_id is None:  # recorded already (another tick won the race)
                continue
            crash_point("job-started")
            folder = self.jobs_dir / bundle_id
            state, attempts, code, summary = self._run(job, [
                folder / _step_file(i, job, k) for k in range(len(job.steps()))])
            crash_point("job-ran")
            self.journal.job_finished(run_id, state, attempts, code, summary, self.clock())
            log.info("scheduled job %s (due %s): %s after %d attempt(s)", job.name,
                     _dt(due).isoformat(), state, attempts)
            ran.append(run_id)
        self._maybe_report()
        return ran

    def _maybe_report(self) -> bool:
        """Write a job report result when the oldest unreported run finished
        ``report_after`` seconds ago and no other result has carried it since."""
        if self.report is None:
            return False
        count, oldest = self.journal.unreported_job_runs()
        if count == 0 or oldest is None or self.clock() - oldest < self.report_after:
            return False
        self.report(count)
        return True

    def _run(self, job: JobSpec, scripts: list[Path]) -> tuple[str, int, int | None, str]:
        code: int | None = None
        summary = ""
        for attempt in range(1, job.retries + 2):
            code, summary = self._steps(job, scripts)
            if code == 0:
                return "succeeded", attempt, code, summary
        return "failed", job.retries + 1, code, summary

    def _steps(self, job: JobSpec, scripts: list[Path]) -> tuple[int | None, str]:
        """One attempt: each step in order, the first that fails ends it; ``timeout`` is
        the attempt's whole budget. A job of several steps says which step ended how."""
        if len(scripts) == 1:
            return self._attempt(job, scripts[0], job.timeout)
        started = time.monotonic()
        parts: list[str] = []
        code: int | None = 0
        for k, (script, name) in enumerate(zip(scripts, job.steps(), strict=True), 1):
            left = job.timeout - int(time.monotonic() - started)
            if left <= 0:
                code, text = None, f"timed out after {job.timeout} s before it started"
            else:
                code, text = self._attempt(job, script, left)
            parts.append(f"step {k}/{len(scripts)} {name}: {text}")
            if code != 0:
                break
        return code, _tail("\n".join(parts).encode())

    def _attempt(self, job: JobSpec, script: Path, timeout: int) -> tuple[int | None, str]:
        """Run one script as a shell step runs (``agent.executors.shell``): an environment
        built from nothing, its process group ended when it exits or times out, a pipe held
        open by something that left the group waited for only a bounded time, and only the
        tail of the output kept."""
        tail: deque[str] = deque()
        kept = [0]

        def keep(line: LogLine) -> None:
            if line.stream not in ("stdout", "stderr"):
                return
            tail.append(line.text)
            kept[0] += len(line.text) + 1
            while kept[0] > MAX_OUTPUT_CHARS and len(tail) > 1:
                kept[0] -= len(tail.popleft()) + 1

        ctx = StepContext(
            bundle_id=script.parent.name, release={}, index=0,
            step={"name": job.name, "kind": "shell", "script": script.name,
                  "interpreter": "bash", "env": {}, "args": [], "secrets": [],
                  "secrets_via": "env", "timeout_s": timeout},
            files={script.name: script}, workdir=script.parent, connection=None, secrets={},
            log=StepLog(cap_bytes=JOB_LOG_CAP_BYTES, sink=keep),
            deadline=time.monotonic() + timeout, cancel=threading.Event(), undo_dir=None)
        outcome = ShellExecutor().run(ctx)
        output = "\n".join(tail).strip()[-(MAX_OUTPUT_CHARS - 100):]
        if outcome.details.get("timed_out"):
            return None, f"timed out after {job.timeout} s; killed. {output}"[:MAX_OUTPUT_CHARS]
        code = outcome.exit_code
        if code is None and "signal" not in outcome.details:
            return None, f"cannot start {script}: {outcome.summary}"[:MAX_OUTPUT_CHARS]
        verdict = f"exit {code}" if code is not None else outcome.summary
        return code, f"{verdict}. {output}"[:MAX_OUTPUT_CHARS]


def _tail(out: bytes) -> str:
    text = out.decode("utf-8", "replace").strip()
    return text[-(MAX_OUTPUT_CHARS - 100):]

