"""The manifest's optional ``approvals`` field (docs/bundle-format.md §6.10, bundle/approvals.py)
and the content hash recomputed from a manifest (docs/release-format.md §5)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bundle.approvals import MAX_MANIFEST_APPROVALS
from bundle.errors import ManifestError
from bundle.manifest import FileEntry, Manifest
from bundle.release import content_hash_of_manifest, load_release
from signing.approvals import ApprovalDocument, sign_approval
from signing.envelope import TYPE_RELEASE, sign_envelope
from signing.keys import SigningKey
from signing.strictjson import dumps_canonical
from tests.bundle.kit import release_draft, result_draft
from tests.fixtures.trust import NOW, TrustKit

KEY = SigningKey(b"approver-key-for-manifest-tests.")


def _approval(i: int = 0) -> bytes:
    doc = ApprovalDocument("billing", "2.4.0", "ab" * 32, ("prod",), "bob", NOW - i, NOW + 86400)
    return sign_approval(doc, KEY)


def test_a_manifest_without_approvals_keeps_its_bytes(trust: TrustKit) -> None:
    m = release_draft(trust)
    assert m.approvals == ()
    assert "approvals" not in json.loads(m.to_bytes())  # top level (release.approvals stays)
    assert Manifest.from_bytes(m.to_bytes(), 1 << 20).approvals == ()


def test_a_manifest_carries_envelopes_as_objects_with_their_exact_bytes(trust: TrustKit) -> None:
    envs = (_approval(0), _approval(1))
    m = release_draft(trust, approvals=envs)
    doc = json.loads(m.to_bytes())
    assert doc["approvals"][0]["payloadType"] == "application/vnd.tiangong.approval.v1+json"
    back = Manifest.from_bytes(m.to_bytes(), 1 << 20)
    assert back.approvals == envs and back.to_bytes() == m.to_bytes()


def _with(trust: TrustKit, value: Any) -> bytes:
    doc = json.loads(release_draft(trust).to_bytes())
    doc["approvals"] = value
    return dumps_canonical(doc)


def _env(data: bytes) -> Any:
    return json.loads(data)


BAD: list[tuple[str, Any, str]] = [
    ("empty", [], "approvals: is omitted when there are none, never empty"),
    ("null", None, "approvals: must be a list"),
    ("string", ["x"], "approvals[0]: must be an envelope object"),
    ("bad-base64", [{**_env(_approval()), "payload": "!!"}], "approvals[0]: payload is not "
     "valid base64"),
    ("extra-field", [{**_env(_approval()), "note": "x"}], "approvals[0]: envelope must have "
     "exactly the fields"),
    ("release-envelope", [_env(sign_envelope(TYPE_RELEASE, b"{}", [KEY]))],
     "is not an approval nor an approval attestation"),
    ("twice", [_env(_approval()), _env(_approval())],
     "approvals[1]: the same envelope as approvals[0]"),
    ("too-many", [_env(_approval(i)) for i in range(MAX_MANIFEST_APPROVALS + 1)],
     "33 envelopes, over the limit of 32"),
]


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BAD],
                         ids=[n for n, _, _ in BAD])
def test_bad_approvals_fields_are_refused(trust: TrustKit, value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_bytes(_with(trust, value), 1 << 20)


def test_only_release_and_plan_bundles_carry_approvals(trust: TrustKit) -> None:
    with pytest.raises(ManifestError, match="only a release or plan bundle carries approvals"):
        dataclasses.replace(result_draft(trust.release_key), approvals=(_approval(),))


def test_content_hash_of_manifest_matches_the_release(tmp_path: Path, trust: TrustKit) -> None:
    (tmp_path / "r" / "sql").mkdir(parents=True)
    (tmp_path / "r" / "sql" / "001.sql").write_text("select 1;\n")
    (tmp_path / "r" / "b.sh").write_text("echo hi\n")
    (tmp_path / "r" / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "billing"\nversion = "2.4.0"\n'
        'description = "d"\n[[steps]]\nname = "a"\nkind = "sql"\nengine = "postgres"\n'
        'connection = "db"\nscript = "sql/001.sql"\n[[steps]]\nname = "b"\nkind = "shell"\n'
        'script = "b.sh"\n')
    src = load_release(tmp_path / "r")
    files = tuple(FileEntry(f"payload/{i:06d}.zst", f.name, f.size, f.sha256, 9, "0" * 64)
                  for i, f in enumerate(src.files, start=1))
    draft = release_draft(trust)
    assert draft.release is not None
    m = dataclasses.replace(draft, steps=src.steps, files=files, release=dataclasses.replace(
        draft.release, description="d", content_hash="ff" * 32))
    # Recomputed from steps and files, never the hash the manifest states.
    assert content_hash_of_manifest(m) == src.content_hash
    assert content_hash_of_manifest(dataclasses.replace(m, steps=src.steps[:1])) \
        != src.content_hash
    assert content_hash_of_manifest(dataclasses.replace(m, files=files[:1])) != src.content_hash
