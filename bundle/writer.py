"""Write a signed bundle: compress, sign the manifest, frame it (docs/bundle-format.md §12).

:func:`write_bundle` is generic: it takes a manifest (everything but ``files`` and ``parts``) and
a list of payload files, so release bundles and result bundles (agent logs) share it.
:func:`release_manifest` builds the manifest and file list of a release bundle from a loaded
release directory.

The writer

1. compresses every payload file, streaming with 1 MiB buffers, into a spool file, hashing the
   content and the compressed bytes as they pass (§7.1, §12.1);
2. fills in ``files`` (and ``parts`` when splitting, §8), signs the manifest (the envelope
   carries digests, never payloads) and frames marker, roots, envelope and payload members;
3. writes to a temporary name, ``fsync``\\ s, renames into place, ``fsync``\\ s the directory;
4. re-reads what it wrote from the device and checks every digest (``verify=True``): a single
   file while it is being written, window by window, before the rename (:class:`_ReadBack`);
   split parts after writing (:func:`bundle.inspect.verify_written`).

Output is deterministic: the same inputs, keys and manifest give the same bytes on any machine
with the same python-zstandard version (§12.2). Spools and temporary files are removed on any
failure. This module does not decide bundle ids, sequence numbers or times: the caller does.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import os
import queue
import secrets
import shutil
import stat
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

import zstandard

from bundle.container import (
    BLOCK,
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_header,
    encode_member,
    member_span,
    padding,
    payload_member,
)
from bundle.direct_io import DIRECT_CHUNK, BufferRing, DeviceReader
from bundle.errors import (
    BundleError,
    BundleFormatError,
    DigestMismatchError,
    LimitExceededError,
    ManifestError,
    ReleaseFormatError,
)
from bundle.frame_cache import FrameCache
from bundle.limits import DEFAULT_LIMITS, Limits, format_bytes
from bundle.manifest import (
    KIND_PLAN,
    KIND_RELEASE,
    Approval,
    ChainInfo,
    FileEntry,
    Manifest,
    PartDigest,
    PartsInfo,
    ReleaseInfo,
    SecretEntry,
    Target,
    check_logical_name,
)
from bundle.parts import (
    DEFAULT_SPLIT_SIZE,
    check_split_size,
    part_path,
    plan_parts,
    strip_part_suffix,
)
from bundle.printable import printable
from bundle.release_names import NameSet
from bundle.windows import Policy
from signing.envelope import Envelope, Signature, sign_envelope
from signing.fileio import (
    NAME_MAX_BYTES,
    SYNCFS_FROM,
    fit_name,
    fsync_dir,
    open_regular,
    syncfs_each,
)
from signing.keys import SigningKey
from signing.strictjson import dumps_canonical

__all__ = [
    "BUFFER_BYTES",
    "DEFAULT_LEVEL",
    "DEFAULT_SPLIT_SIZE",
    "MT_THRESHOLD_BYTES",
    "PayloadFile",
    "ProgressFn",
    "ReleaseSourceLike",
    "WrittenBundle",
    "encode_roots",
    "make_durable",
    "name_file",
    "plan_manifest",
    "release_manifest",
    "release_payloads",
    "sync_placed",
    "write_bundle",
]

BUFFER_BYTES = 1024 * 1024  # bytes per read/write/hash step
DEFAULT_LEVEL = 3  # zstd level (§12.1)
MT_THRESHOLD_BYTES = 4 * 1024 * 1024  # members larger than this use all cores (§12.2)
#: single-file bundles up to this size are assembled in memory and written with one call
#: (the usual export: payload frames come from the release's frame cache)
ASSEMBLE_BYTES = 8 * 1024 * 1024
SYNC_THREADS = 8  # make_durable: files fsynced and read back at once
MAX_SMALL_WORKERS = 4  # threads compressing small members at once
_SMALL_AHEAD = 16  # small frames compressed ahead of the one taken next (memory bound)
_PIPE_CHUNKS = 4  # chunks (at most BUFFER_BYTES each) queued for a hashing or writing thread
_COPY_STEP = 8 * 1024 * 1024  # bytes per copy_file_range call (progress granularity)
_SMALL_SPOOL = "small.zst"  # the spool file of the small frames, in the spool directory
_PLACE_BYTES = 4 * 1024 * 1024  # bytes of small members read and written in place at once

#: ``progress(phase, done, total)``: phase is ``"compress"`` (content bytes read),
#: ``"write"`` (bundle bytes written) or ``"verify"`` (bundle bytes re-read).
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PayloadFile:
    """One payload: its logical ``name`` (a key, never a path on the agent) and its source.

    ``size`` and ``sha256``, when given (e.g. from the release loader), must still match the
    file when it is compressed; a release cannot change between approval and export.
    """

    name: str
    path: Path
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class WrittenBundle:
    """What :func:`write_bundle` produced.

    ``paths`` is the bundle file, or its parts with ``.part000`` first. ``size`` is the length
    of the whole bundle stream (all parts together).
    """

    paths: tuple[Path, ...]
    manifest: Manifest
    envelope: bytes
    envelope_sha256: str
    size: int
    #: SHA-256 of the whole bundle file (what a live transfer OFFERs); None where the
    #: writer did not pass every byte through memory (large or split bundles)
    file_sha256: str | None = None
    #: ``durable=False``: the temporary file holding the bundle, not yet made durable nor
    #: renamed to ``paths[0]`` (:func:`make_durable` does both); None: already in place
    pending: Path | None = None


class ReleaseSourceLike(Protocol):
    """The fields of :class:`bundle.release.ReleaseSource` the writer uses."""

    @property
    def product(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def steps(self) -> tuple[Mapping[str, Any], ...]: ...
    @property
    def files(self) -> Sequence[Any]: ...  # items with name, path, size, sha256
    @property
    def content_hash(self) -> str: ...


def release_manifest(
    source: ReleaseSourceLike,
    *,
    bundle_id: str,
    issuer: str,
    target: Target,
    root_version: int,
    sequence: int,
    created: int,
    expires: int,
    counter: int,
    author: str,
    approvals: Sequence[Approval] = (),
    not_before: int | None = None,
    secrets: Sequence[SecretEntry] = (),
    checkpoint: Mapping[str, Any] | None = None,
    chain: ChainInfo | None = None,
    approval_envelopes: Sequence[bytes] = (),
    policy: Policy | None = None,
    entries: Sequence[FileEntry] = (),
) -> tuple[Manifest, tuple[PayloadFile, ...]]:
    """The manifest (without ``files``/``parts``) and payload list of a release bundle (§6.3).

    ``approval_envelopes`` are signed approvals and attestations (§6.10), carried as given.
    ``entries``: the manifest's ``files`` when the payloads are framed already
    (:func:`bundle.prepared.write_prepared`); empty for :func:`write_bundle`.

    Payloads keep the release's file order (sorted by name) and carry the loader's size and
    SHA-256, which :func:`write_bundle` checks again while compressing.

    Raises:
        ManifestError: a field breaks a manifest rule.
    """
    manifest = Manifest(
        bundle_id=bundle_id,
        kind=KIND_RELEASE,
        issuer=issuer,
        target=target,
        root_version=root_version,
        sequence=sequence,
        created=created,
        expires=expires,
        not_before=not_before,
        release=ReleaseInfo(
            product=source.product,
            version=source.version,
            description=source.description,
            counter=counter,
            content_hash=source.content_hash,
            author=author,
            approvals=tuple(approvals),
        ),
        steps=tuple(dict(s) for s in source.steps),
        files=tuple(entries),
        secrets=tuple(secrets),
        checkpoint=checkpoint,
        chain=chain,
        approvals=tuple(approval_envelopes),
        policy=None if policy is None or policy.empty else policy,
    )
    return manifest, release_payloads(source)


def release_payloads(source: ReleaseSourceLike) -> tuple[PayloadFile, ...]:
    """The payload list of a release bundle of ``source``: the release's file order (sorted
    by name), each with the loader's size and SHA-256."""
    # An empty sha256 (bundle.release.scan_release): not known yet, hashed while compressing.
    return tuple(PayloadFile(f.name, Path(f.path), f.size, f.sha256 or None)
                 for f in source.files)


def plan_manifest(
    source: ReleaseSourceLike,
    *,
    bundle_id: str,
    issuer: str,
    target: Target,
    root_version: int,
    sequence: int,
    created: int,
    expires: int,
    counter: int,
    author: str,
    checkpoint: Mapping[str, Any] | None = None,
    approval_envelopes: Sequence[bytes] = (),
) -> tuple[Manifest, tuple[PayloadFile, ...]]:
    """The manifest and payload list of a plan (preflight) bundle of ``source`` (§6.11).

    A plan carries the release's steps and files so the agent can check them, the signed
    approvals (§6.10) a site that requires them needs before it runs the release's own
    ``check`` scripts, and nothing else a deployment needs: no chain, policy or secrets. Its
    ``sequence`` is the hub's plan counter, a sequence space of its own.

    Raises:
        ManifestError: a field breaks a manifest rule.
    """
    manifest, files = release_manifest(
        source, bundle_id=bundle_id, issuer=issuer, target=target, root_version=root_version,
        sequence=sequence, created=created, expires=expires, counter=counter, author=author,
        checkpoint=checkpoint, approval_envelopes=approval_envelopes)
    return dataclasses.replace(manifest, kind=KIND_PLAN), files


def encode_roots(roots: Sequence[bytes]) -> bytes:
    """The ``roots.json`` member: a canonical JSON array of base64 root envelopes (§5.2)."""
    return dumps_canonical([base64.b64encode(r).decode("ascii") for r in roots])


# -- compression ------------------------------------------------------------------------


class _HashingWriter:
    """A file-like sink for the zstd writer that hashes and counts what passes through."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._fh.flush()


class _Compressors:
    """One single-worker and one all-cores compressor. Both use libzstd's multi-threaded mode,
    whose output does not depend on the worker count (§12.2), so the choice is only speed."""

    def __init__(self, level: int, threads: int) -> None:
        self.level = level
        self._small = self._make(1)
        self._big = self._make(threads)

    def _make(self, threads: int) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(
            level=self.level, threads=threads, write_checksum=True, write_content_size=True
        )

    def for_size(self, size: int) -> zstandard.ZstdCompressor:
        return self._big if size > MT_THRESHOLD_BYTES else self._small


def _check_level(level: int, limits: Limits) -> None:
    if not -7 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"zstd level {level} is out of range")
    window = 1 << zstandard.ZstdCompressionParameters.from_level(level).window_log
    if window > limits.max_window_bytes:
        raise ValueError(
            f"zstd level {level} uses a {format_bytes(window)} window, over the max_window_bytes "
            f"limit of {format_bytes(limits.max_window_bytes)}; agents would refuse the bundle"
        )


def _open_source(pf: PayloadFile) -> tuple[int, int]:
    """Open a payload source read-only if it is a regular file (a final symlink is not
    followed, a FIFO put in a file's place not waited on: :func:`open_regular`); (fd, size)."""
    try:
        fd, st = open_regular(pf.path, lambda: ReleaseFormatError(
            f"payload {pf.name!r}: {pf.path} is not a regular file"))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReleaseFormatError(
                f"payload {pf.name!r}: {pf.path} is a symbolic link; only regular files are "
                "bundled"
            ) from exc
        raise
    if pf.size is not None and st.st_size != pf.size:
        os.close(fd)
        raise ReleaseFormatError(
            f"payload {pf.name!r}: {pf.path} is {st.st_size} bytes, but the release was loaded "
            f"with {pf.size} bytes; the file changed — load the release again"
        )
    return fd, st.st_size


def _private(path: str, flags: int) -> int:
    """``open(..., opener=_private)``: a new file readable by its owner only (0600)."""
    return os.open(path, flags, 0o600)


@dataclass(frozen=True)
class _Frame:
    """Where a payload's compressed frame lies: ``offset`` bytes into the file ``path``
    (its own spool or cache file at 0, the shared spool of small frames, or the bundle's
    temporary file itself, already at its final place)."""

    path: Path
    offset: int = 0


class _PwriteSink:
    """A sink for the zstd writer that writes at a fixed place of an open file, hashing and
    counting what passes through (the file's own offset is left alone)."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._at = offset
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self._at)
            self._at += n
            view = view[n:]
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Pipe:
    """Applies ``step`` to each chunk handed over, in order, in a thread of its own (hashlib,
    zstd and file writes release the GIL, so the steps of one payload run side by side).
    The first error ``step`` raises is raised by the next :meth:`put` or by :meth:`close`;
    chunks after it are dropped."""

    def __init__(self, step: Callable[[Any], object], name: str,
                 drop: Callable[[Any], object] | None = None) -> None:
        self._step = step
        self._drop = drop  # called instead of step for chunks after an error
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_PIPE_CHUNKS)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, data: Any) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(data)

    def write(self, data: bytes) -> int:
        """The zstd writer's sink interface."""
        self.put(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self, *, raise_error: bool = True) -> None:
        """Wait for every chunk handed over; raise the first error (unless told not to,
        when another error is on its way)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error and self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._step(data)
                except BaseException as exc:  # raised in the caller's thread
                    self.error = exc
            elif self._drop is not None:
                self._drop(data)


def _compress_one(
    index: int,
    pf: PayloadFile,
    dest: Path | tuple[int, int],
    compressors: _Compressors,
    tick: Callable[[int], None],
) -> FileEntry:
    """Stream one (large) payload through zstd into ``dest``: a new file, or ``(fd, offset)``.

    Three threads: this one reads and feeds libzstd (whose own workers compress), one hashes
    the content, one hashes and writes the frame. The content is read into a few reused
    buffers (no fresh megabyte per read), each given back once hashed."""
    fd, size = _open_source(pf)
    content_sha = hashlib.sha256()
    got = 0
    ring = BufferRing(_PIPE_CHUNKS + 2, BUFFER_BYTES)

    def hash_chunk(item: tuple[memoryview, memoryview]) -> None:
        try:
            content_sha.update(item[1])
        finally:
            ring.give(item[0])

    with contextlib.ExitStack() as stack:
        stack.callback(os.close, fd)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        sink: _HashingWriter | _PwriteSink
        if isinstance(dest, Path):
            out = stack.enter_context(open(dest, "xb", opener=_private))
            sink = _HashingWriter(out)
        else:
            out = None
            sink = _PwriteSink(*dest)
        hasher = _Pipe(hash_chunk, "bundle-content-sha", drop=lambda item: ring.give(item[0]))
        framer = _Pipe(sink.write, "bundle-frame-write")
        try:
            cctx = compressors.for_size(size)
            zw = cctx.stream_writer(
                cast(IO[bytes], framer), size=size, write_size=BUFFER_BYTES, closefd=False
            )
            # No ``with zw``: closing a frame whose pledged size was not reached raises a
            # zstd error that would hide the real reason below.
            while got < size:
                buf = ring.take()
                n = os.readv(fd, [buf[:min(BUFFER_BYTES, size - got)]])
                if not n:
                    ring.give(buf)
                    break
                chunk = buf[:n]
                hasher.put((buf, chunk))
                # libzstd copies what it keeps before this returns; the buffer is taken
                # again only by this thread, after it
                zw.write(chunk)
                got += n
                tick(n)
            if got != size or os.read(fd, 1):
                raise ReleaseFormatError(
                    f"payload {pf.name!r}: {pf.path} changed size while it was being read"
                )
            zw.flush(zstandard.FLUSH_FRAME)
        except BaseException:
            hasher.close(raise_error=False)
            framer.close(raise_error=False)
            raise
        hasher.close()
        framer.close()
        if out is not None:
            out.flush()
    return _entry(index, pf, size, content_sha.hexdigest(), sink.size, sink.sha.hexdigest())


def _compress_small(pf: PayloadFile, compressors: _Compressors) -> tuple[int, str, bytes, str]:
    """Read a small payload whole, hash it and compress it in memory (the same frame as
    :func:`_compress_one` gives, §12.2): ``(size, sha256, frame, frame sha256)``."""
    fd, size = _open_source(pf)
    buf = bytearray(size + 1)
    view = memoryview(buf)
    got = 0
    with open(fd, "rb", buffering=0) as src:
        while got <= size:
            n = src.readinto(view[got:])
            if not n:
                break
            got += n
    if got != size:
        raise ReleaseFormatError(
            f"payload {pf.name!r}: {pf.path} changed size while it was being read"
        )
    data = view[:size]
    frame = compressors.for_size(size).compress(data)
    return size, hashlib.sha256(data).hexdigest(), frame, hashlib.sha256(frame).hexdigest()


def _entry(index: int, pf: PayloadFile, size: int, sha256: str, compressed_size: int,
           compressed_sha256: str) -> FileEntry:
    """The manifest entry of a compressed payload, once its content digest is checked
    against the one the release was loaded with."""
    if pf.sha256 is not None and sha256 != pf.sha256:
        raise ReleaseFormatError(
            f"payload {pf.name!r}: {pf.path} no longer has the SHA-256 it had when the release "
            "was loaded; the file changed — load the release again"
        )
    return FileEntry(
        member=payload_member(index),
        name=pf.name,
        size=size,
        sha256=sha256,
        compressed_size=compressed_size,
        compressed_sha256=compressed_sha256,
    )


# -- the data section (payload members and end marker) -----------------------------------


def _data_section(entries: Sequence[FileEntry], frames: Sequence[_Frame]) -> Iterator[bytes]:
    """The bytes after the envelope member, in order (§2.1)."""
    for entry, frame in zip(entries, frames, strict=True):
        yield encode_header(entry.member, entry.compressed_size)
        with open(frame.path, "rb") as fh:
            fh.seek(frame.offset)
            left = entry.compressed_size
            while left:
                chunk = fh.read(min(BUFFER_BYTES, left))
                if not chunk:
                    raise OSError(errno.EIO, f"spool file {frame.path} ended early")
                left -= len(chunk)
                yield chunk
        yield padding(entry.compressed_size)
    yield END_OF_ARCHIVE


def _cut_parts(
    chunks: Iterator[bytes],
    sizes: Sequence[int],
    open_part: Callable[[int], BinaryIO] | None,
    tick: Callable[[int], None],
) -> tuple[PartDigest, ...]:
    """Hash the data section part by part (and write each part when ``open_part``)."""
    digests: list[PartDigest] = []
    index = 0
    left = 0
    sha = hashlib.sha256()
    out: BinaryIO | None = None

    def close_part() -> None:
        nonlocal out
        digests.append(PartDigest(index, sizes[index - 1], sha.hexdigest()))
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            out = None

    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            if left == 0:
                if index:
                    close_part()
                index += 1
                left = sizes[index - 1]
                sha = hashlib.sha256()
                out = open_part(index) if open_part is not None else None
            piece = view[:left]
            sha.update(piece)
            if out is not None:
                out.write(piece)
            left -= len(piece)
            view = view[len(piece) :]
            tick(len(piece))
    if index:
        close_part()
    if len(digests) != len(sizes) or left:
        raise AssertionError("data section length differs from the part plan")
    return tuple(digests)


# -- files ------------------------------------------------------------------------------


def _copy_fd(src: int, dst: int, count: int, tick: Callable[[int], None],
             offset: int = 0) -> None:
    """Copy ``count`` bytes from ``src`` at ``offset`` to ``dst`` (at its position); kernel
    copy if possible."""
    done = 0
    fast = hasattr(os, "copy_file_range")
    while done < count:
        step = min(_COPY_STEP, count - done)
        n = 0
        if fast:
            try:
                n = os.copy_file_range(src, dst, step, offset + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                     errno.EPERM, errno.EBADF):
                    raise
                fast = False
                continue
        else:
            data = os.pread(src, min(step, BUFFER_BYTES), offset + done)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
            n = len(data)
        if n == 0:
            raise OSError(errno.EIO, "spool file ended early while copying")
        done += n
        tick(n)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _drop_cache(fd: int) -> None:
    """Ask the kernel to forget cached pages so the verification re-read hits the device."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


_TMP_EXTRA = len(".") + len(".123456789abc.tmp")  # what a temporary name adds to the final


def _tmp_for(final: Path) -> tuple[int, Path]:
    """A new temporary file beside ``final``: hidden and ending in ``.tmp`` (inbox watchers
    ignore such names). A final name too long to take those 18 bytes more (a 255-byte
    name is legal) is cut short in the temporary name and ends ``~<12 hex digits of its
    SHA-256>`` instead (:func:`signing.fileio.fit_name`, as the agent's inbox does), so
    the temporary name stays within the limit.

    Raises:
        OSError: ``final`` exists and is not a regular file (a device such as /dev/null, a
            FIFO, a directory, a symbolic link): the rename would replace it with the
            bundle, so it is refused before anything is written.
    """
    try:
        mode = os.lstat(final).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            raise OSError(errno.EEXIST, f"{final} exists and is not a regular file (a device, "
                          "FIFO, directory or symbolic link): refusing to replace it with "
                          "the bundle")
    name = fit_name(final.name, limit=NAME_MAX_BYTES - _TMP_EXTRA)
    while True:
        path = final.parent / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o644)  # whatever the umask, as every bundle file
        return fd, path


# -- reading back while writing ------------------------------------------------------------

_READBACK_WINDOW = 32 * 1024 * 1024  # bytes made durable and re-read at a time
_SYNC_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writeback of dirty pages in the range
_SYNC_WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on the device


def _load_sync_file_range() -> Callable[[int, int, int, int], bool] | None:
    """Linux ``sync_file_range(2)`` through libc, or None where it is unavailable."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int

    def call(fd: int, offset: int, count: int, flags: int) -> bool:
        return bool(func(fd, offset, count, flags) == 0)

    return call


_sync_file_range = _load_sync_file_range()


@dataclass(frozen=True)
class _Expect:
    """One stretch of the bundle file: literal ``data``, or ``size`` bytes of a payload member
    whose SHA-256 must be ``sha256``."""

    data: bytes = b""
    size: int = 0
    sha256: str = ""
    entry: FileEntry | None = None
    placed: bool = False  # compressed into the file in place: maybe checked by _PlacedCheck


class _ReadBack:
    """Re-read the bundle from the device while the rest of it is still being written.

    What the re-read protects against is a disk, filesystem or USB bridge that returns other
    bytes than were written (USER-PAINS: export verifies what it wrote). Hashing the bytes on
    their way out cannot notice that; only a read that reaches the device can. So every
    window of ``_READBACK_WINDOW`` bytes is, in a thread: written back and waited for
    (``sync_file_range``), dropped from the page cache, read again (``O_DIRECT`` where
    possible, :class:`bundle.direct_io.DeviceReader`) and compared with what
    the writer meant to write — literal bytes for the head, member headers, padding and end
    marker, and the SHA-256 signed in the manifest for every payload member. The writer
    meanwhile copies the next windows, so the disk writes, reads and the hashing overlap
    instead of running one after another. Where ``sync_file_range`` is unavailable the
    thread waits for the writer's final ``fsync`` and re-reads the whole file then.

    Frames compressed into the file in place were re-read by :class:`_PlacedCheck`;
    ``placed_checked()`` waits for those checks and gives the offsets found equal. It is
    called when the re-read first reaches such a frame, so the writer copies the small
    frames meanwhile instead of waiting for the last large frame's check.
    """

    def __init__(self, fd: int, label: str, layout: Sequence[_Expect], total: int,
                 *, threaded: bool = True,
                 placed_checked: Callable[[], set[int]] = set) -> None:
        # A duplicate of the writer's descriptor: the very file written, never a path that
        # could be swapped meanwhile (pread does not move the shared offset).
        self._fd = os.dup(fd)
        self._label = label
        self._layout = layout
        self._total = total
        self._cond = threading.Condition()
        self._written = 0  # bytes the writer has handed over
        self._kicked = 0  # writeback started up to here
        self._durable = 0  # on the device and dropped from the cache up to here
        self._synced = False  # the writer's fsync is done
        self._stop = False
        self.checked = 0  # bytes compared so far (read by the writer for progress)
        self._range_sync = _sync_file_range
        self.error: BaseException | None = None
        self._reader = DeviceReader(fd)
        self._placed_checked = placed_checked
        # A bundle of one window or less is re-read in the writer's thread after its fsync:
        # there is nothing to overlap, and a thread per small bundle costs more than the read.
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="bundle-read-back",
                                            daemon=True)
            self._thread.start()

    # writer side

    def advance(self, written: int, write_fd: int) -> None:
        """The writer has written ``written`` bytes; start writeback of each full window."""
        if self._thread is None:
            self._written = written
            return
        if _sync_file_range is not None and written - self._kicked >= _READBACK_WINDOW:
            _sync_file_range(write_fd, self._kicked, written - self._kicked, _SYNC_WRITE)
            self._kicked = written
        with self._cond:
            self._written = written
            self._cond.notify()

    def synced(self) -> None:
        """The writer has written everything and ``fsync``\\ ed the file."""
        with self._cond:
            self._synced = True
            self._cond.notify()
        if self._thread is None:
            self._run()

    def join(self, report: Callable[[int], None]) -> None:
        """Wait for the re-read, reporting progress; raise what it found."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.25)
            report(self.checked)
        os.close(self._fd)
        self._reader.close()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop the thread after a write failure (its result no longer matters)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        os.close(self._fd)
        self._reader.close()

    # reader side

    def _run(self) -> None:
        try:
            self._check_all()
        except BaseException as exc:  # handed to the writer's thread by join()
            self.error = exc

    def _make_durable(self, end: int) -> None:
        """Block until bytes up to ``end`` are on the device and out of the page cache."""
        while self._durable < end:
            with self._cond:
                while not self._stop and not self._synced and (
                    self._range_sync is None
                    or self._written - self._durable < min(_READBACK_WINDOW,
                                                           self._total - self._durable)
                ):
                    self._cond.wait()
                if self._stop:
                    raise OSError(errno.ECANCELED, "bundle write abandoned")
                upto = self._written
                synced = self._synced
            if not synced:
                assert self._range_sync is not None
                upto = min(upto, self._durable + _READBACK_WINDOW)
                if not self._range_sync(self._fd, self._durable, upto - self._durable,
                                        _SYNC_WAIT_ALL):
                    # Not supported for this file: wait for the writer's fsync instead.
                    self._range_sync = None
                    continue
            if hasattr(os, "posix_fadvise"):
                with contextlib.suppress(OSError):
                    # Written pages are not needed again (a direct read skips the cache;
                    # a buffered one must not find them there).
                    os.posix_fadvise(self._fd, self._durable, upto - self._durable,
                                     os.POSIX_FADV_DONTNEED)
                    if not self._reader.direct:
                        # Read the dropped window back from the device in the background
                        # while this thread hashes the previous megabytes.
                        os.posix_fadvise(self._fd, self._durable, upto - self._durable,
                                         os.POSIX_FADV_WILLNEED)
            self._durable = upto

    def _read(self, offset: int, count: int, stop: int) -> Iterator[memoryview]:
        """The bytes ``[offset, offset + count)`` as read from the device, once the writer
        has written them (views valid until the next step); reads stop short of ``stop``
        (where a range already checked begins)."""
        end = offset + count
        try:
            while offset < end:
                self._make_durable(min(self._total, offset + DIRECT_CHUNK))
                upto = min(end, self._durable)
                ready = min(self._durable, stop)
                for view in self._reader.read(offset, upto - offset, ready=ready):
                    offset += len(view)
                    self.checked = offset
                    yield view
        except EOFError:
            raise BundleFormatError(
                f"bundle {self._label}: reads back shorter than written ({offset} of "
                f"{self._total} bytes)") from None

    def _check_all(self) -> None:
        # Where each stretch of parts to read ends: at the next frame that may be checked
        # already (reads ahead stop there).
        stops: list[int] = []
        end = stop = self._total
        for part in reversed(self._layout):
            end -= len(part.data) if part.entry is None else part.size
            if part.placed:
                stop = end
            stops.append(stop)
        stops.reverse()
        offset = 0
        checked: set[int] | None = None  # placed frames read back already, once known
        for part, stop in zip(self._layout, stops, strict=True):
            if part.entry is None:
                at = 0
                for view in self._read(offset, len(part.data), stop):
                    if view != part.data[at:at + len(view)]:
                        raise BundleFormatError(
                            f"bundle {self._label}: the bytes at offset {offset} read back "
                            "differently from what was written (container structure)")
                    at += len(view)
                offset += len(part.data)
                continue
            if part.placed:
                if checked is None:
                    checked = self._placed_checked()
                if offset in checked:
                    # Read back from the device while later payloads were compressed.
                    offset += part.size
                    self._durable = max(self._durable, offset)
                    continue
            sha = hashlib.sha256()
            for chunk in self._read(offset, part.size, stop):
                sha.update(chunk)
            if sha.hexdigest() != part.sha256:
                raise DigestMismatchError(
                    f"bundle {self._label}: {part.entry.member} ({part.entry.name!r}) reads "
                    "back differently from what was written")
            offset += part.size
        if offset != self._total or os.fstat(self._fd).st_size != self._total:
            raise BundleFormatError(
                f"bundle {self._label}: is {os.fstat(self._fd).st_size} bytes on the device, "
                f"{self._total} written")



class _PlacedCheck:
    """Re-read frames compressed straight into the bundle file while later payloads are
    compressed (§12.3): for each, in a thread, its range is written back and waited for
    (``sync_file_range``), dropped from the page cache, read from the device (``O_DIRECT``
    where possible) and its SHA-256
    compared with the one the compressor computed (the one the manifest will sign). The
    final re-read (:class:`_ReadBack`) then skips those ranges. Where ``sync_file_range`` is
    unavailable nothing is checked here and the final re-read reads everything.
    """

    def __init__(self, fd: int, label: str) -> None:
        self._fd = os.dup(fd)
        self._reader = DeviceReader(fd)
        self._label = label
        self._queue: queue.Queue[tuple[int, FileEntry] | None] = queue.Queue()
        self.checked: set[int] = set()  # offsets of frames read back and found equal
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bundle-placed-check",
                                        daemon=True)
        self._thread.start()

    def add(self, offset: int, entry: FileEntry) -> None:
        """The frame of ``entry`` is written at ``offset``."""
        self._queue.put((offset, entry))

    def finish(self) -> set[int]:
        """Wait for every frame handed over; the offsets found equal (raise what differed)."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.checked

    def close(self) -> None:
        """Stop without waiting for the rest (the bundle is abandoned or rewritten)."""
        self._stop = True
        self._queue.put(None)
        self._thread.join()
        os.close(self._fd)
        self._reader.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._stop or self.error is not None or _sync_file_range is None:
                continue
            offset, entry = item
            try:
                self._check(offset, entry)
            except BaseException as exc:  # raised by finish() in the writer's thread
                self.error = exc

    def _check(self, offset: int, entry: FileEntry) -> None:
        size = entry.compressed_size
        assert _sync_file_range is not None
        if not _sync_file_range(self._fd, offset, size, _SYNC_WAIT_ALL):
            return  # not supported here: the final re-read reads it
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, offset, size, os.POSIX_FADV_DONTNEED)
        sha = hashlib.sha256()
        with contextlib.suppress(EOFError):  # shorter on the device: the digest differs
            for view in self._reader.read(offset, size):
                sha.update(view)
                if self._stop:
                    return
        if sha.hexdigest() != entry.compressed_sha256:
            raise DigestMismatchError(
                f"bundle {self._label}: {entry.member} ({entry.name!r}) reads back "
                "differently from what was written")
        self.checked.add(offset)


# -- the writer -------------------------------------------------------------------------


def write_bundle(
    out: Path,
    manifest: Manifest,
    files: Sequence[PayloadFile | tuple[str, Path]],
    signing_keys: Sequence[SigningKey],
    *,
    roots: Sequence[bytes] = (),
    split_size: int | None = None,
    write_parts: bool = True,
    level: int = DEFAULT_LEVEL,
    threads: int = -1,
    limits: Limits = DEFAULT_LIMITS,
    spool_dir: Path | None = None,
    progress: ProgressFn | None = None,
    verify: bool = True,
    frames: FrameCache | None = None,
    finish: Callable[[Manifest], Manifest] | None = None,
    durable: bool = True,
) -> WrittenBundle:
    """Write a signed bundle to ``out`` (or to its parts ``out.part000``, ``out.part001`` ...).

    Args:
        manifest: every field but ``files`` and ``parts`` (leave those empty; the writer fills
            them in). Its ``issuer`` must be the key id of one of ``signing_keys``.
        files: payload files in manifest order, as :class:`PayloadFile` or (name, path).
        signing_keys: keys that sign the envelope (the payload type follows ``manifest.kind``).
        roots: root envelopes to carry so agents with an older root can catch up (§5.2).
        split_size: cut the data section into parts of this many bytes (§8); the manifest
            then lists every part's size and SHA-256. ``DEFAULT_SPLIT_SIZE`` fits FAT32.
        write_parts: with ``split_size``, write the parts (default) or one file whose bytes
            equal the parts joined.
        level, threads: zstd level; worker threads for members over 4 MiB (-1: all cores).
            Neither the thread count nor the machine changes the output (§12.2).
        limits: the writer refuses to produce what a verifier with these limits would refuse.
        spool_dir: where compressed spools go (default: the output directory).
        progress: called as ``progress(phase, done, total)``.
        verify: re-read the written files from the device and check every digest; if they
            differ, the written files are removed and the error is raised.
        frames: take each payload's frame from this cache when it holds one for the
            payload's ``sha256`` (given by the caller) and ``level``, and keep the frames it
            compresses there (§12.4); the bytes written are the same as without it.
        finish: called with the complete manifest (``files`` filled in) just before it is
            signed; returns the manifest to sign (e.g. with the release's content hash
            computed from the digests taken while compressing). It may not change ``files``
            or ``parts``.
        durable: False: a bundle assembled in memory (single file, at most
            :data:`ASSEMBLE_BYTES`) is left under its temporary name, not fsynced nor
            re-read (``pending`` in the result); the caller makes many such bundles durable
            at once with :func:`make_durable`, which re-reads and renames them. Other
            bundles are written as with True (``pending`` None).

    Raises:
        LimitExceededError: the bundle would exceed a limit (files, sizes, envelope, secrets).
        ReleaseFormatError: a payload file is not a regular file or changed while loaded.
        ManifestError: the manifest breaks a rule (e.g. a bad or colliding payload name).
        BundleFormatError / DigestMismatchError: the re-read found different bytes.
        OSError: the output cannot be written (disk full, removed media...).
        ValueError: bad arguments (level, split size, issuer, non-empty files/parts).
    """
    if manifest.files or manifest.parts is not None:
        raise ValueError("leave manifest.files and manifest.parts empty; the writer fills them")
    if not signing_keys:
        raise ValueError("at least one signing key is needed")
    if manifest.issuer not in {k.key_id for k in signing_keys}:
        raise ValueError("manifest.issuer must be the key id of one of the signing keys")
    if split_size is not None:
        check_split_size(split_size)
    _check_level(level, limits)
    payloads = [f if isinstance(f, PayloadFile) else PayloadFile(f[0], Path(f[1])) for f in files]
    _check_inputs(manifest, payloads, roots, limits)
    out = Path(out)
    report = progress or (lambda phase, done, total: None)

    roots_json = _roots_json(roots, limits)
    # Made only when a payload is compressed (not when every frame comes from the cache).
    spool_root = Path(spool_dir or out.parent) / f".tiangong-spool-{secrets.token_hex(6)}"
    temps: list[Path] = []
    direct: _Direct | None = None
    try:
        if split_size is None and frames is None:
            # Large frames are compressed straight into the bundle's temporary file, at the
            # place the predicted head leaves them (§12.3).
            fd, tmp = _tmp_for(out)
            temps.append(tmp)
            direct = _Direct(fd, tmp, lambda entries: _head_size(
                manifest, entries, signing_keys, roots_json, finish),
                label=strip_part_suffix(out.name) if verify else "")
        entries, sources = _compress_all(payloads, spool_root, level, threads, limits, report,
                                         frames, direct)
        data_bytes = sum(member_span(e.compressed_size) for e in entries) + len(END_OF_ARCHIVE)
        result = _frame_and_write(
            out, manifest, entries, sources, signing_keys, roots_json, split_size, write_parts,
            data_bytes, limits, report, temps, verify, finish, direct, durable,
        )
    finally:
        if direct is not None:
            direct.close()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _remove_tree(spool_root)
    if verify and len(result.paths) > 1:
        # A single file was re-read from the device while it was written (_ReadBack).
        from bundle.inspect import verify_written

        try:
            verify_written(result, progress=progress)
        except BundleError:
            # Never leave a bundle behind that does not read back as written (§12.3).
            for path in result.paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
    return result


_encoded_roots: dict[tuple[bytes, ...], bytes] = {}  # the roots of the last bundles written
_MEMO_ENTRIES = 16  # the memo above holds at most this many (an export uses one or two)


def _roots_json(roots: Sequence[bytes], limits: Limits) -> bytes:
    """The ``roots.json`` member's data (§5.2), within ``max_roots_bytes``.

    Raises:
        LimitExceededError: it is larger.
    """
    key = tuple(roots)
    roots_json = _encoded_roots.get(key)
    if roots_json is None:
        roots_json = encode_roots(roots)
        if len(_encoded_roots) >= _MEMO_ENTRIES:
            _encoded_roots.clear()
        _encoded_roots[key] = roots_json
    if len(roots_json) > limits.max_roots_bytes:
        raise LimitExceededError(
            f"roots.json would be {format_bytes(len(roots_json))}, over the max_roots_bytes "
            f"limit of {format_bytes(limits.max_roots_bytes)}"
        )
    return roots_json


def _signed(manifest: Manifest, signing_keys: Sequence[SigningKey], limits: Limits) -> bytes:
    """The envelope of ``manifest`` signed by ``signing_keys``, within
    ``max_envelope_bytes``.

    Raises:
        LimitExceededError: it is larger.
    """
    envelope = sign_envelope(manifest.payload_type, manifest.to_bytes(), signing_keys)
    if len(envelope) > limits.max_envelope_bytes:
        raise LimitExceededError(
            f"the signed manifest of {len(manifest.files)} files is "
            f"{format_bytes(len(envelope))}, over the max_envelope_bytes limit of "
            f"{format_bytes(limits.max_envelope_bytes)}; pack small files into an archive or "
            "split the release"
        )
    return envelope


def _check_inputs(
    manifest: Manifest, payloads: Sequence[PayloadFile], roots: Sequence[bytes], limits: Limits
) -> None:
    _check_payloads(payloads, limits)
    _check_head_inputs(manifest, roots, limits)


def _check_payloads(payloads: Sequence[PayloadFile], limits: Limits) -> None:
    """The payloads' number and names (checked before compressing anything)."""
    if len(payloads) > limits.max_files:
        raise LimitExceededError(
            f"{len(payloads)} payload files is over the max_files limit of {limits.max_files}"
        )
    names = NameSet()
    for pf in payloads:
        check_logical_name(pf.name, "payload name")
        clash = names.add(pf.name)
        if clash is not None:
            # Checked before compressing anything, so a typo costs no time.
            raise ManifestError(f"payload name {pf.name[:80]!r} {clash}")


def _check_head_inputs(manifest: Manifest, roots: Sequence[bytes], limits: Limits) -> None:
    """The manifest's sealed secrets and the roots carried, against their limits."""
    if len(manifest.secrets) > limits.max_secrets:
        raise LimitExceededError(
            f"{len(manifest.secrets)} secrets is over the max_secrets limit of "
            f"{limits.max_secrets}"
        )
    for s in manifest.secrets:
        if len(s.sealed) > limits.max_sealed_bytes:
            raise LimitExceededError(
                f"sealed secret {s.name!r} is {len(s.sealed)} bytes, over the max_sealed_bytes "
                f"limit of {limits.max_sealed_bytes}"
            )
    if len(roots) > limits.max_roots:
        raise LimitExceededError(
            f"{len(roots)} root documents is over the max_roots limit of {limits.max_roots}"
        )


@dataclass
class _Direct:
    """The bundle's temporary file while payloads are compressed (single-file output).

    ``head_size(entries)`` is the length the head (§2.1) would have for these manifest
    entries; large frames are written at the offsets that prediction gives. The prediction
    is checked once the real head is built: if it differs (a large payload compressed to a
    size with fewer digits than predicted), the bundle is written to a new temporary file
    and the frames are copied there, as any spooled frame is.
    """

    fd: int
    path: Path
    head_size: Callable[[Sequence[FileEntry]], int]
    label: str = ""  # how messages name the bundle; empty: placed frames are not re-read
    predicted: int | None = None  # the head size large frames were placed for
    check: _PlacedCheck | None = None
    checking: set[int] = dataclasses.field(default_factory=set)  # offsets handed to check
    small: _SmallPlacer | None = None
    prewritten: set[int] = dataclasses.field(default_factory=set)  # member offsets in place

    def placed(self, offset: int, entry: FileEntry) -> None:
        """A frame was compressed into the file at ``offset``: re-read it meanwhile."""
        if self.label:
            if self.check is None:
                self.check = _PlacedCheck(self.fd, self.label)
            self.check.add(offset, entry)
            self.checking.add(offset)

    def place_small(self, members: list[tuple[FileEntry, _Frame, int]]) -> None:
        """Copy these spooled small members (entry, spool frame, member offset) into the
        file at their places, in a thread (:class:`_SmallPlacer`)."""
        if members:
            if self.small is None:
                self.small = _SmallPlacer(self.fd)
            self.small.add(members)
            self.prewritten.update(at for _, _, at in members)

    def small_done(self) -> None:
        """Wait for the small members handed over (raise what failed)."""
        if self.small is not None:
            small, self.small = self.small, None
            small.finish()

    def checked(self) -> set[int]:
        """Offsets of the placed frames that read back as written (raises if one did not)."""
        return set() if self.check is None else self.check.finish()

    def close(self) -> None:
        if self.small is not None:
            self.small.close()
            self.small = None
        if self.check is not None:
            self.check.close()
            self.check = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _SmallPlacer:
    """Writes small members — header, frame read from the shared spool, padding — into the
    bundle's temporary file at their final offsets, in a thread of its own, while the large
    payloads are compressed (§12.3): the writer then only skips over them. Consecutive
    members are gathered and written with one call per ``_PLACE_BYTES``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pool = ThreadPoolExecutor(1, "bundle-small-place")
        self._jobs: list[Future[None]] = []
        self._sources: dict[Path, int] = {}  # spool files, opened by the thread

    def add(self, members: list[tuple[FileEntry, _Frame, int]]) -> None:
        self._jobs.append(self._pool.submit(self._place, list(members)))

    def finish(self) -> None:
        """Wait for every member handed over; raise the first error."""
        try:
            for job in self._jobs:
                job.result()
        finally:
            self.close()

    def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        self._pool.shutdown()
        for src in self._sources.values():
            os.close(src)
        self._sources.clear()

    def _place(self, members: list[tuple[FileEntry, _Frame, int]]) -> None:
        i = 0
        while i < len(members):
            # A run of members next to each other both in the file and in the spool (as
            # small frames are): one read, one write.
            first, frame, at = members[i]
            j, end = i + 1, frame.offset + first.compressed_size
            span = member_span(first.compressed_size)
            while j < len(members) and span < _PLACE_BYTES:
                entry, nxt, place = members[j]
                if place != at + span or nxt.path != frame.path or nxt.offset != end:
                    break
                end += entry.compressed_size
                span += member_span(entry.compressed_size)
                j += 1
            src = self._sources.get(frame.path)
            if src is None:
                src = self._sources[frame.path] = os.open(frame.path,
                                                          os.O_RDONLY | os.O_CLOEXEC)
            data = memoryview(os.pread(src, end - frame.offset, frame.offset))
            if len(data) != end - frame.offset:
                raise OSError(errno.EIO, f"spool file {frame.path} ended early")
            buf = bytearray()
            got = 0
            for entry, _, _ in members[i:j]:
                buf += encode_header(entry.member, entry.compressed_size)
                buf += data[got:got + entry.compressed_size]
                buf += padding(entry.compressed_size)
                got += entry.compressed_size
            self._write(buf, at)
            i = j

    def _write(self, buf: bytearray, at: int) -> None:
        view = memoryview(buf)
        while view:
            n = os.pwrite(self._fd, view, at)
            at += n
            view = view[n:]


def _head_size(manifest: Manifest, entries: Sequence[FileEntry],
               signing_keys: Sequence[SigningKey], roots_json: bytes,
               finish: Callable[[Manifest], Manifest] | None) -> int:
    """Bytes of the head for ``manifest`` with ``entries``: the envelope is built with
    signatures of the right length (Ed25519: always 64 bytes), not signed."""
    m = dataclasses.replace(manifest, files=tuple(entries), parts=None)
    if finish is not None:
        m = finish(m)
    keys = sorted({k.key_id for k in signing_keys})
    envelope = Envelope(m.payload_type, m.to_bytes(),
                        tuple(Signature(k, bytes(64)) for k in keys)).to_bytes()
    return (member_span(len(MARKER)) + member_span(len(roots_json))
            + member_span(len(envelope)))


def _compress_all(
    payloads: Sequence[PayloadFile],
    spool_root: Path,
    level: int,
    threads: int,
    limits: Limits,
    report: ProgressFn,
    frames: FrameCache | None = None,
    direct: _Direct | None = None,
) -> tuple[list[FileEntry], list[_Frame]]:
    total = 0
    for pf in payloads:
        size = pf.size if pf.size is not None else os.stat(pf.path).st_size
        if size > limits.max_file_bytes:
            raise LimitExceededError(
                f"payload {pf.name!r} is {format_bytes(size)}, over the max_file_bytes limit "
                f"of {format_bytes(limits.max_file_bytes)}"
            )
        total += size
    if total > limits.max_total_bytes:
        raise LimitExceededError(
            f"the payload files total {format_bytes(total)}, over the max_total_bytes limit "
            f"of {format_bytes(limits.max_total_bytes)}"
        )
    done = 0
    lock = threading.Lock()

    def tick(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            report("compress", done, total)

    report("compress", 0, total)
    # Where each frame goes: None = the writer decides (shared spool, own spool or the
    # bundle file); a path = the frame cache's temporary file for it.
    dests: list[Path | None] = [None] * len(payloads)
    sources: list[_Frame | None] = [None] * len(payloads)
    entries: list[FileEntry | None] = [None] * len(payloads)
    sizes = [pf.size if pf.size is not None else os.stat(pf.path).st_size for pf in payloads]
    to_cache: list[int] = []  # compressed into the frame cache's temporary files
    if frames is not None:
        for i, pf in enumerate(payloads):
            if pf.sha256 is None or pf.size is None:
                continue  # only a known content can be looked up
            hit = frames.lookup(pf.sha256, pf.size, level)
            if hit is None:
                dests[i] = frames.new_temp(pf.sha256)
                to_cache.append(i)
                continue
            entries[i] = FileEntry(member=payload_member(i + 1), name=pf.name, size=hit.size,
                                   sha256=hit.sha256, compressed_size=hit.compressed_size,
                                   compressed_sha256=hit.compressed_sha256)
            sources[i] = _Frame(hit.path)
            tick(hit.size)
    try:
        _compress_missing(_Job(payloads, entries, dests, sources, sizes, level, tick,
                               spool_root), threads, direct)
        if frames is not None:
            for i in to_cache:
                entry, temp = entries[i], dests[i]
                assert entry is not None and temp is not None
                sources[i] = _Frame(frames.store(temp, level, entry.sha256, entry.size,
                                                 entry.compressed_sha256,
                                                 entry.compressed_size).path)
    finally:
        for i in to_cache:
            temp = dests[i]
            if temp is not None and temp.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
    return [e for e in entries if e is not None], [f for f in sources if f is not None]


@dataclass(frozen=True)
class _Job:
    """The payloads of one bundle and what is known of them so far (by index): the entry and
    source of each compressed one, and the frame cache's temporary file for those it keeps."""

    payloads: Sequence[PayloadFile]
    entries: list[FileEntry | None]
    dests: Sequence[Path | None]
    sources: list[_Frame | None]
    sizes: Sequence[int]
    level: int
    tick: Callable[[int], None]
    spool_root: Path


def _compress_missing(job: _Job, threads: int, direct: _Direct | None) -> None:
    """Compress every payload whose entry is still None; fill in its entry and source."""
    if any(e is None for e in job.entries):
        job.spool_root.mkdir(mode=0o700)
    workers = (os.cpu_count() or 1) if threads < 0 else max(1, threads)
    _compress_small_ones(job, workers)
    payloads, entries, dests, sources, sizes, level, tick, spool_root = (
        job.payloads, job.entries, job.dests, job.sources, job.sizes, job.level, job.tick,
        job.spool_root)
    # Large payloads: one at a time, each on every core, in manifest order; straight into
    # the bundle file when the head's size is known well enough to place them (§12.3).
    compressors = _Compressors(level, threads)
    at: int | None = None  # where the next member starts in the bundle file
    small = spool_root / _SMALL_SPOOL
    # Small members whose place is known, not yet handed to direct.place_small.
    known: list[tuple[FileEntry, _Frame, int]] = []

    def place(j: int, entry: FileEntry, offset: int) -> None:
        frame = sources[j]
        if direct is not None and frame is not None and frame.path == small:
            known.append((entry, frame, offset))
            sources[j] = _Frame(direct.path, offset + BLOCK)

    for i, size in enumerate(sizes):
        entry = entries[i]
        if entry is not None:
            if at is not None:
                place(i, entry, at)
                at += member_span(entry.compressed_size)
            continue
        dest = dests[i]
        if dest is None and direct is not None and _fits_one_header(size):
            if at is None:
                direct.predicted = at = direct.head_size(_predicted(payloads, entries, sizes))
                for j, before in enumerate(entries[:i]):
                    if before is not None:
                        place(j, before, at)
                        at += member_span(before.compressed_size)
            direct.place_small(known)  # copied while this payload is compressed
            known = []
            entry = _compress_one(i + 1, payloads[i], (direct.fd, at + BLOCK), compressors,
                                  tick)
            sources[i] = _Frame(direct.path, at + BLOCK)
            direct.placed(at + BLOCK, entry)
            at += member_span(entry.compressed_size)
        else:
            if dest is None:
                dest = spool_root / f"{i + 1:06d}.zst"
            entry = _compress_one(i + 1, payloads[i], dest, compressors, tick)
            sources[i] = _Frame(dest)
            if at is not None:
                at += member_span(entry.compressed_size)
        entries[i] = entry
    if direct is not None:
        direct.place_small(known)


def _fits_one_header(size: int) -> bool:
    """Whether every frame a verifier accepts for ``size`` content bytes has a plain ustar
    header (no pax record, §2.3), so its data starts one block after the member."""
    return size + size // 128 + 1024 < 8**11


def _predicted(payloads: Sequence[PayloadFile], entries: Sequence[FileEntry | None],
               sizes: Sequence[int]) -> list[FileEntry]:
    """The entries, with payloads not compressed yet assumed incompressible (their frame as
    long as their content: the usual case for large files, and only the number of digits
    matters) and placeholder digests of the right length."""
    zero = "0" * 64
    return [e if e is not None else FileEntry(payload_member(i + 1), pf.name, size, zero,
                                              size, zero)
            for i, (pf, e, size) in enumerate(zip(payloads, entries, sizes, strict=True))]


def _compress_small_ones(job: _Job, workers: int) -> None:
    """Small payloads: read whole and compressed in memory by up to ``MAX_SMALL_WORKERS``
    threads at once (zstd and hashlib release the GIL), one single-worker compressor per
    thread; twice as many threads as ``workers`` (cores), so that a thread waiting for its
    file's read leaves the core to another. Frames are taken in manifest order, so the
    bundle bytes do not depend on scheduling (§12.2), and appended to one shared spool file
    (or written to their frame cache file); at most ``_SMALL_AHEAD`` frames wait in memory."""
    payloads, entries, dests, sources, sizes = (job.payloads, job.entries, job.dests,
                                                job.sources, job.sizes)
    small = [i for i, size in enumerate(sizes) if size <= MT_THRESHOLD_BYTES
             and entries[i] is None]
    if not small:
        return
    local = threading.local()

    def one(i: int) -> tuple[int, str, bytes, str]:
        if not hasattr(local, "compressors"):
            local.compressors = _Compressors(job.level, 1)
        return _compress_small(payloads[i], local.compressors)

    shared = job.spool_root / _SMALL_SPOOL
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(shared, "xb", opener=_private))
        pool = None
        if workers > 1 and len(small) > 1:
            pool = stack.enter_context(
                ThreadPoolExecutor(max_workers=min(2 * workers, MAX_SMALL_WORKERS)))
        pending: deque[tuple[int, Future[tuple[int, str, bytes, str]]]] = deque()
        todo = iter(small)

        def submit() -> None:
            assert pool is not None
            for i in todo:
                pending.append((i, pool.submit(one, i)))
                if len(pending) >= _SMALL_AHEAD:
                    return

        def results() -> Iterator[tuple[int, tuple[int, str, bytes, str]]]:
            if pool is None:
                for i in small:
                    yield i, one(i)
                return
            submit()
            try:
                while pending:
                    i, fut = pending.popleft()
                    result = fut.result()
                    submit()
                    yield i, result
            finally:
                for _, fut in pending:
                    fut.cancel()

        offset = 0
        for i, (size, sha256, frame, frame_sha256) in results():
            entries[i] = _entry(i + 1, payloads[i], size, sha256, len(frame), frame_sha256)
            dest = dests[i]
            if dest is not None:
                with open(dest, "xb", opener=_private) as fh:
                    fh.write(frame)
                sources[i] = _Frame(dest)
            else:
                out.write(frame)
                sources[i] = _Frame(shared, offset)
                offset += len(frame)
            job.tick(size)
        out.flush()


def _frame_and_write(
    out: Path,
    manifest: Manifest,
    entries: Sequence[FileEntry],
    sources: Sequence[_Frame],
    signing_keys: Sequence[SigningKey],
    roots_json: bytes,
    split_size: int | None,
    write_parts: bool,
    data_bytes: int,
    limits: Limits,
    report: ProgressFn,
    temps: list[Path],
    verify: bool,
    finish: Callable[[Manifest], Manifest] | None = None,
    direct: _Direct | None = None,
    durable: bool = True,
) -> WrittenBundle:
    sizes = plan_parts(data_bytes, split_size) if split_size is not None else []
    parts_written: list[Path] = []
    digests: tuple[PartDigest, ...] = ()
    written = 0
    write_total = data_bytes  # the head's size is known only once the manifest is signed

    def tick(n: int) -> None:
        nonlocal written
        written += n
        report("write", written, write_total)

    if split_size is not None:
        opener: Callable[[int], BinaryIO] | None = None
        if write_parts:

            def opener(index: int) -> BinaryIO:
                fd, tmp = _tmp_for(part_path(out, index))
                temps.append(tmp)
                parts_written.append(tmp)
                return open(fd, "wb")

        digests = _cut_parts(_data_section(entries, sources), sizes, opener,
                             tick if write_parts else (lambda n: None))
    final = dataclasses.replace(
        manifest,
        files=tuple(entries),
        parts=None if split_size is None else PartsInfo(split_size, len(sizes), digests),
    )
    if finish is not None:
        finished = finish(final)
        if (finished.files, finished.parts) != (final.files, final.parts):
            raise ValueError("finish may not change the manifest's files or parts")
        final = finished
    envelope = _signed(final, signing_keys, limits)
    head = (
        encode_member(MARKER_NAME, MARKER)
        + encode_member(ROOTS_NAME, roots_json)
        + encode_member(ENVELOPE_NAME, envelope)
    )
    envelope_sha256 = hashlib.sha256(envelope).hexdigest()
    total = len(head) + data_bytes
    if split_size is not None and write_parts:
        fd, tmp0 = _tmp_for(part_path(out, 0))
        temps.append(tmp0)
        try:
            _write_all(fd, head)
            os.fsync(fd)
            _drop_cache(fd)
        finally:
            os.close(fd)
        finals = [part_path(out, i) for i in range(1, len(sizes) + 1)]
        for tmp, dest in zip(parts_written, finals, strict=True):
            os.replace(tmp, dest)
        os.replace(tmp0, part_path(out, 0))  # last: watchers wait for the first part
        temps.clear()
        paths = (part_path(out, 0), *finals)
        sync_placed(paths)
        _remove_stale_parts(out, len(sizes))
        report("write", total, total)
    elif total <= ASSEMBLE_BYTES and (
            direct is None or not any(f.path == direct.path for f in sources)):
        if direct is not None:  # nothing was compressed into it: it is the file to write
            fd, tmp = direct.fd, direct.path
            direct.fd = -1
        else:
            fd, tmp = _tmp_for(out)
            temps.append(tmp)
        label = strip_part_suffix(out.name)
        file_sha256 = _write_assembled(
            fd, label, lambda: _assemble(label, head, entries, sources), entries, report,
            durable=durable, verify=verify)
        temps.remove(tmp)
        if not durable:
            return WrittenBundle((out,), final, envelope, envelope_sha256, total,
                                 file_sha256=file_sha256, pending=tmp)
        try:
            os.replace(tmp, out)
        except BaseException:
            temps.append(tmp)
            raise
        sync_placed((out,))
        return WrittenBundle((out,), final, envelope, envelope_sha256, total,
                             file_sha256=file_sha256)
    else:
        written, write_total = 0, total
        report("write", 0, total)
        placed = [] if direct is None else [f for f in sources if f.path == direct.path]
        placed_checked: Callable[[], set[int]] = set
        prewritten: set[int] = set()
        checking: set[int] = set()
        if direct is not None:
            direct.small_done()  # the small members copied into it, wherever they go next
        if direct is not None and (not placed or direct.predicted == len(head)):
            # The frames compressed into this file are where the head leaves them; the
            # re-read waits for their checks when it reaches them.
            placed_checked = direct.checked
            prewritten, checking = direct.prewritten, direct.checking
            fd, tmp = direct.fd, direct.path
            direct.fd = -1
            os.lseek(fd, 0, os.SEEK_SET)
        else:
            if direct is not None:
                direct.close()  # its frames are copied into a new file, re-read there
            fd, tmp = _tmp_for(out)
            temps.append(tmp)
        readback: _ReadBack | None = None
        if verify:
            layout = [_Expect(data=head)]
            for entry, frame in zip(entries, sources, strict=True):
                layout.append(_Expect(data=encode_header(entry.member, entry.compressed_size)))
                layout.append(_Expect(size=entry.compressed_size,
                                      sha256=entry.compressed_sha256, entry=entry,
                                      placed=frame.path == tmp and frame.offset in checking))
                layout.append(_Expect(data=padding(entry.compressed_size)))
            layout.append(_Expect(data=END_OF_ARCHIVE))
            readback = _ReadBack(fd, strip_part_suffix(out.name), layout, total,
                                 threaded=total > _READBACK_WINDOW,
                                 placed_checked=placed_checked)

        def counted(n: int) -> None:
            tick(n)
            if readback is not None:
                readback.advance(written, fd)

        def put(data: bytes) -> None:
            _write_all(fd, data)
            counted(len(data))

        opened: dict[Path, int] = {}
        try:
            put(head)
            skip = 0  # bytes of members written in place already, not yet skipped over
            for entry, frame in zip(entries, sources, strict=True):
                if written + skip in prewritten and frame.path == tmp:
                    skip += member_span(entry.compressed_size)
                    continue
                if skip:
                    os.lseek(fd, skip, os.SEEK_CUR)
                    counted(skip)
                    skip = 0
                put(encode_header(entry.member, entry.compressed_size))
                if frame.path == tmp and frame.offset == written:
                    os.lseek(fd, entry.compressed_size, os.SEEK_CUR)  # already in place
                    counted(entry.compressed_size)
                else:
                    src = opened.get(frame.path)
                    if src is None:
                        src = opened[frame.path] = os.open(frame.path,
                                                           os.O_RDONLY | os.O_CLOEXEC)
                    _copy_fd(src, fd, entry.compressed_size, counted, frame.offset)
                put(padding(entry.compressed_size))
            if skip:
                os.lseek(fd, skip, os.SEEK_CUR)
                counted(skip)
            put(END_OF_ARCHIVE)
            os.fsync(fd)
            if readback is None:
                _drop_cache(fd)
        except BaseException:
            if readback is not None:
                readback.abandon()
            raise
        finally:
            for src in opened.values():
                os.close(src)
            os.close(fd)
        if readback is not None:
            readback.synced()
            report("verify", 0, total)
            readback.join(lambda n: report("verify", n, total))
            report("verify", total, total)
        os.replace(tmp, out)
        temps.remove(tmp)  # a temporary file left by a wrong prediction is still removed
        paths = (out,)
        sync_placed(paths)
    return WrittenBundle(paths, final, envelope, envelope_sha256, total)


def _assemble(label: str, head: bytes, entries: Sequence[FileEntry],
              sources: Sequence[_Frame]) -> bytes:
    """The whole bundle file in memory: head, each member (its frame read from its spool or
    cache file and checked against the SHA-256 the manifest signs), end marker.

    Raises:
        DigestMismatchError: a frame file no longer holds the frame compressed (a damaged
            frame cache or spool).
        OSError: a frame file cannot be read or ended early.
    """
    out = bytearray(head)
    opened: dict[Path, int] = {}
    try:
        for entry, frame in zip(entries, sources, strict=True):
            out += encode_header(entry.member, entry.compressed_size)
            src = opened.get(frame.path)
            if src is None:
                src = opened[frame.path] = os.open(frame.path, os.O_RDONLY | os.O_CLOEXEC)
            start = len(out)
            out += bytes(entry.compressed_size)
            view = memoryview(out)[start:]
            got = 0
            while got < entry.compressed_size:  # straight into the bundle's buffer
                n = os.preadv(src, [view[got:]], frame.offset + got)
                if n <= 0:
                    raise OSError(errno.EIO, f"frame file {frame.path} ended early")
                got += n
            digest = hashlib.sha256(view).hexdigest()
            view.release()
            if digest != entry.compressed_sha256:
                raise DigestMismatchError(
                    f"bundle {label}: the frame of {entry.member} ({entry.name!r}) in "
                    f"{frame.path} is not the one compressed (a damaged frame cache or spool)")
            out += padding(entry.compressed_size)
    finally:
        for fd in opened.values():
            os.close(fd)
    out += END_OF_ARCHIVE
    return bytes(out)


def _write_assembled(fd: int, label: str, assemble: Callable[[], bytes],
                     entries: Sequence[FileEntry], report: ProgressFn, *, durable: bool,
                     verify: bool) -> str:
    """Write the bundle ``assemble`` builds in memory (at most :data:`ASSEMBLE_BYTES`) to
    ``fd`` with one call and close ``fd``; with ``durable``, fsync it and, with ``verify``,
    re-read it from the device (:func:`_check_on_device`). The bytes are let go before the
    re-read. Returns the file's SHA-256."""
    try:
        data = assemble()
        total = len(data)
        report("write", 0, total)
        _write_all(fd, data)
        report("write", total, total)
        file_sha256 = hashlib.sha256(data).hexdigest()
        del data
        if durable:
            os.fsync(fd)
            if verify:
                report("verify", 0, total)
                _check_on_device(fd, label, total, file_sha256, entries)
                report("verify", total, total)
    finally:
        os.close(fd)
    return file_sha256


def _check_on_device(fd: int, label: str, size: int, sha256: str,
                     entries: Sequence[FileEntry]) -> None:
    """Re-read a written and fsynced bundle file of at most :data:`ASSEMBLE_BYTES` from the
    device (its pages dropped from the cache first) and compare it with the SHA-256 of what
    was written (§12.3); a difference is named by :func:`_locate`.

    Raises:
        BundleFormatError, DigestMismatchError: it reads back with another length or other
            bytes.
    """
    _drop_cache(fd)
    chunks = []
    done = 0
    while done < size:
        data = os.pread(fd, min(BUFFER_BYTES, size - done), done)
        if not data:
            break
        chunks.append(data)
        done += len(data)
    if done != size or os.fstat(fd).st_size != size:
        raise BundleFormatError(
            f"bundle {label}: is {os.fstat(fd).st_size} bytes on the device, {size} written")
    got = b"".join(chunks)
    if hashlib.sha256(got).hexdigest() != sha256:
        raise _locate(label, got, entries)


def _locate(label: str, got: bytes, entries: Sequence[FileEntry]) -> BundleError:
    """The error naming where ``got`` (a bundle read back) differs from what was written:
    a payload member whose SHA-256 differs, else the container structure (head, member
    headers, padding, end marker)."""
    structure = BundleFormatError(
        f"bundle {label}: the bytes read back differently from what was written (container "
        "structure)")
    at = len(got) - len(END_OF_ARCHIVE) - sum(member_span(e.compressed_size) for e in entries)
    if at < 0:
        return structure
    for entry in entries:
        size = entry.compressed_size
        header = encode_header(entry.member, size)
        if got[at:at + len(header)] != header:
            return structure
        frame = got[at + len(header):at + len(header) + size]
        if hashlib.sha256(frame).hexdigest() != entry.compressed_sha256:
            return DigestMismatchError(
                f"bundle {label}: {entry.member} ({entry.name!r}) reads back differently "
                "from what was written")
        at += member_span(size)
    return structure


_sync_pools: dict[int, ThreadPoolExecutor] = {}  # threads -> make_durable's pool
_sync_pools_lock = threading.Lock()


def _sync_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` threads for :func:`make_durable`, made at its first
    use and kept (a live server makes a batch durable every few milliseconds in a burst:
    starting eight threads each time cost more than the work; concurrent calls share it,
    each waiting for its own files only)."""
    with _sync_pools_lock:
        pool = _sync_pools.get(threads)
        if pool is None:
            pool = _sync_pools[threads] = ThreadPoolExecutor(threads, "bundle-sync")
        return pool


def _forget_sync_pools() -> None:
    """In a forked child: the parent's threads are not there (a new pool is made)."""
    global _sync_pools_lock
    _sync_pools.clear()
    _sync_pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sync_pools)


def make_durable(
    bundles: Sequence[WrittenBundle],
    *,
    verify: bool = True,
    synced: Callable[[], None] | None = None,
    threads: int = SYNC_THREADS,
    new_dirs: Collection[Path] = (),
) -> list[BaseException | None]:
    """Make the bundles :func:`write_bundle` left ``pending`` (``durable=False``) durable
    under their final names, all in one pass: every temporary file ``fsync``-ed (in
    ``threads`` threads at once) and, with ``verify``, re-read from the device and compared
    with its SHA-256 (§12.3); then ``synced()`` is called; then each is renamed to its final
    name and every directory holding one is ``fsync``-ed once; where that directory is one
    of ``new_dirs`` (made for these bundles), its parent is ``fsync``-ed once too, so the
    directory's own entry survives a power cut. From :data:`SYNCFS_FROM` files (with
    ``verify``), and again from as many directories, one ``syncfs`` of their file system
    stands for those ``fsync`` calls (durable all the same, for less CPU); where it fails
    or is unavailable, each is ``fsync``-ed as above. Bundles already in place
    (``pending`` None) are left alone.

    Returns, per bundle, None or the error that kept it from its final name (its temporary
    file is then removed; nothing of it stays).
    """
    errors: list[BaseException | None] = [None] * len(bundles)
    todo = [i for i, b in enumerate(bundles) if b.pending is not None]
    if not todo:
        return errors
    # From SYNCFS_FROM files, one syncfs of their file system makes them all durable, for
    # less CPU than an fsync each; each is still re-read from the device below. Where it
    # fails or is unavailable, each file is fsynced (which names the one that fails).
    whole = verify and len(todo) >= SYNCFS_FROM and syncfs_each(
        [p for i in todo if (p := bundles[i].pending) is not None])

    def sync_one(b: WrittenBundle) -> None:
        assert b.pending is not None
        fd = os.open(b.pending, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if not whole:
                os.fsync(fd)
            if verify:
                assert b.file_sha256 is not None
                _check_on_device(fd, strip_part_suffix(b.paths[0].name), b.size,
                                 b.file_sha256, b.manifest.files)
        finally:
            os.close(fd)

    def failed(i: int, exc: BaseException) -> None:
        errors[i] = name_file(exc, bundles[i].paths[0])
        pending = bundles[i].pending
        assert pending is not None
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()

    if len(todo) == 1 or threads <= 1:
        results: list[BaseException | None] = []
        for i in todo:
            try:
                sync_one(bundles[i])
                results.append(None)
            except (OSError, BundleError) as exc:
                results.append(exc)
    else:
        pool = _sync_pool(threads)
        futures = [pool.submit(sync_one, bundles[i]) for i in todo]
        results = [f.exception() for f in futures]
    for i, found in zip(todo, results, strict=True):
        if found is not None:
            if not isinstance(found, (OSError, BundleError)):
                raise found
            failed(i, found)
    if synced is not None:
        synced()
    dirs: dict[Path, list[int]] = {}
    for i in todo:
        if errors[i] is None:
            b = bundles[i]
            assert b.pending is not None
            try:
                os.replace(b.pending, b.paths[0])
            except OSError as exc:
                failed(i, exc)
                continue
            dirs.setdefault(b.paths[0].parent, []).append(i)
    if len(dirs) >= SYNCFS_FROM and syncfs_each(
            [*dirs, *{directory.parent for directory in dirs if directory in new_dirs}]):
        return errors  # every renamed file's entry, and every new directory's, durable
    parents: dict[Path, list[int]] = {}
    for directory, members in sorted(dirs.items()):
        try:
            sync_placed([bundles[i].paths[0] for i in members])
        except OSError as exc:
            for i in members:
                errors[i] = exc
            continue
        if directory in new_dirs:
            parents.setdefault(directory.parent, []).extend(members)
    for parent, members in sorted(parents.items()):
        try:
            sync_placed([bundles[i].paths[0] for i in members], parent)
        except OSError as exc:
            for i in members:
                errors[i] = exc
    return errors


def name_file(exc: BaseException, path: Path) -> BaseException:
    """``exc``, an OSError of writing ``path`` that names no file (a write or ``fsync`` of
    an open file: "No space left on device"), made to name ``path``; returned. One whose
    message names the file already (:func:`sync_placed`) is left as it is."""
    if isinstance(exc, OSError) and exc.filename is None and path.name not in str(exc):
        exc.filename = str(path)
    return exc


def sync_placed(paths: Sequence[Path], directory: Path | None = None) -> None:
    """``fsync`` the directory that ``paths`` (bundle files just renamed to their final
    names, all in one directory) are in, or ``directory`` (the parent of theirs, made for
    them).

    Raises:
        OSError: the directory cannot be synced. Each of ``paths`` has then been removed:
            it was whole and verified, but a power cut could still lose it or leave the
            directory as it was, so nothing claims it is there. The message names the
            files, the directory and the reason; the bundle can be written again.
    """
    which = "its directory"
    if directory is None:
        directory = paths[0].parent
    else:
        which = "the directory holding its new directory,"
    try:
        fsync_dir(directory)
    except OSError as exc:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()
        names = ", ".join(printable(p.name) for p in paths)
        raise OSError(exc.errno, f"{names} written and verified, but {which} "
                      f"{printable(os.path.abspath(directory))} cannot be synced "
                      f"({exc.strerror or exc}): removed, as it might not survive a power "
                      "cut; write it again once the disk is sound") from exc


def _remove_stale_parts(out: Path, count: int) -> None:
    """Remove ``out.partNNN`` files left by an earlier, longer bundle of the same name."""
    index = count + 1
    while True:
        stale = part_path(out, index)
        try:
            if not stat.S_ISREG(os.lstat(stale).st_mode):
                return
            stale.unlink()
        except FileNotFoundError:
            return
        index += 1


def _remove_tree(root: Path) -> None:
    if os.path.lexists(root):
        shutil.rmtree(root, ignore_errors=True)
