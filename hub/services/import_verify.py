"""Verification of one received result file, in the importing process or in a worker process.

:func:`verify_copy` runs the full verifier (every signature, rule and digest) over the
private copy of a result file and returns either a :class:`VerifiedResult` — plain,
picklable values taken from the verified bundle, and only the ones the importer uses — or
the :class:`~hub.services.import_files.Rejected` the file earns. It is the same function
whether the import calls it directly or through a :class:`VerifyPool` of worker processes
(:mod:`hub.services.result_import` uses the pool for batches of more than
:data:`POOL_MIN_FILES` files, so verification takes the other cores while the importing
process does the database work). Nothing here touches the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import io
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bundle.errors import BundleError, InsufficientSpaceError
from bundle.reader import (
    CheckedBundle,
    ExpectResult,
    VerifiedBundle,
    VerifierState,
    check_bundle,
    verify_bundle,
)
from bundle.staging import FILES_DIR
from hub.services.import_files import COPY_BUFFER, Rejected
from signing.keys import PublicKey
from signing.roots import TrustedRoot

__all__ = [
    "POOL_MAX_LOAD_PER_CPU",
    "POOL_MAX_WORKERS",
    "POOL_MIN_FILES",
    "POOL_START_METHODS",
    "VerifiedResult",
    "VerifyJob",
    "VerifyPool",
    "cores_free",
    "remove_staged",
    "start_method",
    "verify_copy",
]

#: A batch with more files to verify than this is verified in worker processes, when the
#: machine has more than one CPU and the workers can be forked (POOL_START_METHODS).
POOL_MIN_FILES = 8
#: How workers may be started for the pool to be used: a spawned worker first imports the
#: hub's modules (about a second each), more than it saves on a directory of results; the
#: importing process of a web server (threads: spawn) verifies on a thread instead.
POOL_START_METHODS = frozenset({"fork"})
#: The pool is used only while the 1-minute load average per CPU is below this, as the
#: import starts: on cores kept busy by other work, verifying on a thread costs less CPU in
#: all and was faster (docs/benchmarks.md, "Result import pipelined").
POOL_MAX_LOAD_PER_CPU = 1.0
POOL_MAX_WORKERS = 4  # worker processes at most (and never more than the CPUs)


@dataclass(frozen=True)
class VerifyJob:
    """What verifying one private copy needs (picklable)."""

    label: str  # the file's name, for messages
    copy: str  # the private copy in the results directory
    data: bytes | None  # the copy's bytes, when they were kept in memory
    size: int
    agent_id: str  # claimed by the file's head; the verifier checks the signed manifest
    agent_key: str  # the enrolled Ed25519 key of that agent, hex
    now: int  # the hub's clock, seconds
    memory_staging: str | None  # a private directory on a memory file system, if any
    disk_staging_parent: str  # where a private staging directory is made otherwise


@dataclass(frozen=True)
class VerifiedResult:
    """The fields of a verified result bundle the importer uses (plain values)."""

    envelope: bytes
    created: int
    agent_id: str
    result_seq: int
    status: str
    body: dict[str, Any]
    prev_result_sha256: str | None
    bundle_id: str | None

    @functools.cached_property
    def envelope_sha256(self) -> str:
        """Computed where it is used (the importing process), not taken from a worker."""
        return hashlib.sha256(self.envelope).hexdigest()


def _plain(value: Any) -> Any:
    """A JSON value with every mapping made a dict and every sequence a list."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _summary(vb: VerifiedBundle | CheckedBundle) -> VerifiedResult:
    res = vb.manifest.result
    assert res is not None  # ExpectResult refuses a bundle without a result
    return VerifiedResult(
        envelope=vb.envelope,
        created=vb.manifest.created,
        agent_id=res.agent_id,
        result_seq=res.result_seq,
        status=res.status,
        body=_plain(res.body),
        prev_result_sha256=res.prev_result_sha256,
        bundle_id=res.bundle_id,
    )


_agent_keys: dict[str, PublicKey] = {}  # parsed keys, per process
_worker_root: TrustedRoot | None = None  # the trusted root of a worker process


def verify_copy(job: VerifyJob, trusted: TrustedRoot) -> VerifiedResult | Rejected:
    """Verify ``job``'s copy against the enrolled key (every check, every digest). A result
    whose payloads are each at most 1 MiB compressed (the usual one) is checked in memory
    (:func:`bundle.reader.check_bundle`: nothing staged); a larger one is staged, in memory
    staging when it fits there, and its staged payloads removed. Never raises for a bad file
    or an I/O error: returns the :class:`Rejected` the import records (same reason and check
    in or out of a worker)."""
    key = _agent_keys.get(job.agent_key)
    if key is None:
        key = _agent_keys[job.agent_key] = PublicKey.from_hex(job.agent_key)
    expect = ExpectResult(hub_id=trusted.document.hub_id, agent_id=job.agent_id, agent_key=key)

    def source() -> contextlib.AbstractContextManager[BinaryIO]:
        if job.data is not None:
            return io.BytesIO(job.data)
        fd = os.open(job.copy, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return open(fd, "rb", buffering=COPY_BUFFER)

    def check() -> CheckedBundle:
        with source() as fh:
            return check_bundle(fh, label=job.label, size=job.size, trusted_root=trusted,
                                state=VerifierState(), expect=expect, clock=lambda: job.now)

    def verify(staging: Path) -> VerifiedBundle:
        with source() as fh:
            return verify_bundle(
                fh,
                label=job.label,
                size=job.size,
                trusted_root=trusted,
                state=VerifierState(),
                expect=expect,
                staging_dir=staging,
                clock=lambda: job.now,
                # The staged payloads are only checked, then removed: nothing to make
                # durable. Every signature, rule and digest is still checked.
                durable=False,
            )

    try:
        try:
            return _summary(check())
        except InsufficientSpaceError:
            pass  # a payload over 1 MiB compressed: staged
        try:
            if job.memory_staging is None:
                raise InsufficientSpaceError("no memory staging")
            vb = verify(Path(job.memory_staging))
        except InsufficientSpaceError:
            with _disk_staging(job.disk_staging_parent) as staging:
                vb = verify(staging)
        remove_staged(vb)
        return _summary(vb)
    except BundleError as exc:
        return Rejected(str(exc), exc.check, job.agent_id)
    except OSError as exc:
        return Rejected(
            f"{job.label}: the hub could not verify its copy: {exc}", "io", job.agent_id
        )


def remove_staged(vb: VerifiedBundle) -> None:
    """Remove what verifying ``vb`` staged: its payload files, ``files/`` and the ready
    directory (what :class:`bundle.staging.Stager` makes), or the whole tree when it holds
    anything else."""
    try:
        for staged in vb.files.values():
            os.unlink(staged)
        os.rmdir(vb.staged_dir / FILES_DIR)
        os.rmdir(vb.staged_dir)
    except OSError:
        shutil.rmtree(vb.staged_dir, ignore_errors=True)


@contextlib.contextmanager
def _disk_staging(parent: str) -> Iterator[Path]:
    """A private (0700) staging directory beside the results, removed afterwards."""
    staging = Path(tempfile.mkdtemp(prefix="import-", dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _worker_init(trusted: TrustedRoot) -> None:
    global _worker_root
    _worker_root = trusted
    # A terminal's Ctrl-C reaches the whole process group: the importer handles it (rolls
    # back its batch and shuts the pool down); a worker dying of it only printed a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # The importer killed alone (kill -9, the OOM killer) would leave this worker blocked
        # on the pool's queue for ever: every worker holds that queue's write end too.
        threading.Thread(target=_leave_with, args=(parent.sentinel,), daemon=True,
                         name="importer-gone").start()


def _leave_with(sentinel: int) -> None:
    """Exit this worker as soon as its importing process is gone."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


_worker_staging: dict[str, str | None] = {}  # the run's memory staging -> this worker's own


def _worker_verify(job: VerifyJob) -> VerifiedResult | Rejected:
    assert _worker_root is not None
    if job.memory_staging is not None:
        # A directory of this worker's own: two workers verifying the same result (a file
        # and its copy under another name) would stage under the same ready name. Made once
        # per worker (most results are checked in memory and never stage).
        staging = _worker_staging.get(job.memory_staging, "")
        if staging == "":
            staging = os.path.join(job.memory_staging, f"worker-{os.getpid()}")
            try:
                os.mkdir(staging, 0o700)
            except FileExistsError:
                pass
            except OSError:
                staging = None  # staged beside the results instead
            _worker_staging[job.memory_staging] = staging
        job = dataclasses.replace(job, memory_staging=staging)
    return verify_copy(job, _worker_root)


def cores_free(cpus: int) -> bool:
    """True when the machine's 1-minute load average leaves room on its ``cpus`` CPUs
    (:data:`POOL_MAX_LOAD_PER_CPU`); True where the load average cannot be read."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return True
    return load < POOL_MAX_LOAD_PER_CPU * cpus


def _ready() -> None:
    """A no-op job: the pool has started its workers."""


def start_method() -> str:
    """``fork`` when the importing process runs one thread (``tiangong hub import``): a
    worker starts at once and only runs :func:`verify_copy`, and it leaves by ``os._exit``,
    never touching the database connection it inherited. ``spawn`` otherwise (the web
    server's threads may hold locks a forked child would inherit held): a fresh interpreter,
    which costs an import of the importing program's modules per worker."""
    return "fork" if threading.active_count() == 1 else "spawn"


class VerifyPool:
    """Worker processes that run :func:`verify_copy`, started on first use (see
    :func:`start_method`)."""

    def __init__(self, trusted: TrustedRoot) -> None:
        self.trusted = trusted
        self.workers = max(1, min(os.cpu_count() or 1, POOL_MAX_WORKERS))
        self._pool: ProcessPoolExecutor | None = None
        self._frozen = False  # gc.freeze() called by start(), undone by close()

    def start(self) -> None:
        """Start the workers now (from the thread that will not be forked with locks held:
        call it before starting other threads, see :func:`start_method`)."""
        if self._pool is None:
            if start_method() == "fork":
                # The objects alive now are left out of garbage collection while the workers
                # live: a collection would write to them and copy their pages in the
                # children and here (copy-on-write) for nothing (see gc.freeze).
                gc.freeze()
                self._frozen = True
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(start_method()),
                initializer=_worker_init,
                initargs=(self.trusted,),
            )
            # Forked workers are all made at the first submission: make it here.
            self._pool.submit(_ready).result()

    def verify(self, jobs: list[VerifyJob]) -> list[VerifiedResult | Rejected]:
        """The outcome of each job, in order (safe to call from any one thread)."""
        self.start()
        assert self._pool is not None
        chunk = max(1, len(jobs) // (self.workers * 4))
        return list(self._pool.map(_worker_verify, jobs, chunksize=chunk))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

