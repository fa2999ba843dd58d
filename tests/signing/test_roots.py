"""signing.roots: pinning, the "root rotation" rows of docs/security.md, revocation, expiry.

Every refused update asserts the exact error type and that the caller's TrustedRoot is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from signing.envelope import (
    TYPE_RELEASE,
    TYPE_ROOT,
    Envelope,
    sign_envelope,
    verify_envelope,
)
from signing.errors import (
    EnvelopeFormatError,
    ExpiredError,
    PayloadTypeError,
    RootFormatError,
    RootRotationError,
    SigningError,
    ThresholdError,
    TrustError,
)
from signing.roots import ROLES, RootDocument, TrustedRoot
from tests.signing.helpers import (
    DAY,
    NOW,
    Ring,
    root_doc,
    sign_root_json,
    signed_root,
    snapshot,
)

# --- pinning and the document format ---------------------------------------------------------


def _json(ring: Ring, **kw: Any) -> dict[str, Any]:
    return root_doc(ring, **kw).to_json()


def _second_id_for_same_key(ring: Ring) -> bytes:
    doc = _json(ring)
    rid = ring["root1"].key_id
    doc["keys"]["f" * 64] = dict(doc["keys"][rid])
    doc["roles"]["release"]["keyids"].append("f" * 64)
    return sign_root_json(doc, ring, ["root1"])


def _key_under_other_keys_id(ring: Ring) -> bytes:
    doc = _json(ring)
    rel = ring["release1"].key_id
    doc["keys"][rel] = {"scheme": "ed25519", "public": ring["stranger"].public.raw.hex()}
    return sign_root_json(doc, ring, ["root1"])


def _mutated(change: Callable[[dict[str, Any]], None]) -> Callable[[Ring], bytes]:
    def build(ring: Ring) -> bytes:
        doc = _json(ring)
        change(doc)
        return sign_root_json(doc, ring, ["root1"])
    return build


PIN_CASES: list[tuple[str, Callable[[Ring], bytes], type[SigningError]]] = [
    ("unsigned", lambda r: Envelope(TYPE_ROOT, root_doc(r).to_bytes(), ()).to_bytes(),
     ThresholdError),
    ("signed-by-release-key", lambda r: signed_root(root_doc(r), r, ["release1"]),
     ThresholdError),
    ("signed-by-stranger", lambda r: signed_root(root_doc(r), r, ["stranger"]), ThresholdError),
    ("threshold-not-met", lambda r: signed_root(
        root_doc(r, root=("root1", "root2"), thresholds=(2, 1, 1)), r, ["root1"]),
     ThresholdError),
    ("release-payload-type", lambda r: sign_envelope(TYPE_RELEASE, root_doc(r).to_bytes(),
                                                     [r["root1"]]), PayloadTypeError),
    ("same-key-under-second-id", _second_id_for_same_key, RootFormatError),
    ("key-under-another-keys-id", _key_under_other_keys_id, RootFormatError),
    ("key-in-two-roles", lambda r: signed_root(
        root_doc(r, release=("release1", "audit1")), r, ["root1"]), RootFormatError),
    ("root-key-is-release-key", lambda r: signed_root(
        root_doc(r, release=("root1",)), r, ["root1"]), RootFormatError),
    ("unknown-field", _mutated(lambda d: d.update(extra=1)), RootFormatError),
    ("missing-role", _mutated(lambda d: d["roles"].pop("audit")), RootFormatError),
    ("extra-role", _mutated(lambda d: d["roles"].update(agent=d["roles"]["audit"])),
     RootFormatError),
    ("threshold-zero", _mutated(lambda d: d["roles"]["release"].update(threshold=0)),
     RootFormatError),
    ("threshold-above-keys", _mutated(lambda d: d["roles"]["release"].update(threshold=2)),
     RootFormatError),
    ("threshold-bool", _mutated(lambda d: d["roles"]["release"].update(threshold=True)),
     RootFormatError),
    ("role-key-not-listed", _mutated(lambda d: d["roles"]["audit"]["keyids"].append("0" * 64)),
     RootFormatError),
    ("duplicate-id-in-role", _mutated(
        lambda d: d["roles"]["audit"]["keyids"].extend(d["roles"]["audit"]["keyids"])),
     RootFormatError),
    ("x25519-key", _mutated(lambda d: [k.update(scheme="x25519") for k in d["keys"].values()]),
     RootFormatError),
    ("uppercase-public", _mutated(
        lambda d: [k.update(public=k["public"].upper()) for k in d["keys"].values()]),
     RootFormatError),
    ("version-zero", _mutated(lambda d: d.update(version=0)), RootFormatError),
    ("spec-version-true", _mutated(lambda d: d.update(spec_version=True)), RootFormatError),
    ("wrong-type", _mutated(lambda d: d.update(type="tiangong/release")), RootFormatError),
    ("expires-before-issued", _mutated(lambda d: d.update(expires=d["issued"])),
     RootFormatError),
    ("negative-time", _mutated(lambda d: d.update(issued=-1)), RootFormatError),
    ("empty-hub-id", _mutated(lambda d: d.update(hub_id="")), RootFormatError),
    ("revoked-not-key-id", _mutated(lambda d: d.update(revoked=["root1"])), RootFormatError),
    ("revoked-twice", _mutated(lambda d: d.update(revoked=["a" * 64, "a" * 64])),
     RootFormatError),
    ("key-expires-string", _mutated(
        lambda d: [k.update(expires="soon") for k in d["keys"].values()]), RootFormatError),
]


@pytest.mark.parametrize(("build", "error"), [c[1:] for c in PIN_CASES],
                         ids=[c[0] for c in PIN_CASES])
def test_pin_refuses(ring: Ring, build: Callable[[Ring], bytes], error: type[SigningError]) -> None:
    with pytest.raises(SigningError) as info:
        TrustedRoot.pin(build(ring), NOW)
    assert info.type is error, str(info.value)


def test_pin_refuses_expired_root_only_when_given_a_clock(ring: Ring) -> None:
    env = signed_root(root_doc(ring, issued=NOW - 10 * DAY, expires=NOW), ring, ["root1"])
    with pytest.raises(ExpiredError, match="expired at 2027-01-15T08:00:00Z"):
        TrustedRoot.pin(env, NOW)
    assert TrustedRoot.pin(env).version == 1
    assert TrustedRoot.pin(env, NOW - 1).version == 1


def test_pin_and_round_trip(ring: Ring) -> None:
    doc = root_doc(ring, root=("root1", "root2"), thresholds=(2, 1, 1),
                   key_expires={"release1": NOW + DAY}, revoked=("old",))
    env = signed_root(doc, ring, ["root2", "root1"])
    trusted = TrustedRoot.pin(env, NOW)
    assert trusted.document.to_bytes() == doc.to_bytes()
    assert trusted.envelope == env
    assert RootDocument.from_bytes(doc.to_bytes()).to_bytes() == doc.to_bytes()
    assert set(doc.roles) == set(ROLES)


def test_trusted_root_is_read_only(trusted_v1: TrustedRoot) -> None:
    with pytest.raises(AttributeError):
        trusted_v1.document = trusted_v1.document  # type: ignore[misc]
    with pytest.raises(AttributeError):
        trusted_v1.envelope = b""  # type: ignore[misc]


# --- rotation -------------------------------------------------------------------------------------

# trusted_v1: root keys root1+root2 (threshold 2), release1+release2, audit1.
V2_ROOTS = ("root2", "root3")  # root1 leaves, root3 joins; threshold stays 2


def v2(ring: Ring, signers: list[str], **kw: Any) -> bytes:
    args: dict[str, Any] = {"version": 2, "root": V2_ROOTS, "thresholds": (2, 1, 1),
                            "release": ("release1", "release2")}
    args.update(kw)
    return signed_root(root_doc(ring, **args), ring, signers)


ROTATION_CASES: list[tuple[str, Callable[[Ring], bytes], type[SigningError]]] = [
    ("skipped-version", lambda r: v2(r, ["root1", "root2", "root3"], version=3),
     RootRotationError),
    ("same-version", lambda r: v2(r, ["root1", "root2", "root3"], version=1),
     RootRotationError),
    ("signed-only-by-new", lambda r: v2(r, ["root3", "root4"], root=("root3", "root4")),
     ThresholdError),
    ("signed-only-by-old", lambda r: v2(r, ["root1", "root2"], root=("root3", "root4")),
     ThresholdError),
    ("old-threshold-not-met", lambda r: v2(r, ["root2", "root3"], root=("root2", "root3")),
     ThresholdError),
    ("new-threshold-not-met", lambda r: v2(r, ["root1", "root2", "root3"],
                                           root=("root3", "root4")), ThresholdError),
    ("old-signature-duplicated", lambda r: v2(r, ["root1", "root1", "root3", "root4"],
                                              root=("root3", "root4")), ThresholdError),
    ("signed-by-release-keys", lambda r: v2(r, ["release1", "release2"]), ThresholdError),
    ("other-hub", lambda r: v2(r, ["root1", "root2", "root3"], hub_id="hub-2"),
     RootRotationError),
    ("release-payload-type", lambda r: sign_envelope(
        TYPE_RELEASE, root_doc(r, version=2).to_bytes(), [r["root1"], r["root2"]]),
     PayloadTypeError),
    ("malformed-document", lambda r: sign_envelope(TYPE_ROOT, b'{"version":2}',
                                                   [r["root1"], r["root2"]]), RootFormatError),
    ("whitespace-changed", lambda r: v2(r, ["root1", "root2", "root3"]).replace(b",", b", ", 1),
     EnvelopeFormatError),
]


@pytest.mark.parametrize(("build", "error"), [c[1:] for c in ROTATION_CASES],
                         ids=[c[0] for c in ROTATION_CASES])
def test_update_refuses(
    ring: Ring, trusted_v1: TrustedRoot, build: Callable[[Ring], bytes],
    error: type[SigningError],
) -> None:
    before = snapshot(trusted_v1)
    with pytest.raises(SigningError) as info:
        trusted_v1.update(build(ring))
    assert info.type is error, str(info.value)
    assert snapshot(trusted_v1) == before


def test_update_accepts_proper_successor(ring: Ring, trusted_v1: TrustedRoot) -> None:
    before = snapshot(trusted_v1)
    env = v2(ring, ["root1", "root2", "root3"])
    new = trusted_v1.update(env)
    assert new.version == 2 and new.envelope == env
    assert set(new.role_keys("root", NOW).keys) == {ring[n].key_id for n in V2_ROOTS}
    assert snapshot(trusted_v1) == before  # the old object is untouched
    with pytest.raises(RootRotationError):
        new.update(env)  # replaying the same root is refused


def test_skipped_version_error_names_the_numbers(ring: Ring, trusted_v1: TrustedRoot) -> None:
    with pytest.raises(RootRotationError, match="root version 3 cannot follow trusted version 1"):
        trusted_v1.update(v2(ring, ["root1", "root2", "root3"], version=3))


# --- chains and expiry ----------------------------------------------------------------------------


def _chain(ring: Ring, v2_expires: int, v3_expires: int | None) -> list[bytes]:
    out = [v2(ring, ["root1", "root2", "root3"], issued=NOW - 30 * DAY, expires=v2_expires)]
    if v3_expires is not None:
        out.append(signed_root(
            root_doc(ring, version=3, root=V2_ROOTS, thresholds=(2, 1, 1),
                     release=("release1", "release2"), issued=NOW - DAY, expires=v3_expires),
            ring, ["root2", "root3"]))
    return out


@pytest.mark.parametrize(
    ("v2_expires", "v3_expires"),
    [(NOW, None), (NOW - 1, None), (NOW - DAY, NOW), (NOW + DAY, NOW - 1)],
    ids=["v2-expires-now", "v2-expired", "v3-expires-now", "v3-expired-v2-valid"],
)
def test_update_chain_refuses_expired_final_root(
    ring: Ring, trusted_v1: TrustedRoot, v2_expires: int, v3_expires: int | None
) -> None:
    before = snapshot(trusted_v1)
    with pytest.raises(SigningError) as info:
        trusted_v1.update_chain(_chain(ring, v2_expires, v3_expires), NOW)
    assert info.type is ExpiredError
    assert "keys root rotate" in str(info.value)
    assert snapshot(trusted_v1) == before


def test_update_chain_accepts_expired_intermediate(ring: Ring, trusted_v1: TrustedRoot) -> None:
    final = trusted_v1.update_chain(_chain(ring, NOW - DAY, NOW + DAY), NOW)
    assert final.version == 3


def test_update_chain_stops_at_first_bad_root(ring: Ring, trusted_v1: TrustedRoot) -> None:
    before = snapshot(trusted_v1)
    chain = _chain(ring, NOW + DAY, None)
    chain.append(chain[0])  # v2 again where v3 is due
    with pytest.raises(RootRotationError):
        trusted_v1.update_chain(chain, NOW)
    assert snapshot(trusted_v1) == before


def test_check_current(trusted_v1: TrustedRoot) -> None:
    before = snapshot(trusted_v1)
    trusted_v1.check_current(NOW)
    with pytest.raises(ExpiredError):
        trusted_v1.check_current(trusted_v1.document.expires)
    assert snapshot(trusted_v1) == before


# --- role keys: revocation, expiry, other roles ---------------------------------------------


def _release_env(ring: Ring, *signers: str) -> bytes:
    return sign_envelope(TYPE_RELEASE, b"{}", [ring[n] for n in signers])


def _verify_release(trusted: TrustedRoot, data: bytes, now: int = NOW) -> None:
    rk = trusted.role_keys("release", now)
    verify_envelope(data, payload_type=TYPE_RELEASE, trusted=rk.keys, threshold=rk.threshold)


def test_revoked_release_key_is_no_longer_usable(ring: Ring, trusted_v1: TrustedRoot) -> None:
    new = trusted_v1.update(v2(ring, ["root1", "root2", "root3"], revoked=("release1",)))
    assert ring["release1"].key_id not in new.role_keys("release", NOW).keys
    assert ring["release2"].key_id in new.role_keys("release", NOW).keys
    before = snapshot(new)
    with pytest.raises(ThresholdError):
        _verify_release(new, _release_env(ring, "release1"))
    assert snapshot(new) == before
    _verify_release(new, _release_env(ring, "release2"))
    _verify_release(trusted_v1, _release_env(ring, "release1"))  # v1 still lists it


def test_revoked_root_key_cannot_sign_the_next_root(ring: Ring, trusted_v1: TrustedRoot) -> None:
    # v2 keeps root1 listed but revokes it; its root threshold is 2 of root1, root2, root3.
    new = trusted_v1.update(v2(ring, ["root1", "root2", "root3"],
                               root=("root1", "root2", "root3"), revoked=("root1",)))
    assert ring["root1"].key_id not in new.role_keys("root", NOW).keys
    before = snapshot(new)
    v3 = signed_root(root_doc(ring, version=3, root=("root2", "root3"), thresholds=(1, 1, 1),
                              release=("release1", "release2")), ring, ["root1", "root2"])
    with pytest.raises(ThresholdError):
        new.update(v3)
    assert snapshot(new) == before


@pytest.mark.parametrize(
    ("now", "usable"),
    [(NOW - 1, True), (NOW, False), (NOW + DAY, False)],
)
def test_expired_key_is_not_usable(ring: Ring, now: int, usable: bool) -> None:
    doc = root_doc(ring, key_expires={"release1": NOW})
    trusted = TrustedRoot.pin(signed_root(doc, ring, ["root1"]))
    before = snapshot(trusted)
    assert (ring["release1"].key_id in trusted.role_keys("release", now).keys) is usable
    if not usable:
        with pytest.raises(ThresholdError):
            _verify_release(trusted, _release_env(ring, "release1"), now)
    else:
        _verify_release(trusted, _release_env(ring, "release1"), now)
    assert snapshot(trusted) == before


@pytest.mark.parametrize("signer", ["audit1", "root1", "root2"])
def test_key_of_another_role_does_not_count(
    ring: Ring, trusted_v1: TrustedRoot, signer: str
) -> None:
    before = snapshot(trusted_v1)
    with pytest.raises(ThresholdError):
        _verify_release(trusted_v1, _release_env(ring, signer))
    assert snapshot(trusted_v1) == before


def test_role_keys_unknown_role(trusted_v1: TrustedRoot) -> None:
    with pytest.raises(KeyError):
        trusted_v1.role_keys("agent", NOW)


def test_trust_errors_share_a_base() -> None:
    for cls in (RootFormatError, RootRotationError, ExpiredError):
        assert issubclass(cls, TrustError)
