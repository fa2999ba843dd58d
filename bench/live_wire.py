#!/usr/bin/env python3
"""Live wire: CPU per MiB of the live protocol's hot paths, in this process.

Prints figures; asserts nothing. A live transfer runs in two processes (the hub sends, the
agent receives), so the slower side sets the rate; this measures each side's protocol work
without the network, the disk or the event loop, with ``time.process_time`` (best of
``--reps``), so the figures hold on a loaded machine where wall-clock MB/s do not:

* *send*: ``encode_message`` of a 1 MiB CHUNK already in memory (the hub did this per chunk
  before session 7);
* *send from file*: what the hub does per chunk now (``hub/live_hub.py`` ``_send_file``):
  ``encode_chunk`` reading the spooled file (here a temporary file, in the page cache)
  straight into the message with ``os.preadv``, reusing a message already sent; against
  *read + encode*, the way before (``read`` of a fresh 1 MiB, then ``encode_message``);
* *receive*: ``decode_message`` of that CHUNK and :class:`bundle.sync.TransferReceiver`
  ``write`` into a sink that drops the bytes (what an agent does per chunk: checks, SHA-256);
* *receive on the event loop*: what is left in the agent's event loop since the checks and
  the SHA-256 run in :class:`bundle.live_file.FileReceiver`'s worker thread: ``decode_message``
  and handing the chunk over (``time.thread_time`` of the loop's thread only; the worker's
  CPU is the *receive* figure's hashing, now beside the reading instead of in its way);
* *frames*: the WebSocket frames of those CHUNKs, as the hub's server protocol writes them,
  fed in the agent's 2 MiB socket reads (fresh ``bytes`` each, as a read gives them) to
  ``websockets``' sans-I/O client protocol, each frame's payload made the message's
  ``bytes`` as its asyncio assembler does: with ``websockets``' own reader (three copies)
  and with :class:`agent.live_frames.OneCopyReader` (one); the pieces' making included in
  both;
* *send on a socket*: the hub's writer sending 1 MiB CHUNK messages (a ``bytearray``
  filled again once nothing else holds it, as ``hub/live_hub.py``) on a real
  ``websockets`` server connection on 127.0.0.1, with ``websockets``' ``send`` (its frame
  serialized into fresh memory: a copy) and with :func:`hub.live_send.send` (the header and
  the message handed to the transport as they are); this process's CPU, a child process
  (``--drain PORT``) reads. The only figure here that crosses a socket.

Usage::

    .venv/bin/python bench/live_wire.py [--mib 256] [--reps 5]
    .venv/bin/python <other checkout>/bench/live_wire.py   # the same on other code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from agent.live_frames import read_frames_in_one_copy
from bundle.live_file import FileReceiver
from bundle.sync.messages import (
    MessageType,
    Offer,
    decode_message,
    encode_chunk,
    encode_message,
)
from bundle.sync.transfer import TransferReceiver
from hub import live_send

MiB = 1024 * 1024


class _Drop:
    def write(self, part: int, data: bytes | memoryview) -> None:
        pass


class _Open:
    """A client protocol past its handshake (what read_frames_in_one_copy looks at)."""

    def __init__(self) -> None:
        self.protocol = ClientProtocol(parse_uri("ws://hub.test/live"), max_size=2 * MiB)
        self.protocol.send_request(self.protocol.connect())
        server = ServerProtocol()
        for data in self.protocol.data_to_send():
            server.receive_data(data)
        (request,) = server.events_received()
        assert isinstance(request, Request)
        server.send_response(server.accept(request))
        self.protocol.receive_data(b"".join(server.data_to_send()))
        self.protocol.events_received()
        self.server = server


def _frames_wire(wire: list[bytes]) -> bytes:
    """The WebSocket frames of ``wire``'s messages as the hub's server protocol writes them."""
    server = _Open().server
    for message in wire:
        server.send_binary(message)
    return b"".join(server.data_to_send())


def _read_frames(stream: bytes, one_copy: bool) -> Callable[[], None]:
    """Feed ``stream`` in 2 MiB pieces to a fresh client protocol; each frame's payload made
    the message's bytes as websockets' asyncio assembler does."""
    def run() -> None:
        ws = _Open()
        if one_copy:
            read_frames_in_one_copy(ws)
        view = memoryview(stream)
        for at in range(0, len(stream), 2 * MiB):
            ws.protocol.receive_data(bytes(view[at:at + 2 * MiB]))  # a fresh piece, as read
            for frame in ws.protocol.events_received():
                assert isinstance(frame, Frame)
                b"".join([frame.data])  # the assembler's join, as it is
    return run


def _send_on_socket(mib: int, hub_send: bool) -> float:
    """CPU seconds of this process sending ``mib`` CHUNK-sized messages to a child that
    reads them (see the module)."""
    spent: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        spare: list[bytearray] = []
        start = time.process_time()
        for _ in range(mib):
            message = live_send.take_unheld(spare) or bytearray(MiB + 70)
            if hub_send:
                await live_send.send(ws, message)
            else:
                await ws.send(message)
            spare.append(message)
            del message  # as the hub's writer: the list its only holder here
        spent.append(time.process_time() - start)
        await ws.close()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2 * MiB,
                         ping_interval=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            child = await asyncio.create_subprocess_exec(sys.executable, __file__,
                                                         "--drain", str(port))
            await child.wait()

    asyncio.run(main())
    return spent[0]


async def _drain(port: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=2 * MiB,
                       ping_interval=None) as ws:
        async for _ in ws:
            pass


def _best(run: Callable[[], None], reps: int,
          clock: Callable[[], float] = time.process_time) -> float:
    times = []
    for _ in range(reps):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--drain", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.drain is not None:  # the child reading what --send-on-socket sends
        asyncio.run(_drain(args.drain))
        return
    payload = os.urandom(MiB)
    wire = [encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, payload)
            for i in range(args.mib)]

    def send() -> None:
        for i in range(args.mib):
            encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, payload)

    def receive() -> None:
        receiver = TransferReceiver(Offer("big", "big.tgb", args.mib * MiB, "0" * 64), _Drop())
        for message in wire:
            decoded = decode_message(message)
            receiver.write(decoded.header["offset"], decoded.body)

    def receive_loop() -> None:
        file = FileReceiver.open(None, Offer("big", "big.tgb", args.mib * MiB, "0" * 64))
        for message in wire:
            decoded = decode_message(message)
            file.write(decoded.header["offset"], decoded.body)
        file.close()  # waits for the worker (its CPU is not this thread's)

    spool = tempfile.NamedTemporaryFile(prefix="live-wire-")  # noqa: SIM115 - closed below
    for _ in range(args.mib):
        spool.write(payload)
    spool.flush()
    fd = spool.fileno()

    def fill_from(offset: int) -> Callable[[memoryview], None]:
        def fill(view: memoryview) -> None:
            while view:
                got = os.preadv(fd, [view], offset + MiB - len(view))
                view = view[got:]
        return fill

    def send_from_file() -> None:
        spare: bytearray | None = None
        for i in range(args.mib):
            spare = encode_chunk(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, MiB,
                                 fill_from(i * MiB), buffer=spare)

    def read_then_encode() -> None:
        for i in range(args.mib):
            encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB},
                           os.pread(fd, MiB, i * MiB))

    send_ms = _best(send, args.reps) / args.mib * 1000
    file_ms = _best(send_from_file, args.reps) / args.mib * 1000
    read_encode_ms = _best(read_then_encode, args.reps) / args.mib * 1000
    spool.close()
    receive_ms = _best(receive, args.reps) / args.mib * 1000
    loop_ms = _best(receive_loop, args.reps, time.thread_time) / args.mib * 1000
    socket_ms = {hub_send: min(_send_on_socket(args.mib, hub_send) for _ in range(args.reps))
                 / args.mib * 1000 for hub_send in (False, True)}
    stream = _frames_wire(wire)
    stock_ms = _best(_read_frames(stream, False), args.reps) / args.mib * 1000
    one_copy_ms = _best(_read_frames(stream, True), args.reps) / args.mib * 1000
    print(f"live_wire ({Path(sys.path[0]).name}): send from file {file_ms:.3f} ms per MiB "
          f"(read + encode, as before: {read_encode_ms:.3f} ms)")
    print(f"live_wire ({Path(sys.path[0]).name}): send {send_ms:.3f} ms per MiB, receive "
          f"{receive_ms:.3f} ms per MiB (receive = {MiB / receive_ms / 1e3:.0f} MB/s of one "
          f"CPU), of which {loop_ms:.3f} ms per MiB in the agent's event loop (checks and "
          f"SHA-256 in the worker thread); load average {os.getloadavg()[0]:.2f}")
    print(f"live_wire ({Path(sys.path[0]).name}): frames read from 2 MiB pieces "
          f"{one_copy_ms:.3f} ms per MiB with agent.live_frames (websockets' own reader: "
          f"{stock_ms:.3f} ms)")
    print(f"live_wire ({Path(sys.path[0]).name}): sending on a socket "
          f"{socket_ms[True]:.3f} ms per MiB with hub.live_send (websockets' send: "
          f"{socket_ms[False]:.3f} ms)")
    print(f"RESULT live_wire send_ms_per_mib={send_ms:.3f} send_from_file_ms_per_mib={file_ms:.3f} "
          f"read_encode_ms_per_mib={read_encode_ms:.3f} receive_ms_per_mib={receive_ms:.3f} "
          f"receive_loop_ms_per_mib={loop_ms:.3f} frames_stock_ms_per_mib={stock_ms:.3f} "
          f"frames_one_copy_ms_per_mib={one_copy_ms:.3f} "
          f"socket_send_ws_ms_per_mib={socket_ms[False]:.3f} "
          f"socket_send_hub_ms_per_mib={socket_ms[True]:.3f} load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
