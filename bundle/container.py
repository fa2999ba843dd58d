"""The outer container: a minimal, strict tar codec used only as framing (docs/bundle-format.md §2).

A bundle is an *uncompressed* POSIX tar stream whose members have fixed names in a fixed order
(§2.1). Every header has exactly one byte form (§2.2): ustar magic, mode 0644, uid/gid 0,
mtime 0, empty user and group names, typeflag ``0``. Members of 8 GiB or more are preceded by a
pax extended header carrying only a ``size`` record (§2.3). The archive ends with two zero
blocks and nothing after them (§2.4).

:func:`encode_header` writes headers; :class:`ContainerReader` reads a byte source member by
member, checking each header against the name the format expects next and against the one
canonical encoding. It refuses links, devices, FIFOs, directories, GNU extensions, global pax
headers, absolute or ``..`` names and control characters, each with its own message (§2.5).

This module does not know what members mean, never chooses a file system path from a member
name and never extracts anything: callers read member data as bytes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from bundle.errors import BundleFormatError, LimitExceededError, TruncatedError
from bundle.limits import format_bytes

__all__ = [
    "BLOCK",
    "END_OF_ARCHIVE",
    "ENVELOPE_NAME",
    "FORMAT_VERSION",
    "MARKER",
    "MARKER_NAME",
    "OCTAL_SIZE_LIMIT",
    "PAX_NAME",
    "ROOTS_NAME",
    "ByteSource",
    "ContainerReader",
    "Head",
    "encode_header",
    "encode_member",
    "header_len",
    "member_span",
    "padding",
    "payload_member",
    "read_head",
]

BLOCK = 512  # bytes per tar block
END_OF_ARCHIVE = bytes(2 * BLOCK)  # §2.4
FORMAT_VERSION = 1
MARKER_NAME = "tiangong-bundle"
MARKER = b"tiangong-bundle/%d\n" % FORMAT_VERSION  # §2.1, content of the first member
ROOTS_NAME = "roots.json"
ENVELOPE_NAME = "envelope.json"
PAX_NAME = "././@PaxHeader"  # §2.3
OCTAL_SIZE_LIMIT = 8**11  # 8 GiB: the ustar size field holds at most 11 octal digits
MAX_MEMBER_BYTES = 2**63 - 1
_NAME_FIELD = 100
_MAX_PAX_BYTES = BLOCK  # a size record always fits in one block

_TYPE_NAMES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"g": "a global pax header",
    b"L": "a GNU long name",
    b"K": "a GNU long link name",
    b"S": "a GNU sparse file",
    b"V": "a GNU volume label",
    b"M": "a GNU multi-volume continuation",
    b"D": "a GNU directory dump",
}


def payload_member(index: int) -> str:
    """Member name of the ``index``-th payload file (1-based): ``payload/000001.zst`` (§2.1)."""
    if not 1 <= index <= 999_999:
        raise ValueError("payload index must be between 1 and 999999")
    return f"payload/{index:06d}.zst"


def padding(size: int) -> bytes:
    """The zero bytes that follow ``size`` bytes of member data up to a block boundary."""
    return bytes(-size % BLOCK)


def header_len(size: int) -> int:
    """Bytes of header(s) before the data of a member of ``size`` bytes (§2.3)."""
    return BLOCK if size < OCTAL_SIZE_LIMIT else 3 * BLOCK


def member_span(size: int) -> int:
    """Bytes a member of ``size`` data bytes occupies: header(s), data, padding."""
    return header_len(size) + size + (-size % BLOCK)


def _ustar(name: str, size_field: int, typeflag: bytes, mode: bytes = b"0000644\0") -> bytes:
    buf = bytearray(BLOCK)
    raw = name.encode("ascii")
    buf[0 : len(raw)] = raw
    buf[100:108] = mode
    buf[108:116] = b"0000000\0"  # uid
    buf[116:124] = b"0000000\0"  # gid
    buf[124:136] = b"%011o\0" % size_field
    buf[136:148] = b"00000000000\0"  # mtime
    buf[148:156] = b" " * 8  # checksum placeholder
    buf[156:157] = typeflag
    buf[257:263] = b"ustar\0"
    buf[263:265] = b"00"
    # devmajor, devminor, uname, gname, prefix: left empty (NUL), as Python's tarfile does
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _pax_record(size: int) -> bytes:
    body = b" size=%d\n" % size
    length = len(body) + len(str(len(body)))
    if len(str(length)) + len(body) != length:
        length = len(body) + len(str(length))
    return b"%d%s" % (length, body)


_PLAIN_NAME = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def _check_name(name: str) -> None:
    if not name or len(name) >= _NAME_FIELD or not name.isascii():
        raise ValueError(f"member name {name!r} must be 1-99 ASCII characters")
    if not _PLAIN_NAME.fullmatch(name) or name.startswith("/"):
        raise ValueError(f"member name {name!r} is not a plain relative name")
    if ".." in name.split("/"):
        raise ValueError(f"member name {name!r} contains '..'")


@functools.lru_cache(maxsize=4096)  # a release's members are the same for every agent
def encode_header(name: str, size: int) -> bytes:
    """The canonical header bytes of member ``name`` holding ``size`` data bytes (§2.2, §2.3).

    512 bytes; 1536 bytes (pax header, its data block, ustar header) when ``size`` >= 8 GiB.

    Raises:
        ValueError: the name is not a plain ASCII name under 100 characters, or the size is
            negative or above 2**63-1.
    """
    _check_name(name)
    if not 0 <= size <= MAX_MEMBER_BYTES:
        raise ValueError(f"member size {size} is out of range")
    if size < OCTAL_SIZE_LIMIT:
        return _ustar(name, size, b"0")
    record = _pax_record(size)
    # The pax header itself has mode 0, as Python's tarfile writes it (§2.3).
    pax = _ustar(PAX_NAME, len(record), b"x", b"0000000\0")
    return pax + record + padding(len(record)) + _ustar(name, 0, b"0")


def encode_member(name: str, data: bytes) -> bytes:
    """A whole small member: header, data, padding."""
    return encode_header(name, len(data)) + data + padding(len(data))


class ByteSource(Protocol):
    """Anything with ``read(n)``: returns up to ``n`` bytes, ``b""`` only at the end."""

    def read(self, n: int, /) -> bytes: ...


def _show(raw: bytes) -> str:
    """A header name as an operator may safely see it (escaped, shortened)."""
    text = raw[:_NAME_FIELD].decode("ascii", errors="backslashreplace")
    return ascii(text)


def _octal(field: bytes) -> int | None:
    if field[:1] and field[0] & 0x80:
        return None  # base-256 (GNU): not allowed, reported by the caller
    digits = field.rstrip(b"\0 ")
    if not digits or digits.strip(b"01234567"):
        return None
    return int(digits, 8)


class ContainerReader:
    """Reads members of a bundle container in order from a :class:`ByteSource`.

    ``label`` (usually the file name) starts every message. ``offset`` counts the bytes read.
    Once the caller knows the whole length from a verified manifest it sets
    ``expected_total``, and truncation is then reported as "812 MiB of 1.4 GiB present".

    All methods raise :class:`~bundle.errors.BundleFormatError` for a structural problem and
    :class:`~bundle.errors.TruncatedError` when the source ends early.
    """

    def __init__(self, source: ByteSource, label: str) -> None:
        self.source = source
        self.label = label
        self.offset = 0
        self.expected_total: int | None = None

    # -- reading ------------------------------------------------------------------------

    def _truncated(self, present: int, where: str) -> TruncatedError:
        if self.expected_total is not None and present < self.expected_total:
            return TruncatedError(
                f"bundle {self.label} is truncated: {format_bytes(present)} of "
                f"{format_bytes(self.expected_total)} present (it ends inside {where})"
            )
        return TruncatedError(
            f"bundle {self.label} is truncated: it ends after {format_bytes(present)}, "
            f"inside {where}"
        )

    def read_exact(self, n: int, where: str) -> bytes:
        """Exactly ``n`` bytes, or :class:`TruncatedError` naming ``where`` they were expected."""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            chunk = self.source.read(n - got)
            if not chunk:
                raise self._truncated(self.offset + got, where)
            if len(chunk) > n - got:
                raise ValueError("byte source returned more than asked for")
            chunks.append(chunk)
            got += len(chunk)
        self.offset += n
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def iter_data(self, size: int, name: str, chunk_size: int) -> Iterator[bytes]:
        """Yield the ``size`` data bytes of member ``name`` in chunks of ``chunk_size``."""
        remaining = size
        while remaining:
            n = min(chunk_size, remaining)
            yield self.read_exact(n, f"member {name}")
            remaining -= n

    def skip_padding(self, size: int, name: str) -> None:
        """Read the padding after ``size`` data bytes of ``name``; it must be zero (§2.2)."""
        pad = -size % BLOCK
        if pad and self.read_exact(pad, f"the padding of member {name}") != bytes(pad):
            raise BundleFormatError(
                f"bundle {self.label}: the padding after member {name} is not zero"
            )

    def read_small(self, name: str, max_bytes: int, what: str) -> bytes:
        """Read a whole member expected to be at most ``max_bytes`` (checked before reading).

        Raises:
            LimitExceededError: the member is larger than ``max_bytes``; ``what`` names the
                limit for the message.
        """
        size = self.expect_member(name)
        if size > max_bytes:
            raise LimitExceededError(
                f"bundle {self.label}: member {name} is {format_bytes(size)}, over the "
                f"{what} limit of {format_bytes(max_bytes)}"
            )
        data = self.read_exact(size, f"member {name}")
        self.skip_padding(size, name)
        return data

    # -- headers ------------------------------------------------------------------------

    def _header_block(self, expected: str) -> bytes:
        block = self.read_exact(BLOCK, f"the header of member {expected}")
        if block == bytes(BLOCK):
            raise BundleFormatError(
                f"bundle {self.label}: member {expected} is missing (the archive ends at byte "
                f"{self.offset - BLOCK})"
            )
        return block

    def _parse(self, block: bytes, expected: str) -> tuple[bytes, int, bytes]:
        """Check one header block; return (raw name, size field, typeflag)."""
        at = self.offset - BLOCK
        where = f"bundle {self.label}: header at byte {at}"
        stored = _octal(block[148:156])
        computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
        if stored is None or stored != computed:
            raise BundleFormatError(f"{where} has a bad checksum (corrupt or not a tar header)")
        if block[257:265] == b"ustar  \0":
            raise BundleFormatError(f"{where} is a GNU tar header; only ustar is allowed")
        if block[257:265] != b"ustar\x0000":
            raise BundleFormatError(f"{where} is not a ustar header")
        raw_name = block[:_NAME_FIELD].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            raw_name = prefix + b"/" + raw_name
        typeflag = block[156:157]
        shown = _show(raw_name)
        kind = _TYPE_NAMES.get(typeflag)
        if kind is not None:
            raise BundleFormatError(
                f"{where}: member {shown} is {kind}; only regular files are allowed"
            )
        if typeflag not in (b"0", b"x"):
            raise BundleFormatError(
                f"{where}: member {shown} has unknown type {typeflag!a}; only regular "
                "files are allowed"
            )
        if any(b < 0x20 or b == 0x7F for b in raw_name):
            raise BundleFormatError(f"{where}: member name {shown} contains control characters")
        if raw_name.startswith(b"/"):
            raise BundleFormatError(f"{where}: member name {shown} is an absolute path")
        if b".." in raw_name.split(b"/"):
            raise BundleFormatError(f"{where}: member name {shown} contains '..'")
        size = _octal(block[124:136])
        if size is None:
            raise BundleFormatError(f"{where}: member {shown} has an invalid size field")
        return raw_name, size, typeflag

    def expect_member(self, name: str) -> int:
        """Read the header(s) of the next member, which must be the regular file ``name``.

        Returns the member's data size; the caller then reads the data and the padding.
        """
        first = self._header_block(name)
        raw_name, size, typeflag = self._parse(first, name)
        seen = first
        if typeflag == b"x":
            if raw_name != PAX_NAME.encode() or size > _MAX_PAX_BYTES:
                raise BundleFormatError(
                    f"bundle {self.label}: unexpected pax header {_show(raw_name)} before "
                    f"member {name}"
                )
            record = self.read_exact(size, f"the pax header of member {name}")
            self.skip_padding(size, PAX_NAME)
            size = self._pax_size(record, name)
            second = self._header_block(name)
            raw_name, field, typeflag = self._parse(second, name)
            if typeflag != b"0" or field != 0:
                raise BundleFormatError(
                    f"bundle {self.label}: the pax header before member {name} must be "
                    "followed by one regular file header with size 0"
                )
            seen = first + record + padding(len(record)) + second
        if raw_name != name.encode("ascii"):
            raise BundleFormatError(
                f"bundle {self.label}: expected member {name} at byte "
                f"{self.offset - BLOCK}, found {_show(raw_name)} (a missing, extra, reordered "
                "or duplicate member)"
            )
        if seen != encode_header(name, size):
            raise BundleFormatError(
                f"bundle {self.label}: the header of member {name} is not in canonical form "
                "(mode, owner, time or field encoding differ from the format)"
            )
        return size

    def _pax_size(self, record: bytes, name: str) -> int:
        problem = f"bundle {self.label}: the pax header before member {name}"
        head, _, rest = record.partition(b" ")
        if not head.isdigit() or int(head) != len(record) or not rest.startswith(b"size="):
            raise BundleFormatError(f"{problem} must hold exactly one size record")
        value = rest[5:]
        if not value.endswith(b"\n") or not value[:-1].isdigit():
            raise BundleFormatError(f"{problem} has an invalid size record")
        size = int(value[:-1])
        if not OCTAL_SIZE_LIMIT <= size <= MAX_MEMBER_BYTES:
            raise BundleFormatError(f"{problem} is used for a size that needs none")
        return size

    def expect_end(self) -> None:
        """Read the end-of-archive marker; nothing may follow it (§2.4)."""
        end = self.read_exact(2 * BLOCK, "the end-of-archive marker")
        if end != END_OF_ARCHIVE:
            name = end[:_NAME_FIELD].split(b"\0", 1)[0]
            if name:
                raise BundleFormatError(
                    f"bundle {self.label}: extra member {_show(name)} after the last payload"
                )
            raise BundleFormatError(
                f"bundle {self.label}: the end-of-archive marker is not two zero blocks"
            )
        if self.source.read(1):
            raise BundleFormatError(
                f"bundle {self.label}: trailing bytes after the end of the archive at byte "
                f"{self.offset}"
            )


@dataclass(frozen=True)
class Head:
    """The first three members (§2.1): their raw bytes, not yet trusted, and their length."""

    roots: bytes
    envelope: bytes
    size: int  # bytes from the start of the bundle to the end of the envelope member


_MAX_MARKER_BYTES = 64


def read_head(reader: ContainerReader, *, max_roots_bytes: int, max_envelope_bytes: int) -> Head:
    """Read the marker, ``roots.json`` and ``envelope.json`` members (§2.1, §9 step 1).

    Raises:
        BundleFormatError: not a Tiangong bundle, an unsupported format version, or a
            structural problem in these members.
        LimitExceededError: roots or envelope larger than the given caps (checked before
            reading them).
        TruncatedError: the source ends inside them.
    """
    try:
        size = reader.expect_member(MARKER_NAME)
    except TruncatedError:
        raise
    except BundleFormatError as exc:
        raise BundleFormatError(
            f"bundle {reader.label} is not a Tiangong bundle (it does not start with the "
            f"{MARKER_NAME} member): {exc}"
        ) from exc
    if size > _MAX_MARKER_BYTES:
        raise BundleFormatError(f"bundle {reader.label}: the format marker is {size} bytes")
    marker = reader.read_exact(size, f"member {MARKER_NAME}")
    reader.skip_padding(size, MARKER_NAME)
    if marker != MARKER:
        prefix = MARKER_NAME.encode() + b"/"
        if marker.startswith(prefix) and marker.endswith(b"\n"):
            version = marker[len(prefix) : -1].decode("ascii", errors="replace")[:20]
            raise BundleFormatError(
                f"bundle {reader.label} uses format version {version!r}; this version of "
                f"Tiangong reads format {FORMAT_VERSION} — upgrade Tiangong"
            )
        raise BundleFormatError(f"bundle {reader.label}: the format marker is not recognised")
    roots = reader.read_small(ROOTS_NAME, max_roots_bytes, "max_roots_bytes")
    envelope = reader.read_small(ENVELOPE_NAME, max_envelope_bytes, "max_envelope_bytes")
    return Head(roots, envelope, reader.offset)
