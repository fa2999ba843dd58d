"""Unpack an uploaded release archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``) safely.

Implements docs/release-format.md §6. The hub and the web UI receive releases as archives from
people's machines; this module turns one into a release directory without trusting it:

* no ``extractall``: members are read one by one and written by this code, with paths it
  builds itself under a fresh private directory (``O_CREAT | O_EXCL | O_NOFOLLOW``);
* only regular files and directories: links (symbolic or hard), devices, fifos, sparse and
  other special members are refused, naming the member;
* every member name follows the release file name rules (:mod:`bundle.release_names`): no
  absolute paths, no ``..``, no control characters, no backslashes, no two names that differ
  only in case or Unicode normalisation;
* caps on the archive size, the member count, each file's size, the total size and the
  total size per archive byte (:class:`ArchiveLimits`, ``max_ratio``) are checked against
  each member's *declared* size before a byte of it is written, so a decompression bomb
  stops at its first header; the bytes actually written are counted too and never exceed
  what was declared (a member holding more data than its header says is refused);
* hidden members (a name component starting with ``.``) and macOS's ``__MACOSX/`` folder are
  checked but not written: they are never part of a release;
* a single top-level directory around everything (``billing-2.4.0/release.toml``, as ``tar
  czf billing-2.4.0.tgz billing-2.4.0`` makes) is stripped.

The kind of archive is recognised by its first bytes, not by its file name. Tar headers are
parsed here (ustar, pax and GNU long names) rather than by :mod:`tarfile`, whose readers
allocate pax and GNU long-name records of any declared size.

On any error nothing is left behind: the partly written tree is removed and ``dest`` is not
created. This module does not read ``release.toml``; :func:`bundle.release.load_release_archive`
unpacks with it and then loads the directory.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from bundle.errors import LimitExceededError, ReleaseFormatError
from bundle.release_names import NameSet, file_name_problem, is_hidden

__all__ = ["DEFAULT_ARCHIVE_LIMITS", "ArchiveLimits", "unpack_release_archive"]

COPY_BUFFER = 1024 * 1024  # bytes
_BLOCK = 512  # bytes, one tar block


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps for one uploaded release archive."""

    #: Size of the archive file itself (compressed), in bytes.
    max_archive_bytes: int = 16 * 1024**3  # bytes
    #: Members of the archive, directories and hidden members included.
    max_members: int = 10_000  # members
    #: Unpacked size of one file, in bytes.
    max_file_bytes: int = 8 * 1024**3  # bytes
    #: Unpacked size of all files together, in bytes.
    max_total_bytes: int = 16 * 1024**3  # bytes
    #: One member name, the wrapper directory included, in UTF-8 bytes.
    max_name_bytes: int = 1024  # bytes
    #: One pax extended header or GNU long-name record, in bytes.
    max_tar_extra_bytes: int = 64 * 1024  # bytes
    #: Unpacked bytes per byte of the archive file, at most (beyond ``ratio_free_bytes``):
    #: text compresses 3-10 times, a zip bomb a thousand.
    max_ratio: int = 100  # unpacked bytes per archive byte
    #: Unpacked bytes always allowed whatever the ratio (tiny archives of a few files).
    ratio_free_bytes: int = 1024**2  # bytes

    def unpacked_budget(self, archive_bytes: int) -> int:
        """The most bytes an archive of ``archive_bytes`` may unpack to."""
        by_ratio = max(self.ratio_free_bytes, self.max_ratio * archive_bytes)
        return min(self.max_total_bytes, by_ratio)


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class _Member:
    name: str  # as in the archive, before any check
    kind: str  # "file", "dir", or a description of a refused type ("symbolic link", ...)
    size: int


class _Unpacker:
    """Writes checked members under ``root`` and keeps the counts the limits apply to."""

    def __init__(self, archive: Path, root: Path, limits: ArchiveLimits,
                 archive_bytes: int) -> None:
        self.archive = archive
        self.root = root
        self.limits = limits
        self.names = NameSet()
        self.members = 0
        self.extended_headers = 0
        self.total = 0  # declared bytes of the files admitted so far
        self.written = 0  # bytes actually written
        self.archive_bytes = archive_bytes
        self.budget = limits.unpacked_budget(archive_bytes)

    def fail(self, member: str | None, message: str) -> ReleaseFormatError:
        where = f"{self.archive}" + (f": member {member!r}" if member is not None else "")
        text = f"{where}: {message}"
        return ReleaseFormatError(text.encode("utf-8", "backslashreplace").decode("utf-8"))

    def limit(self, message: str) -> LimitExceededError:
        return LimitExceededError(f"{self.archive}: {message}")

    def admit(self, member: _Member) -> str | None:
        """Check a member before its data is read; return its name, or None to skip it."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.limit(f"more than {self.limits.max_members} members (limit max_members)")
        if member.kind not in ("file", "dir"):
            raise self.fail(
                member.name,
                f"is a {member.kind}; a release archive holds only regular files and directories",
            )
        name = member.name.removesuffix("/") if member.kind == "dir" else member.name
        while name.startswith("./"):  # "tar -C dir ." writes ./name
            name = name[2:]
        if name in ("", "."):
            return None
        problem = file_name_problem(name, self.limits.max_name_bytes)
        if problem is not None:
            raise self.fail(member.name, f"name {problem}")
        collision = self.names.add(name, is_dir=member.kind == "dir")
        if collision is not None:
            raise self.fail(member.name, collision)
        if member.kind == "file":
            if member.size > self.limits.max_file_bytes:
                raise self.limit(
                    f"member {name!r} is {member.size} bytes; the limit is "
                    f"{self.limits.max_file_bytes} bytes (max_file_bytes)"
                )
            if self.total + member.size > self.limits.max_total_bytes:
                raise self.limit(
                    f"unpacked files exceed {self.limits.max_total_bytes} bytes at member "
                    f"{name!r} (limit max_total_bytes)"
                )
            if self.total + member.size > self.budget:
                raise self.limit(
                    f"unpacked files exceed {self.budget} bytes at member {name!r}: at most "
                    f"{self.limits.max_ratio} times the archive's {self.archive_bytes} bytes "
                    f"(limit max_ratio)"
                )
            self.total += member.size
        if is_hidden(name) or name.split("/", 1)[0] == "__MACOSX":
            return None  # never part of a release; __MACOSX/ is what macOS zips add
        return name

    def make_dir(self, name: str) -> Path:
        path = self.root
        for part in name.split("/"):
            path = path / part
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise self.fail(name, "is both a file and a directory") from None
        return path

    def write_file(self, name: str, size: int, data: _Readable) -> None:
        """Copy exactly ``size`` bytes from ``data`` into the new file ``name``."""
        parent, _, leaf = name.rpartition("/")
        directory = self.make_dir(parent) if parent else self.root
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(directory / leaf, flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            left = size
            while left:
                chunk = data.read(min(COPY_BUFFER, left))
                if not chunk:
                    raise self.fail(name, f"is truncated: {size - left} of {size} bytes present")
                if len(chunk) > left or self.written + len(chunk) > self.total:
                    raise self.fail(name, f"holds more data than its declared {size} bytes")
                out.write(chunk)
                left -= len(chunk)
                self.written += len(chunk)
            if data.read(1):
                raise self.fail(name, f"holds more data than its declared {size} bytes")


def unpack_release_archive(
    archive: Path, dest: Path, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
) -> None:
    """Unpack ``archive`` into ``dest`` (which must not exist, or be an empty directory).

    Raises:
        ReleaseFormatError: not a tar, tar.gz or zip archive; a member is a link, device or
            other special file; a bad, absolute, ``..`` or colliding name; corrupt or truncated
            data. The message names the archive and the member.
        LimitExceededError: a cap of ``limits`` is exceeded (the message names the limit).
        FileExistsError: ``dest`` exists and is not an empty directory.
        OSError: the archive cannot be read or ``dest`` cannot be written.
    """
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise FileExistsError(f"{dest}: must be a new or empty directory to unpack into")
    size = os.stat(archive).st_size
    if size > limits.max_archive_bytes:
        raise LimitExceededError(
            f"{archive}: archive is {size} bytes; the limit is {limits.max_archive_bytes} "
            "bytes (max_archive_bytes)"
        )
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpacking-", dir=dest.parent))
    try:
        tree = work / "tree"
        os.mkdir(tree, 0o755)
        unpacker = _Unpacker(archive, tree, limits, size)
        with open(archive, "rb") as fh:
            magic = fh.read(_BLOCK * 2)
            fh.seek(0)
            if magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                _unpack_zip(fh, unpacker)
            elif magic.startswith(b"\x1f\x8b"):
                _unpack_gzip_tar(fh, unpacker)
            elif magic[257:262] == b"ustar" or magic[:_BLOCK] == bytes(_BLOCK):
                _unpack_tar(fh, unpacker)
            else:
                raise ReleaseFormatError(
                    f"{archive}: not a release archive (expected .tar, .tar.gz, .tgz or .zip)"
                )
        top = _release_root(tree)
        if dest.exists():
            os.rmdir(dest)
        os.rename(top, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _release_root(tree: Path) -> Path:
    """``tree``, or the single top-level directory wrapping everything in it."""
    if (tree / "release.toml").exists():
        return tree
    entries = list(tree.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "release.toml").exists():
        return entries[0]
    return tree


# --- zip ---


def _unpack_zip(fh: BinaryIO, unpacker: _Unpacker) -> None:
    archive_size = os.fstat(fh.fileno()).st_size
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            if len(infos) > unpacker.limits.max_members:
                raise unpacker.limit(
                    f"{len(infos)} members; the limit is {unpacker.limits.max_members} "
                    "(max_members)"
                )
            for info in infos:
                name = unpacker.admit(_zip_member(info))
                if name is None:
                    continue
                if info.filename.endswith("/"):
                    unpacker.make_dir(name)
                    continue
                if info.flag_bits & 0x1:
                    raise unpacker.fail(info.filename, "is encrypted")
                end = info.header_offset + info.compress_size
                if info.header_offset < 0 or end > archive_size:
                    # zipfile would seek there: a corrupt directory, not an I/O error
                    raise unpacker.fail(info.filename, "corrupt zip archive: data outside the file")
                with zf.open(info) as data:
                    unpacker.write_file(name, info.file_size, data)
    except (
        zipfile.BadZipFile,
        NotImplementedError,  # compression method zipfile cannot read
        EOFError,
        ValueError,  # includes UnicodeDecodeError of a name flagged as UTF-8
        struct.error,
        zlib.error,
    ) as exc:
        raise unpacker.fail(None, f"corrupt zip archive: {exc}") from exc


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16
    kind = "dir" if info.filename.endswith("/") else "file"
    if info.create_system == 3 and mode:  # Unix: the high bits hold st_mode
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFLNK:
            kind = "symbolic link"
        elif fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "special file (device, fifo or socket)"
    # orig_filename: zipfile cuts ZipInfo.filename at a NUL; the original shows the NUL.
    return _Member(info.orig_filename, kind, info.file_size)


# --- tar ---


class _Stream:
    """Reads exactly what is asked from a (possibly decompressing) stream."""

    def __init__(self, raw: _Readable) -> None:
        self.raw = raw

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        left = n
        while left:
            chunk = self.raw.read(left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


class _Limited:
    """A file-like view of the next ``size`` bytes of a stream."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self.stream = stream
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(n)
        self.left -= len(data)
        return data


def _unpack_gzip_tar(fh: BinaryIO, unpacker: _Unpacker) -> None:
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            _unpack_tar(gz, unpacker)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise unpacker.fail(None, f"corrupt gzip data: {exc}") from exc


def _unpack_tar(raw: _Readable, unpacker: _Unpacker) -> None:
    stream = _Stream(raw)
    for member in _tar_members(stream, unpacker):
        name = unpacker.admit(member)
        data = _Limited(stream, member.size if member.kind == "file" else 0)
        if name is not None and member.kind == "dir":
            unpacker.make_dir(name)
        elif name is not None:
            unpacker.write_file(name, member.size, data)
        else:
            _skip(data, member.name, unpacker)
        _skip(_Limited(stream, -member.size % _BLOCK), member.name, unpacker)


def _skip(data: _Limited, name: str, unpacker: _Unpacker) -> None:
    while data.left:
        if not data.read(COPY_BUFFER):
            raise unpacker.fail(name, "is truncated")


_TAR_KINDS = {
    b"0": "file",
    b"\x00": "file",
    b"5": "dir",
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "fifo",
}


def _tar_members(stream: _Stream, unpacker: _Unpacker) -> Iterator[_Member]:
    """Yield members in order; pax and GNU long-name records are folded into the next one."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = stream.read(_BLOCK)
        if len(header) < _BLOCK:
            raise unpacker.fail(None, "tar archive is truncated (no end-of-archive marker)")
        if header == bytes(_BLOCK):
            return  # end of archive; whatever follows is padding
        _check_header(header, unpacker)
        typeflag = header[156:157]
        size = _tar_number(header[124:136], unpacker)
        if typeflag in (b"x", b"g", b"L"):
            unpacker.extended_headers += 1
            if unpacker.extended_headers > unpacker.limits.max_members:
                raise unpacker.limit(
                    f"more than {unpacker.limits.max_members} tar extended headers "
                    "(limit max_members)"
                )
            if size > unpacker.limits.max_tar_extra_bytes:
                raise unpacker.limit(
                    f"tar extended header of {size} bytes; the limit is "
                    f"{unpacker.limits.max_tar_extra_bytes} (max_tar_extra_bytes)"
                )
            record = stream.read(size + (-size % _BLOCK))[:size]
            if len(record) < size:
                raise unpacker.fail(None, "tar archive is truncated in an extended header")
            if typeflag == b"x":
                pax = _parse_pax(record, unpacker)
            elif typeflag == b"L":
                long_name = _decode(record.rstrip(b"\x00"), unpacker)
            continue  # global pax headers (g) carry nothing a release needs
        name = _header_name(header, unpacker)
        if long_name is not None:
            name = long_name
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            if not pax["size"].isdecimal():
                raise unpacker.fail(name, f"bad pax size {pax['size'][:20]!r}")
            size = int(pax["size"])
        kind = _TAR_KINDS.get(typeflag, f"tar member of unsupported type {typeflag!r}")
        if typeflag == b"\x00" and name.endswith("/"):
            kind = "dir"  # old tar: a directory is a "file" whose name ends with /
        if kind == "dir":
            size = 0  # directories carry no data (some writers put junk in the field)
        yield _Member(name, kind, size)
        pax, long_name = {}, None


def _check_header(header: bytes, unpacker: _Unpacker) -> None:
    stored = _tar_number(header[148:156], unpacker)
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32  # the checksum field counts as eight spaces
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)  # old writers summed signed chars
    if stored not in (unsigned, signed):
        raise unpacker.fail(None, "not a valid tar archive (header checksum mismatch)")


def _tar_number(field: bytes, unpacker: _Unpacker) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        if field[0] & 0x40:
            raise unpacker.fail(None, "negative number in a tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise unpacker.fail(None, "not a valid tar archive (bad number in a header)") from None


def _header_name(header: bytes, unpacker: _Unpacker) -> str:
    name = header[0:100].split(b"\x00", 1)[0]
    if header[257:265] == b"ustar\x0000":  # POSIX ustar: a prefix may hold leading dirs
        prefix = header[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _decode(name, unpacker)


def _decode(raw: bytes, unpacker: _Unpacker) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise unpacker.fail(None, f"member name {raw[:60]!r} is not valid UTF-8") from None


def _parse_pax(record: bytes, unpacker: _Unpacker) -> dict[str, str]:
    """Parse ``"<len> key=value\\n"`` records (POSIX.1-2001)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(record):
        space = record.find(b" ", pos)
        if space == -1 or not record[pos:space].isdigit():
            raise unpacker.fail(None, "malformed pax extended header")
        length = int(record[pos:space])
        entry = record[space + 1 : pos + length]
        if length <= space - pos or pos + length > len(record) or not entry.endswith(b"\n"):
            raise unpacker.fail(None, "malformed pax extended header")
        key, eq, value = entry[:-1].partition(b"=")
        if not eq:
            raise unpacker.fail(None, "malformed pax extended header")
        if key == b"hdrcharset" and value != b"ISO-IR 10646 2000 UTF-8":
            raise unpacker.fail(None, "pax hdrcharset other than UTF-8 is not supported")
        if key in (b"path", b"size"):
            out[key.decode()] = _decode(value, unpacker)
        pos += length
    return out
