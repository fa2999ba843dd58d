"""The manifest's optional ``approvals`` field (docs/bundle-format.md §6.10).

A release bundle may carry up to :data:`MAX_MANIFEST_APPROVALS` approval and approval-
attestation envelopes (``signing.approvals``), each written into the manifest as the
strict-JSON envelope object itself. This module only checks their *framing*: canonical
envelopes of one of the two approval payload types, within the size caps, none twice. Whether
they count is decided after the bundle is verified, by ``signing.approvals.evaluate_approvals``
(the agent's approval check); an approval that does not count is never a format error.

:func:`manifest_verdict` applies that rule to a verified manifest for a verifier's own
environment (the agent's approval check, ``bundle verify --environment``).

It does no I/O and keeps each envelope as its exact bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bundle.errors import ManifestError, ReleaseFormatError
from bundle.release import content_hash_of_manifest
from signing.approvals import MAX_APPROVAL_BYTES, ReleaseRef, Verdict, evaluate_approvals
from signing.delegations import ANY_ENVIRONMENT
from signing.envelope import TYPE_APPROVAL, TYPE_APPROVAL_ATTESTATION, parse_envelope
from signing.errors import SignatureError, StrictJSONError
from signing.roots import RootDocument
from signing.strictjson import dumps_canonical, loads_strict

if TYPE_CHECKING:
    from bundle.manifest import Manifest

__all__ = [
    "MAX_APPROVALS_TOTAL_BYTES",
    "MAX_MANIFEST_APPROVALS",
    "approvals_from_json",
    "approvals_to_json",
    "check_approvals",
    "manifest_verdict",
]

MAX_MANIFEST_APPROVALS = 32  # envelopes one manifest carries
MAX_APPROVALS_TOTAL_BYTES = 256 * 1024  # bytes of all of them together
_TYPES = (TYPE_APPROVAL, TYPE_APPROVAL_ATTESTATION)


def check_approvals(envelopes: object) -> tuple[bytes, ...]:
    """Check the framing of the ``approvals`` of a manifest being built or parsed.

    Raises:
        ManifestError: not a tuple of bytes, too many or too large, not a canonical envelope
            of an approval payload type, or one envelope listed twice.
    """
    if not isinstance(envelopes, tuple) or not all(isinstance(e, bytes) for e in envelopes):
        raise ManifestError("approvals: must be a list of envelopes")
    if len(envelopes) > MAX_MANIFEST_APPROVALS:
        raise ManifestError(f"approvals: {len(envelopes)} envelopes, over the limit of "
                            f"{MAX_MANIFEST_APPROVALS}")
    total = sum(len(e) for e in envelopes)
    if total > MAX_APPROVALS_TOTAL_BYTES:
        raise ManifestError(f"approvals: {total} bytes, over the limit of "
                            f"{MAX_APPROVALS_TOTAL_BYTES} bytes")
    seen: dict[bytes, int] = {}
    for i, data in enumerate(envelopes):
        try:
            env = parse_envelope(data, MAX_APPROVAL_BYTES)
        except SignatureError as exc:
            raise ManifestError(f"approvals[{i}]: {exc}") from None
        if env.payload_type not in _TYPES:
            raise ManifestError(f"approvals[{i}]: payload type {env.payload_type[:100]!r} is "
                                "not an approval nor an approval attestation")
        if data in seen:
            raise ManifestError(f"approvals[{i}]: the same envelope as approvals[{seen[data]}]")
        seen[data] = i
    return envelopes


def approvals_from_json(value: object) -> tuple[bytes, ...]:
    """The envelopes of the manifest's ``approvals`` value (a list of envelope objects).

    Raises:
        ManifestError: not a list of objects, or see :func:`check_approvals`.
    """
    if not isinstance(value, list):
        raise ManifestError("approvals: must be a list")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ManifestError(f"approvals[{i}]: must be an envelope object")
        try:
            out.append(dumps_canonical(item))
        except StrictJSONError as exc:
            raise ManifestError(f"approvals[{i}]: {exc}") from None
    return check_approvals(tuple(out))


def approvals_to_json(envelopes: Sequence[bytes]) -> list[Any]:
    """The manifest value of ``envelopes``: each envelope's JSON object."""
    return [loads_strict(e, MAX_APPROVAL_BYTES) for e in envelopes]


def manifest_verdict(root: RootDocument, environment: str | None, manifest: Manifest,
                     floor: int) -> Verdict:
    """Do the approvals of the VERIFIED ``manifest`` meet ``root``'s delegation for
    ``environment`` (the verifier's own; None = an agent enrolled without one, held to
    ``"*"``) at time floor ``floor``? The content hash is recomputed from the manifest
    (docs/release-format.md §5), never taken from it.

    Raises:
        ReleaseFormatError: not a release manifest, or its content cannot be hashed.
    """
    if manifest.release is None:
        raise ReleaseFormatError(f"bundle {manifest.bundle_id} is not a release bundle")
    env = environment or ANY_ENVIRONMENT
    if root.delegation(env) is None:
        # Nothing required: no hashing (the common case costs nothing).
        return evaluate_approvals(root, env, ReleaseRef("", "", ""), "", (), floor)
    r = manifest.release
    return evaluate_approvals(root, env, ReleaseRef(r.product, r.version, r.author),
                              content_hash_of_manifest(manifest), manifest.approvals, floor)
