"""The verifier's tests again, with payloads staged by threads (bundle/staging.py).

Staging overlaps reading, decompressing and writing in three threads for bundles of at
least ``PIPELINE_MIN_BYTES`` compressed bytes, and runs in one thread below that. The tests
of the modules imported here use small bundles; run again with the threshold at zero they
check that the threaded path accepts the same bundles, refuses the same tampered ones with
the same errors, and leaves nothing staged when it refuses. The tests below check what only
the threaded path can get wrong: the order of errors found by different threads, a write
error in the writer thread, and threads left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pytest
import zstandard

from bundle import staging as staging_mod
from bundle.container import member_span
from bundle.errors import DigestMismatchError
from bundle.reader import VerifierState, staging_needed
from tests.bundle.kit import craft_bundle, staging_entries, verify
from tests.bundle.test_parts import *  # noqa: F403
from tests.bundle.test_reader import *  # noqa: F403
from tests.bundle.test_security_matrix import *  # noqa: F403
from tests.fixtures.trust import TrustKit


@pytest.fixture(autouse=True)
def _threaded_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging_mod, "PIPELINE_MIN_BYTES", 0)


# -- the threaded path on its own ----------------------------------------------------------

_BIG = os.urandom(3 * 1024 * 1024)  # over BUFFER_BYTES compressed: goes through the spool


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True,
                                    write_content_size=True).compress(data)


def test_the_threaded_path_is_taken(trust: TrustKit, out: Path, staging: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = staging_mod._OutputWriter

    def counting(**kwargs: bool) -> object:
        made.append(1)
        return real(**kwargs)

    monkeypatch.setattr(staging_mod, "_OutputWriter", counting)
    payloads = [(f"f{i}", bytes([i]) * 5000, _zstd(bytes([i]) * 5000)) for i in range(5)]
    payloads.append(("big", _BIG, _zstd(_BIG)))
    craft_bundle(out / "b.tgb", trust, payloads)
    vb = verify(out / "b.tgb", trust, staging)
    assert made == [1]
    assert [vb.files[name].read_bytes() for name, _, _ in payloads] == [
        content for _, content, _ in payloads]


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["threads", "one-thread"])
def test_the_first_bad_member_is_named_in_both_modes(trust: TrustKit, out: Path, staging: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      threshold: int) -> None:
    """Member 2 decompresses to other bytes than signed (same size), member 3 is damaged in
    the file: whichever thread notices first, the error names member 2, and nothing is
    left in staging."""
    monkeypatch.setattr(staging_mod, "PIPELINE_MIN_BYTES", threshold)
    good = b"select 1;\n" * 300
    payloads = [("a.sql", good, _zstd(good)),
                ("b.sql", b"x" * len(good), _zstd(good)),
                ("c.bin", _BIG, _zstd(_BIG))]
    m = craft_bundle(out / "b.tgb", trust, payloads)
    path = out / "b.tgb"
    data = bytearray(path.read_bytes())
    end = len(data) - 1024 - member_span(m.files[2].compressed_size)
    data[end + 512 + 1000] ^= 1  # a byte inside member 3's data
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError) as err:
        verify(path, trust, staging, state=VerifierState())
    assert "'b.sql'" in str(err.value) and "content SHA-256" in str(err.value)
    assert staging_entries(staging) == []


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["threads", "one-thread"])
def test_a_damaged_spooled_member_after_good_ones(trust: TrustKit, out: Path, staging: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   threshold: int) -> None:
    monkeypatch.setattr(staging_mod, "PIPELINE_MIN_BYTES", threshold)
    payloads = [(f"f{i}", bytes([i]) * 5000, _zstd(bytes([i]) * 5000)) for i in range(3)]
    payloads += [("big1", _BIG, _zstd(_BIG)), ("big2", _BIG[::-1], _zstd(_BIG[::-1]))]
    m = craft_bundle(out / "b.tgb", trust, payloads)
    path = out / "b.tgb"
    data = bytearray(path.read_bytes())
    data[len(data) - 1024 - member_span(m.files[4].compressed_size) + 512 + 7] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError) as err:
        verify(path, trust, staging)
    assert "'big2'" in str(err.value) and "compressed SHA-256" in str(err.value)
    assert staging_entries(staging) == []


def test_a_write_error_in_the_writer_thread(trust: TrustKit, out: Path, staging: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the writer thread writes the third file: that error, nothing
    staged, no thread left behind."""
    monkeypatch.setattr(staging_mod, "PIPELINE_MIN_BYTES", 0)
    payloads = [(f"f{i}", bytes([i]) * 5000, _zstd(bytes([i]) * 5000)) for i in range(6)]
    craft_bundle(out / "b.tgb", trust, payloads)
    real = staging_mod._write_all
    calls = 0

    def failing(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(staging_mod, "_write_all", failing)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(OSError) as err:
        verify(out / "b.tgb", trust, staging)
    assert err.value.errno == errno.ENOSPC
    assert staging_entries(staging) == []
    after = {t.name for t in threading.enumerate()}
    assert not {n for n in after - before if n.startswith("bundle-stage")}


def _created(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files staging creates, in order."""
    created: list[str] = []
    real = staging_mod._create_private

    def spy(path: Path, *, readable: bool = False) -> int:
        created.append(path.name)
        return real(path, readable=readable)

    monkeypatch.setattr(staging_mod, "_create_private", spy)
    return created


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["threads", "one-thread"])
def test_without_keep_every_file_is_written_checked_and_removed(
        trust: TrustKit, out: Path, staging: Path, monkeypatch: pytest.MonkeyPatch,
        threshold: int) -> None:
    """``keep=False`` (``bundle verify`` without --keep): every payload is still written,
    decompressed and checked, and removed once checked; a bad one is still refused."""
    monkeypatch.setattr(staging_mod, "PIPELINE_MIN_BYTES", threshold)
    written = _created(monkeypatch)
    payloads = [(f"f{i}", bytes([i]) * 5000, _zstd(bytes([i]) * 5000)) for i in range(4)]
    payloads.append(("big", _BIG, _zstd(_BIG)))
    craft_bundle(out / "b.tgb", trust, payloads)
    vb = verify(out / "b.tgb", trust, staging, keep=False)
    assert dict(vb.files) == {}
    assert os.listdir(vb.staged_dir / "files") == []
    assert [n for n in written if n != "spool.zst"] == [f"{i:06d}" for i in range(1, 6)]
    bad = [*payloads[:2], ("f2", b"x" * 5000, payloads[2][2]), *payloads[3:]]
    craft_bundle(out / "c.tgb", trust, bad)
    with pytest.raises(DigestMismatchError, match=r"'f2'"):
        verify(out / "c.tgb", trust, staging, state=VerifierState(), keep=False)
    assert staging_entries(staging) == [vb.staged_dir.name]


@pytest.mark.parametrize("room", [True, False], ids=["room-for-two-spools", "room-for-one"])
def test_a_second_spool_only_when_there_is_room(
        trust: TrustKit, out: Path, staging: Path, monkeypatch: pytest.MonkeyPatch,
        room: bool) -> None:
    """Two large members: the second is copied into a second spool while the first is
    decompressed, but only if the staging file system has room for both beyond what the
    space rule checked; the files are the same either way and no spool is left."""
    created = _created(monkeypatch)
    payloads = [("a", b"a" * 100, _zstd(b"a" * 100)), ("big1", _BIG, _zstd(_BIG)),
                ("big2", _BIG[::-1], _zstd(_BIG[::-1])), ("big3", _BIG[1:], _zstd(_BIG[1:]))]
    m = craft_bundle(out / "b.tgb", trust, payloads)
    if not room:
        # Room for what the space rule asks (one spool) and 1 MiB more, not a second spool.
        usage = shutil.disk_usage
        free = staging_needed(m) + (1 << 20)
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda path: usage(path)._replace(free=free))
    vb = verify(out / "b.tgb", trust, staging)
    spools = sorted({n for n in created if n.startswith("spool")})
    assert spools == (["spool-2.zst", "spool.zst"] if room else ["spool.zst"])
    assert [vb.files[name].read_bytes() for name, _, _ in payloads] == [
        content for _, content, _ in payloads]
    assert sorted(os.listdir(vb.staged_dir)) == ["files"]
