"""signing.approvals: approval and attestation documents, and evaluate_approvals.

The rule tables follow docs/keys-and-trust.md "Approvals": each row is one envelope set and
the reason the verdict must give. The same function decides at the agent and at the hub.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing.approvals import (
    ApprovalDocument,
    AttestationDocument,
    ReleaseRef,
    evaluate_approvals,
    peek_approval,
    sign_approval,
    sign_attestation,
)
from signing.delegations import Delegation
from signing.envelope import TYPE_APPROVAL, TYPE_RELEASE, sign_envelope
from signing.errors import ApprovalFormatError, SignatureError
from signing.roots import RootDocument
from signing.strictjson import dumps_canonical
from tests.signing.approval_kit import (
    HASH,
    OTHER_HASH,
    approval,
    attestation,
    delegated_root,
    signed,
)
from tests.signing.helpers import DAY, NOW, Ring

REL = ReleaseRef("billing", "1.4.0", "erin")


def _sign(ring: Ring, name: str, **kw: Any) -> bytes:
    return sign_approval(approval(name, **kw), ring[f"appr-{name}"])


# -- documents ------------------------------------------------------------------------------


def _payload(**changes: Any) -> bytes:
    doc = approval("alice").to_json()
    doc.update(changes)
    return dumps_canonical(doc)


DOC_REFUSED: list[tuple[str, bytes, str]] = [
    ("not-json", b"{", "not strict JSON"),
    ("float", b'{"at":1.5}', "not strict JSON"),
    ("extra-field", _payload(extra=1), "must have exactly the fields"),
    ("wrong-type", _payload(type="tiangong/root"), "type must be 'tiangong/approval'"),
    ("spec-version-2", _payload(spec_version=2), "spec_version 1"),
    ("spec-version-true", _payload(spec_version=True), "spec_version 1"),
    ("empty-product", _payload(product=""), "product must be a non-empty string"),
    ("uppercase-hash", _payload(content_hash="AB" * 32), "content_hash must be 64 lowercase"),
    ("short-hash", _payload(content_hash="ab"), "content_hash must be 64 lowercase"),
    ("no-environments", _payload(environments=[]), "environments must be a non-empty list"),
    ("env-twice", _payload(environments=["prod", "prod"]), "lists an environment twice"),
    ("env-not-string", _payload(environments=[1]), "environments[0] must be a non-empty"),
    ("empty-approver", _payload(approver=""), "approver must be a non-empty string"),
    ("negative-at", _payload(at=-1), "at must be a non-negative integer"),
    ("expires-before-at", _payload(expires=NOW - 7200), "is not after at"),
    ("comment-too-long", _payload(comment="x" * 1025), "over the limit of 1024"),
    ("comment-control", _payload(comment="a\x00b"), "control characters"),
    ("not-canonical", json.dumps(approval("alice").to_json()).encode(), "canonical form"),
    ("empty-version", _payload(version=""), "version must be a non-empty string"),
    ("too-many-environments", _payload(environments=[f"e{i}" for i in range(65)]),
     "65 environments, over the limit of 64"),
    ("approver-star", _payload(approver="*"), "approver may not be '*'"),
    ("at-bool", _payload(at=True), "at must be a non-negative integer"),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in DOC_REFUSED],
                         ids=[n for n, _, _ in DOC_REFUSED])
def test_approval_document_rules(data: bytes, expected: str) -> None:
    with pytest.raises(ApprovalFormatError) as info:
        ApprovalDocument.from_bytes(data)
    assert expected in str(info.value)


def _att(**changes: Any) -> bytes:
    doc = attestation(["alice"]).to_json()
    doc.update(changes)
    return dumps_canonical(doc)


ATT_REFUSED: list[tuple[str, bytes, str]] = [
    ("no-approvers", _att(approvers=[]), "approvers must be a non-empty list"),
    ("approver-twice", _att(approvers=[attestation(["alice"]).approvers[0].to_json()] * 2),
     "listed twice"),
    ("approver-extra", _att(approvers=[{**attestation(["alice"]).approvers[0].to_json(),
                                        "key": "x"}]), "must have exactly the fields"),
    ("approved-after-issued", _att(approvers=[{**attestation(["alice"]).approvers[0].to_json(),
                                               "at": NOW}]), "is after issued"),
    ("too-many", _att(approvers=[{"name": f"p{i}", "group": "g", "at": 1, "comment": ""}
                                 for i in range(17)]), "over the limit of 16"),
    ("expires-before-issued", _att(expires=NOW - 3600), "is not after issued"),
    ("wrong-type", _att(type="tiangong/approval"), "type must be"),
    ("empty-group", _att(approvers=[{**attestation(["alice"]).approvers[0].to_json(),
                                     "group": ""}]), "approvers[0].group must be a non-empty"),
    ("long-comment", _att(approvers=[{**attestation(["alice"]).approvers[0].to_json(),
                                      "comment": "x" * 257}]), "over the limit of 256"),
    ("approvers-not-list", _att(approvers={}), "approvers must be a non-empty list"),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in ATT_REFUSED],
                         ids=[n for n, _, _ in ATT_REFUSED])
def test_attestation_document_rules(data: bytes, expected: str) -> None:
    with pytest.raises(ApprovalFormatError) as info:
        AttestationDocument.from_bytes(data)
    assert expected in str(info.value)


def test_sign_refuses_a_bad_document_and_round_trips_a_good_one() -> None:
    ring = Ring()
    with pytest.raises(ApprovalFormatError):
        sign_approval(approval("alice", environments=()), ring["appr-alice"])
    env, doc = peek_approval(_sign(ring, "alice", comment="looks good\nship it"))
    assert env.payload_type == TYPE_APPROVAL and doc == approval("alice",
                                                                comment="looks good\nship it")
    with pytest.raises(SignatureError):
        peek_approval(sign_envelope(TYPE_RELEASE, b"{}", [ring["appr-alice"]]))


# -- evaluate_approvals ---------------------------------------------------------------------


def _root(ring: Ring, **kw: Any) -> RootDocument:
    return RootDocument.from_bytes(delegated_root(ring, **kw).to_bytes())


def _verdict(ring: Ring, envelopes: list[bytes], root: RootDocument | None = None,
             environment: str = "prod", release: ReleaseRef = REL,
             content_hash: str = HASH, floor: int = NOW) -> Any:
    return evaluate_approvals(root or _root(ring), environment, release, content_hash,
                              envelopes, floor)


def _tampered(ring: Ring) -> bytes:
    """bob's signature over a different payload: the signature does not verify."""
    good = json.loads(_sign(ring, "bob"))
    other = approval("bob", comment="changed").to_bytes()
    good["payload"] = base64.b64encode(other).decode()
    return dumps_canonical(good)


Case = Callable[[Ring], list[bytes]]

SIGNED_REFUSED: list[tuple[str, Case, str]] = [
    ("none", lambda r: [], "found 0 valid (the bundle carries no approvals)"),
    ("one-of-two", lambda r: [_sign(r, "alice")], "found 1 valid (alice/dba)"),
    ("same-group", lambda r: [_sign(r, "alice"), _sign(r, "carol")],
     "found 2 valid (alice/dba, carol/dba) from only 1 group"),
    ("same-key-twice", lambda r: [_sign(r, "alice"), _sign(r, "alice", comment="again")],
     "alice: a second approval by alice (counted once)"),
    ("forged-key", lambda r: [_sign(r, "alice"), sign_approval(approval("bob"), r["mallory"])],
     "approval 2: signed by key"),
    ("release-key", lambda r: [_sign(r, "alice"), sign_approval(approval("bob"), r["release1"])],
     "which is not an approver key of environment prod"),
    ("tampered", lambda r: [_sign(r, "alice"), _tampered(r)], "bob: signature does not verify"),
    ("other-content", lambda r: [_sign(r, "alice"), _sign(r, "bob", content_hash=OTHER_HASH)],
     "bob: approves content hash cdcdcdcdcdcdcdcd…, but this bundle's content hashes to "
     "abababababababab… (steps or files differ)"),
    ("other-version", lambda r: [_sign(r, "alice"), _sign(r, "bob", version="1.5.0")],
     "bob: approves billing 1.5.0, not billing 1.4.0"),
    ("other-environment", lambda r: [_sign(r, "alice"), _sign(r, "bob", environments=("lab",))],
     "bob: approves environments lab, not prod"),
    ("expired", lambda r: [_sign(r, "alice"), _sign(r, "bob", at=NOW - 9 * DAY,
                                                    expires=NOW)],
     "bob: expired at 2027-01-15T08:00:00Z"),
    ("future", lambda r: [_sign(r, "alice"), _sign(r, "bob", at=NOW + 301,
                                                   expires=NOW + DAY)],
     "bob: approved at 2027-01-15T08:05:01Z is in the future"),
    ("author", lambda r: [_sign(r, "alice"), _sign(r, "bob")],
     "bob: bob is the release's author; an author cannot approve their own release"),
    ("name-mismatch", lambda r: [_sign(r, "alice"),
                                 sign_approval(approval("dave"), r["appr-bob"])],
     "bob: names approver 'dave', but key"),
    ("two-signatures", lambda r: [_sign(r, "alice"), sign_envelope(
        TYPE_APPROVAL, approval("bob").to_bytes(), [r["appr-bob"], r["appr-dave"]])],
     "approval 2: has 2 signatures; an approval has exactly one"),
    ("attestation-in-signed-mode", lambda r: [_sign(r, "alice"), sign_attestation(
        attestation(["bob"]), [r["approval1"]])],
     "an attestation is not counted"),
    ("garbage", lambda r: [_sign(r, "alice"), b"not json"], "approval 2: malformed envelope"),
    ("release-envelope", lambda r: [_sign(r, "alice"), sign_envelope(TYPE_RELEASE, b"{}",
                                                                     [r["appr-bob"]])],
     "is not an approval"),
]


@pytest.mark.parametrize(("case", "expected"), [(c, e) for _, c, e in SIGNED_REFUSED],
                         ids=[n for n, _, _ in SIGNED_REFUSED])
def test_signed_mode_refusals(case: Case, expected: str) -> None:
    ring = Ring()
    release = replace(REL, author="bob") if expected.startswith("bob: bob is") else REL
    verdict = _verdict(ring, case(ring), root=_root(ring, approval_role=("approval1",)),
                       release=release)
    assert not verdict.ok
    assert verdict.message.startswith("environment prod needs 2 approvals from 2 groups; ")
    assert expected in verdict.message, verdict.message


def test_signed_mode_counts_two_groups() -> None:
    ring = Ring()
    verdict = _verdict(ring, [_sign(ring, "alice"), _sign(ring, "bob")])
    assert verdict.ok
    assert [c.label for c in verdict.counted] == ["alice/dba", "bob/ops"]
    assert verdict.message == ("environment prod needs 2 approvals from 2 groups; found 2 "
                               "valid (alice/dba, bob/ops)")


def test_star_environment_in_approval_counts_everywhere() -> None:
    ring = Ring()
    verdict = _verdict(ring, [_sign(ring, "alice", environments=("*",)),
                              _sign(ring, "bob", environments=("lab", "prod"))])
    assert verdict.ok


def test_revoked_and_expired_approver_keys_do_not_count() -> None:
    ring = Ring()
    root = _root(ring, revoked=("appr-bob",), approver_expires={"dave": NOW})
    verdict = _verdict(ring, [_sign(ring, "alice"), _sign(ring, "bob"), _sign(ring, "dave")],
                       root=root)
    assert not verdict.ok
    assert f"bob: approver key {ring['appr-bob'].key_id[:16]} is revoked in root version 1" \
        in verdict.message
    assert "dave: approver key" in verdict.message and "expired at" in verdict.message


def test_time_floor_not_wall_clock_decides_expiry() -> None:
    ring = Ring()
    envs = [_sign(ring, "alice"), _sign(ring, "bob", expires=NOW + 10)]
    assert _verdict(ring, envs, floor=NOW).ok
    assert not _verdict(ring, envs, floor=NOW + 10).ok


def test_environment_without_delegation_requires_nothing() -> None:
    ring = Ring()
    verdict = _verdict(ring, [], environment="lab")
    assert verdict.ok and verdict.delegation is None
    assert verdict.message == "environment lab requires no approvals"


# -- hub-attested mode ------------------------------------------------------------------------


def _hub_root(ring: Ring, threshold: int = 2, min_groups: int = 2) -> RootDocument:
    return _root(ring, approvals={"prod": Delegation("hub", threshold, min_groups, {})},
                 approval_role=("approval1",))


def _attest(ring: Ring, names: list[str], signer: str = "approval1", **kw: Any) -> bytes:
    return sign_attestation(attestation(names, **kw), [ring[signer]])


HUB_REFUSED: list[tuple[str, Case, str]] = [
    ("release-key-signed", lambda r: [_attest(r, ["alice", "bob"], "release1")],
     "attestation 1: not signed by the hub's approval key (0 valid signature(s) of the "
     "approval role of root version 1, 1 required)"),
    ("one-group", lambda r: [_attest(r, ["alice", "carol"])], "from only 1 group"),
    ("author-dropped", lambda r: [_attest(r, ["alice", "erin"])],
     "erin is the release's author and is not counted"),
    ("other-content", lambda r: [_attest(r, ["alice", "bob"], content_hash=OTHER_HASH)],
     "approves content hash cdcd"),
    ("expired", lambda r: [_attest(r, ["alice", "bob"], issued=NOW - 2 * DAY,
                                   expires=NOW - DAY)], "expired at"),
    ("personal-approvals-only", lambda r: [_sign(r, "alice"), _sign(r, "bob")],
     "counts only approvals attested by the hub's approval key (mode hub)"),
]


@pytest.mark.parametrize(("case", "expected"), [(c, e) for _, c, e in HUB_REFUSED],
                         ids=[n for n, _, _ in HUB_REFUSED])
def test_hub_mode_refusals(case: Case, expected: str) -> None:
    ring = Ring()
    verdict = _verdict(ring, case(ring), root=_hub_root(ring))
    assert not verdict.ok
    assert expected in verdict.message, verdict.message


def test_hub_mode_counts_attested_names_once() -> None:
    ring = Ring()
    verdict = _verdict(ring, [_attest(ring, ["alice"]), _attest(ring, ["alice", "bob"])],
                       root=_hub_root(ring))
    assert verdict.ok
    assert [(c.label, c.key_id) for c in verdict.counted] == [("alice/dba", None),
                                                              ("bob/ops", None)]


def test_verdict_json_names_every_envelope() -> None:
    ring = Ring()
    doc = _verdict(ring, [_sign(ring, "alice"), b"x"]).to_json()
    assert doc["ok"] is False and doc["mode"] == "signed"
    assert [e["kind"] for e in doc["envelopes"]] == ["approval", "unknown"]
    assert doc["counted"] == [{"name": "alice", "group": "dba",
                               "key_id": ring["appr-alice"].key_id}]


def test_signed_mode_threshold_one() -> None:
    ring = Ring()
    root = _root(ring, approvals={"*": signed(ring, 1, 1)})
    assert _verdict(ring, [_sign(ring, "carol", environments=("lab",))], root=root,
                    environment="lab").ok


# -- fuzz: a bad envelope is a reason, never an exception, never a counted approval -----------

_FUZZ_RING = Ring()
_FUZZ_ROOT = RootDocument.from_bytes(delegated_root(_FUZZ_RING, {
    "prod": signed(_FUZZ_RING, 1, 1)}).to_bytes())
_FUZZ_GOOD = sign_approval(approval("alice"), _FUZZ_RING["appr-alice"])


@settings(derandomize=True, max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_never_raise_nor_count(data: bytes) -> None:
    verdict = evaluate_approvals(_FUZZ_ROOT, "prod", REL, HASH, [data], NOW)
    assert not verdict.ok and verdict.counted == ()
    assert verdict.envelopes[0].reason is not None


@settings(derandomize=True, max_examples=300, deadline=None, database=None)
@given(st.data())
def test_fuzz_mutated_valid_approval_never_counts(data: st.DataObject) -> None:
    raw = bytearray(_FUZZ_GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    verdict = evaluate_approvals(_FUZZ_ROOT, "prod", REL, HASH, [mutated], NOW)
    # A flipped byte either leaves the exact same envelope (counts) or breaks it (does not).
    assert verdict.ok == (mutated == _FUZZ_GOOD)
