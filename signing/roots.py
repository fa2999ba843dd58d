"""The root of trust: root documents, their rotation, and the keys each role may use.

A root document (payload type ``TYPE_ROOT``, docs/bundle-format.md §5) lists public keys and,
for each role (``root``, ``release``, ``audit``, and the optional ``approval``), the key ids
allowed to sign for it and how many distinct keys must sign. Online keys carry their own
``expires``; keys can be ``revoked``. The optional ``approvals`` object delegates, per
environment, who must approve a release before it runs there (``signing.delegations``).
Both optional parts are omitted when absent, so older roots keep their exact bytes.

* A root is pinned once (agent enrollment, ``keys root init``): its own root role must sign it.
* Root N+1 is accepted only when signed by a threshold of root N's root keys *and* a threshold
  of its own root keys, and only as exactly version N+1 (no skipping, no repeats).
* Intermediate roots in a chain may have expired; the final one must not (TUF §5.3).
* A key serves exactly one role (an offline root key is never also a release key), and a key id
  is always the SHA-256 of the key it names, so one key can never be counted twice.

Times are integer Unix seconds (strict JSON has no floats). This module does no I/O: callers
pass bytes and a ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from signing.delegations import Delegation, delegation_for, parse_delegations
from signing.durations import format_utc
from signing.envelope import TYPE_ROOT, parse_envelope, sign_envelope, verify_envelope
from signing.errors import (
    ExpiredError,
    PayloadTypeError,
    RootFormatError,
    RootRotationError,
    StrictJSONError,
    ThresholdError,
)
from signing.keys import PublicKey, SigningKey
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "MAX_ROOT_BYTES",
    "OPTIONAL_ROLES",
    "ROLES",
    "KeyEntry",
    "RoleKeys",
    "RootDocument",
    "TrustedRoot",
    "sign_root",
]

ROLES = ("root", "release", "audit")  # required in every root
OPTIONAL_ROLES = ("approval",)  # the hub's approval key(s): hub-attested approvals only
MAX_ROOT_BYTES = 64 * 1024  # bytes, envelope included
_FIELDS = {"type", "spec_version", "hub_id", "version", "issued", "expires", "keys", "roles",
           "revoked"}
_OPTIONAL_FIELDS = {"approvals"}  # omitted when absent (older roots keep their bytes)
SPEC_VERSION = 1


@dataclass(frozen=True)
class KeyEntry:
    public: PublicKey
    expires: int | None = None  # Unix seconds; None = valid as long as the root


@dataclass(frozen=True)
class RoleKeys:
    """The keys of one role that are usable now, and the signature threshold."""

    keys: Mapping[str, PublicKey]
    threshold: int


@dataclass(frozen=True)
class RootDocument:
    """A parsed root document (one class per spec object; ``from_bytes``/``to_bytes``)."""

    hub_id: str
    version: int
    issued: int
    expires: int
    keys: Mapping[str, KeyEntry]
    roles: Mapping[str, tuple[tuple[str, ...], int]]  # role -> (key ids, threshold)
    revoked: frozenset[str] = field(default_factory=frozenset)
    approvals: Mapping[str, Delegation] = field(default_factory=dict)  # environment -> rule

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def delegation(self, environment: str) -> Delegation | None:
        """The approval delegation of ``environment`` (its own, else ``"*"``), or None."""
        return delegation_for(self.approvals, environment)

    def to_json(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for kid, entry in sorted(self.keys.items()):
            k: dict[str, Any] = entry.public.to_json()
            if entry.expires is not None:
                k["expires"] = entry.expires
            keys[kid] = k
        return {
            "type": "tiangong/root",
            "spec_version": SPEC_VERSION,
            "hub_id": self.hub_id,
            "version": self.version,
            "issued": self.issued,
            "expires": self.expires,
            "keys": keys,
            "roles": {
                role: {"keyids": sorted(ids), "threshold": thr}
                for role, (ids, thr) in sorted(self.roles.items())
            },
            "revoked": sorted(self.revoked),
            **({"approvals": {env: d.to_json() for env, d in sorted(self.approvals.items())}}
               if self.approvals else {}),
        }

    def to_bytes(self) -> bytes:
        return dumps_canonical(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> RootDocument:
        """Parse a root payload strictly.

        Raises:
            RootFormatError: not strict JSON, missing/unknown fields, inconsistent keys.
        """
        try:
            doc = loads_strict(data, MAX_ROOT_BYTES)
        except StrictJSONError as exc:
            raise RootFormatError(f"root document: {exc}") from exc
        if not isinstance(doc, dict) or not _FIELDS <= set(doc) <= _FIELDS | _OPTIONAL_FIELDS:
            raise RootFormatError(f"root document must have exactly the fields {sorted(_FIELDS)}"
                                  f" and optionally {sorted(_OPTIONAL_FIELDS)}")
        if (
            doc["type"] != "tiangong/root"
            or not _is_int(doc["spec_version"])
            or doc["spec_version"] != SPEC_VERSION
        ):
            raise RootFormatError("root document type or spec_version is not supported")
        for name in ("version", "issued", "expires"):
            if not _is_int(doc[name]) or doc[name] < 0:
                raise RootFormatError(f"root document field {name} must be a non-negative integer")
        if doc["version"] < 1:
            raise RootFormatError("root version starts at 1")
        if doc["expires"] <= doc["issued"]:
            raise RootFormatError(
                f"root version {doc['version']}: expires ({format_utc(doc['expires'])}) is not "
                f"after issued ({format_utc(doc['issued'])})"
            )
        if not isinstance(doc["hub_id"], str) or not doc["hub_id"]:
            raise RootFormatError("root document hub_id must be a non-empty string")
        keys: dict[str, KeyEntry] = {}
        if not isinstance(doc["keys"], dict):
            raise RootFormatError("root document keys must be an object")
        for kid, k in doc["keys"].items():
            if not isinstance(k, dict) or not {"scheme", "public"} <= set(k) or not set(k) <= {
                "scheme", "public", "expires"
            }:
                raise RootFormatError(f"key {kid[:16]}: must have scheme, public[, expires]")
            if k["scheme"] != "ed25519":
                raise RootFormatError(f"key {kid[:16]}: scheme must be ed25519")
            try:
                pub = PublicKey.from_hex(k["public"])
            except ValueError as exc:
                raise RootFormatError(f"key {kid[:16]}: {exc}") from exc
            if pub.key_id != kid:
                # One key, one id: the listed id must be the SHA-256 of the key.
                raise RootFormatError(f"key id {kid[:16]} is not the SHA-256 of its public key")
            exp = k.get("expires")
            if exp is not None and (not _is_int(exp) or exp < 0):
                raise RootFormatError(f"key {kid[:16]}: expires must be an integer")
            keys[kid] = KeyEntry(pub, exp)
        roles: dict[str, tuple[tuple[str, ...], int]] = {}
        if not isinstance(doc["roles"], dict) or not (
            set(ROLES) <= set(doc["roles"]) <= set(ROLES) | set(OPTIONAL_ROLES)
        ):
            raise RootFormatError(f"root document roles must be exactly {list(ROLES)}, "
                                  f"optionally with {list(OPTIONAL_ROLES)}")
        for role, spec in doc["roles"].items():
            if not isinstance(spec, dict) or set(spec) != {"keyids", "threshold"}:
                raise RootFormatError(f"role {role}: must have keyids and threshold")
            ids = spec["keyids"]
            thr = spec["threshold"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise RootFormatError(f"role {role}: keyids must be a list of strings")
            if len(set(ids)) != len(ids):
                raise RootFormatError(f"role {role}: duplicate key id")
            missing = [i for i in ids if i not in keys]
            if missing:
                raise RootFormatError(f"role {role}: key {missing[0][:16]} is not in keys")
            if not _is_int(thr) or not 1 <= thr <= len(ids):
                raise RootFormatError(
                    f"role {role}: threshold must be between 1 and {len(ids)}"
                )
            for kid in ids:
                other = next((r for r, (rids, _) in roles.items() if kid in rids), None)
                if other is not None:
                    # A key serves one role: a key of another role must never count here.
                    raise RootFormatError(
                        f"key {kid[:16]} is listed for both roles {other} and {role}"
                    )
            roles[role] = (tuple(ids), thr)
        revoked = doc["revoked"]
        if not isinstance(revoked, list) or not all(_is_key_id(r) for r in revoked):
            raise RootFormatError("revoked must be a list of key ids (64 lowercase hex)")
        if len(set(revoked)) != len(revoked):
            raise RootFormatError("revoked lists a key id twice")
        approvals: dict[str, Delegation] = {}
        if "approvals" in doc:
            role_of = {kid: role for role, (ids, _) in roles.items() for kid in ids}
            approvals = parse_delegations(doc["approvals"], keys=keys, role_of=role_of,
                                          has_approval_role="approval" in roles)
        return cls(doc["hub_id"], doc["version"], doc["issued"], doc["expires"], keys, roles,
                   frozenset(revoked), approvals)

    def role_keys(self, role: str, now: int | None = None) -> RoleKeys:
        """Keys usable for ``role`` (revoked keys left out; expired ones too when ``now``).

        Raises:
            KeyError: ``role`` is not a role of this root (see :meth:`has_role`).
        """
        ids, threshold = self.roles[role]
        usable: dict[str, PublicKey] = {}
        for kid in ids:
            entry = self.keys[kid]
            if kid in self.revoked:
                continue
            if now is not None and entry.expires is not None and entry.expires <= now:
                continue
            usable[kid] = entry.public
        return RoleKeys(usable, threshold)

    def key_usable(self, key_id: str, now: int) -> bool:
        """``key_id`` is listed in ``keys``, not revoked, and not expired at ``now``."""
        entry = self.keys.get(key_id)
        return (entry is not None and key_id not in self.revoked
                and (entry.expires is None or entry.expires > now))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_key_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 64
        and not value.strip("0123456789abcdef")
    )


def sign_root(doc: RootDocument, keys: Sequence[SigningKey]) -> bytes:
    """Sign a root document with ``keys`` (root N and N+1 keys for a rotation)."""
    return sign_envelope(TYPE_ROOT, doc.to_bytes(), keys)


class TrustedRoot:
    """The root an agent or verifier currently trusts, with its exact signed bytes.

    Immutable: :meth:`update` returns a new object and leaves this one as it was, so a
    rejected update can never leave a caller with a half-changed trust store.
    """

    __slots__ = ("_document", "_envelope")

    def __init__(self, document: RootDocument, envelope: bytes) -> None:
        self._document = document
        self._envelope = bytes(envelope)

    @property
    def document(self) -> RootDocument:
        return self._document

    @property
    def envelope(self) -> bytes:
        """The exact signed bytes this root was accepted from."""
        return self._envelope

    @property
    def version(self) -> int:
        return self.document.version

    @classmethod
    def pin(cls, envelope: bytes, now: int | None = None) -> TrustedRoot:
        """Trust a root document given out of band (first use): it must sign itself.

        Raises:
            SignatureError: not signed by a threshold of its own root keys (its subclasses
                EnvelopeFormatError, PayloadTypeError, ThresholdError).
            RootFormatError: malformed.
            ExpiredError: ``now`` is given and the root has expired.
        """
        env = parse_envelope(envelope, MAX_ROOT_BYTES)
        if env.payload_type != TYPE_ROOT:
            # Checked before the payload is parsed: a release is never read as a root.
            raise PayloadTypeError(
                f"payload type is {env.payload_type[:100]!r}, expected {TYPE_ROOT!r}"
            )
        doc = RootDocument.from_bytes(env.payload)  # parsed only to learn its own keys
        rk = doc.role_keys("root")
        verify_envelope(envelope, payload_type=TYPE_ROOT, trusted=rk.keys,
                        threshold=rk.threshold, max_bytes=MAX_ROOT_BYTES)
        if now is not None and doc.expires <= now:
            raise ExpiredError(
                f"root version {doc.version} expired at {format_utc(doc.expires)}; "
                "a new root must be made (tiangong keys root rotate)"
            )
        return cls(doc, envelope)

    def update(self, envelope: bytes) -> TrustedRoot:
        """Return the trusted successor of this root (does not check expiry; see
        :meth:`check_current`).

        Raises:
            ThresholdError: not signed by a threshold of the current *or* the new root keys.
            RootRotationError: the version is not exactly current + 1, or hub ids differ.
            SignatureError / RootFormatError: malformed.
        """
        old = self.document.role_keys("root")
        try:
            verified = verify_envelope(envelope, payload_type=TYPE_ROOT, trusted=old.keys,
                                       threshold=old.threshold, max_bytes=MAX_ROOT_BYTES)
        except ThresholdError as exc:
            raise ThresholdError(
                f"new root is not signed by {old.threshold} key(s) of trusted root "
                f"version {self.version}: {exc}"
            ) from exc
        new = RootDocument.from_bytes(verified.payload)
        if new.version != self.version + 1:
            raise RootRotationError(
                f"root version {new.version} cannot follow trusted version {self.version}; "
                f"expected {self.version + 1}"
            )
        if new.hub_id != self.document.hub_id:
            raise RootRotationError(
                f"new root names hub {new.hub_id[:80]!r}, trusted root names "
                f"{self.document.hub_id[:80]!r}"
            )
        nk = new.role_keys("root")
        try:
            verify_envelope(envelope, payload_type=TYPE_ROOT, trusted=nk.keys,
                            threshold=nk.threshold, max_bytes=MAX_ROOT_BYTES)
        except ThresholdError as exc:
            raise ThresholdError(
                f"new root version {new.version} is not signed by {nk.threshold} of its own "
                f"root key(s): {exc}"
            ) from exc
        return TrustedRoot(new, envelope)

    def update_chain(self, envelopes: Sequence[bytes], now: int) -> TrustedRoot:
        """Apply successive root updates, then require the final root to be current.

        Raises:
            the errors of :meth:`update` and :meth:`check_current`.
        """
        current = self
        for env in envelopes:
            current = current.update(env)
        current.check_current(now)
        return current

    def check_current(self, now: int) -> None:
        """Raises ExpiredError when the root has expired at ``now``."""
        if self.document.expires <= now:
            raise ExpiredError(
                f"trusted root version {self.version} expired at "
                f"{format_utc(self.document.expires)}; a new root must be delivered "
                "(tiangong keys root rotate)"
            )

    def role_keys(self, role: str, now: int) -> RoleKeys:
        return self.document.role_keys(role, now)

    def key_usable(self, key_id: str, now: int) -> bool:
        """``key_id`` is listed in ``keys``, not revoked, and not expired at ``now``."""
        return self.document.key_usable(key_id, now)

