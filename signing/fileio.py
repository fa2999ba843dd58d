"""Small, careful file I/O for key files and trust documents (STYLE.md practice 7).

:func:`write_file_atomic` writes so that a crash leaves the old file or the new one, never a
mix, and refuses to replace an existing file unless told to; :func:`read_bounded` reads a
regular file up to a size cap, so a FIFO or a huge file is refused rather than read forever;
:func:`open_regular` opens a file for reading only if it is a regular file.

Nothing here parses what it reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from signing.errors import KeyFileError

__all__ = ["NAME_MAX_BYTES", "SYNCFS_COVERS", "SYNCFS_FROM", "fit_name", "fsync_dir",
           "open_regular", "read_bounded", "syncfs", "syncfs_each", "write_file_atomic"]

#: The longest file name most file systems take, in bytes (NAME_MAX).
NAME_MAX_BYTES = 255  # bytes
#: bytes of a target's name that fit in write_file_atomic's temporary name (".", ".", 8
#: random characters, ".tmp")
_TMP_ROOM = NAME_MAX_BYTES - 14


def write_file_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    A temp file in the same directory (created 0600) is written and fsynced, then linked to
    ``path`` (which fails if ``path`` exists, closing the check-then-write race) or, with
    ``overwrite``, renamed over it; the directory is fsynced last. ``mode`` other than 0600 is
    applied with ``fchmod`` (best effort: some removable-media file systems have no modes).

    Raises:
        KeyFileError: ``path`` exists and ``overwrite`` is false, or is not a regular file
            nor a symbolic link (a device, a FIFO), or an OS error.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not overwrite and os.path.lexists(target):
        raise KeyFileError(f"{target} already exists; refusing to overwrite it (use --force)")
    if overwrite:
        # Even with --force, a device (-o /dev/null, as root), FIFO, socket or directory is
        # never replaced by the file: only a regular file or a symbolic link is.
        with contextlib.suppress(FileNotFoundError):
            kind = os.lstat(target).st_mode
            if not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
                raise KeyFileError(f"cannot write {target}: it is not a regular file (a "
                                   "device, FIFO, socket or directory); refusing to replace it")
    try:
        # ".<name>.<8 random>.tmp": a name near NAME_MAX is cut for it (fit_name), or the
        # temporary file could not be made for a name the directory takes
        fd, tmp_name = tempfile.mkstemp(prefix=f".{fit_name(target.name, limit=_TMP_ROOM)}.",
                                        suffix=".tmp", dir=directory)
    except OSError as exc:
        raise KeyFileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        try:
            if mode != 0o600:
                # Best effort: a file system without permission bits keeps what it has.
                with contextlib.suppress(OSError):
                    os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_replace(tmp, target)
        fsync_dir(directory)
    except FileExistsError:
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite it (use --force)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _link_no_replace(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        # File systems without hard links (FAT on a USB stick): fall back to check + rename.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
        os.replace(tmp, target)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable.

    File systems that cannot fsync a directory (EINVAL/ENOTSUP, e.g. vfat on some kernels)
    are tolerated; any other failure raises ``OSError``.
    """
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(dfd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


#: the file systems (``statfs`` magic numbers) whose ``syncfs`` makes durable what an
#: ``fsync`` of each file and directory would: ext2/3/4, XFS, Btrfs, F2FS (each commits and
#: flushes the device's cache), tmpfs (nothing to keep), overlayfs (syncs its upper one).
#: Not FUSE (Linux sends its server no sync — virtiofs aside — where an ``fsync`` has it
#: fsync its own files: sshfs, gocryptfs, mergerfs, ntfs-3g), FAT or exFAT (no flush of the
#: device's cache, which ``fsync`` issues), NFS or SMB: there, and on any other, each is
#: fsynced.
#: from this many files or directories written on one file system, one ``syncfs``
#: (:func:`syncfs_each`) instead of an ``fsync`` each: 0.05 against 0.13 ms of CPU per bundle
#: in a live burst's batch of 100, each in its own directory; 2 ms of CPU and 3-9 ms for 400
#: spool directories against 400 fsyncs (docs/benchmarks.md, "Session 11: export CPU",
#: "Session 11: live burst"). Used by bundle.writer.make_durable and the live server.
SYNCFS_FROM = 8
SYNCFS_COVERS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994,
                           0x794C7630})


def _fs_magic(fd: int) -> int | None:
    """The ``statfs`` magic number (``f_type``) of the file system holding ``fd``; None
    where it cannot be asked."""
    buf = ctypes.create_string_buffer(512)  # struct statfs: 120 bytes on 64-bit Linux
    try:
        if _libc().fstatfs(fd, buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF  # f_type, the first field


def syncfs(fd: int) -> bool:
    """Flush the whole file system holding the open descriptor ``fd`` (Linux ``syncfs``):
    one call instead of an ``fsync`` per file or directory written. False where it is
    unavailable or failed, or where it would not stand for those fsyncs (a file system not
    in :data:`SYNCFS_COVERS`: not called): the caller then fsyncs what it wrote one by one
    (which raises the error, if there is one)."""
    if _fs_magic(fd) not in SYNCFS_COVERS:
        return False
    try:
        return bool(_libc().syncfs(fd) == 0)
    except (OSError, AttributeError):
        return False


def syncfs_each(paths: Iterable[str | os.PathLike[str]]) -> bool:
    """:func:`syncfs` of every file system holding one of ``paths`` (files or directories),
    once each. False where one cannot be looked at or opened, or a ``syncfs`` failed, is
    unavailable or would not stand for fsyncs there (:data:`SYNCFS_COVERS`): the caller
    then fsyncs each of them (which raises the error, naming it)."""
    one_per_device: dict[int, str | os.PathLike[str]] = {}
    try:
        for path in paths:
            one_per_device.setdefault(os.stat(path).st_dev, path)
        for path in one_per_device.values():
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if not syncfs(fd):
                    return False
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def fit_name(name: str, suffix: str = "", limit: int = NAME_MAX_BYTES) -> str:
    """``name + suffix`` when it is at most ``limit`` bytes on disk; else ``name`` cut short
    and marked ``~`` + 12 hex digits of its SHA-256 (so two long names stay apart) before
    ``suffix``. Pure."""
    if len(os.fsencode(name + suffix)) <= limit:
        return name + suffix
    mark = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    room = limit - len(os.fsencode(mark + suffix))
    cut = name
    while len(os.fsencode(cut)) > room:
        cut = cut[:-1]
    return cut + mark + suffix


def open_regular(
    path: str | os.PathLike[str], refused: Callable[[], Exception]
) -> tuple[int, os.stat_result]:
    """``path`` opened read-only if it is a regular file: its descriptor and its ``fstat``.

    ``O_NOFOLLOW``: a symbolic link is not followed. ``O_NONBLOCK``: a FIFO opens at once and
    is refused, instead of blocking until something writes to it (reads of a regular file
    ignore the flag). A device or socket is refused as well, by what the opened file is.

    Raises:
        OSError: it cannot be opened; ``errno.ELOOP`` when it is a symbolic link.
        Exception: what ``refused()`` returns, when it is not a regular file (nothing stays
            open).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise refused()
    return fd, st


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """Read a regular file of at most ``max_bytes`` bytes.

    Raises:
        KeyFileError: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if total > max_bytes:
        raise KeyFileError(f"{path} is larger than {max_bytes} bytes; not a key file")
    return b"".join(chunks)
