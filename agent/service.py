"""The agent's core loop: inbox → verify → accept (journal) → run → signed result.

One bundle at a time. For every ready inbox item:

1. If its envelope digest is already in the journal, it is a **duplicate**: archived, not run,
   reported in a ``duplicate`` result.
2. Verify it with ``bundle.reader`` against the pinned root and the journal's replay state,
   staging into ``staging/``. Bad data → the files move to ``quarantine/`` with
   ``<name>.reason.txt``, the rejection is journaled and a signed ``rejected`` result goes to
   the outbox. A transport error (unreadable stick) leaves the files where they are.
3. Record acceptance *and* the new replay state (root, sequence, time floor) in one journal
   transaction, then move the inbox files to ``archive/``. Only then does anything run.
4. Wait for ``not_before`` if the manifest has one (the bundle waits in ``staging/``; ``agent
   status`` says so), then run the steps (``agent.runner``) and write the result.

On start, steps the journal shows as running are marked ``interrupted`` and reported; nothing
is re-run without ``tiangong agent retry``.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.home import AgentKeys, load_keys
from agent.inbox import (
    QUARANTINE_COPY_CAP,
    Inbox,
    InboxWatcher,
    ReadyItem,
    move_to,
    printable,
    write_reason,
)
from agent.journal import Journal, JournalError
from agent.order import Held, Sequencer, held_rows
from agent.results import write_result
from agent.runner import BundleOutcome, Runner, StepReport
from bundle.errors import BundleError, InsufficientSpaceError, PartsError
from bundle.parts import find_first_part, strip_part_suffix
from bundle.reader import (
    AdmitFn,
    ExpectRelease,
    VerifiedBundle,
    VerifierState,
    inspect,
    verify_parts,
    verify_path,
)
from signing.errors import SigningError
from signing.roots import TrustedRoot
from signing.sealed import open_secret

__all__ = ["Agent", "ProcessOutcome"]

log = logging.getLogger("tiangong.agent")


@dataclass(frozen=True)
class ProcessOutcome:
    name: str
    # succeeded | failed | rejected | duplicate | waiting | interrupted | deferred | held
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
        self.journal = Journal(config.journal_path, clock=clock)
        self.inbox = Inbox(config.inbox, settle_seconds=config.settle_seconds, wall_clock=clock,
                           taken_file=config.home / "inbox-taken.json")
        self.runner = Runner(config, self.journal, live_log=live_log, clock=clock)
        self.order = Sequencer(self.journal, self._accepted, config.staging)
        self.inbox.part_problems = lambda paths: self.order.part_problems(paths, self._verify)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        #: ``progress(phase, done, total)`` while a bundle is verified (``agent apply``).
        self.progress: Callable[[str, int, int], None] | None = None

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

    def _accepted(self) -> tuple[int, int]:
        _, state = self._trust()
        return (state.root_version, state.sequence)

    # -- startup ----------------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Mark steps that were running when the agent died as interrupted; report them."""
        results = []
        for bundle_id in self.journal.recover_interrupted():
            rec = self.journal.bundle(bundle_id)
            steps = [StepReport(s.idx, s.attempt, s.name, s.kind, s.state, s.summary or "",
                                s.exit_code, s.started_at, s.finished_at, s.details or {},
                                _read_log(s.log_path))
                     for s in self.journal.steps(bundle_id, latest_only=True)]
            log.warning("bundle %s was interrupted: the agent stopped while a step was "
                        "running; nothing is re-run automatically (use 'tiangong agent retry')",
                        bundle_id)
            summary = (rec.summary if rec else None) or "interrupted"
            results.append(self._result("interrupted", summary, bundle_id,
                                        rec.envelope_sha256 if rec else None,
                                        rec.manifest.get("release") if rec else None, steps))
        return results

    # -- one item ---------------------------------------------------------------------------

    def process(self, item: ReadyItem) -> ProcessOutcome:
        """Verify, accept, run and report one inbox item. Never raises for bad data.

        A bundle whose predecessor has not been applied, or that does not fit in staging
        now, is ``held``: left in the inbox, with the reason (``agent.order``).
        """
        try:
            vb = self._verify(item, self.order.admit)
        except Held as held:
            seq = held.position[1] if held.position else None
            return ProcessOutcome(printable(item.name), "held",
                                  self.order.hold(item, held.reason, seq))
        except InsufficientSpaceError as exc:
            return ProcessOutcome(printable(item.name), "held",
                                  self.order.hold_for_space(item, exc))
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
            # Transport trouble: leave the files; the next scan tries again.
            log.error("cannot read %s: %s; leaving it in the inbox", printable(item.name), exc)
            return ProcessOutcome(printable(item.name), "deferred", f"cannot read: {exc}")
        return self._accept_and_run(item, vb)

    def _verify(self, item: ReadyItem, admit: AdmitFn) -> VerifiedBundle:
        trusted, state = self._trust()
        expect = ExpectRelease(agent_id=self.config.agent_id,
                               environment=self.config.environment)
        self.config.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        kwargs: dict[str, Any] = dict(trusted_root=trusted, state=state, expect=expect,
                                      staging_dir=self.config.staging, label=printable(item.name),
                                      clock=lambda: int(self.clock()), admit=admit,
                                      progress=self.progress)
        if item.kind == "split":
            return verify_parts(list(item.paths), **kwargs)
        return verify_path(item.paths[0], **kwargs)

    def _duplicate_of(self, item: ReadyItem, exc: BundleError) -> ProcessOutcome | None:
        """A replayed bundle whose exact envelope was accepted before is a duplicate."""
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
        dest = self.config.archive / "duplicates"
        dest.mkdir(parents=True, exist_ok=True)
        move_to(item, dest)
        self.inbox.forget(item)
        summary = (f"{printable(item.name)} is a copy of bundle {rec.bundle_id}, already received "
                   f"(state: {rec.state}); it was not run again")
        log.info(summary)
        result = self._result("duplicate", summary, rec.bundle_id, rec.envelope_sha256,
                              rec.manifest.get("release"), [])
        return ProcessOutcome(printable(item.name), "duplicate", summary, rec.bundle_id, result)

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

    def _reject(self, item: ReadyItem, check: str, reason: str) -> ProcessOutcome:
        dest = self.config.quarantine
        moved = move_to(item, dest, max_copy_bytes=QUARANTINE_COPY_CAP)
        write_reason(dest, strip_part_suffix(moved[0].name), check, reason, files=moved)
        self.inbox.forget(item)
        self.journal.record_rejection(printable(item.name), None, check, reason)
        log.error("refused %s [%s]: %s; moved to %s", printable(item.name), check, reason, dest)
        result = self._result("rejected", reason, None, None, None, [],
                              extra={"rejected_file": printable(item.name), "check": check})
        return ProcessOutcome(printable(item.name), "rejected", reason, None, result)

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
            )
        except JournalError as exc:
            return self._reject(item, "sequence", str(exc))
        dest = self.config.archive
        move_to(item, dest)
        self.inbox.forget(item)
        log.info("accepted %s: %s, sequence %d", printable(item.name), m.bundle_id, m.sequence)
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
        manifest = rec.manifest
        staged = Path(rec.staged_dir or "")
        files = _staged_files(manifest, staged)
        sealed = self._open_secrets(bundle_id, manifest)
        outcome: BundleOutcome = self.runner.run(bundle_id, manifest, files, sealed)
        status = {"succeeded": "succeeded", "failed": "failed",
                  "cancelled": "cancelled"}[outcome.status]
        result = self._result(status, outcome.summary, bundle_id, rec.envelope_sha256,
                              manifest.get("release"), outcome.steps)
        log.info("bundle %s %s: %s; result %s", bundle_id, status, outcome.summary, result)
        return ProcessOutcome(rec.source, status, outcome.summary, bundle_id, result)

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

    def _result(self, status: str, summary: str, bundle_id: str | None,
                envelope_sha256: str | None, release: Any, steps: list[StepReport],
                extra: Mapping[str, Any] | None = None) -> Path:
        trusted, _ = self._trust()
        return write_result(self.config, self.journal, self.keys.identity, status=status,
                            summary=summary, bundle_id=bundle_id,
                            bundle_envelope_sha256=envelope_sha256, release=release or {},
                            steps=steps, extra=extra, root_version=trusted.version,
                            now=int(self.clock()))

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
        attempt = self.journal.add_attempts(bundle_id, from_step - 1)
        log.warning("operator retry of %s from step %d (attempt %d)", bundle_id, from_step,
                    attempt)
        return self.run_accepted(bundle_id)

    # -- the loop ---------------------------------------------------------------------------

    def run_once(self) -> list[ProcessOutcome]:
        """One pass: scan the inbox, process ready items, run bundles whose time has come."""
        outcomes = self.order.run(self.inbox.scan(self.clock()), self._verify, self.process,
                                  self.stopping.is_set)
        for rec in self.journal.bundles(("waiting",)):
            if rec.not_before is None or rec.not_before <= self.clock():
                outcomes.append(self.run_accepted(rec.bundle_id))
        return outcomes

    def serve(self, poll_seconds: float | None = None) -> None:
        """Run until :attr:`stopping` is set: recover, then watch the inbox."""
        self.recover()
        interval = poll_seconds if poll_seconds is not None else self.config.settle_seconds
        watcher = InboxWatcher(self.config.inbox, self.wake.set,
                               rescan_seconds=self.config.rescan_seconds,
                               polling=self.config.polling_observer)
        watcher.start()
        log.info("agent %s watching %s", self.config.agent_id, self.config.inbox)
        try:
            while not self.stopping.is_set():
                self.run_once()
                # Wake on an inbox event, the periodic rescan, or after the settle interval
                # (a file that is settling needs another look).
                self.wake.wait(timeout=max(0.05, interval / 2))
                self.wake.clear()
        finally:
            watcher.stop()

    def survey(self) -> None:
        """Look at the inbox as a pass would, without acting (for ``agent status``):
        settling files, waiting parts, and bundles held for a predecessor or for space."""
        self.order.survey(self.inbox.scan(self.clock()), self._verify)

    def status(self) -> dict[str, Any]:
        trust = self.journal.trust(self._issuer())
        return {
            "agent_id": self.config.agent_id,
            "environment": self.config.environment,
            "hub_id": self.config.hub_id,
            "root_version": trust.root_version if trust else None,
            "sequence": trust.sequence if trust else None,
            "time_floor": trust.time_floor if trust else None,
            "bundles": [
                {"bundle_id": b.bundle_id, "source": b.source, "product": b.product,
                 "version": b.version, "sequence": b.sequence, "state": b.state,
                 "not_before": b.not_before, "summary": b.summary,
                 "steps": [{"index": s.idx + 1, "attempt": s.attempt, "name": s.name,
                            "state": s.state, "summary": s.summary}
                           for s in self.journal.steps(b.bundle_id, latest_only=True)]}
                for b in self.journal.bundles()
            ],
            "inbox_waiting": [{"name": w.name, "reason": w.reason} for w in self.inbox.waiting()],
            "inbox_held": held_rows(self.order.held()),
            "quarantined": self.journal.rejections(),
            "results": self.journal.results(),
        }


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


