"""The root's approval delegations and optional approval role (signing.delegations, roots).

Every rule of docs/keys-and-trust.md "Approval delegations" is a row of REFUSED: the root
is refused with RootFormatError naming the rule, and a TrustedRoot that was offered it as an
update is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from signing.delegations import Approver, Delegation, delegation_for
from signing.errors import RootFormatError
from signing.roots import RootDocument, TrustedRoot
from tests.signing.approval_kit import delegated_root, signed
from tests.signing.helpers import Ring, root_doc, sign_root_json, signed_root, snapshot


def _doc(ring: Ring) -> dict[str, Any]:
    return delegated_root(ring, {"prod": signed(ring, 2, 2), "*": Delegation("hub", 1, 1, {})},
                          approval_role=("approval1",)).to_json()


def _kid(ring: Ring, name: str) -> str:
    return ring[f"appr-{name}"].key_id


def _approvers(d: dict[str, Any], ring: Ring) -> dict[str, Any]:
    approvers: dict[str, Any] = d["approvals"]["prod"]["approvers"]
    return approvers


Change = Callable[[dict[str, Any], Ring], None]

REFUSED: list[tuple[str, Change, str]] = [
    ("empty-approvals", lambda d, r: d.update(approvals={}), "never an empty object"),
    ("approvals-list", lambda d, r: d.update(approvals=[]), "approvals must be an object"),
    ("empty-env-name", lambda d, r: d["approvals"].update({"": d["approvals"]["prod"]}),
     "environment name must be a non-empty string"),
    ("control-char-env", lambda d, r: d["approvals"].update({"pr\nod": d["approvals"]["prod"]}),
     "control characters"),
    ("unknown-field", lambda d, r: d["approvals"]["prod"].update(extra=1),
     "must have exactly the fields"),
    ("missing-field", lambda d, r: d["approvals"]["prod"].pop("min_groups"),
     "must have exactly the fields"),
    ("bad-mode", lambda d, r: d["approvals"]["prod"].update(mode="auto"),
     "mode must be one of signed, hub"),
    ("threshold-zero", lambda d, r: d["approvals"]["prod"].update(threshold=0),
     "threshold must be an integer of at least 1"),
    ("threshold-bool", lambda d, r: d["approvals"]["prod"].update(threshold=True),
     "threshold must be an integer"),
    ("threshold-above-approvers", lambda d, r: d["approvals"]["prod"].update(threshold=5),
     "threshold 5 is more than the 4 approver(s)"),
    ("min-groups-zero", lambda d, r: d["approvals"]["prod"].update(min_groups=0),
     "min_groups must be an integer between 1 and the threshold (2)"),
    ("min-groups-above-threshold", lambda d, r: d["approvals"]["prod"].update(min_groups=3),
     "min_groups must be an integer between 1 and the threshold (2)"),
    ("min-groups-above-groups", lambda d, r: d["approvals"]["prod"].update(
        threshold=2, min_groups=2, approvers={k: v for k, v in _approvers(d, r).items()
                                              if v["group"] == "dba"}),
     "min_groups 2 is more than the 1 group(s)"),
    ("approver-not-in-keys", lambda d, r: _approvers(d, r).update(
        {"0" * 64: {"name": "zed", "group": "x"}}), "approver key 0000000000000000 is not in keys"),
    ("approver-is-release-key", lambda d, r: _approvers(d, r).update(
        {r["release1"].key_id: {"name": "rel", "group": "x"}}),
     "serves the role release and cannot also be an approver key"),
    ("approver-is-approval-key", lambda d, r: _approvers(d, r).update(
        {r["approval1"].key_id: {"name": "hub", "group": "x"}}),
     "serves the role approval and cannot also be an approver key"),
    ("approver-extra-field", lambda d, r: _approvers(d, r)[_kid(r, "alice")].update(email="a@x"),
     "must have exactly the fields name, group"),
    ("approver-empty-name", lambda d, r: _approvers(d, r)[_kid(r, "alice")].update(name=""),
     "name must be a non-empty string"),
    ("approver-empty-group", lambda d, r: _approvers(d, r)[_kid(r, "alice")].update(group=""),
     "group must be a non-empty string"),
    ("approver-name-star", lambda d, r: _approvers(d, r)[_kid(r, "alice")].update(name="*"),
     "may not be '*'"),
    ("duplicate-name", lambda d, r: _approvers(d, r)[_kid(r, "bob")].update(name="alice"),
     "approver name 'alice' is used by keys"),
    ("hub-with-approvers", lambda d, r: d["approvals"]["*"].update(
        approvers={_kid(r, "alice"): {"name": "alice", "group": "dba"}}),
     "mode hub lists no approvers"),
    ("hub-without-approval-role", lambda d, r: d["roles"].pop("approval"),
     "mode hub needs the approval role"),
    ("approval-role-shares-release-key", lambda d, r: d["roles"]["approval"].update(
        keyids=[r["release1"].key_id]), "is listed for both roles"),
    ("unknown-role", lambda d, r: d["roles"].update(approver=d["roles"]["approval"]),
     "roles must be exactly"),
    ("unknown-top-field", lambda d, r: d.update(delegations={}), "must have exactly the fields"),
    ("delegation-not-object", lambda d, r: d["approvals"].update(prod=[]),
     "must have exactly the fields"),
    ("approvers-list", lambda d, r: d["approvals"]["prod"].update(approvers=[]),
     "approvers must be an object of key id"),
    ("env-name-too-long", lambda d, r: d["approvals"].update({"e" * 257: d["approvals"]["*"]}),
     "257 characters, over the limit of 256"),
    ("too-many-environments", lambda d, r: d["approvals"].update(
        {f"env{i}": d["approvals"]["*"] for i in range(256)}),
     "delegates 258 environments, over the limit of 256"),
    ("too-many-approvers", lambda d, r: _approvers(d, r).update(
        {f"{i:064x}": {"name": f"p{i}", "group": "g"} for i in range(61)}),
     "65 approvers, over the limit of 64"),
]


@pytest.mark.parametrize(("change", "expected"), [(c, e) for _, c, e in REFUSED],
                         ids=[n for n, _, _ in REFUSED])
def test_root_delegation_rules(change: Change, expected: str) -> None:
    ring = Ring()
    doc = _doc(ring)
    change(doc, ring)
    envelope = sign_root_json(doc, ring, ["root1"])
    with pytest.raises(RootFormatError) as info:
        TrustedRoot.pin(envelope)
    assert expected in str(info.value)
    # Offered as an update, it leaves the trusted root unchanged.
    trusted = TrustedRoot.pin(signed_root(root_doc(ring), ring, ["root1"]))
    before = snapshot(trusted)
    doc["version"] = 2
    with pytest.raises(RootFormatError):
        trusted.update(sign_root_json(doc, ring, ["root1"]))
    assert snapshot(trusted) == before


def test_delegated_root_round_trips_and_is_pinned() -> None:
    ring = Ring()
    doc = RootDocument.from_bytes(RootDocument.from_bytes(
        delegated_root(ring, {"prod": signed(ring, 2, 2), "*": Delegation("hub", 1, 1, {})},
                       approval_role=("approval1",)).to_bytes()).to_bytes())
    trusted = TrustedRoot.pin(signed_root(doc, ring, ["root1"]))
    prod = trusted.document.delegation("prod")
    assert prod is not None and prod.mode == "signed" and prod.threshold == 2
    assert prod.approvers[ring["appr-alice"].key_id] == Approver("alice", "dba")
    assert trusted.document.delegation("staging") == Delegation("hub", 1, 1, {})
    assert trusted.document.has_role("approval")
    assert set(trusted.document.role_keys("approval").keys) == {ring["approval1"].key_id}


def test_old_root_keeps_its_exact_bytes() -> None:
    """A root without delegations or approval role is written exactly as before: no
    ``approvals`` key, no ``approval`` role (the precedent of the manifest's ``chain``)."""
    ring = Ring()
    doc = root_doc(ring)
    data = doc.to_bytes()
    assert b"approval" not in data
    expected = (b'{"expires":%d,"hub_id":"hub-1","issued":%d,"keys":{' % (doc.expires, doc.issued))
    assert data.startswith(expected)
    assert RootDocument.from_bytes(data).to_bytes() == data
    assert RootDocument.from_bytes(data).approvals == {}
    assert RootDocument.from_bytes(data).delegation("prod") is None


def test_star_applies_to_unlisted_environments_only() -> None:
    ring = Ring()
    prod = signed(ring, 1, 1)
    star = Delegation("signed", 2, 1, prod.approvers)
    found = {"prod": prod, "*": star}
    assert delegation_for(found, "prod") is prod
    assert delegation_for(found, "lab") is star
    assert delegation_for({"prod": prod}, "lab") is None

