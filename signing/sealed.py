"""Secrets sealed to one agent's X25519 key (threat 14, docs/keys-and-trust.md §"Sealed secrets").

A secret travels inside a signed manifest as a NaCl ``SealedBox`` (an ephemeral X25519 key, then
XSalsa20-Poly1305) addressed to the agent's *box* key, which is separate from its Ed25519
identity key. The plaintext is the canonical strict JSON::

    {"agent_id": "...", "bundle_id": "...", "name": "...", "value": "..."}

so a sealed secret copied into another bundle, addressed to another agent, or moved under
another name is refused even though it decrypts: :func:`open_secret` compares each context
field with what the caller expects.

A sealed box proves nothing about who sealed it (anyone holding the public key can); its
authenticity comes from the manifest signature that covers it. Error messages name the field
and the expected context, never the secret value nor the context found inside. This module does
no I/O and does not decide *when* to open a secret (just in time, by the agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import nacl.bindings
import nacl.exceptions
import nacl.public

from signing.errors import SealedSecretError, StrictJSONError
from signing.keys import BoxKeyPair, BoxPublicKey
from signing.strictjson import dumps_canonical, loads_strict

__all__ = ["MAX_SEALED_BYTES", "SEALED_OVERHEAD_BYTES", "open_secret", "seal_secret"]

MAX_SEALED_BYTES = 64 * 1024  # bytes of one sealed secret, overhead and context included
SEALED_OVERHEAD_BYTES: int = nacl.bindings.crypto_box_SEALBYTES  # 48: ephemeral key + MAC
MAX_CONTEXT_CHARS = 256  # characters of bundle_id, agent_id or name
_CONTEXT = ("bundle_id", "agent_id", "name")
_FIELDS = frozenset({*_CONTEXT, "value"})
T = TypeVar("T")


def _check_context(bundle_id: str, agent_id: str, name: str) -> None:
    for field, text in zip(_CONTEXT, (bundle_id, agent_id, name), strict=True):
        if not isinstance(text, str) or not text or len(text) > MAX_CONTEXT_CHARS:
            raise SealedSecretError(
                f"{field} must be a non-empty string of at most {MAX_CONTEXT_CHARS} characters"
            )


def _decrypt(keypair: BoxKeyPair, sealed: bytes) -> bytes:
    return bytes(nacl.public.SealedBox(keypair.nacl_private).decrypt(sealed))


def _quietly(func: Callable[..., T], *args: Any) -> T | None:
    """``func(*args)``, or None when it raises a crypto or strict JSON error.

    The caller raises its own error *outside* any ``except`` block, so the foreign exception
    (whose message could quote plaintext) is neither the cause nor the context of the error
    that may end up in a log.
    """
    try:
        return func(*args)
    except (nacl.exceptions.CryptoError, StrictJSONError):
        return None


def seal_secret(
    value: str, *, bundle_id: str, agent_id: str, name: str, recipient: BoxPublicKey
) -> bytes:
    """Seal ``value`` for the agent whose box public key is ``recipient``.

    Raises:
        SealedSecretError: empty or oversized context, ``value`` not a valid Unicode string,
            or the sealed result would exceed :data:`MAX_SEALED_BYTES`.
    """
    _check_context(bundle_id, agent_id, name)
    if not isinstance(value, str):
        raise SealedSecretError(f"secret {name!r}: the value must be a string")
    plaintext = _quietly(
        dumps_canonical,
        {"agent_id": agent_id, "bundle_id": bundle_id, "name": name, "value": value},
    )
    if plaintext is None:
        raise SealedSecretError(f"secret {name!r}: the value is not a valid Unicode string")
    size = len(plaintext) + SEALED_OVERHEAD_BYTES
    if size > MAX_SEALED_BYTES:
        raise SealedSecretError(
            f"secret {name!r} would be {size} bytes sealed, over the limit of "
            f"{MAX_SEALED_BYTES} bytes"
        )
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(recipient.raw)).encrypt(plaintext))


def open_secret(
    sealed: bytes, *, bundle_id: str, agent_id: str, name: str, keypair: BoxKeyPair
) -> str:
    """Open a sealed secret and return its value, after checking its context.

    Raises:
        SealedSecretError: oversized or truncated; sealed to another key or modified; the
            plaintext is malformed; or its bundle_id, agent_id or name differs from the one
            given (the message names the field).
    """
    _check_context(bundle_id, agent_id, name)
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise SealedSecretError(f"secret {name!r}: sealed data must be bytes")
    if len(sealed) > MAX_SEALED_BYTES:
        raise SealedSecretError(
            f"secret {name!r} is {len(sealed)} bytes sealed, over the limit of "
            f"{MAX_SEALED_BYTES} bytes"
        )
    if len(sealed) <= SEALED_OVERHEAD_BYTES:
        raise SealedSecretError(f"secret {name!r} is truncated ({len(sealed)} bytes)")
    plaintext = _quietly(_decrypt, keypair, bytes(sealed))
    if plaintext is None:
        raise SealedSecretError(
            f"secret {name!r} cannot be opened with box key {keypair.public.key_id[:16]}: "
            "it was sealed to another key or modified"
        )
    doc = _quietly(loads_strict, plaintext, MAX_SEALED_BYTES)
    if (
        doc is None
        or not isinstance(doc, dict)
        or set(doc) != _FIELDS
        or not all(isinstance(doc[f], str) for f in _FIELDS)
    ):
        raise SealedSecretError(f"secret {name!r}: the opened content is malformed")
    expected = {"bundle_id": bundle_id, "agent_id": agent_id, "name": name}
    for field in _CONTEXT:
        if doc[field] != expected[field]:
            raise SealedSecretError(
                f"secret {name!r} was sealed for another {field} "
                f"(expected {expected[field][:80]!r}); refusing to use it"
            )
    value: str = doc["value"]
    return value
