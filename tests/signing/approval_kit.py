"""Roots with approval delegations and approvals, built in memory for the approval tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from signing.approvals import ApprovalDocument, AttestationDocument, AttestedApprover
from signing.delegations import Approver, Delegation
from signing.roots import KeyEntry, RootDocument
from tests.signing.helpers import DAY, NOW, Ring, root_doc

HASH = "ab" * 32
OTHER_HASH = "cd" * 32
#: approver name -> group, for the ring keys ``appr-<name>``
PEOPLE = {"alice": "dba", "bob": "ops", "carol": "dba", "dave": "sec"}


def delegated_root(
    ring: Ring,
    approvals: Mapping[str, Delegation] | None = None,
    *,
    approval_role: Sequence[str] = (),
    approver_expires: Mapping[str, int] | None = None,
    revoked: Sequence[str] = (),
    **kw: Any,
) -> RootDocument:
    """``root_doc`` plus every ``PEOPLE`` approver key, the optional approval role and
    ``approvals`` (default: prod needs 2 signed approvals from 2 groups)."""
    doc = root_doc(ring, **kw)
    keys = dict(doc.keys)
    for name in PEOPLE:
        key = ring[f"appr-{name}"]
        keys[key.key_id] = KeyEntry(key.public, (approver_expires or {}).get(name))
    roles = dict(doc.roles)
    if approval_role:
        ids = []
        for name in approval_role:
            keys[ring[name].key_id] = KeyEntry(ring[name].public)
            ids.append(ring[name].key_id)
        roles["approval"] = (tuple(ids), 1)
    if approvals is None:
        approvals = {"prod": signed(ring, 2, 2)}
    return replace(doc, keys=keys, roles=roles, approvals=dict(approvals),
                   revoked=doc.revoked | {ring[n].key_id for n in revoked})


def signed(ring: Ring, threshold: int, min_groups: int,
           people: Sequence[str] = tuple(PEOPLE)) -> Delegation:
    return Delegation("signed", threshold, min_groups,
                      {ring[f"appr-{p}"].key_id: Approver(p, PEOPLE[p]) for p in people})


def approval(name: str, *, product: str = "billing", version: str = "1.4.0",
             content_hash: str = HASH, environments: Sequence[str] = ("prod",),
             at: int = NOW - 3600, expires: int = NOW + 7 * DAY,
             comment: str = "") -> ApprovalDocument:
    return ApprovalDocument(product, version, content_hash, tuple(environments), name, at,
                            expires, comment)


def attestation(names: Sequence[str], *, content_hash: str = HASH,
                environments: Sequence[str] = ("prod",), issued: int = NOW - 60,
                expires: int = NOW + DAY) -> AttestationDocument:
    return AttestationDocument("billing", "1.4.0", content_hash, tuple(environments),
                               tuple(AttestedApprover(n, PEOPLE.get(n, "ops"), issued - 10)
                                     for n in names), issued, expires)
