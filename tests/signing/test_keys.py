"""signing.keys: key ids, Ed25519 against RFC 8032, X25519 against RFC 7748, hex parsing."""

from __future__ import annotations

import hashlib

import pytest

from signing.errors import SignatureError
from signing.keys import BoxKeyPair, BoxPublicKey, PublicKey, SigningKey, key_id_of

# RFC 8032 §7.1, TEST 1 (empty message)
RFC8032_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIG = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# RFC 7748 §6.1, Alice
RFC7748_SECRET = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"


def test_ed25519_matches_rfc8032() -> None:
    key = SigningKey(bytes.fromhex(RFC8032_SEED))
    assert key.public.raw.hex() == RFC8032_PUBLIC
    assert key.sign(b"").hex() == RFC8032_SIG
    key.public.verify(b"", bytes.fromhex(RFC8032_SIG))


def test_x25519_matches_rfc7748() -> None:
    pair = BoxKeyPair(bytes.fromhex(RFC7748_SECRET))
    assert pair.public.raw.hex() == RFC7748_PUBLIC
    assert pair.secret.hex() == RFC7748_SECRET


def test_key_id_is_sha256_of_raw_public_key() -> None:
    key = SigningKey(bytes.fromhex(RFC8032_SEED))
    expected = hashlib.sha256(bytes.fromhex(RFC8032_PUBLIC)).hexdigest()
    assert key.key_id == key.public.key_id == key_id_of(key.public.raw) == expected


def test_signing_is_deterministic_and_keys_differ() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.sign(b"m") == a.sign(b"m")
    assert a.key_id != b.key_id
    assert BoxKeyPair.generate().public != BoxKeyPair.generate().public


@pytest.mark.parametrize(
    ("message", "signature_of"),
    [
        (b"other message", b"message"),
        (b"message", b"message!"),
        (b"", b"message"),
    ],
)
def test_verify_refuses_signature_over_other_message(message: bytes, signature_of: bytes) -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError) as info:
        key.public.verify(message, key.sign(signature_of))
    assert info.type is SignatureError
    assert key.key_id[:16] in str(info.value)
    assert not key.public.is_valid_signature(message, key.sign(signature_of))


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00" * 63, b"\x00" * 64, b"\xff" * 64, b"\x00" * 65],
    ids=["empty", "short", "zeros", "ones", "long"],
)
def test_verify_refuses_malformed_signatures(signature: bytes) -> None:
    key = SigningKey.generate()
    with pytest.raises(SignatureError):
        key.public.verify(b"m", signature)


def test_verify_with_wrong_key() -> None:
    signer, other = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(SignatureError):
        other.public.verify(b"m", signer.sign(b"m"))


@pytest.mark.parametrize("cls", [PublicKey, BoxPublicKey])
@pytest.mark.parametrize(
    "text",
    [
        RFC8032_PUBLIC.upper(),
        RFC8032_PUBLIC[:-2],
        RFC8032_PUBLIC + "00",
        "zz" + RFC8032_PUBLIC[2:],
        " " + RFC8032_PUBLIC[1:],
        RFC8032_PUBLIC[:30] + "  " + RFC8032_PUBLIC[32:],
        "٠" * 64,  # Arabic-Indic zeros are digits to str.isdigit, not hex
        "",
    ],
    ids=["upper", "short", "long", "non-hex", "leading-space", "inner-space", "arabic", "empty"],
)
def test_from_hex_refuses(cls: type[PublicKey] | type[BoxPublicKey], text: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        cls.from_hex(text)


@pytest.mark.parametrize("cls", [PublicKey, BoxPublicKey])
def test_from_hex_refuses_non_strings(cls: type[PublicKey] | type[BoxPublicKey]) -> None:
    with pytest.raises(ValueError):
        cls.from_hex(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "size"),
    [
        (PublicKey, 31), (PublicKey, 33), (BoxPublicKey, 0),
        (SigningKey, 31), (BoxKeyPair, 64),
    ],
)
def test_raw_lengths_are_checked(factory: type, size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        factory(b"\x01" * size)


def test_round_trips_and_json() -> None:
    key = SigningKey.generate()
    assert PublicKey.from_hex(key.public.raw.hex()) == key.public
    assert key.public.to_json() == {"scheme": "ed25519", "public": key.public.raw.hex()}
    pair = BoxKeyPair.generate()
    assert BoxPublicKey.from_hex(pair.public.raw.hex()) == pair.public
    assert pair.public.to_json() == {"scheme": "x25519", "public": pair.public.raw.hex()}
    assert BoxKeyPair(pair.secret).public == pair.public
    assert SigningKey(key.seed).public == key.public


def test_repr_never_shows_secret_material() -> None:
    key = SigningKey.generate()
    pair = BoxKeyPair.generate()
    assert key.seed.hex() not in repr(key)
    assert pair.secret.hex() not in repr(pair)
    assert key.key_id[:16] in repr(key)
