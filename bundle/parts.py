"""Split bundles: cutting, finding, checking and joining parts (docs/bundle-format.md §8).

A split bundle is the same byte stream as an unsplit one, cut in files. ``NAME.part000`` holds
the head (marker, ``roots.json``, ``envelope.json``) and authenticates itself by its signature;
``NAME.part001`` ... hold the data section (payload members and the end marker) cut every
``parts.size`` bytes. The signed manifest lists each data part's size and SHA-256, so parts are
recognised by content, whatever their names and order: a renamed part is still found, a stale
part of an older bundle is told apart by digest, and a missing or damaged part is named so that
only it needs copying again.

* :func:`plan_parts`, :func:`part_path`: the layout (used by the writer).
* :func:`find_first_part`, :func:`assign_parts`, :class:`PartsSource`: used by the verifier
  to stream the data section straight from the parts, checking every part digest (no
  reassembly, no extra disk space).
* :func:`join_parts` / :func:`split_bundle`: file tools. They read the manifest *without*
  verifying its signature (only to order and check parts); verify the result as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bundle.container import (
    MARKER,
    MARKER_NAME,
    ContainerReader,
    encode_member,
    read_head,
)
from bundle.errors import PartsError
from bundle.limits import DEFAULT_LIMITS, GiB, Limits, format_bytes
from bundle.manifest import PartsInfo, peek_manifest
from signing.fileio import open_regular

__all__ = [
    "DEFAULT_SPLIT_SIZE",
    "MAX_PARTS",
    "MIN_SPLIT_SIZE",
    "PartFile",
    "PartsSource",
    "assign_parts",
    "check_split_size",
    "find_first_part",
    "join_parts",
    "part_path",
    "plan_parts",
    "split_bundle",
    "strip_part_suffix",
]

DEFAULT_SPLIT_SIZE = 4 * GiB - 1  # bytes: the largest file FAT32 can hold
MIN_SPLIT_SIZE = 512  # bytes
MAX_PARTS = 999  # data parts (three-digit suffix)
_BUF = 1024 * 1024  # bytes
_FIRST_BYTES = encode_member(MARKER_NAME, MARKER)  # every bundle starts with these bytes
_PART_SUFFIX = re.compile(r"\.part(\d{3})$")


def check_split_size(split_size: int) -> None:
    """Raises ValueError unless ``MIN_SPLIT_SIZE <= split_size <= 2**63-1``."""
    if not isinstance(split_size, int) or not MIN_SPLIT_SIZE <= split_size <= 2**63 - 1:
        raise ValueError(f"split size must be at least {MIN_SPLIT_SIZE} bytes")


def plan_parts(data_bytes: int, split_size: int) -> list[int]:
    """Sizes of the data parts for a data section of ``data_bytes`` (§8.1).

    Raises:
        ValueError: the split size is too small or would need more than 999 parts.
    """
    check_split_size(split_size)
    full, rest = divmod(data_bytes, split_size)
    sizes = [split_size] * full + ([rest] if rest else [])
    if len(sizes) > MAX_PARTS:
        raise ValueError(
            f"a split size of {format_bytes(split_size)} would cut {format_bytes(data_bytes)} "
            f"into {len(sizes)} parts; at most {MAX_PARTS} are allowed"
        )
    return sizes


def part_path(bundle: Path, index: int) -> Path:
    """``billing.tgb`` → ``billing.tgb.part003`` for ``index`` 3 (0 is the head part)."""
    return bundle.with_name(f"{bundle.name}.part{index:03d}")


def strip_part_suffix(name: str) -> str:
    """``billing.tgb.part000`` → ``billing.tgb``; other names are returned unchanged."""
    m = _PART_SUFFIX.search(name)
    return name[: m.start()] if m else name


def _base_of(path: Path) -> str | None:
    m = _PART_SUFFIX.search(path.name)
    return path.name[: m.start()] if m else None


def _open_regular(path: Path) -> int:
    return open_regular(path, lambda: PartsError(f"{path.name} is not a regular file"))[0]


def _sha256_file(path: Path) -> str:
    fd = _open_regular(path)
    sha = hashlib.sha256()
    with open(fd, "rb", buffering=0) as fh:
        while chunk := fh.read(_BUF):
            sha.update(chunk)
    return sha.hexdigest()


def find_first_part(paths: Sequence[Path]) -> Path:
    """The part that starts the bundle (its head), recognised by content, not by name.

    Raises:
        PartsError: none or several of ``paths`` start like a bundle.
    """
    firsts: list[Path] = []
    for path in paths:
        try:
            fd = _open_regular(path)
        except (OSError, PartsError):
            continue
        with open(fd, "rb", buffering=0) as fh:
            if fh.read(len(_FIRST_BYTES)) == _FIRST_BYTES:
                firsts.append(path)
    if not firsts:
        raise PartsError(
            "the first part (NAME.part000, holding the signature) is missing — copy it too"
        )
    if len(firsts) > 1:
        names = ", ".join(sorted(p.name for p in firsts))
        raise PartsError(
            f"several files look like the first part of a bundle ({names}); keep only the "
            "parts of the bundle you want and remove the others"
        )
    return firsts[0]


@dataclass(frozen=True)
class PartFile:
    """A data part matched to its place: 1-based ``index``, expected ``size`` and digest."""

    index: int
    path: Path
    size: int
    sha256: str


def assign_parts(first: Path, candidates: Sequence[Path], info: PartsInfo) -> list[PartFile]:
    """Match ``candidates`` to the data parts the manifest lists (§8.2).

    A candidate named like ``first`` with the right index and size is taken as it is (its
    digest is checked while it streams). Otherwise candidates of the right size are hashed
    and matched by digest, so renamed or reordered parts are found.

    Raises:
        PartsError: a part is missing or has no candidate of the right size and digest;
            the message names every such part and says to re-copy only those.
    """
    total = info.count + 1
    base = _base_of(first)
    sizes: dict[Path, int] = {}
    for path in dict.fromkeys(candidates):
        if path == first:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(path, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                sizes[path] = st.st_size
    by_name: dict[int, Path] = {}
    if base is not None:
        for path in sizes:
            m = _PART_SUFFIX.search(path.name)
            if m and path.name[: m.start()] == base and path.parent == first.parent:
                by_name[int(m.group(1))] = path
    assigned: dict[int, PartFile] = {}
    used: set[Path] = set()
    for d in info.digests:
        named = by_name.get(d.index)
        if named is not None and sizes[named] == d.size:
            assigned[d.index] = PartFile(d.index, named, d.size, d.sha256)
            used.add(named)
    hashes: dict[Path, str] = {}
    for d in info.digests:
        if d.index in assigned:
            continue
        for path, size in sizes.items():
            if path in used or size != d.size:
                continue
            if path not in hashes:
                hashes[path] = _sha256_file(path)
            if hashes[path] == d.sha256:
                assigned[d.index] = PartFile(d.index, path, d.size, d.sha256)
                used.add(path)
                break
    problems: list[str] = []
    damaged: list[Path] = []
    missing: list[int] = []
    for d in info.digests:
        expected = f"{base}.part{d.index:03d}" if base is not None else f"part {d.index:03d}"
        named = by_name.get(d.index)
        if d.index in assigned:
            continue
        if named is None:
            why = "is missing"
            missing.append(d.index)
        elif sizes[named] != d.size:
            why = (f"is {format_bytes(sizes[named])} instead of {format_bytes(d.size)} "
                   "(an incomplete copy, or a part of another bundle)")
            damaged.append(named)
        else:
            why = "is damaged or belongs to another bundle (its SHA-256 differs)"
            damaged.append(named)
        problems.append(f"part {d.index} of {total} ({expected}) {why}")
    if problems:
        # Name every bad part at once: parts taken by name are checked now too.
        for d in info.digests:
            part = assigned.get(d.index)
            if part is None or part.path in hashes:
                continue
            with contextlib.suppress(OSError, PartsError):
                if _sha256_file(part.path) != d.sha256:
                    problems.append(f"part {d.index} of {total} ({part.path.name}) is damaged "
                                    "or belongs to another bundle (its SHA-256 differs)")
                    damaged.append(part.path)
        order = {d.index: i for i, d in enumerate(info.digests)}
        problems.sort(key=lambda text: order.get(int(text.split()[1]), 0))
        raise PartsError(_problem_message(problems), damaged=tuple(damaged),
                         missing=tuple(missing))
    return [assigned[d.index] for d in info.digests]


def _problem_message(problems: list[str]) -> str:
    tail = "re-copy only this part" if len(problems) == 1 else "re-copy only these parts"
    return "; ".join(problems) + f" — {tail}"


class PartsSource:
    """The data section read straight from its parts, in order (a :class:`ByteSource`).

    Each part's SHA-256 is computed while it streams and compared as soon as its last byte
    is read; a part that is shorter than when it was matched, or whose digest differs, raises
    :class:`~bundle.errors.PartsError` naming it (and any later damaged part).
    """

    def __init__(self, parts: Sequence[PartFile], total: int,
                 on_open: Callable[[PartFile], None] | None = None) -> None:
        self._parts = list(parts)
        self._total = total  # parts including the head part, for messages
        self._next = 0
        self._fd: int | None = None
        self._current: PartFile | None = None
        self._left = 0
        self._sha = hashlib.sha256()
        self._on_open = on_open

    def _open_next(self) -> bool:
        if self._next >= len(self._parts):
            return False
        part = self._parts[self._next]
        self._next += 1
        self._fd = _open_regular(part.path)
        self._current = part
        self._left = part.size
        self._sha = hashlib.sha256()
        if self._on_open is not None:
            self._on_open(part)
        return True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, n: int, /) -> bytes:
        if self._current is None or self._left == 0:
            self._close()
            if not self._open_next():
                return b""
        assert self._fd is not None and self._current is not None
        data = os.read(self._fd, min(n, self._left))
        if not data:
            part = self._current
            self.close()
            raise PartsError(
                f"part {part.index} of {self._total} ({part.path.name}) became shorter while "
                "it was read — re-copy only this part", damaged=(part.path,)
            )
        self._sha.update(data)
        self._left -= len(data)
        if self._left == 0:
            self._finish_part()
        return data

    def _finish_part(self) -> None:
        part = self._current
        assert part is not None
        if self._sha.hexdigest() != part.sha256:
            self.close()
            problems = [f"part {part.index} of {self._total} ({part.path.name}) is damaged or "
                        "belongs to another bundle (its SHA-256 differs)"]
            damaged = [part.path]
            for later in self._parts[self._next :]:
                with contextlib.suppress(OSError, PartsError):
                    if _sha256_file(later.path) != later.sha256:
                        problems.append(f"part {later.index} of {self._total} "
                                        f"({later.path.name}) is damaged as well")
                        damaged.append(later.path)
            raise PartsError(_problem_message(problems), damaged=tuple(damaged))

    def check_current_part(self) -> None:
        """Read the current part to its end and check its digest.

        The verifier calls this after a digest or format error inside the data section: if
        the part itself is damaged, that is the better message (re-copy one part).

        Raises:
            PartsError: the current part is damaged.
        """
        if self._current is None or self._left == 0 or self._fd is None:
            return
        while self._left:
            if not self.read(min(_BUF, self._left)):
                return

    def close(self) -> None:
        self._close()
        self._current = None


def _read_parts_head(first: Path, limits: Limits) -> tuple[bytes, PartsInfo]:
    fd = _open_regular(first)
    with open(fd, "rb", buffering=0) as fh:
        reader = ContainerReader(fh, first.name)
        head = read_head(reader, max_roots_bytes=limits.max_roots_bytes,
                         max_envelope_bytes=limits.max_envelope_bytes)
        if fh.read(1):
            raise PartsError(f"{first.name} holds more than the first part of a bundle")
        fh.seek(0)
        data = fh.read(head.size)
    manifest = peek_manifest(head.envelope, limits.max_envelope_bytes)
    if manifest.parts is None:
        raise PartsError(f"{first.name}: the bundle is not split (its manifest lists no parts)")
    return data, manifest.parts


def join_parts(paths: Sequence[Path], out: Path, *, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Join the parts of one bundle (any order, any names) into the single file ``out``.

    The result is byte for byte the unsplit bundle; verify it as usual. Writes to a
    temporary name, ``fsync``\\ s and renames.

    Raises:
        PartsError: the first part is missing or ambiguous, or a part is missing/damaged.
        BundleFormatError, LimitExceededError, ManifestError: the first part is malformed.
    """
    first = find_first_part(paths)
    head, info = _read_parts_head(first, limits)
    parts = assign_parts(first, paths, info)
    source = PartsSource(parts, info.count + 1)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(name)
    try:
        with open(fd, "wb") as fh:
            fh.write(head)
            while chunk := source.read(_BUF):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        source.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return out


def split_bundle(path: Path, out_dir: Path | None = None, *,
                 limits: Limits = DEFAULT_LIMITS) -> list[Path]:
    """Cut a single-file bundle whose manifest lists parts into ``NAME.part000`` ... (§8).

    Each data part is checked against its signed digest as it is written.

    Raises:
        PartsError: the manifest lists no parts, or the file does not match them.
        BundleFormatError, LimitExceededError, ManifestError: the head is malformed.
    """
    target = (out_dir or path.parent) / path.name
    fd = _open_regular(path)
    written: list[Path] = []
    try:
        with open(fd, "rb", buffering=0) as fh:
            reader = ContainerReader(fh, path.name)
            head = read_head(reader, max_roots_bytes=limits.max_roots_bytes,
                             max_envelope_bytes=limits.max_envelope_bytes)
            info = peek_manifest(head.envelope, limits.max_envelope_bytes).parts
            if info is None:
                raise PartsError(f"{path.name}: the manifest lists no parts; it cannot be split "
                                 "without re-signing (export it again with a split size)")
            if os.fstat(fh.fileno()).st_size != head.size + info.data_bytes:
                raise PartsError(f"{path.name} is not as long as its manifest says")
            fh.seek(0)
            head_bytes = fh.read(head.size)
            for d in info.digests:
                dest = part_path(target, d.index)
                sha = hashlib.sha256()
                left = d.size
                wfd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp",
                                             dir=dest.parent)
                tmp = Path(name)
                written.append(tmp)
                with open(wfd, "wb") as out:
                    while left:
                        chunk = fh.read(min(_BUF, left))
                        if not chunk:
                            raise PartsError(f"{path.name} ended early")
                        sha.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if sha.hexdigest() != d.sha256:
                    raise PartsError(f"{path.name}: data part {d.index} does not match its "
                                     "signed digest; the bundle is damaged")
                os.replace(tmp, dest)
                written[-1] = dest
            _write_part(part_path(target, 0), head_bytes, written)  # last, as the writer does
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    return [part_path(target, i) for i in range(info.count + 1)]


def _write_part(dest: Path, data: bytes, written: list[Path]) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(name)
    written.append(tmp)
    with open(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    written[-1] = dest

