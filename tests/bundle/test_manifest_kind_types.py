"""A manifest whose "kind" is a JSON array or object is a ManifestError (found by the fuzz run:
it used to escape as TypeError, before authentication too)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from bundle.container import (
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
)
from bundle.errors import BundleFormatError, ManifestError
from bundle.inspect import inspect
from bundle.manifest import Manifest, peek_manifest
from bundle.reader import ExpectRelease, VerifierState, verify_bundle
from signing.envelope import TYPE_RELEASE, Envelope, sign_envelope
from signing.strictjson import dumps_canonical
from tests.bundle.kit import AGENT, NOW, release_draft
from tests.fixtures.trust import make_trust


@pytest.mark.parametrize("kind", [[], {}, ["release"]], ids=["list", "object", "list-of-kind"])
@pytest.mark.parametrize("entry", ["from_bytes", "peek_manifest", "inspect", "verify_bundle"])
def test_unhashable_kind_is_a_manifest_error(tmp_path: Path, kind: object, entry: str) -> None:
    trust = make_trust()
    doc = release_draft(trust).to_json()
    doc["kind"] = kind
    raw = dumps_canonical(doc)
    signed = sign_envelope(TYPE_RELEASE, raw, [trust.release_key])
    unsigned = Envelope(TYPE_RELEASE, raw, ()).to_bytes()
    if entry == "from_bytes":
        with pytest.raises(ManifestError):
            Manifest.from_bytes(raw, 1 << 20)
    elif entry == "peek_manifest":  # no signature checked: reachable by anyone
        with pytest.raises(ManifestError):
            peek_manifest(unsigned, 1 << 20)
    elif entry == "inspect":  # `tiangong bundle inspect` on a file from a stick
        path = tmp_path / "x.tgb"
        path.write_bytes(encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
                         + encode_member(ENVELOPE_NAME, unsigned) + END_OF_ARCHIVE)
        seen = inspect(path)
        assert seen.manifest is None and seen.problem is not None
    else:
        staging = tmp_path / "staging"
        staging.mkdir(mode=0o700)
        data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
                + encode_member(ENVELOPE_NAME, signed) + END_OF_ARCHIVE)
        state = VerifierState(1, 0, 0)
        with pytest.raises(ManifestError) as info:
            verify_bundle(io.BytesIO(data), label="x.tgb", trusted_root=trust.trusted,
                          state=state, expect=ExpectRelease(AGENT), staging_dir=staging,
                          size=len(data), clock=lambda: NOW)
        assert isinstance(info.value, BundleFormatError) and info.value.check == "manifest"
        assert os.listdir(staging) == [] and state == VerifierState(1, 0, 0)
