"""hub.live_send: the live server's messages out, a CHUNK (a ``bytearray``) framed by the hub
without a copy — against a real ``websockets`` client on 127.0.0.1: every message arrives as
sent and in order, the frame header is the one ``websockets`` writes, a closed connection
raises as ``ws.send`` does, and a peer that stops reading holds the sender back."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from hub import live_send
from hub.tls import TlsFiles, create_ca, issue_server_certificate, load_server_tls

DEADLINE = 60.0  # seconds for anything that crosses the socket
MiB = 1024 * 1024
_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, MiB + 70]


@pytest.mark.parametrize("size", _SIZES)
def test_the_frame_header_is_the_one_websockets_writes(size: int) -> None:
    payload = os.urandom(size)
    assert (live_send.frame_head(size) + payload
            == Frame(Opcode.BINARY, payload).serialize(mask=False))


async def _serving(handler: Callable[[ServerConnection], Awaitable[None]],
                   client: Callable[[Any], Awaitable[Any]], **client_options: Any) -> Any:
    """Run ``handler`` for one connection of a real client, which ``client`` drives; its
    result."""
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2 * MiB,
                     ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=2 * MiB,
                           ping_interval=None, **client_options) as ws:
            return await asyncio.wait_for(client(ws), DEADLINE)


def test_every_message_arrives_as_sent_and_only_chunks_skip_websockets_send() -> None:
    messages: list[bytes | bytearray] = []
    for size in _SIZES:
        messages += [os.urandom(size), bytearray(os.urandom(size))]
    through_websockets: list[bytes | bytearray] = []

    async def handler(ws: ServerConnection) -> None:
        real = ws.send

        async def spy(message: Any, **kwargs: Any) -> None:
            through_websockets.append(message)
            await real(message, **kwargs)

        ws.send = spy  # type: ignore[method-assign]
        for message in messages:
            await live_send.send(ws, message)
        await ws.wait_closed()

    async def client(ws: Any) -> list[bytes]:
        return [await ws.recv() for _ in messages]

    got = asyncio.run(_serving(handler, client))
    assert got == [bytes(m) for m in messages]
    assert through_websockets == [m for m in messages if type(m) is bytes]


def test_a_chunk_on_a_closed_connection_raises_connection_closed() -> None:
    outcome: list[BaseException | None] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()
        try:
            await live_send.send(ws, bytearray(MiB))
            outcome.append(None)
        except ConnectionClosed as exc:
            outcome.append(exc)

    async def client(ws: Any) -> None:
        await ws.close()

    async def run() -> None:
        await _serving(handler, client)
        while not outcome:  # the handler finishes after the client's close
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(run(), DEADLINE))
    assert isinstance(outcome[0], ConnectionClosed)


def test_a_peer_that_stops_reading_holds_the_sender_and_its_buffers() -> None:
    """Chunks to a client that reads none for a while: the sender waits (the transport is
    over its limit, as with ws.send) with the transport holding bytes, and once the client
    reads, every byte arrives in order."""
    chunks = [bytearray(os.urandom(MiB)) for _ in range(48)]
    state: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        for i, chunk in enumerate(chunks):
            state["sent"] = i
            await live_send.send(ws, chunk)
        state["done"] = True
        await ws.wait_closed()

    async def client(ws: Any) -> list[bytes]:
        # not reading: websockets stops reading the socket after max_queue messages, TCP
        # fills up, the server's transport holds what it cannot send
        while "held" not in state:
            await asyncio.sleep(0.01)
        return [await ws.recv() for _ in chunks]

    async def watch(server_ws: list[ServerConnection]) -> None:
        while not server_ws:
            await asyncio.sleep(0.01)
        while not server_ws[0].transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
        state["sent_when_held"] = state["sent"]
        state["held"] = True

    async def run() -> list[bytes]:
        server_ws: list[ServerConnection] = []

        async def tracked(ws: ServerConnection) -> None:
            server_ws.append(ws)
            await handler(ws)

        watcher = asyncio.create_task(watch(server_ws))
        got = await _serving(tracked, client, max_queue=1)
        await watcher
        return got

    got = asyncio.run(run())
    assert got == [bytes(c) for c in chunks]
    assert state["done"] and state["sent_when_held"] < len(chunks) - 1


def test_a_sent_buffer_is_taken_again_only_when_nothing_else_holds_it() -> None:
    """What a transport may keep of a message it could not send at once (a view of it, or
    the message itself) keeps that buffer from being filled again; the others are taken."""
    spare = [bytearray(b"held" * 8), bytearray(b"free" * 8)]  # held by the list alone
    kept_by_transport = [memoryview(spare[0])[5:]]  # as a transport's buffer of pieces
    taken = live_send.take_unheld(spare)
    assert taken is not None and bytes(taken) == b"free" * 8
    assert live_send.take_unheld(spare) is None and len(spare) == 1
    kept_by_transport.clear()  # the transport sent it
    taken = live_send.take_unheld(spare)
    assert taken is not None and bytes(taken) == b"held" * 8 and spare == []
    assert live_send.take_unheld(spare) is None


def test_a_buffer_the_transport_keeps_itself_is_not_taken() -> None:
    """asyncio's socket transport from Python 3.12 on appends the message itself (not a
    view) to its buffer when earlier bytes wait: one reference more than the list's, and
    the buffer is not filled again while it is there (guards the count on this Python)."""
    spare = [bytearray(b"queued" * 4), bytearray(b"sent" * 4)]
    transport_buffer: deque[Any] = deque([b"earlier bytes", spare[0]])
    taken = live_send.take_unheld(spare)
    assert taken is not None and bytes(taken) == b"sent" * 4
    assert live_send.take_unheld(spare) is None
    transport_buffer.clear()
    assert live_send.take_unheld(spare) == bytearray(b"queued" * 4)


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    now = dt.datetime.now(dt.UTC)
    files = TlsFiles(tmp_path / "tls")
    create_ca(files, "hub-send", now)
    issue_server_certificate(files, ["127.0.0.1"], now)
    server = load_server_tls(files.server_cert, files.server_key).context
    return server, ssl.create_default_context(cafile=str(files.ca_cert))


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_reused_chunk_buffers_arrive_intact_to_a_slow_reader_that_pings(
        scheme: str, tmp_path: Path) -> None:
    """The hub's way (hub.live_hub: chunks filled while the writer sends, a sent buffer
    put in a spare list of two and filled again once take_unheld finds it unheld) to a
    client that reads nothing until the server's transport is over its limit, then pings
    before every message: every byte arrives as it was when it was handed to the
    transport (SHA-256 of each), pongs between whole frames, buffers reused."""
    chunks, size = 40, MiB
    server_tls, client_tls = _tls_contexts(tmp_path) if scheme == "wss" else (None, None)
    paused = asyncio.Event()
    sent: list[str] = []
    reused = [0]

    async def handler(ws: ServerConnection) -> None:
        pause = ws.pause_writing

        def pausing() -> None:  # the transport (or the TLS layer) is over its limit
            paused.set()
            pause()

        ws.pause_writing = pausing  # type: ignore[method-assign]
        queue: asyncio.Queue[bytearray | None] = asyncio.Queue(maxsize=3)
        spare: list[bytearray] = []

        async def fill() -> None:
            for i in range(chunks):
                buffer = live_send.take_unheld(spare)
                if buffer is None:
                    buffer = bytearray(size)
                else:
                    reused[0] += 1
                memoryview(buffer)[:] = hashlib.sha256(b"%d" % i).digest() * (size // 32)
                buffer[:8] = os.urandom(8)  # same length: filled in place
                sent.append(hashlib.sha256(buffer).hexdigest())
                await queue.put(buffer)
                del buffer
            await queue.put(None)

        filler = asyncio.create_task(fill())
        while (message := await queue.get()) is not None:
            await live_send.send(ws, message)
            if len(spare) < 2:
                spare.append(message)
            del message
        await filler
        await ws.wait_closed()

    async def client(ws: Any) -> tuple[list[str], int]:
        await paused.wait()
        got, pongs = [], []
        for _ in range(chunks):  # a pong waits behind the chunks the transport holds
            pongs.append(await ws.ping())
            got.append(hashlib.sha256(await ws.recv()).hexdigest())
        await asyncio.gather(*pongs)
        return got, len(pongs)

    async def run() -> tuple[list[str], int]:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=2 * MiB,
                         ping_interval=None, ssl=server_tls) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"{scheme}://127.0.0.1:{port}/", compression=None,
                               max_size=2 * MiB, max_queue=1, ping_interval=None,
                               ssl=client_tls) as ws:
                return await asyncio.wait_for(client(ws), DEADLINE)

    got, pongs = asyncio.run(run())
    assert got == sent and len(set(sent)) == chunks and pongs == chunks
    assert reused[0] > 0, reused
