"""Key files: private keys at rest (passphrase-encrypted) and public key files.

A private key file is strict JSON holding one key (docs/keys-and-trust.md §"Key files")::

    {"format": "tiangong-private-key/1", "scheme": "ed25519" | "x25519",
     "role": "root" | "release" | "audit" | "agent" | "approval" | "approver",
     "label": "...",
     "key_id": "<hex sha256 of public>", "public": "<hex>",
     "protection": "passphrase",
     "kdf": {"name": "argon2id", "opslimit": 3, "memlimit": 268435456, "salt": "<base64>"},
     "nonce": "<base64>", "ciphertext": "<base64>"}

The key for NaCl ``SecretBox`` (XSalsa20-Poly1305) is derived from the passphrase with Argon2id;
the cost parameters live in the file, so a file stays readable when the defaults change. The
ciphertext holds the canonical JSON ``{"label", "public", "role", "scheme", "secret"}``: the
header is authenticated by decrypting and comparing it, and the secret must reproduce the public
key, so a hand-edited file is refused rather than trusted.

``"protection": "none"`` (with ``"secret": "<base64>"`` instead of kdf/nonce/ciphertext) is
written only when the caller asks for it explicitly (``insecure_no_passphrase=True``, the CLI's
``--insecure-no-passphrase``), e.g. for an agent identity key inside a container whose volume is
the protection. Loading reports it (:attr:`KeyInfo.encrypted` is false).

A public key file is ``{"format": "tiangong-public-key/1", "scheme", "role", "label", "key_id",
"public"}``.

``encode_*``/``decode_*``/``parse_*`` work on bytes; ``save_*``/``load_*``/``read_*`` are thin
wrappers that add bounded reads and atomic writes (``signing.fileio``). Passphrases come from
``signing.passphrase.resolve_passphrase``, re-exported here with ``read_bounded`` and
``write_file_atomic`` for callers that import them from this module.

This module does not decide which keys are trusted (that is ``signing.roots``), and it cannot
wipe secrets from memory: Python offers no reliable way to do so.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from signing.errors import KeyFileError, PassphraseError, StrictJSONError
from signing.fileio import read_bounded, write_file_atomic
from signing.keys import (
    RAW_KEY_BYTES,
    SCHEME_ED25519,
    SCHEME_X25519,
    BoxKeyPair,
    BoxPublicKey,
    PublicKey,
    SigningKey,
    key_id_of,
)
from signing.passphrase import (
    DEFAULT_PASSPHRASE_ENV,
    MAX_PASSPHRASE_BYTES,
    passphrase_bytes,
    resolve_passphrase,
)
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "DEFAULT_KDF_PROFILE",
    "DEFAULT_PASSPHRASE_ENV",
    "FORMAT_PRIVATE",
    "FORMAT_PUBLIC",
    "KDF_PROFILES",
    "KEY_ROLES",
    "MAX_KEY_FILE_BYTES",
    "MAX_LABEL_CHARS",
    "MAX_PASSPHRASE_BYTES",
    "KdfParams",
    "KeyInfo",
    "LoadedKey",
    "decode_private_key",
    "encode_private_key",
    "export_public",
    "load_private_key",
    "load_public_key",
    "parse_key_info",
    "parse_public_key",
    "read_bounded",
    "read_key_info",
    "resolve_passphrase",
    "save_private_key",
    "write_file_atomic",
    "write_public_key",
]

FORMAT_PRIVATE = "tiangong-private-key/1"
FORMAT_PUBLIC = "tiangong-public-key/1"
KEY_ROLES = ("root", "release", "audit", "agent", "approval", "approver")

MAX_KEY_FILE_BYTES = 16 * 1024  # bytes; a key file is a few hundred bytes
MAX_LABEL_CHARS = 200  # characters

# Bounds on the cost parameters accepted *from a file*: a file asking for more is refused
# instead of making the loader allocate gigabytes.
MAX_KDF_OPSLIMIT = 16  # Argon2id passes
MAX_KDF_MEMLIMIT = 1024 * 1024 * 1024  # bytes (the "sensitive" profile)

PROTECTION_PASSPHRASE = "passphrase"  # noqa: S105 (a format keyword)
PROTECTION_NONE = "none"
_KDF_NAME = "argon2id"
_HEADER = ("format", "scheme", "role", "label", "key_id", "public")
_PRIVATE_FIELDS = {
    PROTECTION_PASSPHRASE: frozenset(_HEADER) | {"protection", "kdf", "nonce", "ciphertext"},
    PROTECTION_NONE: frozenset(_HEADER) | {"protection", "secret"},
}
_INNER_FIELDS = frozenset({"label", "public", "role", "scheme", "secret"})


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost: ``opslimit`` passes over ``memlimit`` bytes of memory.

    Low values (``KdfParams(1, 8192)``) are for tests only; operators pick a profile.
    """

    opslimit: int
    memlimit: int  # bytes

    def __post_init__(self) -> None:
        if not argon2id.OPSLIMIT_MIN <= self.opslimit <= MAX_KDF_OPSLIMIT:
            raise ValueError(
                f"Argon2id opslimit must be between {argon2id.OPSLIMIT_MIN} and "
                f"{MAX_KDF_OPSLIMIT}, not {self.opslimit}"
            )
        if not argon2id.MEMLIMIT_MIN <= self.memlimit <= MAX_KDF_MEMLIMIT:
            raise ValueError(
                f"Argon2id memlimit must be between {argon2id.MEMLIMIT_MIN} and "
                f"{MAX_KDF_MEMLIMIT} bytes, not {self.memlimit}"
            )


KDF_PROFILES: Mapping[str, KdfParams] = {
    "interactive": KdfParams(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": KdfParams(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": KdfParams(argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
DEFAULT_KDF_PROFILE = "moderate"


@dataclass(frozen=True)
class KeyInfo:
    """What a key file says about its key, without the secret.

    ``kind`` is ``"private"`` or ``"public"``; ``protection`` is ``"passphrase"`` or ``"none"``
    for private files and ``None`` for public ones; ``source`` names the file in messages.
    """

    kind: str
    scheme: str
    role: str
    label: str
    key_id: str
    public: bytes
    protection: str | None = None
    kdf: KdfParams | None = None
    source: str = "<bytes>"

    @property
    def encrypted(self) -> bool:
        return self.protection == PROTECTION_PASSPHRASE

    def ed25519_public(self) -> PublicKey:
        """Raises KeyFileError when this is not an Ed25519 key."""
        if self.scheme != SCHEME_ED25519:
            raise KeyFileError(
                f"key file {self.source}: holds an {self.scheme} key, an ed25519 key is needed"
            )
        return PublicKey(self.public)

    def box_public(self) -> BoxPublicKey:
        """Raises KeyFileError when this is not an X25519 key."""
        if self.scheme != SCHEME_X25519:
            raise KeyFileError(
                f"key file {self.source}: holds an {self.scheme} key, an x25519 key is needed"
            )
        return BoxPublicKey(self.public)

    def public_json(self) -> dict[str, Any]:
        """The public key file document for this key."""
        return {
            "format": FORMAT_PUBLIC,
            "scheme": self.scheme,
            "role": self.role,
            "label": self.label,
            "key_id": self.key_id,
            "public": self.public.hex(),
        }


class LoadedKey:
    """A private key read from a key file: its :class:`KeyInfo` and the secret."""

    __slots__ = ("_secret", "info")

    def __init__(self, info: KeyInfo, secret: bytes) -> None:
        self.info = info
        self._secret = secret

    @property
    def encrypted(self) -> bool:
        """False when the file stored the key without a passphrase."""
        return self.info.encrypted

    def signing_key(self) -> SigningKey:
        """Raises KeyFileError when the file does not hold an Ed25519 key."""
        self.info.ed25519_public()
        return SigningKey(self._secret)

    def box_keypair(self) -> BoxKeyPair:
        """Raises KeyFileError when the file does not hold an X25519 key."""
        self.info.box_public()
        return BoxKeyPair(self._secret)

    def __repr__(self) -> str:
        return f"LoadedKey({self.info.role} {self.info.scheme} {self.info.key_id[:16]}…)"


# --- encoding and decoding (no I/O) -------------------------------------------------------


def encode_private_key(
    key: SigningKey | BoxKeyPair,
    *,
    role: str,
    label: str,
    passphrase: str | bytes | None,
    kdf: KdfParams | None = None,
    insecure_no_passphrase: bool = False,
) -> bytes:
    """The bytes of a private key file for ``key``.

    ``kdf`` defaults to the ``moderate`` profile. With ``insecure_no_passphrase`` (and no
    passphrase) the secret is stored unencrypted and the file says so.

    Raises:
        PassphraseError: no passphrase and ``insecure_no_passphrase`` not set.
        ValueError: both a passphrase and ``insecure_no_passphrase``; bad role or label.
    """
    scheme, secret, public = _key_material(key)
    _check_role_label(scheme, role, label, ValueError)
    header: dict[str, Any] = {
        "format": FORMAT_PRIVATE,
        "scheme": scheme,
        "role": role,
        "label": label,
        "key_id": key_id_of(public),
        "public": public.hex(),
    }
    if insecure_no_passphrase:
        if passphrase is not None:
            raise ValueError("a passphrase and insecure_no_passphrase exclude each other")
        doc = {**header, "protection": PROTECTION_NONE, "secret": _b64(secret)}
        return _pretty(doc)
    if passphrase is None:
        raise PassphraseError(
            "no passphrase given; a private key is stored unencrypted only on explicit request "
            "(--insecure-no-passphrase)"
        )
    params = KDF_PROFILES[DEFAULT_KDF_PROFILE] if kdf is None else kdf
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, params))
    inner = dumps_canonical(
        {"label": label, "public": public.hex(), "role": role, "scheme": scheme,
         "secret": _b64(secret)}
    )
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = bytes(box.encrypt(inner, nonce).ciphertext)
    doc = {
        **header,
        "protection": PROTECTION_PASSPHRASE,
        "kdf": {"name": _KDF_NAME, "opslimit": params.opslimit, "memlimit": params.memlimit,
                "salt": _b64(salt)},
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    return _pretty(doc)


def parse_key_info(data: bytes, *, source: str = "<bytes>") -> KeyInfo:
    """The header of a private or public key file, without decrypting anything.

    The public key it reports is *not* authenticated for an encrypted private file until the
    file is decrypted (:func:`decode_private_key`); do not certify keys from this alone.

    Raises:
        KeyFileError: not a well-formed key file of either kind.
    """
    doc = _load_doc(data, source)
    if doc.get("format") == FORMAT_PUBLIC:
        return _public_info(doc, source)
    return _private_header(doc, source)[0]


def decode_private_key(
    data: bytes, *, passphrase: str | bytes | None, source: str = "<bytes>"
) -> LoadedKey:
    """Decrypt a private key file; the passphrase is ignored for an unencrypted file.

    Raises:
        PassphraseError: the file is encrypted and ``passphrase`` is None, empty or wrong (or
            the ciphertext was modified: the two cannot be told apart).
        KeyFileError: malformed, a public key file, or the decrypted key does not match the
            header (role, label, scheme, public key).
    """
    doc = _load_doc(data, source)
    info, body = _private_header(doc, source)
    if info.protection == PROTECTION_NONE:
        secret = _unb64(body["secret"], "secret", source)
    else:
        if passphrase is None:
            raise PassphraseError(f"key file {source} is encrypted and no passphrase was given")
        assert info.kdf is not None
        salt = _unb64(body["kdf"]["salt"], "kdf salt", source)
        nonce = _unb64(body["nonce"], "nonce", source)
        ciphertext = _unb64(body["ciphertext"], "ciphertext", source)
        if len(salt) != argon2id.SALTBYTES or len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
            raise KeyFileError(f"key file {source}: salt or nonce has the wrong length")
        box = nacl.secret.SecretBox(_derive(passphrase, salt, info.kdf))
        try:
            inner_bytes = box.decrypt(ciphertext, nonce)
        except nacl.exceptions.CryptoError:
            raise PassphraseError(
                f"key file {source}: wrong passphrase (or the file was modified)"
            ) from None
        try:
            inner = loads_strict(inner_bytes, MAX_KEY_FILE_BYTES)
        except StrictJSONError:
            raise KeyFileError(f"key file {source}: decrypted content is malformed") from None
        if not isinstance(inner, dict) or set(inner) != _INNER_FIELDS:
            raise KeyFileError(f"key file {source}: decrypted content is malformed")
        for name in ("scheme", "role", "label", "public"):
            if inner[name] != body[name]:
                raise KeyFileError(
                    f"key file {source}: field {name} differs from the encrypted copy "
                    "(the file was edited)"
                )
        secret = _unb64(inner["secret"], "secret", source)
    if len(secret) != RAW_KEY_BYTES:
        raise KeyFileError(f"key file {source}: the secret is not {RAW_KEY_BYTES} bytes")
    derived = (
        SigningKey(secret).public.raw
        if info.scheme == SCHEME_ED25519
        else BoxKeyPair(secret).public.raw
    )
    if derived != info.public:
        raise KeyFileError(
            f"key file {source}: the secret does not belong to public key {info.key_id[:16]}"
        )
    return LoadedKey(info, secret)


def export_public(info: KeyInfo) -> bytes:
    """The bytes of the public key file for ``info`` (from either kind of key file)."""
    return _pretty(info.public_json())


def parse_public_key(data: bytes, *, source: str = "<bytes>") -> KeyInfo:
    """Parse a public key file.

    Raises:
        KeyFileError: malformed, or a private key file.
    """
    doc = _load_doc(data, source)
    if doc.get("format") == FORMAT_PRIVATE:
        raise KeyFileError(
            f"{source} is a private key file; give its public file (keys export-public)"
        )
    return _public_info(doc, source)


# --- files ----------------------------------------------------------------------------------


def save_private_key(
    path: str | os.PathLike[str],
    key: SigningKey | BoxKeyPair,
    *,
    role: str,
    label: str,
    passphrase: str | bytes | None,
    kdf: KdfParams | None = None,
    insecure_no_passphrase: bool = False,
    force: bool = False,
) -> KeyInfo:
    """Write a private key file atomically with mode 0600.

    Raises:
        KeyFileError: the file exists and ``force`` is false, or it cannot be written.
        and the errors of :func:`encode_private_key`.
    """
    data = encode_private_key(
        key, role=role, label=label, passphrase=passphrase, kdf=kdf,
        insecure_no_passphrase=insecure_no_passphrase,
    )
    write_file_atomic(path, data, mode=0o600, overwrite=force)
    return parse_key_info(data, source=os.fspath(path))


def load_private_key(path: str | os.PathLike[str], *, passphrase: str | bytes | None) -> LoadedKey:
    """Read and decrypt a private key file (see :func:`decode_private_key`).

    Raises:
        KeyFileError, PassphraseError: as :func:`decode_private_key`, or unreadable.
    """
    source = os.fspath(path)
    return decode_private_key(
        read_bounded(Path(path), MAX_KEY_FILE_BYTES), passphrase=passphrase, source=source
    )


def read_key_info(path: str | os.PathLike[str]) -> KeyInfo:
    """The header of a private or public key file (see :func:`parse_key_info`)."""
    return parse_key_info(read_bounded(Path(path), MAX_KEY_FILE_BYTES), source=os.fspath(path))


def write_public_key(
    path: str | os.PathLike[str], info: KeyInfo, *, force: bool = False
) -> None:
    """Write the public key file for ``info`` atomically (mode 0644).

    Raises:
        KeyFileError: the file exists and ``force`` is false, or it cannot be written.
    """
    write_file_atomic(path, export_public(info), mode=0o644, overwrite=force)


def load_public_key(path: str | os.PathLike[str]) -> KeyInfo:
    """Read a public key file (see :func:`parse_public_key`)."""
    return parse_public_key(
        read_bounded(Path(path), MAX_KEY_FILE_BYTES), source=os.fspath(path)
    )


# --- helpers ----------------------------------------------------------------------------------


def _key_material(key: SigningKey | BoxKeyPair) -> tuple[str, bytes, bytes]:
    if isinstance(key, SigningKey):
        return SCHEME_ED25519, key.seed, key.public.raw
    if isinstance(key, BoxKeyPair):
        return SCHEME_X25519, key.secret, key.public.raw
    raise TypeError(f"expected SigningKey or BoxKeyPair, not {type(key).__name__}")


def _check_role_label(
    scheme: str, role: object, label: object, error: Callable[[str], Exception]
) -> None:
    if role not in KEY_ROLES:
        raise error(f"role must be one of {', '.join(KEY_ROLES)}, not {str(role)[:40]!r}")
    if scheme == SCHEME_X25519 and role != "agent":
        raise error("an x25519 (sealed-secret) key belongs to the agent role only")
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
        raise error(f"label must be a string of at most {MAX_LABEL_CHARS} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        # Labels are printed to terminals: no control, format (bidi) or unassigned characters.
        raise error("label must not contain control or format characters")


def _derive(passphrase: str | bytes, salt: bytes, params: KdfParams) -> bytes:
    return bytes(
        argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            passphrase_bytes(passphrase),
            salt,
            opslimit=params.opslimit,
            memlimit=params.memlimit,
        )
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object, what: str, source: str) -> bytes:
    if not isinstance(text, str):
        raise KeyFileError(f"key file {source}: {what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyFileError(f"key file {source}: {what} is not valid base64") from None
    if _b64(raw) != text:
        raise KeyFileError(f"key file {source}: {what} is not canonical base64")
    return raw


def _pretty(doc: Mapping[str, Any]) -> bytes:
    dumps_canonical(dict(doc))  # refuses anything strict JSON would not read back
    # Header first, in the order written: the file is read by people too.
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _load_doc(data: bytes, source: str) -> dict[str, Any]:
    try:
        doc = loads_strict(data, MAX_KEY_FILE_BYTES)
    except StrictJSONError as exc:
        raise KeyFileError(f"key file {source}: not strict JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise KeyFileError(f"key file {source}: not a JSON object")
    fmt = doc.get("format")
    if fmt not in (FORMAT_PRIVATE, FORMAT_PUBLIC):
        raise KeyFileError(
            f"key file {source}: format is {str(fmt)[:60]!r}, expected {FORMAT_PRIVATE!r} or "
            f"{FORMAT_PUBLIC!r}"
        )
    return doc


def _header_common(doc: Mapping[str, Any], source: str) -> tuple[str, bytes, str]:
    def fail(msg: str) -> KeyFileError:
        return KeyFileError(f"key file {source}: {msg}")

    scheme = doc["scheme"]
    if scheme not in (SCHEME_ED25519, SCHEME_X25519):
        raise fail(f"scheme must be {SCHEME_ED25519} or {SCHEME_X25519}")
    _check_role_label(scheme, doc["role"], doc["label"], fail)
    try:
        public = PublicKey.from_hex(doc["public"]).raw
    except ValueError as exc:
        raise fail(str(exc)) from None
    if doc["key_id"] != key_id_of(public):
        raise fail("key_id is not the SHA-256 of the public key")
    return scheme, public, doc["key_id"]


def _public_info(doc: Mapping[str, Any], source: str) -> KeyInfo:
    if set(doc) != set(_HEADER):
        raise KeyFileError(
            f"key file {source}: a public key file has exactly the fields {', '.join(_HEADER)}"
        )
    scheme, public, key_id = _header_common(doc, source)
    return KeyInfo("public", scheme, doc["role"], doc["label"], key_id, public, source=source)


def _private_header(doc: Mapping[str, Any], source: str) -> tuple[KeyInfo, Mapping[str, Any]]:
    if doc.get("format") != FORMAT_PRIVATE:
        raise KeyFileError(f"{source} is a public key file; a private key file is needed")
    protection = doc.get("protection")
    fields = _PRIVATE_FIELDS.get(protection) if isinstance(protection, str) else None
    if fields is None:
        raise KeyFileError(f"key file {source}: protection must be 'passphrase' or 'none'")
    if set(doc) != fields:
        raise KeyFileError(
            f"key file {source}: a private key file with protection {protection!r} has "
            f"exactly the fields {', '.join(sorted(fields))}"
        )
    scheme, public, key_id = _header_common(doc, source)
    kdf: KdfParams | None = None
    if protection == PROTECTION_PASSPHRASE:
        spec = doc["kdf"]
        if (
            not isinstance(spec, dict)
            or set(spec) != {"name", "opslimit", "memlimit", "salt"}
            or spec["name"] != _KDF_NAME
            or type(spec["opslimit"]) is not int
            or type(spec["memlimit"]) is not int
        ):
            raise KeyFileError(
                f"key file {source}: kdf must be {{name: argon2id, opslimit, memlimit, salt}}"
            )
        try:
            kdf = KdfParams(spec["opslimit"], spec["memlimit"])
        except ValueError as exc:
            raise KeyFileError(f"key file {source}: {exc}") from None
    info = KeyInfo("private", scheme, doc["role"], doc["label"], key_id, public,
                   protection, kdf, source)
    return info, doc
