"""The live connection's incoming WebSocket frames, each payload copied once.

``websockets`` (its sans-I/O :class:`~websockets.streams.StreamReader`) appends every piece
read from the socket to one ``bytearray`` (a copy, and a reallocation as it grows), slices a
frame's payload out of it (a second copy) and, on the asyncio side, joins that ``bytearray``
into the message's ``bytes`` (a third). For a bundle coming in at 1 MiB per CHUNK those
copies were most of the agent's event loop: ``perf`` put 40 % of its samples in ``memmove``
(docs/benchmarks.md "Session 12: live transfer to memory").

:class:`OneCopyReader` keeps the pieces as they were read (``bytes``, not copied) and builds
each payload straight from them as ``bytes``, which the assembler then passes on as the
message without another copy: one copy per frame, the least a message in ``bytes`` needs.
What it reads is exactly what the stock reader reads: the same frames, the same limits
(``websockets`` checks a frame's length against ``max_size`` before it asks for the
payload), the same errors at the end of the stream; it holds about what the stock reader
would (the pieces of the frame being read): pieces under :data:`SMALL_PIECE_BYTES` are
joined as they come, not kept one by one (a piece costs a ``memoryview``, ~300 bytes: a
peer sending a byte at a time made a 1 MiB frame hold 300 MiB).

:func:`read_frames_in_one_copy` installs it on an open client connection. It does not
change how the socket is read (:func:`agent.live.read_in_large_pieces` does), nor parse
frames itself, nor touch what is sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

from websockets.streams import StreamReader

__all__ = ["SMALL_PIECE_BYTES", "OneCopyReader", "read_frames_in_one_copy"]

#: bytes: a piece fed under this size is appended to the small pieces before it (one
#: ``bytearray``), not kept as a piece of its own (its view's ~300 bytes at most 2 % of it)
SMALL_PIECE_BYTES = 16 * 1024


class OneCopyReader(StreamReader):
    """A :class:`~websockets.streams.StreamReader` that returns what :meth:`read_exact`
    reads as ``bytes`` made from the pieces fed, with one copy.

    Bytes fed before it took over (in ``buffer``, by the stock reader's methods: the HTTP
    handshake's response, maybe the first frame with it) are read first; the stock
    generators of the handshake still work on ``buffer`` until the first frame is read
    (see :meth:`feed_data`).
    """

    pieces: deque[memoryview]  # fed after buffer, not copied; the first maybe partly read
    tail: bytearray  # small pieces fed after those in pieces, joined (SMALL_PIECE_BYTES)
    size: int  # bytes in pieces and tail
    framing: bool  # read_exact or at_eof of this class ran: pieces, not buffer, take data

    @classmethod
    def take_over(cls, reader: StreamReader) -> OneCopyReader:
        """Make the stock ``reader`` (with what it holds) this class, in place: the
        protocol's parser, which may be waiting in one of its generators, keeps it."""
        reader.__class__ = cls
        assert isinstance(reader, OneCopyReader)
        reader.pieces = deque()
        reader.tail = bytearray()
        reader.size = 0
        reader.framing = False
        return reader

    def feed_data(self, data: bytes | bytearray) -> None:
        """Keep ``data`` as it is (a ``bytearray`` is copied: its owner may reuse it), or
        append it to :attr:`tail` if it is under :data:`SMALL_PIECE_BYTES`.
        Until the first frame is read, a stock generator may be waiting on ``buffer`` (the
        handshake's, or :meth:`at_eof` as it was when this reader took over): it goes
        there.

        Raises:
            EOFError: after :meth:`feed_eof`.
        """
        if self.eof:
            raise EOFError("stream ended")
        if not self.framing:
            self.buffer += data
        elif len(data) < SMALL_PIECE_BYTES:
            self.tail += data
            self.size += len(data)
        else:
            self._seal_tail()
            self.pieces.append(memoryview(data if type(data) is bytes else bytes(data)))
            self.size += len(data)

    def _seal_tail(self) -> None:
        """Make :attr:`tail` the last piece (not copied: a fresh tail takes what follows)."""
        if self.tail:
            self.pieces.append(memoryview(self.tail))
            self.tail = bytearray()

    def at_eof(self) -> Generator[None, None, bool]:
        self.framing = True
        while True:
            if self.buffer or self.size:
                return False
            if self.eof:
                return True
            yield

    def read_exact(self, n: int) -> Generator[None, None, bytes]:  # type: ignore[override]
        """``n`` bytes as ``bytes``, copied once from the pieces fed.

        Raises:
            EOFError: the stream ends before ``n`` bytes.
        """
        assert n >= 0
        self.framing = True
        if self.buffer:  # fed before the first frame: read first, as one piece
            self.pieces.appendleft(memoryview(bytes(self.buffer)))
            self.size += len(self.buffer)
            del self.buffer[:]
        while self.size < n:
            if self.eof:
                raise EOFError(f"stream ends after {self.size} bytes, expected {n} bytes")
            yield
        if not n:
            return b""
        if self.size - len(self.tail) < n:  # the small pieces are needed: only then
            self._seal_tail()
        self.size -= n
        first = self.pieces[0]
        if len(first) > n:
            self.pieces[0] = first[n:]
            return bytes(first[:n])
        parts = []
        while n:
            piece = self.pieces[0]
            if len(piece) <= n:
                parts.append(self.pieces.popleft())
                n -= len(piece)
            else:
                parts.append(piece[:n])
                self.pieces[0] = piece[n:]
                n = 0
        return b"".join(parts)

    def read_line(self, m: int, too_long_exc_type: type[Exception] = RuntimeError
                  ) -> Generator[None, None, bytearray]:
        """As the stock reader's (the handshake's; not used once frames are read)."""
        while True:
            self._gather()
            if b"\n" in self.buffer or len(self.buffer) > m or self.eof:
                return (yield from super().read_line(m, too_long_exc_type))
            yield

    def read_to_eof(self, m: int, too_long_exc_type: type[Exception] = RuntimeError
                    ) -> Generator[None, None, bytearray]:
        """As the stock reader's (the handshake's; not used once frames are read)."""
        while True:
            self._gather()
            if len(self.buffer) > m or self.eof:
                return (yield from super().read_to_eof(m, too_long_exc_type))
            yield

    def discard(self) -> None:
        del self.buffer[:]
        self.pieces.clear()
        del self.tail[:]
        self.size = 0

    def _gather(self) -> None:
        """Move the pieces into ``buffer`` (copied: the rare paths only)."""
        for piece in self.pieces:
            self.buffer += piece
        self.buffer += self.tail
        self.pieces.clear()
        del self.tail[:]
        self.size = 0


def read_frames_in_one_copy(ws: Any) -> bool:
    """Let the open connection ``ws`` (a ``websockets`` asyncio connection) read its frames
    with :class:`OneCopyReader`; True if it does now. False, and nothing changed, where its
    protocol does not read through the stock :class:`~websockets.streams.StreamReader` (an
    other ``websockets`` than this was written for)."""
    reader = getattr(getattr(ws, "protocol", None), "reader", None)
    if type(reader) is not StreamReader or not isinstance(reader.buffer, bytearray):
        return isinstance(reader, OneCopyReader)
    OneCopyReader.take_over(reader)
    return True
