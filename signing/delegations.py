"""Approval delegations of the root document: who may approve a release for an environment.

The optional top-level ``approvals`` object of a root payload (docs/keys-and-trust.md,
"Approval delegations") maps an environment name, or ``"*"`` for every environment not
listed, to a :class:`Delegation`::

    {"mode": "signed" | "hub", "threshold": 2, "min_groups": 1,
     "approvers": {"<key id>": {"name": "alice", "group": "dba"}}}

* mode ``signed``: each approver signs an approval with a personal key listed in the root's
  ``keys`` (in no role); ``threshold`` distinct listed keys must approve.
* mode ``hub``: the hub's ``approval`` role signs an attestation naming the approvers;
  ``approvers`` is ``{}`` and the root must have the ``approval`` role.
* Both: the approvers counted must come from at least ``min_groups`` distinct groups.

This module parses and checks the delegations themselves (:func:`parse_delegations`), given
what the rest of the root says (its keys and which key serves which role); it does no I/O and
does not verify approvals (``signing.approvals`` does).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from signing.errors import RootFormatError

__all__ = [
    "ANY_ENVIRONMENT",
    "MAX_APPROVERS",
    "MAX_DELEGATIONS",
    "MODES",
    "Approver",
    "Delegation",
    "check_text",
    "delegation_for",
    "parse_delegations",
]

ANY_ENVIRONMENT = "*"
MODES = ("signed", "hub")
MAX_DELEGATIONS = 256  # environments one root may delegate
MAX_APPROVERS = 64  # approver keys of one delegation
MAX_NAME_CHARS = 256  # environment, approver and group names (characters)
_FIELDS = frozenset({"mode", "threshold", "min_groups", "approvers"})


@dataclass(frozen=True)
class Approver:
    """A person whose personal key may approve: the name they approve as, and their group."""

    name: str
    group: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group}


@dataclass(frozen=True)
class Delegation:
    """What one environment requires before a release bundle may run there."""

    mode: str
    threshold: int
    min_groups: int
    approvers: Mapping[str, Approver]  # key id -> approver (mode "signed"; empty for "hub")

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "min_groups": self.min_groups,
            "approvers": {kid: a.to_json() for kid, a in sorted(self.approvers.items())},
        }

    def describe(self) -> str:
        """``2 approvals from 2 groups`` — what an operator reads in a refusal."""
        approvals = "approval" if self.threshold == 1 else "approvals"
        groups = "group" if self.min_groups == 1 else "groups"
        how = "signed by approver keys" if self.mode == "signed" else "attested by the hub"
        return f"{self.threshold} {approvals} from {self.min_groups} {groups} ({how})"


def check_text(value: object, what: str, *, allow_star: bool = False) -> str:
    """A name: a non-empty string of at most 256 characters without control characters.

    Raises:
        RootFormatError: naming ``what`` and the rule.
    """
    if not isinstance(value, str) or not value:
        raise RootFormatError(f"{what} must be a non-empty string")
    if len(value) > MAX_NAME_CHARS:
        raise RootFormatError(f"{what} is {len(value)} characters, over the limit of "
                              f"{MAX_NAME_CHARS}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF
           for c in value):
        raise RootFormatError(f"{what} contains control characters")
    if value == ANY_ENVIRONMENT and not allow_star:
        raise RootFormatError(f"{what} may not be '*'")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_delegations(
    value: object,
    *,
    keys: Collection[str],
    role_of: Mapping[str, str],
    has_approval_role: bool,
) -> dict[str, Delegation]:
    """Parse and check the ``approvals`` object of a root payload.

    Args:
        keys: the key ids listed in the root's ``keys``.
        role_of: key id -> the role it serves (a key in a role may not be an approver).
        has_approval_role: whether the root has the optional ``approval`` role.

    Raises:
        RootFormatError: the first rule broken, naming the environment and the numbers.
    """
    if not isinstance(value, dict):
        raise RootFormatError("approvals must be an object of environment -> delegation")
    if not value:
        raise RootFormatError("approvals is omitted when no environment is delegated, "
                              "never an empty object")
    if len(value) > MAX_DELEGATIONS:
        raise RootFormatError(f"approvals delegates {len(value)} environments, over the limit "
                              f"of {MAX_DELEGATIONS}")
    out: dict[str, Delegation] = {}
    for env, spec in value.items():
        check_text(env, "approvals: environment name", allow_star=True)
        out[env] = _parse_one(env, spec, keys, role_of, has_approval_role)
    return out


def _parse_one(env: str, spec: object, keys: Collection[str], role_of: Mapping[str, str],
               has_approval_role: bool) -> Delegation:
    where = f"approvals[{env[:80]!r}]"
    if not isinstance(spec, dict) or set(spec) != _FIELDS:
        raise RootFormatError(f"{where}: must have exactly the fields {sorted(_FIELDS)}")
    mode, threshold, min_groups = spec["mode"], spec["threshold"], spec["min_groups"]
    if mode not in MODES:
        raise RootFormatError(f"{where}: mode must be one of {', '.join(MODES)}, not "
                              f"{str(mode)[:40]!r}")
    if not _is_int(threshold) or threshold < 1:
        raise RootFormatError(f"{where}: threshold must be an integer of at least 1")
    if not _is_int(min_groups) or not 1 <= min_groups <= threshold:
        raise RootFormatError(f"{where}: min_groups must be an integer between 1 and the "
                              f"threshold ({threshold})")
    raw = spec["approvers"]
    if not isinstance(raw, dict):
        raise RootFormatError(f"{where}: approvers must be an object of key id -> "
                              "{name, group}")
    if len(raw) > MAX_APPROVERS:
        raise RootFormatError(f"{where}: {len(raw)} approvers, over the limit of "
                              f"{MAX_APPROVERS}")
    if mode == "hub":
        if raw:
            raise RootFormatError(f"{where}: mode hub lists no approvers (the hub's approval "
                                  "key attests them); approvers must be {}")
        if not has_approval_role:
            raise RootFormatError(f"{where}: mode hub needs the approval role in roles "
                                  "(the hub's approval key)")
        return Delegation(mode, threshold, min_groups, {})
    approvers: dict[str, Approver] = {}
    names: dict[str, str] = {}
    for kid, entry in raw.items():
        if kid not in keys:
            raise RootFormatError(f"{where}: approver key {kid[:16]} is not in keys")
        if kid in role_of:
            raise RootFormatError(f"{where}: key {kid[:16]} serves the role {role_of[kid]} "
                                  "and cannot also be an approver key")
        if not isinstance(entry, dict) or set(entry) != {"name", "group"}:
            raise RootFormatError(f"{where}: approver {kid[:16]} must have exactly the fields "
                                  "name, group")
        name = check_text(entry["name"], f"{where}: approver {kid[:16]} name")
        group = check_text(entry["group"], f"{where}: approver {kid[:16]} group")
        if name in names:
            raise RootFormatError(f"{where}: approver name {name[:80]!r} is used by keys "
                                  f"{names[name][:16]} and {kid[:16]}; names are unique")
        names[name] = kid
        approvers[kid] = Approver(name, group)
    if threshold > len(approvers):
        raise RootFormatError(f"{where}: threshold {threshold} is more than the "
                              f"{len(approvers)} approver(s) listed")
    groups = {a.group for a in approvers.values()}
    if min_groups > len(groups):
        raise RootFormatError(f"{where}: min_groups {min_groups} is more than the "
                              f"{len(groups)} group(s) of its approvers")
    return Delegation(mode, threshold, min_groups, approvers)


def delegation_for(delegations: Mapping[str, Delegation], environment: str
                   ) -> Delegation | None:
    """The delegation that applies to ``environment``: its own, else ``"*"``, else None."""
    found = delegations.get(environment)
    if found is None and environment != ANY_ENVIRONMENT:
        found = delegations.get(ANY_ENVIRONMENT)
    return found
