"""Reading a bundle without trust: ``inspect`` and the writer's read-back check.

* :func:`inspect` / :func:`inspect_stream` return what a bundle (or the first part of a split
  bundle) *claims* — payload type, claimed signers, manifest — WITHOUT verifying anything, for
  ``bundle inspect`` and for the inbox to learn how many parts to wait for
  (:func:`read_manifest_unverified`). Nothing returned here may be acted on.
* :func:`verify_written` re-reads a bundle the writer has just produced and checks it against
  what was signed (docs/bundle-format.md §12.3): export verifies what it wrote.

Neither function stages, decompresses or trusts anything; the verifier is ``bundle.reader``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bundle.container import ByteSource, ContainerReader, read_head
from bundle.errors import BundleFormatError, DigestMismatchError, ManifestError, PartsError
from bundle.limits import DEFAULT_LIMITS, Limits
from bundle.manifest import Manifest, peek_manifest
from bundle.parts import PartsSource, assign_parts, strip_part_suffix
from bundle.printable import printable
from signing.envelope import parse_envelope
from signing.errors import SignatureError, StrictJSONError
from signing.fileio import open_regular
from signing.strictjson import loads_strict

if TYPE_CHECKING:
    from bundle.writer import WrittenBundle

__all__ = [
    "InspectedBundle",
    "inspect",
    "inspect_stream",
    "read_manifest_unverified",
    "verify_written",
]

_BUF = 1024 * 1024  # bytes

#: ``progress(phase, done, total)``; :func:`verify_written` reports phase ``"verify"``.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class InspectedBundle:
    """What a bundle *claims*, read without any verification. Display only; never act on it."""

    verified: Literal[False]
    label: str
    payload_type: str
    claimed_signer_key_ids: tuple[str, ...]
    envelope_sha256: str
    roots_count: int  # -1 when roots.json is not a strict JSON list
    manifest: Manifest | None
    problem: str | None  # why the manifest could not be read, if it could not


def inspect_stream(source: ByteSource, label: str,
                   limits: Limits = DEFAULT_LIMITS) -> InspectedBundle:
    """Read what a bundle claims WITHOUT verifying anything (for ``bundle inspect``).

    Raises:
        BundleFormatError, LimitExceededError, TruncatedError: the head cannot be read.
    """
    reader = ContainerReader(source, label)
    head = read_head(reader, max_roots_bytes=limits.max_roots_bytes,
                     max_envelope_bytes=limits.max_envelope_bytes)
    try:
        roots = loads_strict(head.roots, limits.max_roots_bytes)
        roots_count = len(roots) if isinstance(roots, list) else -1
    except StrictJSONError:
        roots_count = -1
    try:
        env = parse_envelope(head.envelope, limits.max_envelope_bytes)
    except SignatureError as exc:
        return InspectedBundle(False, label, "", (), hashlib.sha256(head.envelope).hexdigest(),
                               roots_count, None, f"envelope is malformed: {exc}")
    manifest: Manifest | None = None
    problem: str | None = None
    try:
        manifest = peek_manifest(head.envelope, limits.max_envelope_bytes)
    except ManifestError as exc:
        problem = f"manifest {exc}"
    return InspectedBundle(
        verified=False,
        label=label,
        payload_type=env.payload_type,
        claimed_signer_key_ids=tuple(s.keyid for s in env.signatures),
        envelope_sha256=hashlib.sha256(head.envelope).hexdigest(),
        roots_count=roots_count,
        manifest=manifest,
        problem=problem,
    )


def inspect(path: Path, limits: Limits = DEFAULT_LIMITS) -> InspectedBundle:
    """:func:`inspect_stream` on a bundle file or on the first part of a split bundle (its
    label the file name, escaped: :func:`bundle.printable.printable`)."""
    path = Path(path)
    label = printable(strip_part_suffix(path.name))
    fd, _ = open_regular(path, lambda: BundleFormatError(f"bundle {label} is not a regular file"))
    with open(fd, "rb", buffering=0) as fh:
        return inspect_stream(fh, label, limits)


def verify_written(written: WrittenBundle, *, progress: ProgressFn | None = None) -> None:
    """Re-read a bundle the writer just produced and check it against what was signed.

    ``written`` is a :class:`bundle.writer.WrittenBundle`. Checks the head bytes, every
    header, every payload's compressed length and SHA-256, every part digest and the end
    marker. It does not decompress (the writer produced the frames itself).

    Raises:
        BundleFormatError, TruncatedError, DigestMismatchError, PartsError: the files on
            the device differ from what was written.
    """
    m = written.manifest
    first = written.paths[0]
    label = strip_part_suffix(first.name)
    limits = Limits(max_envelope_bytes=len(written.envelope), max_roots_bytes=2**62)
    total = written.size
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("verify", done, total)

    fd = os.open(first, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with open(fd, "rb", buffering=0) as fh:
        reader = ContainerReader(fh, label)
        reader.expected_total = total
        head = read_head(reader, max_roots_bytes=limits.max_roots_bytes,
                         max_envelope_bytes=limits.max_envelope_bytes)
        if head.envelope != written.envelope:
            raise BundleFormatError(f"bundle {label}: the envelope read back differs from the "
                                    "one written")
        tick(head.size)
        source: PartsSource | None = None
        if len(written.paths) > 1:
            if fh.read(1):
                raise PartsError(f"bundle {label}: the first part is longer than written")
            assert m.parts is not None
            parts = assign_parts(first, [*written.paths[1:], first], m.parts)
            if [p.path for p in parts] != list(written.paths[1:]):
                raise PartsError(f"bundle {label}: the parts read back are not those written")
            source = PartsSource(parts, m.parts.count + 1)
            reader.source = source
        try:
            for entry in m.files:
                size = reader.expect_member(entry.member)
                if size != entry.compressed_size:
                    raise DigestMismatchError(f"bundle {label}: {entry.member} is {size} bytes "
                                              f"on the device, {entry.compressed_size} written")
                sha = hashlib.sha256()
                for chunk in reader.iter_data(size, entry.member, _BUF):
                    sha.update(chunk)
                    tick(len(chunk))
                reader.skip_padding(size, entry.member)
                if sha.hexdigest() != entry.compressed_sha256:
                    raise DigestMismatchError(f"bundle {label}: {entry.member} "
                                              f"({entry.name!r}) reads back differently from "
                                              "what was written")
            reader.expect_end()
            tick(total - done)
        finally:
            if source is not None:
                source.close()


def read_manifest_unverified(path: Path, limits: Limits = DEFAULT_LIMITS) -> Mapping[str, Any]:
    """The manifest of a bundle or of its first part as strict JSON, WITHOUT verification.

    For the inbox, to learn ``manifest["parts"]["count"]`` before the other parts arrive.

    Raises:
        BundleFormatError, LimitExceededError, TruncatedError: the head cannot be read.
        ManifestError: the envelope or the manifest is malformed.
    """
    result = inspect(path, limits)
    if result.manifest is None:
        raise ManifestError(f"bundle {result.label}: {result.problem}")
    return result.manifest.to_json()
