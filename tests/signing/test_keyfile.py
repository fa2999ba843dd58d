"""signing.keyfile: encrypted and unencrypted private key files, public key files, passphrase
sources, atomic writes. Argon2id runs at the cheapest cost (``FAST_KDF``) to keep this fast."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signing.errors import KeyFileError, PassphraseError, SigningError
from signing.keyfile import (
    FORMAT_PRIVATE,
    FORMAT_PUBLIC,
    KDF_PROFILES,
    MAX_KEY_FILE_BYTES,
    KdfParams,
    decode_private_key,
    encode_private_key,
    export_public,
    load_private_key,
    load_public_key,
    parse_key_info,
    parse_public_key,
    read_key_info,
    save_private_key,
    write_public_key,
)
from signing.keys import BoxKeyPair, SigningKey
from tests.signing.helpers import FAST_KDF

PASS = "correct horse battery staple"


def encode(key: SigningKey | BoxKeyPair, role: str = "release", **kw: Any) -> bytes:
    kw.setdefault("passphrase", PASS)
    kw.setdefault("kdf", FAST_KDF)
    return encode_private_key(key, role=role, label="test key", **kw)


def other_files(directory: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "role", "scheme"),
    [(SigningKey.generate, "root", "ed25519"), (SigningKey.generate, "release", "ed25519"),
     (SigningKey.generate, "audit", "ed25519"), (SigningKey.generate, "agent", "ed25519"),
     (BoxKeyPair.generate, "agent", "x25519")],
)
def test_round_trip(tmp_path: Path, make: Callable[[], Any], role: str, scheme: str) -> None:
    key = make()
    path = tmp_path / "k.key"
    info = save_private_key(path, key, role=role, label="plant A", passphrase=PASS, kdf=FAST_KDF)
    assert (info.kind, info.role, info.scheme, info.label) == ("private", role, scheme, "plant A")
    assert info.encrypted and info.kdf == FAST_KDF
    loaded = load_private_key(path, passphrase=PASS)
    assert loaded.encrypted
    assert loaded.info.key_id == key.public.key_id == info.key_id
    if scheme == "ed25519":
        assert loaded.signing_key().seed == key.seed
        with pytest.raises(KeyFileError):
            loaded.box_keypair()
    else:
        assert loaded.box_keypair().secret == key.secret
        with pytest.raises(KeyFileError):
            loaded.signing_key()
    doc = json.loads(path.read_bytes())
    assert doc["format"] == FORMAT_PRIVATE and doc["protection"] == "passphrase"
    assert doc["kdf"]["opslimit"] == FAST_KDF.opslimit
    assert doc["kdf"]["memlimit"] == FAST_KDF.memlimit
    assert key.public.raw.hex() == doc["public"]
    secret = key.seed if isinstance(key, SigningKey) else key.secret
    assert secret.hex() not in path.read_text()
    assert base64.b64encode(secret).decode() not in path.read_text()


@pytest.mark.parametrize(
    ("written", "typed"),
    [(PASS, PASS.encode()), ("caf\u00e9", "cafe\u0301"), ("пароль", "пароль"),
     (b"\xff\x00", b"\xff\x00")],
    ids=["str-vs-bytes", "nfc-vs-nfd", "cyrillic", "raw-bytes"],
)
def test_passphrase_forms(written: str | bytes, typed: str | bytes) -> None:
    key = SigningKey.generate()
    data = encode(key, passphrase=written)
    assert decode_private_key(data, passphrase=typed).info.key_id == key.key_id


def test_kdf_cost_is_read_from_the_file() -> None:
    key = SigningKey.generate()
    data = encode(key, kdf=KdfParams(2, 16384))
    info = parse_key_info(data)
    assert info.kdf == KdfParams(2, 16384)
    assert decode_private_key(data, passphrase=PASS).info.key_id == key.key_id


def test_default_profile_is_moderate() -> None:
    assert KDF_PROFILES["moderate"].memlimit == 256 * 1024 * 1024
    assert KDF_PROFILES["interactive"].memlimit < KDF_PROFILES["moderate"].memlimit
    assert KDF_PROFILES["moderate"].memlimit < KDF_PROFILES["sensitive"].memlimit


def test_header_is_readable_without_passphrase() -> None:
    key = SigningKey.generate()
    info = parse_key_info(encode(key), source="x.key")
    assert info.key_id == key.key_id and info.source == "x.key" and info.encrypted


# --- wrong passphrase and tampering ---------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["", "Correct horse battery staple", PASS + " ", "x" * 2000])
def test_wrong_passphrase(tmp_path: Path, wrong: str) -> None:
    path = tmp_path / "release.key"
    save_private_key(path, SigningKey.generate(), role="release", label="", passphrase=PASS,
                     kdf=FAST_KDF)
    with pytest.raises(PassphraseError) as info:
        load_private_key(path, passphrase=wrong)
    assert str(path) in str(info.value) or "passphrase" in str(info.value)
    if wrong and len(wrong) < 100:
        assert "wrong passphrase" in str(info.value) and str(path) in str(info.value)
        assert wrong not in str(info.value)


def test_missing_passphrase_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "release.key"
    save_private_key(path, SigningKey.generate(), role="release", label="", passphrase=PASS,
                     kdf=FAST_KDF)
    with pytest.raises(PassphraseError, match=r"release\.key is encrypted"):
        load_private_key(path, passphrase=None)


def _b64_flip(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return change


OTHER = SigningKey.generate()

TAMPER_CASES: list[tuple[str, Callable[[dict[str, Any]], None], type[KeyFileError]]] = [
    ("ciphertext-flipped", _set("ciphertext", value=_b64_flip), PassphraseError),
    ("nonce-flipped", _set("nonce", value=_b64_flip), PassphraseError),
    ("salt-flipped", _set("kdf", "salt", value=_b64_flip), PassphraseError),
    ("cost-lowered", _set("kdf", "opslimit", value=2), PassphraseError),
    ("ciphertext-truncated", _set("ciphertext", value=lambda t: base64.b64encode(
        base64.b64decode(t)[:-1]).decode()), PassphraseError),
    ("public-replaced", lambda d: d.update(public=OTHER.public.raw.hex(), key_id=OTHER.key_id),
     KeyFileError),
    ("role-changed", _set("role", value="root"), KeyFileError),
    ("label-changed", _set("label", value="innocent"), KeyFileError),
    ("key-id-changed", _set("key_id", value="0" * 64), KeyFileError),
    ("scheme-changed", _set("scheme", value="x25519"), KeyFileError),
    ("memlimit-huge", _set("kdf", "memlimit", value=1 << 40), KeyFileError),
    ("opslimit-zero", _set("kdf", "opslimit", value=0), KeyFileError),
    ("opslimit-bool", _set("kdf", "opslimit", value=True), KeyFileError),
    ("kdf-unknown", _set("kdf", "name", value="scrypt"), KeyFileError),
    ("salt-short", _set("kdf", "salt", value="AAAA"), KeyFileError),
    ("nonce-bad-base64", _set("nonce", value="!!"), KeyFileError),
    ("format-wrong", _set("format", value="tiangong-private-key/2"), KeyFileError),
    ("protection-none-with-ciphertext", _set("protection", value="none"), KeyFileError),
    ("protection-unknown", _set("protection", value="hsm"), KeyFileError),
    ("extra-field", lambda d: d.update(comment="x"), KeyFileError),
    ("missing-nonce", lambda d: d.pop("nonce"), KeyFileError),
    ("label-control-chars", _set("label", value="ok\x1b[2Jgone"), KeyFileError),
    ("role-unknown", _set("role", value="admin"), KeyFileError),
]


@pytest.mark.parametrize(("change", "error"), [c[1:] for c in TAMPER_CASES],
                         ids=[c[0] for c in TAMPER_CASES])
def test_tampered_file_is_refused(
    change: Callable[[dict[str, Any]], None], error: type[KeyFileError]
) -> None:
    doc = json.loads(encode(SigningKey.generate()))
    change(doc)
    data = json.dumps(doc).encode()
    with pytest.raises(KeyFileError) as info:
        decode_private_key(data, passphrase=PASS, source="tampered.key")
    assert info.type is error, str(info.value)
    assert "tampered.key" in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not strict JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format":"tiangong-private-key/1","format":"x"}', "duplicate key"),
        (b'{"format":"ssh-ed25519"}', "format is"),
        (b"\xff", "not strict JSON"),
        (b" " * (MAX_KEY_FILE_BYTES + 1), "over the limit"),
    ],
)
def test_malformed_files(data: bytes, fragment: str) -> None:
    with pytest.raises(KeyFileError, match=fragment):
        decode_private_key(data, passphrase=PASS, source="bad.key")


def test_public_file_is_not_a_private_key() -> None:
    key = SigningKey.generate()
    pub = export_public(parse_key_info(encode(key)))
    with pytest.raises(KeyFileError, match="public key file"):
        decode_private_key(pub, passphrase=PASS, source="k.pub")
    with pytest.raises(KeyFileError, match="private key file"):
        parse_public_key(encode(key), source="k.key")


# --- unencrypted variant --------------------------------------------------------------------------


def test_unencrypted_only_on_request(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with pytest.raises(PassphraseError, match="insecure-no-passphrase"):
        encode(key, passphrase=None)
    with pytest.raises(ValueError):
        encode(key, passphrase=PASS, insecure_no_passphrase=True)
    path = tmp_path / "agent.key"
    info = save_private_key(path, key, role="agent", label="", passphrase=None,
                            insecure_no_passphrase=True)
    assert not info.encrypted and info.protection == "none" and info.kdf is None
    doc = json.loads(path.read_bytes())
    assert doc["protection"] == "none" and "ciphertext" not in doc
    loaded = load_private_key(path, passphrase=None)
    assert not loaded.encrypted
    assert loaded.signing_key().seed == key.seed
    assert load_private_key(path, passphrase="ignored").signing_key().seed == key.seed


def test_unencrypted_secret_must_match_public() -> None:
    doc = json.loads(encode(SigningKey.generate(), passphrase=None, insecure_no_passphrase=True))
    doc["secret"] = base64.b64encode(OTHER.seed).decode()
    with pytest.raises(KeyFileError) as info:
        decode_private_key(json.dumps(doc).encode(), passphrase=None, source="a.key")
    assert info.type is KeyFileError
    assert "does not belong" in str(info.value)


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "role", "label"),
    [(SigningKey.generate(), "admin", ""), (BoxKeyPair.generate(), "release", ""),
     (SigningKey.generate(), "release", "x" * 201), (SigningKey.generate(), "release", "a\nb"),
     (SigningKey.generate(), "release", "rtl\u202egnp.exe")],
    ids=["unknown-role", "x25519-not-agent", "long-label", "newline", "bidi-override"],
)
def test_encode_refuses_bad_arguments(key: Any, role: str, label: str) -> None:
    with pytest.raises(ValueError):
        encode_private_key(key, role=role, label=label, passphrase=PASS, kdf=FAST_KDF)


@pytest.mark.parametrize(("ops", "mem"), [(0, 8192), (1, 8191), (17, 8192), (1, 1 << 31)])
def test_kdf_params_bounds(ops: int, mem: int) -> None:
    with pytest.raises(ValueError):
        KdfParams(ops, mem)


# --- files: modes, atomicity, overwrite -----------------------------------------------------------


def test_private_file_is_0600_and_public_0644(tmp_path: Path, umask_022: None) -> None:
    key = SigningKey.generate()
    info = save_private_key(tmp_path / "k.key", key, role="release", label="",
                            passphrase=PASS, kdf=FAST_KDF)
    write_public_key(tmp_path / "k.key.pub", info)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.key.pub").stat().st_mode) == 0o644
    assert other_files(tmp_path, "k.key", "k.key.pub") == []


def test_private_file_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "k.key", SigningKey.generate(), role="release", label="",
                         passphrase=PASS, kdf=FAST_KDF)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", ["file", "symlink", "dangling-symlink"])
def test_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    path = tmp_path / "k.key"
    target = tmp_path / "target"
    if existing == "file":
        path.write_bytes(b"old")
    else:
        if existing == "symlink":
            target.write_bytes(b"old")
        path.symlink_to(target)
    with pytest.raises(KeyFileError) as info:
        save_private_key(path, SigningKey.generate(), role="release", label="",
                         passphrase=PASS, kdf=FAST_KDF)
    assert info.type is KeyFileError
    assert str(path) in str(info.value) and "--force" in str(info.value)
    if existing != "dangling-symlink":
        assert path.read_bytes() == b"old"
    assert other_files(tmp_path, "k.key", "target") == []


def test_force_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    key = SigningKey.generate()
    save_private_key(path, key, role="release", label="", passphrase=PASS, kdf=FAST_KDF,
                     force=True)
    assert load_private_key(path, passphrase=PASS).info.key_id == key.key_id
    assert other_files(tmp_path, "k.key") == []


# --- public key files -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [SigningKey.generate(), BoxKeyPair.generate()],
                         ids=["ed25519", "x25519"])
def test_public_file_round_trip(tmp_path: Path, key: Any) -> None:
    info = save_private_key(tmp_path / "k.key", key, role="agent", label="edge 1",
                            passphrase=PASS, kdf=FAST_KDF)
    write_public_key(tmp_path / "k.pub", info)
    pub = load_public_key(tmp_path / "k.pub")
    assert (pub.kind, pub.key_id, pub.role, pub.label, pub.public) == (
        "public", info.key_id, "agent", "edge 1", key.public.raw)
    doc = json.loads((tmp_path / "k.pub").read_bytes())
    assert doc == {"format": FORMAT_PUBLIC, "scheme": info.scheme, "role": "agent",
                   "label": "edge 1", "key_id": info.key_id, "public": key.public.raw.hex()}
    assert read_key_info(tmp_path / "k.pub") == pub
    if isinstance(key, SigningKey):
        assert pub.ed25519_public() == key.public
        with pytest.raises(KeyFileError):
            pub.box_public()
    else:
        assert pub.box_public() == key.public
        with pytest.raises(KeyFileError):
            pub.ed25519_public()
    with pytest.raises(KeyFileError, match="exists"):
        write_public_key(tmp_path / "k.pub", info)


@pytest.mark.parametrize(
    "change",
    [lambda d: d.update(key_id="1" * 64), lambda d: d.update(public="AB" * 32),
     lambda d: d.update(extra=1), lambda d: d.pop("label"), lambda d: d.update(role="root2")],
    ids=["key-id", "upper-hex", "extra", "missing", "role"],
)
def test_public_file_refusals(change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(export_public(parse_key_info(encode(SigningKey.generate()))))
    change(doc)
    with pytest.raises(KeyFileError):
        parse_public_key(json.dumps(doc).encode(), source="p.pub")


def test_errors_are_signing_errors() -> None:
    assert issubclass(PassphraseError, KeyFileError)
    assert issubclass(KeyFileError, SigningError)
