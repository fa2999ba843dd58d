"""signing.sealed: the "secrets" rows of docs/security.md. The secret value must never appear
in an error message, in a chained exception, or in a repr."""

from __future__ import annotations

from typing import Any

import nacl.public
import pytest

from signing.errors import SealedSecretError, SigningError
from signing.keys import BoxKeyPair
from signing.sealed import MAX_SEALED_BYTES, SEALED_OVERHEAD_BYTES, open_secret, seal_secret
from signing.strictjson import dumps_canonical

SECRET = "pa55-W0rd-7f3a9c"  # distinctive, so a leak into a message is found
CONTEXT = {"bundle_id": "billing-2.4.0", "agent_id": "plant-a-01", "name": "db_password"}


@pytest.fixture
def agent() -> BoxKeyPair:
    return BoxKeyPair.generate()


def _all_text(exc: BaseException) -> str:
    """Every message reachable from ``exc``: its own, its cause and its context."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _assert_no_leak(exc: BaseException, secret: str = SECRET) -> None:
    assert secret not in _all_text(exc)
    assert exc.__cause__ is None


@pytest.mark.parametrize(
    "value",
    ["", SECRET, "ünïcødé 🔑", "line1\nline2\x00", '"quoted" \\ back', "x" * 10_000],
    ids=["empty", "ascii", "unicode", "control", "json-metachars", "10k"],
)
def test_round_trip(agent: BoxKeyPair, value: str) -> None:
    sealed = seal_secret(value, recipient=agent.public, **CONTEXT)
    assert value.encode() not in sealed or value == ""
    assert open_secret(sealed, keypair=agent, **CONTEXT) == value


def test_sealing_is_randomised(agent: BoxKeyPair) -> None:
    a = seal_secret(SECRET, recipient=agent.public, **CONTEXT)
    b = seal_secret(SECRET, recipient=agent.public, **CONTEXT)
    assert a != b
    assert len(a) == len(dumps_canonical({**CONTEXT, "value": SECRET})) + SEALED_OVERHEAD_BYTES


def test_sealed_to_another_agent(agent: BoxKeyPair) -> None:
    other = BoxKeyPair.generate()
    sealed = seal_secret(SECRET, recipient=other.public, **CONTEXT)
    with pytest.raises(SigningError) as info:
        open_secret(sealed, keypair=agent, **CONTEXT)
    assert info.type is SealedSecretError
    assert "sealed to another key" in str(info.value)
    assert agent.public.key_id[:16] in str(info.value)
    _assert_no_leak(info.value)


@pytest.mark.parametrize("field", sorted(CONTEXT))
def test_context_mismatch_names_the_field(agent: BoxKeyPair, field: str) -> None:
    sealed = seal_secret(SECRET, recipient=agent.public, **CONTEXT)
    expected = {**CONTEXT, field: "elsewhere"}
    with pytest.raises(SigningError) as info:
        open_secret(sealed, keypair=agent, **expected)
    assert info.type is SealedSecretError
    message = str(info.value)
    assert f"another {field}" in message
    assert expected[field] in message  # the expected context, which is not secret
    if field != "name":
        assert CONTEXT[field] not in message  # what was found inside is not echoed
    _assert_no_leak(info.value)


def _seal_raw(agent: BoxKeyPair, plaintext: bytes) -> bytes:
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(agent.public.raw)).encrypt(plaintext))


MALFORMED: list[tuple[str, bytes]] = [
    ("not-json", SECRET.encode()),
    ("bare-string", dumps_canonical(SECRET)),
    ("missing-name", dumps_canonical({"bundle_id": "b", "agent_id": "a", "value": SECRET})),
    ("extra-field", dumps_canonical({**CONTEXT, "value": SECRET, "note": SECRET})),
    ("value-not-string", dumps_canonical({**CONTEXT, "value": [SECRET]})),
    ("duplicate-key", b'{"agent_id":"plant-a-01","bundle_id":"billing-2.4.0","name":"db_password"'
                      b',"value":"x","' + SECRET.encode() + b'":1,"' + SECRET.encode() + b'":2}'),
    ("float", b'{"value":1.' + b"7" * 30 + b"}"),
    ("not-utf8", b"\xff" + SECRET.encode()),
]


@pytest.mark.parametrize("plaintext", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_plaintext(agent: BoxKeyPair, plaintext: bytes) -> None:
    with pytest.raises(SigningError) as info:
        open_secret(_seal_raw(agent, plaintext), keypair=agent, **CONTEXT)
    assert info.type is SealedSecretError
    _assert_no_leak(info.value)
    assert "7777777" not in _all_text(info.value)


@pytest.mark.parametrize(
    "mangle",
    [lambda s: s[:-1], lambda s: s[:SEALED_OVERHEAD_BYTES], lambda s: b"",
     lambda s: s + b"\x00", lambda s: bytes([s[0] ^ 1]) + s[1:],
     lambda s: s[:40] + bytes([s[40] ^ 0x80]) + s[41:], lambda s: s[:-1] + bytes([s[-1] ^ 1])],
    ids=["truncated", "overhead-only", "empty", "extended", "ephemeral-key-flipped",
         "mac-flipped", "ciphertext-flipped"],
)
def test_tampered_sealed_box(agent: BoxKeyPair, mangle: Any) -> None:
    sealed = seal_secret(SECRET, recipient=agent.public, **CONTEXT)
    with pytest.raises(SigningError) as info:
        open_secret(mangle(sealed), keypair=agent, **CONTEXT)
    assert info.type is SealedSecretError
    _assert_no_leak(info.value)


def test_size_cap(agent: BoxKeyPair) -> None:
    room = MAX_SEALED_BYTES - SEALED_OVERHEAD_BYTES - len(dumps_canonical({**CONTEXT, "value": ""}))
    fits = "s" * room
    assert open_secret(seal_secret(fits, recipient=agent.public, **CONTEXT), keypair=agent,
                       **CONTEXT) == fits
    with pytest.raises(SealedSecretError, match="over the limit") as info:
        seal_secret(fits + "Z", recipient=agent.public, **CONTEXT)
    assert fits not in str(info.value)
    with pytest.raises(SealedSecretError, match="over the limit"):
        open_secret(b"\x00" * (MAX_SEALED_BYTES + 1), keypair=agent, **CONTEXT)


@pytest.mark.parametrize(
    "context",
    [{**CONTEXT, "bundle_id": ""}, {**CONTEXT, "agent_id": "a" * 257}, {**CONTEXT, "name": 5}],
    ids=["empty-bundle", "long-agent", "name-not-str"],
)
def test_bad_context_arguments(agent: BoxKeyPair, context: dict[str, Any]) -> None:
    with pytest.raises(SealedSecretError):
        seal_secret(SECRET, recipient=agent.public, **context)
    sealed = seal_secret(SECRET, recipient=agent.public, **CONTEXT)
    with pytest.raises(SealedSecretError):
        open_secret(sealed, keypair=agent, **context)


@pytest.mark.parametrize("value", [SECRET + "\ud800", b"bytes-" + SECRET.encode()],
                         ids=["lone-surrogate", "bytes"])
def test_unsealable_values_are_not_echoed(agent: BoxKeyPair, value: Any) -> None:
    with pytest.raises(SealedSecretError) as info:
        seal_secret(value, recipient=agent.public, **CONTEXT)
    _assert_no_leak(info.value)
