"""signing.fileio: atomic, no-overwrite writes and bounded reads."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from signing import fileio
from signing.errors import KeyFileError
from signing.fileio import read_bounded, write_file_atomic

CAP = 1024  # bytes


def other_files(directory: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_write_new_file(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "a.json"
    write_file_atomic(path, b"data")
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_file_atomic(tmp_path / "b.json", b"public", mode=0o644)
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
    assert other_files(tmp_path, "a.json", "b.json") == []


def test_a_name_of_255_bytes_is_written(tmp_path: Path) -> None:
    """Its temporary name (".<name>.<random>.tmp") was 14 bytes longer than the name: a
    file the directory takes could not be written ("File name too long")."""
    for name in ("k" * 255, "é" * 127 + "x"):  # 255 bytes, in ASCII and in UTF-8
        path = tmp_path / name
        write_file_atomic(path, b"data")
        assert path.read_bytes() == b"data"
    assert other_files(tmp_path, "k" * 255, "é" * 127 + "x") == []


def test_no_overwrite_without_permission(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"old")
    with pytest.raises(KeyFileError, match="already exists"):
        write_file_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    write_file_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert other_files(tmp_path, "a.json") == []


def test_relative_path_in_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_file_atomic("rel.json", b"x")
    assert (tmp_path / "rel.json").read_bytes() == b"x"


def test_write_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write"):
        write_file_atomic(tmp_path / "missing-dir" / "k.key", b"x")
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "k.key").mkdir()  # a directory where the file should go
    with pytest.raises(KeyFileError):
        write_file_atomic(directory / "k.key", b"x", overwrite=True)
    assert other_files(directory, "k.key") == []


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "too-big"])
def test_unreadable_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "k.key"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "too-big":
        path.write_bytes(b" " * (CAP + 1))
    with pytest.raises(KeyFileError) as info:
        read_bounded(path, CAP)
    assert info.type is KeyFileError
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size", [0, 1, CAP])
def test_read_bounded_accepts_up_to_the_cap(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * size)
    assert read_bounded(path, CAP) == b"a" * size


def test_read_bounded_follows_symlinks_to_regular_files(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert read_bounded(tmp_path / "link", CAP) == b"x"


def test_a_fifo_or_a_directory_is_never_replaced_even_with_force(tmp_path: Path) -> None:
    """With overwrite (--force) the temporary file was renamed over whatever was there: as
    root, '-o /dev/null --force' replaced the device node with a key or root file. A device,
    FIFO, socket or directory is now refused and left (a FIFO and a directory stand in for
    the device); a symbolic link is still replaced, as before."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    for target in (fifo, tmp_path / "dir"):
        with pytest.raises(KeyFileError, match=r"is not a regular file .*; refusing to "
                           "replace it"):
            write_file_atomic(target, b"data", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and (tmp_path / "dir").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "pipe"]
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    write_file_atomic(link, b"data", overwrite=True)
    assert not link.is_symlink() and link.read_bytes() == b"data"


def _other_file_system(tmp_path: Path) -> Path:
    """A directory on another file system than ``tmp_path`` (/dev/shm's tmpfs)."""
    shm = Path("/dev/shm")
    assert shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev, \
        "the test needs /dev/shm on a file system of its own"
    return Path(tempfile.mkdtemp(dir=shm))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_syncfs_each_syncs_every_file_system_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One syncfs per file system among the paths (files and directories), on a
    descriptor of that file system, closed after."""
    other = _other_file_system(tmp_path)
    try:
        paths = [tmp_path / "a", tmp_path / "b", tmp_path, other / "c", other]
        for path in (tmp_path / "a", tmp_path / "b", other / "c"):
            path.write_bytes(b"x")
        synced: list[int] = []
        real = fileio.syncfs

        def syncfs(fd: int) -> bool:
            synced.append(os.fstat(fd).st_dev)
            return real(fd)

        monkeypatch.setattr(fileio, "syncfs", syncfs)
        before = _open_fds()
        assert fileio.syncfs_each(paths) is True
        assert sorted(synced) == sorted({tmp_path.stat().st_dev, other.stat().st_dev})
        assert _open_fds() == before
    finally:
        shutil.rmtree(other)


@pytest.mark.parametrize("failing", [0, 1])
def test_syncfs_each_is_false_when_one_file_system_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    """A syncfs that fails (the first file system's or the second's) makes the whole
    False: the caller fsyncs each path, which names the one at fault. Every descriptor is
    closed."""
    other = _other_file_system(tmp_path)
    try:
        calls: list[int] = []

        def syncfs(fd: int) -> bool:
            calls.append(fd)
            return len(calls) - 1 != failing

        monkeypatch.setattr(fileio, "syncfs", syncfs)
        before = _open_fds()
        assert fileio.syncfs_each([tmp_path, other]) is False
        assert len(calls) == failing + 1  # none after the one that failed
        assert _open_fds() == before
    finally:
        shutil.rmtree(other)


def test_syncfs_each_is_false_for_a_path_gone_and_syncs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path that is gone (a spool directory removed meanwhile) makes it False before
    any syncfs: the caller fsyncs each of the others."""
    calls: list[int] = []

    def syncfs(fd: int) -> bool:
        calls.append(fd)
        return True

    monkeypatch.setattr(fileio, "syncfs", syncfs)
    assert fileio.syncfs_each([tmp_path, tmp_path / "gone"]) is False
    assert calls == []


def test_syncfs_is_false_where_libc_has_none(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """Without a syncfs in the C library (or the library not loadable) syncfs says False
    rather than raise; a real one on a real descriptor says True."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert fileio.syncfs(fd) is True
        monkeypatch.setattr(fileio, "_libc", lambda: object())
        assert fileio.syncfs(fd) is False

        def no_library() -> None:
            raise OSError("libc.so.6: cannot open shared object file")

        monkeypatch.setattr(fileio, "_libc", no_library)
        assert fileio.syncfs(fd) is False
    finally:
        os.close(fd)


FUSE_MAGIC = 0x65735546  # what fstatfs says of a FUSE mount: sshfs, gocryptfs, ntfs-3g ...


@pytest.mark.parametrize("magic", [FUSE_MAGIC, 0x4D44, 0x2011BAB0, 0x6969, 0xFE534D42, None])
def test_syncfs_does_not_stand_for_fsyncs_on_a_file_system_it_does_not_cover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, magic: int | None) -> None:
    """On FUSE (Linux's syncfs sends the server nothing, where an fsync has it fsync its
    own files: virtiofs aside), FAT and exFAT (no flush of the device's cache, which
    fsync issues), NFS or SMB (no COMMIT or FLUSH of what the server holds), or one whose
    type cannot be asked, syncfs would succeed without making the files durable: syncfs
    and syncfs_each say False without calling it, and the caller fsyncs each file and
    directory."""
    calls: list[int] = []

    class Libc:
        def syncfs(self, fd: int) -> int:
            calls.append(fd)
            return 0

    monkeypatch.setattr(fileio, "_libc", Libc)
    monkeypatch.setattr(fileio, "_fs_magic", lambda fd: magic)
    assert fileio.syncfs_each([tmp_path]) is False
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert fileio.syncfs(fd) is False
    finally:
        os.close(fd)
    assert calls == []
    monkeypatch.setattr(fileio, "_fs_magic", lambda fd: 0xEF53)  # ext4: called
    assert fileio.syncfs_each([tmp_path]) is True and len(calls) == 1


def test_syncfs_each_stands_for_fsyncs_on_tmpfs_and_the_test_file_system(
        tmp_path: Path) -> None:
    """The file systems whose syncfs flushes what fsync would (ext2/3/4, XFS, Btrfs, F2FS,
    tmpfs, overlayfs) are recognised: /dev/shm's tmpfs and the tests' own."""
    shm = _other_file_system(tmp_path)
    try:
        for path in (shm, tmp_path):
            fd = os.open(path, os.O_RDONLY)
            try:
                assert fileio._fs_magic(fd) in fileio.SYNCFS_COVERS
            finally:
                os.close(fd)
        assert fileio.syncfs_each([shm, tmp_path]) is True
    finally:
        shutil.rmtree(shm)
