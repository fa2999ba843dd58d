"""Properties of the verifier and of split parts, checked with hypothesis (derandomized).

* Any single-byte change, any truncation and any extension of a valid small bundle is refused
  with a :class:`~bundle.errors.BundleError` (never another exception, never accepted), and
  staging stays empty. The bundle has a compressible and an incompressible payload and an
  empty one, so byte positions fall in headers, padding, the envelope, zstd frames and the end
  marker.
* For any split size, verifying from the parts in any order succeeds, and joining them gives
  exactly the bytes of the unsplit bundle written with the same split size
  (``write_parts=False``).

Examples are bounded (``max_examples``) and derandomized so the suite stays fast and
reproducible; ``tests/bundle/test_fuzz.py`` is the long-running fuzzer.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.errors import BundleError
from bundle.parts import join_parts
from bundle.reader import ExpectRelease, VerifierState, verify_bundle
from bundle.writer import write_bundle
from tests.bundle.kit import AGENT, NOW, make_files, new_staging, release_draft, verify
from tests.fixtures.trust import TrustKit, make_trust


def _settings(max_examples: int) -> settings:
    return settings(derandomize=True, deadline=None, database=None, max_examples=max_examples,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

CONTENTS = {
    "sql/001.sql": b"insert into t values (1);\n" * 60,
    "bin/blob": random.Random(3).randbytes(3000),
    "empty": b"",
}


class _World:
    def __init__(self, base: Path) -> None:
        self.trust: TrustKit = make_trust()
        self.base = base
        src = base / "src"
        src.mkdir()
        self.files = make_files(src, CONTENTS)
        w = write_bundle(base / "b.tgb", release_draft(self.trust, sequence=3), self.files,
                         [self.trust.release_key])
        self.data = w.paths[0].read_bytes()
        self.staging = new_staging(base)
        self.count = 0

    def verify_bytes(self, data: bytes, *, known_size: bool) -> None:
        verify_bundle(io.BytesIO(data), label="prop.tgb", trusted_root=self.trust.trusted,
                      state=VerifierState(1, 2, NOW - 60), expect=ExpectRelease(AGENT),
                      staging_dir=self.staging, size=len(data) if known_size else None,
                      clock=lambda: NOW)

    def refused(self, data: bytes, known_size: bool) -> None:
        try:
            self.verify_bytes(data, known_size=known_size)
        except BundleError:
            pass
        else:
            raise AssertionError("a changed bundle was accepted")
        # (any other exception propagates and fails the test)
        assert os.listdir(self.staging) == [], "staging must stay empty"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> _World:
    return _World(tmp_path_factory.mktemp("props"))


def test_the_unchanged_bundle_verifies(world: _World) -> None:
    (world.base / "ok").mkdir()
    staging = new_staging(world.base / "ok")
    v = verify_bundle(io.BytesIO(world.data), label="ok", trusted_root=world.trust.trusted,
                      state=VerifierState(), expect=ExpectRelease(AGENT), staging_dir=staging,
                      size=len(world.data), clock=lambda: NOW)
    assert {n: p.read_bytes() for n, p in v.files.items()} == CONTENTS


@_settings(300)
@given(data=st.data(), bit=st.integers(0, 7), known_size=st.booleans())
def test_any_flipped_byte_is_refused(world: _World, data: st.DataObject, bit: int,
                                     known_size: bool) -> None:
    index = data.draw(st.integers(0, len(world.data) - 1), label="index")
    changed = bytearray(world.data)
    changed[index] ^= 1 << bit
    world.refused(bytes(changed), known_size)


@_settings(150)
@given(data=st.data(), known_size=st.booleans())
def test_any_truncation_is_refused(world: _World, data: st.DataObject,
                                   known_size: bool) -> None:
    length = data.draw(st.integers(0, len(world.data) - 1), label="length")
    world.refused(world.data[:length], known_size)


@_settings(60)
@given(extra=st.one_of(st.binary(min_size=1, max_size=2048),
                       st.integers(1, 4).map(lambda n: bytes(512 * n))),
       known_size=st.booleans())
def test_any_extension_is_refused(world: _World, extra: bytes, known_size: bool) -> None:
    world.refused(world.data + extra, known_size)


@_settings(25)
@given(split=st.integers(512, 24 * 1024), seed=st.integers(0, 2**32 - 1))
def test_split_and_rejoin_round_trip(world: _World, split: int, seed: int) -> None:
    work = world.base / f"split-{world.count}"
    world.count += 1
    parts_dir, single_dir = work / "parts", work / "single"
    parts_dir.mkdir(parents=True)
    single_dir.mkdir()
    try:
        m = release_draft(world.trust, sequence=3)
        parts = write_bundle(parts_dir / "b.tgb", m, world.files, [world.trust.release_key],
                             split_size=split)
        single = write_bundle(single_dir / "b.tgb", m, world.files, [world.trust.release_key],
                              split_size=split, write_parts=False)
        assert parts.manifest == single.manifest
        assert len(parts.paths) == parts.manifest.parts.count + 1  # type: ignore[union-attr]

        shuffled = list(parts.paths)
        random.Random(seed).shuffle(shuffled)
        staging = new_staging(work)
        v = verify(shuffled, world.trust, staging)
        assert {n: p.read_bytes() for n, p in v.files.items()} == CONTENTS

        joined = join_parts(shuffled, work / "joined.tgb")
        assert joined.read_bytes() == single.paths[0].read_bytes()
    finally:
        shutil.rmtree(work)
