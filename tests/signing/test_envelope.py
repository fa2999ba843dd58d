"""signing.envelope: the "signatures" rows of docs/security.md, as a table, plus fuzzing.

Every rejection is checked through the keys of a pinned ``TrustedRoot`` (as bundle readers do)
and asserts the exact error type and that the trusted root did not change.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing.envelope import (
    MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    TYPE_RELEASE,
    TYPE_RESULT,
    Envelope,
    Signature,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from signing.errors import (
    EnvelopeFormatError,
    PayloadTypeError,
    SignatureError,
    SigningError,
    ThresholdError,
)
from signing.keys import SigningKey
from signing.roots import TrustedRoot
from signing.strictjson import dumps_canonical
from tests.signing.helpers import NOW, Ring, root_doc, signed_root, snapshot

PAYLOAD = b'{"kind":"release","sequence":7}'


def release_root(ring: Ring, threshold: int = 1) -> TrustedRoot:
    doc = root_doc(ring, release=("release1", "release2"), thresholds=(1, threshold, 1))
    return TrustedRoot.pin(signed_root(doc, ring, ["root1"]), NOW)


def verify_release(trusted: TrustedRoot, data: bytes, **kw: Any) -> Any:
    rk = trusted.role_keys("release", NOW)
    return verify_envelope(data, payload_type=TYPE_RELEASE, trusted=rk.keys,
                           threshold=rk.threshold, **kw)


def signed(ring: Ring, *names: str, ptype: str = TYPE_RELEASE, payload: bytes = PAYLOAD) -> bytes:
    return sign_envelope(ptype, payload, [ring[n] for n in names])


def edit(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Apply ``change`` to the envelope's JSON and write it back canonically."""
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _dup_sig(doc: dict[str, Any]) -> None:
    doc["signatures"] = doc["signatures"] * 2


def _same_sig_under_other_id(ring: Ring) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["signatures"].append({"keyid": ring["release2"].key_id,
                                  "sig": doc["signatures"][0]["sig"]})
    return change


def _flip_payload(doc: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(doc["payload"]))
    raw[-2] ^= 0x01
    doc["payload"] = b64(bytes(raw))


# (id, release threshold, envelope builder, expected error)
CASES: list[tuple[str, int, Callable[[Ring], bytes], type[SigningError]]] = [
    ("unsigned", 1, lambda r: Envelope(TYPE_RELEASE, PAYLOAD, ()).to_bytes(), ThresholdError),
    ("wrong-key", 1, lambda r: signed(r, "stranger"), ThresholdError),
    ("audit-key", 1, lambda r: signed(r, "audit1"), ThresholdError),
    ("root-key", 1, lambda r: signed(r, "root1"), ThresholdError),
    ("signed-as-result", 1, lambda r: signed(r, "release1", ptype=TYPE_RESULT),
     PayloadTypeError),
    ("type-relabelled-to-release", 1,
     lambda r: edit(signed(r, "release1", ptype=TYPE_RESULT),
                    lambda d: d.update(payloadType=TYPE_RELEASE)), ThresholdError),
    ("type-relabelled-to-result", 1,
     lambda r: edit(signed(r, "release1"), lambda d: d.update(payloadType=TYPE_RESULT)),
     PayloadTypeError),
    ("threshold-not-met", 2, lambda r: signed(r, "release1"), ThresholdError),
    ("threshold-with-stranger", 2, lambda r: signed(r, "release1", "stranger"), ThresholdError),
    ("duplicated-signature", 2, lambda r: edit(signed(r, "release1"), _dup_sig),
     ThresholdError),
    ("one-sig-under-two-key-ids", 2,
     lambda r: edit(signed(r, "release1"), _same_sig_under_other_id(r)), ThresholdError),
    ("payload-flipped", 1, lambda r: edit(signed(r, "release1"), _flip_payload),
     ThresholdError),
    ("payload-swapped", 1,
     lambda r: edit(signed(r, "release1"), lambda d: d.update(payload=b64(b"{}"))),
     ThresholdError),
    ("whitespace-inserted", 1, lambda r: signed(r, "release1").replace(b"{", b"{ ", 1),
     EnvelopeFormatError),
    ("trailing-newline", 1, lambda r: signed(r, "release1") + b"\n", EnvelopeFormatError),
    ("pretty-printed", 1,
     lambda r: json.dumps(json.loads(signed(r, "release1")), indent=2, sort_keys=True).encode(),
     EnvelopeFormatError),
    ("keys-reordered", 1,
     lambda r: json.dumps(dict(reversed(json.loads(signed(r, "release1")).items())),
                          separators=(",", ":")).encode(), EnvelopeFormatError),
    ("escaped-ascii", 1,
     lambda r: signed(r, "release1").replace(b'"payload"', b'"p\\u0061yload"'),
     EnvelopeFormatError),
    ("bad-base64-payload", 1, lambda r: edit(signed(r, "release1"),
                                             lambda d: d.update(payload="!!!!")),
     EnvelopeFormatError),
    ("base64-no-padding", 1, lambda r: edit(signed(r, "release1"),
                                            lambda d: d.update(payload=d["payload"].rstrip("="))),
     EnvelopeFormatError),
    ("base64-non-canonical-bits", 1, lambda r: edit(signed(r, "release1", payload=b"A"),
                                                    lambda d: d.update(payload="QR==")),
     EnvelopeFormatError),
    ("base64-urlsafe", 1,
     lambda r: edit(signed(r, "release1", payload=b"\xfb\xff"),
                    lambda d: d.update(payload=d["payload"].replace("+", "-").replace("/", "_"))),
     EnvelopeFormatError),
    ("bad-base64-sig", 1,
     lambda r: edit(signed(r, "release1"),
                    lambda d: d["signatures"][0].update(sig="*" + d["signatures"][0]["sig"][1:])),
     EnvelopeFormatError),
    ("sig-63-bytes", 1,
     lambda r: edit(signed(r, "release1"),
                    lambda d: d["signatures"][0].update(sig=b64(b"\x00" * 63))),
     EnvelopeFormatError),
    ("keyid-uppercase", 1,
     lambda r: edit(signed(r, "release1"),
                    lambda d: d["signatures"][0].update(keyid=d["signatures"][0]["keyid"].upper())),
     EnvelopeFormatError),
    ("keyid-short", 1,
     lambda r: edit(signed(r, "release1"),
                    lambda d: d["signatures"][0].update(keyid=d["signatures"][0]["keyid"][:-1])),
     EnvelopeFormatError),
    ("oversized", 1,
     lambda r: Envelope(TYPE_RELEASE, b"x" * MAX_ENVELOPE_BYTES, ()).to_bytes(),
     EnvelopeFormatError),
    ("duplicate-json-key", 1,
     lambda r: signed(r, "release1").replace(b'{"payload":', b'{"payload":"e30=","payload":', 1),
     EnvelopeFormatError),
    ("duplicate-key-in-signature", 1,
     lambda r: signed(r, "release1").replace(b'{"keyid":', b'{"sig":"","keyid":', 1),
     EnvelopeFormatError),
    ("extra-field", 1, lambda r: edit(signed(r, "release1"), lambda d: d.update(extra=1)),
     EnvelopeFormatError),
    ("missing-signatures", 1, lambda r: edit(signed(r, "release1"),
                                             lambda d: d.pop("signatures")),
     EnvelopeFormatError),
    ("signatures-not-list", 1, lambda r: edit(signed(r, "release1"),
                                              lambda d: d.update(signatures={})),
     EnvelopeFormatError),
    ("signature-extra-field", 1,
     lambda r: edit(signed(r, "release1"), lambda d: d["signatures"][0].update(x=1)),
     EnvelopeFormatError),
    ("too-many-signatures", 1,
     lambda r: edit(signed(r, "release1"),
                    lambda d: d.update(signatures=d["signatures"] * (MAX_SIGNATURES + 1))),
     EnvelopeFormatError),
    ("empty-payload-type", 1, lambda r: edit(signed(r, "release1"),
                                             lambda d: d.update(payloadType="")),
     EnvelopeFormatError),
    ("payload-type-not-string", 1, lambda r: edit(signed(r, "release1"),
                                                  lambda d: d.update(payloadType=1)),
     EnvelopeFormatError),
    ("lone-surrogate-type", 1,
     lambda r: edit(signed(r, "release1"), lambda d: d.update(payloadType="x")).replace(
         b'"payloadType":"x"', b'"payloadType":"\\ud800"'), EnvelopeFormatError),
    ("float-in-envelope", 1, lambda r: edit(signed(r, "release1"),
                                            lambda d: d.update(payloadType=1.5)),
     EnvelopeFormatError),
    ("not-an-object", 1, lambda r: b"[]", EnvelopeFormatError),
    ("not-utf8", 1, lambda r: b'{"payload":"\xff"}', EnvelopeFormatError),
    ("empty", 1, lambda r: b"", EnvelopeFormatError),
]


@pytest.mark.parametrize(("threshold", "build", "error"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_signature_matrix_rejections(
    ring: Ring, threshold: int, build: Callable[[Ring], bytes], error: type[SigningError]
) -> None:
    trusted = release_root(ring, threshold)
    before = snapshot(trusted)
    data = build(ring)
    with pytest.raises(SigningError) as info:
        verify_release(trusted, data)
    assert info.type is error, str(info.value)
    assert snapshot(trusted) == before


@pytest.mark.parametrize(
    ("threshold", "signers"),
    [(1, ["release1"]), (1, ["release2"]), (1, ["release1", "stranger"]),
     (2, ["release1", "release2"]), (2, ["release2", "release1", "audit1"])],
)
def test_valid_envelopes_verify(ring: Ring, threshold: int, signers: list[str]) -> None:
    trusted = release_root(ring, threshold)
    data = signed(ring, *signers)
    verified = verify_release(trusted, data)
    assert verified.payload == PAYLOAD
    assert verified.payload_type == TYPE_RELEASE
    expected = {ring[n].key_id for n in signers if n.startswith("release")}
    assert verified.signer_key_ids == expected


def test_oversized_against_callers_cap(ring: Ring) -> None:
    trusted = release_root(ring)
    data = signed(ring, "release1")
    before = snapshot(trusted)
    with pytest.raises(EnvelopeFormatError, match="over the limit"):
        verify_release(trusted, data, max_bytes=len(data) - 1)
    assert verify_release(trusted, data, max_bytes=len(data)).payload == PAYLOAD
    assert snapshot(trusted) == before


# --- one key, one vote -----------------------------------------------------------------------


def test_one_key_under_two_ids_in_trusted_mapping_counts_once() -> None:
    key = SigningKey.generate()
    data = sign_envelope(TYPE_RELEASE, PAYLOAD, [key])
    trusted = {"a" * 64: key.public, key.key_id: key.public, "b" * 64: key.public}
    assert verify_envelope(data, payload_type=TYPE_RELEASE, trusted=trusted,
                           threshold=1).signer_key_ids == {key.key_id}
    with pytest.raises(ThresholdError):
        verify_envelope(data, payload_type=TYPE_RELEASE, trusted=trusted, threshold=2)


def test_key_listed_under_a_made_up_id_is_matched_by_its_real_id_only() -> None:
    key = SigningKey.generate()
    fake = "c" * 64
    sig = key.sign(pae(TYPE_RELEASE, PAYLOAD))
    data = Envelope(TYPE_RELEASE, PAYLOAD, (Signature(fake, sig),)).to_bytes()
    with pytest.raises(ThresholdError):
        verify_envelope(data, payload_type=TYPE_RELEASE, trusted={fake: key.public}, threshold=1)


def test_envelope_signed_twice_by_one_key_counts_once() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    assert len(parse_envelope(sign_envelope(TYPE_RELEASE, PAYLOAD, [key, key])).signatures) == 1
    sig = key.sign(pae(TYPE_RELEASE, PAYLOAD))
    data = Envelope(TYPE_RELEASE, PAYLOAD,
                    (Signature(key.key_id, sig), Signature(key.key_id, sig))).to_bytes()
    trusted = [key.public, other.public]
    assert verify_envelope(data, payload_type=TYPE_RELEASE, trusted=trusted,
                           threshold=1).signer_key_ids == {key.key_id}
    with pytest.raises(ThresholdError, match="1 valid signature"):
        verify_envelope(data, payload_type=TYPE_RELEASE, trusted=trusted, threshold=2)


# --- small API facts -----------------------------------------------------------------------------


def test_pae_matches_dsse_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("é", b"") == "DSSEv1 2 é 0 ".encode()


def test_sign_envelope_is_canonical_and_sorted(ring: Ring) -> None:
    data = signed(ring, "release2", "release1", "release2")
    env = parse_envelope(data)
    assert [s.keyid for s in env.signatures] == sorted(
        {ring["release1"].key_id, ring["release2"].key_id})
    assert env.to_bytes() == data == signed(ring, "release1", "release2")


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        sign_envelope(TYPE_RELEASE, PAYLOAD, [])
    key = SigningKey.generate()
    with pytest.raises(ValueError):
        verify_envelope(sign_envelope(TYPE_RELEASE, PAYLOAD, [key]), payload_type=TYPE_RELEASE,
                        trusted=[key.public], threshold=0)


def test_error_messages_do_not_echo_huge_payload_types(ring: Ring) -> None:
    trusted = release_root(ring)
    data = signed(ring, "release1", ptype="t" * 5000)
    with pytest.raises(PayloadTypeError) as info:
        verify_release(trusted, data)
    assert len(str(info.value)) < 300


# --- fuzzing (fixed seed, a few seconds) -----------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_setup() -> tuple[TrustedRoot, bytes]:
    ring = Ring()
    return release_root(ring), signed(ring, "release1")


@settings(derandomize=True, max_examples=500, deadline=None, database=None)
@given(data=st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(fuzz_setup: tuple[TrustedRoot, bytes], data: bytes) -> None:
    trusted, _ = fuzz_setup
    before = snapshot(trusted)
    with contextlib.suppress(SigningError):
        parse_envelope(data)
    with pytest.raises(SigningError):
        verify_release(trusted, data)
    assert snapshot(trusted) == before


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.data())
def test_fuzz_mutated_valid_envelope_is_rejected(
    fuzz_setup: tuple[TrustedRoot, bytes], data: st.DataObject
) -> None:
    trusted, valid = fuzz_setup
    before = snapshot(trusted)
    pos = data.draw(st.integers(0, len(valid) - 1), label="position")
    op = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="op")
    mutated = bytearray(valid)
    if op == "replace":
        mutated[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != valid[pos]))
    elif op == "insert":
        mutated.insert(pos, data.draw(st.integers(0, 255)))
    else:
        del mutated[pos]
    with pytest.raises(SigningError):
        verify_release(trusted, bytes(mutated))
    assert snapshot(trusted) == before


@pytest.mark.parametrize("xor", [0x01, 0x20, 0x80, 0xFF])
def test_every_single_byte_mutation_is_rejected(
    fuzz_setup: tuple[TrustedRoot, bytes], xor: int
) -> None:
    trusted, valid = fuzz_setup
    before = snapshot(trusted)
    assert verify_release(trusted, valid).payload == PAYLOAD
    accepted = []
    for pos in range(len(valid)):
        mutated = bytearray(valid)
        mutated[pos] ^= xor
        try:
            verify_release(trusted, bytes(mutated))
        except SigningError:
            continue
        accepted.append(pos)
    assert accepted == []
    assert snapshot(trusted) == before


def test_signature_error_is_the_common_base() -> None:
    for cls in (EnvelopeFormatError, PayloadTypeError, ThresholdError):
        assert issubclass(cls, SignatureError)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=64), payload_type=st.text(max_size=12),
       keyids=st.lists(st.text(max_size=8), max_size=3))
def test_envelope_bytes_are_the_canonical_json_of_its_object(
        payload: bytes, payload_type: str, keyids: list[str]) -> None:
    """Envelope.to_bytes builds plain-ASCII envelopes directly: the same bytes as
    dumps_canonical of the envelope's object, whatever the strings (a quote, a backslash,
    a control or non-ASCII character: serialised by dumps_canonical)."""
    env = Envelope(payload_type, payload,
                   tuple(Signature(k, bytes([i]) * 64) for i, k in enumerate(keyids)))
    doc = {"payload": base64.b64encode(payload).decode("ascii"), "payloadType": payload_type,
           "signatures": [{"keyid": k, "sig": base64.b64encode(bytes([i]) * 64).decode()}
                          for i, k in enumerate(keyids)]}
    try:
        want = dumps_canonical(doc)
    except SigningError:  # a lone surrogate: refused both ways
        with pytest.raises(SigningError):
            env.to_bytes()
        return
    assert env.to_bytes() == want


@pytest.mark.parametrize("text", [
    "", " ", "~", "!#[]", "\x7f", '"', "\\", "\x1f", "\x00", "/", "é", "\u2028", "\U0001f600",
    "a\"b", "a\\u0041",
])
def test_envelope_bytes_at_the_edges_of_plain_ascii(text: str) -> None:
    """The characters at each edge of what to_bytes writes itself (printable ASCII but the
    quote and the backslash; DEL and the controls, non-ASCII and line separators go through
    dumps_canonical), in the payload type and in a key id: dumps_canonical's bytes every time
    (a deterministic companion of the hypothesis test above)."""
    sig = bytes(range(64))
    env = Envelope(text, b"\x00\xff payload", (Signature(text, sig), Signature("k2", sig)))
    doc = {"payload": base64.b64encode(b"\x00\xff payload").decode("ascii"),
           "payloadType": text,
           "signatures": [{"keyid": k, "sig": base64.b64encode(sig).decode("ascii")}
                          for k in (text, "k2")]}
    assert env.to_bytes() == dumps_canonical(doc)
