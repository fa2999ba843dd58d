"""One message out on a live connection, a file's CHUNK without a copy of its bytes.

The live server's writer (:meth:`hub.live_hub.LiveHub._write_loop`) sends every message
through here. ``websockets`` sends a message by serializing its frame into fresh memory
(the header and a copy of the message) before the socket gets it; for a CHUNK — 1 MiB the
hub read straight from the spooled file into its message (``encode_chunk``) — that copy
and the fresh memory were a fifth of the hub's CPU per MiB sent (docs/benchmarks.md
"Session 12: live transfer to memory"). :func:`send` writes such a message as two pieces
instead: the frame's header (RFC 6455 §5.2: final, binary, unmasked — what ``websockets``
writes for a message from the server side) and the message itself, each handed to the
transport as it is; then it waits for the transport's buffer as ``websockets`` does
(``drain``). Everything else — text, small messages, a connection that is not open, one
with an extension negotiated, a fragmented message in progress — goes through
``websockets``' own :meth:`send`, so the closing handshake, its errors and its checks stay
``websockets``'.

A transport may keep a reference to what it was given until it sent it (asyncio's socket
transport since Python 3.12 when a send is partial, the TLS layer until it encrypted it):
a sent message is filled again only when nothing but its owner's list holds it
(:func:`take_unheld`) — not merely when the transport's buffer is empty, which on Python
3.11 (whose socket transport copies what it cannot send at once) left half the buffers
unused: a fresh, zeroed 1 MiB each.

Not here: what the messages are (``bundle.sync``), queueing and its limits
(:class:`hub.live_hub._Peer`), timeouts (the writer's).
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

__all__ = ["frame_head", "send", "take_unheld"]

_BINARY_FINAL = 0x82  # FIN and opcode 0x2 (binary); RSV bits and the mask bit clear
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def frame_head(size: int) -> bytes:
    """The header of a final, unmasked binary frame of ``size`` bytes (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((_BINARY_FINAL, size))
    if size < 1 << 16:
        return _HEAD_16.pack(_BINARY_FINAL, 126, size)
    return _HEAD_64.pack(_BINARY_FINAL, 127, size)


def _frames_itself(ws: Any, message: bytes | bytearray) -> bool:
    """Whether :func:`send` may write ``message``'s frame itself: a CHUNK (the only
    ``bytearray`` messages), the connection open, no extension (compression would change
    the frame), no fragmented message being sent, and the ``websockets`` this was written
    for (its asyncio connection's ``drain``)."""
    protocol = ws.protocol
    return (type(message) is bytearray and protocol.state is WsState.OPEN
            and getattr(protocol, "extensions", None) == []
            and getattr(ws, "send_in_progress", True) is None
            and callable(getattr(ws, "drain", None)))


async def send(ws: Any, message: bytes | bytearray) -> None:
    """Send one binary message on ``ws`` (a ``websockets`` asyncio server connection) and
    return once the transport's buffer is under its limit, as ``ws.send`` does.

    Raises:
        ConnectionClosed: the connection is closed or closing (from ``ws.send``), or was
            lost while this waited for the transport (the transport is aborted first).
    """
    if not _frames_itself(ws, message):
        await ws.send(message)
        return
    transport = ws.transport
    transport.write(frame_head(len(message)))
    transport.write(message)
    try:
        await ws.drain()
    except Exception as exc:  # lost while the transport was full: what ws.send raises then
        transport.abort()
        raise ConnectionClosed(None, None) from exc


#: references to a buffer in ``spare`` while take_unheld looks at it: the list's and
#: getrefcount's own argument
_HELD_BY_LIST = 2


def take_unheld(spare: list[bytearray]) -> bytearray | None:
    """Take from ``spare`` a sent message nothing else references any more (no transport,
    no view of it), to be filled again; None if each is still held. (CPython's reference
    counts: a holder the count misses cannot exist, one it sees only costs a fresh
    buffer.)"""
    for i in range(len(spare)):
        if sys.getrefcount(spare[i]) <= _HELD_BY_LIST:
            return spare.pop(i)
    return None
