"""Helpers for bundle tests: manifests, payload files, verification with a fixed clock, and
hand-crafted bundles (signed, but framed around compressed bytes the test chooses)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bundle.container import (
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
    payload_member,
)
from bundle.manifest import (
    KIND_RELEASE,
    KIND_RESULT,
    Approval,
    FileEntry,
    Manifest,
    ReleaseInfo,
    ResultInfo,
    Target,
)
from bundle.reader import (
    Expectation,
    ExpectRelease,
    VerifiedBundle,
    VerifierState,
    verify_parts,
    verify_path,
)
from bundle.writer import PayloadFile, encode_roots
from signing.envelope import sign_envelope
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, sign_root
from tests.fixtures.trust import NOW, TrustKit

__all__ = [
    "AGENT",
    "HUB",
    "NOW",
    "craft_bundle",
    "make_files",
    "new_staging",
    "release_draft",
    "result_draft",
    "rotate_root",
    "staging_entries",
    "verify",
]

AGENT = "agent-1"
HUB = "hub-test"


def release_draft(trust: TrustKit, **changes: Any) -> Manifest:
    """A valid release manifest without files or parts; ``changes`` override fields."""
    base = Manifest(
        bundle_id="billing-2.4.0-1",
        kind=KIND_RELEASE,
        issuer=trust.release_key.key_id,
        target=Target(agents=(AGENT,)),
        root_version=1,
        sequence=1,
        created=NOW - 60,
        expires=NOW + 7 * 86400,
        release=ReleaseInfo(
            product="billing",
            version="2.4.0",
            counter=7,
            content_hash="ab" * 32,
            author="alice",
            approvals=(Approval("bob", NOW - 120, "looks good"),),
            description="Billing 2.4.0",
        ),
        steps=({"name": "schema", "kind": "sql", "script": "sql/001_schema.sql"},),
    )
    return dataclasses.replace(base, **changes)


def result_draft(agent_key: SigningKey, **changes: Any) -> Manifest:
    """A valid result manifest signed by ``agent_key``, addressed to the hub."""
    base = Manifest(
        bundle_id="result-agent-1-1",
        kind=KIND_RESULT,
        issuer=agent_key.key_id,
        target=Target(hub=HUB),
        root_version=1,
        sequence=1,
        created=NOW - 10,
        expires=NOW + 3650 * 86400,
        result=ResultInfo(agent_id=AGENT, result_seq=1, status="succeeded",
                          body={"steps": [{"name": "schema", "status": "ok"}]}),
    )
    return dataclasses.replace(base, **changes)


def make_files(directory: Path, contents: Mapping[str, bytes]) -> list[PayloadFile]:
    """Write ``contents`` (logical name → bytes) under ``directory``; return payload files."""
    out = []
    for i, (name, data) in enumerate(contents.items()):
        path = directory / f"src-{i:04d}"
        path.write_bytes(data)
        out.append(PayloadFile(name, path))
    return out


def new_staging(base: Path) -> Path:
    path = base / "staging"
    path.mkdir(mode=0o700)
    return path


def staging_entries(staging: Path) -> list[str]:
    return sorted(os.listdir(staging))


def verify(
    target: Path | Sequence[Path],
    trust: TrustKit,
    staging: Path,
    *,
    state: VerifierState | None = None,
    expect: Expectation | None = None,
    now: int = NOW,
    **kwargs: Any,
) -> VerifiedBundle:
    common: dict[str, Any] = {
        "trusted_root": kwargs.pop("trusted_root", None) or trust.trusted,
        "state": state or VerifierState(),
        "expect": expect or ExpectRelease(AGENT),
        "staging_dir": staging,
        "clock": lambda: now,
        **kwargs,
    }
    if isinstance(target, Path):
        return verify_path(target, **common)
    return verify_parts(list(target), **common)


def craft_bundle(
    path: Path,
    trust: TrustKit,
    payloads: Sequence[tuple[str, bytes, bytes]],
    *,
    manifest: Manifest | None = None,
    keys: Sequence[SigningKey] | None = None,
    roots: Sequence[bytes] = (),
) -> Manifest:
    """Write a signed bundle whose members hold exactly the given compressed bytes.

    ``payloads`` are (logical name, content, compressed bytes); the manifest signs their real
    sizes and digests, so only the zstd rules of the verifier can object.
    """
    entries = tuple(
        FileEntry(payload_member(i), name, len(content), hashlib.sha256(content).hexdigest(),
                  len(comp), hashlib.sha256(comp).hexdigest())
        for i, (name, content, comp) in enumerate(payloads, start=1)
    )
    m = dataclasses.replace(manifest or release_draft(trust), files=entries)
    envelope = sign_envelope(m.payload_type, m.to_bytes(), keys or [trust.release_key])
    data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, encode_roots(roots))
            + encode_member(ENVELOPE_NAME, envelope))
    for i, (_, _, comp) in enumerate(payloads, start=1):
        data += encode_member(payload_member(i), comp)
    path.write_bytes(data + END_OF_ARCHIVE)
    return m


def rotate_root(
    trust: TrustKit,
    *,
    version: int = 2,
    release_key: SigningKey | None = None,
    new_root_key: SigningKey | None = None,
    old_root_key: SigningKey | None = None,
    expires: int = NOW + 365 * 86400,
) -> tuple[bytes, SigningKey, SigningKey]:
    """A root document of ``version`` signed by the old and new root keys.

    Returns (envelope, new root key, release key of the new root).
    """
    new_root = new_root_key or SigningKey.generate()
    release = release_key or SigningKey.generate()
    keys = {k.key_id: KeyEntry(k.public) for k in (new_root, release, trust.audit_key)}
    doc = RootDocument(
        hub_id=trust.hub_id, version=version, issued=NOW - 3600, expires=expires, keys=keys,
        roles={"root": ((new_root.key_id,), 1), "release": ((release.key_id,), 1),
               "audit": ((trust.audit_key.key_id,), 1)},
    )
    return sign_root(doc, [old_root_key or trust.root_key, new_root]), new_root, release


def device_flipping_byte(monkeypatch: pytest.MonkeyPatch, at: Callable[[int], int | None],
                         reads: list[tuple[int, int]] | None = None) -> None:
    """Make the writer's re-reads see a device that returns the byte at ``at(file size)``
    (None: none) with one bit changed: both the direct reads of large bundles
    (``bundle.direct_io.pread_into``) and the buffered ones of small bundles (``os.pread``).
    With ``reads``, record every direct read as (offset, bytes read)."""
    import bundle.direct_io
    import bundle.writer

    real_pread = os.pread
    real_into = bundle.direct_io.pread_into

    def pread(fd: int, count: int, offset: int) -> bytes:
        data = bytearray(real_pread(fd, count, offset))
        bad = at(os.fstat(fd).st_size)
        if bad is not None and 0 <= bad - offset < len(data):
            data[bad - offset] ^= 0x40
        return bytes(data)

    def pread_into(fd: int, view: memoryview, offset: int) -> int:
        n = real_into(fd, view, offset)
        if reads is not None:
            reads.append((offset, n))
        bad = at(os.fstat(fd).st_size)
        if bad is not None and 0 <= bad - offset < n:
            view[bad - offset] ^= 0x40
        return n

    monkeypatch.setattr(bundle.writer.os, "pread", pread)
    monkeypatch.setattr(bundle.direct_io, "pread_into", pread_into)
