"""The cache of compressed payload frames (docs/bundle-format.md §12.4): a bundle written
with cached frames has the bytes of one written from scratch, verifies with the unchanged
verifier, and a damaged or half-made entry is never used."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bundle import writer as writer_mod
from bundle.container import END_OF_ARCHIVE, member_span
from bundle.frame_cache import FrameCache
from bundle.manifest import Target
from bundle.reader import ExpectRelease
from bundle.writer import PayloadFile, write_bundle
from tests.bundle.kit import make_files, new_staging, release_draft, verify
from tests.fixtures.trust import TrustKit


def _payloads(src: Path) -> list[PayloadFile]:
    """Small text, an empty file and one payload over the multi-threaded threshold, each
    with the size and SHA-256 the release loader would give."""
    rnd = random.Random(7)
    big = b"".join(b"line %d ok\n" % i + rnd.randbytes(64) for i in range(70_000))
    assert len(big) > writer_mod.MT_THRESHOLD_BYTES
    files = make_files(src, {"scripts/run.sh": b"echo hi\n" * 300, "empty": b"",
                             "data/big.bin": big})
    return [PayloadFile(f.name, f.path, f.path.stat().st_size,
                        hashlib.sha256(f.path.read_bytes()).hexdigest()) for f in files]


def _data_section(path: Path, head: int) -> bytes:
    return path.read_bytes()[head:]


def test_cached_frames_give_the_bytes_of_a_fresh_export(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path) -> None:
    files = _payloads(src)
    cache = FrameCache(tmp_path / "frames")
    scratch = write_bundle(out / "scratch.tgb", release_draft(trust), files,
                           [trust.release_key])
    first = write_bundle(out / "first.tgb", release_draft(trust), files,
                         [trust.release_key], frames=cache)
    entries = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert len(entries) == 3 and all(n.endswith(".zst") for n in entries)  # no temporaries
    # Another agent: another target and sequence, frames from the cache (sources removed,
    # so nothing can have been compressed again).
    for f in files:
        f.path.rename(f.path.with_suffix(".gone"))
    other = dataclasses.replace(release_draft(trust), target=Target(agents=("agent-2",)),
                                sequence=9, bundle_id="billing-2.4.0-9")
    again = write_bundle(out / "again.tgb", other, files, [trust.release_key], frames=cache)
    # Same manifest: the whole file is identical; another target: the data section is.
    assert (out / "first.tgb").read_bytes() == (out / "scratch.tgb").read_bytes()
    head_scratch = scratch.size - _section_size(scratch)
    head_again = again.size - _section_size(again)
    assert _data_section(out / "again.tgb", head_again) == _data_section(
        out / "scratch.tgb", head_scratch)
    assert again.manifest.files == scratch.manifest.files
    assert first.envelope_sha256 == scratch.envelope_sha256
    # The unchanged verifier accepts the bundle made from cached frames.
    verified = verify(out / "again.tgb", trust, new_staging(tmp_path),
                      expect=ExpectRelease("agent-2"))
    assert sorted(verified.files) == sorted(f.name for f in files)
    assert verified.files["data/big.bin"].read_bytes() == (
        src / "src-0002.gone").read_bytes()


def _section_size(written: writer_mod.WrittenBundle) -> int:
    return sum(member_span(e.compressed_size) for e in written.manifest.files) + len(
        END_OF_ARCHIVE)


def test_a_damaged_entry_is_made_again(trust: TrustKit, src: Path, out: Path,
                                       tmp_path: Path) -> None:
    files = _payloads(src)
    frames = tmp_path / "frames"
    scratch = write_bundle(out / "scratch.tgb", release_draft(trust), files,
                           [trust.release_key])
    write_bundle(out / "first.tgb", release_draft(trust), files, [trust.release_key],
                 frames=FrameCache(frames))
    (entry,) = [p for p in frames.iterdir() if p.name.startswith(files[2].sha256)]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot in the cached frame of the big payload
    entry.write_bytes(bytes(data))
    os.utime(entry, ns=(1, 1))  # and a new stamp, so this process checks it again
    again = write_bundle(out / "again.tgb", release_draft(trust), files, [trust.release_key],
                         frames=FrameCache(frames))
    assert (out / "again.tgb").read_bytes() == (out / "scratch.tgb").read_bytes()
    assert again.manifest.files == scratch.manifest.files
    # The damaged entry was removed and made again from the source.
    (remade,) = [p for p in frames.iterdir() if p.name.startswith(files[2].sha256)]
    assert hashlib.sha256(remade.read_bytes()).hexdigest() == (
        scratch.manifest.files[2].compressed_sha256)
    verify(out / "again.tgb", trust, new_staging(tmp_path))


def test_a_source_that_changed_is_refused_and_nothing_is_cached(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path) -> None:
    files = _payloads(src)
    files[0].path.write_bytes(b"echo changed\n" * 300)
    files[0] = dataclasses.replace(files[0], size=files[0].path.stat().st_size)
    with pytest.raises(writer_mod.ReleaseFormatError, match="no longer has the SHA-256"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     frames=FrameCache(tmp_path / "frames"))
    assert not (out / "b.tgb").exists()
    left = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert not [n for n in left if n.startswith(files[0].sha256 or "-")]
    assert not [n for n in left if n.endswith(".tmp")]


_KILL = """
import os, signal, sys
from pathlib import Path
from bundle.frame_cache import FrameCache
from bundle.writer import PayloadFile, write_bundle
from tests.bundle.kit import release_draft
from tests.fixtures.trust import make_trust
trust = make_trust()
def crash(point):
    os.kill(os.getpid(), signal.SIGKILL)
path = Path(sys.argv[2])
files = [PayloadFile("a", path, path.stat().st_size, sys.argv[3])]
write_bundle(Path(sys.argv[4]), release_draft(trust), files, [trust.release_key],
             frames=FrameCache(Path(sys.argv[1]), crash=crash))
"""


def test_a_writer_killed_while_caching_leaves_no_entry(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path) -> None:
    """SIGKILL after the frame's temporary file is fsynced, before its rename: no entry,
    and the next writer removes the temporary file and makes the entry."""
    data = b"payload " * 10_000
    (src / "a").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    frames = tmp_path / "frames"
    root = Path(__file__).resolve().parents[2]
    killed = subprocess.run(
        [sys.executable, "-c", _KILL, str(frames), str(src / "a"), sha, str(out / "k.tgb")],
        cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    left = [p.name for p in frames.iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp")  # fsynced, never renamed
    assert not (out / "k.tgb").exists()
    cache = FrameCache(frames)
    assert cache.lookup(sha, len(data), writer_mod.DEFAULT_LEVEL) is None
    assert cache.clean() == left  # its process is gone
    files = [PayloadFile("a", src / "a", len(data), sha)]
    write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                 frames=cache)
    scratch = write_bundle(out / "s.tgb", release_draft(trust), files, [trust.release_key])
    assert (out / "b.tgb").read_bytes() == (out / "s.tgb").read_bytes()
    (entry,) = frames.iterdir()
    assert entry.name == (f"{sha}-l3-zstd{'.'.join(map(str, _zstd_version()))}-"
                          f"{scratch.manifest.files[0].compressed_sha256}.zst")


def _zstd_version() -> tuple[int, ...]:
    import zstandard

    return tuple(zstandard.ZSTD_VERSION)
