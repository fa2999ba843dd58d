"""Structure checks for the one zstd frame of a payload member (docs/bundle-format.md §7).

:class:`FrameScanner` is fed the compressed bytes as they stream by and walks the frame's
structure (RFC 8878 §3.1.1) without decompressing: the header must be a plain zstd frame (no
skippable frame, no dictionary, reserved bit clear) that states its content size and carries a
checksum; blocks are followed to the end of the frame; and nothing may come after it. libzstd
itself skips skippable frames, decodes a second frame and accepts a frame whose checksum is cut
off, so these rules are ours to enforce.

The scanner never allocates more than a few bytes and does no I/O. It raises
:class:`~bundle.errors.DecompressionError`; messages do not name the file (callers do).
"""

from __future__ import annotations

from dataclasses import dataclass

from bundle.errors import DecompressionError

__all__ = ["MAX_BLOCK_BYTES", "FrameHeader", "FrameScanner"]

ZSTD_MAGIC = 0xFD2FB528
MAX_BLOCK_BYTES = 128 * 1024  # bytes, Block_Maximum_Size upper bound (RFC 8878 §3.1.1.2.3)
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_FCS_BYTES = (0, 2, 4, 8)
_DICT_BYTES = (0, 1, 2, 4)

_HEADER, _BLOCK_HEADER, _BODY, _CHECKSUM, _DONE = range(5)
_CHECKSUM_BYTES = 4


@dataclass(frozen=True)
class FrameHeader:
    """What the frame header states."""

    content_size: int
    window_size: int  # bytes the decoder must keep (its memory), per RFC 8878 §3.1.1.1.2
    has_checksum: bool
    header_size: int


def _header_size(fhd: int) -> int:
    single = (fhd >> 5) & 1
    fcs_flag = fhd >> 6
    fcs = _FCS_BYTES[fcs_flag] if fcs_flag else single
    return 4 + 1 + (0 if single else 1) + _DICT_BYTES[fhd & 3] + fcs


def _parse_header(buf: bytes) -> FrameHeader:
    fhd = buf[4]
    if fhd & 0x08:
        raise DecompressionError("the zstd frame header has its reserved bit set")
    if fhd & 0x03:
        raise DecompressionError("the zstd frame uses a dictionary, which the format forbids")
    single = (fhd >> 5) & 1
    fcs_flag = fhd >> 6
    pos = 5
    window = 0
    if not single:
        wd = buf[pos]
        pos += 1
        log = 10 + (wd >> 3)
        base = 1 << log
        window = base + (base >> 3) * (wd & 7)
    fcs_len = _FCS_BYTES[fcs_flag] if fcs_flag else single
    if fcs_len == 0:
        raise DecompressionError("the zstd frame does not state its content size")
    content = int.from_bytes(buf[pos : pos + fcs_len], "little")
    if fcs_len == 2:
        content += 256
    if single:
        window = content
    return FrameHeader(content, window, bool(fhd & 0x04), len(buf))


class FrameScanner:
    """Checks that a byte stream is exactly one well-formed zstd frame.

    Call :meth:`feed` with successive chunks; :attr:`header` is set as soon as the frame
    header is complete (check it before handing bytes to a decoder); call :meth:`finish` at
    the end.

    Raises:
        DecompressionError: not a zstd frame, a skippable frame, no content size, no
            checksum, a dictionary, a reserved block type, an oversized block, data after the
            frame, or a frame cut short.
    """

    def __init__(self) -> None:
        self.header: FrameHeader | None = None
        self._state = _HEADER
        self._buf = b""
        self._skip = 0  # bytes left of a block body or of the checksum
        self._last = False  # the current block is the last one

    def _need(self) -> int:
        if self._state == _BLOCK_HEADER:
            return 3
        if len(self._buf) < 5:
            return 5
        return _header_size(self._buf[4])

    def feed(self, data: bytes) -> None:
        """Walk ``data``, the next bytes of the frame."""
        pos = 0
        n = len(data)
        while pos < n:
            if self._state in (_BODY, _CHECKSUM):
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                if self._skip == 0:
                    self._next_after_skip()
                continue
            if self._state == _DONE:
                raise DecompressionError(
                    f"{n - pos} or more bytes follow the end of the zstd frame (only one frame "
                    "is allowed)"
                )
            take = min(self._need() - len(self._buf), n - pos)
            self._buf += data[pos : pos + take]
            pos += take
            if self._state == _HEADER and len(self._buf) >= 4:
                self._check_magic()
            if len(self._buf) == self._need():
                self._parse_buf()

    def _check_magic(self) -> None:
        magic = int.from_bytes(self._buf[:4], "little")
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            raise DecompressionError("a skippable zstd frame is not allowed")
        if magic != ZSTD_MAGIC:
            raise DecompressionError("the data is not a zstd frame (bad magic number)")

    def _parse_buf(self) -> None:
        if self._state == _HEADER:
            if len(self._buf) < 5:
                return  # the descriptor byte has not arrived yet
            header = _parse_header(self._buf)
            if not header.has_checksum:
                raise DecompressionError("the zstd frame has no content checksum")
            self.header = header
            self._state = _BLOCK_HEADER
        else:
            raw = int.from_bytes(self._buf, "little")
            self._last = bool(raw & 1)
            kind = (raw >> 1) & 3
            size = raw >> 3
            if kind == 3:
                raise DecompressionError("the zstd frame has a block of the reserved type")
            if size > MAX_BLOCK_BYTES:
                raise DecompressionError(f"a zstd block of {size} bytes exceeds 128 KiB")
            self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
            self._state = _BODY
            if self._skip == 0:
                self._next_after_skip()
        self._buf = b""

    def _next_after_skip(self) -> None:
        if self._state == _CHECKSUM:
            self._state = _DONE
        elif self._last:
            self._state = _CHECKSUM
            self._skip = _CHECKSUM_BYTES
        else:
            self._state = _BLOCK_HEADER

    def finish(self) -> FrameHeader:
        """Confirm the frame ended exactly at the end of the data; return its header."""
        if self._state != _DONE or self.header is None:
            raise DecompressionError("the zstd frame is cut short (incomplete)")
        return self.header
