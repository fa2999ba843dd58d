"""The tar framing codec (docs/bundle-format.md §2): canonical headers, strict reading.

Python's ``tarfile`` serves as an independent implementation: our headers must be byte for
byte what it writes in PAX format for the same member, and hostile members are built with it.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from bundle.container import (
    BLOCK,
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    OCTAL_SIZE_LIMIT,
    ROOTS_NAME,
    ContainerReader,
    encode_header,
    encode_member,
    header_len,
    member_span,
    padding,
    payload_member,
    read_head,
)
from bundle.errors import BundleFormatError, LimitExceededError, TruncatedError
from bundle.limits import GiB

SIZES = [0, 1, 511, 512, 513, 5 * GiB, OCTAL_SIZE_LIMIT - 1, OCTAL_SIZE_LIMIT, 9 * GiB,
         2**63 - 1]


def _tarfile_header(name: str, size: int, **attrs: object) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _reader(data: bytes) -> ContainerReader:
    return ContainerReader(io.BytesIO(data), "test.tgb")


@pytest.mark.parametrize("size", SIZES)
def test_header_is_what_tarfile_writes(size: int) -> None:
    assert encode_header("payload/000001.zst", size) == _tarfile_header("payload/000001.zst", size)


@pytest.mark.parametrize("size", SIZES)
def test_header_round_trip_without_the_data(size: int) -> None:
    # 64-bit sizes: a 5 GiB and a 9 GiB (pax) member are described without writing them.
    header = encode_header("payload/000001.zst", size)
    assert len(header) == header_len(size) == (BLOCK if size < OCTAL_SIZE_LIMIT else 3 * BLOCK)
    reader = _reader(header)
    assert reader.expect_member("payload/000001.zst") == size
    assert reader.offset == len(header)


def test_member_span_and_padding() -> None:
    assert member_span(0) == 512
    assert member_span(1) == 1024
    assert member_span(512) == 1024
    assert member_span(9 * GiB) == 3 * 512 + 9 * GiB
    assert padding(513) == bytes(511)
    assert padding(1024) == b""


def test_payload_member_names() -> None:
    assert payload_member(1) == "payload/000001.zst"
    assert payload_member(999_999) == "payload/999999.zst"
    with pytest.raises(ValueError):
        payload_member(0)


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a\nb", "é", "x" * 100])
def test_encode_refuses_names_the_format_never_uses(name: str) -> None:
    with pytest.raises(ValueError):
        encode_header(name, 1)


def test_tarfile_reads_a_container() -> None:
    data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
            + END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [(m.name, m.size, m.mode, m.mtime, m.uid, m.uname) for m in members] == [
        (MARKER_NAME, len(MARKER), 0o644, 0, 0, ""),
        (ROOTS_NAME, 2, 0o644, 0, 0, ""),
    ]


def test_reads_members_in_order_and_the_end() -> None:
    data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
            + encode_member(ENVELOPE_NAME, b"{}") + END_OF_ARCHIVE)
    reader = _reader(data)
    head = read_head(reader, max_roots_bytes=10, max_envelope_bytes=10)
    assert (head.roots, head.envelope, head.size) == (b"[]", b"{}", 3 * 1024)
    reader.expect_end()


def _with_member(header: bytes, data: bytes = b"x") -> bytes:
    return header + data + padding(len(data))


HOSTILE = [
    ("symlink", _tarfile_header("tiangong-bundle", 0, type=tarfile.SYMTYPE, linkname="/etc"),
     "is a symbolic link"),
    ("hardlink", _tarfile_header("tiangong-bundle", 0, type=tarfile.LNKTYPE, linkname="x"),
     "is a hard link"),
    ("char device", _tarfile_header("tiangong-bundle", 0, type=tarfile.CHRTYPE),
     "is a character device"),
    ("block device", _tarfile_header("tiangong-bundle", 0, type=tarfile.BLKTYPE),
     "is a block device"),
    ("directory", _tarfile_header("tiangong-bundle", 0, type=tarfile.DIRTYPE), "is a directory"),
    ("fifo", _tarfile_header("tiangong-bundle", 0, type=tarfile.FIFOTYPE), "is a FIFO"),
    ("gnu long name", tarfile.TarInfo("a" * 150).tobuf(format=tarfile.GNU_FORMAT),
     "GNU tar header"),
    ("absolute", _tarfile_header("/tiangong-bundle", 1), "absolute path"),
    ("dot-dot", _tarfile_header("../tiangong-bundle", 1), "contains '..'"),
    ("control character", _tarfile_header("tiangong\x1b-bundle", 1), "control characters"),
    ("other name", _tarfile_header("roots.json", 1), "expected member tiangong-bundle"),
    ("mode 0755", _tarfile_header("tiangong-bundle", 1, mode=0o755), "canonical form"),
    ("mtime", _tarfile_header("tiangong-bundle", 1, mtime=1_700_000_000), "canonical form"),
    ("owner", _tarfile_header("tiangong-bundle", 1, uid=1000, uname="alice"), "canonical form"),
    ("long name via pax", _tarfile_header("p/" + "a" * 120, 1), "pax header"),
    ("global pax", tarfile.TarInfo.create_pax_global_header({"comment": "hi"}),
     "global pax header"),
]


@pytest.mark.parametrize(("case", "header", "message"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_members_are_refused(case: str, header: bytes, message: str) -> None:
    reader = _reader(_with_member(header) + END_OF_ARCHIVE)
    with pytest.raises(BundleFormatError, match=message):
        reader.expect_member(MARKER_NAME)


def test_bad_checksum() -> None:
    header = bytearray(encode_header(MARKER_NAME, 1))
    header[10] ^= 0x01
    with pytest.raises(BundleFormatError, match=r"bad checksum"):
        _reader(bytes(header)).expect_member(MARKER_NAME)


def test_base256_size_is_refused() -> None:
    header = bytearray(encode_header(MARKER_NAME, 1))
    header[124:136] = b"\x80" + bytes(10) + b"\x01"
    header[148:156] = b"%06o\0 " % (sum(header[:148]) + 256 + sum(header[156:]))
    with pytest.raises(BundleFormatError, match=r"invalid size field"):
        _reader(bytes(header)).expect_member(MARKER_NAME)


def test_pax_for_a_small_size_is_refused() -> None:
    # tarfile writes a pax size record when asked to; the format only allows it >= 8 GiB.
    info = tarfile.TarInfo(MARKER_NAME)
    info.size, info.mode, info.mtime = 1, 0o644, 0
    info.pax_headers = {"size": "1"}
    with pytest.raises(BundleFormatError, match=r"pax header"):
        _reader(info.tobuf(format=tarfile.PAX_FORMAT) + b"x" + bytes(511)).expect_member(
            MARKER_NAME)


def test_other_pax_records_are_refused() -> None:
    info = tarfile.TarInfo(MARKER_NAME)
    info.size, info.mode, info.mtime = 1, 0o644, 0
    info.pax_headers = {"path": MARKER_NAME}
    with pytest.raises(BundleFormatError, match=r"pax header"):
        _reader(info.tobuf(format=tarfile.PAX_FORMAT)).expect_member(MARKER_NAME)


def test_missing_member_is_named() -> None:
    reader = _reader(encode_member(MARKER_NAME, MARKER) + END_OF_ARCHIVE)
    reader.read_small(MARKER_NAME, 100, "limit")
    with pytest.raises(BundleFormatError, match=r"member roots.json is missing"):
        reader.expect_member(ROOTS_NAME)


def test_nonzero_padding_is_refused() -> None:
    data = encode_header(MARKER_NAME, 1) + b"x" + b"\x01" + bytes(510)
    with pytest.raises(BundleFormatError, match=r"padding"):
        _reader(data).read_small(MARKER_NAME, 10, "limit")


def test_oversized_member_refused_before_reading() -> None:
    # Only the header exists: the size check must come before any data is read.
    with pytest.raises(LimitExceededError, match=r"over the max_envelope_bytes limit"):
        _reader(encode_header(ENVELOPE_NAME, 10 * GiB)).read_small(
            ENVELOPE_NAME, 1024, "max_envelope_bytes")


def test_trailing_bytes_after_the_end() -> None:
    with pytest.raises(BundleFormatError, match=r"trailing bytes"):
        _reader(END_OF_ARCHIVE + b"\0").expect_end()


def test_extra_member_instead_of_the_end() -> None:
    with pytest.raises(BundleFormatError, match=r"extra member 'payload/000002.zst'"):
        _reader(encode_member("payload/000002.zst", b"x") + END_OF_ARCHIVE).expect_end()


def test_truncation_before_the_size_is_known() -> None:
    data = encode_member(MARKER_NAME, MARKER) + encode_header(ROOTS_NAME, 100) + b"[" * 10
    reader = _reader(data)
    with pytest.raises(TruncatedError, match=r"ends after 1.5 KiB, inside member roots.json"):
        read_head(reader, max_roots_bytes=1000, max_envelope_bytes=1000)


def test_truncation_once_the_size_is_known() -> None:
    reader = _reader(encode_header("payload/000001.zst", 3 * 1024 * 1024) + bytes(1024 * 1024))
    reader.expected_total = 5 * 1024 * 1024
    size = reader.expect_member("payload/000001.zst")
    with pytest.raises(TruncatedError, match=r"1\.0 MiB of 5\.0 MiB present"):
        for _ in reader.iter_data(size, "payload/000001.zst", 1024 * 1024):
            pass


def test_not_a_bundle() -> None:
    with pytest.raises(BundleFormatError, match=r"is not a Tiangong bundle"):
        read_head(_reader(b"PK\x03\x04" + bytes(2000)), max_roots_bytes=1, max_envelope_bytes=1)


def test_newer_format_version_is_named() -> None:
    data = encode_member(MARKER_NAME, b"tiangong-bundle/2\n") + END_OF_ARCHIVE
    with pytest.raises(BundleFormatError, match=r"format version '2'.*upgrade Tiangong"):
        read_head(_reader(data), max_roots_bytes=1, max_envelope_bytes=1)


class _Trickle:
    """A source that returns one byte per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int, /) -> bytes:
        return self._data.read(min(n, 1))


def test_short_reads_are_not_truncation() -> None:
    data = (encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
            + encode_member(ENVELOPE_NAME, b"{}") + END_OF_ARCHIVE)
    reader = ContainerReader(_Trickle(data), "slow.tgb")
    read_head(reader, max_roots_bytes=10, max_envelope_bytes=10)
    reader.expect_end()
