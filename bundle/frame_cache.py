"""Compressed payload frames kept once per content, so an export does not compress again
(docs/bundle-format.md §12.4).

A release's payloads are the same for every agent; only the head (roots, the signed
envelope: target, sequence, policy, sealed secrets, approvals) differs from one export to
the next. :class:`FrameCache` keeps the one zstd frame (§7) of each payload content in a
directory of the release store, named by what it holds::

    <content sha256>-l<level>-zstd<libzstd version>-<frame sha256>.zst

The writer (:func:`bundle.writer.write_bundle` with ``frames=``) takes the frame from here
when it exists and makes it here when it does not; either way the bundle's bytes are the
ones a from-scratch export writes, because the frame is deterministic for one content, level
and libzstd version (§12.2), which are all in the name.

Making an entry is crash-safe: the frame is compressed into a hidden temporary file in the
cache directory (``.<content sha256>.<random>.tmp``), ``fsync``\\ ed, renamed to its final
name and the directory ``fsync``\\ ed; a temporary file left by a killed writer is removed by
the next :meth:`FrameCache.clean`. An entry is verified before this process first uses it:
its size and SHA-256 must be those its name records (a damaged entry is removed and made
again). What a bundle then carries is checked once more by the writer's read-back from the
device (§12.3) against the signed digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from signing.fileio import fsync_dir

__all__ = ["CachedFrame", "FrameCache"]

_READ_BYTES = 1024 * 1024
_TEMP_SUFFIX = ".tmp"
_STALE_TEMP_SECONDS = 6 * 3600  # a temporary entry this old belongs to a writer that is gone

#: One process's verified entries: path -> (inode, size, mtime ns) when it was verified.
_verified: dict[str, tuple[int, int, int]] = {}
_verified_lock = threading.Lock()


@dataclass(frozen=True)
class CachedFrame:
    """One cache entry: the frame file and the digests a manifest ``files`` entry needs."""

    path: Path
    size: int  # content bytes
    sha256: str  # content
    compressed_size: int
    compressed_sha256: str


def _zstd_version() -> str:
    return ".".join(str(v) for v in zstandard.ZSTD_VERSION)


class FrameCache:
    """A directory of compressed payload frames, keyed by content SHA-256 and level.

    ``crash`` is called with ``"frame-cached"`` once an entry's temporary file is written
    and ``fsync``\\ ed, before its rename (the hub maps it to a crash point).
    """

    def __init__(self, directory: Path, *, crash: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self._crash = crash or (lambda point: None)
        self._index: dict[str, list[str]] | None = None

    def _listing(self) -> dict[str, list[str]]:
        """The entries by content SHA-256, read with one ``scandir`` per cache object (an
        export makes one per run): a release of 2,000 files does not list the directory
        2,000 times. An entry another process makes meanwhile is not seen; this one then
        makes the same bytes under the same name."""
        if self._index is None:
            index: dict[str, list[str]] = {}
            try:
                with os.scandir(self.directory) as it:
                    for entry in it:
                        if not entry.name.startswith(".") and entry.name.endswith(".zst"):
                            index.setdefault(entry.name.split("-", 1)[0], []).append(
                                entry.name)
            except FileNotFoundError:
                pass
            self._index = index
        return self._index

    def _prefix(self, sha256: str, level: int) -> str:
        return f"{sha256}-l{level}-zstd{_zstd_version()}-"

    def lookup(self, sha256: str, size: int, level: int) -> CachedFrame | None:
        """The verified entry for content ``sha256`` of ``size`` bytes at ``level``, or None
        (none yet, or it was damaged and has been removed)."""
        prefix = self._prefix(sha256, level)
        names = self._listing().get(sha256, [])
        for name in sorted(n for n in names if n.startswith(prefix)):
            frame_sha = name[len(prefix):-len(".zst")]
            path = self.directory / name
            compressed = self._verified_size(path, frame_sha)
            if compressed is not None:
                return CachedFrame(path, size, sha256, compressed, frame_sha)
        return None

    def _verified_size(self, path: Path, frame_sha: str) -> int | None:
        """The entry's size once its bytes hash to ``frame_sha`` (checked once per process
        while the file is unchanged); a damaged entry is removed and None returned."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        key = str(path)
        with _verified_lock:
            if _verified.get(key) == stamp:
                return st.st_size
        digest = hashlib.sha256()
        try:
            with open(path, "rb", buffering=0) as fh:
                while chunk := fh.read(_READ_BYTES):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        if digest.hexdigest() != frame_sha:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # damaged: the next writer makes it again
            with contextlib.suppress(KeyError, ValueError):
                self._listing()[path.name.split("-", 1)[0]].remove(path.name)
            return None
        with _verified_lock:
            _verified[key] = stamp
        return st.st_size

    def new_temp(self, sha256: str) -> Path:
        """A fresh name for the temporary frame of content ``sha256`` (the caller creates
        it with ``O_EXCL``), naming this process so :meth:`clean` can tell when its writer
        is gone."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f".{sha256}.{os.getpid()}.{os.urandom(6).hex()}{_TEMP_SUFFIX}"

    def store(self, temp: Path, level: int, sha256: str, size: int, compressed_sha256: str,
              compressed_size: int) -> CachedFrame:
        """Make the written and flushed temporary frame ``temp`` an entry: ``fsync``, rename
        to its final name, ``fsync`` the directory."""
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._crash("frame-cached")
        final = self.directory / f"{self._prefix(sha256, level)}{compressed_sha256}.zst"
        os.replace(temp, final)
        fsync_dir(self.directory)
        names = self._listing().setdefault(sha256, [])
        if final.name not in names:
            names.append(final.name)
        st = os.stat(final)
        with _verified_lock:
            _verified[str(final)] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return CachedFrame(final, size, sha256, compressed_size, compressed_sha256)

    def clean(self, now: float | None = None) -> list[str]:
        """Remove temporary entries whose writer is gone: its process (named in the file
        name) no longer runs, or the file is older than a few hours. Returns their names."""
        now = time.time() if now is None else now
        removed = []
        try:
            with os.scandir(self.directory) as it:
                temps = [e for e in it if e.name.startswith(".")
                         and e.name.endswith(_TEMP_SUFFIX)]
        except FileNotFoundError:
            return []
        for entry in temps:
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime >= _STALE_TEMP_SECONDS
                if not old and _writer_alive(entry.name):
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(entry.name)
        return removed


def _writer_alive(name: str) -> bool:
    """Whether the process named in temporary file ``name`` (``.<sha>.<pid>.<rnd>.tmp``)
    may still be writing it."""
    parts = name.split(".")
    if len(parts) < 5 or not parts[2].isdecimal():
        return True  # not one of ours: leave it to the age rule
    pid = int(parts[2])
    return pid == os.getpid() or os.path.exists(f"/proc/{pid}")
