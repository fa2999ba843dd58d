"""Load a release: a directory holding ``release.toml`` and the files its steps use.

Implements docs/release-format.md. A release is the input of the hub's export: its normalized
steps and file digests go into the signed manifest, and its content hash (§5) identifies it
from submission onwards — any change in any file or step gives a different hash.

* :func:`parse_release_toml` — sans-I/O: checks the bytes of ``release.toml`` against a known
  set of file names and returns a :class:`ReleaseSpec`.
* :func:`load_release` — the path wrapper: walks the directory (refusing links and special
  files), parses ``release.toml``, hashes every file (streaming, SHA-256) and returns a
  :class:`ReleaseSource`.
* :func:`load_release_archive` — unpacks an uploaded archive safely
  (:mod:`bundle.release_archive`) and loads the result.
* :func:`unreferenced_files` — files no step uses, for a warning.

This module deliberately does not build bundles, check approvals or know about sites: a
release names connections and secrets, the site defines them.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import shutil
import tomllib
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bundle.dag import check_graph
from bundle.errors import ReleaseFormatError
from bundle.printable import printable
from bundle.release_archive import DEFAULT_ARCHIVE_LIMITS, ArchiveLimits, unpack_release_archive
from bundle.release_names import NameSet, file_name_problem
from bundle.steps import normalize_step, referenced_files
from signing.errors import StrictJSONError
from signing.fileio import open_regular
from signing.strictjson import dumps_canonical

if TYPE_CHECKING:
    from bundle.manifest import Manifest

__all__ = [
    "FORMAT_VERSION",
    "MAX_RELEASE_FILES",
    "MAX_RELEASE_TOML_BYTES",
    "MAX_STEPS",
    "RELEASE_TOML",
    "ArchiveLimits",
    "ReleaseFile",
    "ReleaseSource",
    "ReleaseSpec",
    "compute_content_hash",
    "content_hash_of_manifest",
    "load_release",
    "load_release_archive",
    "parse_release_toml",
    "scan_release",
    "unreferenced_files",
]

FORMAT_VERSION = 1
RELEASE_TOML = "release.toml"
#: Largest release.toml read (in bytes).
MAX_RELEASE_TOML_BYTES = 1024 * 1024  # bytes
#: Most files one release may hold.
MAX_RELEASE_FILES = 2_000  # files (the default max_files of a bundle, bundle/limits.py)
#: Most steps one release may hold.
MAX_STEPS = 1000  # steps
#: Longest release description (in characters).
MAX_DESCRIPTION_CHARS = 4096  # characters
HASH_BUFFER = 1024 * 1024  # bytes
#: Files hashed at once while loading (hashlib releases the GIL; bundle_throughput measured
#: the load of a 1 GiB release at 4.2 s with one thread on 2 cores).
HASH_WORKERS = 4  # threads, capped at the CPU count

_PRODUCT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_PRODUCT_RULE = (
    "lower-case letters a-z, digits and '-', starting with a letter or digit, at most 63 "
    'characters (e.g. "billing")'
)
_VERSION_RULE = (
    "letters, digits and '.', '_', '+', '-', starting with a letter or digit, at most 64 "
    'characters (e.g. "2.4.0" or "2024.06-rc1")'
)
_TOP_KEYS = ("format", "release", "steps")
_RELEASE_KEYS = ("product", "version", "description")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release. ``name`` is its relative POSIX path inside the release dir."""

    name: str
    path: Path
    size: int  # bytes
    sha256: str  # hex


@dataclass(frozen=True)
class ReleaseSpec:
    """What ``release.toml`` says, checked and normalized (docs §2–§3)."""

    product: str
    version: str
    description: str
    steps: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ReleaseSource:
    """A loaded release directory. ``files`` are sorted by name; ``steps`` are normalized
    (docs §3.3); ``content_hash`` is defined in docs §5; ``root`` is the directory."""

    product: str
    version: str
    description: str
    steps: tuple[Mapping[str, Any], ...]
    files: tuple[ReleaseFile, ...]
    content_hash: str
    root: Path


def _fail(source: str, message: str) -> ReleaseFormatError:
    # The path escaped (bundle.printable): one that is not UTF-8 must not make the message
    # unprintable, and one holding a new line must not split it (its name, quoted in the
    # message, says which character is wrong).
    text = f"{printable(source)}: {message}"
    return ReleaseFormatError(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _unknown_key(source: str, where: str, key: str, known: Sequence[str]) -> ReleaseFormatError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return _fail(source, f"{where}{key!r} is not a known field{hint}")


def _toml_error(source: str, exc: tomllib.TOMLDecodeError) -> ReleaseFormatError:
    """'release.toml: line 3, column 9: not valid TOML: Invalid value'."""
    lineno = getattr(exc, "lineno", None)
    colno = getattr(exc, "colno", None)
    message = str(getattr(exc, "msg", None) or exc)
    match = _TOML_POSITION.search(message)
    if match:
        lineno, colno = int(match.group(1)), int(match.group(2))
        message = message[: match.start()]
    message = message.removesuffix(" (at end of document)")
    where = f"line {lineno}, column {colno}: " if lineno is not None else ""
    return _fail(source, f"{where}not valid TOML: {message}")


def parse_release_toml(
    data: bytes, file_names: Collection[str], source: str = RELEASE_TOML
) -> ReleaseSpec:
    """Check the bytes of a ``release.toml`` and normalize its steps (docs §2–§3).

    Args:
        data: the file's content (at most :data:`MAX_RELEASE_TOML_BYTES`).
        file_names: names of the release's files; steps may reference only these.
        source: how messages name the file.

    Raises:
        ReleaseFormatError: naming ``source``, the field and the rule broken.
    """
    if len(data) > MAX_RELEASE_TOML_BYTES:
        raise _fail(source, f"is {len(data)} bytes; the limit is {MAX_RELEASE_TOML_BYTES}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _fail(source, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(source, exc) from exc

    for key in doc:
        if key not in _TOP_KEYS:
            if key == "step":
                raise _fail(source, "[[step]] is not a known table; did you mean [[steps]]?")
            raise _unknown_key(source, "top level: ", key, _TOP_KEYS)
    _check_format(doc, source)
    product, version, description = _release_table(doc, source)
    steps = _steps(doc, file_names, source)
    return ReleaseSpec(product, version, description, steps)


def _check_format(doc: Mapping[str, Any], source: str) -> None:
    if "format" not in doc:
        raise _fail(source, f"format is missing; start the file with: format = {FORMAT_VERSION}")
    value = doc["format"]
    if value != FORMAT_VERSION or type(value) is not int:
        raise _fail(
            source,
            f"format = {value!r} is not supported; this version of Tiangong reads format "
            f"{FORMAT_VERSION}",
        )


def _release_table(doc: Mapping[str, Any], source: str) -> tuple[str, str, str]:
    table = doc.get("release")
    if table is None:
        raise _fail(source, "the [release] table is missing (product and version go there)")
    if not isinstance(table, dict):
        raise _fail(source, "release must be a table: write [release] on a line of its own")
    for key in table:
        if key not in _RELEASE_KEYS:
            raise _unknown_key(source, "[release] ", key, _RELEASE_KEYS)
    out: list[str] = []
    for key, regex, rule in (
        ("product", _PRODUCT_RE, _PRODUCT_RULE),
        ("version", _VERSION_RE, _VERSION_RULE),
    ):
        if key not in table:
            raise _fail(source, f"[release] {key} is missing")
        value = table[key]
        if not isinstance(value, str):
            raise _fail(source, f"[release] {key} must be a string in quotes, not {value!r}")
        if regex.fullmatch(value) is None:
            raise _fail(source, f"[release] {key} = {value[:80]!r} is not valid: {rule}")
        out.append(value)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise _fail(source, "[release] description must be a string")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise _fail(
            source,
            f"[release] description is {len(description)} characters; the limit is "
            f"{MAX_DESCRIPTION_CHARS}",
        )
    bad = [ch for ch in description if not (ch.isprintable() or ch in "\n\t")]
    if bad:
        raise _fail(
            source,
            f"[release] description contains the non-printable character U+{ord(bad[0]):04X}",
        )
    return out[0], out[1], description


def _steps(
    doc: Mapping[str, Any], file_names: Collection[str], source: str
) -> tuple[dict[str, Any], ...]:
    raw_steps = doc.get("steps")
    if raw_steps is None or raw_steps == []:
        raise _fail(source, "no steps: add at least one [[steps]] table")
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise _fail(source, "steps must be an array of tables: begin each step with [[steps]]")
    if len(raw_steps) > MAX_STEPS:
        raise _fail(source, f"{len(raw_steps)} steps; the limit is {MAX_STEPS}")
    steps: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        try:
            step = normalize_step(raw, index, file_names)
        except ReleaseFormatError as exc:
            raise _fail(source, str(exc)) from exc
        key = step["name"].casefold()
        if key in seen:
            first = seen[key]
            raise _fail(
                source,
                f"step {index + 1} ({step['name']!r}), field name: repeats the name of step "
                f"{first + 1} ({steps[first]['name']!r}); step names must be unique "
                "(letter case is ignored)",
            )
        seen[key] = index
        steps.append(step)
    try:
        check_graph(steps)
    except ReleaseFormatError as exc:
        raise _fail(source, str(exc)) from exc
    return tuple(steps)


def compute_content_hash(spec: ReleaseSpec, files: Sequence[ReleaseFile]) -> str:
    """SHA-256 (hex) of the canonical JSON of the release's content (docs §5).

    Raises:
        ReleaseFormatError: a value cannot be written as canonical JSON.
    """
    return _content_hash(spec.product, spec.version, spec.description, spec.steps,
                         [(f.name, f.size, f.sha256) for f in files])


def content_hash_of_manifest(manifest: Manifest) -> str:
    """The content hash (docs §5) recomputed from a release bundle's manifest: its release
    product, version and description, its steps and its files' names, sizes and SHA-256.

    The agent uses it on a *verified* manifest to match approvals, never the hash the
    manifest states.

    Raises:
        ReleaseFormatError: not a release manifest, or a value cannot be hashed.
    """
    if manifest.release is None:
        raise ReleaseFormatError(f"bundle {manifest.bundle_id} is not a release bundle")
    r = manifest.release
    return _content_hash(r.product, r.version, r.description, manifest.steps,
                         [(f.name, f.size, f.sha256) for f in manifest.files])


def _content_hash(product: str, version: str, description: str,
                  steps: Sequence[Mapping[str, Any]],
                  files: Sequence[tuple[str, int, str]]) -> str:
    doc = {
        "format": FORMAT_VERSION,
        "product": product,
        "version": version,
        "description": description,
        "steps": [dict(step) for step in steps],
        "files": [
            {"name": name, "size": size, "sha256": sha256}
            for name, size, sha256 in sorted(files)
        ],
    }
    try:
        return hashlib.sha256(dumps_canonical(doc)).hexdigest()
    except StrictJSONError as exc:
        raise ReleaseFormatError(f"release content cannot be hashed: {exc}") from exc


def _read_tree(path: Path) -> tuple[Path, ReleaseSpec, list[tuple[str, Path]]]:
    """The release directory's absolute path, its checked ``release.toml`` and its files
    (name, path), before any file's content is read."""
    root = Path(os.path.abspath(path))
    if not root.is_dir():
        raise _fail(str(root), "is not a release directory")
    toml_path = root / RELEASE_TOML
    data = _read_release_toml(toml_path)
    found = _walk(root)
    spec = parse_release_toml(data, {name for name, _ in found}, str(toml_path))
    return root, spec, found


def load_release(path: Path) -> ReleaseSource:
    """Load and check the release directory ``path`` (docs §1–§5).

    Checks ``release.toml`` before reading any other file's content, so a typo is reported
    without hashing gigabytes first.

    Raises:
        ReleaseFormatError: naming the file (or ``release.toml`` and the field) and the rule.
        OSError: a file cannot be read.
    """
    root, spec, found = _read_tree(path)
    files = _hash_files(found)
    return ReleaseSource(
        product=spec.product,
        version=spec.version,
        description=spec.description,
        steps=spec.steps,
        files=files,
        content_hash=compute_content_hash(spec, files),
        root=root,
    )


def scan_release(path: Path) -> ReleaseSource:
    """:func:`load_release` without reading the files' content: every check of
    ``release.toml`` and of the tree, each file's size, but ``sha256`` and ``content_hash``
    left empty (``""``). For ``bundle create``, whose writer hashes each file while it
    compresses it (one pass, docs/bundle-format.md §12.1) and fills in the content hash
    from the manifest it signs (:func:`content_hash_of_manifest`).

    Raises:
        ReleaseFormatError: as :func:`load_release`; also a file that is not a regular file.
        OSError: a file cannot be read.
    """
    root, spec, found = _read_tree(path)
    files = []
    for name, file_path in found:
        fd = _open_regular(file_path, "a release holds only regular files")
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        files.append(ReleaseFile(name=name, path=file_path, size=size, sha256=""))
    return ReleaseSource(
        product=spec.product,
        version=spec.version,
        description=spec.description,
        steps=spec.steps,
        files=tuple(files),
        content_hash="",
        root=root,
    )


def load_release_archive(
    archive: Path, dest: Path, *, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
) -> ReleaseSource:
    """Unpack a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` release archive into the new
    directory ``dest`` and load it (docs §6). A single top-level directory is stripped.

    If the archive is refused, ``dest`` is not created. If the unpacked release is invalid,
    ``dest`` is removed again.

    Raises:
        ReleaseFormatError: a bad archive member, or an invalid release (see
            :func:`load_release`); the message names the archive or file and the rule.
        LimitExceededError: a cap of ``limits`` is exceeded.
        FileExistsError: ``dest`` exists and is not an empty directory.
        OSError: the archive cannot be read or ``dest`` cannot be written.
    """
    unpack_release_archive(Path(archive), Path(dest), limits)
    try:
        return load_release(Path(dest))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def unreferenced_files(src: ReleaseSource) -> list[str]:
    """Names of the release's files that no step references (a warning, not an error)."""
    used = {name for step in src.steps for name in referenced_files(step)}
    return [f.name for f in src.files if f.name not in used]


# --- I/O helpers ---


def _open_regular(path: Path, what: str) -> int:
    """Open ``path`` read-only without following a symlink; refuse anything not regular."""
    try:
        return open_regular(path, lambda: _fail(str(path), f"is not a regular file; {what}"))[0]
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _fail(str(path), f"is a symbolic link; {what}") from exc
        raise


def _read_release_toml(path: Path) -> bytes:
    try:
        fd = _open_regular(path, "release.toml must be a regular file")
    except FileNotFoundError:
        raise _fail(
            str(path.parent), "no release.toml in this directory; is it a release directory?"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RELEASE_TOML_BYTES + 1)
    if len(data) > MAX_RELEASE_TOML_BYTES:
        raise _fail(str(path), f"is larger than {MAX_RELEASE_TOML_BYTES} bytes")
    return data


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every release file under ``root`` as ``(name, path)``, sorted by name (docs §4)."""
    names = NameSet()
    found: list[tuple[str, Path]] = []
    pending: list[tuple[str, Path]] = [("", root)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden: never part of a release
            if not prefix and entry.name == RELEASE_TOML:
                continue
            name = prefix + entry.name
            problem = file_name_problem(name)
            if problem is not None:
                raise _fail(entry.path, f"file name {name!r} {problem}")
            if entry.is_symlink():
                raise _fail(
                    entry.path,
                    "is a symbolic link; a release holds only regular files (copy the target "
                    "into the release instead)",
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append((name + "/", Path(entry.path)))
                continue
            if not entry.is_file(follow_symlinks=False):
                raise _fail(
                    entry.path,
                    "is a device, fifo or socket; a release holds only regular files",
                )
            collision = names.add(name)
            if collision is not None:
                raise _fail(entry.path, f"file name {name!r} {collision}")
            found.append((name, Path(entry.path)))
            if len(found) > MAX_RELEASE_FILES:
                raise _fail(str(root), f"holds more than {MAX_RELEASE_FILES} files")
    return sorted(found)


def _hash_files(found: Sequence[tuple[str, Path]]) -> tuple[ReleaseFile, ...]:
    """Hash every file, several at once, and return them in ``found``'s order.

    Reading several files at once keeps the disk queue and every core busy; the result and
    the error raised (that of the first failing file in order) do not depend on scheduling.
    """
    workers = min(HASH_WORKERS, os.cpu_count() or 1, len(found))
    if workers <= 1:
        return tuple(_hash_file(name, file_path) for name, file_path in found)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_hash_file, name, file_path) for name, file_path in found]
        try:
            return tuple(fut.result() for fut in futures)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _hash_file(name: str, path: Path) -> ReleaseFile:
    fd = _open_regular(path, "a release holds only regular files")
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
            size += n
    return ReleaseFile(name=name, path=path, size=size, sha256=digest.hexdigest())
