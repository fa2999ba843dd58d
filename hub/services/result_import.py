"""Import: every result file (and enrollment request) found in a directory.

:func:`import_directory` handles every ``*.tgr`` result file (and every enrollment request)
of a directory on its own; a bad file is reported and left where it is, never stopping the
run. A result is read once, verified (the private copy that is then stored) against the
registered key of the agent it claims to come from, must concern a bundle that was addressed
to that agent, advances the deployment, and is stored verbatim
(``<data_dir>/results/<envelope sha256>.tgr``) with its signed envelope in the audit log, so
an auditor can re-check it without the hub. Results are recorded in batches, one transaction
per batch with a savepoint per file (see the comment below). The same file imported twice
changes nothing. Gaps and breaks in an agent's result chain are flagged.
:func:`import_result` imports one file (the live server).

It does not export (:mod:`hub.services.export`); the per-file helpers live in
:mod:`hub.services.import_files`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bundle.printable import printable
from hub.db import Agent, AuditEvent, Deployment, DeploymentAttempt
from hub.errors import ConfigError, HubError
from hub.faults import crash_point
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.deployments import record_refused_lost, record_result
from hub.services.enrollment_import import import_enrollment
from hub.services.import_files import (
    INCOMING_PREFIX,
    CopyingReader,
    ImportReport,
    ImportRow,
    NotAFile,
    Rejected,
    claim_result,
    open_handed_in,
    remove_stale_copies,
    sync_copies,
)
from hub.services.import_verify import (
    POOL_MIN_FILES,
    POOL_START_METHODS,
    VerifiedResult,
    VerifyJob,
    VerifyPool,
    cores_free,
    start_method,
    verify_copy,
)
from hub.services.plans import PLAN_STATUSES, is_plan, record_outcome
from hub.services.preflight import store_inventories
from hub.services.users import require
from signing.fileio import fsync_dir
from signing.roots import TrustedRoot

__all__ = [
    "DEFAULT_IMPORT_BATCH",
    "MAX_IMPORT_BATCH",
    "RESULT_STATES",
    "import_directory",
    "import_result",
]

RESULT_STATES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "rejected",
    "interrupted": "interrupted",
    "cancelled": "failed",
}
DEFAULT_IMPORT_BATCH = 100  # result files recorded per transaction
MAX_IMPORT_BATCH = 1000  # result files per transaction at most
KEEP_IN_MEMORY = 64 * 1024 * 1024  # bytes of a batch's files kept to verify from memory
RECEIVE_THREADS = 4  # files read and copied at the same time
#: Batches that hold received files at once: one read, one verified, one waiting for the
#: verifier while the batch before them is recorded (bounds the memory they keep).
PIPELINE_BATCHES = 3
#: Where the verifier stages a result's payloads first: a memory file system, so the few
#: small files each verification creates and removes cost no disk metadata writes (≈ 1 ms
#: each on a busy ext4 here). A result that does not fit there is staged beside the results.
MEMORY_STAGING = Path("/dev/shm")  # noqa: S108 - only a private mkdtemp directory in it


# -- import -----------------------------------------------------------------------------------
#
# A directory is imported in batches of up to ``batch_size`` result files, each batch in two
# phases:
#
# 1. *Receive and verify* (no lock, no write to the database): each file is read once —
#    through a reader that copies every byte into a private file ``.incoming-*`` in the
#    results directory and hashes it (a few files at a time: this part waits for the disk)
#    — its head is peeked at (a file that is not a result is not read further), then the
#    rest is copied and the private copy (its bytes in memory, when small) is fully verified
#    against the enrolled key of the agent it claims to come from (threat 8: what is verified
#    is what is stored). Duplicates and agents are looked up once per batch. The copies to
#    keep are flushed to disk (one fsync each, issued in parallel so the file system groups
#    them into a few journal commits).
# 2. *Record* (one transaction): the audit head is locked once and continued in memory;
#    duplicates and agents are read again under the lock; the batch is recorded without
#    savepoints (one flush) and, only if a file fails, rolled back and recorded again with a
#    SAVEPOINT per file, so that file is rejected alone; each imported copy is renamed to
#    ``<envelope sha256>.tgr``; the directory is fsynced once; then one commit records the
#    batch. The stored file is durable before the database says it was imported; a crash
#    before the commit leaves stored files that a re-import finds and keeps, imported once.
#
# The batches are pipelined: while batch k is recorded (this thread: every database
# statement of the import runs here), batch k+1 is verified and its copies flushed on one
# verifier thread and batch k+2 is read by the reading threads. Signature checks, hashing,
# decompression and the file system release the GIL, and so does waiting for the database;
# so recording, verifying and reading overlap. Batch k+1's lookups run before batch k is
# recorded; what they decide is read again under the lock in phase 2 (a result of batch k
# that batch k+1 repeats is found there and counted a duplicate). Nothing of a batch is
# recorded before the batches ahead of it are committed, in name order; a failure while
# batch k is recorded rolls batch k back and drops the batches behind it (their private
# copies are removed; the next run reads them again).


class _Retry(Exception):
    """A file failed while a batch was recorded without savepoints: record it again with."""


class _Events:
    """The import's own audit events of a batch (``result.import``, ``result.flag``,
    ``job.run``, ``result.rejected``), appended in runs with one statement each
    (:func:`hub.services.audit.record_many`: the same seq, chain and MACs as one by one)
    instead of one ORM object each. :meth:`flush` runs before anything else appends an event
    (a deployment's or a plan's), so the chain keeps every file's events in their order."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.pending: list[audit.NewEvent] = []
        self.seqs: list[tuple[int, str]] = []  # (index in pending, envelope sha256)
        self.appended: dict[str, int] = {}  # envelope sha256 -> seq of its result.import

    def add(self, action: str, object_type: str, object_id: str,
            details: Mapping[str, Any]) -> None:
        if action == "result.import":
            self.seqs.append((len(self.pending), object_id))
        self.pending.append((action, object_type, object_id, details))

    def flush(self) -> None:
        """Append the pending events (in the session's transaction, with the head held).

        Raises:
            AuditError: a detail is not strict JSON or too large (nothing appended).
        """
        if not self.pending:
            return
        seqs = audit.record_many(self.ctx, self.pending)
        for index, sha in self.seqs:
            self.appended.setdefault(sha, seqs[index])
        self.drop()

    def drop(self) -> None:
        """Forget the pending events (their file was rolled back)."""
        self.pending.clear()
        self.seqs.clear()


@dataclass
class _Incoming:
    """One result file on its way through a batch."""

    path: Path
    keep: int = 0  # bytes of the file kept in memory to verify from (0: read the copy)
    copy: Path | None = None  # the private copy in the results directory
    size: int = 0
    file_sha256: str = ""
    agent_id: str | None = None  # claimed by the (not yet verified) manifest
    envelope_sha256: str = ""
    data: bytes | None = None  # the whole file, when small enough to keep until verified
    agent: Agent | None = None
    agent_key: str = ""
    verified: VerifiedResult | None = None
    rejected: Rejected | None = None
    row: ImportRow | None = None

    def discard_copy(self) -> None:
        if self.copy is not None:
            with contextlib.suppress(FileNotFoundError):
                self.copy.unlink()
            self.copy = None



@dataclass
class _Batch:
    """A batch on its way through the pipeline."""

    files: list[_Incoming]
    received: list[Future[None]]  # one per file, on the reading threads
    #: Verified on the verifier thread, whose result is the flush of the copies to keep on
    #: the flushing thread.
    checked: Future[Future[None]] | None = None

    def ready(self) -> None:
        """Wait until the batch is verified and its copies flushed; raise what failed."""
        assert self.checked is not None
        self.checked.result().result()

    def discard_copies(self) -> None:
        """Wait for what still runs on this batch's files, then remove their copies."""
        for running in self.received:
            with contextlib.suppress(BaseException):
                running.result()
        if self.checked is not None:
            with contextlib.suppress(BaseException):
                self.ready()
        for inc in self.files:
            inc.discard_copy()


def import_directory(
    ctx: ServiceContext,
    directory: Path,
    *,
    results_dir: Path,
    batch_size: int = DEFAULT_IMPORT_BATCH,
    progress: Callable[[str, int, int], None] | None = None,
) -> ImportReport:
    """Import every result file and enrollment request in ``directory`` (not recursive).
    ``progress("import", files done, files in all)`` is called after each batch.

    Result files are recorded ``batch_size`` per transaction (see the comment above); a
    file that fails is reported, audited and left where it is, and never affects another.
    Files are taken in name order; an enrollment request is handled, and committed, in its
    place in that order.

    Raises:
        PermissionDeniedError: before touching anything.
        ConfigError: the hub keys are not loaded (and there is a result to verify).
        ValueError: ``batch_size`` is not between 1 and :data:`MAX_IMPORT_BATCH`.
        Database and storage failures of the hub itself propagate: the batch in progress
        is rolled back (its files are imported again by the next run); earlier batches
        stay committed.
    """
    require(ctx.actor, "result.import")
    if not 1 <= batch_size <= MAX_IMPORT_BATCH:
        raise ValueError(f"batch size {batch_size} is not between 1 and {MAX_IMPORT_BATCH}")
    report = ImportReport()
    directory = Path(directory)
    pending: list[Path] = []
    names = sorted(directory.iterdir())
    total = sum(1 for p in names if p.suffix == ".tgr" or _is_enrollment_request(p))

    with _ImportRun(ctx, Path(results_dir)) as run:
        # Runs of result batches between enrollment requests go through the pipeline
        # together; an enrollment waits for the batches before it (it may enroll an agent
        # whose results come after it in name order).
        batches: list[list[Path]] = []

        def run_batches() -> None:
            for rows in run.import_batches(batches):
                report.rows.extend(rows)
                if progress is not None:
                    progress("import", len(report.rows), max(total, len(report.rows)))
            batches.clear()

        for path in names:
            # Not only regular files: a FIFO, device, socket or symbolic link (to a
            # directory too) named like a result or a request is refused by name, audited
            # and left where it is (it was skipped without a word); a directory is not a
            # file anyone handed in.
            if path.name.startswith(".") or (path.is_dir() and not path.is_symlink()):
                continue
            if path.suffix == ".tgr":
                pending.append(path)
                if len(pending) >= batch_size:
                    batches.append(pending)
                    pending = []
            elif _is_enrollment_request(path):
                if pending:
                    batches.append(pending)
                    pending = []
                run_batches()
                report.rows.append(import_enrollment(ctx, path))
        if pending:
            batches.append(pending)
        run_batches()
    return report


def _is_enrollment_request(path: Path) -> bool:
    name = path.name
    return (name.startswith("enrollment-") and path.suffix == ".json"
            and not name.startswith("enrollment-response-"))


def import_result(ctx: ServiceContext, path: Path, *, results_dir: Path) -> ImportRow:
    """Import one result file and commit; never raises for bad data (the row says what
    happened). Raises what :func:`import_directory` raises for the hub's own failures."""
    # One file at a time (the live server): no scan of the results directory for leftovers.
    with _ImportRun(ctx, Path(results_dir), clean=False) as run:
        ((row,),) = run.import_batches([[Path(path)]])
    return row



class _ImportRun:
    """State shared by the batches of one import: the results directory and a private
    staging directory for the verifier (thrown away at the end)."""

    def __init__(self, ctx: ServiceContext, results_dir: Path, *, clean: bool = True) -> None:
        self.ctx = ctx
        self.results_dir = results_dir
        self.clean = clean  # look for copies a crashed import left (scans the directory)
        self.memory_staging: Path | None = None
        self.trusted: TrustedRoot | None = None  # parsed once per run, not once per file
        self.pool: VerifyPool | None = None  # worker processes, started for a large batch

    def __enter__(self) -> _ImportRun:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        if self.clean:
            remove_stale_copies(self.results_dir, self.ctx.now())
        if MEMORY_STAGING.is_dir():
            with contextlib.suppress(OSError):
                self.memory_staging = Path(
                    tempfile.mkdtemp(prefix="tiangong-import-", dir=MEMORY_STAGING)
                )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.memory_staging is not None:
            shutil.rmtree(self.memory_staging, ignore_errors=True)

    def import_batches(self, batches: list[list[Path]]) -> Iterator[list[ImportRow]]:
        """Phases 1 and 2 for each batch of ``batches``, pipelined (see the comment at the
        top): yields each batch's rows, in order, once that batch is committed.

        Raises:
            ConfigError: the hub keys are not loaded.
            What the hub's own failures raise: the batch being recorded is rolled back and
            the batches read or verified ahead of it are dropped (their copies removed).
        """
        if self.ctx.keys is None:
            raise ConfigError("the hub keys are not loaded")
        if self.trusted is None:
            self.trusted = self.ctx.keys.trusted_root
        if not batches:
            return
        cpus = os.cpu_count() or 1
        if (self.pool is None and max(len(b) for b in batches) > POOL_MIN_FILES and cpus > 1
                and start_method() in POOL_START_METHODS and cores_free(cpus)):
            # Started before this import starts a thread: forked workers inherit no lock
            # another thread holds.
            self.pool = VerifyPool(self.trusted)
            self.pool.start()
        if len(batches) == 1 and len(batches[0]) == 1:
            # One file (the live server): no threads to start and stop.
            (inc,) = batch = [_Incoming(batches[0][0], keep=KEEP_IN_MEMORY)]
            try:
                self._receive(inc)
                self._lookup(batch)
                self._verify(batch, self._clock())
                self._sync(batch)
            except BaseException:
                inc.discard_copy()
                raise
            yield self._commit(batch)
            return
        # Bytes kept in memory per file: a batch being read, one being verified and one
        # waiting for the verifier can hold files at the same time.
        keep = KEEP_IN_MEMORY // (PIPELINE_BATCHES * max(len(b) for b in batches))
        todo = iter(batches)
        verifying: deque[_Batch] = deque()  # submitted to the verifier, in order
        reading: _Batch | None = None
        readers = ThreadPoolExecutor(RECEIVE_THREADS, thread_name_prefix="tiangong-import-read")
        verifier = ThreadPoolExecutor(1, thread_name_prefix="tiangong-import-verify")
        flusher = ThreadPoolExecutor(1, thread_name_prefix="tiangong-import-fsync")

        def read_next() -> _Batch | None:
            paths = next(todo, None)
            if paths is None:
                return None
            files = [_Incoming(p, keep=keep) for p in paths]
            return _Batch(files, [readers.submit(self._receive, inc) for inc in files])

        try:
            reading = read_next()
            while reading is not None or verifying:
                if reading is not None:
                    for done in reading.received:
                        done.result()
                    self._lookup(reading.files)  # the database: this thread only
                    reading.checked = verifier.submit(
                        self._verify_then_sync, reading.files, self._clock(), flusher
                    )
                    verifying.append(reading)
                    reading = read_next()
                if len(verifying) > 1 or (verifying and reading is None):
                    # Record the oldest batch while the next one is verified and read.
                    oldest = verifying.popleft()
                    try:
                        oldest.ready()
                    except BaseException:
                        oldest.discard_copies()
                        raise
                    yield self._commit(oldest.files)
        except BaseException:
            # Stop what runs ahead and remove what it copied; nothing of it is recorded.
            readers.shutdown(wait=True, cancel_futures=True)
            verifier.shutdown(wait=True, cancel_futures=True)
            flusher.shutdown(wait=True, cancel_futures=True)
            for ahead in [*verifying, *([reading] if reading is not None else [])]:
                ahead.discard_copies()
            raise
        finally:
            readers.shutdown(wait=True)
            verifier.shutdown(wait=True)
            flusher.shutdown(wait=True)

    def _clock(self) -> int:
        return int(self.ctx.now().timestamp())

    def _verify_then_sync(self, batch: list[_Incoming], now: int,
                          flusher: ThreadPoolExecutor) -> Future[None]:
        """The verifier thread's part of phase 1: verify, then hand the copies to keep to
        the flushing thread (the verifier goes on with the next batch meanwhile)."""
        self._verify(batch, now)
        return flusher.submit(self._sync, batch)

    def _sync(self, batch: list[_Incoming]) -> None:
        """Flush the verified copies of ``batch`` (the flushing thread)."""
        copies = [inc.copy for inc in batch if inc.copy is not None]
        sync_copies(copies)
        if copies:
            crash_point("hub.import-copies-synced")

    def _commit(self, batch: list[_Incoming]) -> list[ImportRow]:
        """Phase 2 for a received and verified batch: record, store, commit; returns its
        rows, in order, once committed."""
        ctx = self.ctx
        try:
            self._record(batch)
            # rollouts owning these deployments move on in the same transaction
            from hub.services.rollouts import after_deployments

            after_deployments(ctx, [inc.row.deployment_id for inc in batch if inc.row is not None
                                    and inc.row.status == "imported"
                                    and inc.row.deployment_id is not None])
            crash_point("hub.import-stored")
            ctx.session.commit()
            crash_point("hub.import-committed")
        except BaseException:
            ctx.session.rollback()
            raise
        finally:
            for inc in batch:
                inc.discard_copy()  # copies not stored: rejected, duplicate or rolled back
        rows = [inc.row for inc in batch]
        assert all(r is not None for r in rows)
        return [r for r in rows if r is not None]

    # -- phase 1: receive and verify, no lock held ------------------------------------------

    def _receive(self, inc: _Incoming) -> None:
        """Copy the file into the results directory, inspecting its head on the way."""
        name = inc.path.name
        try:
            fd = open_handed_in(inc.path)  # a FIFO or device is refused, never opened
        except NotAFile as exc:
            inc.rejected = Rejected(str(exc))
            return
        except OSError as exc:
            inc.rejected = Rejected(f"{name} cannot be read: {exc}")
            return
        with open(fd, "rb", buffering=0) as source:
            out, copy = tempfile.mkstemp(
                prefix=INCOMING_PREFIX, suffix=".tgr", dir=self.results_dir
            )
            inc.copy = Path(copy)
            try:
                reader = CopyingReader(source, out, keep=inc.keep)
                inc.agent_id, inc.envelope_sha256 = claim_result(reader, name)
                inc.data = reader.drain()
                inc.size, inc.file_sha256 = reader.size, reader.sha.hexdigest()
            except Rejected as exc:
                inc.rejected = exc
                exc.agent_id = inc.agent_id
            except OSError as exc:
                inc.rejected = Rejected(f"{name} cannot be read or copied: {exc}", "io")
            finally:
                os.close(out)
        if inc.rejected is not None:
            inc.discard_copy()

    def _lookup(self, batch: list[_Incoming]) -> None:
        """One query for the claimed agents, one for results already imported."""
        live = [inc for inc in batch if inc.rejected is None]
        names = sorted({inc.agent_id for inc in live if inc.agent_id is not None})
        query = select(Agent).where(Agent.agent_id.in_(names))
        agents = {a.agent_id: a for a in self.ctx.session.scalars(query)} if names else {}
        done = _already_imported(self.ctx.session, {inc.envelope_sha256 for inc in live})
        for inc in live:
            agent = agents.get(inc.agent_id or "")
            if agent is None:
                inc.rejected = Rejected(f"unknown agent {inc.agent_id!r}", "agent", inc.agent_id)
            elif agent.status != "enrolled":
                inc.rejected = Rejected(
                    f"agent {agent.agent_id} is {agent.status}", "agent", inc.agent_id
                )
            else:
                inc.agent, inc.agent_key = agent, agent.ed25519_public
                seq = done.get(inc.envelope_sha256)
                if seq is not None and self._stored(inc.envelope_sha256).exists():
                    # Known and kept already: nothing to verify or store.
                    inc.row = _duplicate_row(inc, seq)
            if inc.rejected is not None or inc.row is not None:
                inc.discard_copy()

    def _verify(self, batch: list[_Incoming], now: int) -> None:
        """Verify each private copy against the enrolled key (every check, every digest):
        in the run's worker processes when it has them (:meth:`import_batches` starts them
        for batches of more than :data:`POOL_MIN_FILES` files, on a machine with more than
        one CPU not kept busy by other work, when they can be forked) and the batch has more
        than that many files to verify, else on this thread. Either way the outcome is
        :func:`verify_copy`'s."""
        todo = [inc for inc in batch
                if inc.rejected is None and inc.row is None and inc.copy is not None]
        if not todo:
            return
        trusted = self.trusted
        assert trusted is not None  # set by import_batches
        jobs = []
        for inc in todo:
            assert inc.agent_id is not None and inc.copy is not None
            jobs.append(VerifyJob(
                label=inc.path.name, copy=str(inc.copy), data=inc.data, size=inc.size,
                agent_id=inc.agent_id, agent_key=inc.agent_key, now=now,
                memory_staging=str(self.memory_staging) if self.memory_staging else None,
                disk_staging_parent=str(self.results_dir.parent),
            ))
            inc.data = None
        if self.pool is not None and len(jobs) > POOL_MIN_FILES:
            outcomes = self.pool.verify(jobs)
        else:
            outcomes = [verify_copy(job, trusted) for job in jobs]
        for inc, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, Rejected):
                inc.rejected = outcome
                inc.discard_copy()
            else:
                inc.verified = outcome

    # -- phase 2: record, one transaction --------------------------------------------------

    def _record(self, batch: list[_Incoming]) -> None:
        """Phase 2. First without savepoints — the common case, every file records, costs no
        per-file round trip: the rows go to the database in one flush at the end. If a file
        fails, that attempt is rolled back whole and the batch is recorded again with a
        savepoint per file, so the failing file is rejected alone."""
        try:
            rows = self._record_pass(batch, careful=False)
        except _Retry:
            self.ctx.session.rollback()
            rows = self._record_pass(batch, careful=True)
        for inc, row in zip(batch, rows, strict=True):
            inc.row = row

    def _record_pass(self, batch: list[_Incoming], *, careful: bool) -> list[ImportRow]:
        """One attempt at phase 2 in the session's transaction; returns a row per file.

        Raises:
            _Retry: (only when not ``careful``) a file failed; roll back and retry carefully.
        """
        session = self.ctx.session
        rows: list[ImportRow] = []
        keep: list[_Incoming] = []  # verified copies to store under their final names
        # Per agent: the inventories of its results recorded in this pass, in order.
        reports: dict[int, tuple[Agent, list[tuple[Mapping[str, Any], datetime]]]] = {}
        events = _Events(self.ctx)
        with audit.held_head(session) as head:
            # The head lock serialises every audit appender, so from here on no other import
            # can record the same result or move the same agent: read both again.
            verified = [inc for inc in batch if inc.verified is not None and inc.row is None]
            done = _already_imported(session, {inc.envelope_sha256 for inc in verified})
            for agent in {id(inc.agent): inc.agent for inc in verified}.values():
                session.refresh(agent)
            deployments = _deployments(session, verified)
            # Recorded without savepoints (the common case): each deployment's attempts are
            # read once for the batch and its rows flushed together; file by file, as before.
            attempts = None if careful else _attempts(session, deployments)
            for inc in batch:
                if inc.row is not None:  # a duplicate already kept, decided in phase 1
                    rows.append(inc.row)
                    continue
                rejected = inc.rejected
                if inc.verified is not None:
                    sha = inc.verified.envelope_sha256
                    if sha in done or sha in events.appended or any(
                            sha == pending for _, pending in events.seqs):
                        events.flush()  # the seq of its result.import event, if pending
                        keep.append(inc)
                        rows.append(_duplicate_row(inc, done.get(sha) or events.appended[sha]))
                        continue
                    try:
                        if careful:
                            events.flush()  # earlier files' events, outside this savepoint
                            with head.savepoint():
                                try:
                                    row, report = self._apply(inc, deployments, events,
                                                              None)
                                    events.flush()  # inside the file's savepoint
                                except BaseException:
                                    events.drop()
                                    raise
                        else:
                            row, report = self._apply(inc, deployments, events, attempts)
                    except Rejected as exc:
                        if not careful:
                            raise _Retry from exc
                        rejected = exc
                    except HubError as exc:
                        if not careful:
                            raise _Retry from exc
                        rejected = Rejected(f"{type(exc).__name__}: {exc}", "hub", inc.agent_id)
                    else:
                        keep.append(inc)
                        rows.append(row)
                        if report is not None:
                            assert inc.agent is not None
                            reports.setdefault(inc.agent.id, (inc.agent, []))[1].append(report)
                        continue
                assert rejected is not None
                events.add(
                    "result.rejected",
                    "file",
                    printable(inc.path.name)[:200],  # the audit log holds UTF-8 text only
                    {
                        "reason": printable(rejected.reason)[:2000],
                        "check": rejected.check,
                        "claimed_agent": rejected.agent_id,
                    },
                )
                rows.append(
                    ImportRow(inc.path.name, "rejected", rejected.reason, rejected.agent_id)
                )
            try:
                events.flush()
            except HubError as exc:
                if not careful:
                    raise _Retry from exc
                raise
            # Each agent's newest inventory of the batch, as storing them in turn would keep.
            for agent, newer in reports.values():
                store_inventories(agent, newer)
            for inc in keep:
                self._store(inc)
            fsync_dir(self.results_dir)  # the stored names, before the commit records them
        return rows

    def _stored(self, envelope_sha256: str) -> Path:
        return self.results_dir / f"{envelope_sha256}.tgr"

    def _store(self, inc: _Incoming) -> None:
        """Keep the verified copy as ``<envelope sha256>.tgr`` (an existing one stays)."""
        if inc.copy is None or inc.verified is None:
            return
        dest = self._stored(inc.verified.envelope_sha256)
        if not dest.exists():
            os.replace(inc.copy, dest)
            inc.copy = None

    def _apply(
        self, inc: _Incoming, deployments: dict[str, Deployment], events: _Events,
        attempts: dict[int, list[DeploymentAttempt]] | None,
    ) -> tuple[ImportRow, tuple[Mapping[str, Any], datetime] | None]:
        """Record one verified result, its audit events added to ``events``; returns the row
        and, when it is the agent's newest result yet, its body and time, for the agent's
        inventory (:func:`~hub.services.preflight.store_inventories`, once per agent and
        batch). ``deployments`` maps the batch's bundle ids to their deployments;
        ``attempts``, when given, their attempts (kept current; rows left to the next flush),
        else each deployment's attempts are read and its rows flushed here.

        Raises:
            Rejected, HubError: the file is refused (nothing of it may be kept).
        """
        ctx = self.ctx
        vb, agent = inc.verified, inc.agent
        assert vb is not None and agent is not None
        res = vb
        if agent.status != "enrolled":
            raise Rejected(f"agent {agent.agent_id} is {agent.status}", "agent", agent.agent_id)
        if agent.ed25519_public != inc.agent_key:
            raise Rejected(
                f"the key of agent {agent.agent_id} changed while the file was verified; "
                "import it again",
                "agent",
                agent.agent_id,
            )
        flags: list[str] = []
        dep: Deployment | None = None
        refused_lost = _refused_lost_bundle(res.status, res.body)
        if res.bundle_id is None and refused_lost is not None:
            # The agent refused a bundle the hub declared lost; its result names no bundle
            # id, only in its reason: attach it to that lost deployment of this agent.
            found = deployments.get(refused_lost)
            if found is not None and found.agent_id == agent.id and found.state == "lost":
                dep = found
        elif res.bundle_id is not None and (
                res.status in PLAN_STATUSES or (res.status == "rejected" and res.bundle_id
                                                not in deployments
                                                and is_plan(ctx.session, res.bundle_id))):
            # The answer to a preflight plan, or its refusal by a rule checked after its
            # signature (expired, a replay) (hub.services.plans): no deployment.
            events.flush()  # record_outcome appends events of its own
            flag = record_outcome(ctx, agent, res.bundle_id, res.status, res.body,
                                  res.result_seq)
            if flag is not None:
                flags.append(flag)
        elif res.bundle_id is not None and res.status == "rejected":
            # The agent refused a bundle after it verified (step or approval check) and names
            # it. A bundle this hub never exported to this agent (made by hand with the
            # release key, say) is no reason to drop the refusal: it is imported, flagged and
            # audited, attached to no deployment.
            dep = deployments.get(res.bundle_id)
            if dep is None or dep.agent_id != agent.id:
                dep = None
                flags.append(
                    f"refused: bundle {res.bundle_id} was not exported by this hub to "
                    f"{agent.agent_id} ({str(res.body.get('summary', ''))[:300]})"
                )
        elif res.bundle_id is not None:
            dep = deployments.get(res.bundle_id)
            if dep is None:
                raise Rejected(
                    f"result {res.result_seq} of {agent.agent_id} is about "
                    f"bundle {res.bundle_id}, which this hub never exported",
                    "unknown-release",
                    agent.agent_id,
                )
            if dep.agent_id != agent.id:
                raise Rejected(
                    f"bundle {res.bundle_id} was not addressed to agent {agent.agent_id}",
                    "target",
                    agent.agent_id,
                )
        # The agent's result chain: sequence gaps and broken links are flagged, not fatal
        # (media can arrive out of order).
        if res.result_seq > agent.result_seq + 1:
            flags.append(
                f"gap: results {agent.result_seq + 1}..{res.result_seq - 1} of "
                f"{agent.agent_id} have not been imported"
            )
        elif (
            res.result_seq == agent.result_seq + 1
            and agent.last_result_digest is not None
            and res.prev_result_sha256 != agent.last_result_digest
        ):
            flags.append(
                f"chain: result {res.result_seq} does not follow the last imported result "
                "of this agent"
            )
        report: tuple[Mapping[str, Any], datetime] | None = None
        if res.result_seq > agent.result_seq:
            agent.result_seq = res.result_seq
            agent.last_result_digest = vb.envelope_sha256
            # The newest result's, unless a live STATE made later is kept (preflight).
            made = datetime.fromtimestamp(vb.created, UTC)
            report = (res.body, min(made, ctx.now()))
        agent.last_seen = ctx.now()
        summary = {
            "status": res.status,
            "result_seq": res.result_seq,
            "summary": str(res.body.get("summary", ""))[:2000],
            "steps": [
                {k: s.get(k) for k in ("index", "name", "status", "summary", "exit_code")}
                for s in res.body.get("steps", [])
            ][:200],
        }
        attempt: int | None = None
        if dep is not None:
            events.flush()  # the deployment's own events come after the batch's so far
        if dep is not None and dep.state == "lost" and refused_lost is not None:
            refused = record_refused_lost(
                ctx, dep, result_seq=res.result_seq, result_sha256=vb.envelope_sha256
            )
            if attempts is not None:
                attempts.setdefault(dep.id, []).append(refused)  # kept current
            attempt = refused.attempt
        elif dep is not None and res.status in RESULT_STATES:
            steps = [s for s in res.body.get("steps", []) if isinstance(s, dict)][:1000]
            attempt = record_result(
                ctx,
                dep,
                state=RESULT_STATES[res.status],
                result_seq=res.result_seq,
                result_sha256=vb.envelope_sha256,
                steps=steps,
                summary=summary,
                previous=None if attempts is None else attempts.setdefault(dep.id, []),
                flush=attempts is None,
            ).attempt
        events.add(
            "result.import",
            "result",
            vb.envelope_sha256,
            {
                "agent_id": agent.agent_id,
                "result_seq": res.result_seq,
                "status": res.status,
                "bundle_id": res.bundle_id,
                "deployment": dep.id if dep else None,
                "attempt": attempt,
                "file": printable(inc.path.name),
                "file_sha256": inc.file_sha256,
                "envelope": base64.b64encode(vb.envelope).decode("ascii"),
                "flags": flags,
            },
        )
        for flag in flags:
            events.add("result.flag", "agent", agent.agent_id, {"flag": flag})
        _audit_job_runs(events, agent.agent_id, res.result_seq, res.body)
        row = ImportRow(
            inc.path.name,
            "imported",
            f"{res.status}: {summary['summary']}"[:300],
            agent.agent_id,
            dep.id if dep else None,
            tuple(flags),
        )
        return row, report



#: Scheduled job runs audited from one result (agent.jobs batches them; a result carrying
#: more is still imported whole, its envelope in the result.import event).
MAX_JOB_RUNS_AUDITED = 1000
_JOB_RUN_FIELDS = ("job", "bundle_id", "due_at", "started_at", "finished_at", "state",
                   "attempts", "missed", "exit_code", "summary")


def _audit_job_runs(events: _Events, agent_id: str, result_seq: int,
                    body: Mapping[str, Any]) -> None:
    """One ``job.run`` audit event per scheduled job run the result reports (docs/operations.md,
    "Scheduled jobs")."""
    runs = body.get("scheduled_jobs")
    if not isinstance(runs, list):
        return
    for run in runs[:MAX_JOB_RUNS_AUDITED]:
        if isinstance(run, dict):
            detail = {k: run.get(k) for k in _JOB_RUN_FIELDS}
            detail["summary"] = str(detail["summary"] or "")[:2000]
            events.add("job.run", "agent", agent_id, {**detail, "result_seq": result_seq})


def _duplicate_row(inc: _Incoming, seq: int) -> ImportRow:
    return ImportRow(
        inc.path.name, "duplicate", f"already imported (audit event {seq})", inc.agent_id
    )


_REFUSED_LOST = re.compile(r"\Abundle (\S+) \(.*\) was declared lost by ", re.DOTALL)


def _refused_lost_bundle(status: str, body: Mapping[str, Any]) -> str | None:
    """The bundle id of a bundle declared lost that this (signed) result refuses, else None.

    The agent refuses such a bundle with check ``lost`` and the reason ``bundle <id>
    (sequence …) was declared lost by …`` (agent.order.describe_lost); its result names no
    bundle id, since a refused bundle is not trusted to say what it is — but the decision
    it matched was the hub's own, signed, so the id in the reason is the hub's.
    """
    if status != "rejected" or body.get("check") != "lost":
        return None
    found = _REFUSED_LOST.match(str(body.get("summary", "")))
    return found.group(1) if found else None


def _deployments(session: Session, batch: list[_Incoming]) -> dict[str, Deployment]:
    """The deployments the batch's results are about, by bundle id (one query): the bundle
    a result is about, or the lost bundle it refuses."""
    ids = set()
    for inc in batch:
        res = inc.verified
        if res is not None and res.bundle_id is not None:
            ids.add(res.bundle_id)
        elif res is not None:
            lost = _refused_lost_bundle(res.status, res.body)
            if lost is not None:
                ids.add(lost)
    if not ids:
        return {}
    query = (
        select(Deployment)
        .where(Deployment.bundle_id.in_(sorted(ids)))
        .execution_options(populate_existing=True)  # as they are now, under the lock
    )
    return {d.bundle_id: d for d in session.scalars(query) if d.bundle_id is not None}


def _attempts(session: Session,
              deployments: dict[str, Deployment]) -> dict[int, list[DeploymentAttempt]]:
    """The recorded attempts of ``deployments``, by deployment id (one query)."""
    ids = sorted({d.id for d in deployments.values()})
    out: dict[int, list[DeploymentAttempt]] = {i: [] for i in ids}
    if ids:
        query = select(DeploymentAttempt).where(DeploymentAttempt.deployment_id.in_(ids))
        for attempt in session.scalars(query):
            out[attempt.deployment_id].append(attempt)
    return out


def _already_imported(session: Session, shas: set[str]) -> dict[str, int]:
    """Envelope digest → seq of its ``result.import`` event, for those already imported."""
    if not shas:
        return {}
    query = (
        select(AuditEvent.object_id, func.min(AuditEvent.seq))
        .where(AuditEvent.action == "result.import", AuditEvent.object_id.in_(sorted(shas)))
        .group_by(AuditEvent.object_id)
    )
    return {sha: seq for sha, seq in session.execute(query)}

