"""A release's payload section framed once, and the bundle of each target written from it
(docs/bundle-format.md §12.4).

An export to many agents writes one bundle per agent, and those bundles differ only in
their head (§2.1): the signed manifest names the target, sequence, times, chain, policy,
approvals and sealed secrets. What follows the envelope member — every payload member, its
padding, the end marker — is the same bytes for all of them. :func:`prepare_payloads`
compresses the payloads (or takes their frames from the :class:`~bundle.frame_cache.FrameCache`),
checks each frame against its SHA-256 and frames that section once; :func:`write_prepared`
then writes one bundle as its head followed by those bytes, and costs one manifest, one
signature and one file write. The result is byte for byte what
:func:`bundle.writer.write_bundle` writes for the same manifest, keys and roots
(tests/bundle/test_prepared.py compares them), so the agent's checks do not change.

It does not split bundles (§8) nor hold a payload section over
:data:`~bundle.writer.ASSEMBLE_BYTES` in memory: :func:`prepare_payloads` returns None then,
and the caller uses :func:`~bundle.writer.write_bundle`. It does not decide bundle ids,
sequences or times (the caller does), nor read or write anything but the payloads, the frame
cache and the bundle file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundle.container import (
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
)
from bundle.frame_cache import FrameCache
from bundle.limits import DEFAULT_LIMITS, Limits
from bundle.manifest import FileEntry, Manifest
from bundle.parts import strip_part_suffix
from bundle.writer import (
    ASSEMBLE_BYTES,
    DEFAULT_LEVEL,
    PayloadFile,
    ProgressFn,
    WrittenBundle,
    _assemble,
    _check_head_inputs,
    _check_level,
    _check_payloads,
    _compress_all,
    _remove_tree,
    _roots_json,
    _signed,
    _tmp_for,
    _write_assembled,
    sync_placed,
)
from signing.keys import SigningKey

__all__ = ["PreparedPayloads", "prepare_payloads", "write_prepared"]


@dataclass(frozen=True)
class PreparedPayloads:
    """The payload section of a bundle, framed once: the manifest's ``files`` and the bytes
    that follow the envelope member (payload members, padding, end marker, §2.1)."""

    entries: tuple[FileEntry, ...]
    data: bytes


def prepare_payloads(
    files: Sequence[PayloadFile],
    spool_dir: Path,
    *,
    level: int = DEFAULT_LEVEL,
    limits: Limits = DEFAULT_LIMITS,
    frames: FrameCache | None = None,
    progress: ProgressFn | None = None,
) -> PreparedPayloads | None:
    """Compress ``files`` (each frame from ``frames`` when it holds one, kept there when it
    does not) and frame the payload section once; None when that section is over
    :data:`~bundle.writer.ASSEMBLE_BYTES` (write those bundles with
    :func:`~bundle.writer.write_bundle`). Each frame is checked against the SHA-256 taken
    when it was compressed. ``spool_dir``: where a payload compressed here is spooled (a
    directory of its own made and removed inside it).

    Raises:
        LimitExceededError, ManifestError: the payloads break a limit or a name rule.
        ReleaseFormatError: a payload changed since it was loaded.
        DigestMismatchError: a cached frame is not the one compressed.
        OSError: a payload or frame cannot be read, or the spool written.
    """
    _check_level(level, limits)
    payloads = list(files)
    _check_payloads(payloads, limits)  # secrets and roots are each bundle's: write_prepared
    report = progress or (lambda phase, done, total: None)
    spool_root = Path(spool_dir) / f".tiangong-spool-{secrets.token_hex(6)}"
    try:
        entries, sources = _compress_all(payloads, spool_root, level, -1, limits, report,
                                         frames, None)
        data = _assemble("(payload section)", b"", entries, sources)
    finally:
        _remove_tree(spool_root)
    if len(data) > ASSEMBLE_BYTES:
        return None
    return PreparedPayloads(tuple(entries), data)


def write_prepared(
    out: Path,
    manifest: Manifest,
    prepared: PreparedPayloads,
    signing_keys: Sequence[SigningKey],
    *,
    roots: Sequence[bytes] = (),
    limits: Limits = DEFAULT_LIMITS,
    progress: ProgressFn | None = None,
    verify: bool = True,
    durable: bool = True,
) -> WrittenBundle:
    """Write the bundle of ``manifest`` (its ``files`` are ``prepared.entries``, it has no
    ``parts``) to ``out``: the same bytes, temporary name, ``fsync``, read-back and rename
    as :func:`~bundle.writer.write_bundle` gives a single-file bundle assembled in memory,
    and with ``durable=False`` the same pending result for
    :func:`~bundle.writer.make_durable`.

    Raises:
        LimitExceededError: the secrets, roots or signed envelope break a limit.
        BundleFormatError / DigestMismatchError: the re-read found different bytes.
        OSError: the bundle cannot be written.
        ValueError: bad arguments (files other than the prepared ones, parts, issuer).
    """
    if manifest.files != prepared.entries or manifest.parts is not None:
        raise ValueError("the manifest's files must be the prepared entries, without parts")
    if manifest.issuer not in {k.key_id for k in signing_keys}:
        raise ValueError("manifest.issuer must be the key id of one of the signing keys")
    _check_head_inputs(manifest, roots, limits)
    roots_json = _roots_json(roots, limits)
    envelope = _signed(manifest, signing_keys, limits)
    report = progress or (lambda phase, done, total: None)
    head = (_MARKER_MEMBER + encode_member(ROOTS_NAME, roots_json)
            + encode_member(ENVELOPE_NAME, envelope))
    total = len(head) + len(prepared.data)
    envelope_sha256 = hashlib.sha256(envelope).hexdigest()
    out = out if isinstance(out, Path) else Path(out)  # a Path made again is parsed again
    label = strip_part_suffix(out.name)
    fd, tmp = _tmp_for(out)
    try:
        file_sha256 = _write_assembled(fd, label, lambda: head + prepared.data,
                                       prepared.entries, report, durable=durable,
                                       verify=verify)
        if not durable:
            return WrittenBundle((out,), manifest, envelope, envelope_sha256, total,
                                 file_sha256=file_sha256, pending=tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_placed((out,))
    return WrittenBundle((out,), manifest, envelope, envelope_sha256, total,
                         file_sha256=file_sha256)


_MARKER_MEMBER = encode_member(MARKER_NAME, MARKER)

