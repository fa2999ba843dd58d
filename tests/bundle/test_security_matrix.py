"""The bundle-level security matrix of docs/security.md (threats 1-14).

Each section is a table of attacks (``pytest.mark.parametrize`` with ids). A case builds a
hostile bundle (or a hostile situation: caller state, clock, planted files) and names the exact
:class:`~bundle.errors.BundleError` subclass it must raise. Every refusal is checked by
:func:`_assert_refused`, which also proves that nothing changed:

* the error is exactly the expected class, with its ``check``;
* the staging directory holds no file and no directory afterwards (or, for the planted
  symlink cases, exactly what the attacker planted);
* the caller's :class:`VerifierState` equals a copy taken before, and the caller's
  :class:`TrustedRoot` still has its version and envelope bytes;
* nothing was created, removed or changed anywhere else under the test's directory.

Container-level cases (integrity, archive) run twice: from a file (its length is known, so the
verifier can report truncation and trailing bytes up front) and from a stream of unknown
length (so the member-by-member checks themselves are exercised).

The signing-level matrix (envelopes and roots on their own) lives in ``tests/signing``; this
module checks that each attack is refused *through a bundle*, with the bundle error.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundle.container import (
    BLOCK,
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    ContainerReader,
    encode_member,
    member_span,
    read_head,
)
from bundle.errors import (
    BundleError,
    BundleFormatError,
    BundleSignatureError,
    DecompressionError,
    DigestMismatchError,
    ExpiredError,
    KindError,
    LimitExceededError,
    ManifestError,
    MisaddressedError,
    ReplayError,
    StagingError,
    TruncatedError,
    TrustUpdateError,
)
from bundle.inspect import inspect
from bundle.limits import Limits
from bundle.manifest import Manifest, SecretEntry, Target
from bundle.reader import ExpectRelease, VerifiedBundle, VerifierState, verify_bundle
from bundle.writer import encode_roots, write_bundle
from signing.envelope import TYPE_RELEASE, TYPE_RESULT, Envelope, sign_envelope
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, sign_root
from signing.strictjson import dumps_canonical
from tests.bundle.kit import (
    AGENT,
    NOW,
    craft_bundle,
    make_files,
    release_draft,
    rotate_root,
    verify,
)
from tests.fixtures.trust import TrustKit

SEQ = 5  # the sequence of the bundles built here
STATE = VerifierState(1, SEQ - 1, NOW - 600)  # what the caller accepted last


# -- the environment of one case -------------------------------------------------------


@dataclass
class Ctx:
    """Everything a case builder may use; ``tmp`` is the only place anything is written."""

    trust: TrustKit
    tmp: Path
    src: Path
    out: Path
    staging: Path

    def bundle(self, name: str = "b.tgb", contents: dict[str, bytes] | None = None,
               **manifest: Any) -> Path:
        files = make_files(self.src, contents if contents is not None else CONTENTS)
        draft = release_draft(self.trust, sequence=SEQ, **manifest)
        return write_bundle(self.out / name, draft, files, [self.trust.release_key]).paths[0]


@dataclass
class Attack:
    """What to verify and how: the bundle file plus the caller's inputs."""

    path: Path
    state: VerifierState = STATE
    now: int = NOW
    limits: Limits = field(default_factory=Limits)
    expect: ExpectRelease = field(default_factory=lambda: ExpectRelease(AGENT))
    planted: tuple[str, ...] = ()  # entries an attacker put into staging beforehand


CONTENTS = {
    "sql/001_schema.sql": b"create table t (id bigint);\n" * 40,
    "bin/tool": os.urandom(9000),  # incompressible: same size as its twin below
    "empty.txt": b"",
}


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below ``root`` (not following links): kind and size or link target."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            size = 0 if kind == "dir" else st.st_size
            out[str(p.relative_to(root))] = (kind, size)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest()
            for rel, (kind, _) in _tree(root).items() if kind == "file"}


class _Stream:
    """A stream of unknown length with short reads (a pipe, a live copy)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int, /) -> bytes:
        return self._data.read(min(n, 3000))


def _run(ctx: Ctx, a: Attack, trusted: Any, state: VerifierState, mode: str) -> VerifiedBundle:
    if mode == "file":
        return verify(a.path, ctx.trust, ctx.staging, state=state, now=a.now, limits=a.limits,
                      expect=a.expect, trusted_root=trusted)
    return verify_bundle(_Stream(a.path.read_bytes()), label=a.path.name, trusted_root=trusted,
                         state=state, expect=a.expect, staging_dir=ctx.staging,
                         limits=a.limits, clock=lambda: a.now)


def _assert_refused(ctx: Ctx, a: Attack, exc: type[BundleError], mode: str = "file",
                    match: str | None = None) -> BundleError:
    trusted = ctx.trust.trusted
    version, envelope = trusted.version, trusted.envelope
    state = a.state
    state_copy = dataclasses.replace(state)
    outside = {k: v for k, v in _tree(ctx.tmp).items() if not k.startswith("staging/")}
    outside_hashes = {k: v for k, v in _hashes(ctx.tmp).items() if not k.startswith("staging/")}
    planted_before = _tree(ctx.staging)

    with pytest.raises(BundleError) as info:
        _run(ctx, a, trusted, state, mode)

    err = info.value
    assert type(err) is exc, f"{type(err).__name__}: {err}"
    assert err.check == exc.check
    if match is not None:
        assert match in str(err), str(err)
    # Staging is left as it was: no file, no directory (only what an attacker planted).
    assert _tree(ctx.staging) == planted_before
    assert set(os.listdir(ctx.staging)) == set(a.planted)
    # The caller's inputs are untouched.
    assert state == state_copy
    assert trusted.version == version and trusted.envelope == envelope
    # Nothing outside staging was created or changed.
    assert {k: v for k, v in _tree(ctx.tmp).items() if not k.startswith("staging/")} == outside
    assert {k: v for k, v in _hashes(ctx.tmp).items()
            if not k.startswith("staging/")} == outside_hashes
    return err


@pytest.fixture
def ctx(trust: TrustKit, tmp_path: Path, src: Path, out: Path, staging: Path) -> Ctx:
    return Ctx(trust, tmp_path, src, out, staging)


Builder = Callable[[Ctx], Attack]


def _ids(table: list[tuple[Any, ...]]) -> list[str]:
    return [row[0] for row in table]


# -- building blocks ----------------------------------------------------------------------


def _assemble(path: Path, envelope: bytes, comps: list[bytes], roots: bytes = b"[]") -> Path:
    data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, roots)
            + encode_member(ENVELOPE_NAME, envelope))
    for i, comp in enumerate(comps, start=1):
        data += encode_member(f"payload/{i:06d}.zst", comp)
    path.write_bytes(data + END_OF_ARCHIVE)
    return path


def _frame(data: bytes, **kwargs: Any) -> bytes:
    params = {"level": 3, "write_checksum": True, "write_content_size": True, **kwargs}
    return zstandard.ZstdCompressor(**params).compress(data)


PAYLOAD = b"select 1;\n" * 100


def _signed(ctx: Ctx, *, keys: list[SigningKey] | None = None, payload_type: str = TYPE_RELEASE,
            manifest: Manifest | None = None, roots: list[bytes] | None = None,
            envelope_edit: Callable[[bytes], bytes] = lambda e: e,
            manifest_bytes: Callable[[Manifest], bytes] | None = None,
            name: str = "s.tgb") -> Path:
    """A one-payload bundle whose envelope the case controls."""
    path = ctx.out / name
    comp = _frame(PAYLOAD)
    m = craft_bundle(path, ctx.trust, [("a.sql", PAYLOAD, comp)],
                     manifest=manifest or release_draft(ctx.trust, sequence=SEQ))
    payload = manifest_bytes(m) if manifest_bytes else m.to_bytes()
    env = sign_envelope(payload_type, payload, keys or [ctx.trust.release_key])
    return _assemble(path, envelope_edit(env), [comp],
                     encode_roots(roots) if roots else b"[]")


def _root(ctx: Ctx, version: int, release: list[SigningKey], *, threshold: int = 1,
          revoked: tuple[SigningKey, ...] = (), expires: int = NOW + 86400 * 365,
          signers: list[SigningKey] | None = None) -> tuple[bytes, SigningKey]:
    """A root of ``version`` with the given release keys, signed by the pinned root key and a
    new one (unless ``signers`` says otherwise); returns (envelope, new root key)."""
    t = ctx.trust
    new_root = SigningKey.generate()
    keys = {k.key_id: KeyEntry(k.public) for k in (new_root, *release, t.audit_key)}
    for k in revoked:
        keys[k.key_id] = KeyEntry(k.public)
    doc = RootDocument(
        hub_id=t.hub_id, version=version, issued=NOW - 3600, expires=expires, keys=keys,
        roles={"root": ((new_root.key_id,), 1),
               "release": (tuple(k.key_id for k in (*release, *revoked)), threshold),
               "audit": ((t.audit_key.key_id,), 1)},
        revoked=frozenset(k.key_id for k in revoked),
    )
    return sign_root(doc, signers if signers is not None else [t.root_key, new_root]), new_root


def _manifest_json(ctx: Ctx, **changes: Any) -> Callable[[Manifest], bytes]:
    """Canonical manifest bytes with fields changed after validation (what a forger signs)."""
    def make(m: Manifest) -> bytes:
        doc = m.to_json()
        for key, value in changes.items():
            doc[key] = value(doc[key]) if callable(value) else value
        return dumps_canonical(doc)
    return make


# -- signatures ---------------------------------------------------------------------------


def _unsigned(c: Ctx) -> Attack:
    m = release_draft(c.trust, sequence=SEQ)
    path = c.out / "u.tgb"
    comp = _frame(PAYLOAD)
    m = craft_bundle(path, c.trust, [("a.sql", PAYLOAD, comp)], manifest=m)
    return Attack(_assemble(path, Envelope(TYPE_RELEASE, m.to_bytes(), ()).to_bytes(), [comp]))


def _wrong_key(c: Ctx) -> Attack:
    k = SigningKey.generate()
    return Attack(_signed(c, keys=[k], manifest=release_draft(c.trust, sequence=SEQ,
                                                              issuer=k.key_id)))


def _role_key(role: str) -> Builder:
    def build(c: Ctx) -> Attack:
        k = getattr(c.trust, f"{role}_key")
        return Attack(_signed(c, keys=[k], manifest=release_draft(c.trust, sequence=SEQ,
                                                                  issuer=k.key_id)))
    return build


def _result_type_on_release(c: Ctx) -> Attack:
    return Attack(_signed(c, payload_type=TYPE_RESULT))


def _threshold(dup: str) -> Builder:
    """Root v2 wants 2 of 2 release keys; only one key's signature is really there."""
    def build(c: Ctx) -> Attack:
        a, b = SigningKey.generate(), SigningKey.generate()
        root_v2, _ = _root(c, 2, [a, b], threshold=2)
        m = release_draft(c.trust, sequence=SEQ, root_version=2, issuer=a.key_id)

        def edit(env: bytes) -> bytes:
            doc = json.loads(env)
            sig = doc["signatures"][0]
            if dup == "same signature twice":
                doc["signatures"] = [sig, dict(sig)]
            elif dup == "one signature under both key ids":
                doc["signatures"] = sorted([sig, {"keyid": b.key_id, "sig": sig["sig"]}],
                                           key=lambda s: s["keyid"])
            return dumps_canonical(doc)
        return Attack(_signed(c, keys=[a], manifest=m, roots=[root_v2], envelope_edit=edit))
    return build


def _envelope_edit(edit: Callable[[bytes], bytes]) -> Builder:
    return lambda c: Attack(_signed(c, envelope_edit=edit))


def _bad_b64(env: bytes) -> bytes:
    doc = json.loads(env)
    doc["payload"] = doc["payload"][:-4] + "!!!!"
    return dumps_canonical(doc)


def _noncanonical_b64(env: bytes) -> bytes:
    doc = json.loads(env)
    doc["signatures"][0]["sig"] = doc["signatures"][0]["sig"].replace("==", "=") + "="
    raw = base64.b64decode(doc["signatures"][0]["sig"])
    doc["signatures"][0]["sig"] = base64.b64encode(raw)[:-3].decode() + "B=="  # stray bits
    return dumps_canonical(doc)


def _oversized_envelope(c: Ctx) -> Attack:
    return Attack(_signed(c, envelope_edit=lambda e: e + b" " * (1024 * 1024)))


def _dup_keys_in_manifest(c: Ctx) -> Attack:
    def dup(m: Manifest) -> bytes:
        raw = m.to_bytes()
        return raw[:-1] + b',"sequence":' + str(SEQ + 100).encode() + b"}"
    return Attack(_signed(c, manifest_bytes=dup))


def _dup_keys_in_envelope(env: bytes) -> bytes:
    return env[:-1] + b',"payloadType":"' + TYPE_RELEASE.encode() + b'"}'


def _noncanonical_manifest(c: Ctx) -> Attack:
    return Attack(_signed(c, manifest_bytes=lambda m: m.to_bytes().replace(b":", b": ", 1)))


SIGNATURES: list[tuple[str, Builder, type[BundleError]]] = [
    ("unsigned envelope", _unsigned, BundleSignatureError),
    ("wrong key", _wrong_key, BundleSignatureError),
    ("audit key signs a release", _role_key("audit"), BundleSignatureError),
    ("root key signs a release", _role_key("root"), BundleSignatureError),
    ("result payload type on a release", _result_type_on_release, KindError),
    ("threshold 2 met by one key", _threshold("one signature"), BundleSignatureError),
    ("duplicated signature", _threshold("same signature twice"), BundleSignatureError),
    ("one signature under two key ids", _threshold("one signature under both key ids"),
     BundleSignatureError),
    ("whitespace added to envelope",
     _envelope_edit(lambda e: e.replace(b'{"payload"', b'{ "payload"')), BundleSignatureError),
    ("key order changed in envelope",
     _envelope_edit(lambda e: b'{"payloadType"' + e.split(b',"payloadType"')[1].split(
         b',"signatures"')[0] + b',"payload"' + e.split(b',"payloadType"')[0][len(
             b'{"payload"'):] + b',"signatures"' + e.split(b',"signatures"')[1]),
     BundleSignatureError),
    ("bad base64 payload", _envelope_edit(_bad_b64), BundleSignatureError),
    ("non-canonical base64 signature", _envelope_edit(_noncanonical_b64),
     BundleSignatureError),
    ("oversized envelope", _oversized_envelope, LimitExceededError),
    ("duplicate JSON keys in manifest", _dup_keys_in_manifest, ManifestError),
    ("duplicate JSON keys in envelope", _envelope_edit(_dup_keys_in_envelope),
     BundleSignatureError),
    ("manifest signed in non-canonical form", _noncanonical_manifest, ManifestError),
    ("manifest issuer did not sign",
     lambda c: Attack(_signed(c, manifest=release_draft(c.trust, sequence=SEQ,
                                                        issuer="ab" * 32))),
     BundleSignatureError),
]


@pytest.mark.parametrize(("case", "build", "exc"), SIGNATURES, ids=_ids(SIGNATURES))
def test_signatures(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


# -- root rotation carried in roots.json ------------------------------------------------


def _rotated(c: Ctx, roots: list[bytes], release: SigningKey, version: int = 2,
             state: VerifierState = STATE) -> Attack:
    m = release_draft(c.trust, sequence=SEQ, root_version=version, issuer=release.key_id)
    return Attack(_signed(c, keys=[release], manifest=m, roots=roots), state=state)


def _skipped(c: Ctx) -> Attack:
    root_v3, _, rel = rotate_root(c.trust, version=3)
    return _rotated(c, [root_v3], rel, 3)


def _same_version_forged(c: Ctx) -> Attack:
    # A root "version 1" with the attacker's release key: already-trusted versions are skipped,
    # so its key never becomes trusted.
    evil = SigningKey.generate()
    root_v1, _ = _root(c, 1, [evil])
    return _rotated(c, [root_v1], evil, 1)


def _same_version_twice(c: Ctx) -> Attack:
    root_v2, _, rel = rotate_root(c.trust)
    return _rotated(c, [root_v2, root_v2], rel)


def _expired_final(c: Ctx) -> Attack:
    root_v2, _, rel = rotate_root(c.trust, expires=NOW - 1)
    return _rotated(c, [root_v2], rel)


def _revoked_after_rotation(c: Ctx) -> Attack:
    new = SigningKey.generate()
    root_v2, _ = _root(c, 2, [new], revoked=(c.trust.release_key,))
    return _rotated(c, [root_v2], c.trust.release_key)


def _revoked_only_key(c: Ctx) -> Attack:
    # Every release key of the new root is revoked: nothing can sign releases any more.
    root_v2, _ = _root(c, 2, [], revoked=(c.trust.release_key,))
    return _rotated(c, [root_v2], c.trust.release_key)


def _not_signed_by_old_root(c: Ctx) -> Attack:
    rel = SigningKey.generate()
    root_v2, _ = _root(c, 2, [rel], signers=[SigningKey.generate()])
    return _rotated(c, [root_v2], rel)


def _not_signed_by_new_root(c: Ctx) -> Attack:
    rel = SigningKey.generate()
    root_v2, _ = _root(c, 2, [rel], signers=[c.trust.root_key])
    return _rotated(c, [root_v2], rel)


def _other_hub_root(c: Ctx) -> Attack:
    rel, new_root = SigningKey.generate(), SigningKey.generate()
    keys = {k.key_id: KeyEntry(k.public) for k in (new_root, rel, c.trust.audit_key)}
    doc = RootDocument(hub_id="other-hub", version=2, issued=NOW - 3600, expires=NOW + 86400,
                       keys=keys, roles={"root": ((new_root.key_id,), 1),
                                         "release": ((rel.key_id,), 1),
                                         "audit": ((c.trust.audit_key.key_id,), 1)})
    return _rotated(c, [sign_root(doc, [c.trust.root_key, new_root])], rel)


def _newer_root_not_carried(c: Ctx) -> Attack:
    _, _, rel = rotate_root(c.trust)
    return _rotated(c, [], rel)


def _roots_not_json(c: Ctx) -> Attack:
    path = _signed(c)
    data = path.read_bytes().replace(encode_member(ROOTS_NAME, b"[]"),
                                     encode_member(ROOTS_NAME, b"{}"), 1)
    path.write_bytes(data)
    return Attack(path)


def _too_many_roots(c: Ctx) -> Attack:
    a = _signed(c, roots=[c.trust.root_envelope] * 3)
    return Attack(a, limits=Limits(max_roots=2))


ROOTS: list[tuple[str, Builder, type[BundleError]]] = [
    ("skipped version", _skipped, TrustUpdateError),
    ("same version, forged", _same_version_forged, BundleSignatureError),
    ("same version twice", _same_version_twice, TrustUpdateError),
    ("expired final root", _expired_final, ExpiredError),
    ("release key revoked after rotation", _revoked_after_rotation, BundleSignatureError),
    ("only release key revoked", _revoked_only_key, BundleSignatureError),
    ("new root not signed by the old root", _not_signed_by_old_root, TrustUpdateError),
    ("new root not signed by its own key", _not_signed_by_new_root, TrustUpdateError),
    ("new root for another hub", _other_hub_root, TrustUpdateError),
    ("bundle for a newer root without it", _newer_root_not_carried, BundleSignatureError),
    ("roots.json not a list", _roots_not_json, TrustUpdateError),
    ("more roots than max_roots", _too_many_roots, LimitExceededError),
]


@pytest.mark.parametrize(("case", "build", "exc"), ROOTS, ids=_ids(ROOTS))
def test_root_rotation(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


def test_valid_rotation_is_accepted_and_returned(ctx: Ctx) -> None:
    root_v2, _, rel = rotate_root(ctx.trust)
    a = _rotated(ctx, [ctx.trust.root_envelope, root_v2], rel)
    pinned = ctx.trust.trusted
    v = verify(a.path, ctx.trust, ctx.staging, state=a.state, trusted_root=pinned)
    assert v.root_updates == (root_v2,)
    assert v.trusted_root.version == 2 and v.trusted_root.envelope == root_v2
    assert v.state == VerifierState(2, SEQ, NOW)
    assert pinned.version == 1 and pinned.envelope == ctx.trust.root_envelope


# -- freshness ----------------------------------------------------------------------------


def _with(**kwargs: Any) -> Builder:
    return lambda c: Attack(c.bundle(), **kwargs)


EXPIRES = NOW + 7 * 86400  # release_draft's expiry

FRESHNESS: list[tuple[str, Builder, type[BundleError]]] = [
    ("older sequence", _with(state=VerifierState(1, SEQ + 1, 0)), ReplayError),
    ("equal sequence", _with(state=VerifierState(1, SEQ, 0)), ReplayError),
    ("older root version", _with(state=VerifierState(2, 1, 0)), ReplayError),
    ("fast-forwarded sequence", _with(state=VerifierState(1, 2**40, 0)), ReplayError),
    ("other agent", _with(expect=ExpectRelease("agent-2")), MisaddressedError),
    ("other environment",
     lambda c: Attack(c.bundle(target=Target(environment="prod")),
                      expect=ExpectRelease(AGENT, "staging")), MisaddressedError),
    ("listed agent, other environment",
     lambda c: Attack(c.bundle(target=Target(agents=(AGENT,), environment="prod")),
                      expect=ExpectRelease(AGENT, "staging")), MisaddressedError),
    ("expired (clock at expiry)", _with(now=EXPIRES), ExpiredError),
    ("expired (clock after)", _with(now=EXPIRES + 86400), ExpiredError),
    ("clock set back below the time floor",
     _with(now=NOW - 365 * 86400, state=VerifierState(1, 0, EXPIRES)), ExpiredError),
    ("signed under a superseded root",
     lambda c: Attack(_signed(c, roots=[rotate_root(c.trust,
                                                    release_key=c.trust.release_key)[0]])),
     ReplayError),
]


@pytest.mark.parametrize(("case", "build", "exc"), FRESHNESS, ids=_ids(FRESHNESS))
def test_freshness(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


def test_fast_forward_then_recovery_by_root_rotation(ctx: Ctx) -> None:
    # A stolen release key signed sequence 2**40 and the agent accepted it: every honest
    # bundle of root version 1 is now a replay ...
    stuck = VerifierState(1, 2**40, NOW - 600)
    honest = Attack(ctx.bundle(), state=stuck)
    _assert_refused(ctx, honest, ReplayError)
    # ... until the root is rotated: root version 2 starts a new epoch at sequence 1.
    root_v2, _, rel = rotate_root(ctx.trust)
    m = release_draft(ctx.trust, sequence=1, root_version=2, issuer=rel.key_id)
    w = write_bundle(ctx.out / "recovery.tgb", m, [], [rel], roots=[root_v2])
    v = verify(w.paths[0], ctx.trust, ctx.staging, state=stuck)
    assert v.state == VerifierState(2, 1, NOW)
    assert v.trusted_root.version == 2 and v.root_updates == (root_v2,)
    assert stuck == VerifierState(1, 2**40, NOW - 600)


# -- integrity ----------------------------------------------------------------------------


def _layout(path: Path, m: Manifest) -> tuple[bytes, list[bytes], bytes]:
    """Split a bundle file into head, whole payload members and the end marker."""
    data = path.read_bytes()
    spans = [member_span(f.compressed_size) for f in m.files]
    head_len = len(data) - sum(spans) - len(END_OF_ARCHIVE)
    members, at = [], head_len
    for s in spans:
        members.append(data[at:at + s])
        at += s
    return data[:head_len], members, data[at:]


def _rebuild(c: Ctx, edit: Callable[[bytes, list[bytes], bytes], bytes]) -> Attack:
    path = c.bundle()
    m = write_manifest(path)
    head, members, end = _layout(path, m)
    path.write_bytes(edit(head, members, end))
    return Attack(path)


def write_manifest(path: Path) -> Manifest:
    seen = inspect(path)
    assert seen.manifest is not None
    return seen.manifest


def _envelope_sha(path: Path) -> str:
    with open(path, "rb") as fh:
        head = read_head(ContainerReader(fh, path.name), max_roots_bytes=1 << 20,
                         max_envelope_bytes=1 << 20)
    return hashlib.sha256(head.envelope).hexdigest()


def _flip_payload(c: Ctx) -> Attack:
    def edit(head: bytes, members: list[bytes], end: bytes) -> bytes:
        m = bytearray(members[1])
        m[BLOCK + 100] ^= 0x40
        return head + members[0] + bytes(m) + members[2] + end
    return _rebuild(c, edit)


def _from_other_bundle(c: Ctx) -> Attack:
    # The same names and sizes, other content: member 2 of bundle B spliced into bundle A.
    other_contents = dict(CONTENTS, **{"bin/tool": os.urandom(len(CONTENTS["bin/tool"]))})
    other = c.bundle("other.tgb", other_contents)
    _, other_members, _ = _layout(other, write_manifest(other))

    def edit(head: bytes, members: list[bytes], end: bytes) -> bytes:
        assert len(other_members[1]) == len(members[1])
        return head + members[0] + other_members[1] + members[2] + end
    return _rebuild(c, edit)


def _ed(fn: Callable[[bytes, list[bytes], bytes], bytes]) -> Builder:
    return lambda c: _rebuild(c, fn)


def _truncated_inside_payload(c: Ctx) -> Attack:
    path = c.bundle()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(END_OF_ARCHIVE) - 700])
    return Attack(path)


EXTRA = encode_member("payload/000004.zst", _frame(b"extra"))


def _resized(delta: int) -> Callable[[bytes, list[bytes], bytes], bytes]:
    """Payload member 2's header claims ``delta`` more (or fewer) bytes; data follows suit."""
    def edit(head: bytes, members: list[bytes], end: bytes) -> bytes:
        size = int(members[1][124:135], 8)
        data = members[1][BLOCK:BLOCK + size]
        data = data + bytes(delta) if delta > 0 else data[:delta]
        return head + members[0] + encode_member("payload/000002.zst", data) + members[2] + end
    return edit


def _head_edit(edit: Callable[[list[bytes]], list[bytes]]) -> Builder:
    """Rearrange the three head members (marker, roots, envelope)."""
    def build(c: Ctx) -> Attack:
        path = c.bundle()
        data = path.read_bytes()
        env = read_head(ContainerReader(io.BytesIO(data), "x"), max_roots_bytes=1 << 20,
                        max_envelope_bytes=1 << 20)
        head = [encode_member(MARKER_NAME, MARKER), encode_member(ROOTS_NAME, env.roots),
                encode_member(ENVELOPE_NAME, env.envelope)]
        assert b"".join(head) == data[:env.size]
        path.write_bytes(b"".join(edit(head)) + data[env.size:])
        return Attack(path)
    return build

# (id, builder, error from a file, error from a stream of unknown length)
INTEGRITY: list[tuple[str, Builder, type[BundleError], type[BundleError]]] = [
    ("flipped payload byte", _flip_payload, DigestMismatchError, DigestMismatchError),
    ("member from another bundle", _from_other_bundle, DigestMismatchError,
     DigestMismatchError),
    ("truncated payload", _truncated_inside_payload, TruncatedError, TruncatedError),
    ("truncated end marker", _ed(lambda h, ms, e: h + b"".join(ms) + e[:512]), TruncatedError,
     TruncatedError),
    ("extended by a block", _ed(lambda h, ms, e: h + b"".join(ms) + e + bytes(512)),
     BundleFormatError, BundleFormatError),
    ("trailing garbage", _ed(lambda h, ms, e: h + b"".join(ms) + e + b"garbage"),
     BundleFormatError, BundleFormatError),
    ("reordered members", _ed(lambda h, ms, e: h + ms[1] + ms[0] + ms[2] + e),
     BundleFormatError, BundleFormatError),
    ("missing member", _ed(lambda h, ms, e: h + ms[0] + ms[2] + e), TruncatedError,
     BundleFormatError),
    ("missing last member", _ed(lambda h, ms, e: h + ms[0] + ms[1] + e), TruncatedError,
     BundleFormatError),
    ("duplicate member", _ed(lambda h, ms, e: h + ms[0] + ms[0] + ms[1] + ms[2] + e),
     BundleFormatError, BundleFormatError),
    ("extra member", _ed(lambda h, ms, e: h + b"".join(ms) + EXTRA + e), BundleFormatError,
     BundleFormatError),
    ("payload member extended", _ed(_resized(+512)), BundleFormatError, DigestMismatchError),
    ("payload member extended within its padding", _ed(_resized(+3)), DigestMismatchError,
     DigestMismatchError),
    ("payload member shortened", _ed(_resized(-600)), TruncatedError, DigestMismatchError),
    ("head members reordered", _head_edit(lambda h: [h[0], h[2], h[1]]), BundleFormatError,
     BundleFormatError),
    ("format marker missing", _head_edit(lambda h: h[1:]), BundleFormatError,
     BundleFormatError),
    ("newer format marker",
     _head_edit(lambda h: [encode_member(MARKER_NAME, b"tiangong-bundle/2\n"), *h[1:]]),
     BundleFormatError, BundleFormatError),
    ("envelope member twice", _head_edit(lambda h: [*h, h[2]]), BundleFormatError,
     BundleFormatError),
    ("end marker replaced by garbage",
     _ed(lambda h, ms, e: h + b"".join(ms) + b"\x01" * len(e)), BundleFormatError,
     BundleFormatError),
]


@pytest.mark.parametrize("mode", ["file", "stream"])
@pytest.mark.parametrize(("case", "build", "exc_file", "exc_stream"), INTEGRITY,
                         ids=_ids(INTEGRITY))
def test_integrity(ctx: Ctx, case: str, build: Builder, exc_file: type[BundleError],
                   exc_stream: type[BundleError], mode: str) -> None:
    _assert_refused(ctx, build(ctx), exc_file if mode == "file" else exc_stream, mode)


# -- archive ------------------------------------------------------------------------------


def _header(name: bytes, size: int, typeflag: bytes = b"0", linkname: bytes = b"",
            mode: bytes = b"0000644\0", prefix: bytes = b"") -> bytes:
    buf = bytearray(BLOCK)
    buf[0:len(name)] = name
    buf[100:108] = mode
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    buf[124:136] = b"%011o\0" % size
    buf[136:148] = b"00000000000\0"
    buf[148:156] = b" " * 8
    buf[156:157] = typeflag
    buf[157:157 + len(linkname)] = linkname
    buf[257:263] = b"ustar\0"
    buf[263:265] = b"00"
    buf[345:345 + len(prefix)] = prefix
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _replace_first_header(**kwargs: Any) -> Builder:
    """Payload member 1 keeps its data but gets a hostile header."""
    def build(c: Ctx) -> Attack:
        def edit(head: bytes, members: list[bytes], end: bytes) -> bytes:
            size = int(members[0][124:135], 8)
            hdr = _header(kwargs.get("name", b"payload/000001.zst"),
                          kwargs.get("size", size), kwargs.get("typeflag", b"0"),
                          kwargs.get("linkname", b""), prefix=kwargs.get("prefix", b""))
            return head + hdr + members[0][BLOCK:] + b"".join(members[1:]) + end
        return _rebuild(c, edit)
    return build


def _pax_before_first(records: bytes, typeflag: bytes = b"x",
                      name: bytes = b"././@PaxHeader") -> Builder:
    def build(c: Ctx) -> Attack:
        def edit(head: bytes, members: list[bytes], end: bytes) -> bytes:
            pax = _header(name, len(records), typeflag, mode=b"0000000\0")
            pax += records + bytes(-len(records) % BLOCK)
            return head + pax + b"".join(members) + end
        return _rebuild(c, edit)
    return build


LONG = b"payload/" + b"a" * 200 + b".zst"

# (id, builder, error, words of the message from a stream)
ARCHIVE: list[tuple[str, Builder, type[BundleError], str]] = [
    ("../ name", _replace_first_header(name=b"../payload/000001.zst"), BundleFormatError, ".."),
    ("../ deep name", _replace_first_header(name=b"payload/../../etc/x"), BundleFormatError,
     ".."),
    ("absolute name", _replace_first_header(name=b"/etc/cron.d/x"), BundleFormatError,
     "absolute"),
    ("symlink", _replace_first_header(typeflag=b"2", linkname=b"/etc/passwd", size=0),
     BundleFormatError, "symbolic link"),
    ("hardlink", _replace_first_header(typeflag=b"1", linkname=b"roots.json", size=0),
     BundleFormatError, "hard link"),
    ("fifo", _replace_first_header(typeflag=b"6", size=0), BundleFormatError, "FIFO"),
    ("char device", _replace_first_header(typeflag=b"3", size=0), BundleFormatError,
     "character device"),
    ("block device", _replace_first_header(typeflag=b"4", size=0), BundleFormatError,
     "block device"),
    ("directory", _replace_first_header(typeflag=b"5", size=0), BundleFormatError,
     "directory"),
    ("unknown type", _replace_first_header(typeflag=b"Z"), BundleFormatError, "unknown type"),
    ("control chars in name", _replace_first_header(name=b"payload/000001\n.zst"),
     BundleFormatError, "control characters"),
    ("escape sequence in name", _replace_first_header(name=b"payload/\x1b[2J.zst"),
     BundleFormatError, "control characters"),
    ("ustar prefix smuggles a path", _replace_first_header(prefix=b"..", name=b"x.zst"),
     BundleFormatError, ".."),
    ("pax long name", _pax_before_first(b"%d path=%s\n" % (len(LONG) + 11, LONG)),
     BundleFormatError, "pax header"),
    ("pax linkpath", _pax_before_first(b"30 linkpath=/etc/passwd.zst\n"),
     BundleFormatError, "pax header"),
    ("pax under another name", _pax_before_first(b"30 path=payload/000001.zst\n",
                                                 name=b"PaxHeaders/x"),
     BundleFormatError, "unexpected pax header"),
    ("global pax header", _pax_before_first(b"30 path=payload/000001.zst\n", typeflag=b"g"),
     BundleFormatError, "global pax header"),
    ("GNU long name", _pax_before_first(LONG + b"\0", typeflag=b"L", name=b"././@LongLink"),
     BundleFormatError, "GNU long name"),
]


@pytest.mark.parametrize("mode", ["file", "stream"])
@pytest.mark.parametrize(("case", "build", "exc", "words"), ARCHIVE, ids=_ids(ARCHIVE))
def test_archive(ctx: Ctx, case: str, build: Builder, exc: type[BundleError], words: str,
                 mode: str) -> None:
    _assert_refused(ctx, build(ctx), exc, mode, match=words if mode == "stream" else None)


def _signed_names(*names: str) -> Builder:
    """A manifest naming payloads ``names``, signed by the real release key (a signing
    mistake, or a hub bug): the verifier must still refuse the names."""
    def build(c: Ctx) -> Attack:
        comps = [(n or "x", PAYLOAD, _frame(PAYLOAD)) for n in names]
        path = c.out / "names.tgb"
        m = craft_bundle(path, c.trust, [(f"n{i}", d, z) for i, (_, d, z) in enumerate(comps)],
                         manifest=release_draft(c.trust, sequence=SEQ))

        def rename(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [dict(f, name=n) for f, n in zip(files, names, strict=True)]
        raw = _manifest_json(c, files=rename)(m)
        env = sign_envelope(TYPE_RELEASE, raw, [c.trust.release_key])
        return Attack(_assemble(path, env, [z for _, _, z in comps]))
    return build


NAMES: list[tuple[str, Builder, type[BundleError]]] = [
    ("case-colliding names", _signed_names("bin/Tool", "bin/tool"), ManifestError),
    ("case-colliding directories", _signed_names("SQL/a.sql", "sql/b.sql"), ManifestError),
    ("NFC/NFD-colliding names", _signed_names("caf\u00e9.txt", "cafe\u0301.txt"),
     ManifestError),
    ("name is a file and a directory", _signed_names("sql", "sql/a.sql"), ManifestError),
    ("../ logical name", _signed_names("../etc/passwd"), ManifestError),
    ("absolute logical name", _signed_names("/etc/passwd"), ManifestError),
    ("control character in logical name", _signed_names("a\nb.sql"), ManifestError),
    ("backslash in logical name", _signed_names("..\\evil.sql"), ManifestError),
    ("duplicate logical name", _signed_names("a.sql", "a.sql"), ManifestError),
]


@pytest.mark.parametrize(("case", "build", "exc"), NAMES, ids=_ids(NAMES))
def test_logical_names(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


def _planted_ready_link(c: Ctx) -> Attack:
    path = c.bundle()
    envelope_sha = _envelope_sha(path)
    victim = c.tmp / "victim"
    victim.mkdir()
    (c.staging / f"ready-{envelope_sha}").symlink_to(victim)
    return Attack(path, planted=(f"ready-{envelope_sha}",))


def _planted_ready_file_link(c: Ctx) -> Attack:
    path = c.bundle()
    envelope_sha = _envelope_sha(path)
    target = c.tmp / "victim-file"
    target.write_bytes(b"precious")
    (c.staging / f"ready-{envelope_sha}").symlink_to(target)
    return Attack(path, planted=(f"ready-{envelope_sha}",))


PLANTED: list[tuple[str, Builder, type[BundleError]]] = [
    ("ready name is a symlink to a directory outside", _planted_ready_link, StagingError),
    ("ready name is a symlink to a file outside", _planted_ready_file_link, StagingError),
]


@pytest.mark.parametrize(("case", "build", "exc"), PLANTED, ids=_ids(PLANTED))
def test_planted_in_staging(ctx: Ctx, case: str, build: Builder,
                            exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


def test_staging_dir_that_is_a_symlink_outside(ctx: Ctx) -> None:
    path = ctx.bundle()
    victim = ctx.tmp / "victim"
    victim.mkdir(mode=0o700)
    link = ctx.tmp / "linked-staging"
    link.symlink_to(victim)
    before = _tree(ctx.tmp)
    with pytest.raises(StagingError):
        verify(path, ctx.trust, link, state=STATE)
    assert os.listdir(victim) == []
    assert _tree(ctx.tmp) == before


@pytest.mark.parametrize("planted", ["files", "spool.zst", "000001", ".verifying-x"])
def test_unrelated_planted_links_are_never_followed(ctx: Ctx, planted: str) -> None:
    # Links an attacker can plant at names the verifier uses *inside* its work directory are
    # useless: the work directory is new (mkdtemp) and files are created O_EXCL|O_NOFOLLOW.
    path = ctx.bundle(contents=dict(CONTENTS, big=os.urandom(2 * 1024 * 1024)))
    victim = ctx.tmp / "victim"
    victim.mkdir()
    (ctx.staging / planted).symlink_to(victim)
    v = verify(path, ctx.trust, ctx.staging, state=STATE)
    assert os.listdir(victim) == []
    assert sorted(os.listdir(ctx.staging)) == sorted([planted, v.staged_dir.name])
    assert v.files["big"].parent.parent == v.staged_dir


# -- zstd ---------------------------------------------------------------------------------


def _zstd_case(content: bytes, comp: Callable[[bytes], bytes], **attack: Any) -> Builder:
    def build(c: Ctx) -> Attack:
        path = c.out / "z.tgb"
        craft_bundle(path, c.trust, [("a.bin", content, comp(content))],
                     manifest=release_draft(c.trust, sequence=SEQ))
        return Attack(path, **attack)
    return build


def _lying_size(data: bytes) -> bytes:
    """10 MB of zeros whose frame header claims 1,000 bytes (the FCS field patched)."""
    frame = bytearray(_frame(bytes(10_000_000)))
    fhd = frame[4]
    assert fhd >> 6 == 2 and not (fhd >> 5) & 1  # 4-byte content size after the window byte
    frame[6:10] = len(data).to_bytes(4, "little")
    return bytes(frame)


def _huge_window(data: bytes) -> bytes:
    frame = bytearray(_frame(data))
    assert not (frame[4] >> 5) & 1  # not single-segment: a window descriptor follows
    frame[5] = 17 << 3  # 2**27 bytes = 128 MiB
    return bytes(frame)


def _window_log(log: int) -> Callable[[bytes], bytes]:
    def make(data: bytes) -> bytes:
        params = zstandard.ZstdCompressionParameters.from_level(
            3, window_log=log, write_checksum=1, write_content_size=1)
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    return make


SMALL = b"hello zstd\n" * 1000
WIDE = (os.urandom(64 * 1024) * 48)  # 3 MiB, repetitive at 64 KiB: needs a large window

ZSTD: list[tuple[str, Builder, type[BundleError]]] = [
    ("bomb: frame states far more than signed",
     _zstd_case(bytes(1000), lambda d: _frame(bytes(10_000_000))), DecompressionError),
    ("bomb: frame lies about its size", _zstd_case(bytes(1000), _lying_size),
     DecompressionError),
    ("frame states less than signed", _zstd_case(SMALL, lambda d: _frame(d[:-1])),
     DecompressionError),
    ("missing content size", _zstd_case(SMALL, lambda d: _frame(d, write_content_size=False)),
     DecompressionError),
    ("no checksum", _zstd_case(SMALL, lambda d: _frame(d, write_checksum=False)),
     DecompressionError),
    ("window above the default cap", _zstd_case(WIDE, _huge_window), LimitExceededError),
    ("window above a configured cap",
     _zstd_case(WIDE, _window_log(22), limits=Limits(max_window_bytes=2 * 1024 * 1024)),
     LimitExceededError),
    ("two frames", _zstd_case(SMALL, lambda d: _frame(d[:500]) + _frame(d[500:])),
     DecompressionError),
    ("frame then empty frame", _zstd_case(SMALL, lambda d: _frame(d) + _frame(b"")),
     DecompressionError),
    ("skippable frame first",
     _zstd_case(SMALL, lambda d: b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd" + _frame(d)),
     DecompressionError),
    ("skippable frame after",
     _zstd_case(SMALL, lambda d: _frame(d) + b"\x5f\x2a\x4d\x18\x00\x00\x00\x00"),
     DecompressionError),
    ("truncated frame", _zstd_case(SMALL, lambda d: _frame(d)[:-5]), DecompressionError),
    ("truncated frame header", _zstd_case(SMALL, lambda d: _frame(d)[:5]),
     DecompressionError),
    ("empty member", _zstd_case(SMALL, lambda d: b""), DecompressionError),
    ("bad checksum", _zstd_case(SMALL, lambda d: _frame(d)[:-1] + bytes([_frame(d)[-1] ^ 1])),
     DecompressionError),
    ("reserved bit set",
     _zstd_case(SMALL, lambda d: _frame(d)[:4] + bytes([_frame(d)[4] | 0x08]) + _frame(d)[5:]),
     DecompressionError),
    ("dictionary id",
     _zstd_case(SMALL, lambda d: _frame(d)[:4] + bytes([_frame(d)[4] | 0x01]) + _frame(d)[5:]),
     DecompressionError),
    ("gzip instead of zstd", _zstd_case(SMALL, lambda d: b"\x1f\x8b\x08" + d[:100]),
     DecompressionError),
]


@pytest.mark.parametrize(("case", "build", "exc"), ZSTD, ids=_ids(ZSTD))
def test_zstd(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


# -- secrets (limits at bundle level) -------------------------------------------------------


def _secrets(count: int, size: int, **attack: Any) -> Builder:
    def build(c: Ctx) -> Attack:
        secrets = tuple(SecretEntry(f"s{i}", AGENT, os.urandom(size)) for i in range(count))
        return Attack(_signed(c, manifest=release_draft(c.trust, sequence=SEQ,
                                                        secrets=secrets)), **attack)
    return build


def _secrets_json(edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Builder:
    def build(c: Ctx) -> Attack:
        return Attack(_signed(c, manifest_bytes=_manifest_json(c, secrets=edit)))
    return build


_SEALED = base64.b64encode(b"x" * 80).decode()

SECRETS: list[tuple[str, Builder, type[BundleError]]] = [
    ("more secrets than the default max_secrets", _secrets(257, 48), LimitExceededError),
    ("more secrets than a configured max_secrets",
     _secrets(3, 48, limits=Limits(max_secrets=2)), LimitExceededError),
    ("sealed secret over the default max_sealed_bytes", _secrets(1, 64 * 1024 + 1),
     LimitExceededError),
    ("sealed secret over a configured max_sealed_bytes",
     _secrets(1, 101, limits=Limits(max_sealed_bytes=100)), LimitExceededError),
    ("same secret twice for one agent",
     _secrets_json(lambda s: [{"name": "db", "agent_id": AGENT, "sealed": _SEALED}] * 2),
     ManifestError),
    ("secret not base64",
     _secrets_json(lambda s: [{"name": "db", "agent_id": AGENT, "sealed": "%%%"}]),
     ManifestError),
    ("empty sealed secret",
     _secrets_json(lambda s: [{"name": "db", "agent_id": AGENT, "sealed": ""}]),
     ManifestError),
]


@pytest.mark.parametrize(("case", "build", "exc"), SECRETS, ids=_ids(SECRETS))
def test_secrets(ctx: Ctx, case: str, build: Builder, exc: type[BundleError]) -> None:
    _assert_refused(ctx, build(ctx), exc)


def test_secrets_at_the_limits_are_accepted(ctx: Ctx) -> None:
    a = _secrets(2, 100, limits=Limits(max_secrets=2, max_sealed_bytes=100))(ctx)
    v = verify(a.path, ctx.trust, ctx.staging, state=a.state, limits=a.limits)
    assert len(v.manifest.secrets) == 2


# -- the matrix is not vacuous: the untouched bundles verify --------------------------------


def test_baselines_verify(ctx: Ctx) -> None:
    for path in (ctx.bundle("base.tgb"), _signed(ctx, name="base-signed.tgb")):
        v = verify(path, ctx.trust, ctx.staging, state=STATE)
        assert v.state == VerifierState(1, SEQ, NOW)
        os.rename(v.staged_dir, ctx.tmp / f"done-{path.name}")
    a = _zstd_case(SMALL, _frame)(ctx)
    verify(a.path, ctx.trust, ctx.staging, state=STATE)
