"""A bounded, deterministic fuzz run of the parsers reached by untrusted bytes.

Targets (docs/security.md threat 12, "parser bugs reached before authentication"):

* :meth:`Manifest.from_bytes` / :meth:`Manifest.from_json` on arbitrary bytes, arbitrary JSON
  and structurally mutated valid manifests (a field replaced, removed or added at any depth);
* the container reader (:func:`bundle.container.read_head`, ``expect_member``) on arbitrary
  bytes and on mutated header blocks whose checksum is recomputed, so the mutation reaches the
  checks behind the checksum;
* the whole verifier (:func:`bundle.reader.verify_bundle`) on bundles with a mutated header,
  a hostile ``roots.json`` or an arbitrary envelope document, signed or not.

The only exceptions allowed out are :class:`~bundle.errors.BundleError` subclasses: signing
errors must arrive wrapped (``raise ... from``), never bare, and nothing else (``KeyError``,
``TypeError``, ``RecursionError``, ``UnicodeError`` ...) may escape. Any refusal by the verifier
must also leave staging empty.

Runs are derandomized: the same examples every time. The number of examples per target is
``TIANGONG_FUZZ_EXAMPLES`` (default 120, which keeps this module under about 20 seconds); a soak
run sets it high, for minutes of fuzzing::

    TIANGONG_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/bundle/test_fuzz.py -q

(``make soak`` can export it the same way.)
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.container import (
    BLOCK,
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    ContainerReader,
    encode_header,
    encode_member,
    read_head,
)
from bundle.errors import BundleError, ManifestError
from bundle.manifest import (
    FileEntry,
    Manifest,
    PartDigest,
    PartsInfo,
    SecretEntry,
    Target,
)
from bundle.reader import ExpectRelease, ExpectResult, VerifierState, verify_bundle
from signing.envelope import TYPE_RELEASE, sign_envelope
from signing.keys import SigningKey
from signing.strictjson import dumps_canonical
from tests.bundle.kit import AGENT, HUB, NOW, craft_bundle, new_staging, release_draft
from tests.fixtures.trust import TrustKit, make_trust

EXAMPLES = int(os.environ.get("TIANGONG_FUZZ_EXAMPLES", "120"))


def _settings(share: float = 1.0) -> settings:
    return settings(derandomize=True, deadline=None, database=None,
                    max_examples=max(1, int(EXAMPLES * share)),
                    suppress_health_check=list(HealthCheck))


# -- strategies -------------------------------------------------------------------------

_SCALARS = (st.none() | st.booleans()
            | st.integers(-(2**64), 2**64)
            | st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**32, 2**31 - 1])
            | st.text(max_size=40)
            | st.sampled_from(["", "..", "/etc/passwd", "a\nb", "A", "é", "e\u0301",
                               "payload/000001.zst", "release", "result", "ab" * 32,
                               "\x00", "\u202e", "x" * 300]))
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _valid_manifest(trust: TrustKit) -> Manifest:
    """A manifest using every field, so mutations can reach every sub-parser."""
    m = release_draft(trust, sequence=7, not_before=NOW,
                      target=Target(agents=(AGENT, "agent-2"), environment="prod"),
                      secrets=(SecretEntry("db", AGENT, b"sealed-bytes"),),
                      checkpoint={"size": 3, "root": "ab" * 32})
    files = tuple(
        FileEntry(
            f"payload/{i:06d}.zst", f"dir/f{i}.sql", 100 * i, "cd" * 32, 50 * i + 20, "ef" * 32)
        for i in range(1, 3))
    data_bytes = sum(512 + ((f.compressed_size + 511) // 512) * 512 for f in files) + 1024
    parts = PartsInfo(1024, -(-data_bytes // 1024), tuple(
        PartDigest(i, min(1024, data_bytes - (i - 1) * 1024), "01" * 32)
        for i in range(1, -(-data_bytes // 1024) + 1)))
    return Manifest(**{**m.__dict__, "files": files, "parts": parts})


TRUST = make_trust()
VALID = _valid_manifest(TRUST)
VALID_DOC = VALID.to_json()
VALID_BYTES = VALID.to_bytes()


@st.composite
def mutated_doc(draw: st.DrawFn) -> Any:
    """The valid manifest with one to three edits at random depths."""
    doc = copy.deepcopy(VALID_DOC)
    for _ in range(draw(st.integers(1, 3))):
        node: Any = doc
        # Walk down a random path, then edit there.
        for _depth in range(draw(st.integers(0, 4))):
            if isinstance(node, dict) and node:
                key = draw(st.sampled_from(sorted(node)))
                if not isinstance(node[key], dict | list) or not node[key]:
                    break
                node = node[key]
            elif isinstance(node, list) and node:
                node = node[draw(st.integers(0, len(node) - 1))]
                if not isinstance(node, dict | list) or not node:
                    break
            else:
                break
        if isinstance(node, dict):
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "add" or not node:
                node[draw(st.text(max_size=12))] = draw(JSON)
            else:
                key = draw(st.sampled_from(sorted(node)))
                if action == "delete":
                    del node[key]
                else:
                    node[key] = draw(JSON)
        elif isinstance(node, list):
            action = draw(st.sampled_from(["replace", "delete", "append", "duplicate"]))
            if action == "append" or not node:
                node.append(draw(JSON))
            else:
                i = draw(st.integers(0, len(node) - 1))
                if action == "delete":
                    del node[i]
                elif action == "duplicate":
                    node.insert(i, copy.deepcopy(node[i]))
                else:
                    node[i] = draw(JSON)
    return doc


def _canonical(doc: Any) -> bytes:
    try:
        return dumps_canonical(doc)
    except Exception:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _only_manifest_errors(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        Manifest.from_bytes(data, 1 << 20)


# -- manifest parser ------------------------------------------------------------------------


def test_the_seed_manifest_parses() -> None:
    assert Manifest.from_bytes(VALID_BYTES, 1 << 20) == VALID


@_settings()
@given(st.binary(max_size=600))
def test_manifest_arbitrary_bytes(data: bytes) -> None:
    _only_manifest_errors(data)


@_settings()
@given(JSON)
def test_manifest_arbitrary_json(value: Any) -> None:
    _only_manifest_errors(_canonical(value))
    with contextlib.suppress(ManifestError):
        Manifest.from_json(value)


@_settings(2.0)
@given(mutated_doc())
def test_manifest_structural_mutations(doc: Any) -> None:
    data = _canonical(doc)
    try:
        m = Manifest.from_bytes(data, 1 << 20)
    except ManifestError:
        return
    # Accepted: then it must be exactly what it says (a fixed point of the codec).
    assert m.to_bytes() == data


@_settings()
@given(st.data())
def test_manifest_byte_mutations(data: st.DataObject) -> None:
    raw = bytearray(VALID_BYTES)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        b = data.draw(st.integers(0, 255))
        if op == "set":
            raw[i] = b
        elif op == "insert":
            raw.insert(i, b)
        elif len(raw) > 1:
            del raw[i]
    try:
        m = Manifest.from_bytes(bytes(raw), 1 << 20)
    except ManifestError:
        return
    assert m.to_bytes() == bytes(raw)


# -- container reader -----------------------------------------------------------------------


HEAD = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
        + encode_member(ENVELOPE_NAME, b"{}"))


def _read_head(data: bytes) -> None:
    reader = ContainerReader(io.BytesIO(data), "fuzz.tgb")
    with contextlib.suppress(BundleError):
        read_head(reader, max_roots_bytes=4096, max_envelope_bytes=4096)


@_settings()
@given(st.binary(max_size=3 * BLOCK))
def test_container_arbitrary_bytes(data: bytes) -> None:
    _read_head(data)
    _read_head(HEAD[:BLOCK] + data)  # a good first header, then anything


def _fix_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@st.composite
def mutated_header(draw: st.DrawFn) -> bytes:
    block = bytearray(encode_header(draw(st.sampled_from([MARKER_NAME, ROOTS_NAME,
                                                          "payload/000001.zst"])),
                                    draw(st.integers(0, 4096))))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.one_of(st.integers(0, BLOCK - 1),
                           st.sampled_from([0, 99, 100, 124, 135, 156, 157, 257, 263, 345])))
        block[i] = draw(st.one_of(st.integers(0, 255),
                                  st.sampled_from(list(b"0123456789 /.\0\x80\xffxgLK2"))))
    if draw(st.booleans()):
        return _fix_checksum(block)
    return bytes(block)


@_settings(2.0)
@given(mutated_header(), st.binary(max_size=2 * BLOCK))
def test_container_mutated_headers(header: bytes, rest: bytes) -> None:
    for name in (MARKER_NAME, ROOTS_NAME, "payload/000001.zst"):
        reader = ContainerReader(io.BytesIO(header + rest), "fuzz.tgb")
        try:
            size = reader.expect_member(name)
        except BundleError:
            continue
        assert 0 <= size < 2**63
        with contextlib.suppress(BundleError):
            reader.read_exact(min(size, 4096), f"member {name}")
    _read_head(header + rest)


@_settings()
@given(st.integers(0, 2**63 - 1), st.binary(max_size=40))
def test_container_pax_records(size: int, junk: bytes) -> None:
    record = b" size=%d\n" % size
    record = b"%d%s" % (len(record) + len(str(len(record) + 2)), record) + junk
    pax = bytearray(encode_header("././@PaxHeader", len(record)))
    pax[156:157] = b"x"
    pax[100:108] = b"0000000\0"
    data = (_fix_checksum(pax) + record + bytes(-len(record) % BLOCK)
            + encode_header("payload/000001.zst", 0))
    reader = ContainerReader(io.BytesIO(data), "fuzz.tgb")
    try:
        got = reader.expect_member("payload/000001.zst")
    except BundleError:
        return
    assert got == size and got >= 8**11


# -- the whole verifier -----------------------------------------------------------------


class _Verifier:
    def __init__(self, base: Path) -> None:
        self.staging = new_staging(base)
        path = base / "seed.tgb"
        self.comp = zstandard.ZstdCompressor(
            write_checksum=True, write_content_size=True).compress(b"fuzz\n" * 50)
        self.manifest = craft_bundle(path, TRUST, [("a.txt", b"fuzz\n" * 50, self.comp)],
                                     manifest=release_draft(TRUST, sequence=3))
        self.seed = path.read_bytes()
        self.agent_key = SigningKey.generate()

    def check(self, data: bytes, *, result: bool = False) -> None:
        expect: Any = (ExpectResult(HUB, AGENT, self.agent_key.public) if result
                       else ExpectRelease(AGENT))
        for size in (len(data), None):
            try:
                v = verify_bundle(io.BytesIO(data), label="fuzz.tgb", size=size,
                                  trusted_root=TRUST.trusted, state=VerifierState(1, 2, 0),
                                  expect=expect, staging_dir=self.staging, clock=lambda: NOW)
            except BundleError:
                assert os.listdir(self.staging) == []
                continue
            # Accepted: only the untouched seed (or an equivalent) may get here.
            assert v.manifest.files[0].sha256 == self.manifest.files[0].sha256
            for entry in os.listdir(self.staging):
                shutil.rmtree(self.staging / entry)

    def assemble(self, roots: bytes, envelope: bytes) -> bytes:
        return (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, roots)
                + encode_member(ENVELOPE_NAME, envelope)
                + encode_member("payload/000001.zst", self.comp) + END_OF_ARCHIVE)


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> _Verifier:
    return _Verifier(tmp_path_factory.mktemp("fuzz"))


@_settings()
@given(st.data())
def test_verifier_mutated_headers(verifier: _Verifier, data: st.DataObject) -> None:
    raw = bytearray(verifier.seed)
    starts = [i for i in range(0, len(raw), BLOCK) if raw[i + 257:i + 262] == b"ustar"]
    at = data.draw(st.sampled_from(starts))
    block = bytearray(raw[at:at + BLOCK])
    for _ in range(data.draw(st.integers(1, 4))):
        block[data.draw(st.integers(0, BLOCK - 1))] = data.draw(st.integers(0, 255))
    raw[at:at + BLOCK] = _fix_checksum(block) if data.draw(st.booleans()) else bytes(block)
    verifier.check(bytes(raw))


@_settings()
@given(JSON, st.booleans())
def test_verifier_hostile_roots(verifier: _Verifier, value: Any, as_b64: bool) -> None:
    if as_b64:
        value = [base64.b64encode(_canonical(value)).decode()]
    env = sign_envelope(TYPE_RELEASE, verifier.manifest.to_bytes(), [TRUST.release_key])
    verifier.check(verifier.assemble(_canonical(value), env))


@_settings()
@given(JSON)
def test_verifier_arbitrary_envelope(verifier: _Verifier, value: Any) -> None:
    verifier.check(verifier.assemble(b"[]", _canonical(value)))
    if isinstance(value, dict):
        forged = {"payload": base64.b64encode(_canonical(value)).decode(),
                  "payloadType": TYPE_RELEASE, "signatures": []}
        verifier.check(verifier.assemble(b"[]", _canonical(forged)))


@_settings()
@given(mutated_doc(), st.booleans())
def test_verifier_signed_mutated_manifests(verifier: _Verifier, doc: Any,
                                           result: bool) -> None:
    # The release key signs whatever it is given (a hub bug): the verifier must still refuse
    # bad manifests with a BundleError, for release and result expectations alike.
    env = sign_envelope(TYPE_RELEASE, _canonical(doc), [TRUST.release_key])
    verifier.check(verifier.assemble(b"[]", env), result=result)
