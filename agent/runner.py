"""Runs the steps of an accepted, verified bundle, in graph order, journal first.

For each step: validate every step before the first runs (a malformed step fails the bundle
before anything changes); resolve the step's connection and secrets; mark the attempt
``running`` in the journal (committed) *before* starting it; run it with a deadline that is the
smaller of the step's timeout and the bundle's overall deadline; record the outcome. A failed
step with ``on_failure = "stop"`` stops what depends on it: those steps are ``skipped``, naming
the failed step, while steps that do not depend on it go on.

Order: the step graph of docs/release-format.md §3.7 (``bundle.dag``). A step without
``after`` runs after the step before it, so a release without ``after`` runs in order as it
always did. Of the steps whose predecessors have finished, the lowest-numbered starts first;
up to ``[run] max_parallel_steps`` run at once (default 1), each in a worker thread whose
journal writes are serialized by the journal's lock. An ``agent-upgrade`` step runs alone.

Logs: every line goes to ``logs/<bundle>/<step>-<attempt>.log`` as it is written (the live
view, capped at ``LOG_FILE_CAP_FACTOR`` × the step cap; a full disk stops the file, not the
step) and to an optional live sink; the capped, redacted log kept in memory goes into the
result.

Holding: before every step, ``gate()`` (the agent's windows, freezes and chain order,
``agent.holds``) may say the bundle must wait; the run then stops *before* that step, the
bundle's state becomes ``held`` (committed; crash point ``held``) with the reason, and the
remaining steps stay ``pending`` for a later :meth:`Runner.run`.

Resuming: :meth:`Runner.run` runs only the step attempts the journal shows ``pending``; steps
already finished are reported as they are (a ``stop`` failure among them still stops the
rest). So a bundle whose agent died *between* two steps continues with the next one, which
never started; a step that was running is never run again (``Journal.recover_interrupted``).

This module does not verify bundles, move files, or write result files (see ``agent.service``
and ``agent.results``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, resolve_connection, resolve_secret
from agent.executors import get_executor
from agent.executors.base import LogLine, StepContext, StepLog, StepOutcome
from agent.executors.errors import ExecutorError
from agent.faults import crash_point, fault_point
from agent.journal import Journal, StepRecord
from bundle.dag import Schedule, check_graph
from bundle.errors import ReleaseFormatError

__all__ = ["BundleOutcome", "Runner", "StepReport"]

LOG_FILE_CAP_FACTOR = 8
#: A step of this kind never runs alongside another (it restarts the agent).
_RUNS_ALONE = "agent-upgrade"

log = logging.getLogger("tiangong.agent.runner")

FinalHook = Callable[[str, str, list["StepReport"]], None]
"""``on_final(state, summary, reports)``: records the bundle's final state (and its result)."""


@dataclass
class StepReport:
    idx: int
    attempt: int
    name: str
    kind: str
    state: str  # succeeded | failed | skipped | interrupted | pending
    summary: str
    exit_code: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    log: str = ""
    log_truncated: bool = False


@dataclass
class BundleOutcome:
    status: str  # succeeded | failed | cancelled | held (stopped before a step, see gate)
    summary: str
    steps: list[StepReport]


class _FileSink:
    """Appends log lines to a file, up to a byte cap (then one marker line)."""

    def __init__(self, path: Path, cap: int, live: Callable[[LogLine], None] | None) -> None:
        self._path = path
        self._fh: Any = None
        try:
            fault_point("logs")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8", errors="replace")
        except OSError as exc:
            log.error("cannot write the live step log %s: %s; the step runs without it (its "
                      "log still goes into the result)", path, exc)
        self._cap = cap
        self._written = 0
        self._capped = False
        self._live = live
        self._lock = threading.Lock()

    def __call__(self, line: LogLine) -> None:
        text = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(line.ts))} [{line.stream}] "
        text += line.text + "\n"
        with self._lock:
            try:
                self._write(text)
            except OSError as exc:
                log.error("cannot write the live step log %s: %s; it stops here (the log "
                          "still goes into the result)", self._path, exc)
                self._fh.close()
                self._fh = None
        if self._live is not None:
            self._live(line)

    def _write(self, text: str) -> None:
        if self._fh is None:
            return
        fault_point("logs")
        if self._written + len(text) <= self._cap:
            self._fh.write(text)
            self._fh.flush()
            self._written += len(text)
        elif not self._capped:
            self._fh.write("[tiangong] live log file cap reached; the result keeps head "
                           "and tail\n")
            self._fh.flush()
            self._capped = True

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()


class Runner:
    """Runs bundles for one agent. Stateless apart from its collaborators."""

    def __init__(
        self,
        config: AgentConfig,
        journal: Journal,
        *,
        live_log: Callable[[str, int, LogLine], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.journal = journal
        self.live_log = live_log
        self.clock = clock
        self.cancel = threading.Event()

    def validate_steps(self, steps: list[Mapping[str, Any]]) -> None:
        """Raises ExecutorError naming the first invalid step."""
        for idx, step in enumerate(steps):
            try:
                get_executor(str(step.get("kind"))).validate(step)
            except ExecutorError as exc:
                raise ExecutorError(f"step {idx + 1} ({step.get('name')!r}): {exc}") from exc

    def run(
        self,
        bundle_id: str,
        manifest: Mapping[str, Any],
        files: Mapping[str, Path],
        sealed_secrets: Mapping[str, str] | None = None,
        on_final: FinalHook | None = None,
        gate: Callable[[], str | None] | None = None,
    ) -> BundleOutcome:
        """Run every pending step attempt of ``bundle_id`` (as recorded in the journal).

        ``on_final(state, summary, reports)`` records the final state (the agent records the
        result in the same transaction); by default only the bundle's state is set.
        ``gate()`` is asked before each step is started: a reason means "not now" — the
        bundle is recorded ``held`` with it and the outcome is ``held`` (``on_final`` is not
        called; the steps not started stay pending).
        """
        steps: list[Mapping[str, Any]] = list(manifest.get("steps") or [])
        release: Mapping[str, Any] = manifest.get("release") or {}
        bundle_deadline = time.monotonic() + self.config.bundle_timeout_s
        self.journal.set_bundle_state(bundle_id, "running")
        records = self.journal.steps(bundle_id, latest_only=True)
        reports: list[StepReport] = []
        invalid: str | None = None
        try:
            check_graph(steps)
            self.validate_steps(steps)
        except (ExecutorError, ReleaseFormatError) as exc:
            invalid = f"the bundle has an invalid step: {exc}"
        hold = self._run_graph(bundle_id, steps, records, reports, invalid, release, files,
                               sealed_secrets or {}, bundle_deadline, gate)
        reports.sort(key=lambda r: r.idx)
        if hold is not None:
            return BundleOutcome("held", hold, reports)
        stopped = invalid
        failed = [r for r in reports if r.state in ("failed", "interrupted")]
        if self.cancel.is_set():
            status, summary = "cancelled", "cancelled by the operator or agent shutdown"
        elif failed:
            first = failed[0]
            status = "failed"
            summary = f"step {first.idx + 1} ({first.name}) {first.state}: {first.summary}"
        elif stopped is not None:
            status, summary = "failed", stopped
        else:
            status = "succeeded"
            done = sum(1 for r in reports if r.state == "succeeded")
            skipped = sum(1 for r in reports if r.state == "skipped")
            summary = f"{done} step(s) succeeded" + (f", {skipped} skipped" if skipped else "")
        state = "failed" if status == "cancelled" else status
        if on_final is not None:
            on_final(state, summary, reports)
        else:
            self.journal.set_bundle_state(bundle_id, state, summary)
        return BundleOutcome(status, summary, reports)

    def _run_graph(
        self,
        bundle_id: str,
        steps: list[Mapping[str, Any]],
        records: list[StepRecord],
        reports: list[StepReport],
        invalid: str | None,
        release: Mapping[str, Any],
        files: Mapping[str, Path],
        sealed: Mapping[str, str],
        bundle_deadline: float,
        gate: Callable[[], str | None] | None,
    ) -> str | None:
        """Run the pending step attempts in graph order (``bundle.dag``), at most
        ``config.max_parallel_steps`` at once; append a report per step to ``reports``.

        A step starts once every step it runs after has finished without a stopping failure;
        a stopping failure skips what depends on it (naming the failed step) while independent
        branches go on. Returns the hold reason when ``gate()`` stopped the run before a step
        (the steps running then finish first; the ones not started stay pending), else None.
        """
        sched = Schedule.of(steps) if invalid is None else None
        pending: dict[int, StepRecord] = {}
        for rec in records:
            if rec.state == "pending":
                pending[rec.idx] = rec
                continue
            # Already done: in an earlier attempt (retry from a later step), or before the
            # agent restarted (resuming between two steps).
            reports.append(StepReport(rec.idx, rec.attempt, rec.name, rec.kind, rec.state,
                                      rec.summary or "", rec.exit_code, rec.started_at,
                                      rec.finished_at, rec.details or {}))
            if sched is not None:
                sched.finished(rec.idx, rec.state)

        def skip(idx: int, why: str) -> None:
            rec = pending.pop(idx)
            summary = f"not run: {why}"
            self.journal.step_finished(bundle_id, rec.idx, rec.attempt, "skipped", summary)
            reports.append(StepReport(rec.idx, rec.attempt, rec.name, rec.kind, "skipped",
                                      summary))

        if sched is None:
            for idx in sorted(pending):
                skip(idx, invalid or "invalid bundle")
            return None
        limit = max(1, self.config.max_parallel_steps)
        running: dict[Future[StepReport], int] = {}
        hold: str | None = None
        pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="step") \
            if limit > 1 else None
        try:
            while True:
                for idx, cause in sched.blocked():
                    if idx in pending:
                        state = sched.done.get(cause, "failed")
                        skip(idx, f"step {cause + 1} ({steps[cause].get('name')}) {state}")
                        sched.finished(idx, "skipped", cause)
                if self.cancel.is_set():
                    for idx in sorted(pending):
                        if idx not in sched.started:
                            skip(idx, "cancelled")
                            sched.finished(idx, "skipped")
                ready = [i for i in sched.ready() if i in pending]
                ran_inline = False
                while ready and hold is None and len(running) < limit:
                    idx = ready[0]
                    alone = str(steps[idx].get("kind")) == _RUNS_ALONE
                    if running and (alone or any(
                            str(steps[i].get("kind")) == _RUNS_ALONE for i in running.values())):
                        break
                    hold = gate() if gate is not None else None
                    if hold is not None:
                        break
                    ready.pop(0)
                    sched.start(idx)
                    rec = pending[idx]
                    args = (bundle_id, idx, rec.attempt, steps[idx], release, files, sealed,
                            bundle_deadline)
                    if pool is None:
                        self._step_done(self._run_step(*args), pending, reports, sched)
                        ran_inline = True
                        break  # one at a time, lowest ready index first: look again
                    else:
                        running[pool.submit(self._run_step, *args)] = idx
                if not running:
                    if ran_inline:
                        continue
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    del running[fut]
                    self._step_done(fut.result(), pending, reports, sched)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        if hold is not None:
            self.journal.set_bundle_state(bundle_id, "held", hold)
            crash_point("held")
            first = min(pending) if pending else 0
            log.warning("bundle %s held before step %d (%s): %s", bundle_id, first + 1,
                        steps[first].get("name") if steps else "?", hold)
            return hold
        for idx in sorted(pending):  # cannot happen with a checked graph; never leave one
            skip(idx, "a step it runs after did not finish")
        return None

    @staticmethod
    def _step_done(report: StepReport, pending: dict[int, StepRecord],
                   reports: list[StepReport], sched: Schedule) -> None:
        pending.pop(report.idx, None)
        reports.append(report)
        sched.finished(report.idx, report.state)

    def _run_step(
        self,
        bundle_id: str,
        idx: int,
        attempt: int,
        step: Mapping[str, Any],
        release: Mapping[str, Any],
        files: Mapping[str, Path],
        sealed: Mapping[str, str],
        bundle_deadline: float,
    ) -> StepReport:
        name = str(step.get("name", f"step {idx + 1}"))
        kind = str(step.get("kind", "?"))
        log_path = self.config.logs / bundle_id / f"{idx + 1:03d}-{attempt}.log"
        # Resolve secrets and the connection first: they may fail without anything running.
        secrets: dict[str, str] = {}
        connection = None
        problem: str | None = None
        try:
            for sname in step.get("secrets", []) or []:
                secrets[str(sname)] = resolve_secret(self.config, str(sname), sealed)
            if step.get("connection"):
                connection = resolve_connection(self.config, str(step["connection"]), sealed)
        except ConfigError as exc:
            problem = str(exc)
        live = None
        if self.live_log is not None:
            cb = self.live_log

            def live(line: LogLine, _bid: str = bundle_id, _idx: int = idx) -> None:
                cb(_bid, _idx, line)

        sink = _FileSink(log_path, self.config.step_log_cap_bytes * LOG_FILE_CAP_FACTOR, live)
        log = StepLog(cap_bytes=self.config.step_log_cap_bytes, secrets=list(secrets.values()),
                      sink=sink)
        try:
            self.journal.step_running(bundle_id, idx, attempt, str(log_path))
        except BaseException:
            sink.close()
            raise
        crash_point("step-started")
        started = int(self.clock())
        workdir = self.config.runs / bundle_id / f"{idx + 1:03d}-{attempt}"
        try:
            if problem is None:
                try:
                    if workdir.exists():
                        shutil.rmtree(workdir)
                    workdir.mkdir(parents=True, mode=0o700)
                except OSError as exc:
                    problem = (f"cannot create the working directory {workdir}: "
                               f"{exc.strerror or exc}; nothing was run")
            if problem is not None:
                log.write(problem, "tiangong")
                outcome = StepOutcome("failed", problem)
            else:
                timeout = int(step.get("timeout_s", 600))
                deadline = min(time.monotonic() + timeout, bundle_deadline)
                log.write(f"step {idx + 1} ({name}, {kind}) attempt {attempt} started; "
                          f"timeout {timeout} s", "tiangong")
                ctx = StepContext(
                    bundle_id=bundle_id, release=release, index=idx, step=step, files=files,
                    workdir=workdir, connection=connection, secrets=secrets, log=log,
                    deadline=deadline, cancel=self.cancel,
                    undo_dir=self.config.home / "undo" / bundle_id / f"{idx + 1:03d}",
                )
                try:
                    outcome = get_executor(kind).run(ctx)
                except Exception as exc:  # an executor bug must not kill the agent
                    outcome = StepOutcome("failed", f"internal error in the {kind} executor: "
                                          f"{type(exc).__name__}: {log.redact(str(exc))}")
                crash_point("step-ran")
                log.write(f"step {idx + 1} {outcome.status}: {outcome.summary}", "tiangong")
        finally:
            sink.close()
        details = dict(outcome.details)
        if log.truncated:
            details["log_truncated"] = True
        self.journal.step_finished(bundle_id, idx, attempt, outcome.status,
                                   log.redact(outcome.summary), outcome.exit_code, details)
        crash_point("step-finished")
        return StepReport(idx, attempt, name, kind, outcome.status, log.redact(outcome.summary),
                          outcome.exit_code, started, int(self.clock()), details, log.text(),
                          log.truncated)

