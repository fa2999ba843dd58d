"""Ed25519 signing keys and X25519 box keys, and their key ids.

A key id is the lowercase hex SHA-256 of the raw 32-byte public key (docs/bundle-format.md §4).
It is always computed from the key, never taken from a document: a key therefore has exactly
one id, and thresholds count distinct public keys.

This module holds keys in memory only; key files (encrypted at rest) are ``signing.keyfile``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing

from signing.errors import SignatureError

__all__ = [
    "RAW_KEY_BYTES",
    "SCHEME_ED25519",
    "SCHEME_X25519",
    "BoxKeyPair",
    "BoxPublicKey",
    "PublicKey",
    "SigningKey",
    "key_id_of",
]

SCHEME_ED25519 = "ed25519"
SCHEME_X25519 = "x25519"
RAW_KEY_BYTES = 32


def _raw_from_hex(text: object) -> bytes:
    if (
        not isinstance(text, str)
        or len(text) != 2 * RAW_KEY_BYTES
        or text.strip("0123456789abcdef")
    ):
        raise ValueError("public key must be 64 lowercase hex characters")
    return bytes.fromhex(text)


def key_id_of(raw_public: bytes) -> str:
    """Key id of a raw public key: hex SHA-256 of its 32 bytes."""
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != RAW_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {RAW_KEY_BYTES} bytes, not {len(self.raw)}")

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check ``signature`` over ``message``.

        Raises:
            SignatureError: the signature does not verify with this key.
        """
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as exc:
            raise SignatureError(f"signature does not verify with key {self.key_id[:16]}") from exc

    def is_valid_signature(self, message: bytes, signature: bytes) -> bool:
        try:
            self.verify(message, signature)
        except SignatureError:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"scheme": SCHEME_ED25519, "public": self.raw.hex()}

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Raises ValueError when ``text`` is not 64 lowercase hex characters."""
        return cls(_raw_from_hex(text))


class SigningKey:
    """An Ed25519 private key. Signing is deterministic (RFC 8032)."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != RAW_KEY_BYTES:
            raise ValueError(f"an Ed25519 seed is {RAW_KEY_BYTES} bytes, not {len(seed)}")
        self._key = nacl.signing.SigningKey(seed)
        # worked out once: every bundle and envelope signed names it
        self._key_id = key_id_of(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public(self) -> PublicKey:
        return PublicKey(bytes(self._key.verify_key))

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return bytes(self._key.sign(message).signature)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}…)"


@dataclass(frozen=True)
class BoxPublicKey:
    """An X25519 public key (an agent's key for sealed secrets; separate from its identity)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != RAW_KEY_BYTES:
            raise ValueError(f"an X25519 public key is {RAW_KEY_BYTES} bytes, not {len(self.raw)}")

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def to_json(self) -> dict[str, Any]:
        return {"scheme": SCHEME_X25519, "public": self.raw.hex()}

    @classmethod
    def from_hex(cls, text: str) -> BoxPublicKey:
        """Raises ValueError when ``text`` is not 64 lowercase hex characters."""
        return cls(_raw_from_hex(text))


class BoxKeyPair:
    """An X25519 key pair."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != RAW_KEY_BYTES:
            raise ValueError(f"an X25519 secret is {RAW_KEY_BYTES} bytes, not {len(secret)}")
        self._key = nacl.public.PrivateKey(secret)

    @classmethod
    def generate(cls) -> BoxKeyPair:
        return cls(bytes(nacl.public.PrivateKey.generate()))

    @property
    def secret(self) -> bytes:
        return bytes(self._key)

    @property
    def public(self) -> BoxPublicKey:
        return BoxPublicKey(bytes(self._key.public_key))

    @property
    def nacl_private(self) -> nacl.public.PrivateKey:
        return self._key

    def __repr__(self) -> str:
        return f"BoxKeyPair(key_id={self.public.key_id[:16]}…)"
