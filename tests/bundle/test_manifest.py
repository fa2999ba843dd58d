"""The manifest model (docs/bundle-format.md §6): strict parsing, canonical form, field rules."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle import manifest as manifest_module
from bundle.errors import ManifestError
from bundle.manifest import (
    FORMAT,
    PER_BUNDLE_FIELDS,
    ChainInfo,
    FileEntry,
    Manifest,
    PartDigest,
    PartsInfo,
    ResultInfo,
    SecretEntry,
    Target,
    compressed_bound,
    peek_manifest,
)
from signing.envelope import sign_envelope
from signing.keys import SigningKey
from signing.strictjson import dumps_canonical
from tests.bundle.kit import release_draft, result_draft
from tests.fixtures.trust import TrustKit, make_trust

H = "0" * 64


def _file(i: int, name: str, size: int = 10, csize: int = 20) -> FileEntry:
    return FileEntry(f"payload/{i:06d}.zst", name, size, H, csize, H)


def _full(trust: TrustKit) -> Manifest:
    return release_draft(
        trust,
        files=(_file(1, "sql/001_schema.sql"), _file(2, "k8s/app.yaml", 0, 13)),
        secrets=(SecretEntry("db-password", "agent-1", b"\x01" * 80),),
        parts=PartsInfo(4096, 2, (PartDigest(1, 4096, H), PartDigest(2, 100, H))),
        checkpoint={"size": 10, "root": "ab"},
        not_before=1_800_000_100,
    )


def _doc(m: Manifest) -> dict[str, Any]:
    return json.loads(m.to_bytes())


def _bytes(doc: Any) -> bytes:
    return dumps_canonical(doc)


def test_round_trip_is_canonical(trust: TrustKit) -> None:
    m = _full(trust)
    data = m.to_bytes()
    assert Manifest.from_bytes(data, 1 << 20) == m
    assert data == dumps_canonical(json.loads(data))
    assert b" " not in data.replace(b"looks good", b"").replace(b"Billing 2.4.0", b"")


def test_result_round_trip() -> None:
    m = result_draft(SigningKey.generate())
    assert Manifest.from_bytes(m.to_bytes(), 1 << 20) == m
    assert m.payload_type.endswith("result.v1+json")


def test_every_field_is_required(trust: TrustKit) -> None:
    doc = _doc(_full(trust))
    for key in list(doc):
        broken = dict(doc)
        del broken[key]
        with pytest.raises(ManifestError, match=f"field '{key}' is missing"):
            Manifest.from_bytes(_bytes(broken), 1 << 20)


@pytest.mark.parametrize("path", [
    (), ("target",), ("release",), ("release", "approvals", 0), ("files", 0), ("secrets", 0),
    ("parts",), ("parts", "digests", 0),
])
def test_unknown_fields_are_refused(trust: TrustKit, path: tuple[Any, ...]) -> None:
    doc = _doc(_full(trust))
    node: Any = doc
    for key in path:
        node = node[key]
    node["extra"] = 1
    with pytest.raises(ManifestError, match=r"field 'extra' is not allowed"):
        Manifest.from_bytes(_bytes(doc), 1 << 20)


def test_error_names_the_field_path(trust: TrustKit) -> None:
    doc = _doc(_full(trust))
    doc["files"][1]["size"] = "13"
    with pytest.raises(ManifestError, match=r"^files\[1\]\.size: must be an integer"):
        Manifest.from_bytes(_bytes(doc), 1 << 20)
    doc = _doc(_full(trust))
    doc["release"]["approvals"][0]["at"] = None
    with pytest.raises(ManifestError, match=r"^release\.approvals\[0\]\.at: must be an integer"):
        Manifest.from_bytes(_bytes(doc), 1 << 20)


WRONG = [
    ("sequence", "1"),
    ("sequence", True),
    ("sequence", 0),
    ("root_version", -1),
    ("created", 2**63),
    ("expires", None),
    ("issuer", "AB" * 32),
    ("issuer", "ab"),
    ("kind", "trust"),
    ("bundle_id", "../x"),
    ("bundle_id", ""),
    ("steps", {}),
    ("steps", [1]),
    ("files", {}),
    ("target", []),
    ("checkpoint", []),
    ("not_before", "soon"),
]


@pytest.mark.parametrize(("field", "value"), WRONG)
def test_wrong_types_and_values(trust: TrustKit, field: str, value: Any) -> None:
    doc = _doc(_full(trust))
    doc[field] = value
    with pytest.raises(ManifestError):
        Manifest.from_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(),
                            1 << 20)


@pytest.mark.parametrize("data", [
    b'{"format":1,"format":1}',
    b'{"format":1.0}',
    b'{"format":NaN}',
    b"\xef\xbb\xbf{}",
    b"[1,2",
])
def test_not_strict_json(data: bytes) -> None:
    with pytest.raises(ManifestError, match=r"not strict JSON"):
        Manifest.from_bytes(data, 1 << 20)


def test_duplicate_keys_deep_inside(trust: TrustKit) -> None:
    data = _full(trust).to_bytes().replace(b'"agents":', b'"agents":[],"agents":', 1)
    with pytest.raises(ManifestError, match=r"duplicate key 'agents'"):
        Manifest.from_bytes(data, 1 << 20)


def test_non_canonical_form_is_refused(trust: TrustKit) -> None:
    doc = _doc(_full(trust))
    with pytest.raises(ManifestError, match=r"canonical form"):
        Manifest.from_bytes(json.dumps(doc, sort_keys=True).encode(), 1 << 20)


def test_size_cap_before_parsing(trust: TrustKit) -> None:
    data = _full(trust).to_bytes()
    with pytest.raises(ManifestError, match=r"over the limit"):
        Manifest.from_bytes(data, len(data) - 1)


def test_unknown_format_is_refused_by_number(trust: TrustKit) -> None:
    doc = _doc(_full(trust))
    doc["format"] = FORMAT + 1
    doc["a_field_of_format_2"] = {}
    with pytest.raises(ManifestError, match=r"format 2 is not supported.*upgrade Tiangong"):
        Manifest.from_bytes(_bytes(doc), 1 << 20)


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a\\b",
                                  "a\x00b", "a\nb", "", "x" * 256])
def test_bad_payload_names(trust: TrustKit, name: str) -> None:
    with pytest.raises(ManifestError, match=r"name"):
        release_draft(trust, files=(_file(1, name),))


@pytest.mark.parametrize(("a", "b"), [("sql/A.sql", "sql/a.sql"), ("SQL/a.sql", "sql/b.sql"),
                                      ("caf\u00e9", "cafe\u0301"), ("x", "x")])
def test_colliding_payload_names(trust: TrustKit, a: str, b: str) -> None:
    with pytest.raises(ManifestError, match=r"files\[1\]\.name"):
        release_draft(trust, files=(_file(1, a), _file(2, b)))


def test_member_names_follow_the_order(trust: TrustKit) -> None:
    with pytest.raises(ManifestError, match=r"must be payload/000001\.zst"):
        release_draft(trust, files=(_file(2, "a"),))


def test_compressed_size_must_be_possible(trust: TrustKit) -> None:
    assert compressed_bound(0) == 1024
    with pytest.raises(ManifestError, match=r"impossible"):
        release_draft(trust, files=(_file(1, "a", 10, compressed_bound(10) + 1),))


def test_expires_after_created(trust: TrustKit) -> None:
    with pytest.raises(ManifestError, match=r"later than created"):
        release_draft(trust, expires=release_draft(trust).created)


def test_release_needs_an_address_and_no_hub(trust: TrustKit) -> None:
    with pytest.raises(ManifestError, match=r"target"):
        release_draft(trust, target=Target())
    with pytest.raises(ManifestError, match=r"target"):
        release_draft(trust, target=Target(agents=("a",), hub="hub"))
    with pytest.raises(ManifestError, match=r"agents"):
        Target(agents=("a", "a"))
    release_draft(trust, target=Target(environment="prod"))


def test_kind_and_object_must_agree(trust: TrustKit) -> None:
    key = SigningKey.generate()
    result = result_draft(key)
    with pytest.raises(ManifestError, match=r"release"):
        release_draft(trust, release=None)
    with pytest.raises(ManifestError, match=r"result"):
        dataclasses.replace(result, release=release_draft(trust).release)
    with pytest.raises(ManifestError, match=r"no steps"):
        dataclasses.replace(result, steps=({"name": "x"},))
    with pytest.raises(ManifestError, match=r"names the hub"):
        dataclasses.replace(result, target=Target(agents=("a",)))
    with pytest.raises(ManifestError, match=r"result_seq must equal sequence"):
        dataclasses.replace(result, sequence=2)


def test_result_fields() -> None:
    with pytest.raises(ManifestError, match=r"prev_result_sha256"):
        ResultInfo("a", 1, "ok", prev_result_sha256="xyz")
    with pytest.raises(ManifestError, match=r"body"):
        ResultInfo("a", 1, "ok", body={"x": 1.5})
    ResultInfo("a", 1, "ok", prev_result_sha256=hashlib.sha256(b"").hexdigest(),
               bundle_envelope_sha256=H, bundle_id="b-1", body={"steps": []})


def test_parts_must_be_consistent() -> None:
    with pytest.raises(ManifestError, match=r"exactly 2 parts"):
        PartsInfo(10, 2, (PartDigest(1, 10, H),))
    with pytest.raises(ManifestError, match=r"index 2"):
        PartsInfo(10, 2, (PartDigest(1, 10, H), PartDigest(3, 5, H)))
    with pytest.raises(ManifestError, match=r"must be 10 bytes"):
        PartsInfo(10, 2, (PartDigest(1, 9, H), PartDigest(2, 5, H)))
    with pytest.raises(ManifestError, match=r"or less"):
        PartsInfo(10, 2, (PartDigest(1, 10, H), PartDigest(2, 11, H)))
    assert PartsInfo(10, 2, (PartDigest(1, 10, H), PartDigest(2, 3, H))).data_bytes == 13


def test_secrets(trust: TrustKit) -> None:
    secret = SecretEntry("db", "agent-1", b"seal1")
    with pytest.raises(ManifestError, match=r"listed twice"):
        release_draft(trust, secrets=(secret, secret))
    doc = _doc(release_draft(trust, secrets=(secret,)))
    doc["secrets"][0]["sealed"] = base64.b64encode(b"seal1").decode().rstrip("=")
    with pytest.raises(ManifestError, match=r"base64"):
        Manifest.from_bytes(_bytes(doc), 1 << 20)


def test_text_rules(trust: TrustKit) -> None:
    release = release_draft(trust).release
    assert release is not None
    with pytest.raises(ManifestError, match=r"control characters"):
        dataclasses.replace(release, product="bill\x1bing")
    with pytest.raises(ManifestError, match=r"over the limit"):
        dataclasses.replace(release, author="a" * 257)
    # Descriptions and comments may span lines.
    dataclasses.replace(release, description="line 1\nline 2\ttab")


def test_lone_surrogates_cannot_hide_in_opaque_objects(trust: TrustKit) -> None:
    data = release_draft(trust).to_bytes().replace(b'"name":"schema"', b'"name":"\\ud800"')
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data, 1 << 20)


def test_peek_manifest_reads_without_verifying(trust: TrustKit) -> None:
    m = _full(trust)
    stranger = SigningKey.generate()
    envelope = sign_envelope(m.payload_type, m.to_bytes(), [stranger])
    assert peek_manifest(envelope, 1 << 20) == m
    with pytest.raises(ManifestError, match=r"envelope is malformed"):
        peek_manifest(envelope + b" ", 1 << 20)


# -- derive: each agent's manifest from one made per release (§12.4) --------------------

DERIVED_OK: list[dict[str, Any]] = [
    {"sequence": 9, "bundle_id": "billing-2.4.0-9", "target": Target(agents=("agent-2",))},
    {"created": 100, "expires": 200, "not_before": 150, "root_version": 3},
    {"secrets": (SecretEntry("db", "agent-2", b"\x02" * 80),), "checkpoint": {"seq": 1},
     "chain": None, "policy": None},
]


@pytest.mark.parametrize("changes", DERIVED_OK)
def test_derive_gives_what_a_new_manifest_with_the_changes_is(
        trust: TrustKit, changes: dict[str, Any]) -> None:
    base = _full(trust)
    derived = base.derive(**changes)
    assert derived == dataclasses.replace(base, **changes)
    assert derived.to_bytes() == dataclasses.replace(base, **changes).to_bytes()
    assert derived.steps is base.steps and derived.files is base.files


DERIVED_BAD: list[tuple[dict[str, Any], str]] = [
    ({"expires": 1, "created": 2}, "expires: must be later than created"),
    ({"sequence": 0}, "sequence"),
    ({"bundle_id": "../x"}, "bundle_id"),
    ({"target": Target(hub="hub-1")}, "target: a release bundle names agents"),
    ({"checkpoint": {"x": 1.5}}, "checkpoint: is not strict JSON"),
    ({"secrets": (SecretEntry("db", "a", b"x"), SecretEntry("db", "a", b"y"))},
     "listed twice"),
]


@pytest.mark.parametrize(("changes", "message"), DERIVED_BAD)
def test_derive_checks_every_field_it_changes(trust: TrustKit, changes: dict[str, Any],
                                              message: str) -> None:
    base = _full(trust)
    before = base.to_bytes()
    with pytest.raises(ManifestError, match=message):
        base.derive(**changes)
    assert base.to_bytes() == before  # the manifest derived from is unchanged


@pytest.mark.parametrize("field", ["steps", "files", "release", "kind", "issuer", "parts",
                                   "format", "result"])
def test_derive_changes_only_per_bundle_fields(trust: TrustKit, field: str) -> None:
    base = _full(trust)
    with pytest.raises(ValueError, match=f"not per-bundle fields: {field}"):
        base.derive(**{field: getattr(base, field)})


def test_derived_manifests_give_the_bytes_of_their_whole_json(trust: TrustKit) -> None:
    """to_bytes of derived manifests splices the kept fields' text, made once (_KeptText):
    byte for byte dumps_canonical(to_json()), also where a per-bundle string holds a
    placeholder (then serialised whole)."""
    base = _full(trust)
    token = manifest_module._KeptText._TOKEN
    for i, changes in enumerate([*DERIVED_OK, {"checkpoint": {"x": token + "files"}},
                                 {"checkpoint": {token + "steps": 1, "y": [token]}}]):
        derived = base.derive(**changes)
        assert derived.to_bytes() == dumps_canonical(derived.to_json()), i
        assert Manifest.from_bytes(derived.to_bytes(), 1 << 20) == derived


def test_derived_manifests_splice_every_field_of_to_json(trust: TrustKit) -> None:
    """_KeptText writes a derived manifest's per-bundle fields itself (not through
    to_json): every field of a manifest is either kept (_KEPT_JSON) or per bundle, and a
    derived manifest with every optional field set (chain, policy, approvals, secrets,
    checkpoint, not_before, parts) or none gives dumps_canonical(to_json()) byte for byte.
    A field added to to_json but not to the splice fails here."""
    from bundle.windows import Policy
    from tests.bundle.test_approvals import _approval
    from tests.bundle.test_chain import link
    from tests.bundle.test_windows import _policy_doc

    kept = set(manifest_module._KEPT_JSON)
    assert kept.isdisjoint(PER_BUNDLE_FIELDS)
    assert set(manifest_module._FIELD_NAMES) == kept | PER_BUNDLE_FIELDS
    base = _full(trust)
    every = {"sequence": 10, "chain": ChainInfo(link(8), ()),
             "policy": Policy.from_json(_policy_doc()), "approvals": (_approval(0), _approval(1))}
    full = base.derive(**every)
    assert set(full.to_json()) == set(manifest_module._FIELD_NAMES)
    bare = base.derive(checkpoint=None, secrets=(), not_before=None)
    for derived in (full, bare, full.derive(sequence=11), base):
        assert derived.to_bytes() == dumps_canonical(derived.to_json())
        assert Manifest.from_bytes(derived.to_bytes(), 1 << 20) == derived


_HOSTILE = st.one_of(
    st.text(max_size=8),
    st.lists(st.sampled_from([manifest_module._KeptText._TOKEN, "files", "steps", "\x00",
                              '"', "\\", ":", "\u2028", "é", "\U0001f600"]),
             max_size=4).map("".join))
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _HOSTILE),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_HOSTILE, inner, max_size=3)),
    max_leaves=10)


@settings(derandomize=True, max_examples=150, deadline=None, database=None)
@given(checkpoints=st.lists(st.dictionaries(_HOSTILE, _JSON, max_size=4), min_size=1,
                            max_size=3))
def test_derived_manifests_with_hostile_strings_give_their_whole_bytes(
        checkpoints: list[dict[str, Any]]) -> None:
    """Per-bundle values holding NUL, quotes, backslashes, non-ASCII, line separators, the
    placeholder token or pieces of it, 64-bit extremes: a derived manifest's spliced bytes
    are still dumps_canonical(to_json()), one template for all (as an export)."""
    base = _HOSTILE_BASE
    for checkpoint in checkpoints:
        derived = base.derive(checkpoint=checkpoint)
        assert derived.to_bytes() == dumps_canonical(derived.to_json())


_HOSTILE_BASE = release_draft(make_trust())


def test_derived_manifest_refuses_a_kept_field_too_deep_as_the_whole_does(
        trust: TrustKit) -> None:
    """A step nested too deep for the manifest (though not for itself) is refused by
    to_bytes of a derived manifest as of the one it was derived from."""
    deep: dict[str, Any] = {"x": 1}
    for _ in range(30):
        deep = {"a": deep}
    base = release_draft(trust, steps=({"action": "noop", "deep": deep},))
    with pytest.raises(ManifestError, match="nesting deeper") as whole:
        base.to_bytes()
    with pytest.raises(ManifestError, match="nesting deeper") as derived:
        base.derive(sequence=5).to_bytes()
    assert str(derived.value) == str(whole.value)
