"""Web key files (signing/webkey.py): an approver key a browser can open with WebCrypto."""

from __future__ import annotations

import json

import pytest

from signing.errors import KeyFileError, PassphraseError
from signing.keys import SigningKey
from signing.webkey import MIN_WEB_ITERATIONS, decode_web_key, encode_web_key


def _file(key: SigningKey) -> bytes:
    return encode_web_key(key, label="alice", passphrase="pass word",
                          iterations=MIN_WEB_ITERATIONS)


def test_round_trip() -> None:
    key = SigningKey.generate()
    data = _file(key)
    doc = json.loads(data)
    assert doc["key_id"] == key.key_id and doc["role"] == "approver"
    assert key.seed.hex() not in data.decode() and "secret" not in doc
    assert decode_web_key(data, "pass word").seed == key.seed


def _edit(data: bytes, **fields: object) -> bytes:
    doc = json.loads(data)
    for name, value in fields.items():
        if name == "iterations":
            doc["kdf"]["iterations"] = value
        else:
            doc[name] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({}, PassphraseError, "wrong passphrase"),  # with the wrong passphrase below
        ({"key_id": "00" * 32}, KeyFileError, "key_id is not the public key's id"),
        ({"public": SigningKey.generate().public.raw.hex()}, KeyFileError, "key_id"),
        ({"iterations": 1000}, KeyFileError, "iterations must be"),
        ({"role": "release"}, KeyFileError, "unsupported"),
        ({"nonce": "AAAA"}, KeyFileError, "nonce must be 12 bytes"),
        ({"extra": 1}, KeyFileError, "is not a tiangong-web-key/1 file"),
    ],
)
def test_refused(change: dict[str, object], error: type[Exception], message: str) -> None:
    data = _edit(_file(SigningKey.generate()), **change)
    passphrase = "wrong" if not change else "pass word"
    with pytest.raises(error, match=message):
        decode_web_key(data, passphrase)


def test_moved_under_another_key_does_not_decrypt() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    moved = _edit(_file(a), key_id=b.key_id, public=b.public.raw.hex())
    with pytest.raises(PassphraseError):
        decode_web_key(moved, "pass word")
