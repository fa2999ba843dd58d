"""Plan (preflight) bundles: docs/bundle-format.md §6.11.

A plan is checked exactly like a release bundle (signature by the release role, target,
root version, expiry) but is of its own kind and payload type, so a plan can never be taken
for a deployment nor a deployment for a plan, and carries nothing a deployment needs beyond
the steps and files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bundle.container import (
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
)
from bundle.errors import (
    BundleError,
    BundleSignatureError,
    ExpiredError,
    KindError,
    ManifestError,
    MisaddressedError,
    ReplayError,
)
from bundle.manifest import (
    KIND_PLAN,
    ChainInfo,
    Manifest,
    SecretEntry,
    Target,
)
from bundle.reader import ExpectPlan, ExpectRelease, VerifierState
from bundle.writer import plan_manifest, write_bundle
from signing.envelope import TYPE_APPROVAL, TYPE_PLAN, TYPE_RELEASE, sign_envelope
from signing.keys import SigningKey
from tests.bundle.kit import AGENT, NOW, make_files, release_draft, staging_entries, verify
from tests.fixtures.trust import TrustKit


def _plan(trust: TrustKit, **changes: Any) -> Manifest:
    return dataclasses.replace(release_draft(trust), kind=KIND_PLAN, bundle_id="plan-1",
                               **changes)


def _write(trust: TrustKit, out: Path, src: Path, **changes: Any) -> Path:
    files = make_files(src, {"checks/db.sql": b"select 1;\n"})
    return write_bundle(out / "p.tgp", _plan(trust, **changes), files,
                        [trust.release_key]).paths[0]


def test_plan_round_trip_and_payload_type(trust: TrustKit, src: Path, out: Path,
                                          staging: Path) -> None:
    path = _write(trust, out, src)
    v = verify(path, trust, staging, expect=ExpectPlan(AGENT))
    assert v.manifest.kind == KIND_PLAN
    assert v.manifest.payload_type == TYPE_PLAN
    assert v.files["checks/db.sql"].read_bytes() == b"select 1;\n"
    # The plan's own state comes back; the caller keeps it apart from the deployment state.
    assert (v.state.root_version, v.state.sequence) == (1, 1)
    again = Manifest.from_bytes(v.manifest.to_bytes(), 1 << 20)
    assert again == v.manifest


def test_plan_is_never_a_release_nor_a_release_a_plan(trust: TrustKit, src: Path, out: Path,
                                                       staging: Path) -> None:
    plan = _write(trust, out, src)
    with pytest.raises(KindError, match="payload type"):
        verify(plan, trust, staging, expect=ExpectRelease(AGENT))
    release = write_bundle(out / "r.tgb", release_draft(trust), [], [trust.release_key])
    with pytest.raises(KindError, match="payload type"):
        verify(release.paths[0], trust, staging, expect=ExpectPlan(AGENT))
    assert staging_entries(staging) == []


def test_plan_signed_as_a_release_type_is_refused(trust: TrustKit, out: Path,
                                                  staging: Path) -> None:
    """A plan manifest inside a release-typed envelope is refused on its kind (threat 11)."""
    m = _plan(trust)
    envelope = sign_envelope(TYPE_RELEASE, m.to_bytes(), [trust.release_key])
    path = out / "mixed.tgb"
    path.write_bytes(encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
                     + encode_member(ENVELOPE_NAME, envelope) + END_OF_ARCHIVE)
    with pytest.raises(KindError, match="plan bundle, expected a release bundle"):
        verify(path, trust, staging, expect=ExpectRelease(AGENT))
    assert staging_entries(staging) == []


@pytest.mark.parametrize(("changes", "expect", "state", "now", "error", "match"), [
    ({}, ExpectPlan("agent-2"), None, NOW, MisaddressedError, "not to agent 'agent-2'"),
    ({"target": Target(environment="prod")}, ExpectPlan(AGENT, "staging"), None, NOW,
     MisaddressedError, "environment 'prod'"),
    ({}, ExpectPlan(AGENT), VerifierState(1, 1, 0), NOW, ReplayError, "sequence 1 is not newer"),
    ({}, ExpectPlan(AGENT), None, NOW + 8 * 86400, ExpiredError, "expired"),
])
def test_plan_checked_like_a_release(trust: TrustKit, src: Path, out: Path, staging: Path,
                                     changes: dict[str, Any], expect: ExpectPlan,
                                     state: VerifierState | None, now: int,
                                     error: type[BundleError], match: str) -> None:
    path = _write(trust, out, src, **changes)
    with pytest.raises(error, match=match):
        verify(path, trust, staging, expect=expect, state=state, now=now)
    assert staging_entries(staging) == []


def test_plan_signed_by_another_key_is_refused(trust: TrustKit, out: Path,
                                               staging: Path) -> None:
    other = SigningKey.generate()
    m = dataclasses.replace(_plan(trust), issuer=other.key_id)
    path = write_bundle(out / "p.tgp", m, [], [other]).paths[0]
    with pytest.raises(BundleSignatureError):
        verify(path, trust, staging, expect=ExpectPlan(AGENT))
    assert staging_entries(staging) == []


@pytest.mark.parametrize(("changes", "match"), [
    ({"secrets": (SecretEntry("db", AGENT, b"x"),)}, "secrets: a plan bundle carries no"),
    ({"chain": ChainInfo()}, "chain: only a release bundle has a chain"),
    ({"target": Target(hub="hub-1")}, "target: a plan bundle names agents"),
    ({"release": None}, "release: a plan bundle has a release object"),
])
def test_plan_manifest_rules(trust: TrustKit, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        _plan(trust, **changes)


def test_plan_manifest_from_a_release_source(trust: TrustKit, src: Path) -> None:
    files = make_files(src, {"a.sql": b"select 1;\n"})

    class Source:
        product, version, description = "billing", "2.4.0", ""
        content_hash = "cd" * 32
        steps = ({"name": "schema", "kind": "sql"},)

    source: Any = Source()
    source.files = tuple(
        type("F", (), {"name": f.name, "path": f.path, "size": 10, "sha256": "00" * 32})()
        for f in files)
    m, payloads = plan_manifest(source, bundle_id="plan-7", issuer=trust.release_key.key_id,
                                target=Target(environment="prod"), root_version=1, sequence=7,
                                created=NOW, expires=NOW + 3600, counter=3, author="alice")
    assert m.kind == KIND_PLAN and m.sequence == 7
    assert m.approvals == () and m.chain is None and m.policy is None and m.secrets == ()
    # Approvals may ride along (§6.10): a site that requires them runs check scripts then.
    approval = sign_envelope(TYPE_APPROVAL, b"{}", [SigningKey.generate()])
    assert dataclasses.replace(m, approvals=(approval,)).approvals == (approval,)
    assert [dict(s) for s in m.steps] == [{"name": "schema", "kind": "sql"}]
    assert [p.name for p in payloads] == ["a.sql"]
