"""Large frames compressed straight into the bundle file (docs/bundle-format.md §12.3).

For a single-file bundle the writer predicts the head's size, compresses each large payload
into the bundle's temporary file at the place that head leaves it, and copies only the small
frames (kept in one shared spool) around them. These tests check that the result is the
same bundle, byte for byte, as a writer that copies every frame (the frame-cache path never
places frames in the bundle file); that a wrong prediction falls back to copying into a new
temporary file; and that failures leave nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from bundle import direct_io
from bundle import writer as writer_mod
from bundle.errors import DigestMismatchError
from bundle.frame_cache import FrameCache
from bundle.inspect import verify_written
from bundle.writer import PayloadFile, WrittenBundle, write_bundle
from tests.bundle.kit import device_flipping_byte, make_files, release_draft
from tests.fixtures.trust import TrustKit

BIG = 64 * 1024  # MT_THRESHOLD_BYTES in these tests: larger payloads are "large"


def _text(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"insert into t values (%d, 'row %d');\n" % (len(out), rnd.randrange(10**6))
    return bytes(out[:size])


def _contents() -> dict[str, bytes]:
    return {
        "a.sql": _text(30_000, 1),  # small
        "b.bin": os.urandom(300_000),  # large, incompressible: its frame is placed in the file
        "c.sql": _text(900_000, 2),  # large, compresses to fewer digits than predicted
        "d.yaml": _text(5_000, 3),  # small
        "e.bin": os.urandom(200_000),  # large
        "f": b"",
    }


@pytest.fixture(autouse=True)
def _small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "MT_THRESHOLD_BYTES", BIG)


def _temps_made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []
    real = writer_mod._tmp_for

    def spy(final: Path) -> tuple[int, Path]:
        fd, path = real(final)
        made.append(path)
        return fd, path

    monkeypatch.setattr(writer_mod, "_tmp_for", spy)
    return made


def _reference(trust: TrustKit, files: list[PayloadFile], tmp_path: Path) -> bytes:
    """The same bundle written with every frame copied (through a frame cache)."""
    (tmp_path / "ref").mkdir()
    known = [PayloadFile(f.name, f.path, f.path.stat().st_size,
                         hashlib.sha256(f.path.read_bytes()).hexdigest())
             for f in files]
    w = write_bundle(tmp_path / "ref" / "b.tgb", release_draft(trust), known,
                     [trust.release_key], frames=FrameCache(tmp_path / "cache"))
    return w.paths[0].read_bytes()


def _flip_a_byte_of_b_bin(probe: WrittenBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every read from the device return one byte of b.bin's frame changed, at the
    place the probe bundle (written from the same inputs) has it."""
    at = probe.size - 1024 - sum(writer_mod.member_span(e.compressed_size)
                                 for e in probe.manifest.files[1:]) + 512 + 1000
    device_flipping_byte(monkeypatch, lambda size: at)


def test_frames_placed_in_the_file_give_the_same_bundle(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_files(src, _contents())
    reference = _reference(trust, files, tmp_path)
    made = _temps_made(monkeypatch)
    handed: list[str] = []  # small members written in place while large ones compress
    real = writer_mod._SmallPlacer.add

    def add(self: Any, members: list[tuple[Any, Any, int]]) -> None:
        handed.extend(entry.name for entry, _, _ in members)
        real(self, members)

    monkeypatch.setattr(writer_mod._SmallPlacer, "add", add)
    w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert w.paths[0].read_bytes() == reference
    assert len(made) == 1  # the prediction held: no second temporary file, no copy
    assert handed == ["a.sql", "d.yaml", "f"]
    assert os.listdir(out) == ["b.tgb"]
    verify_written(w)


@pytest.mark.parametrize("error", [+512, -512])
def test_a_wrong_prediction_copies_into_a_new_file(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    files = make_files(src, _contents())
    reference = _reference(trust, files, tmp_path)
    real = writer_mod._head_size
    monkeypatch.setattr(writer_mod, "_head_size",
                        lambda *args: real(*args) + error)  # type: ignore[misc]
    made = _temps_made(monkeypatch)
    w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert w.paths[0].read_bytes() == reference
    assert len(made) == 2
    assert os.listdir(out) == ["b.tgb"]


def test_a_failure_after_placing_a_frame_leaves_nothing(
        trust: TrustKit, src: Path, out: Path) -> None:
    files = make_files(src, _contents())
    missing = PayloadFile("z.bin", src / "does-not-exist")
    with pytest.raises(FileNotFoundError):
        write_bundle(out / "b.tgb", release_draft(trust), [*files, missing],
                     [trust.release_key])
    assert os.listdir(out) == []


def test_a_placed_frame_that_reads_back_differently_removes_the_output(
        trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_files(src, _contents())
    w = write_bundle(out / "probe.tgb", release_draft(trust), files, [trust.release_key])
    entry = w.manifest.files[1]  # b.bin, placed in the file
    assert entry.name == "b.bin"
    (out / "probe.tgb").unlink()
    _flip_a_byte_of_b_bin(w, monkeypatch)
    with pytest.raises(DigestMismatchError, match=r"b\.bin"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert os.listdir(out) == []


def test_placed_frames_are_read_back_once(
        trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame compressed into the file is re-read while later payloads are compressed, and
    the final re-read does not read it again; every other byte is re-read once (direct
    reads are aligned to 4 KiB: the block where a placed frame starts or ends may be read
    by both)."""
    files = make_files(src, _contents())
    reads: list[tuple[int, int]] = []
    threads: set[str] = set()
    device_flipping_byte(monkeypatch, lambda size: None, reads)
    real = direct_io.pread_into

    def spy(fd: int, view: memoryview, offset: int) -> int:
        threads.add(threading.current_thread().name)
        return real(fd, view, offset)

    monkeypatch.setattr(direct_io, "pread_into", spy)
    w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    covered = [0] * w.size
    for offset, count in reads:
        for i in range(offset, min(offset + count, w.size)):
            covered[i] += 1
    assert min(covered) >= 1
    # Inside each placed frame (but its first and last aligned block) every byte once.
    at = w.size - 1024 - sum(writer_mod.member_span(e.compressed_size)
                             for e in w.manifest.files)
    placed = 0
    for entry in w.manifest.files:
        start, end = at + 512, at + 512 + entry.compressed_size
        if entry.size > BIG:
            placed += 1
            assert set(covered[start + direct_io.ALIGN:end - direct_io.ALIGN]) == {1}
        at += writer_mod.member_span(entry.compressed_size)
    assert placed == 3
    assert sum(covered) <= w.size + 4 * direct_io.ALIGN * (placed + 1)
    assert "bundle-placed-check" in threads


def test_without_sync_file_range_the_final_re_read_checks_placed_frames(
        trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sync_file_range (other systems) nothing is checked early: the final re-read
    reads the placed frames too and still finds a changed byte."""
    monkeypatch.setattr(writer_mod, "_sync_file_range", None)
    files = make_files(src, _contents())
    w = write_bundle(out / "probe.tgb", release_draft(trust), files, [trust.release_key])
    (out / "probe.tgb").unlink()
    _flip_a_byte_of_b_bin(w, monkeypatch)
    with pytest.raises(DigestMismatchError, match=r"b\.bin"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert os.listdir(out) == []


@pytest.mark.parametrize("where", ["placed", "spooled", "small"])
def test_a_full_disk_while_a_frame_is_written(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A large payload's frame, and the small members written in place, are written by
    threads of their own: their error reaches the caller, nothing is left in the output
    directory, and no thread stays behind."""
    files = make_files(src, _contents())
    before = {t.name for t in threading.enumerate()}
    if where == "placed":
        def pwrite(fd: int, data: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(writer_mod.os, "pwrite", pwrite)
        kwargs: dict[str, Any] = {}
    elif where == "small":  # the thread writing small members in place
        def place(self: Any, buf: bytearray, at: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(writer_mod._SmallPlacer, "_write", place)
        kwargs = {}
    else:
        def write(self: Any, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(writer_mod._HashingWriter, "write", write)
        kwargs = {"frames": FrameCache(tmp_path / "cache")}
        files = [PayloadFile(f.name, f.path, f.path.stat().st_size,
                             hashlib.sha256(f.path.read_bytes()).hexdigest()) for f in files]
    with pytest.raises(OSError) as err:
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     **kwargs)
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(out) == []
    after = {t.name for t in threading.enumerate()}
    assert not {n for n in after - before if n.startswith("bundle-")}
