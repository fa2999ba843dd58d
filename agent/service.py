"""The agent's core loop: inbox → verify → accept (journal) → run → signed result.

One bundle at a time. For every ready inbox item:

1. If its envelope digest is already in the journal, it is a **duplicate**: archived, not run,
   reported in a ``duplicate`` result.
2. Verify it with ``bundle.reader`` against the pinned root and the journal's replay state,
   staging into ``staging/``. Bad data → the rejection and its signed ``rejected`` result are
   journaled, then the files move to ``quarantine/`` with ``<name>.reason.txt``. A transport
   error (unreadable stick) leaves the files where they are.
3. Check every step before anything is consumed: ``bundle.steps`` rules, the executor's own
   rules, every script or manifest it names present in the bundle, every connection it names
   defined in ``agent.toml`` with the right type (check ``steps``); then the approvals the
   root requires for this agent's environment (``agent.approvalcheck``, check
   ``approvals``). A bundle that fails is refused like bad data, its result naming the
   verified bundle; its sequence is not consumed.
4. Record acceptance *and* the new replay state (root, sequence, time floor) in one journal
   transaction, then move the inbox files to ``archive/``. Only then does anything run.
5. Wait for ``not_before`` if the manifest has one (the bundle waits in ``staging/``; ``agent
   status`` says so), then run the steps (``agent.runner``); the final state and the result
   are journaled together, then the result file is written (``agent.results``).
6. Before every step, the bundle's maintenance windows and freezes (``agent.holds``) may hold
   it: state ``held`` with the reason, committed; later bundles wait behind it; the loop
   looks again when the policy says (or on ``agent run-now``), and continues with the step
   that did not start.

Every durable transition is a named crash point (``agent.faults``, docs/agent.md): the journal
is written before each action, and every action can be repeated from the journal after a
crash without a second run or a second result. On start, steps the journal shows as running
are marked ``interrupted`` and reported; nothing is re-run without ``tiangong agent retry``.

A full or read-only disk (outbox, archive, quarantine, journal) never stops the loop: the
error is logged once, and what could not be written (results, moves) is retried on every
pass until it succeeds, without a restart.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.approvalcheck import check_approvals, release_digest, required_here
from agent.config import AgentConfig
from agent.faults import crash_point, fault_point
from agent.holds import (
    Decision,
    Earlier,
    PolicyClock,
    after_held,
    decide,
    override_record,
    policy_of,
)
from agent.home import AgentKeys, load_keys
from agent.inbox import (
    QUARANTINE_COPY_CAP,
    REASON_HASH_CAP,
    Inbox,
    InboxWatcher,
    ReadyItem,
    move_to,
    write_reason,
)
from agent.inventory import collect as collect_inventory
from agent.jobs import (
    SCHEDULE_FILE,
    JobScheduler,
    ScheduleError,
    install_schedule,
    installed_schedule,
    job_runs,
)
from agent.journal import BundleRecord, Journal, JournalError, JournalWriteError, ResultIntent
from agent.metrics import WRITE_EVERY_S, AgentFigures, write_textfile
from agent.metrics import render as render_metrics
from agent.order import Held, Sequencer, held_rows
from agent.plan import PlanRunner, is_plan
from agent.results import agent_version, flush_results, remove_temporaries, result_intent
from agent.runner import Runner, StepReport
from agent.stepcheck import check_steps
from bundle.approvals import undone_bundle
from bundle.dag import graph_of, has_after
from bundle.errors import BundleError, InsufficientSpaceError, PartsError
from bundle.manifest import Manifest
from bundle.parts import find_first_part, strip_part_suffix
from bundle.printable import printable
from bundle.reader import (
    AdmitFn,
    ExpectRelease,
    VerifiedBundle,
    VerifierState,
    inspect,
    verify_parts,
    verify_path,
)
from bundle.sync.state import MAX_HOLD_TEXT, MAX_HOLDS
from signing.errors import SigningError
from signing.roots import TrustedRoot
from signing.sealed import open_secret

__all__ = ["Agent", "ProcessOutcome"]

log = logging.getLogger("tiangong.agent")

#: Seconds between attempts to write result files to an outbox that refused (full, read-only).
RETRY_SECONDS = 5.0  # seconds


OWN_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Errors only a write raises: staging on the agent's own disk failed, not the read of one
inbox file, so no later item of the pass can be staged either (``Agent.process``)."""


def apply_item(files: Sequence[Path], now: float) -> ReadyItem:
    """The item ``agent apply FILE…`` processes: one bundle file, or a split bundle's parts.

    Only regular files, as the inbox takes: processed as a bundle, a device such as
    /dev/null was "refused" and moved to quarantine/ (run as root, the device node left
    /dev), and a FIFO hung the command.

    Raises:
        ValueError: a file cannot be read, or is a symbolic link, a device, a FIFO or a
            socket; nothing was done.
    """
    sizes = []
    for path in files:
        try:
            st = path.lstat()
        except OSError as exc:
            raise ValueError(f"cannot read {printable(str(path))}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            what = ("a symbolic link" if stat.S_ISLNK(st.st_mode)
                    else "a device, FIFO or socket")
            raise ValueError(
                f"{printable(str(path))} is {what}, not a regular file: the agent reads only "
                "regular files (as its inbox does); nothing was done. Copy the bundle file "
                "itself and apply the copy")
        sizes.append(st.st_size)
    split = len(files) > 1 or files[0].name.endswith(".part000")
    return ReadyItem(name=files[0].name.removesuffix(".part000"), paths=tuple(files),
                     size=sum(sizes), kind="split" if split else "single", first_seen=now)


@dataclass(frozen=True)
class ProcessOutcome:
    name: str
    # succeeded | failed | cancelled | rejected | duplicate | waiting | deferred | held
    # | archived (the files of a bundle accepted before a crash reached archive/)
    # | on-hold (accepted, waiting for a maintenance window, the end of a freeze or an
    #   earlier held bundle; ``held`` is an inbox file that was not accepted yet)
    status: str
    summary: str
    bundle_id: str | None = None
    result: Path | None = None


class Agent:
    """One agent home: its config, keys, journal, inbox and runner."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        keys: AgentKeys | None = None,
        clock: Callable[[], float] = time.time,
        live_log: Callable[[str, int, Any], None] | None = None,
    ) -> None:
        self.config = config
        self.keys = keys or load_keys(config)
        self.clock = clock
        self.journal = Journal(config.journal_path, clock=clock, create=False)
        self.inbox = Inbox(config.inbox, settle_seconds=config.settle_seconds, wall_clock=clock,
                           taken_file=config.home / "inbox-taken.json")
        self.runner = Runner(config, self.journal, live_log=live_log, clock=clock)
        self.plans = PlanRunner(self)
        self.order = Sequencer(self.journal, self._accepted, config.staging,
                               config.home / "chain-decisions.json")
        self.inbox.part_problems = lambda paths: self.order.part_problems(paths, self._verify)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._own_disk_refused = False  # this pass: staging hit a full or read-only disk
        #: ``progress(phase, done, total)`` while a bundle is verified (``agent apply``).
        self.progress: Callable[[str, int, int], None] | None = None
        self._problems: dict[str, str] = {}  # what keeps failing (logged once) by area
        self._needs_recovery = False
        self._outbox_retry_at = 0.0  # time.monotonic() before which a refusing outbox waits
        #: The time windows and freezes are judged by (never below the time floor).
        self.policy_clock = PolicyClock(clock, self._time_floor)
        #: bundle id -> (policy time decided at, time to look again): no arithmetic between.
        self._hold_cache: dict[str, tuple[int, int | None, Decision]] = {}
        #: the newest accepted bundle's windows as text (:meth:`window`), read once
        self._window: str | object | None = _UNREAD
        #: set while the live channel is authenticated (``agent run`` with a hub_url)
        self.live_connected: threading.Event | None = None
        self._metrics_at = -WRITE_EVERY_S  # time.monotonic() of the last textfile write
        #: Scheduled site jobs (agent.jobs), on the policy clock; a job report result when
        #: finished runs have waited ``report_after`` seconds for a result to carry them.
        self.jobs = JobScheduler(self.journal, config.home / "jobs", self.policy_clock,
                                 report=self._job_report)

    def close(self) -> None:
        self.journal.close()

    # -- trust ------------------------------------------------------------------------------

    def _issuer(self) -> str:
        if self.config.hub_id is None:
            raise RuntimeError("the agent config has no hub_id; re-run 'tiangong agent init'")
        return self.config.hub_id

    def _trust(self) -> tuple[TrustedRoot, VerifierState]:
        rec = self.journal.trust(self._issuer())
        if rec is None:
            raise RuntimeError("no pinned root in the journal; re-run 'tiangong agent init'")
        return (TrustedRoot.pin(rec.root_envelope),
                VerifierState(rec.root_version, rec.sequence, rec.time_floor))

    def _time_floor(self) -> int:
        rec = self.journal.trust(self._issuer())
        return rec.time_floor if rec is not None else 0

    def _accepted(self) -> tuple[int, int]:
        _, state = self._trust()
        return (state.root_version, state.sequence)

    # -- startup ----------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Mark steps that were running when the agent died as interrupted and record their
        results (one transaction), then write every pending result. Nothing is re-run."""
        self._clean_staging()
        self._clean_temporaries()
        ids = self.journal.recover_interrupted(self._interrupted_result)
        crash_point("interrupted-recorded")
        if self.jobs.recover():
            log.warning("a scheduled job was interrupted: the agent stopped while it ran; it "
                        "is reported as interrupted and runs again at its next time")
        for bundle_id in ids:
            log.warning("bundle %s was interrupted: the agent stopped while a step was "
                        "running; nothing is re-run automatically (use 'tiangong agent retry')",
                        bundle_id)
        self._needs_recovery = False
        return self.flush()

    def _clean_staging(self) -> None:
        """Remove what an interrupted verification left in ``staging/`` (anything no
        journal bundle refers to); staged payloads of accepted bundles stay for retries."""
        try:
            entries = list(self.config.staging.iterdir())
        except FileNotFoundError:
            return
        keep = {Path(b.staged_dir) for b in self.journal.bundles() if b.staged_dir}
        for entry in entries:
            if entry not in keep:
                log.info("removing %s, left in staging/ by an interrupted verification", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def _clean_temporaries(self) -> None:
        """Remove the temporaries an interrupted write left in the outbox (a result being
        built), archive/ and quarantine/ (a copy across devices, a reason file) and the home
        (its small state files): each is written again from the journal as needed."""
        c = self.config
        for path in remove_temporaries([c.outbox, c.archive, c.archive / "duplicates",
                                        c.quarantine, c.home]):
            log.info("removed %s, left by an interrupted write", printable(str(path)))

    def _interrupted_result(self, bundle_id: str) -> ResultIntent:
        rec = self.journal.bundle(bundle_id)
        steps = [StepReport(s.idx, s.attempt, s.name, s.kind, s.state, s.summary or "",
                            s.exit_code, s.started_at, s.finished_at, s.details or {},
                            _read_log(s.log_path))
                 for s in self.journal.steps(bundle_id, latest_only=True)]
        return self._intent("interrupted",
                            "interrupted: the agent stopped while a step was running",
                            bundle_id, rec.envelope_sha256 if rec else None,
                            rec.manifest.get("release") if rec else None, steps,
                            self._override_extra(bundle_id, rec.manifest) if rec else None,
                            manifest_steps=list(rec.manifest.get("steps") or []) if rec else [])

    def _override_extra(self, bundle_id: str, manifest: Mapping[str, Any]
                        ) -> dict[str, Any] | None:
        """The result body's ``override`` (hub and/or run-now), or None."""
        override = override_record(manifest, self.journal.override(bundle_id))
        return None if override is None else {"override": override}

    def flush(self) -> list[Path]:
        """Write pending results and finish pending moves; log (once) what still fails.

        Never raises for a full or read-only disk: what cannot be done now is retried by the
        next call.
        """
        written: list[Path] = []
        if "outbox" in self._problems and time.monotonic() < self._outbox_retry_at:
            pass  # building a result costs CPU: a refusing disk is tried every few seconds
        else:
            try:
                written = flush_results(self.config, self.journal, self.keys.identity)
            except (OSError, JournalWriteError) as exc:
                self._outbox_retry_at = time.monotonic() + RETRY_SECONDS
                self._problem("outbox", f"cannot write a result file to {self.config.outbox}: "
                              f"{_why(exc)}; it stays recorded in the journal and is written "
                              "as soon as the outbox can be written")
            else:
                self._solved("outbox", f"result files written to {self.config.outbox} again")
        for rec in self.journal.unarchived():
            self._archive(rec.bundle_id, _item_of(self.config.inbox, rec.source,
                                                  rec.inbox_files))
        for disposal in self.journal.open_disposals():
            item = _item_of(self.config.inbox, disposal.names[0], disposal.names)
            self._dispose(disposal.id, item, Path(disposal.dest), disposal.rejection)
        return written

    def _problem(self, area: str, message: str) -> None:
        if self._problems.get(area) != message:
            log.error(message)
        self._problems[area] = message

    def _solved(self, area: str, message: str) -> None:
        if self._problems.pop(area, None) is not None:
            log.info("recovered: %s", message)

    # -- one item ---------------------------------------------------------------------------

    def process(self, item: ReadyItem) -> ProcessOutcome:
        """Verify, accept, run and report one inbox item. Never raises for bad data.

        A bundle whose predecessor has not been applied, or that does not fit in staging
        now, is ``held``: left in the inbox, with the reason (``agent.order``).

        Raises:
            JournalWriteError: the journal cannot be written (nothing was consumed; the item
                stays in the inbox and is tried again).
        """
        if is_plan(item):  # a preflight plan: its own state, changes nothing (agent.plan)
            return self.plans.process(item)
        try:
            vb = self._verify(item, self.order.admit)
        except Held as held:
            seq = held.position[1] if held.position else None
            return ProcessOutcome(printable(item.name), "held",
                                  self.order.hold(item, held.reason, seq))
        except InsufficientSpaceError as exc:
            return ProcessOutcome(printable(item.name), "held", self.order.hold_for_space(
                item, exc, self._left_as(item, "it stays in the inbox and is tried again on "
                                               "every scan")))
        except PartsError as exc:
            if exc.damaged or exc.missing:
                return self._bad_parts(item, exc)
            return self._reject(item, exc.check, str(exc))
        except BundleError as exc:
            dup = self._duplicate_of(item, exc)
            if dup is not None:
                return dup
            exc = self.order.explain(exc)
            return self._reject(item, exc.check, str(exc))
        except OSError as exc:
            # Transport trouble, or no room in staging/: leave the files; the next scan
            # tries again. The agent's own disk refusing writes ends the pass: a later item
            # staged in this pass (the disk recovered meanwhile) would be accepted before
            # this one and make it an old sequence.
            left = self._left_as(item, "it stays in the inbox and is tried again")
            what = "cannot read it"
            if exc.errno in OWN_DISK_ERRNOS:
                self._own_disk_refused = True
                what = f"cannot stage it in {self.config.staging}"
            self._problem(f"verify {printable(item.name)}",
                          f"cannot verify {printable(item.name)}: {what}: {_why(exc)}; {left}")
            return ProcessOutcome(printable(item.name), "deferred",
                                  f"{what}: {_why(exc)}; {left}")
        self._solved(f"verify {printable(item.name)}", f"{printable(item.name)} verified")
        crash_point("staged")
        check, details = "steps", None
        problem = check_steps(self.config, vb.manifest.steps,
                              {f.name for f in vb.manifest.files})
        if problem is None:
            refusal = check_approvals(self.config.environment, vb, self.journal,
                                      self.config.home / "undo")
            if refusal is not None:
                check, (problem, details) = "approvals", refusal
        if problem is not None:
            shutil.rmtree(vb.staged_dir, ignore_errors=True)
            return self._reject(item, check, f"bundle {vb.manifest.bundle_id} (sequence "
                                f"{vb.manifest.sequence}) is refused before anything ran, and "
                                f"its sequence is not used up: {problem}", verified=vb,
                                details={check: details} if details else None)
        return self._accept_and_run(item, vb)

    def _left_as(self, item: ReadyItem, in_inbox: str) -> str:
        """What becomes of ``item`` when it is not taken now: ``in_inbox`` for the inbox's
        files; a file given to 'agent apply' from elsewhere is left where it is, and nothing
        tries it again."""
        first = item.paths[0]
        if os.path.abspath(first.parent) == os.path.abspath(self.config.inbox):
            return in_inbox
        return (f"{printable(str(first))} is left where it is; run 'tiangong agent apply' "
                "on it again")

    def _verify(self, item: ReadyItem, admit: AdmitFn) -> VerifiedBundle:
        trusted, state = self._trust()
        expect = ExpectRelease(agent_id=self.config.agent_id,
                               environment=self.config.environment)
        fault_point("staging")
        self.config.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        kwargs: dict[str, Any] = dict(trusted_root=trusted, state=state, expect=expect,
                                      staging_dir=self.config.staging, label=printable(item.name),
                                      clock=lambda: int(self.clock()), admit=admit,
                                      progress=self.progress)
        if item.kind == "split":
            return verify_parts(list(item.paths), **kwargs)
        return verify_path(item.paths[0], **kwargs)

    def _duplicate_of(self, item: ReadyItem, exc: BundleError) -> ProcessOutcome | None:
        """A replayed bundle whose exact envelope was accepted before is a duplicate (or our
        own accepted bundle whose files did not reach ``archive/`` before a crash)."""
        if exc.check != "sequence":
            return None
        try:
            first = find_first_part(list(item.paths)) if item.kind == "split" else item.paths[0]
            # Unverified, used only to look up a digest we already trust in the journal.
            claimed = inspect(first)
        except (BundleError, OSError):
            return None
        rec = self.journal.find_by_envelope(claimed.envelope_sha256)
        if rec is None:
            return None
        # Same signed envelope as a bundle already received. It is a duplicate only if the
        # whole file is intact: re-verify every byte (sequence relaxed) into a throwaway
        # staging directory; a damaged copy is quarantined like any other bad file.
        damage = self._check_copy(item, rec.root_version, rec.sequence)
        if damage is not None:
            return self._reject(item, damage.check,
                                f"{damage} (a damaged copy of bundle {rec.bundle_id}, which "
                                "was already received intact)")
        if not rec.archived and set(rec.inbox_files) == {p.name for p in item.paths}:
            # Accepted, then the agent stopped (or the disk was full) before the files
            # reached archive/: finish that, no second run and no second result.
            self._archive(rec.bundle_id, item)
            return ProcessOutcome(printable(item.name), "archived", f"{printable(item.name)}: "
                                  f"bundle {rec.bundle_id} was accepted before; its files are "
                                  "now archived", rec.bundle_id)
        summary = (f"{printable(item.name)} is a copy of bundle {rec.bundle_id}, already received "
                   f"(state: {rec.state}); it was not run again")
        log.info(summary)
        intent = self._intent("duplicate", summary, rec.bundle_id, rec.envelope_sha256,
                              rec.manifest.get("release"), [])
        seq = self._dispose_new(item, self.config.archive / "duplicates", intent, None)
        return ProcessOutcome(printable(item.name), "duplicate", summary, rec.bundle_id,
                              self._result_path(seq))

    def _check_copy(self, item: ReadyItem, root_version: int,
                    sequence: int) -> BundleError | None:
        trusted, _ = self._trust()
        relaxed = VerifierState(root_version, sequence - 1, 0)
        expect = ExpectRelease(agent_id=self.config.agent_id,
                               environment=self.config.environment)
        scratch = Path(tempfile.mkdtemp(prefix="dupcheck-", dir=self.config.staging))
        try:
            kwargs: dict[str, Any] = dict(trusted_root=trusted, state=relaxed, expect=expect,
                                          staging_dir=scratch, label=printable(item.name),
                                          clock=lambda: int(self.clock()))
            if item.kind == "split":
                verify_parts(list(item.paths), **kwargs)
            else:
                verify_path(item.paths[0], **kwargs)
        except BundleError as exc:
            return exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None

    def _bad_parts(self, item: ReadyItem, exc: PartsError) -> ProcessOutcome:
        """Missing or damaged parts of a split bundle: only the damaged files go to
        quarantine (reason file named after the bundle); the bundle waits in the inbox for
        the parts to be copied again. Not a verdict on the bundle: no result yet."""
        damaged = [p for p in item.paths if p in set(exc.damaged)]
        if damaged:
            part = ReadyItem(item.name, tuple(damaged), 0, "split", item.first_seen)
            dest = self.config.quarantine
            moved = move_to(part, dest, max_copy_bytes=QUARANTINE_COPY_CAP)
            write_reason(dest, strip_part_suffix(moved[0].name), exc.check, str(exc),
                         files=moved)
            self.inbox.forget(part)
            self.journal.record_rejection(printable(item.name), None, exc.check, str(exc))
            log.error("bundle %s: %s; moved %s to %s", printable(item.name), exc,
                      ", ".join(printable(p.name) for p in damaged), dest)
        return ProcessOutcome(printable(item.name), "held",
                              self.order.hold(item, f"waiting for parts to be copied again: "
                                              f"{exc}"))

    def _reject(self, item: ReadyItem, check: str, reason: str,
                verified: VerifiedBundle | None = None,
                details: Mapping[str, Any] | None = None,
                named: Manifest | None = None) -> ProcessOutcome:
        """Quarantine ``item`` with a signed ``rejected`` result. A bundle refused after it
        verified (step or approval check) is named in the result (bundle id and envelope
        digest, which its signature vouches for); so is a plan refused by a rule checked
        after its signature (``named``: expired, a replay; ``agent.plan``); an unverified
        one never is. ``details`` go into the result's body (the approval verdict under
        ``approvals``)."""
        dest = self.config.quarantine
        name = printable(item.name)
        log.error("refused %s [%s]: %s; moving it to %s", name, check, reason, dest)
        m = verified.manifest if verified is not None else named
        intent = self._intent(
            "rejected", reason, m.bundle_id if m is not None else None,
            verified.envelope_sha256 if verified is not None else None,
            m.release.to_json() if m is not None and m.release is not None else None, [],
            extra={"rejected_file": name, "check": check, **(details or {})})
        seq = self._dispose_new(item, dest, intent, (name, check, reason))
        return ProcessOutcome(name, "rejected", reason, m.bundle_id if m is not None else None,
                              self._result_path(seq))

    def _dispose_new(self, item: ReadyItem, dest: Path, intent: ResultIntent,
                     rejection: tuple[str, str, str] | None) -> int | None:
        """Record a refused file or a duplicate copy with its result, then move it to
        ``dest``. A disposal of the same files recorded before a crash is finished instead
        (no second result)."""
        names = tuple(p.name for p in item.paths)
        try:
            digest = _files_digest(item.paths)
        except OSError as exc:
            log.error("cannot read %s: %s; leaving it in the inbox", printable(item.name),
                      _why(exc))
            return None
        earlier = self.journal.find_disposal(names, digest)
        if earlier is None:
            earlier = self.journal.record_disposal(names, digest, str(dest), intent, rejection)
            crash_point("rejection-recorded")
        self._dispose(earlier.id, item, dest, earlier.rejection)
        self.inbox.forget(item)
        self.flush()
        return earlier.result_seq

    def _dispose(self, disposal_id: int, item: ReadyItem, dest: Path,
                 rejection: tuple[str, str, str] | None) -> None:
        moving = _still_there(item)
        if moving is None:
            # Moved before a crash (or taken away by the operator): nothing left to do.
            self.journal.disposal_done(disposal_id)
            return
        if self._move_out(moving, dest, rejection, printable(item.name)):
            self.journal.disposal_done(disposal_id)
            crash_point("quarantined")

    def _archive(self, bundle_id: str, item: ReadyItem) -> None:
        moving = _still_there(item)
        if moving is None or self._move_out(
                moving, self.config.archive, None,
                f"{printable(item.name)} (bundle {bundle_id}, accepted)"):
            self.journal.set_archived(bundle_id)

    def _move_out(self, moving: ReadyItem, dest: Path, rejection: tuple[str, str, str] | None,
                  what: str) -> bool:
        """Move inbox files to ``dest`` (private, 0600), with the reason file of a refused
        one (refused files are copied only up to the quarantine cap). False, logged once,
        when the disk refuses: the caller's journal row says to try again."""
        quarantine = dest == self.config.quarantine
        try:
            fault_point("quarantine" if quarantine else "archive")
            moved = move_to(moving, dest,
                            max_copy_bytes=QUARANTINE_COPY_CAP if quarantine else None)
            for path in moved:
                if path.parent == dest:  # not a file left on read-only media (over the cap)
                    os.chmod(path, 0o600)
            if rejection is not None:
                write_reason(dest, strip_part_suffix(moved[0].name), rejection[1], rejection[2],
                             files=moved)
        except OSError as exc:
            self._problem(f"move {what}", f"cannot move {what} to {dest}: {_why(exc)}; it "
                          "stays in the inbox (what happened to it is recorded) and is moved "
                          "as soon as possible")
            return False
        self._solved(f"move {what}", f"moved {what} to {dest}")
        return True

    def _accept_and_run(self, item: ReadyItem, vb: VerifiedBundle) -> ProcessOutcome:
        m = vb.manifest
        manifest_json = m.to_json()
        try:
            self.journal.accept_bundle(
                issuer=self._issuer(), root_envelope=vb.trusted_root.envelope,
                root_version=vb.state.root_version, sequence=vb.state.sequence,
                time_floor=vb.state.time_floor, bundle_id=m.bundle_id,
                envelope_sha256=vb.envelope_sha256, source=printable(item.name),
                manifest=manifest_json,
                staged_dir=str(vb.staged_dir), not_before=vb.not_before,
                steps=[(str(s.get("name")), str(s.get("kind"))) for s in m.steps],
                inbox_files=tuple(p.name for p in item.paths),
                release_digest=release_digest(m), undoes=undone_bundle(m),
            )
        except JournalWriteError:
            shutil.rmtree(vb.staged_dir, ignore_errors=True)
            raise
        except JournalError as exc:
            return self._reject(item, "sequence", str(exc))
        crash_point("accepted")
        self._window = _window_of(manifest_json)
        self.inbox.forget(item)
        log.info("accepted %s: %s, sequence %d", printable(item.name), m.bundle_id, m.sequence)
        self._archive(m.bundle_id, item)
        crash_point("archived")
        return self.run_accepted(m.bundle_id)

    def run_accepted(self, bundle_id: str) -> ProcessOutcome:
        """Run an accepted bundle whose ``not_before`` has passed; write its result."""
        rec = self.journal.bundle(bundle_id)
        if rec is None:
            raise KeyError(bundle_id)
        if rec.not_before is not None and rec.not_before > self.clock():
            log.info("bundle %s waits in staging until %s (not_before)", bundle_id,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.not_before)))
            return ProcessOutcome(rec.source, "waiting", "waiting for not_before", bundle_id)
        held = self.hold_of(rec)
        if held is not None:
            return self._keep_held(rec, held)
        manifest = rec.manifest
        staged = Path(rec.staged_dir or "")
        files = _staged_files(manifest, staged)
        sealed = self._open_secrets(bundle_id, manifest)
        seqs: list[int] = []
        scheduled: list[tuple[str, str]] = []  # (state, summary) after a schedule.toml

        def final(state: str, summary: str, reports: list[StepReport]) -> None:
            if (state == "succeeded" and not self.runner.cancel.is_set()
                    and SCHEDULE_FILE in files):
                state, summary = self._install_schedule(bundle_id, files, state, summary)
                scheduled.append((state, summary))
            status = "cancelled" if self.runner.cancel.is_set() else state
            intent = self._intent(status, summary, bundle_id, rec.envelope_sha256,
                                  manifest.get("release"), reports,
                                  self._override_extra(bundle_id, manifest),
                                  list(manifest.get("steps") or []))
            seqs.append(self.journal.finish_bundle(bundle_id, state, summary, intent))
            crash_point("final")

        def gate() -> str | None:
            current = self.journal.bundle(bundle_id)
            decision = self.hold_of(current) if current is not None else None
            return None if decision is None else decision.text

        outcome = self.runner.run(bundle_id, manifest, files, sealed, on_final=final,
                                  gate=gate)
        if outcome.status == "held":
            return ProcessOutcome(rec.source, "on-hold", outcome.summary, bundle_id)
        self._hold_cache.pop(bundle_id, None)
        self.flush()
        result = self._result_path(seqs[0] if seqs else None)
        status, summary = scheduled[-1] if scheduled else (outcome.status, outcome.summary)
        log.info("bundle %s %s: %s; result %s", bundle_id, status, summary,
                 result or "pending (see the errors above)")
        return ProcessOutcome(rec.source, status, summary, bundle_id, result)

    # -- holding (agent.holds) --------------------------------------------------------------

    def hold_of(self, rec: BundleRecord) -> Decision | None:
        """Why the accepted bundle ``rec`` may not start a step now (None: it may).

        The policy is evaluated again only when the policy time reaches the moment the last
        answer named (or goes back), so a held bundle costs one journal read per pass.
        """
        earlier = [_earlier(b) for b in self.journal.bundles(("held",))
                   if (b.root_version, b.sequence) < (rec.root_version, rec.sequence)]
        if earlier:
            return after_held(earlier[0])
        run_now = self.journal.override(rec.bundle_id)
        now = self.policy_clock()
        cached = self._hold_cache.get(rec.bundle_id)
        if (cached is not None and run_now is None and cached[0] <= now
                and (cached[1] is None or now < cached[1])):
            return cached[2]
        decision = decide(rec.manifest, now, run_now)
        if decision is None:
            self._hold_cache.pop(rec.bundle_id, None)
        else:
            self._hold_cache[rec.bundle_id] = (now, decision.until, decision)
        return decision

    def holds(self) -> list[dict[str, Any]]:
        """The bundles this agent holds now — for a window, a freeze, or an earlier held
        bundle — for the hub (every result body and the live channel's STATE,
        docs/live-protocol.md §3.1): bundle id, sequence, kind, reason, until (Unix seconds
        or None). Judged afresh by the policy clock (no cache: the live thread calls it);
        at most :data:`bundle.sync.state.MAX_HOLDS`."""
        held = self.journal.bundles(("held",))
        now = self.policy_clock()
        out: list[dict[str, Any]] = []
        for i, rec in enumerate(held):
            try:
                decision = decide(rec.manifest, now, self.journal.override(rec.bundle_id),
                                  [_earlier(b) for b in held[:min(i, 1)]])
            except ValueError as exc:  # a damaged journal: say so rather than nothing
                decision = Decision("journal", str(exc))
            if decision is not None:
                out.append({"bundle_id": rec.bundle_id, "sequence": rec.sequence,
                            "kind": decision.kind, "text": decision.text[:MAX_HOLD_TEXT],
                            "until": decision.until})
        return out[:MAX_HOLDS]

    def window(self) -> str | None:
        """The maintenance windows of the newest accepted bundle's policy, as text (the
        inventory's ``window``); None before any bundle, or when it carried no policy."""
        if self._window is _UNREAD:
            newest = self.journal.bundles()[-1:]
            self._window = _window_of(newest[0].manifest) if newest else None
        return self._window if isinstance(self._window, str) else None

    def inventory(self) -> dict[str, Any]:
        """This agent's inventory now (``agent.inventory``), with its window."""
        return collect_inventory(self.config, agent_version(), self.window())

    def site_state(self) -> dict[str, Any]:
        """The live channel's STATE body (docs/live-protocol.md §3.1)."""
        return {"inventory": self.inventory(), "holds": self.holds()}

    def _keep_held(self, rec: BundleRecord, decision: Decision) -> ProcessOutcome:
        """Record (once per reason) that ``rec`` is held; crash point ``held``."""
        if rec.state != "held" or rec.summary != decision.text:
            self.journal.set_bundle_state(rec.bundle_id, "held", decision.text)
            crash_point("held")
            log.warning("bundle %s (sequence %d) is held: %s; 'tiangong agent run-now %s "
                        "--reason ...' runs it anyway", rec.bundle_id, rec.sequence,
                        decision.text, rec.bundle_id)
        return ProcessOutcome(rec.source, "on-hold", decision.text, rec.bundle_id)

    def next_hold_wake(self) -> float | None:
        """Seconds until the earliest held bundle may run by its policy (None: none)."""
        times = [c[1] for c in self._hold_cache.values() if c[1] is not None]
        if not times:
            return None
        return max(0.0, min(times) - self.policy_clock())

    def run_now(self, bundle_id: str, reason: str, user: str) -> dict[str, Any]:
        """``agent run-now``: journal the operator's override of the windows and freezes of
        the held bundle ``bundle_id`` (it runs on the agent's next pass, or by
        :meth:`run_accepted`). Returns the override recorded.

        Raises:
            KeyError: no such bundle. ValueError: it is not held, or an earlier bundle that
                is held must run first (bundles apply in order).
        """
        rec = self.journal.bundle(bundle_id)
        if rec is None:
            raise KeyError(f"no bundle {bundle_id} in the journal of {self.config.home}")
        for b in self.journal.bundles(("held",)):
            if (b.root_version, b.sequence) < (rec.root_version, rec.sequence):
                raise ValueError(f"bundle {bundle_id} (sequence {rec.sequence}) waits for "
                                 f"bundle {b.bundle_id} (sequence {b.sequence}), which is "
                                 f"held: {b.summary}; bundles apply in order, so run that "
                                 "one first")
        try:
            self.journal.record_override(bundle_id, reason, user)
        except JournalWriteError:
            raise
        except JournalError as exc:
            raise ValueError(str(exc)) from exc
        crash_point("override-recorded")
        log.warning("operator %s overrides the windows and freezes of bundle %s: %s", user,
                    bundle_id, reason)
        found = self.journal.override(bundle_id)
        assert found is not None
        return found

    def _open_secrets(self, bundle_id: str, manifest: Mapping[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for entry in manifest.get("secrets") or []:
            if entry.get("agent_id") != self.config.agent_id:
                continue
            try:
                out[entry["name"]] = open_secret(
                    base64.b64decode(entry["sealed"]), bundle_id=bundle_id,
                    agent_id=self.config.agent_id, name=entry["name"], keypair=self.keys.box)
            except SigningError as exc:
                log.error("sealed secret %r of %s cannot be opened: %s", entry.get("name"),
                          bundle_id, exc)
        return out

    def _intent(self, status: str, summary: str, bundle_id: str | None,
                envelope_sha256: str | None, release: Any, steps: list[StepReport],
                extra: Mapping[str, Any] | None = None,
                manifest_steps: Sequence[Mapping[str, Any]] = ()) -> ResultIntent:
        trusted, _ = self._trust()
        graph = graph_of(manifest_steps) if has_after(manifest_steps) else None
        return result_intent(self.config, status=status, summary=summary, bundle_id=bundle_id,
                             bundle_envelope_sha256=envelope_sha256, release=release or {},
                             steps=steps, extra=extra, root_version=trusted.version,
                             now=int(self.clock()), graph=graph, inventory=self.inventory(),
                             holds=self.holds())

    def _install_schedule(self, bundle_id: str, files: Mapping[str, Path], state: str,
                          summary: str) -> tuple[str, str]:
        """A succeeded bundle whose release holds ``schedule.toml`` installs its schedule;
        an invalid one fails the bundle (the installed schedule is kept)."""
        try:
            jobs = self.jobs.parse(files[SCHEDULE_FILE].read_bytes(), list(files))
            install_schedule(self.journal, self.jobs.jobs_dir, bundle_id, jobs, files,
                             self.jobs.clock())
        except (ScheduleError, OSError) as exc:
            log.error("bundle %s: %s; the schedule installed before is kept", bundle_id, exc)
            return "failed", (f"{summary}; but {exc}: the schedule was not installed (the "
                              "one installed before is kept)")
        log.info("bundle %s installed a schedule of %d job(s)", bundle_id, len(jobs))
        return state, f"{summary}; schedule installed: {len(jobs)} job(s)"

    def _job_report(self, runs: int) -> None:
        """A result carrying only finished job runs (a 'job report', no bundle)."""
        self.journal.add_result(self._intent(
            "succeeded", f"job report: {runs} scheduled job run(s)", None, None, {}, []))

    def _result_path(self, seq: int | None) -> Path | None:
        """The result file of ``seq`` if it is written, else None (still pending)."""
        found = self.journal.result_file(seq) if seq is not None else None
        if found is None or found[1] != "written":
            return None
        return self.config.outbox / found[0]

    # -- retry ------------------------------------------------------------------------------

    def retry(self, bundle_id: str, from_step: int) -> ProcessOutcome:
        """Deliberately re-run ``bundle_id`` from step ``from_step`` (1-based); journaled.

        Raises:
            KeyError: unknown bundle. ValueError: step out of range or bundle still running.
        """
        rec = self.journal.bundle(bundle_id)
        if rec is None:
            raise KeyError(f"no bundle {bundle_id} in the journal")
        n = len(rec.manifest.get("steps") or [])
        if not 1 <= from_step <= n:
            raise ValueError(f"bundle {bundle_id} has steps 1 to {n}; --from-step {from_step}")
        if rec.state == "running":
            raise ValueError(f"bundle {bundle_id} is running")
        if rec.state == "held":
            raise ValueError(f"bundle {bundle_id} is held ({rec.summary}); its steps have not "
                             "failed: it runs by itself when its window opens, or now with "
                             "'tiangong agent run-now'")
        attempt = self.journal.add_attempts(bundle_id, from_step - 1)
        log.warning("operator retry of %s from step %d (attempt %d)", bundle_id, from_step,
                    attempt)
        return self.run_accepted(bundle_id)

    # -- the loop ---------------------------------------------------------------------------

    def run_once(self) -> list[ProcessOutcome]:
        """One pass: finish what is pending (results, moves), scan the inbox, process ready
        items in sequence order (``agent.order``), run bundles whose time has come (or that
        stopped between two steps).

        A journal that cannot be written (full or read-only disk) ends the pass with a logged
        error; the next pass tries again (after recording any step cut short as
        interrupted).
        """
        outcomes: list[ProcessOutcome] = []
        try:
            if self._needs_recovery:
                self.recover()
            self.flush()
            self._own_disk_refused = False
            outcomes = self.order.run(
                self.inbox.scan(self.clock()), self._verify, self.process,
                lambda: self.stopping.is_set() or self._own_disk_refused)
            for rec in self.journal.bundles(("waiting", "running", "held")):
                if self.stopping.is_set():
                    break
                if rec.not_before is None or rec.not_before <= self.clock():
                    outcomes.append(self.run_accepted(rec.bundle_id))
            if not self.stopping.is_set() and self.jobs.tick():
                self.flush()
        except JournalWriteError as exc:
            self._needs_recovery = True
            self._problem("journal", f"{exc}; nothing more is accepted or run until it can "
                          "be written (free space, or remount it read-write)")
        else:
            self._solved("journal", f"the journal {self.config.journal_path} can be "
                          "written again")
        return outcomes

    def run_once_watching(self) -> list[ProcessOutcome]:
        """``agent run --once``: one pass; then, if the inbox held back files only because
        they are dated in the future (their age is unknown), watch them within this run —
        at most ``settle_seconds`` — and make one more pass, which takes those that stayed
        unchanged. Without this a cron or timer run would never take such a file."""
        outcomes = self.run_once()
        until = self.inbox.age_unknown_until()
        if until is None or self.stopping.is_set():
            return outcomes
        log.info("watching the inbox's files dated in the future for up to %g s before "
                 "taking them", self.config.settle_seconds)
        limit = time.monotonic() + self.config.settle_seconds  # a clock set back meanwhile
        while not self.stopping.is_set():
            left = min(until - self.clock(), limit - time.monotonic())
            if left <= 0:
                break
            self.stopping.wait(left)
        if not self.stopping.is_set():
            outcomes += self.run_once()
        return outcomes

    def serve(self, poll_seconds: float | None = None) -> None:
        """Run until :attr:`stopping` is set: recover, then watch the inbox."""
        try:
            self.recover()
        except JournalWriteError as exc:
            self._needs_recovery = True
            self._problem("journal", f"{exc}; nothing is accepted or run until it can be "
                          "written (free space, or remount it read-write)")
        interval = poll_seconds if poll_seconds is not None else self.config.settle_seconds
        watcher = InboxWatcher(self.config.inbox, self.wake.set,
                               rescan_seconds=self.config.rescan_seconds,
                               polling=self.config.polling_observer)
        watcher.start()
        log.info("agent %s watching %s", self.config.agent_id, self.config.inbox)
        try:
            while not self.stopping.is_set():
                self.write_metrics(force=bool(self.run_once()))
                # Wake on an inbox event, the periodic rescan, after the settle interval (a
                # file that is settling needs another look), or when a held bundle's window
                # opens or its freeze ends, whichever comes first.
                timeout = interval / 2
                hold_wake = self.next_hold_wake()
                if hold_wake is not None:
                    timeout = min(timeout, hold_wake)
                self.wake.wait(timeout=max(0.05, timeout))
                self.wake.clear()
        finally:
            watcher.stop()

    def figures(self) -> AgentFigures:
        """This agent's state for the metrics textfile (:mod:`agent.metrics`)."""
        trust = self.journal.trust(self._issuer())
        states: dict[str, int] = {}
        for b in self.journal.bundles():
            states[b.state] = states.get(b.state, 0) + 1
        return AgentFigures(
            agent_id=self.config.agent_id, environment=self.config.environment or "",
            hub_id=self.config.hub_id or "",
            sequence=trust.sequence if trust else None,
            root_version=trust.root_version if trust else None, bundles=states,
            inbox_waiting=len(self.inbox.waiting()), inbox_held=len(self.order.held()),
            quarantined=sum(1 for _ in self.config.quarantine.glob("*.reason.txt")),
            results_waiting=sum(1 for _ in self.config.outbox.glob("*.tgr")),
            live_connected=(None if self.live_connected is None
                            else self.live_connected.is_set()),
            problems=tuple(self._problems), written_at=time.time())

    def write_metrics(self, *, force: bool = False) -> None:
        """Rewrite ``[metrics] textfile`` (if set): when ``force`` (a pass did something) or
        :data:`agent.metrics.WRITE_EVERY_S` after the last write. A failure is logged once
        and tried again next time; it never stops the loop."""
        path = self.config.metrics_textfile
        if path is None or (not force
                            and time.monotonic() - self._metrics_at < WRITE_EVERY_S):
            return
        self._metrics_at = time.monotonic()
        try:
            write_textfile(path, render_metrics(self.figures()))
        except OSError as exc:
            self._problem("metrics", f"cannot write the metrics textfile {path}: {exc} "
                          f"(agent.toml [metrics] textfile)")
        else:
            self._solved("metrics", f"the metrics textfile {path} is written again")

    def survey(self) -> None:
        """Look at the inbox as a pass would, without acting (for ``agent status``):
        settling files, waiting parts, and bundles held for a predecessor or for space."""
        self.order.survey(self.inbox.scan(self.clock()), self._verify)

    def _policy_status(self, b: BundleRecord) -> dict[str, Any]:
        """``agent status`` fields of one bundle: its policy, override and, when it is held,
        why and until when (judged now, by the policy clock)."""
        policy = policy_of(b.manifest)
        out: dict[str, Any] = {
            "policy": None if policy is None else policy.describe(),
            "override": override_record(b.manifest, self.journal.override(b.bundle_id)),
            "hold": None,
        }
        if b.state == "held":
            decision = self.hold_of(b)
            if decision is not None:
                out["hold"] = {"kind": decision.kind, "reason": decision.text,
                               "until": decision.until}
        return out

    def status(self) -> dict[str, Any]:
        trust = self.journal.trust(self._issuer())
        return {
            "agent_id": self.config.agent_id,
            "environment": self.config.environment,
            "hub_id": self.config.hub_id,
            "root_version": trust.root_version if trust else None,
            "sequence": trust.sequence if trust else None,
            "time_floor": trust.time_floor if trust else None,
            "approvals_required": (required_here(trust.root_envelope, self.config.environment)
                                   if trust else None),
            "bundles": [
                {"bundle_id": b.bundle_id, "source": b.source, "product": b.product,
                 "version": b.version, "sequence": b.sequence, "state": b.state,
                 "not_before": b.not_before, "summary": b.summary,
                 **self._policy_status(b),
                 "steps": [{"index": s.idx + 1, "attempt": s.attempt, "name": s.name,
                            "state": s.state, "summary": s.summary}
                           for s in self.journal.steps(b.bundle_id, latest_only=True)]}
                for b in self.journal.bundles()
            ],
            "inbox_waiting": [{"name": w.name, "reason": w.reason} for w in self.inbox.waiting()],
            "inbox_held": held_rows(self.order.held()),
            "quarantined": self.journal.rejections(),
            "results": self.journal.results(),
            "schedule": self._schedule_status(),
            "job_runs": job_runs(self.journal, 20),
        }

    def _schedule_status(self) -> dict[str, Any] | None:
        """The installed job schedule (``agent status --json``), or None."""
        bundle_id, jobs, installed_at = installed_schedule(self.journal)
        if bundle_id is None:
            return None
        return {"bundle_id": bundle_id, "installed_at": installed_at,
                "jobs": [asdict(j) for j in jobs]}


_UNREAD = object()  # Agent._window before the journal was read


def _earlier(b: BundleRecord) -> Earlier:
    """A held bundle as the bundles accepted after it see it (agent.holds)."""
    return Earlier(b.bundle_id, b.sequence, f"{b.product or '?'} {b.version or ''}".strip(),
                   b.summary or "held")


def _window_of(manifest: Mapping[str, Any]) -> str | None:
    """The windows of a journaled manifest's policy as text; None without a policy."""
    try:
        policy = policy_of(manifest)
    except ValueError:
        return None
    return None if policy is None else policy.describe_windows()


def _staged_files(manifest: Mapping[str, Any], staged: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for i, entry in enumerate(manifest.get("files") or [], start=1):
        files[str(entry["name"])] = staged / "files" / f"{i:06d}"
    return files


def _read_log(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")[-256 * 1024:]
    except OSError:
        return ""




def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _files_digest(paths: tuple[Path, ...]) -> str:
    """One SHA-256 over the files' names, sizes and first bytes (to recognise the same
    refused copy); bounded by ``REASON_HASH_CAP`` per file, so oversized junk (a sparse
    multi-GB file) is not read to its end."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.fsencode(path.name) + b"\0")
        h.update(str(os.stat(path).st_size).encode("ascii") + b"\0")
        with open(path, "rb") as fh:
            left = REASON_HASH_CAP
            while left and (chunk := fh.read(min(1 << 20, left))):
                h.update(chunk)
                left -= len(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _still_there(item: ReadyItem) -> ReadyItem | None:
    """``item`` limited to the files still in the inbox, or None when none is."""
    present = tuple(p for p in item.paths if os.path.lexists(p))
    if not present:
        return None
    return ReadyItem(item.name, present, item.size, item.kind, item.first_seen)


def _item_of(inbox: Path, name: str, names: tuple[str, ...]) -> ReadyItem:
    """The inbox item a journal row names (its files may be gone by now)."""
    paths = tuple(inbox / n for n in (names or (name,)))
    kind: Any = "split" if len(paths) > 1 or paths[0].name != name else "single"
    return ReadyItem(name, paths, 0, kind, 0.0)
