"""Export bundles to media and import results from it — the hub's two file paths.

**Export** (:func:`export_environment`): for every queued deployment of an environment
(optionally one agent), allocate the target's next sequence under a row lock, build the
release manifest (approvals, latest signed audit checkpoint), write the signed bundle into
the output directory (atomically; re-read and verified by the writer), and mark the deployment
exported — one transaction per deployment, so a crash half-way loses nothing and re-running
continues. Re-running with no queued work writes nothing. A human-readable ``INDEX-<env>.txt``
lists what is on the media and for whom.

**Import** (:func:`import_directory`): every ``*.tgr`` result file (and every enrollment
request) found in a directory is handled on its own; a bad file is reported and left where it
is, never stopping the run. A result is read once, verified (the private copy that is then
stored) against the registered key of the agent it claims to come from, must concern a bundle
that was addressed to that agent, advances the deployment, and is stored verbatim
(``<data_dir>/results/<envelope sha256>.tgr``) with its signed envelope in the audit log, so an
auditor can re-check it without the hub. Results are recorded in batches, one transaction per
batch with a savepoint per file (see the comment at the import section). The same file
imported twice changes nothing. Gaps and breaks in an agent's result chain are flagged.

Views and the CLI call these; they decide nothing themselves.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bundle.container import ContainerReader, read_head
from bundle.errors import BundleError, InsufficientSpaceError
from bundle.limits import DEFAULT_LIMITS
from bundle.manifest import Approval as ManifestApproval
from bundle.manifest import Target
from bundle.reader import ExpectResult, VerifiedBundle, VerifierState, verify_bundle
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from hub.db import Agent, AuditEvent, Deployment, Environment
from hub.errors import ConfigError, HubError, ValidationError
from hub.services import audit
from hub.services.agents import EnrollmentRequest, agent_target, enroll_agent
from hub.services.approvals import approvals_for_manifest
from hub.services.context import ServiceContext
from hub.services.deployments import (
    allocate_sequence,
    mark_exported,
    pending_exports,
    transition,
)
from hub.services.environments import get_environment
from hub.services.users import require, require_ctx
from signing.envelope import TYPE_ENROLLMENT, TYPE_RESULT, parse_envelope, verify_envelope
from signing.errors import SigningError
from signing.fileio import fsync_dir
from signing.keys import PublicKey
from signing.roots import TrustedRoot
from signing.strictjson import loads_strict

__all__ = [
    "DEFAULT_IMPORT_BATCH",
    "ExportReport",
    "ExportedBundle",
    "ImportReport",
    "ImportRow",
    "export_environment",
    "import_directory",
    "import_result",
]

DEFAULT_EXPIRY = timedelta(days=14)
MAX_ENROLLMENT_BYTES = 64 * 1024  # bytes
MAX_INLINE_ENVELOPE = 128 * 1024  # bytes of result envelope copied into the audit event
RESULT_STATES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "rejected",
    "interrupted": "interrupted",
    "cancelled": "failed",
}
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExportedBundle:
    deployment_id: int
    agent_id: str | None
    product: str
    version: str
    sequence: int
    bundle_id: str
    paths: tuple[Path, ...]
    size: int


@dataclass
class ExportReport:
    environment: str
    written: list[ExportedBundle] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (deployment id, reason)
    index: Path | None = None


def _bundle_name(product: str, version: str, target: str, seq: int) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{product}-{version}")
    who = "".join(c if c.isalnum() or c in "._-" else "-" for c in target)
    return f"{safe}-{who}-{seq:06d}.tgb"


def export_environment(
    ctx: ServiceContext,
    environment: str,
    out_dir: Path,
    *,
    agent_id: str | None = None,
    expires_in: timedelta = DEFAULT_EXPIRY,
    split_size: int | None = None,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write a bundle for every queued deployment of ``environment`` into ``out_dir``.

    Commits after each bundle. Raises PermissionDeniedError (operator) before writing
    anything, ConfigError when the release key is not loaded; other per-deployment problems
    are collected in ``failed`` (and audited) so one bad release does not block the rest.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "bundle.export", env)
    if ctx.keys is None or ctx.keys.release_key is None:
        raise ConfigError("the release key is not loaded; it lives in <data_dir>/keys/")
    keys = ctx.keys
    release_key = keys.release_key
    assert release_key is not None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(environment)
    pending = pending_exports(ctx.session, environment, agent_id)
    if not pending:
        return report  # nothing to write: no checkpoint either (the live server asks often)
    checkpoint = _checkpoint_json(ctx, env)
    for dep in pending:
        dep_id = dep.id
        try:
            exported = _export_one(ctx, dep, out_dir, expires_in, split_size, checkpoint, progress)
        except (HubError, BundleError, OSError) as exc:
            ctx.session.rollback()
            reason = f"{type(exc).__name__}: {exc}"
            report.failed.append((dep_id, reason))
            audit.record(
                ctx, "bundle.export_failed", "deployment", str(dep_id), {"reason": reason[:2000]}
            )
            ctx.session.commit()
            continue
        ctx.session.commit()
        report.written.append(exported)
    if report.written:
        report.index = _write_index(out_dir, environment, report, ctx)
    return report


def _checkpoint_json(ctx: ServiceContext, env: Environment) -> dict[str, Any] | None:
    if ctx.keys is None or ctx.keys.audit_key is None:
        return None
    cp = audit.checkpoint_for_export(ctx, env)
    ctx.session.commit()
    return {
        "seq": cp.seq,
        "head_hash": cp.head_hash,
        "at": int(cp.at.timestamp()),
        "envelope": base64.b64encode(cp.envelope).decode("ascii"),
    }


def _export_one(
    ctx: ServiceContext,
    dep: Deployment,
    out_dir: Path,
    expires_in: timedelta,
    split_size: int | None,
    checkpoint: dict[str, Any] | None,
    progress: ProgressFn | None,
) -> ExportedBundle:
    keys = ctx.keys
    assert keys is not None and keys.release_key is not None
    release = dep.release
    if release.state != "approved":
        raise ValidationError(
            f"release {release.product.name} {release.version} is {release.state}, not approved"
        )
    source = load_release(Path(release.stored_path))
    if source.content_hash != release.content_hash:
        raise ValidationError(
            f"the stored files of {release.product.name} {release.version} changed on disk "
            f"(content hash {source.content_hash[:16]} ≠ approved {release.content_hash[:16]});"
            " refusing to export"
        )
    env = dep.environment
    if dep.agent is not None:
        if dep.agent.status != "enrolled":
            raise ValidationError(f"agent {dep.agent.agent_id} is {dep.agent.status}")
        target = Target(agents=(dep.agent.agent_id,), environment=env.name)
        counter = agent_target(dep.agent.agent_id)
        who = dep.agent.agent_id
    else:
        target = Target(environment=env.name)
        counter = f"env:{env.name}"
        who = env.name
    _, seq = allocate_sequence(ctx.session, counter, agent=dep.agent)
    root_version = keys.root.version
    now = ctx.now()
    created = int(now.timestamp())
    approvals = tuple(
        ManifestApproval(by=a["by"], at=_unix(a["at"]), comment=a.get("comment", ""))
        for a in approvals_for_manifest(release, env)
    )
    bundle_id = f"{release.product.name}-{release.version}-{who}-{seq}"[:128]
    manifest, files = release_manifest(
        source,
        bundle_id=bundle_id,
        issuer=keys.release_key.key_id,
        target=target,
        root_version=root_version,
        sequence=seq,
        created=created,
        expires=created + int(expires_in.total_seconds()),
        counter=release.id,
        author=release.author.username,
        approvals=approvals,
        checkpoint=checkpoint,
    )
    out = out_dir / _bundle_name(release.product.name, release.version, who, seq)
    written = write_bundle(
        out, manifest, files, [keys.release_key], split_size=split_size, progress=progress
    )
    try:
        mark_exported(
            ctx,
            dep,
            bundle_id=bundle_id,
            bundle_path=str(written.paths[0]),
            sequence=seq,
            root_version=root_version,
        )
        audit.record(
            ctx,
            "bundle.written",
            "deployment",
            str(dep.id),
            {
                "bundle_id": bundle_id,
                "envelope_sha256": written.envelope_sha256,
                "files": [p.name for p in written.paths],
                "size": written.size,
                "sequence": seq,
                "target": target.to_json(),
            },
        )
    except BaseException:
        for p in written.paths:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    return ExportedBundle(
        dep.id,
        dep.agent.agent_id if dep.agent else None,
        release.product.name,
        release.version,
        seq,
        bundle_id,
        written.paths,
        written.size,
    )


def _unix(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` → Unix seconds."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp())


def _write_index(
    out_dir: Path, environment: str, report: ExportReport, ctx: ServiceContext
) -> Path:
    lines = [
        f"Tiangong bundles for environment {environment}",
        f"written {ctx.now().strftime('%Y-%m-%d %H:%M UTC')} by {ctx.actor_name}",
        "",
        "Drop each file into the inbox of the agent it is for (all parts of a split bundle).",
        "",
        f"{'file':<60} {'for agent':<24} {'release':<28} {'seq':>6} {'size':>12}",
    ]
    for b in report.written:
        for p in b.paths:
            lines.append(
                f"{p.name:<60} {b.agent_id or '(any in ' + environment + ')':<24} "
                f"{b.product + ' ' + b.version:<28} {b.sequence:>6} "
                f"{p.stat().st_size:>12}"
            )
    if report.failed:
        lines += ["", "NOT exported (see the hub's audit log):"]
        lines += [f"  deployment {d}: {r}" for d, r in report.failed]
    path = out_dir / f"INDEX-{environment}.txt"
    tmp = path.with_name(f".{path.name}.tmp")
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    text = "\n".join(lines) + "\n" + (f"\n--- earlier exports ---\n{previous}" if previous else "")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


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


@dataclass(frozen=True)
class ImportRow:
    file: str
    status: str  # imported | duplicate | rejected | enrolled
    reason: str
    agent_id: str | None = None
    deployment_id: int | None = None
    flags: tuple[str, ...] = ()


@dataclass
class ImportReport:
    rows: list[ImportRow] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


DEFAULT_IMPORT_BATCH = 100  # result files recorded per transaction
MAX_IMPORT_BATCH = 1000  # result files per transaction at most
COPY_BUFFER = 1024 * 1024  # bytes per read while copying a result file
KEEP_IN_MEMORY = 64 * 1024 * 1024  # bytes of a batch's files kept to verify from memory
FSYNC_THREADS = 8  # parallel fsyncs of a batch's copies (grouped into few journal commits)
RECEIVE_THREADS = 4  # files of a batch read and copied at the same time
STALE_INCOMING = timedelta(days=1)  # an .incoming-* copy this old was left by a crash
#: Where the verifier stages a result's payloads first: a memory file system, so the few
#: small files each verification creates and removes cost no disk metadata writes (≈ 1 ms
#: each on a busy ext4 here). A result that does not fit there is staged beside the results.
MEMORY_STAGING = Path("/dev/shm")  # noqa: S108 - only a private mkdtemp directory in it
_INCOMING_PREFIX = ".incoming-"


class _Rejected(Exception):
    """A result file is refused: ``reason`` for the operator, ``check`` for the audit event."""

    def __init__(self, reason: str, check: str = "import", agent_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.check = check
        self.agent_id = agent_id


class _Retry(Exception):
    """A file failed while a batch was recorded without savepoints: record it again with."""


class _CopyingReader:
    """A byte source over an open result file that copies every byte it reads into ``fd``
    and hashes it, so the file is read from the media exactly once.

    It reads ahead in :data:`COPY_BUFFER` chunks (the container reader asks for 512-byte
    headers). While the file stays within ``keep`` bytes it also keeps them, so a small
    result is then verified from memory — the very bytes written to the copy.
    """

    def __init__(self, source: BinaryIO, fd: int, keep: int) -> None:
        self.source = source
        self.fd = fd
        self.sha = hashlib.sha256()
        self.size = 0
        self.keep = keep
        self.kept: list[bytes] | None = []
        self._buf = b""
        self._off = 0
        self._eof = False

    def _fill(self, n: int) -> bytes:
        """Up to ``n`` more bytes of the file (b"" at its end), copied and hashed."""
        chunk = self.source.read(n)
        if not chunk:
            self._eof = True
            return b""
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]
        self.sha.update(chunk)
        self.size += len(chunk)
        if self.kept is not None:
            if self.size <= self.keep:
                self.kept.append(chunk)
            else:
                self.kept = None
        return chunk

    def read(self, n: int, /) -> bytes:
        while len(self._buf) - self._off < n and not self._eof:
            chunk = self._fill(max(n, COPY_BUFFER))
            self._buf = self._buf[self._off :] + chunk
            self._off = 0
        out = self._buf[self._off : self._off + n]
        self._off += len(out)
        return out

    def drain(self) -> bytes | None:
        """Copy the rest of the file; returns all of it if it was kept in memory."""
        while not self._eof:
            self._fill(COPY_BUFFER)
        self._buf, self._off = b"", 0
        return b"".join(self.kept) if self.kept is not None else None


@dataclass
class _Incoming:
    """One result file on its way through a batch."""

    path: Path
    copy: Path | None = None  # the private copy in the results directory
    size: int = 0
    file_sha256: str = ""
    agent_id: str | None = None  # claimed by the (not yet verified) manifest
    envelope_sha256: str = ""
    data: bytes | None = None  # the whole file, when small enough to keep until verified
    agent: Agent | None = None
    agent_key: str = ""
    verified: VerifiedBundle | None = None
    rejected: _Rejected | None = None
    row: ImportRow | None = None

    def discard_copy(self) -> None:
        if self.copy is not None:
            with contextlib.suppress(FileNotFoundError):
                self.copy.unlink()
            self.copy = None


def import_directory(
    ctx: ServiceContext,
    directory: Path,
    *,
    results_dir: Path,
    batch_size: int = DEFAULT_IMPORT_BATCH,
) -> ImportReport:
    """Import every result file and enrollment request in ``directory`` (not recursive).

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
    with _ImportRun(ctx, Path(results_dir)) as run:
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix == ".tgr":
                pending.append(path)
                if len(pending) >= batch_size:
                    report.rows += run.import_batch(pending)
                    pending = []
            elif (
                path.name.startswith("enrollment-")
                and path.suffix == ".json"
                and not path.name.startswith("enrollment-response-")
            ):
                if pending:
                    report.rows += run.import_batch(pending)
                    pending = []
                report.rows.append(_import_enrollment(ctx, path))
        if pending:
            report.rows += run.import_batch(pending)
    return report


def import_result(ctx: ServiceContext, path: Path, *, results_dir: Path) -> ImportRow:
    """Import one result file and commit; never raises for bad data (the row says what
    happened). Raises what :func:`import_directory` raises for the hub's own failures."""
    # One file at a time (the live server): no scan of the results directory for leftovers.
    with _ImportRun(ctx, Path(results_dir), clean=False) as run:
        (row,) = run.import_batch([Path(path)])
    return row


class _ImportRun:
    """State shared by the batches of one import: the results directory and a private
    staging directory for the verifier (thrown away at the end)."""

    def __init__(self, ctx: ServiceContext, results_dir: Path, *, clean: bool = True) -> None:
        self.ctx = ctx
        self.results_dir = results_dir
        self.clean = clean  # look for copies a crashed import left (scans the directory)
        self.memory_staging: Path | None = None
        self.disk_staging: Path | None = None
        self.trusted: TrustedRoot | None = None  # parsed once per run, not once per file
        self.agent_keys: dict[str, PublicKey] = {}
        self.keep_per_file = KEEP_IN_MEMORY  # bytes of one file kept to verify from memory

    def __enter__(self) -> _ImportRun:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        if self.clean:
            _remove_stale_copies(self.results_dir, self.ctx.now())
        if MEMORY_STAGING.is_dir():
            with contextlib.suppress(OSError):
                self.memory_staging = Path(
                    tempfile.mkdtemp(prefix="tiangong-import-", dir=MEMORY_STAGING)
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for staging in (self.memory_staging, self.disk_staging):
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _disk_staging(self) -> Path:
        if self.disk_staging is None:
            # Private (0700), beside the results.
            self.disk_staging = Path(
                tempfile.mkdtemp(prefix="import-", dir=self.results_dir.parent)
            )
        return self.disk_staging

    def import_batch(self, paths: list[Path]) -> list[ImportRow]:
        """Phases 1 and 2 for ``paths``; returns their rows, in order, once committed."""
        ctx = self.ctx
        if ctx.keys is None:
            raise ConfigError("the hub keys are not loaded")
        batch = [_Incoming(p) for p in paths]
        self.keep_per_file = KEEP_IN_MEMORY // len(batch)
        try:
            if len(batch) > 1:
                # Mostly waiting for the disk (open, create, read, write): overlap the files.
                with ThreadPoolExecutor(min(RECEIVE_THREADS, len(batch))) as pool:
                    list(pool.map(self._receive, batch))
            else:
                self._receive(batch[0])
            self._lookup(batch)
            for inc in batch:
                self._verify(inc)
            _sync_copies([inc.copy for inc in batch if inc.copy is not None])
            self._record(batch)
            ctx.session.commit()
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
            fd = os.open(inc.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read: {exc}"
            inc.rejected = _Rejected(f"{name} {what}")
            return
        with open(fd, "rb", buffering=0) as source:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                inc.rejected = _Rejected(f"{name} is not a regular file")
                return
            out, copy = tempfile.mkstemp(
                prefix=_INCOMING_PREFIX, suffix=".tgr", dir=self.results_dir
            )
            inc.copy = Path(copy)
            try:
                reader = _CopyingReader(source, out, keep=self.keep_per_file)
                inc.agent_id, inc.envelope_sha256 = _claim(reader, name)
                inc.data = reader.drain()
                inc.size, inc.file_sha256 = reader.size, reader.sha.hexdigest()
            except _Rejected as exc:
                inc.rejected = exc
                exc.agent_id = inc.agent_id
            except OSError as exc:
                inc.rejected = _Rejected(f"{name} cannot be read or copied: {exc}", "io")
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
                inc.rejected = _Rejected(f"unknown agent {inc.agent_id!r}", "agent", inc.agent_id)
            elif agent.status != "enrolled":
                inc.rejected = _Rejected(
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

    def _verify(self, inc: _Incoming) -> None:
        """Verify the private copy against the enrolled key (every check, every digest)."""
        if inc.rejected is not None or inc.row is not None or inc.copy is None:
            return
        keys, copy = self.ctx.keys, inc.copy
        assert keys is not None and inc.agent_id is not None
        if self.trusted is None:
            self.trusted = keys.trusted_root
        trusted = self.trusted
        key = self.agent_keys.get(inc.agent_key)
        if key is None:
            key = self.agent_keys[inc.agent_key] = PublicKey.from_hex(inc.agent_key)
        expect = ExpectResult(hub_id=trusted.document.hub_id, agent_id=inc.agent_id, agent_key=key)
        data, inc.data = inc.data, None

        def verify(staging: Path) -> VerifiedBundle:
            if data is not None:
                source: contextlib.AbstractContextManager[BinaryIO] = io.BytesIO(data)
            else:
                fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                source = open(fd, "rb", buffering=COPY_BUFFER)  # noqa: SIM115 - closed below
            with source as fh:
                return verify_bundle(
                    fh,
                    label=inc.path.name,
                    size=inc.size,
                    trusted_root=trusted,
                    state=VerifierState(),
                    expect=expect,
                    staging_dir=staging,
                    clock=lambda: int(self.ctx.now().timestamp()),
                    # The staged payloads are only checked, then removed: nothing to make
                    # durable. Every signature, rule and digest is still checked.
                    durable=False,
                )

        try:
            try:
                if self.memory_staging is None:
                    raise InsufficientSpaceError("no memory staging")
                vb = verify(self.memory_staging)
            except InsufficientSpaceError:
                vb = verify(self._disk_staging())
        except BundleError as exc:
            inc.rejected = _Rejected(str(exc), exc.check, inc.agent_id)
        except OSError as exc:
            inc.rejected = _Rejected(
                f"{inc.path.name}: the hub could not verify its copy: {exc}", "io", inc.agent_id
            )
        else:
            shutil.rmtree(vb.staged_dir, ignore_errors=True)
            inc.verified = vb
        if inc.rejected is not None:
            inc.discard_copy()

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
        with audit.held_head(session) as head:
            # The head lock serialises every audit appender, so from here on no other import
            # can record the same result or move the same agent: read both again.
            verified = [inc for inc in batch if inc.verified is not None and inc.row is None]
            done = _already_imported(session, {inc.envelope_sha256 for inc in verified})
            for agent in {id(inc.agent): inc.agent for inc in verified}.values():
                session.refresh(agent)
            deployments = _deployments(session, verified)
            for inc in batch:
                if inc.row is not None:  # a duplicate already kept, decided in phase 1
                    rows.append(inc.row)
                    continue
                rejected = inc.rejected
                if inc.verified is not None:
                    sha = inc.verified.envelope_sha256
                    if sha in done:
                        keep.append(inc)
                        rows.append(_duplicate_row(inc, done[sha]))
                        continue
                    try:
                        if careful:
                            with head.savepoint():
                                row, seq = self._apply(inc, deployments)
                        else:
                            row, seq = self._apply(inc, deployments)
                    except _Rejected as exc:
                        if not careful:
                            raise _Retry from exc
                        rejected = exc
                    except HubError as exc:
                        if not careful:
                            raise _Retry from exc
                        rejected = _Rejected(f"{type(exc).__name__}: {exc}", "hub", inc.agent_id)
                    else:
                        done[sha] = seq
                        keep.append(inc)
                        rows.append(row)
                        continue
                assert rejected is not None
                audit.record(
                    self.ctx,
                    "result.rejected",
                    "file",
                    inc.path.name[:200],
                    {
                        "reason": rejected.reason[:2000],
                        "check": rejected.check,
                        "claimed_agent": rejected.agent_id,
                    },
                )
                rows.append(
                    ImportRow(inc.path.name, "rejected", rejected.reason, rejected.agent_id)
                )
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
        self, inc: _Incoming, deployments: dict[str, Deployment]
    ) -> tuple[ImportRow, int]:
        """Record one verified result; returns the row and the seq of its ``result.import``
        event. ``deployments`` maps the batch's bundle ids to their deployments.

        Raises:
            _Rejected, HubError: the file is refused (nothing of it may be kept).
        """
        ctx = self.ctx
        vb, agent = inc.verified, inc.agent
        assert vb is not None and agent is not None
        res = vb.manifest.result
        assert res is not None
        if agent.status != "enrolled":
            raise _Rejected(f"agent {agent.agent_id} is {agent.status}", "agent", agent.agent_id)
        if agent.ed25519_public != inc.agent_key:
            raise _Rejected(
                f"the key of agent {agent.agent_id} changed while the file was verified; "
                "import it again",
                "agent",
                agent.agent_id,
            )
        flags: list[str] = []
        dep: Deployment | None = None
        if res.bundle_id is not None:
            dep = deployments.get(res.bundle_id)
            if dep is None:
                raise _Rejected(
                    f"result {res.result_seq} of {agent.agent_id} is about "
                    f"bundle {res.bundle_id}, which this hub never exported",
                    "unknown-release",
                    agent.agent_id,
                )
            if dep.agent_id != agent.id:
                raise _Rejected(
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
        if res.result_seq > agent.result_seq:
            agent.result_seq = res.result_seq
            agent.last_result_digest = vb.envelope_sha256
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
        if dep is not None and res.status in RESULT_STATES:
            new_state = RESULT_STATES[res.status]
            if dep.state != new_state:
                transition(ctx, dep, new_state, summary=summary, action="result.import")
        event = audit.record(
            ctx,
            "result.import",
            "result",
            vb.envelope_sha256,
            {
                "agent_id": agent.agent_id,
                "result_seq": res.result_seq,
                "status": res.status,
                "bundle_id": res.bundle_id,
                "deployment": dep.id if dep else None,
                "file": inc.path.name,
                "file_sha256": inc.file_sha256,
                "envelope": base64.b64encode(vb.envelope).decode("ascii"),
                "flags": flags,
            },
        )
        for flag in flags:
            audit.record(ctx, "result.flag", "agent", agent.agent_id, {"flag": flag})
        row = ImportRow(
            inc.path.name,
            "imported",
            f"{res.status}: {summary['summary']}"[:300],
            agent.agent_id,
            dep.id if dep else None,
            tuple(flags),
        )
        return row, event.seq


def _claim(source: _CopyingReader, name: str) -> tuple[str, str]:
    """The agent a result file claims to come from, and its envelope's SHA-256 — read from
    the head WITHOUT verifying anything, only to choose the key to verify with (the verifier
    then checks that the signed manifest names that same agent). Only the head is read.

    Raises:
        _Rejected: the file is not a bundle, or not a result bundle.
    """
    limits = DEFAULT_LIMITS
    try:
        head = read_head(
            ContainerReader(source, name),
            max_roots_bytes=limits.max_roots_bytes,
            max_envelope_bytes=limits.max_envelope_bytes,
        )
    except BundleError as exc:
        raise _Rejected(f"not a readable result file: {exc}") from exc
    try:
        # Loose parsing (of the DSSE envelope's payloadType and base64 payload) is enough to
        # pick a key; the verifier parses both strictly once the signature is checked.
        envelope = json.loads(head.envelope)
        payload_type = envelope["payloadType"]
        doc = json.loads(base64.b64decode(envelope["payload"], validate=True))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise _Rejected(
            f"not a readable result file: {name}: envelope is malformed ({exc})"[:500]
        ) from exc
    result = doc.get("result") if isinstance(doc, dict) else None
    agent_id = result.get("agent_id") if isinstance(result, dict) else None
    if payload_type != TYPE_RESULT or not isinstance(agent_id, str):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        what = f"a {kind} bundle" if isinstance(kind, str) else "unreadable before verification"
        raise _Rejected(f"not a result bundle ({name} is {what[:80]})")
    return agent_id, hashlib.sha256(head.envelope).hexdigest()


def _duplicate_row(inc: _Incoming, seq: int) -> ImportRow:
    return ImportRow(
        inc.path.name, "duplicate", f"already imported (audit event {seq})", inc.agent_id
    )


def _deployments(session: Session, batch: list[_Incoming]) -> dict[str, Deployment]:
    """The deployments the batch's results are about, by bundle id (one query)."""
    ids = set()
    for inc in batch:
        res = inc.verified.manifest.result if inc.verified is not None else None
        if res is not None and res.bundle_id is not None:
            ids.add(res.bundle_id)
    if not ids:
        return {}
    query = (
        select(Deployment)
        .where(Deployment.bundle_id.in_(sorted(ids)))
        .execution_options(populate_existing=True)  # as they are now, under the lock
    )
    return {d.bundle_id: d for d in session.scalars(query) if d.bundle_id is not None}


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


def _sync_copies(paths: list[Path]) -> None:
    """fsync each copy; the calls run in parallel, so the file system commits them
    together (measured here: ≈ 40 ms for 100 files, against ≈ 5 ms per file one by one)."""

    def one(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if len(paths) <= 1:
        for p in paths:
            one(p)
        return
    with ThreadPoolExecutor(min(FSYNC_THREADS, len(paths))) as pool:
        list(pool.map(one, paths))


def _remove_stale_copies(results_dir: Path, now: datetime) -> None:
    """Remove ``.incoming-*`` copies a crashed import left behind (a day old or more; a
    running import's copies live for seconds)."""
    limit = (now - STALE_INCOMING).timestamp()
    for entry in os.scandir(results_dir):
        if entry.name.startswith(_INCOMING_PREFIX):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)


def _reject(
    ctx: ServiceContext, path: Path, reason: str, agent: str | None = None, check: str = "import"
) -> ImportRow:
    ctx.session.rollback()
    audit.record(
        ctx,
        "result.rejected",
        "file",
        path.name[:200],
        {"reason": reason[:2000], "check": check, "claimed_agent": agent},
    )
    ctx.session.commit()
    return ImportRow(path.name, "rejected", reason, agent)


def _import_enrollment(ctx: ServiceContext, path: Path) -> ImportRow:
    """An agent's enrollment request: self-signed by the key it announces."""
    try:
        data = path.read_bytes()[: MAX_ENROLLMENT_BYTES + 1]
        env = parse_envelope(data, MAX_ENROLLMENT_BYTES)
        doc = loads_strict(env.payload, MAX_ENROLLMENT_BYTES)
        key = PublicKey.from_hex(doc["ed25519_public"])
        verify_envelope(
            data,
            payload_type=TYPE_ENROLLMENT,
            trusted=[key],
            threshold=1,
            max_bytes=MAX_ENROLLMENT_BYTES,
        )
        if not doc.get("environment"):
            raise ValidationError("the request names no environment")
        request = EnrollmentRequest(
            hostname=doc["hostname"],
            ed25519_public=doc["ed25519_public"],
            x25519_public=doc["x25519_public"],
            agent_id=doc.get("agent_id"),
            labels=tuple(sorted((str(k), str(v)) for k, v in (doc.get("labels") or {}).items())),
            agent_version=str(doc.get("agent_version", "")),
            environment=doc["environment"],
            hub_id=doc.get("hub_id"),
        )
        response = enroll_agent(ctx, doc["environment"], request)
        ctx.session.commit()
    except (SigningError, HubError, KeyError, TypeError, ValueError, OSError) as exc:
        return _reject(ctx, path, f"enrollment request refused: {exc}", None, "enrollment")
    if ctx.keys is not None and ctx.keys.release_key is not None:
        out = path.with_name(f"enrollment-response-{response.agent_id}.json")
        out.write_bytes(response.to_envelope(ctx.keys.release_key))
    return ImportRow(
        path.name,
        "enrolled",
        f"agent {response.agent_id} enrolled in {response.environment}",
        response.agent_id,
    )
