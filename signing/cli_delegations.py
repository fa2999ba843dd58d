"""Reading the approval delegations an operator writes for ``keys root init/rotate --approvals``.

The file (strict JSON) names approver *key files* rather than key ids, so nobody copies hex
by hand; paths are relative to the file::

    {"prod": {"mode": "signed", "threshold": 2, "min_groups": 2,
              "approvers": [{"name": "alice", "group": "dba", "key": "alice.key.pub"},
                            {"name": "bob", "group": "ops", "key": "bob.key.pub"}]},
     "*":    {"mode": "hub", "threshold": 1, "min_groups": 1}}

It becomes the root's ``approvals`` object (``signing.delegations``, whose rules are checked
when the root is parsed back before anything is written).
"""

from __future__ import annotations

import os
from typing import Any

from signing.delegations import Approver, Delegation
from signing.errors import KeyFileError, RootFormatError, StrictJSONError
from signing.keyfile import read_bounded, read_key_info
from signing.roots import KeyEntry, RootDocument
from signing.strictjson import loads_strict

__all__ = [
    "MAX_DELEGATION_FILE_BYTES",
    "carry_delegations",
    "check_parsed",
    "delegations_json",
    "read_delegation_file",
]

MAX_DELEGATION_FILE_BYTES = 256 * 1024  # bytes
_FIELDS = frozenset({"mode", "threshold", "min_groups", "approvers"})


def read_delegation_file(path: str) -> tuple[dict[str, Delegation], dict[str, KeyEntry]]:
    """The delegations of ``path`` and the approver keys they need in the root's ``keys``.

    Only the file's shape and its key files are checked here; the delegation rules are the
    root parser's (the caller builds the root and parses it back).

    Raises:
        KeyFileError: the file or a key file it names is unreadable, malformed, not a public
            approver key, or one key is listed under two names in one environment.
    """
    data = read_bounded(path, MAX_DELEGATION_FILE_BYTES)
    try:
        doc = loads_strict(data, MAX_DELEGATION_FILE_BYTES)
    except StrictJSONError as exc:
        raise KeyFileError(f"{path}: not strict JSON: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise KeyFileError(f"{path}: must be an object of environment -> delegation")
    base = os.path.dirname(os.path.abspath(path))
    delegations: dict[str, Delegation] = {}
    keys: dict[str, KeyEntry] = {}
    for env, spec in doc.items():
        where = f"{path}: {env[:80]!r}"
        if not isinstance(spec, dict) or not set(spec) <= _FIELDS or not {
                "mode", "threshold", "min_groups"} <= set(spec):
            raise KeyFileError(f"{where}: must have mode, threshold, min_groups[, approvers]")
        approvers: dict[str, Approver] = {}
        raw = spec.get("approvers", [])
        if not isinstance(raw, list):
            raise KeyFileError(f"{where}: approvers must be a list of {{name, group, key}}")
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict) or set(entry) != {"name", "group", "key"} or not all(
                    isinstance(v, str) for v in entry.values()):
                raise KeyFileError(f"{where}: approvers[{i}] must have exactly the string "
                                   "fields name, group, key (a public key file)")
            key_path = os.path.join(base, entry["key"])
            info = read_key_info(key_path)
            if info.kind != "public":
                raise KeyFileError(f"{key_path} is a private key file; give its .pub file")
            if info.role != "approver":
                raise KeyFileError(f"{key_path} holds a {info.role} key, an approver key is "
                                   "needed (tiangong keys generate --role approver)")
            if info.key_id in approvers:
                raise KeyFileError(f"{where}: {key_path} is listed twice")
            approvers[info.key_id] = Approver(entry["name"], entry["group"])
            keys[info.key_id] = KeyEntry(info.ed25519_public())
        delegations[env] = Delegation(spec["mode"], spec["threshold"], spec["min_groups"],
                                      approvers)
    return delegations, keys


def delegations_json(doc: RootDocument) -> dict[str, Any]:
    """The delegations of ``doc`` for ``keys root show --json`` (key ids with names)."""
    out: dict[str, Any] = {}
    for env, d in sorted(doc.approvals.items()):
        out[env] = {**d.to_json(), "approvers": [
            {"key_id": kid, "name": a.name, "group": a.group,
             "revoked": kid in doc.revoked, "expires": doc.keys[kid].expires}
            for kid, a in sorted(d.approvers.items(), key=lambda x: x[1].name)]}
    return out


def check_parsed(doc: RootDocument) -> None:
    """Parse ``doc`` back as a verifier will, so a bad delegation is named before signing.

    Raises:
        RootFormatError: a delegation (or anything else) breaks a rule.
    """
    RootDocument.from_bytes(doc.to_bytes())


def carry_delegations(old: RootDocument, revoked: set[str]
                      ) -> tuple[dict[str, Delegation], dict[str, KeyEntry]]:
    """``old``'s delegations without the approver keys now ``revoked``, and their keys.

    Raises:
        RootFormatError: a delegation would be left with fewer approvers than its threshold
            (or groups than its min_groups).
    """
    out: dict[str, Delegation] = {}
    keys: dict[str, KeyEntry] = {}
    for env, d in old.approvals.items():
        kept = {kid: a for kid, a in d.approvers.items()
                if kid not in revoked and kid not in old.revoked}
        if d.mode == "signed" and (len(kept) < d.threshold
                                   or len({a.group for a in kept.values()}) < d.min_groups):
            raise RootFormatError(
                f"the delegation of environment {env!r} would keep {len(kept)} approver(s) "
                f"after revocation, fewer than its threshold {d.threshold} (or its "
                f"{d.min_groups} groups); give --approvals FILE with the new approvers")
        out[env] = Delegation(d.mode, d.threshold, d.min_groups, kept)
        keys.update({kid: old.keys[kid] for kid in kept})
    return out, keys
