"""Errors of the signing package.

    SigningError
    ├── StrictJSONError          not strict JSON (duplicate key, float, bad UTF-8, too deep)
    ├── KeyFileError             a key file is unreadable, corrupt or of the wrong kind
    │   └── PassphraseError      the passphrase does not open the key file / none was given
    ├── SignatureError           an envelope does not carry the signatures it must (bad data)
    │   ├── EnvelopeFormatError  the envelope itself is malformed or oversized
    │   ├── PayloadTypeError     the payload type is not the one the caller expects
    │   └── ThresholdError       too few valid signatures from distinct trusted keys
    ├── TrustError               the trust chain does not allow this (bad data)
    │   ├── RootFormatError      a root document is malformed
    │   ├── RootRotationError    root N+1 is not properly signed by N and N+1, or skips versions
    │   ├── ExpiredError         a root or key has expired
    │   └── ApprovalFormatError  an approval or approval attestation is malformed
    └── SealedSecretError        a sealed secret cannot be opened or its context does not match

Every message is written for an operator: it names the rule and the numbers involved.
"""

from __future__ import annotations

__all__ = [
    "ApprovalFormatError",
    "EnvelopeFormatError",
    "ExpiredError",
    "KeyFileError",
    "PassphraseError",
    "PayloadTypeError",
    "RootFormatError",
    "RootRotationError",
    "SealedSecretError",
    "SignatureError",
    "SigningError",
    "StrictJSONError",
    "ThresholdError",
    "TrustError",
]


class SigningError(Exception):
    """Base of all signing errors."""


class StrictJSONError(SigningError, ValueError):
    """The bytes are not strict JSON as defined in docs/bundle-format.md §3."""


class KeyFileError(SigningError):
    """A key file cannot be used."""


class PassphraseError(KeyFileError):
    """Wrong or missing passphrase."""


class SignatureError(SigningError):
    """Signature verification failed."""


class EnvelopeFormatError(SignatureError):
    """The signed envelope is malformed."""


class PayloadTypeError(SignatureError):
    """The envelope's payload type is not the expected one."""


class ThresholdError(SignatureError):
    """Not enough valid signatures from distinct trusted public keys."""


class TrustError(SigningError):
    """The trust chain forbids this."""


class RootFormatError(TrustError):
    """A root document is malformed."""


class RootRotationError(TrustError):
    """A new root document is not a valid successor of the trusted one."""


class ExpiredError(TrustError):
    """A root document or key has expired."""


class ApprovalFormatError(TrustError):
    """An approval or approval-attestation document is malformed (docs/keys-and-trust.md)."""


class SealedSecretError(SigningError):
    """A sealed secret cannot be opened or does not belong here."""
