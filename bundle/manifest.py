"""The manifest model: one frozen dataclass per object of docs/bundle-format.md §6.

Each class validates its fields when constructed (types, ranges, names, cross-field rules), so
an invalid manifest cannot be built by the writer nor parsed by the reader. ``from_json`` takes
the strict-JSON value and refuses missing *and* unknown fields; ``to_json`` returns the value to
serialise canonically. :meth:`Manifest.from_bytes` additionally requires the one canonical byte
form (§3).

Limits that depend on configuration (counts, sizes) are checked by the verifier against
:class:`bundle.limits.Limits`, not here. This module does no I/O and never sees payload bytes.

Raises :class:`~bundle.errors.ManifestError` for every rule, with the field's path in the
message (``files[3].name: ...``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from bundle.approvals import approvals_from_json, approvals_to_json, check_approvals
from bundle.container import payload_member
from bundle.errors import ManifestError
from bundle.release_names import NameSet, file_name_problem
from bundle.windows import Policy
from signing.envelope import TYPE_PLAN, TYPE_RELEASE, TYPE_RESULT, parse_envelope
from signing.errors import SignatureError, StrictJSONError
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "FORMAT",
    "KIND_PLAN",
    "KIND_RELEASE",
    "KIND_RESULT",
    "MAX_LOST_ENTRIES",
    "PAYLOAD_TYPE_OF_KIND",
    "PER_BUNDLE_FIELDS",
    "Approval",
    "ChainInfo",
    "ChainLink",
    "FileEntry",
    "LostBundle",
    "Manifest",
    "PartDigest",
    "PartsInfo",
    "ReleaseInfo",
    "ResultInfo",
    "SecretEntry",
    "Target",
    "check_logical_name",
    "compressed_bound",
    "peek_manifest",
]

FORMAT = 1  # §11: the manifest format this code reads and writes
KIND_RELEASE = "release"
KIND_RESULT = "result"
KIND_PLAN = "plan"  # §6.11: a preflight bundle, checks only, never changes the site
PAYLOAD_TYPE_OF_KIND = {KIND_RELEASE: TYPE_RELEASE, KIND_RESULT: TYPE_RESULT,
                        KIND_PLAN: TYPE_PLAN}

MAX_TEXT_CHARS = 256  # identifiers and single-line text (§6.1)
MAX_LONG_TEXT_CHARS = 4096  # descriptions and comments (§6.1)
MAX_LOST_ENTRIES = 64  # lost-bundle decisions one manifest carries (§6.8)
_INT_MAX = 2**63 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]*: ")


@contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix the field path of ManifestErrors raised inside with ``where``."""
    try:
        yield
    except ManifestError as exc:
        msg = str(exc)
        sep = "." if _PATH.match(msg) else ": "
        raise ManifestError(f"{where}{sep}{msg}") from None


def _fail(what: str | None, rule: str) -> ManifestError:
    return ManifestError(rule if what is None else f"{what}: {rule}")


def _int(value: object, what: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(what, "must be an integer")
    if not low <= value <= _INT_MAX:
        raise _fail(what, f"must be between {low} and 2**63-1")
    return value


#: C0 and C1 controls, DEL, and lone surrogates (not encodable as UTF-8); the second lets
#: tab and newline through (multi-line text)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _has_control(text: str, multiline: bool) -> bool:
    return (_CONTROL_MULTILINE if multiline else _CONTROL).search(text) is not None


def _text(
    value: object,
    what: str,
    *,
    max_chars: int = MAX_TEXT_CHARS,
    multiline: bool = False,
    allow_empty: bool = False,
) -> str:
    if not isinstance(value, str):
        raise _fail(what, "must be a string")
    if not value and not allow_empty:
        raise _fail(what, "must not be empty")
    if len(value) > max_chars:
        raise _fail(what, f"is {len(value)} characters, over the limit of {max_chars}")
    if _has_control(value, multiline):
        raise _fail(what, "contains control characters")
    return value


def _opt_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _hex64(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _fail(what, "must be 64 lowercase hex characters (SHA-256)")
    return value


def _opt_hex64(value: object, what: str) -> str | None:
    return None if value is None else _hex64(value, what)


def _object(value: object, names: Sequence[str], what: str | None = None,
            optional: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(what, "must be a JSON object")
    missing = [n for n in names if n not in value and n not in optional]
    if missing:
        raise _fail(what, f"field {missing[0]!r} is missing")
    unknown = sorted(k for k in value if k not in names)
    if unknown:
        raise _fail(what, f"field {unknown[0][:80]!r} is not allowed")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(what, "must be a list")
    return value


def _json_object(value: object, what: str) -> Mapping[str, Any]:
    """An opaque JSON object (checked for strict-JSON-ness, not for content)."""
    if not isinstance(value, Mapping):
        raise _fail(what, "must be an object")
    try:
        dumps_canonical(dict(value))
    except (StrictJSONError, UnicodeError) as exc:
        raise _fail(what, f"is not strict JSON ({exc})") from None
    return value


def check_logical_name(name: object, what: str = "name") -> str:
    """A payload's logical name: a relative POSIX path used only as a key (§6.6).

    The rules are those of release file names (:mod:`bundle.release_names`), so every name a
    release may hold can travel in a bundle and nothing else can.

    Raises:
        ManifestError: the name breaks a rule (empty, absolute, ``..``, control characters,
            backslash, over 255 bytes ...).
    """
    problem = file_name_problem(name)
    if problem is not None:
        raise _fail(what, f"{str(name)[:80]!r} {problem}")
    assert isinstance(name, str)
    return name


def compressed_bound(size: int) -> int:
    """Largest compressed size accepted for ``size`` content bytes (§6.6)."""
    return size + (size >> 7) + 1024


# -- objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Who may accept the bundle (§6.2): agents and/or one environment, or the hub."""

    agents: tuple[str, ...] = ()
    environment: str | None = None
    hub: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.agents, tuple):
            raise _fail("agents", "must be a list")
        for i, agent in enumerate(self.agents):
            _text(agent, f"agents[{i}]")
        if len(set(self.agents)) != len(self.agents):
            raise _fail("agents", "lists an agent twice")
        _opt_text(self.environment, "environment")
        _opt_text(self.hub, "hub")

    def to_json(self) -> dict[str, Any]:
        return {"agents": list(self.agents), "environment": self.environment, "hub": self.hub}

    @classmethod
    def from_json(cls, value: object) -> Target:
        doc = _object(value, ("agents", "environment", "hub"))
        return cls(tuple(_list(doc["agents"], "agents")), doc["environment"], doc["hub"])


@dataclass(frozen=True)
class Approval:
    """One approval of a release (§6.3)."""

    by: str
    at: int
    comment: str = ""

    def __post_init__(self) -> None:
        _text(self.by, "by")
        _int(self.at, "at")
        _text(self.comment, "comment", max_chars=MAX_LONG_TEXT_CHARS, multiline=True,
              allow_empty=True)

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at, "comment": self.comment}

    @classmethod
    def from_json(cls, value: object) -> Approval:
        doc = _object(value, ("by", "at", "comment"))
        return cls(doc["by"], doc["at"], doc["comment"])


@dataclass(frozen=True)
class ReleaseInfo:
    """The release a release bundle carries (§6.3)."""

    product: str
    version: str
    counter: int
    content_hash: str
    author: str
    approvals: tuple[Approval, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _text(self.product, "product")
        _text(self.version, "version")
        _int(self.counter, "counter")
        _text(self.content_hash, "content_hash")
        _text(self.author, "author")
        _text(self.description, "description", max_chars=MAX_LONG_TEXT_CHARS, multiline=True,
              allow_empty=True)
        if not isinstance(self.approvals, tuple) or not all(
            isinstance(a, Approval) for a in self.approvals
        ):
            raise _fail("approvals", "must be a list of approvals")

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "version": self.version,
            "description": self.description,
            "counter": self.counter,
            "content_hash": self.content_hash,
            "author": self.author,
            "approvals": [a.to_json() for a in self.approvals],
        }

    @classmethod
    def from_json(cls, value: object) -> ReleaseInfo:
        names = ("product", "version", "description", "counter", "content_hash", "author",
                 "approvals")
        doc = _object(value, names)
        approvals = []
        for i, a in enumerate(_list(doc["approvals"], "approvals")):
            with _at(f"approvals[{i}]"):
                approvals.append(Approval.from_json(a))
        return cls(doc["product"], doc["version"], doc["counter"], doc["content_hash"],
                   doc["author"], tuple(approvals), doc["description"])


@dataclass(frozen=True)
class ResultInfo:
    """What an agent reports in a result bundle (§6.4). ``body`` is free strict JSON."""

    agent_id: str
    result_seq: int
    status: str
    body: Mapping[str, Any] = field(default_factory=dict)
    prev_result_sha256: str | None = None
    bundle_id: str | None = None
    bundle_envelope_sha256: str | None = None

    def __post_init__(self) -> None:
        _text(self.agent_id, "agent_id")
        _int(self.result_seq, "result_seq", 1)
        _text(self.status, "status", max_chars=64)
        _json_object(self.body, "body")
        _opt_hex64(self.prev_result_sha256, "prev_result_sha256")
        if self.bundle_id is not None and not _BUNDLE_ID.fullmatch(str(self.bundle_id)):
            raise _fail("bundle_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -")
        _opt_hex64(self.bundle_envelope_sha256, "bundle_envelope_sha256")

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "result_seq": self.result_seq,
            "prev_result_sha256": self.prev_result_sha256,
            "bundle_id": self.bundle_id,
            "bundle_envelope_sha256": self.bundle_envelope_sha256,
            "status": self.status,
            "body": dict(self.body),
        }

    @classmethod
    def from_json(cls, value: object) -> ResultInfo:
        names = ("agent_id", "result_seq", "prev_result_sha256", "bundle_id",
                 "bundle_envelope_sha256", "status", "body")
        doc = _object(value, names)
        return cls(doc["agent_id"], doc["result_seq"], doc["status"], doc["body"],
                   doc["prev_result_sha256"], doc["bundle_id"], doc["bundle_envelope_sha256"])


@dataclass(frozen=True)
class FileEntry:
    """One payload file (§6.6): its member, logical name, sizes and digests."""

    member: str
    name: str
    size: int
    sha256: str
    compressed_size: int
    compressed_sha256: str

    def __post_init__(self) -> None:
        _text(self.member, "member")
        check_logical_name(self.name)
        _int(self.size, "size")
        _hex64(self.sha256, "sha256")
        _int(self.compressed_size, "compressed_size")
        _hex64(self.compressed_sha256, "compressed_sha256")
        if self.compressed_size > compressed_bound(self.size):
            raise _fail("compressed_size", f"{self.compressed_size} is impossible for "
                        f"{self.size} content bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "compressed_size": self.compressed_size,
            "compressed_sha256": self.compressed_sha256,
        }

    @classmethod
    def from_json(cls, value: object) -> FileEntry:
        names = ("member", "name", "size", "sha256", "compressed_size", "compressed_sha256")
        doc = _object(value, names)
        return cls(doc["member"], doc["name"], doc["size"], doc["sha256"],
                   doc["compressed_size"], doc["compressed_sha256"])


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _fail(what, "must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _fail(what, "is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _fail(what, "is not canonical base64")
    return raw


@dataclass(frozen=True)
class SecretEntry:
    """A secret sealed to one agent (§6.7); the container treats ``sealed`` as opaque bytes."""

    name: str
    agent_id: str
    sealed: bytes

    def __post_init__(self) -> None:
        _text(self.name, "name")
        _text(self.agent_id, "agent_id")
        if not isinstance(self.sealed, bytes) or not self.sealed:
            raise _fail("sealed", "must be non-empty bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "agent_id": self.agent_id,
            "sealed": base64.b64encode(self.sealed).decode("ascii"),
        }

    @classmethod
    def from_json(cls, value: object) -> SecretEntry:
        doc = _object(value, ("name", "agent_id", "sealed"))
        return cls(doc["name"], doc["agent_id"], _b64(doc["sealed"], "sealed"))


@dataclass(frozen=True)
class PartDigest:
    """One data part of a split bundle (§8): its 1-based index, size and SHA-256."""

    index: int
    size: int
    sha256: str

    def __post_init__(self) -> None:
        _int(self.index, "index", 1)
        _int(self.size, "size", 1)
        _hex64(self.sha256, "sha256")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: object) -> PartDigest:
        doc = _object(value, ("index", "size", "sha256"))
        return cls(doc["index"], doc["size"], doc["sha256"])


@dataclass(frozen=True)
class PartsInfo:
    """How the data section is cut into parts (§8): every part is ``size`` bytes but the last."""

    size: int
    count: int
    digests: tuple[PartDigest, ...]

    def __post_init__(self) -> None:
        _int(self.size, "size", 1)
        _int(self.count, "count", 1)
        if not isinstance(self.digests, tuple) or len(self.digests) != self.count:
            raise _fail("digests", f"must list exactly {self.count} parts")
        for i, d in enumerate(self.digests, start=1):
            if not isinstance(d, PartDigest) or d.index != i:
                raise _fail("digests", f"entry {i} must have index {i}")
            if d.size > self.size or (i < self.count and d.size != self.size):
                raise _fail("digests", f"part {i} must be {self.size} bytes"
                            + (" or less" if i == self.count else ""))

    @property
    def data_bytes(self) -> int:
        """Length of the data section the parts cover."""
        return sum(d.size for d in self.digests)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "count": self.count,
                "digests": [d.to_json() for d in self.digests]}

    @classmethod
    def from_json(cls, value: object) -> PartsInfo:
        doc = _object(value, ("size", "count", "digests"))
        digests = []
        for i, d in enumerate(_list(doc["digests"], "digests")):
            with _at(f"digests[{i}]"):
                digests.append(PartDigest.from_json(d))
        return cls(doc["size"], doc["count"], tuple(digests))


@dataclass(frozen=True)
class ChainLink:
    """One bundle of a target's sequence chain, as the hub describes it (§6.8).

    Enough for an operator to recognise the bundle on a stick: its place in the chain
    (``root_version``, ``sequence``), its ``bundle_id``, the release it carries, when it was
    exported (Unix seconds) and by whom.
    """

    root_version: int
    sequence: int
    bundle_id: str
    product: str
    version: str
    exported_at: int
    exported_by: str

    def __post_init__(self) -> None:
        _int(self.root_version, "root_version", 1)
        _int(self.sequence, "sequence", 1)
        if not isinstance(self.bundle_id, str) or not _BUNDLE_ID.fullmatch(self.bundle_id):
            raise _fail("bundle_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -")
        _text(self.product, "product")
        _text(self.version, "version")
        _int(self.exported_at, "exported_at")
        _text(self.exported_by, "exported_by")

    @property
    def position(self) -> tuple[int, int]:
        """``(root_version, sequence)``: links compare by it."""
        return (self.root_version, self.sequence)

    def describe(self) -> str:
        """``sequence 9, hello 1.0.9, exported 2026-12-01 by carol`` (for operators)."""
        day = _day(self.exported_at)
        epoch = "" if self.root_version == 1 else f" (root version {self.root_version})"
        return (f"sequence {self.sequence}{epoch}, {self.product} {self.version}, exported "
                f"{day} by {self.exported_by}")

    def to_json(self) -> dict[str, Any]:
        return {"root_version": self.root_version, "sequence": self.sequence,
                "bundle_id": self.bundle_id, "product": self.product, "version": self.version,
                "exported_at": self.exported_at, "exported_by": self.exported_by}

    @classmethod
    def from_json(cls, value: object) -> ChainLink:
        doc = _object(value, ("root_version", "sequence", "bundle_id", "product", "version",
                              "exported_at", "exported_by"))
        return cls(doc["root_version"], doc["sequence"], doc["bundle_id"], doc["product"],
                   doc["version"], doc["exported_at"], doc["exported_by"])


def _day(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return f"{t} (Unix seconds)"


@dataclass(frozen=True)
class LostBundle:
    """The hub's signed decision that a bundle of the chain is lost or superseded (§6.8).

    ``bundle`` will never be applied; the chain continues from ``previous`` (the bundle
    before it, or null when it was the first). ``reason``, ``by`` and ``at`` say who decided,
    when (Unix seconds) and why.
    """

    bundle: ChainLink
    previous: ChainLink | None
    reason: str
    by: str
    at: int

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, ChainLink):
            raise _fail("bundle", "must be a chain link")
        if self.previous is not None:
            if not isinstance(self.previous, ChainLink):
                raise _fail("previous", "must be a chain link or null")
            if self.previous.position >= self.bundle.position:
                raise _fail("previous", "must come before the lost bundle in the chain")
        _text(self.reason, "reason", max_chars=MAX_LONG_TEXT_CHARS, multiline=True)
        _text(self.by, "by")
        _int(self.at, "at")

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle.to_json(),
                "previous": None if self.previous is None else self.previous.to_json(),
                "reason": self.reason, "by": self.by, "at": self.at}

    @classmethod
    def from_json(cls, value: object) -> LostBundle:
        doc = _object(value, ("bundle", "previous", "reason", "by", "at"))
        with _at("bundle"):
            bundle = ChainLink.from_json(doc["bundle"])
        with _at("previous"):
            previous = None if doc["previous"] is None else ChainLink.from_json(doc["previous"])
        return cls(bundle, previous, doc["reason"], doc["by"], doc["at"])


@dataclass(frozen=True)
class ChainInfo:
    """Where a release bundle sits in its target's sequence chain (§6.8).

    ``previous`` is the bundle exported to the same target just before this one (null for the
    first); ``lost`` lists the hub's decisions that bundles of the chain are lost, so that an
    agent waiting for one of them proceeds without it and refuses it if it turns up later.
    """

    previous: ChainLink | None = None
    lost: tuple[LostBundle, ...] = ()

    def __post_init__(self) -> None:
        if self.previous is not None and not isinstance(self.previous, ChainLink):
            raise _fail("previous", "must be a chain link or null")
        if not isinstance(self.lost, tuple) or not all(
            isinstance(x, LostBundle) for x in self.lost
        ):
            raise _fail("lost", "must be a list of lost-bundle decisions")
        if len(self.lost) > MAX_LOST_ENTRIES:
            raise _fail("lost", f"lists {len(self.lost)} decisions, over the limit of "
                        f"{MAX_LOST_ENTRIES}")
        seen: set[tuple[int, int]] = set()
        for i, x in enumerate(self.lost):
            if x.bundle.position in seen:
                raise _fail(f"lost[{i}]", f"sequence {x.bundle.sequence} is listed twice")
            seen.add(x.bundle.position)

    def check_before(self, position: tuple[int, int]) -> None:
        """Every link must come before the bundle at ``position`` (no loops in the chain)."""
        if self.previous is not None and self.previous.position >= position:
            raise _fail("previous", "must come before this bundle in the chain")
        for i, x in enumerate(self.lost):
            if x.bundle.position >= position:
                raise _fail(f"lost[{i}]", "a lost bundle must come before this bundle")

    def to_json(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else self.previous.to_json(),
                "lost": [x.to_json() for x in self.lost]}

    @classmethod
    def from_json(cls, value: object) -> ChainInfo:
        doc = _object(value, ("previous", "lost"))
        with _at("previous"):
            previous = None if doc["previous"] is None else ChainLink.from_json(doc["previous"])
        lost = []
        for i, x in enumerate(_list(doc["lost"], "lost")):
            with _at(f"lost[{i}]"):
                lost.append(LostBundle.from_json(x))
        return cls(previous, tuple(lost))


_MANIFEST_FIELDS = (
    "format", "bundle_id", "kind", "issuer", "target", "root_version", "sequence", "created",
    "not_before", "expires", "release", "result", "steps", "files", "secrets", "parts",
    "checkpoint", "chain",
    "policy",
    "approvals",
)
# §6.1: fields added after format 1 was first written. Absent means null, and a writer omits
# them when null, so every manifest made before they existed keeps its exact bytes.
_OPTIONAL_FIELDS: tuple[str, ...] = ("chain", "policy", "approvals")


#: the fields :meth:`Manifest.derive` may change: what differs between the bundles of one
#: release (its kind, issuer, release, steps and files stay)
PER_BUNDLE_FIELDS = frozenset({
    "bundle_id", "target", "root_version", "sequence", "created", "expires", "not_before",
    "secrets", "checkpoint", "chain", "policy", "approvals"})


@dataclass(frozen=True)
class Manifest:
    """The signed description of a bundle (§6). Times are integer Unix seconds.

    Exactly one of ``release`` (kind ``release``) and ``result`` (kind ``result``) is set;
    ``steps`` are opaque strict-JSON objects and only allowed in release bundles.
    """

    bundle_id: str
    kind: str
    issuer: str
    target: Target
    root_version: int
    sequence: int
    created: int
    expires: int
    release: ReleaseInfo | None = None
    result: ResultInfo | None = None
    steps: tuple[Mapping[str, Any], ...] = ()
    files: tuple[FileEntry, ...] = ()
    secrets: tuple[SecretEntry, ...] = ()
    parts: PartsInfo | None = None
    checkpoint: Mapping[str, Any] | None = None
    not_before: int | None = None
    chain: ChainInfo | None = None
    policy: Policy | None = None  # §6.9
    approvals: tuple[bytes, ...] = ()  # §6.10: approval/attestation envelopes, exact bytes
    format: int = FORMAT

    def __post_init__(self) -> None:
        self._validate(kept=False)

    def derive(self, **changes: Any) -> Manifest:
        """This manifest with ``changes`` to its per-bundle fields (:data:`PER_BUNDLE_FIELDS`:
        target, bundle id, sequence, times, secrets, checkpoint, chain, policy, approvals),
        validated as a new manifest is, except that its ``steps`` and ``files`` — the same
        objects, checked when this manifest was made — are not checked again: an export
        derives each agent's manifest from one made per release (bundle-format §12.4).

        Raises:
            ManifestError: a changed field breaks a rule.
            ValueError: ``changes`` names a field that is not per bundle.
        """
        unknown = changes.keys() - PER_BUNDLE_FIELDS
        if unknown:
            raise ValueError(f"not per-bundle fields: {', '.join(sorted(unknown))}")
        new = object.__new__(Manifest)
        for name in _FIELD_NAMES:
            object.__setattr__(new, name, changes[name] if name in changes
                               else getattr(self, name))
        new._validate(kept=True)
        # Its kept fields are this one's very objects: serialised once for every manifest
        # derived from this one (to_bytes), not once a bundle.
        kept: _KeptText | None = self.__dict__.get("_kept")
        if kept is None:
            kept = _KeptText()
            object.__setattr__(self, "_kept", kept)
        object.__setattr__(new, "_kept", kept)
        return new

    def _validate(self, *, kept: bool) -> None:
        """Every rule of a manifest; ``kept``: ``steps`` and ``files`` are those of a
        manifest validated already (:meth:`derive`), only their types are checked."""
        if self.format != FORMAT:
            raise _fail("format", f"bundle format {self.format!r} is not supported (this "
                        f"version of Tiangong reads format {FORMAT}); upgrade Tiangong")
        if not isinstance(self.bundle_id, str) or not _BUNDLE_ID.fullmatch(self.bundle_id):
            raise _fail("bundle_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit")
        if not isinstance(self.kind, str) or self.kind not in PAYLOAD_TYPE_OF_KIND:
            raise _fail("kind", f"{str(self.kind)[:40]!r} is not one of release, result, plan")
        _hex64(self.issuer, "issuer")
        if not isinstance(self.target, Target):
            raise _fail("target", "must be a Target")
        _int(self.root_version, "root_version", 1)
        _int(self.sequence, "sequence", 1)
        _int(self.created, "created")
        _int(self.expires, "expires")
        if self.expires <= self.created:
            raise _fail("expires", "must be later than created")
        if self.not_before is not None:
            _int(self.not_before, "not_before")
        self._check_kind()
        if not isinstance(self.steps, tuple):
            raise _fail("steps", "must be a list")
        if not kept:
            for i, step in enumerate(self.steps):
                _json_object(step, f"steps[{i}]")
            self._check_files()
        elif not isinstance(self.files, tuple):
            raise _fail("files", "must be a list")
        self._check_secrets()
        if self.parts is not None and not isinstance(self.parts, PartsInfo):
            raise _fail("parts", "must be a PartsInfo or null")
        if self.checkpoint is not None:
            _json_object(self.checkpoint, "checkpoint")
        if self.chain is not None:
            if not isinstance(self.chain, ChainInfo):
                raise _fail("chain", "must be a ChainInfo or null")
            if self.kind != KIND_RELEASE:
                raise _fail("chain", "only a release bundle has a chain")
            with _at("chain"):
                self.chain.check_before((self.root_version, self.sequence))
        self._check_policy()
        if self.approvals != ():
            check_approvals(self.approvals)
            if self.kind not in (KIND_RELEASE, KIND_PLAN):
                raise _fail("approvals", "only a release or plan bundle carries approvals")

    def _check_policy(self) -> None:
        """§6.9: release bundles only; absent rather than empty."""
        if self.policy is None:
            return
        if not isinstance(self.policy, Policy):
            raise _fail("policy", "must be a Policy or null")
        if self.kind != KIND_RELEASE:
            raise _fail("policy", "only a release bundle has a policy")
        if self.policy.empty:
            raise _fail("policy", "is omitted when it has no windows, freezes or override "
                        "(§6.1)")

    def _check_kind(self) -> None:
        if self.kind in (KIND_RELEASE, KIND_PLAN):
            what = "release" if self.kind == KIND_RELEASE else "plan"
            if not isinstance(self.release, ReleaseInfo) or self.result is not None:
                raise _fail("release", f"a {what} bundle has a release object and no result")
            if self.target.hub is not None or not (self.target.agents or self.target.environment):
                raise _fail("target", f"a {what} bundle names agents and/or an environment, "
                            "and no hub")
            if self.kind == KIND_PLAN and self.secrets:
                raise _fail("secrets", "a plan bundle carries no secrets (§6.11)")
        else:
            if not isinstance(self.result, ResultInfo) or self.release is not None:
                raise _fail("result", "a result bundle has a result object and no release")
            if self.steps:
                raise _fail("steps", "a result bundle has no steps")
            if self.target.hub is None:
                raise _fail("target", "a result bundle names the hub")
            if self.result.result_seq != self.sequence:
                raise _fail("result", "result_seq must equal sequence")

    def _check_files(self) -> None:
        if not isinstance(self.files, tuple):
            raise _fail("files", "must be a list")
        names = NameSet()
        for i, f in enumerate(self.files, start=1):
            if not isinstance(f, FileEntry):
                raise _fail(f"files[{i - 1}]", "must be a file entry")
            if f.member != payload_member(i):
                raise _fail(f"files[{i - 1}].member", f"must be {payload_member(i)}")
            clash = names.add(f.name)
            if clash is not None:
                raise _fail(f"files[{i - 1}].name", f"{f.name[:80]!r} {clash}")

    def _check_secrets(self) -> None:
        if not isinstance(self.secrets, tuple):
            raise _fail("secrets", "must be a list")
        seen: set[tuple[str, str]] = set()
        for i, s in enumerate(self.secrets):
            if not isinstance(s, SecretEntry):
                raise _fail(f"secrets[{i}]", "must be a secret entry")
            if (s.name, s.agent_id) in seen:
                raise _fail(f"secrets[{i}]", f"secret {s.name[:80]!r} for agent "
                            f"{s.agent_id[:80]!r} is listed twice")
            seen.add((s.name, s.agent_id))

    @property
    def payload_type(self) -> str:
        """The envelope payload type of this manifest's kind (§4, threat 11)."""
        return PAYLOAD_TYPE_OF_KIND[self.kind]

    @property
    def total_size(self) -> int:
        """Uncompressed bytes of all payload files."""
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "bundle_id": self.bundle_id,
            "kind": self.kind,
            "issuer": self.issuer,
            "target": self.target.to_json(),
            "root_version": self.root_version,
            "sequence": self.sequence,
            "created": self.created,
            "not_before": self.not_before,
            "expires": self.expires,
            "release": None if self.release is None else self.release.to_json(),
            "result": None if self.result is None else self.result.to_json(),
            "steps": [dict(s) for s in self.steps],
            "files": [f.to_json() for f in self.files],
            "secrets": [s.to_json() for s in self.secrets],
            "parts": None if self.parts is None else self.parts.to_json(),
            "checkpoint": None if self.checkpoint is None else dict(self.checkpoint),
            **({} if self.chain is None else {"chain": self.chain.to_json()}),
            **({} if self.policy is None else {"policy": self.policy.to_json()}),
            **({"approvals": approvals_to_json(self.approvals)} if self.approvals else {}),
        }

    def to_bytes(self) -> bytes:
        """The canonical strict-JSON bytes (§3) that the envelope signs.

        A manifest made by :meth:`derive` gives the very same bytes, with the fields it
        shares with the manifest it was derived from (steps, files, release ...) serialised
        once for all of them (:class:`_KeptText`)."""
        try:
            kept: _KeptText | None = self.__dict__.get("_kept")
            if kept is not None:
                data = kept.splice(self)
                if data is not None:
                    return data
            return dumps_canonical(self.to_json())
        except (StrictJSONError, UnicodeError) as exc:
            raise ManifestError(f"manifest cannot be serialised: {exc}") from None

    @classmethod
    def from_json(cls, value: object) -> Manifest:
        """Build a manifest from a parsed strict-JSON value.

        Raises:
            ManifestError: a field is missing, unknown, of the wrong type or breaks a rule.
        """
        if isinstance(value, dict) and "format" in value and value["format"] != FORMAT:
            # Versioning first (§11): an unknown format is refused by number, not by field.
            raise _fail("format", f"bundle format {str(value['format'])[:20]} is not "
                        f"supported (this version of Tiangong reads format {FORMAT}); "
                        "upgrade Tiangong")
        doc = _object(value, _MANIFEST_FIELDS, optional=_OPTIONAL_FIELDS)
        with _at("target"):
            target = Target.from_json(doc["target"])
        with _at("release"):
            release = None if doc["release"] is None else ReleaseInfo.from_json(doc["release"])
        with _at("result"):
            result = None if doc["result"] is None else ResultInfo.from_json(doc["result"])
        files = []
        for i, f in enumerate(_list(doc["files"], "files")):
            with _at(f"files[{i}]"):
                files.append(FileEntry.from_json(f))
        secrets = []
        for i, s in enumerate(_list(doc["secrets"], "secrets")):
            with _at(f"secrets[{i}]"):
                secrets.append(SecretEntry.from_json(s))
        steps = _list(doc["steps"], "steps")
        with _at("parts"):
            parts = None if doc["parts"] is None else PartsInfo.from_json(doc["parts"])
        with _at("chain"):
            value_chain = doc.get("chain")
            if "chain" in doc and value_chain is None:
                raise _fail("chain", "is omitted when there is none, never null (§6.1)")
            chain = None if value_chain is None else ChainInfo.from_json(value_chain)
        if "policy" in doc and doc["policy"] is None:
            raise _fail("policy", "is omitted when there is none, never null (§6.1)")
        with _at("policy"):
            policy = None if doc.get("policy") is None else Policy.from_json(doc["policy"])
        if doc.get("approvals") == []:
            raise _fail("approvals", "is omitted when there are none, never empty (§6.1)")
        approvals = approvals_from_json(doc["approvals"]) if "approvals" in doc else ()
        return cls(
            bundle_id=doc["bundle_id"],
            kind=doc["kind"],
            issuer=doc["issuer"],
            target=target,
            root_version=doc["root_version"],
            sequence=doc["sequence"],
            created=doc["created"],
            expires=doc["expires"],
            release=release,
            result=result,
            steps=tuple(steps),
            files=tuple(files),
            secrets=tuple(secrets),
            parts=parts,
            checkpoint=doc["checkpoint"],
            not_before=doc["not_before"],
            chain=chain,
            policy=policy,
            approvals=approvals,
            format=doc["format"],
        )

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int) -> Manifest:
        """Parse verified manifest bytes strictly (§3, §6).

        Raises:
            ManifestError: not strict JSON, breaks a field rule, or not in canonical form.
        """
        try:
            value = loads_strict(data, max_bytes)
        except StrictJSONError as exc:
            raise ManifestError(f"manifest is not strict JSON: {exc}") from exc
        manifest = cls.from_json(value)
        if manifest.to_bytes() != data:
            raise ManifestError("manifest is not in canonical form (sorted keys, no spaces)")
        return manifest


_FIELD_NAMES = tuple(f.name for f in fields(Manifest))
#: the manifest's JSON fields that :meth:`Manifest.derive` keeps (all but the per-bundle ones)
_KEPT_JSON = ("format", "kind", "issuer", "release", "result", "steps", "files", "parts")


class _KeptText:
    """The canonical JSON of the fields :meth:`Manifest.derive` keeps (:data:`_KEPT_JSON`),
    made at the first :meth:`Manifest.to_bytes` of a manifest derived from one template and
    spliced into the others': the manifest's bytes are its per-bundle fields serialised by
    :func:`dumps_canonical` with a placeholder string for each kept field, each placeholder
    then replaced by that field's text. JSON text composes (an object's text is its sorted
    keys each followed by its value's own text), so this is byte for byte
    ``dumps_canonical(manifest.to_json())``; each kept value is checked as it is there (one
    level deep, by serialising it inside an object). A placeholder holds a NUL character and
    128 random bits of this process: were it found more than once in the text (a per-bundle
    string holding it), the whole manifest is serialised as usual instead."""

    _TOKEN = "\x00" + secrets.token_hex(16) + ":"

    def __init__(self) -> None:
        self.texts: dict[str, str] | None = None
        self.placeholders = {key: self._TOKEN + key for key in _KEPT_JSON}
        # each placeholder as dumps_canonical writes it (the NUL escaped), quotes included
        self.written = {json.dumps(text, ensure_ascii=False): key
                        for key, text in self.placeholders.items()}
        self.pattern = re.compile("|".join(re.escape(w) for w in self.written))

    def splice(self, manifest: Manifest) -> bytes | None:
        """``manifest``'s canonical bytes, or None (serialise it whole).

        Raises:
            StrictJSONError, UnicodeError: a field is not strict JSON.
        """
        texts = self.texts
        if texts is None:
            whole = manifest.to_json()
            texts = {}
            for key in _KEPT_JSON:
                text = dumps_canonical({key: whole[key]}).decode("utf-8")
                texts[key] = text[len(key) + 4:-1]  # {"key":VALUE}
            self.texts = texts
        doc = {
            **self.placeholders,
            "bundle_id": manifest.bundle_id,
            "target": manifest.target.to_json(),
            "root_version": manifest.root_version,
            "sequence": manifest.sequence,
            "created": manifest.created,
            "not_before": manifest.not_before,
            "expires": manifest.expires,
            "secrets": [s.to_json() for s in manifest.secrets],
            "checkpoint": None if manifest.checkpoint is None else dict(manifest.checkpoint),
            **({} if manifest.chain is None else {"chain": manifest.chain.to_json()}),
            **({} if manifest.policy is None else {"policy": manifest.policy.to_json()}),
            **({"approvals": approvals_to_json(manifest.approvals)}
               if manifest.approvals else {}),
        }
        text = dumps_canonical(doc).decode("utf-8")
        found = self.pattern.findall(text)
        if len(found) != len(_KEPT_JSON) or len(set(found)) != len(_KEPT_JSON):
            return None
        # one pass: a field's text put in is not searched again
        return self.pattern.sub(lambda m: texts[self.written[m.group(0)]],
                                text).encode("utf-8")


def peek_manifest(envelope: bytes, max_envelope_bytes: int) -> Manifest:
    """The manifest inside ``envelope`` WITHOUT checking any signature.

    Only for tools that must look before trust exists (``bundle inspect``, joining parts);
    nothing may be acted on. The verifier never uses this.

    Raises:
        ManifestError: the envelope or the manifest is malformed.
    """
    try:
        env = parse_envelope(envelope, max_envelope_bytes)
    except SignatureError as exc:
        raise ManifestError(f"envelope is malformed: {exc}") from exc
    return Manifest.from_bytes(env.payload, max_envelope_bytes)
