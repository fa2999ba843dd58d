"""Approval documents, and the one rule deciding whether a release may run in an environment.

Two signed document kinds (docs/keys-and-trust.md, "Approvals"), each with its own payload
type, checked before any signature like every other kind:

* an **approval** (``TYPE_APPROVAL``): one approver's approval of one release content hash for
  some environments, signed by the approver's personal key (exactly one signature);
* an **attestation** (``TYPE_APPROVAL_ATTESTATION``): the hub's list of who approved, signed by
  the root's ``approval`` role (hub-attested mode).

:func:`evaluate_approvals` applies the root's delegation for an environment
(``signing.delegations``) to a list of envelopes and returns a :class:`Verdict` with the
reason for every envelope that did not count. The agent calls it before accepting a bundle,
and the hub calls the same function before export, so both give the same message.

This module does no I/O and never raises for a bad envelope inside :func:`evaluate_approvals`:
a bad approval is a reason in the verdict, not an exception. Times are integer Unix seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signing.delegations import ANY_ENVIRONMENT, Approver, Delegation, check_text
from signing.durations import format_utc
from signing.envelope import (
    TYPE_APPROVAL,
    TYPE_APPROVAL_ATTESTATION,
    Envelope,
    count_valid,
    parse_envelope,
    sign_envelope,
)
from signing.errors import ApprovalFormatError, RootFormatError, SignatureError, StrictJSONError
from signing.keys import SigningKey
from signing.roots import RootDocument
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "MAX_APPROVAL_BYTES",
    "MAX_ATTESTED_APPROVERS",
    "MAX_COMMENT_CHARS",
    "ApprovalDocument",
    "AttestationDocument",
    "AttestedApprover",
    "Counted",
    "EnvelopeReport",
    "ReleaseRef",
    "Verdict",
    "evaluate_approvals",
    "peek_approval",
    "sign_approval",
    "sign_attestation",
]

MAX_APPROVAL_BYTES = 32 * 1024  # bytes of one approval or attestation envelope
MAX_COMMENT_CHARS = 1024  # characters of an approval's comment
MAX_ATTESTED_COMMENT_CHARS = 256  # characters of each comment inside an attestation
MAX_ATTESTED_APPROVERS = 16  # approvers one attestation names
MAX_ENVIRONMENTS = 64  # environments one approval names
CLOCK_SKEW_SECONDS = 300  # an approval may be dated this far after the verifier's time floor
SPEC_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_APPROVAL_FIELDS = frozenset({"type", "spec_version", "product", "version", "content_hash",
                              "environments", "approver", "at", "expires", "comment"})
_ATTESTATION_FIELDS = frozenset({"type", "spec_version", "product", "version", "content_hash",
                                 "environments", "approvers", "issued", "expires"})


def _fail(kind: str, rule: str) -> ApprovalFormatError:
    return ApprovalFormatError(f"{kind}: {rule}")


def _name(value: object, kind: str, what: str, *, allow_star: bool = False) -> str:
    try:
        return check_text(value, what, allow_star=allow_star)
    except RootFormatError as exc:
        raise _fail(kind, str(exc)) from None


def _time(value: object, kind: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise _fail(kind, f"{what} must be a non-negative integer (Unix seconds)")
    return value


def _window(doc: Mapping[str, Any], kind: str, start: str) -> tuple[int, int]:
    """(``doc[start]``, ``doc["expires"]``), expiry strictly after the start."""
    begins = _time(doc[start], kind, start)
    expires = _time(doc["expires"], kind, "expires")
    if expires <= begins:
        raise _fail(kind, f"expires ({format_utc(expires)}) is not after {start} "
                    f"({format_utc(begins)})")
    return begins, expires


def _comment(value: object, kind: str, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _fail(kind, f"{what} must be a string")
    if len(value) > max_chars:
        raise _fail(kind, f"{what} is {len(value)} characters, over the limit of {max_chars}")
    if any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in value):
        raise _fail(kind, f"{what} contains control characters")
    return value


def _release_fields(doc: Mapping[str, Any], kind: str) -> tuple[str, str, str, tuple[str, ...]]:
    product = _name(doc["product"], kind, "product")
    version = _name(doc["version"], kind, "version")
    content_hash = doc["content_hash"]
    if not isinstance(content_hash, str) or not _HEX64.fullmatch(content_hash):
        raise _fail(kind, "content_hash must be 64 lowercase hex characters (SHA-256)")
    envs = doc["environments"]
    if not isinstance(envs, list) or not envs:
        raise _fail(kind, "environments must be a non-empty list")
    if len(envs) > MAX_ENVIRONMENTS:
        raise _fail(kind, f"{len(envs)} environments, over the limit of {MAX_ENVIRONMENTS}")
    for i, env in enumerate(envs):
        _name(env, kind, f"environments[{i}]", allow_star=True)
    if len(set(envs)) != len(envs):
        raise _fail(kind, "environments lists an environment twice")
    return product, version, content_hash, tuple(envs)


def _load(payload: bytes, kind: str, fields: frozenset[str], doc_type: str) -> dict[str, Any]:
    try:
        doc = loads_strict(payload, MAX_APPROVAL_BYTES)
    except StrictJSONError as exc:
        raise _fail(kind, f"not strict JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != fields:
        raise _fail(kind, f"must have exactly the fields {sorted(fields)}")
    if doc["type"] != doc_type or doc["spec_version"] != SPEC_VERSION or isinstance(
            doc["spec_version"], bool):
        raise _fail(kind, f"type must be {doc_type!r} with spec_version {SPEC_VERSION}")
    return doc


@dataclass(frozen=True)
class ApprovalDocument:
    """One approver's approval of one release (payload of ``TYPE_APPROVAL``)."""

    product: str
    version: str
    content_hash: str
    environments: tuple[str, ...]
    approver: str
    at: int
    expires: int
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "tiangong/approval", "spec_version": SPEC_VERSION,
                "product": self.product, "version": self.version,
                "content_hash": self.content_hash, "environments": list(self.environments),
                "approver": self.approver, "at": self.at, "expires": self.expires,
                "comment": self.comment}

    def to_bytes(self) -> bytes:
        data = dumps_canonical(self.to_json())
        ApprovalDocument.from_bytes(data)  # a document we could not read back is never signed
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ApprovalDocument:
        """Parse an approval payload strictly (canonical form required).

        Raises:
            ApprovalFormatError: naming the field and the rule.
        """
        kind = "approval"
        doc = _load(data, kind, _APPROVAL_FIELDS, "tiangong/approval")
        product, version, content_hash, envs = _release_fields(doc, kind)
        approver = _name(doc["approver"], kind, "approver")
        at, expires = _window(doc, kind, "at")
        comment = _comment(doc["comment"], kind, "comment", MAX_COMMENT_CHARS)
        out = cls(product, version, content_hash, envs, approver, at, expires, comment)
        if dumps_canonical(out.to_json()) != data:
            raise _fail(kind, "payload is not in canonical form")
        return out


@dataclass(frozen=True)
class AttestedApprover:
    name: str
    group: str
    at: int
    comment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "at": self.at, "comment": self.comment}


@dataclass(frozen=True)
class AttestationDocument:
    """The hub's list of approvers of one release (payload of ``TYPE_APPROVAL_ATTESTATION``)."""

    product: str
    version: str
    content_hash: str
    environments: tuple[str, ...]
    approvers: tuple[AttestedApprover, ...]
    issued: int
    expires: int

    def to_json(self) -> dict[str, Any]:
        return {"type": "tiangong/approval-attestation", "spec_version": SPEC_VERSION,
                "product": self.product, "version": self.version,
                "content_hash": self.content_hash, "environments": list(self.environments),
                "approvers": [a.to_json() for a in self.approvers],
                "issued": self.issued, "expires": self.expires}

    def to_bytes(self) -> bytes:
        data = dumps_canonical(self.to_json())
        AttestationDocument.from_bytes(data)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationDocument:
        """Parse an attestation payload strictly (canonical form required).

        Raises:
            ApprovalFormatError: naming the field and the rule.
        """
        kind = "approval attestation"
        doc = _load(data, kind, _ATTESTATION_FIELDS, "tiangong/approval-attestation")
        product, version, content_hash, envs = _release_fields(doc, kind)
        issued, expires = _window(doc, kind, "issued")
        raw = doc["approvers"]
        if not isinstance(raw, list) or not raw:
            raise _fail(kind, "approvers must be a non-empty list")
        if len(raw) > MAX_ATTESTED_APPROVERS:
            raise _fail(kind, f"{len(raw)} approvers, over the limit of "
                        f"{MAX_ATTESTED_APPROVERS}")
        approvers: list[AttestedApprover] = []
        for i, entry in enumerate(raw):
            what = f"approvers[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"name", "group", "at", "comment"}:
                raise _fail(kind, f"{what} must have exactly the fields at, comment, group, name")
            a = AttestedApprover(
                _name(entry["name"], kind, f"{what}.name"),
                _name(entry["group"], kind, f"{what}.group"),
                _time(entry["at"], kind, f"{what}.at"),
                _comment(entry["comment"], kind, f"{what}.comment", MAX_ATTESTED_COMMENT_CHARS))
            if a.at > issued:
                raise _fail(kind, f"{what}.at ({format_utc(a.at)}) is after issued "
                            f"({format_utc(issued)})")
            if any(b.name == a.name for b in approvers):
                raise _fail(kind, f"approver {a.name[:80]!r} is listed twice")
            approvers.append(a)
        out = cls(product, version, content_hash, envs, tuple(approvers), issued, expires)
        if dumps_canonical(out.to_json()) != data:
            raise _fail(kind, "payload is not in canonical form")
        return out


def sign_approval(doc: ApprovalDocument, key: SigningKey) -> bytes:
    """The canonical envelope of ``doc`` signed by the approver's personal ``key``.

    Raises:
        ApprovalFormatError: ``doc`` breaks a rule (nothing is signed).
    """
    return sign_envelope(TYPE_APPROVAL, doc.to_bytes(), [key])


def sign_attestation(doc: AttestationDocument, keys: Sequence[SigningKey]) -> bytes:
    """The canonical envelope of ``doc`` signed by the hub's approval key(s).

    Raises:
        ApprovalFormatError: ``doc`` breaks a rule (nothing is signed).
    """
    return sign_envelope(TYPE_APPROVAL_ATTESTATION, doc.to_bytes(), keys)


def peek_approval(envelope: bytes) -> tuple[Envelope, ApprovalDocument | AttestationDocument]:
    """The envelope and document of an approval file WITHOUT checking any signature.

    For ``keys approval show`` and for the hub to file an upload under its release before
    :func:`evaluate_approvals` judges it; nothing may be trusted from it.

    Raises:
        SignatureError: the envelope is malformed or of another payload type.
        ApprovalFormatError: the payload is malformed.
    """
    env = parse_envelope(envelope, MAX_APPROVAL_BYTES)
    if env.payload_type == TYPE_APPROVAL:
        return env, ApprovalDocument.from_bytes(env.payload)
    if env.payload_type == TYPE_APPROVAL_ATTESTATION:
        return env, AttestationDocument.from_bytes(env.payload)
    raise SignatureError(f"payload type is {env.payload_type[:100]!r}, not an approval "
                         f"({TYPE_APPROVAL}) nor an approval attestation")


# -- the rule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRef:
    """The fields of the verified manifest an approval must match (``release`` of §6.3)."""

    product: str
    version: str
    author: str


@dataclass(frozen=True)
class Counted:
    """One approver counted towards the threshold."""

    name: str
    group: str
    key_id: str | None  # the personal key (mode signed); None when attested by the hub

    @property
    def label(self) -> str:
        return f"{self.name}/{self.group}"


@dataclass(frozen=True)
class EnvelopeReport:
    """What became of one envelope: who it names (as far as known) and why it did not count."""

    index: int
    kind: str  # approval | attestation | unknown
    who: str
    counted: tuple[str, ...]  # approver names it contributed
    reason: str | None  # None when it counted fully

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "who": self.who,
                "counted": list(self.counted), "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate_approvals`. ``ok`` is True when nothing is required."""

    environment: str
    delegation: Delegation | None
    ok: bool
    required: str
    counted: tuple[Counted, ...]
    envelopes: tuple[EnvelopeReport, ...]

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(c.group for c in self.counted)

    @property
    def message(self) -> str:
        """``environment prod needs 2 approvals from 2 groups; found 1 valid (alice/dba);
        bob: signature does not verify`` (one line, for results, logs and the hub)."""
        if self.delegation is None:
            return f"environment {self.environment} requires no approvals"
        found = (f"found {len(self.counted)} valid"
                 + (f" ({', '.join(c.label for c in self.counted)})" if self.counted else ""))
        if not self.ok and len(self.counted) >= self.delegation.threshold:
            groups = len(self.groups)
            found += f" from only {groups} group" + ("" if groups == 1 else "s")
        if not self.envelopes:
            found += " (the bundle carries no approvals)"
        head = f"environment {self.environment} needs {self.required}; {found}"
        notes = [f"{r.who}: {r.reason}" for r in self.envelopes if r.reason is not None]
        return "; ".join([head, *notes])

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "ok": self.ok, "required": self.required,
                "mode": None if self.delegation is None else self.delegation.mode,
                "counted": [{"name": c.name, "group": c.group, "key_id": c.key_id}
                            for c in self.counted],
                "envelopes": [r.to_json() for r in self.envelopes], "message": self.message}


def evaluate_approvals(
    root: RootDocument,
    environment: str,
    release: ReleaseRef,
    content_hash: str,
    envelopes: Sequence[bytes],
    floor: int,
) -> Verdict:
    """Do ``envelopes`` satisfy the delegation of ``environment`` in ``root``?

    Args:
        root: the trusted root (after any updates the bundle carried).
        environment: the verifier's OWN environment (the agent's enrolled one, never the
            bundle's claim; the hub's export target).
        release: product, version and author from the verified manifest.
        content_hash: recomputed from the verified manifest (docs/release-format.md §5).
        envelopes: the approval and attestation envelopes, as bytes.
        floor: the verifier's time floor (Unix seconds): an approval counts when
            ``at <= floor + 300`` and ``expires > floor``.

    Never raises for bad envelopes: each gets a reason in the verdict.
    """
    delegation = root.delegation(environment)
    if delegation is None:
        return Verdict(environment, None, True, "no approvals", (), ())
    counted: dict[str, Counted] = {}  # distinct key id (signed) or name (hub)
    reports: list[EnvelopeReport] = []
    for index, data in enumerate(envelopes, start=1):
        reports.append(_judge(root, delegation, environment, release, content_hash, floor,
                              index, data, counted))
    found = tuple(counted.values())
    groups = {c.group for c in found}
    ok = len(found) >= delegation.threshold and len(groups) >= delegation.min_groups
    return Verdict(environment, delegation, ok, _required(delegation), found, tuple(reports))


def _required(d: Delegation) -> str:
    approvals = "approval" if d.threshold == 1 else "approvals"
    groups = "group" if d.min_groups == 1 else "groups"
    return f"{d.threshold} {approvals} from {d.min_groups} {groups}"


class _NotCounted(Exception):
    """Internal: why one envelope does not count (``who`` once the signing key is known)."""

    def __init__(self, reason: str, who: str | None = None) -> None:
        super().__init__(reason)
        self.who = who


def _judge(root: RootDocument, d: Delegation, environment: str, release: ReleaseRef,
           content_hash: str, floor: int, index: int, data: bytes,
           counted: dict[str, Counted]) -> EnvelopeReport:
    who = f"approval {index}"
    kind = "unknown"
    try:
        try:
            env = parse_envelope(data, MAX_APPROVAL_BYTES)
        except SignatureError as exc:
            raise _NotCounted(f"malformed envelope: {exc}") from None
        if env.payload_type == TYPE_APPROVAL:
            kind = "approval"
            if d.mode != "signed":
                raise _NotCounted(f"environment {environment} counts only approvals attested "
                                  "by the hub's approval key (mode hub); not counted")
            who, names = _judge_signed(root, d, release, content_hash, environment, floor,
                                       env, counted)
        elif env.payload_type == TYPE_APPROVAL_ATTESTATION:
            kind = "attestation"
            who = f"attestation {index}"
            if d.mode != "hub":
                raise _NotCounted(f"environment {environment} counts only approvals signed by "
                                  "approver keys (mode signed); an attestation is not counted")
            names, notes = _judge_attested(root, release, content_hash, environment, floor,
                                           env, counted)
            return EnvelopeReport(index, kind, who, names, "; ".join(notes) or None)
        else:
            raise _NotCounted(f"payload type {env.payload_type[:100]!r} is not an approval")
    except _NotCounted as exc:
        return EnvelopeReport(index, kind, exc.who or who, (), str(exc))
    return EnvelopeReport(index, kind, who, names, None)


def _check_release(doc: ApprovalDocument | AttestationDocument, release: ReleaseRef,
                   content_hash: str, environment: str) -> None:
    if (doc.product, doc.version) != (release.product, release.version):
        raise _NotCounted(f"approves {doc.product[:80]} {doc.version[:80]}, not "
                          f"{release.product} {release.version}")
    if doc.content_hash != content_hash:
        raise _NotCounted(f"approves content hash {doc.content_hash[:16]}…, but this bundle's "
                          f"content hashes to {content_hash[:16]}… (steps or files differ)")
    if environment not in doc.environments and ANY_ENVIRONMENT not in doc.environments:
        raise _NotCounted(f"approves environments {', '.join(doc.environments)[:200]}, not "
                          f"{environment}")


def _check_times(at: int, expires: int, floor: int, what: str) -> None:
    if at > floor + CLOCK_SKEW_SECONDS:
        raise _NotCounted(f"{what} {format_utc(at)} is in the future (time floor "
                          f"{format_utc(floor)})")
    if expires <= floor:
        raise _NotCounted(f"expired at {format_utc(expires)} (time floor {format_utc(floor)})")


def _judge_signed(root: RootDocument, d: Delegation, release: ReleaseRef, content_hash: str,
                  environment: str, floor: int, env: Envelope,
                  counted: dict[str, Counted]) -> tuple[str, tuple[str, ...]]:
    if len(env.signatures) != 1:
        raise _NotCounted(f"has {len(env.signatures)} signatures; an approval has exactly one")
    kid = env.signatures[0].keyid
    approver = d.approvers.get(kid)
    if approver is None:
        raise _NotCounted(f"signed by key {kid[:16]}, which is not an approver key of "
                          f"environment {environment} in root version {root.version}")
    try:
        return approver.name, _judge_listed(root, release, content_hash, environment, floor,
                                            env, kid, approver, counted)
    except _NotCounted as exc:
        raise _NotCounted(str(exc), approver.name) from None


def _judge_listed(root: RootDocument, release: ReleaseRef, content_hash: str,
                  environment: str, floor: int, env: Envelope, kid: str, approver: Approver,
                  counted: dict[str, Counted]) -> tuple[str, ...]:
    entry = root.keys[kid]
    if kid in root.revoked:
        raise _NotCounted(f"approver key {kid[:16]} is revoked in root version {root.version}")
    if entry.expires is not None and entry.expires <= floor:
        raise _NotCounted(f"approver key {kid[:16]} expired at {format_utc(entry.expires)}")
    if not count_valid(env, [entry.public]):
        raise _NotCounted("signature does not verify")
    try:
        doc = ApprovalDocument.from_bytes(env.payload)
    except ApprovalFormatError as exc:
        raise _NotCounted(str(exc)) from None
    if doc.approver != approver.name:
        raise _NotCounted(f"names approver {doc.approver[:80]!r}, but key {kid[:16]} belongs "
                          f"to {approver.name!r}")
    _check_release(doc, release, content_hash, environment)
    _check_times(doc.at, doc.expires, floor, "approved at")
    if approver.name == release.author:
        raise _NotCounted(f"{approver.name} is the release's author; an author cannot approve "
                          "their own release")
    if kid in counted:
        raise _NotCounted(f"a second approval by {approver.name} (counted once)")
    counted[kid] = Counted(approver.name, approver.group, kid)
    return (approver.name,)


def _judge_attested(root: RootDocument, release: ReleaseRef, content_hash: str,
                    environment: str, floor: int, env: Envelope,
                    counted: dict[str, Counted]) -> tuple[tuple[str, ...], list[str]]:
    if not root.has_role("approval"):
        raise _NotCounted(f"root version {root.version} has no approval role")
    rk = root.role_keys("approval", floor)
    good = count_valid(env, rk.keys)
    if len(good) < rk.threshold:
        raise _NotCounted(f"not signed by the hub's approval key ({len(good)} valid signature(s) "
                          f"of the approval role of root version {root.version}, "
                          f"{rk.threshold} required)")
    try:
        doc = AttestationDocument.from_bytes(env.payload)
    except ApprovalFormatError as exc:
        raise _NotCounted(str(exc)) from None
    _check_release(doc, release, content_hash, environment)
    _check_times(doc.issued, doc.expires, floor, "issued")
    names: list[str] = []
    notes: list[str] = []
    for a in doc.approvers:
        if a.name == release.author:
            notes.append(f"{a.name} is the release's author and is not counted")
            continue
        if a.name in counted:
            continue  # the same person attested twice counts once
        counted[a.name] = Counted(a.name, a.group, None)
        names.append(a.name)
    return tuple(names), notes
