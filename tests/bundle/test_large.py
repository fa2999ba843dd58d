"""A payload above 4 GiB, end to end (threat 9: size bugs past 2 GiB / 4 GiB).

The source file is sparse (``os.truncate`` to 4 GiB of zeros, then 4 KiB of random data at the
end), so it costs no disk space to create and compresses to a few hundred KiB; the bundle is
small, but every size on the way is 64-bit: the manifest's ``size``, the zstd frame's content
size, the decompressed stream, the staged file. The random tail proves the last bytes, past
the 4 GiB mark, arrive intact.

Verification runs in a child process, which reports its own peak resident memory
(``VmHWM`` in ``/proc/self/status``: the high-water mark of the memory map created by its
``exec``). Not ``ru_maxrss`` from ``wait4``: Linux carries the parent's high-water mark
across ``fork``/``exec`` into it, so a child of a large pytest process looked large.
Streaming a 4 GiB payload must stay within bounded memory (1 MiB buffers, a 32 MiB zstd
window cap; the bound asserted here is generous — a behaviour check, not a benchmark).

Cost: compressing and then decompressing, hashing and staging 4 GiB (fsync included) takes
tens of seconds on a small machine; the staged copy (4 GiB, not sparse) is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle.container import END_OF_ARCHIVE, header_len, member_span
from bundle.frames import FrameScanner
from bundle.inspect import inspect
from bundle.writer import PayloadFile, write_bundle
from tests.bundle.kit import new_staging, release_draft
from tests.fixtures.trust import TrustKit, make_trust

FOUR_GIB = 4 * 1024**3
TAIL = os.urandom(4096)
SIZE = FOUR_GIB + len(TAIL)
MAX_RSS = 128 * 1024 * 1024  # bytes: a 32 MiB zstd window cap and a few MiB of buffers

_CHILD = r"""
import json, os, resource, sys
from pathlib import Path
from tests.bundle.kit import verify
from tests.fixtures.trust import TrustKit

args = json.loads(sys.argv[1])
trust = TrustKit(args["hub"], None, None, None, bytes.fromhex(args["root"]))
v = verify(Path(args["bundle"]), trust, Path(args["staging"]))
path = v.files["big.bin"]
with open(path, "rb") as fh:
    fh.seek(-4096, os.SEEK_END)
    tail = fh.read()
hwm = [line for line in Path("/proc/self/status").read_text().splitlines()
       if line.startswith("VmHWM:")][0]
print(json.dumps({
    "peak_rss": int(hwm.split()[1]) * 1024,  # the kernel reports kB
    "signed_size": v.manifest.files[0].size,
    "staged_size": path.stat().st_size,
    "tail": tail.hex(),
    "state": [v.state.root_version, v.state.sequence, v.state.time_floor],
}))
"""


@pytest.fixture(scope="module")
def trust() -> TrustKit:
    return make_trust()


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory,
               trust: TrustKit) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("large")
    src = base / "big.bin"
    with open(src, "wb") as fh:
        fh.truncate(FOUR_GIB)  # a hole: zeros that take no disk space
        fh.seek(FOUR_GIB)
        fh.write(TAIL)
    assert src.stat().st_size == SIZE
    w = write_bundle(base / "big.tgb", release_draft(trust), [PayloadFile("big.bin", src)],
                     [trust.release_key])
    src.unlink()
    yield w.paths[0]
    shutil.rmtree(base, ignore_errors=True)


def test_sizes_are_64_bit_in_the_manifest_and_the_frame(big_bundle: Path,
                                                       trust: TrustKit) -> None:
    m = inspect(big_bundle).manifest
    assert m is not None
    entry = m.files[0]
    assert entry.size == SIZE > 2**32
    # The file is the head, one member and the end marker; the frame states the full size.
    total = big_bundle.stat().st_size
    data_start = (total - member_span(entry.compressed_size) - len(END_OF_ARCHIVE)
                  + header_len(entry.compressed_size))
    with open(big_bundle, "rb") as fh:
        fh.seek(data_start)
        first = fh.read(64)
    scanner = FrameScanner()
    scanner.feed(first)
    assert scanner.header is not None
    assert scanner.header.content_size == SIZE
    assert entry.compressed_size < 16 * 1024 * 1024  # zeros compress


def test_verify_over_4_gib_in_bounded_memory(big_bundle: Path, trust: TrustKit,
                                             tmp_path: Path) -> None:
    staging = new_staging(tmp_path)
    args = json.dumps({"hub": trust.hub_id, "root": trust.root_envelope.hex(),
                       "bundle": str(big_bundle), "staging": str(staging)})
    root = Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, args], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        with proc.stdout, proc.stderr:
            out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")
        got = json.loads(out)
        assert got["signed_size"] == SIZE
        assert got["staged_size"] == SIZE
        assert bytes.fromhex(got["tail"]) == TAIL
        assert got["state"][:2] == [1, 1]
        peak = got["peak_rss"]
        print(f"verifying {SIZE} bytes: child peak RSS {peak / 2**20:.1f} MiB")
        assert peak < MAX_RSS, f"peak RSS {peak / 2**20:.0f} MiB while verifying 4 GiB"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
