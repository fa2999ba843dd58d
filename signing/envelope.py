"""Signed envelopes in the style of DSSE (docs/bundle-format.md §4).

An envelope is strict canonical JSON::

    {"payload": "<base64>", "payloadType": "<type>",
     "signatures": [{"keyid": "<hex sha256 of public key>", "sig": "<base64>"}]}

Each signature is Ed25519 over the pre-authentication encoding (PAE)::

    "DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload

so a signature over one payload type can never be taken for another (threat 11). Verification
checks the payload type, then the signatures, and returns the payload *bytes*; the caller parses
them only afterwards (verify, then parse). Thresholds count distinct public keys: a key listed
under two ids, or the same signature twice, counts once.

This module does no I/O and knows nothing about roles; ``signing.roots`` maps roles to keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from signing.errors import (
    EnvelopeFormatError,
    PayloadTypeError,
    StrictJSONError,
    ThresholdError,
)
from signing.keys import PublicKey, SigningKey, key_id_of
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "PAYLOAD_TYPES",
    "TYPE_APPROVAL",
    "TYPE_APPROVAL_ATTESTATION",
    "TYPE_ENROLLMENT",
    "TYPE_ENROLLMENT_RESPONSE",
    "TYPE_PLAN",
    "TYPE_RELEASE",
    "TYPE_RESULT",
    "TYPE_ROOT",
    "Envelope",
    "VerifiedPayload",
    "pae",
    "parse_envelope",
    "sign_envelope",
    "verify_envelope",
]

TYPE_RELEASE = "application/vnd.tiangong.release.v1+json"
TYPE_RESULT = "application/vnd.tiangong.result.v1+json"
TYPE_PLAN = "application/vnd.tiangong.plan.v1+json"  # a preflight bundle (bundle-format §6.11)
TYPE_ROOT = "application/vnd.tiangong.root.v1+json"
TYPE_ENROLLMENT = "application/vnd.tiangong.enrollment.v1+json"
TYPE_ENROLLMENT_RESPONSE = "application/vnd.tiangong.enrollment-response.v1+json"
TYPE_APPROVAL = "application/vnd.tiangong.approval.v1+json"
TYPE_APPROVAL_ATTESTATION = "application/vnd.tiangong.approval-attestation.v1+json"
PAYLOAD_TYPES = frozenset(
    {TYPE_RELEASE, TYPE_RESULT, TYPE_PLAN, TYPE_ROOT, TYPE_ENROLLMENT, TYPE_ENROLLMENT_RESPONSE,
     TYPE_APPROVAL, TYPE_APPROVAL_ATTESTATION}
)

#: a string JSON writes as itself between quotes: printable ASCII but the quote and backslash
_PLAIN = re.compile(r'[ !#-\[\]-~]*')
MAX_ENVELOPE_BYTES = 1024 * 1024  # bytes; bundle readers pass their own (smaller) cap
MAX_SIGNATURES = 16  # signatures per envelope
_SIG_BYTES = 64
_KEYID_HEX = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of ``payload_type`` and ``payload``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A parsed, *unverified* envelope. Use :func:`verify_envelope` to get at the payload."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        """The canonical bytes (what :func:`dumps_canonical` gives the envelope's object:
        built directly when every string is plain ASCII, as a key id and a payload type
        are; base64 always is)."""
        if type(self.payload_type) is str and _PLAIN.fullmatch(self.payload_type) and all(
                type(s.keyid) is str and _PLAIN.fullmatch(s.keyid) for s in self.signatures):
            return b"".join([
                b'{"payload":"', base64.b64encode(self.payload), b'","payloadType":"',
                self.payload_type.encode("ascii"), b'","signatures":[',
                b",".join(b'{"keyid":"%s","sig":"%s"}' % (s.keyid.encode("ascii"),
                                                            base64.b64encode(s.sig))
                          for s in self.signatures),
                b"]}"])
        return dumps_canonical(
            {
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "payloadType": self.payload_type,
                "signatures": [
                    {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                    for s in self.signatures
                ],
            }
        )


@dataclass(frozen=True)
class VerifiedPayload:
    """The payload of an envelope whose signatures met the threshold."""

    payload_type: str
    payload: bytes
    signer_key_ids: frozenset[str]


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeFormatError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EnvelopeFormatError(f"{what} is not valid base64") from exc
    # Reject non-canonical encodings (e.g. stray bits in the padding) so one payload has
    # exactly one textual form.
    if base64.b64encode(raw).decode("ascii") != text:
        raise EnvelopeFormatError(f"{what} is not canonical base64")
    return raw


def parse_envelope(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse the envelope framing only (no signature check, payload untouched).

    Raises:
        EnvelopeFormatError: oversized, not strict JSON, missing/unknown fields, bad base64,
            bad key ids or signature lengths, too many signatures, or not in canonical form.
    """
    if len(data) > max_bytes:
        raise EnvelopeFormatError(
            f"envelope is {len(data)} bytes, over the limit of {max_bytes} bytes"
        )
    try:
        doc = loads_strict(data, max_bytes)
    except StrictJSONError as exc:
        raise EnvelopeFormatError(f"envelope is not strict JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
        raise EnvelopeFormatError(
            "envelope must have exactly the fields payload, payloadType, signatures"
        )
    ptype = doc["payloadType"]
    if not isinstance(ptype, str) or not ptype:
        raise EnvelopeFormatError("payloadType must be a non-empty string")
    payload = _b64(doc["payload"], "payload")
    sigs_raw = doc["signatures"]
    if not isinstance(sigs_raw, list):
        raise EnvelopeFormatError("signatures must be a list")
    if len(sigs_raw) > MAX_SIGNATURES:
        raise EnvelopeFormatError(
            f"{len(sigs_raw)} signatures is over the limit of {MAX_SIGNATURES}"
        )
    sigs: list[Signature] = []
    for i, entry in enumerate(sigs_raw):
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise EnvelopeFormatError(f"signature {i} must have exactly the fields keyid, sig")
        keyid = entry["keyid"]
        if (
            not isinstance(keyid, str)
            or len(keyid) != _KEYID_HEX
            or keyid.strip("0123456789abcdef")
        ):
            raise EnvelopeFormatError(f"signature {i}: keyid must be 64 lowercase hex characters")
        sig = _b64(entry["sig"], f"signature {i}")
        if len(sig) != _SIG_BYTES:
            raise EnvelopeFormatError(f"signature {i} is {len(sig)} bytes, not {_SIG_BYTES}")
        sigs.append(Signature(keyid, sig))
    env = Envelope(ptype, payload, tuple(sigs))
    # One envelope has one byte form: whitespace or key order changes are refused.
    if env.to_bytes() != data:
        raise EnvelopeFormatError("envelope is not in canonical form")
    return env


def sign_envelope(payload_type: str, payload: bytes, keys: Sequence[SigningKey]) -> bytes:
    """Sign ``payload`` with every key in ``keys``; return the canonical envelope bytes.

    Signatures are sorted by key id so the output is deterministic.
    """
    if not keys:
        raise ValueError("at least one signing key is needed")
    message = pae(payload_type, payload)
    sigs = sorted(
        {k.key_id: Signature(k.key_id, k.sign(message)) for k in keys}.values(),
        key=lambda s: s.keyid,
    )
    return Envelope(payload_type, payload, tuple(sigs)).to_bytes()


def count_valid(
    env: Envelope, trusted: Mapping[str, PublicKey] | Iterable[PublicKey]
) -> frozenset[bytes]:
    """The set of distinct trusted *raw public keys* with a valid signature on ``env``."""
    by_id: dict[str, PublicKey] = {}
    keys = trusted.values() if isinstance(trusted, Mapping) else trusted
    for key in keys:
        # The id is recomputed from the key: a document cannot list one key under two ids.
        by_id[key.key_id] = key
    message = pae(env.payload_type, env.payload)
    good: set[bytes] = set()
    for sig in env.signatures:
        key = by_id.get(sig.keyid)
        if key is not None and key.raw not in good and key.is_valid_signature(message, sig.sig):
            good.add(key.raw)
    return frozenset(good)


def verify_envelope(
    data: bytes,
    *,
    payload_type: str,
    trusted: Mapping[str, PublicKey] | Iterable[PublicKey],
    threshold: int,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedPayload:
    """Verify ``data`` and return its payload bytes.

    Args:
        payload_type: the only payload type the caller accepts.
        trusted: the public keys allowed to sign this kind of document.
        threshold: how many distinct trusted keys must have signed (at least 1).

    Raises:
        EnvelopeFormatError: the envelope is malformed (see :func:`parse_envelope`).
        PayloadTypeError: the payload type differs from ``payload_type``.
        ThresholdError: fewer than ``threshold`` distinct trusted keys signed.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    env = parse_envelope(data, max_bytes)
    if env.payload_type != payload_type:
        raise PayloadTypeError(
            f"payload type is {env.payload_type[:100]!r}, expected {payload_type!r}"
        )
    good = count_valid(env, trusted)
    if len(good) < threshold:
        raise ThresholdError(
            f"{len(good)} valid signature(s) from trusted keys, {threshold} required"
        )
    return VerifiedPayload(env.payload_type, env.payload, frozenset(key_id_of(k) for k in good))
