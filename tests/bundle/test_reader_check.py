"""check_bundle (bundle/reader.py): every check of the verifier, nothing staged.

The same bundles are given to :func:`check_bundle` and to :func:`verify_bundle`: an accepted
one gives the same manifest, envelope and state; a refused one the same error type and
message. A payload over 1 MiB compressed is refused as InsufficientSpaceError (stage it)
before any payload byte is read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundle.errors import BundleError, InsufficientSpaceError
from bundle.reader import (
    ExpectRelease,
    ExpectResult,
    VerifierState,
    check_bundle,
    verify_bundle,
)
from bundle.staging import BUFFER_BYTES
from bundle.writer import write_bundle
from signing.keys import SigningKey
from tests.bundle.kit import (
    AGENT,
    HUB,
    NOW,
    craft_bundle,
    make_files,
    release_draft,
    result_draft,
    staging_entries,
)
from tests.bundle.test_reader import ZSTD_CASES
from tests.fixtures.trust import TrustKit

AGENT_KEY = SigningKey.generate()


def _both(data: bytes, trust: TrustKit, staging: Path, expect: Any,
          **kwargs: Any) -> tuple[Any, Any]:
    """(check_bundle's outcome, verify_bundle's outcome): the bundle or the error."""
    outcomes: list[Any] = []
    for fn, extra in ((check_bundle, {}), (verify_bundle, {"staging_dir": staging})):
        try:
            outcomes.append(fn(io.BytesIO(data), label="b.tgb", size=len(data),
                               trusted_root=trust.trusted, state=VerifierState(),
                               expect=expect, clock=lambda: NOW, **extra, **kwargs))
        except BundleError as exc:
            outcomes.append(exc)
    return outcomes[0], outcomes[1]


def _result(src: Path, out: Path, contents: dict[str, bytes]) -> bytes:
    w = write_bundle(out / "r.tgr", result_draft(AGENT_KEY), make_files(src, contents),
                     [AGENT_KEY])
    return w.paths[0].read_bytes()


def test_a_result_checked_in_memory(trust: TrustKit, src: Path, out: Path,
                                    staging: Path) -> None:
    data = _result(src, out, {"logs/1.log": b"step 1 ok\n" * 100, "empty.log": b""})
    checked, verified = _both(data, trust, staging, ExpectResult(HUB, AGENT, AGENT_KEY.public))
    assert checked.envelope == verified.envelope
    assert checked.envelope_sha256 == verified.envelope_sha256
    assert checked.manifest == verified.manifest
    assert checked.state == verified.state
    assert checked.signer_key_ids == verified.signer_key_ids == {AGENT_KEY.key_id}
    assert staging_entries(staging) == [verified.staged_dir.name]  # only verify_bundle's


def _flip(data: bytes, offset_from_end: int) -> bytes:
    out = bytearray(data)
    out[len(out) - offset_from_end] ^= 0x01
    return bytes(out)


#: (case, how the good result is damaged, what the hub expects)
DAMAGE: list[tuple[str, Callable[[bytes], bytes], Any]] = [
    ("payload byte", lambda d: _flip(d, 1024 + 100), None),
    ("envelope byte", lambda d: _flip(d, len(d) - 1024 - 200), None),
    ("truncated", lambda d: d[:-1500], None),
    ("trailing bytes", lambda d: d + b"\0" * 512, None),
    ("other agent's key", lambda d: d, ExpectResult(HUB, AGENT, SigningKey.generate().public)),
    ("other hub", lambda d: d, ExpectResult("other-hub", AGENT, AGENT_KEY.public)),
    ("a result offered as a release", lambda d: d, ExpectRelease(AGENT)),
]


@pytest.mark.parametrize(("case", "damage", "expect"), DAMAGE, ids=[c[0] for c in DAMAGE])
def test_refused_as_the_verifier_refuses(trust: TrustKit, src: Path, out: Path, staging: Path,
                                         case: str, damage: Callable[[bytes], bytes],
                                         expect: Any) -> None:
    data = damage(_result(src, out, {"logs/1.log": os.urandom(4000)}))
    checked, verified = _both(data, trust, staging,
                              expect or ExpectResult(HUB, AGENT, AGENT_KEY.public))
    assert isinstance(verified, BundleError), case
    assert type(checked) is type(verified)
    assert str(checked) == str(verified)
    assert staging_entries(staging) == []


@pytest.mark.parametrize(("case", "make", "exc", "match"), ZSTD_CASES,
                         ids=[c[0] for c in ZSTD_CASES])
def test_zstd_rules(trust: TrustKit, out: Path, staging: Path, case: str,
                    make: Callable[[bytes], bytes], exc: type[BundleError], match: str) -> None:
    content = b"hello zstd\n" * 1000
    craft_bundle(out / "c.tgb", trust, [("a.bin", content, make(content))])
    checked, verified = _both((out / "c.tgb").read_bytes(), trust, staging,
                              ExpectRelease(AGENT))
    assert isinstance(checked, exc) and isinstance(verified, exc)
    assert str(checked) == str(verified)
    assert staging_entries(staging) == []


def test_a_payload_over_1_mib_is_left_to_staging(trust: TrustKit, out: Path) -> None:
    big = os.urandom(BUFFER_BYTES + 1)
    comp = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(big)
    craft_bundle(out / "big.tgb", trust, [("small", b"x", zstandard.ZstdCompressor(
        write_content_size=True, write_checksum=True).compress(b"x")), ("big", big, comp)],
        manifest=release_draft(trust))
    data = (out / "big.tgb").read_bytes()
    reads: list[int] = []

    class Counting(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            chunk = super().read(n)
            reads.append(len(chunk))
            return chunk

    with pytest.raises(InsufficientSpaceError, match=r"'big' is 1\.0 MiB compressed, over the "
                       r"1\.0 MiB a payload may take to be checked in memory"):
        check_bundle(Counting(data), label="big.tgb", size=len(data),
                     trusted_root=trust.trusted, state=VerifierState(),
                     expect=ExpectRelease(AGENT), clock=lambda: NOW)
    assert sum(reads) < len(data) - len(comp)  # refused before the payloads were read
