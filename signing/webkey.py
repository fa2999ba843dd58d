"""Web key files: an approver key encrypted so that a browser can open it with WebCrypto.

A private key file (``signing.keyfile``) is protected with Argon2id and XSalsa20-Poly1305,
which browsers do not offer. To let an approver sign in the web UI (WebCrypto Ed25519)
without ever storing the key unencrypted, ``tiangong keys export-web`` re-encrypts the key
with primitives WebCrypto has::

    {"format": "tiangong-web-key/1", "scheme": "ed25519", "role": "approver",
     "label": "...", "key_id": "<hex sha256 of public>", "public": "<hex>",
     "kdf": {"name": "pbkdf2-sha256", "iterations": 600000, "salt": "<base64, 16 bytes>"},
     "cipher": "aes-256-gcm", "nonce": "<base64, 12 bytes>",
     "ciphertext": "<base64: the 32-byte Ed25519 seed + 16-byte tag>"}

The AES key is PBKDF2-HMAC-SHA256 of the passphrase; the key id is the GCM additional data,
so a ciphertext moved under another public key does not decrypt. The browser page
(``web/static/approve-sign.js``) derives, decrypts and imports the key as non-extractable;
:func:`decode_web_key` does the same in Python (tests, and to check a file).

This module does no I/O and only handles approver keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from signing.errors import KeyFileError, PassphraseError
from signing.keys import PublicKey, SigningKey
from signing.passphrase import passphrase_bytes

__all__ = [
    "FORMAT_WEB",
    "MAX_WEB_ITERATIONS",
    "MIN_WEB_ITERATIONS",
    "WEB_ITERATIONS",
    "decode_web_key",
    "encode_web_key",
]

FORMAT_WEB = "tiangong-web-key/1"
WEB_ITERATIONS = 600_000  # PBKDF2-HMAC-SHA256 rounds written (OWASP's 2023 figure)
MIN_WEB_ITERATIONS = 100_000  # a file asking for fewer is refused
MAX_WEB_ITERATIONS = 10_000_000  # a file asking for more is refused (a browser would hang)
_FIELDS = frozenset({"format", "scheme", "role", "label", "key_id", "public", "kdf", "cipher",
                     "nonce", "ciphertext"})


def _derive(passphrase: str | bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", passphrase_bytes(passphrase), salt, iterations, 32)


def encode_web_key(key: SigningKey, *, label: str, passphrase: str | bytes,
                   iterations: int = WEB_ITERATIONS) -> bytes:
    """The web key file of the approver ``key``, encrypted under ``passphrase``.

    Raises:
        KeyFileError: ``iterations`` out of range.
        PassphraseError: empty passphrase.
    """
    if not MIN_WEB_ITERATIONS <= iterations <= MAX_WEB_ITERATIONS:
        raise KeyFileError(f"iterations must be {MIN_WEB_ITERATIONS}..{MAX_WEB_ITERATIONS}")
    if not passphrase_bytes(passphrase):
        raise PassphraseError("the web key file needs a passphrase")
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_derive(passphrase, salt, iterations)).encrypt(
        nonce, key.seed, key.key_id.encode("ascii"))
    doc = {
        "format": FORMAT_WEB, "scheme": "ed25519", "role": "approver", "label": label,
        "key_id": key.key_id, "public": key.public.raw.hex(),
        "kdf": {"name": "pbkdf2-sha256", "iterations": iterations,
                "salt": base64.b64encode(salt).decode("ascii")},
        "cipher": "aes-256-gcm", "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _b64(doc: dict[str, Any], name: str, size: int, source: str) -> bytes:
    try:
        raw = base64.b64decode(str(doc[name]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"web key file {source}: {name} is not base64") from exc
    if len(raw) != size:
        raise KeyFileError(f"web key file {source}: {name} must be {size} bytes")
    return raw


def decode_web_key(data: bytes, passphrase: str | bytes, *, source: str = "<bytes>"
                   ) -> SigningKey:
    """The approver key in the web key file ``data``.

    Raises:
        KeyFileError: malformed (names the field), or the secret is not the listed key's.
        PassphraseError: wrong passphrase (or a tampered file).
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"web key file {source} is not JSON") from exc
    if not isinstance(doc, dict) or set(doc) != _FIELDS or doc["format"] != FORMAT_WEB:
        raise KeyFileError(f"{source} is not a {FORMAT_WEB} file")
    kdf = doc["kdf"]
    if (not isinstance(kdf, dict) or set(kdf) != {"name", "iterations", "salt"}
            or kdf["name"] != "pbkdf2-sha256" or doc["cipher"] != "aes-256-gcm"
            or doc["scheme"] != "ed25519" or doc["role"] != "approver"):
        raise KeyFileError(f"web key file {source}: unsupported kdf, cipher, scheme or role")
    iterations = kdf["iterations"]
    if (not isinstance(iterations, int) or isinstance(iterations, bool)
            or not MIN_WEB_ITERATIONS <= iterations <= MAX_WEB_ITERATIONS):
        raise KeyFileError(f"web key file {source}: iterations must be "
                           f"{MIN_WEB_ITERATIONS}..{MAX_WEB_ITERATIONS}")
    try:
        public = PublicKey.from_hex(str(doc["public"]))
    except ValueError as exc:
        raise KeyFileError(f"web key file {source}: public is not a key") from exc
    if public.key_id != doc["key_id"]:
        raise KeyFileError(f"web key file {source}: key_id is not the public key's id")
    salt = _b64(kdf, "salt", 16, source)
    nonce = _b64(doc, "nonce", 12, source)
    sealed = _b64(doc, "ciphertext", 48, source)
    try:
        seed = AESGCM(_derive(passphrase, salt, iterations)).decrypt(
            nonce, sealed, public.key_id.encode("ascii"))
    except InvalidTag:
        raise PassphraseError(f"web key file {source}: wrong passphrase") from None
    key = SigningKey(seed)
    if key.public.raw != public.raw:
        raise KeyFileError(f"web key file {source}: the secret does not belong to its key")
    return key
