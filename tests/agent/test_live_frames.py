"""agent.live_frames: the one-copy frame reader against the stock one, fed the same bytes
through websockets' sans-I/O client protocol (no sockets): the same frames, in the same
order, with the same errors, however the bytes are cut into pieces; payloads as ``bytes``
(the message's own, no join copy). The live client installs it: tests/agent/test_live_transfer.py.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from agent.live_frames import SMALL_PIECE_BYTES, OneCopyReader, read_frames_in_one_copy

MiB = 1024 * 1024
MAX_SIZE = 2 * MiB


def _pair() -> tuple[ClientProtocol, ServerProtocol, bytes]:
    """A client and a server protocol; the bytes of the server's handshake response (not
    yet fed to the client)."""
    client = ClientProtocol(parse_uri("ws://hub.test/live"), max_size=MAX_SIZE)
    client.send_request(client.connect())
    server = ServerProtocol(max_size=MAX_SIZE)
    for data in client.data_to_send():
        server.receive_data(data)
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    return client, server, b"".join(server.data_to_send())


def _frames(server: ServerProtocol, payloads: list[bytes]) -> bytes:
    for payload in payloads:
        server.send_binary(payload)
    return b"".join(server.data_to_send())


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in pieces of the given sizes, cycled (fresh ``bytes`` each, as recv gives)."""
    pieces, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(bytes(data[at:at + size]))
        at, i = at + size, i + 1
    return pieces


def _receive(pieces: list[bytes], *, one_copy: bool, handshake: bytes,
             client: ClientProtocol, eof: bool = False) -> tuple[list[Frame], Any]:
    """Feed the handshake, install the reader (or not), feed ``pieces``; the frames received
    and the close code after an end of stream (``eof``)."""
    client.receive_data(handshake)
    events: list[Any] = list(client.events_received())[1:]  # the response first
    if one_copy:
        assert read_frames_in_one_copy(_Ws(client))
    for piece in pieces:
        client.receive_data(piece)
        events += client.events_received()
    if eof:
        client.receive_eof()
        events += client.events_received()
    return [e for e in events if isinstance(e, Frame)], client.close_code


class _Ws:
    """What read_frames_in_one_copy looks at: the connection's sans-I/O protocol."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol


_rng = random.Random(15)
_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 300_000, MiB, MiB + 70]
# how the bytes arrive: whole, a byte at a time (small frames only), asyncio's 256 KiB,
# the live client's 2 MiB, odd sizes that cut every header, random
_CUTS: dict[str, list[int]] = {
    "whole": [1 << 40],
    "bytes": [1],
    "256KiB": [256 * 1024],
    "2MiB": [2 * MiB],
    "odd": [3, 7, 1021, 65_539, 999_983],
    "random": [_rng.randrange(1, 3 * MiB) for _ in range(40)],
}


@pytest.mark.parametrize("cut", sorted(_CUTS))
def test_frames_as_the_stock_reader_reads_them_however_the_bytes_are_cut(cut: str) -> None:
    payloads = [os.urandom(n) for n in _SIZES if cut != "bytes" or n <= 65537]
    got = []
    for one_copy in (False, True):
        client, server, handshake = _pair()
        pieces = _cut(_frames(server, payloads), _CUTS[cut])
        frames, code = _receive(pieces, one_copy=one_copy, handshake=handshake,
                                client=client)
        assert code is None
        got.append(frames)
    stock, mine = got
    assert [bytes(f.data) for f in stock] == [bytes(f.data) for f in mine] == payloads
    assert [(f.opcode, f.fin) for f in stock] == [(f.opcode, f.fin) for f in mine]
    # payloads as bytes: the asyncio assembler passes a single frame's bytes on as the
    # message (its join copies a bytearray)
    assert all(type(f.data) is bytes for f in mine)


def test_frames_fed_with_the_handshake_before_it_took_over_are_read_first() -> None:
    client, server, handshake = _pair()
    payloads = [os.urandom(n) for n in (10, MiB + 70, 126, MiB)]
    wire = _frames(server, payloads)
    # the response and a frame and a half in one piece, then the reader takes over
    frames, code = _receive(_cut(wire[MiB // 2:], [2 * MiB]), one_copy=True,
                            handshake=handshake + wire[:MiB // 2], client=client)
    assert [f.data for f in frames] == payloads and code is None
    reader = client.reader
    assert isinstance(reader, OneCopyReader) and not reader.buffer and not reader.size


def test_a_bytearray_fed_is_copied_and_may_be_reused_by_its_owner() -> None:
    client, server, handshake = _pair()
    payload = os.urandom(300_000)
    wire = bytearray(_frames(server, [payload]))
    client.receive_data(handshake)
    client.events_received()
    read_frames_in_one_copy(_Ws(client))
    client.receive_data(wire[:100_000])
    wire[:100_000] = bytes(100_000)  # the owner reuses its buffer
    client.receive_data(wire[100_000:])
    (frame,) = client.events_received()
    assert frame.data == payload


@pytest.mark.parametrize("cut_at", [1, 2, 5, 9, 10, 1000, MiB])  # in the header, the payload
def test_the_stream_ending_inside_a_frame_fails_as_with_the_stock_reader(cut_at: int) -> None:
    outcomes = []
    for one_copy in (False, True):
        client, server, handshake = _pair()
        wire = _frames(server, [b"first", os.urandom(MiB + 70)])
        first = 2 + len(b"first")  # the first frame: its 2-byte header and payload
        frames, code = _receive([wire[:first + cut_at]], one_copy=one_copy,
                                handshake=handshake, client=client, eof=True)
        outcomes.append(([f.data for f in frames], code, str(client.parser_exc)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == [b"first"] and outcomes[1][1] == 1006  # abnormal closure


def test_a_frame_over_max_size_is_refused_before_its_payload_is_read() -> None:
    outcomes = []
    for one_copy in (False, True):
        client, _, handshake = _pair()
        sender = ServerProtocol(max_size=None)  # frames any size
        big = _pair_server_frames(sender, MAX_SIZE + 1)
        frames, code = _receive([big[:4096]], one_copy=one_copy, handshake=handshake,
                                client=client)
        assert code is None  # closing: the close frame sent, the peer's not yet read
        assert client.close_sent is not None
        outcomes.append((frames, client.close_sent.code, type(client.parser_exc)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][:2] == ([], 1009)  # message too big, with 4 KiB of it read


def _pair_server_frames(server: ServerProtocol, size: int) -> bytes:
    """The bytes of one binary frame of ``size`` bytes from ``server`` (open)."""
    client = ClientProtocol(parse_uri("ws://hub.test/live"))
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    server.data_to_send()
    server.send_binary(bytes(size))
    return b"".join(server.data_to_send())


def test_a_closing_handshake_is_read_and_the_rest_discarded() -> None:
    results = []
    for one_copy in (False, True):
        client, server, handshake = _pair()
        server.send_binary(b"last")
        server.send_close(1000, "bye")
        wire = b"".join(server.data_to_send())
        frames, _ = _receive([wire + b"garbage after the close"], one_copy=one_copy,
                             handshake=handshake, client=client, eof=True)
        results.append(([(f.opcode, bytes(f.data)) for f in frames], client.close_code,
                        client.state))
    assert results[0] == results[1]
    assert results[1][1] == 1000


def test_it_is_installed_once_and_only_on_the_stock_reader() -> None:
    client, _, handshake = _pair()
    client.receive_data(handshake)
    ws = _Ws(client)
    assert read_frames_in_one_copy(ws) and type(client.reader) is OneCopyReader
    assert read_frames_in_one_copy(ws)  # already: nothing changes
    assert type(client.reader) is OneCopyReader

    class Other(StreamReader):
        pass

    other = _Ws(type("P", (), {"reader": Other()})())
    assert not read_frames_in_one_copy(other)
    assert type(other.protocol.reader) is Other
    assert not read_frames_in_one_copy(_Ws(object()))


@pytest.mark.parametrize("piece", [1, 100, SMALL_PIECE_BYTES - 1, SMALL_PIECE_BYTES])
def test_a_frame_fed_in_small_pieces_holds_no_more_than_with_the_stock_reader(
        piece: int) -> None:
    """A peer sending a byte (or a few) at a time: the pieces of a frame not yet whole are
    held as about their bytes, as in the stock reader's buffer — not a view of ~300 bytes
    each (a 256 KiB frame held 84 MB that way), and the frame then arrives whole."""
    held = []
    payload = os.urandom(256 * 1024)
    for one_copy in (False, True):
        client, server, handshake = _pair()
        wire = _frames(server, [payload])
        client.receive_data(handshake)
        client.events_received()
        if one_copy:
            assert read_frames_in_one_copy(_Ws(client))
        # fresh bytes each (as recv gives), made before measuring
        pieces = [bytes(bytearray(wire[at:at + piece])) for at in range(0, len(wire), piece)]
        tracemalloc.start()
        try:
            for data in pieces[:-1]:
                client.receive_data(data)
            held.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        assert client.events_received() == []
        client.receive_data(pieces[-1])
        (frame,) = client.events_received()
        assert isinstance(frame, Frame) and frame.data == payload
    stock, mine = held
    assert mine <= stock + len(payload) // 16, (stock, mine)


def _raw(first: int, payload: bytes, *, mask: bool = False, length: int | None = None) -> bytes:
    """One frame as a hostile server may write it: ``first`` is FIN, RSV and the opcode;
    ``length`` the length it claims (default: the payload's)."""
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes((first, n | (0x80 if mask else 0)))
    elif n < 1 << 16:
        head = bytes((first, 126 | (0x80 if mask else 0))) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127 | (0x80 if mask else 0))) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if mask else b"") + payload


_FIN, _TEXT, _BIN, _CONT, _CLOSE, _PING, _PONG = 0x80, 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
# What websockets refuses or accepts of a server, fed to both readers: the same outcome.
_HOSTILE: dict[str, bytes] = {
    "masked by the server": _raw(_FIN | _BIN, b"x", mask=True),
    "rsv1 without an extension": _raw(_FIN | 0x40 | _BIN, b"x"),
    "rsv2": _raw(_FIN | 0x20 | _BIN, b"x"),
    "rsv3": _raw(_FIN | 0x10 | _BIN, b"x"),
    "reserved opcode": _raw(_FIN | 0x3, b"x"),
    "continuation first": _raw(_FIN | _CONT, b"x"),
    "data frame inside a fragmented message": _raw(_BIN, b"a") + _raw(_FIN | _BIN, b"b"),
    "fragmented ping": _raw(_PING, b"p") + _raw(_FIN | _CONT, b"q"),
    "control frame over 125 bytes": _raw(_FIN | _PING, bytes(126)),
    "ping and pong inside a fragmented message": (
        _raw(_BIN, b"a" * 200) + _raw(_FIN | _PING, b"p") + _raw(_FIN | _PONG, b"")
        + _raw(_CONT, b"b" * 70_000) + _raw(_FIN | _CONT, b"c")),
    "close inside a fragmented message": (
        _raw(_BIN, b"a" * 300) + _raw(_FIN | _CLOSE, (1000).to_bytes(2, "big") + b"bye")),
    "close with a one-byte payload": _raw(_FIN | _CLOSE, b"\3"),
    "close with a reserved code": _raw(_FIN | _CLOSE, (1005).to_bytes(2, "big")),
    "text that is not UTF-8": _raw(_FIN | _TEXT, b"\xff\xfe"),
    "a length over max_size": _raw(_FIN | _BIN, b"", length=MAX_SIZE + 1),
    "a 64-bit length with its top bit": _raw(_FIN | _BIN, b"", length=1 << 63),
    "a message over max_size in fragments": (
        _raw(_BIN, bytes(MAX_SIZE // 2 + 1)) + _raw(_FIN | _CONT, bytes(MAX_SIZE // 2))),
    "many empty frames then one": _raw(_FIN | _BIN, b"") * 5000 + _raw(_FIN | _BIN, b"end"),
}


# the close code the client answers with (None: accepted; the stream then just ends)
_REFUSED_WITH = {case: 1002 for case in _HOSTILE} | {
    "a length over max_size": 1009, "a 64-bit length with its top bit": 1009,
    "a message over max_size in fragments": 1009, "text that is not UTF-8": None,
    "ping and pong inside a fragmented message": None, "many empty frames then one": None}


@pytest.mark.parametrize("piece", [1 << 40, 1, 7])
@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_what_websockets_refuses_or_accepts_of_a_server_is_unchanged(case: str,
                                                                     piece: int) -> None:
    """Hostile frames, whole, a byte at a time and in 7-byte pieces: the frames received,
    what is sent back (pongs, the close frame and its code) and the parser's error are
    the stock reader's — the reader only hands bytes to websockets' own checks."""
    wire = _HOSTILE[case]
    if piece == 1 and len(wire) > 100_000:
        piece = 4099
    outcomes = []
    for one_copy in (False, True):
        client, _, handshake = _pair()
        frames, code = _receive(_cut(wire, [piece]), one_copy=one_copy, handshake=handshake,
                                client=client, eof=True)
        sent = b"".join(client.data_to_send())
        outcomes.append(([(f.opcode, f.fin, bytes(f.data)) for f in frames], code,
                         client.close_sent and client.close_sent.code, type(client.parser_exc),
                         str(client.parser_exc), len(sent)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][2] == _REFUSED_WITH[case]
