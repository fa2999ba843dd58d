"""The sequence chain: the manifest's ``chain`` field (§6.8) and the rule of §9.7."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bundle.chain import collect_lost, declared_lost, missing_predecessor
from bundle.errors import ManifestError
from bundle.manifest import ChainInfo, ChainLink, LostBundle, Manifest
from signing.keys import SigningKey
from signing.strictjson import dumps_canonical
from tests.bundle.kit import release_draft, result_draft
from tests.fixtures.trust import TrustKit

DAY = 1_796_083_200  # 2026-12-01T00:00:00Z


def link(seq: int, rv: int = 1) -> ChainLink:
    return ChainLink(rv, seq, f"hello-{seq}", "hello", f"1.0.{seq}", DAY, "carol")


def lost(seq: int, prev: int | None) -> LostBundle:
    return LostBundle(link(seq), None if prev is None else link(prev), "stick lost", "carol",
                      DAY + 60)


def chained(trust: TrustKit, seq: int, prev: int | None,
            lost_: tuple[LostBundle, ...] = ()) -> Manifest:
    return release_draft(trust, bundle_id=f"hello-{seq}", sequence=seq,
                         chain=ChainInfo(None if prev is None else link(prev), lost_))


def test_round_trip_and_description(trust: TrustKit) -> None:
    m = chained(trust, 10, 9, (lost(8, 7),))
    assert Manifest.from_bytes(m.to_bytes(), 1 << 20) == m
    assert link(9).describe() == "sequence 9, hello 1.0.9, exported 2026-12-01 by carol"
    assert "root version 2" in link(9, rv=2).describe()


def test_a_manifest_without_chain_keeps_its_bytes(trust: TrustKit) -> None:
    """Manifests written before the field existed parse and re-serialise identically."""
    m = release_draft(trust)
    data = m.to_bytes()
    assert b'"chain"' not in data
    assert Manifest.from_bytes(data, 1 << 20) == m
    result = result_draft(SigningKey.generate())
    assert b'"chain"' not in result.to_bytes()


def _with(m: Manifest, path: list[Any], value: Any) -> bytes:
    doc = json.loads(m.to_bytes())
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return dumps_canonical(doc)


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (["chain"], None, "chain: is omitted when there is none, never null"),
        (["chain", "previous", "sequence"], 10, "chain.previous: must come before this bundle"),
        (["chain", "previous", "sequence"], 11, "chain.previous: must come before this bundle"),
        (["chain", "lost", 0, "bundle", "sequence"], 12, "a lost bundle must come before"),
        (["chain", "lost", 0, "previous", "sequence"], 8,
         "previous: must come before the lost bundle"),
        (["chain", "previous", "exported_by"], "", "exported_by: must not be empty"),
        (["chain", "previous", "extra"], 1, "field 'extra' is not allowed"),
        (["chain", "lost", 0, "reason"], "", "reason: must not be empty"),
    ],
)
def test_malformed_chains_are_refused(trust: TrustKit, path: list[Any], value: Any,
                                      error: str) -> None:
    m = chained(trust, 10, 9, (lost(8, 7),))
    with pytest.raises(ManifestError, match=error):
        Manifest.from_bytes(_with(m, path, value), 1 << 20)


def test_a_decision_listed_twice_and_a_chain_in_a_result_are_refused(trust: TrustKit) -> None:
    with pytest.raises(ManifestError, match="listed twice"):
        ChainInfo(link(9), (lost(8, 7), lost(8, 7)))
    with pytest.raises(ManifestError, match="only a release bundle has a chain"):
        result_draft(SigningKey.generate(), chain=ChainInfo(link(1)))


@pytest.mark.parametrize(
    ("seq", "prev", "decisions", "accepted", "waits_for"),
    [
        (10, 9, (), (1, 9), None),  # the predecessor was applied
        (10, 9, (), (1, 12), None),  # behind the accepted position (another counter)
        (10, 9, (), (1, 8), 9),  # missing
        (10, None, (), (1, 0), None),  # the first of its chain
        (10, 9, (lost(9, 8),), (1, 8), None),  # lost, and its own predecessor applied
        (10, 9, (lost(9, 8),), (1, 7), 8),  # lost, but its predecessor is missing too
        (10, 9, (lost(9, 8), lost(8, 7)), (1, 7), None),  # two lost in a row
        (10, 9, (lost(9, None),), (1, 0), None),  # the lost one was the first
    ],
)
def test_missing_predecessor(trust: TrustKit, seq: int, prev: int | None,
                             decisions: tuple[LostBundle, ...], accepted: tuple[int, int],
                             waits_for: int | None) -> None:
    m = chained(trust, seq, prev, decisions)
    missing = missing_predecessor(m, accepted)
    assert (missing.sequence if missing else None) == waits_for
    # Decisions learnt from another verified bundle count the same way.
    plain = chained(trust, seq, prev)
    missing = missing_predecessor(plain, accepted, collect_lost([m.chain]))
    assert (missing.sequence if missing else None) == waits_for


def test_declared_lost_needs_position_and_bundle_id(trust: TrustKit) -> None:
    known = collect_lost([ChainInfo(link(10), (lost(9, 8),))])
    assert declared_lost(chained(trust, 9, 8), known) is not None
    other = release_draft(trust, bundle_id="another-9", sequence=9)
    assert declared_lost(other, known) is None
    assert declared_lost(chained(trust, 7, 6), known) is None
