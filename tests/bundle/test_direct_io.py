"""bundle.direct_io: the writer's re-reads from the device (docs/bundle-format.md §12.3).

The reader must yield exactly the file's bytes for any range, through O_DIRECT (aligned
reads, one read ahead) or through the page cache, and never keep bytes past what the caller
says is written.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from bundle import direct_io
from bundle.direct_io import ALIGN, DeviceReader

CHUNK = 4 * ALIGN  # small buffers: many fills and reads ahead in a small file


def _ranges(size: int, seed: int) -> list[tuple[int, int]]:
    """Mostly ascending ranges (as the writer reads), some jumping back or ahead."""
    rnd = random.Random(seed)
    out, at = [], 0
    while at < size:
        count = min(size - at, rnd.choice([1, 511, 512, ALIGN, 3 * ALIGN + 7, 5 * CHUNK]))
        out.append((at, count))
        at += count + rnd.choice([0, 0, 0, 513, 2 * CHUNK])
    out += [(0, 10), (size - 1, 1), (ALIGN - 1, 2)]
    return out


@pytest.mark.parametrize("direct", [True, False])
def test_any_range_reads_as_the_file(tmp_path: Path, direct: bool) -> None:
    data = os.urandom(20 * CHUNK + 1234)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    reader = DeviceReader(fd, direct=direct, chunk=CHUNK)
    try:
        for offset, count in _ranges(len(data), 7):
            got = b"".join(bytes(v) for v in reader.read(offset, count, ready=len(data)))
            assert got == data[offset:offset + count], (offset, count)
        with pytest.raises(EOFError):
            list(reader.read(len(data) - 5, 10))
    finally:
        reader.close()
        os.close(fd)


def test_bytes_past_ready_are_read_again(tmp_path: Path) -> None:
    """What lies past ``ready`` may still be written: a later read sees the new bytes."""
    path = tmp_path / "f"
    path.write_bytes(bytes(10 * CHUNK))
    fd = os.open(path, os.O_RDWR)
    reader = DeviceReader(fd, chunk=CHUNK)
    try:
        assert b"".join(bytes(v) for v in reader.read(0, 100, ready=100)) == bytes(100)
        os.pwrite(fd, b"new" * 1000, 100)
        os.fsync(fd)
        got = b"".join(bytes(v) for v in reader.read(100, 3000, ready=3100))
        assert got == b"new" * 1000
    finally:
        reader.close()
        os.close(fd)


@pytest.mark.parametrize("refused_from", [1, 2, 3])  # 2, 3: a read ahead is refused
def test_a_device_refusing_direct_reads_is_read_through_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_from: int) -> None:
    data = os.urandom(3 * CHUNK + 99)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    reader = DeviceReader(fd, chunk=CHUNK)
    real = direct_io.pread_into

    direct_reads = 0

    def pread_into(fd_: int, view: memoryview, offset: int) -> int:
        nonlocal direct_reads
        if os.O_DIRECT & _flags(fd_):
            direct_reads += 1
            if direct_reads >= refused_from:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd_, view, offset)

    monkeypatch.setattr(direct_io, "pread_into", pread_into)
    try:
        got = b"".join(bytes(v) for v in reader.read(0, len(data)))
        assert got == data
        assert not reader.direct
        assert direct_reads == refused_from
    finally:
        reader.close()
        os.close(fd)


def _flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)
