"""A release's payload section framed once (bundle/prepared.py, docs/bundle-format.md §12.4):
every bundle written from it has, byte for byte, the file write_bundle writes for the same
manifest — whatever the target, sequence, chain, policy, sealed secrets or roots — and the
unchanged verifier accepts it; what it refuses leaves nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from bundle import prepared as prepared_mod
from bundle.errors import LimitExceededError
from bundle.frame_cache import FrameCache
from bundle.limits import DEFAULT_LIMITS
from bundle.manifest import ChainInfo, ChainLink, SecretEntry, Target
from bundle.prepared import prepare_payloads, write_prepared
from bundle.reader import ExpectRelease
from bundle.windows import Policy, Weekly
from bundle.writer import PayloadFile, make_durable, write_bundle
from tests.bundle.kit import make_files, new_staging, release_draft, rotate_root, verify
from tests.fixtures.trust import TrustKit

DAY = 1_796_083_200  # 2026-12-01T00:00:00Z
SAT_NIGHT = Weekly(("sat",), "01:00", "05:00", "Europe/Berlin")


def _payloads(src: Path) -> list[PayloadFile]:
    files = make_files(src, {"scripts/run.sh": b"echo hi\n" * 300, "empty": b"",
                             "data/blob.bin": os.urandom(200_000)})
    return [PayloadFile(f.name, f.path, f.path.stat().st_size,
                        hashlib.sha256(f.path.read_bytes()).hexdigest()) for f in files]


#: per agent, what differs in the head (§2.1): target, sequence, chain, policy, secrets
HEADS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("another target and sequence", {"target": Target(agents=("agent-2",)), "sequence": 9,
                                     "bundle_id": "billing-2.4.0-9"}),
    ("chain and policy", {"sequence": 3, "policy": Policy((SAT_NIGHT,)),
                          "chain": ChainInfo(ChainLink(1, 2, "billing-2.4.0-2", "billing",
                                                       "2.3.0", DAY, "carol"))}),
    ("sealed secrets and a checkpoint", {
        "secrets": (SecretEntry("db", "agent-1", b"\x01" * 80),),
        "checkpoint": {"seq": 41, "head_hash": "cd" * 32, "at": DAY}}),
]


@pytest.mark.parametrize(("what", "changes"), HEADS, ids=[h[0] for h in HEADS])
def test_a_prepared_bundle_has_the_bytes_write_bundle_writes(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path, what: str,
        changes: dict[str, Any]) -> None:
    files = _payloads(src)
    draft = release_draft(trust, **changes)
    roots = (rotate_root(trust)[0],) if what == "chain and policy" else ()
    expected = write_bundle(out / "expected.tgb", draft, files, [trust.release_key],
                            roots=roots)
    cache = FrameCache(tmp_path / "frames")
    prepared = prepare_payloads(files, tmp_path, frames=cache)
    assert prepared is not None and prepared.entries == expected.manifest.files
    manifest = dataclasses.replace(draft, files=prepared.entries)
    got = write_prepared(out / "got.tgb", manifest, prepared, [trust.release_key],
                         roots=roots)
    assert (out / "got.tgb").read_bytes() == (out / "expected.tgb").read_bytes()
    assert (got.size, got.envelope_sha256, got.manifest) == (
        expected.size, expected.envelope_sha256, expected.manifest)
    assert got.file_sha256 == hashlib.sha256((out / "got.tgb").read_bytes()).hexdigest()
    # a second bundle from the cache's frames (sources gone: nothing compressed again)
    for f in files:
        f.path.unlink()
    again = prepare_payloads(files, tmp_path, frames=cache)
    assert again == prepared
    assert sorted(os.listdir(out)) == ["expected.tgb", "got.tgb"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiangong-spool-")]
    if what == "plain":
        verified = verify(out / "got.tgb", trust, new_staging(tmp_path),
                          expect=ExpectRelease("agent-1"))
        assert verified.files["scripts/run.sh"].read_bytes() == b"echo hi\n" * 300


def test_pending_bundles_are_made_durable_with_the_same_bytes(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path) -> None:
    files = _payloads(src)
    prepared = prepare_payloads(files, tmp_path)
    assert prepared is not None
    pending = []
    for n in (1, 2, 3):
        draft = release_draft(trust, sequence=n, bundle_id=f"billing-2.4.0-{n}",
                              files=prepared.entries)
        pending.append(write_prepared(out / f"b{n}.tgb", draft, prepared,
                                      [trust.release_key], durable=False))
    assert not list(out.glob("*.tgb"))  # under temporary names till make_durable
    assert make_durable(pending) == [None, None, None]
    for n in (1, 2, 3):
        write_bundle(out / f"x{n}.tgb", release_draft(trust, sequence=n,
                                                      bundle_id=f"billing-2.4.0-{n}"),
                     files, [trust.release_key])
        assert (out / f"b{n}.tgb").read_bytes() == (out / f"x{n}.tgb").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"b{n}.tgb" for n in (1, 2, 3)] + [f"x{n}.tgb" for n in (1, 2, 3)])


def test_a_payload_section_over_the_memory_bound_is_left_to_write_bundle(
        trust: TrustKit, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepared_mod, "ASSEMBLE_BYTES", 100_000)
    assert prepare_payloads(_payloads(src), tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no spool left


REFUSED: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("other files", {"files": ()}, ValueError, "must be the prepared entries"),
    ("another issuer", {"issuer": "ab" * 32}, ValueError, "issuer"),
    ("too many secrets", {"secrets": tuple(SecretEntry(f"s{i}", "agent-1", b"x")
                                           for i in range(DEFAULT_LIMITS.max_secrets + 1))},
     LimitExceededError, "max_secrets"),
]


@pytest.mark.parametrize(("what", "changes", "error", "message"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_what_write_prepared_refuses_leaves_nothing(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path, what: str,
        changes: dict[str, Any], error: type[Exception], message: str) -> None:
    prepared = prepare_payloads(_payloads(src), tmp_path)
    assert prepared is not None
    draft = release_draft(trust, files=prepared.entries)
    with pytest.raises(error, match=message):
        write_prepared(out / "b.tgb", dataclasses.replace(draft, **changes), prepared,
                       [trust.release_key])
    assert os.listdir(out) == []


def test_an_envelope_over_its_limit_is_refused_and_leaves_nothing(
        trust: TrustKit, src: Path, out: Path, tmp_path: Path) -> None:
    prepared = prepare_payloads(_payloads(src), tmp_path)
    assert prepared is not None
    small = dataclasses.replace(DEFAULT_LIMITS, max_envelope_bytes=512)
    with pytest.raises(LimitExceededError, match="max_envelope_bytes"):
        write_prepared(out / "b.tgb", release_draft(trust, files=prepared.entries), prepared,
                       [trust.release_key], limits=small)
    assert os.listdir(out) == []
