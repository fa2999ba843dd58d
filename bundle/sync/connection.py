"""The part of the live sync state machine both sides share (docs/live-protocol.md §4, §6).

:class:`Connection` holds the queues (messages out, events), the transfers in both directions
(offers, RESUME, CHUNK, ACK, DONE, RECEIVED, CANCEL), heartbeats and the error path. The
handshake and the role-specific messages are in :class:`bundle.sync.HubSide` and
:class:`bundle.sync.AgentSide`; use those.

No I/O and no clock reads here; files and timers belong to the asyncio layers.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bundle.sync.errors import (
    AuthError,
    ConnectionClosedError,
    MalformedError,
    OutOfOrderError,
    OversizedError,
    SyncError,
    UsageError,
    VersionError,
)
from bundle.sync.events import (
    AckReceived,
    ChunkReceived,
    Event,
    HeartbeatAcked,
    HeartbeatReceived,
    OfferReceived,
    PeerError,
    Refused,
    ResumeRequested,
    TransferCancelled,
    TransferDone,
    TransferReceived,
)
from bundle.sync.messages import (
    MAX_CHUNK_BYTES,
    MAX_TEXT_CHARS,
    Message,
    MessageType,
    Offer,
    decode_message,
    encode_chunk,
    encode_message,
)
from bundle.sync.transfer import Clock

__all__ = ["MAX_TRANSFERS", "RECENT_TRANSFERS", "Connection", "State"]

MAX_TRANSFERS = 4  # concurrent transfers per direction per connection
RECENT_TRANSFERS = 64  # finished/cancelled transfer ids remembered to ignore late messages


class State(enum.Enum):
    """Where a connection is: handshake, open (authenticated), closed (§6.1)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class _Outgoing:
    offer: Offer
    next_offset: int | None = None  # None until the receiver's RESUME
    acked: int = 0
    done: bool = False


@dataclass
class _Incoming:
    offer: Offer
    expected: int | None = None  # None until we send RESUME
    acked: int = 0
    done: bool = False


@dataclass
class _Transfers:
    live: dict[str, _Outgoing | _Incoming] = field(default_factory=dict)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_TRANSFERS))

    def finish(self, transfer: str) -> None:
        self.live.pop(transfer, None)
        if transfer not in self.recent:
            self.recent.append(transfer)


class Connection:
    """What both sides share: queues, transfers in both directions, heartbeats, errors.

    Use :class:`HubSide` or :class:`AgentSide`. ``role`` is ``"hub"`` or ``"agent"``.
    """

    role: str
    _OFFER: MessageType
    _CHUNK: MessageType
    _DONE: MessageType
    _SUFFIX: str

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._state = State.HANDSHAKE
        self._out: list[bytes | bytearray] = []
        self._events: list[Event] = []
        self._mine = _Transfers()  # offered by us (we send chunks)
        self._theirs = _Transfers()  # offered by the peer (we receive chunks)
        self.close_code: int | None = None  # set once closed by an error (ours or theirs)
        self.failure: SyncError | None = None
        # _handlers(), made once after the handshake: a dict of bound methods made for every
        # message was a tenth of the live server's protocol work with 10,000 agents
        self._dispatch: dict[MessageType, Callable[[Message], None]] | None = None

    # -- I/O surface

    def receive_data(self, data: bytes) -> None:
        """Feed one WebSocket binary message.

        Raises:
            SyncError: the peer broke the protocol (an ERROR or REFUSE is queued and the
                connection is closed), or the connection was already closed.
        """
        if self._state is State.CLOSED:
            raise ConnectionClosedError("message received after the connection closed")
        try:
            self._handle(decode_message(data))
        except SyncError as exc:
            self._fail(exc)
            raise

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes | bytearray]:
        """Messages to write since the last call, in order (one WebSocket message each)."""
        out, self._out = self._out, []
        return out

    @property
    def is_open(self) -> bool:
        """Authenticated and not closed."""
        return self._state is State.OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is State.CLOSED

    def fail(self, error: SyncError) -> None:
        """Close because of ``error`` found by the layer (e.g. a TransferError is better sent
        as :meth:`send_cancel`; an AuthError from the key lookup): queue ERROR/REFUSE."""
        if self._state is not State.CLOSED:
            self._fail(error)

    # -- internals

    def _send(self, mtype: MessageType, header: dict[str, object], body: bytes = b"") -> None:
        self._out.append(encode_message(mtype, header, body))

    def _fail(self, exc: SyncError) -> None:
        if self._state is State.CLOSED:
            return
        kind = MessageType.REFUSE if isinstance(exc, AuthError | VersionError) else (
            MessageType.ERROR)
        self._send(kind, {"code": exc.code, "text": exc.remote_text[:MAX_TEXT_CHARS]})
        self.close_code = exc.close_code
        self.failure = exc
        self._state = State.CLOSED

    def _require_open(self, action: str) -> None:
        if self._state is not State.OPEN:
            raise UsageError(f"cannot {action}: connection is {self._state.value}")

    def _handle(self, msg: Message) -> None:
        t = msg.type
        if t is MessageType.ERROR or t is MessageType.REFUSE:  # the peer closes, any state
            kind = PeerError if t is MessageType.ERROR else Refused
            self._events.append(kind(msg.header["code"], msg.header["text"]))
            self._state = State.CLOSED
            return
        if self._state is State.HANDSHAKE:
            self._handshake(msg)
            return
        if self._dispatch is None:
            self._dispatch = self._handlers()
        handler = self._dispatch.get(t)
        if handler is None:
            raise OutOfOrderError(f"{t.name} is not expected from the {self._peer_role}",
                                  remote_text=f"{t.name} not expected")
        handler(msg)

    @property
    def _peer_role(self) -> str:
        return "agent" if self.role == "hub" else "hub"

    def _handshake(self, msg: Message) -> None:  # overridden
        raise NotImplementedError

    def _handlers(self) -> dict[MessageType, Callable[[Message], None]]:
        peer_offer = MessageType.RESULT_OFFER if self.role == "hub" else MessageType.OFFER
        peer_chunk = MessageType.RESULT_CHUNK if self.role == "hub" else MessageType.CHUNK
        peer_done = MessageType.RESULT_DONE if self.role == "hub" else MessageType.DONE
        return {
            peer_offer: self._on_offer,
            peer_chunk: self._on_chunk,
            peer_done: self._on_done,
            MessageType.RESUME: self._on_resume,
            MessageType.ACK: self._on_ack,
            MessageType.RECEIVED: self._on_received,
            MessageType.CANCEL: self._on_cancel,
            MessageType.HEARTBEAT: self._on_heartbeat,
            MessageType.HEARTBEAT_ACK: self._on_heartbeat_ack,
            **self._extra_handlers(),
        }

    def _extra_handlers(self) -> dict[MessageType, Callable[[Message], None]]:
        return {}

    def _lookup(self, table: _Transfers, msg: Message, kind: type[_Outgoing] | type[_Incoming]
                ) -> _Outgoing | _Incoming | None:
        """The live transfer named by ``msg``; None for a recently finished one (a late
        message after a cancel crossed it on the wire: ignored)."""
        transfer = msg.header["transfer"]
        state = table.live.get(transfer)
        if state is None:
            if transfer in table.recent:
                return None
            raise OutOfOrderError(f"{msg.type.name} for unknown transfer {transfer!r}",
                                  remote_text=f"{msg.type.name} for unknown transfer")
        assert isinstance(state, kind)
        return state

    # -- receiving files

    def _on_offer(self, msg: Message) -> None:
        offer = Offer.from_header(msg.header)
        if not offer.name.endswith(self._peer_suffix):
            raise MalformedError(f"{msg.type.name} of {offer.name!r}: the {self._peer_role} "
                                 f"offers only {self._peer_suffix} files",
                                 remote_text=f"only {self._peer_suffix} files may be offered")
        if offer.transfer in self._theirs.live:
            raise OutOfOrderError(f"transfer {offer.transfer!r} offered twice",
                                  remote_text="transfer offered twice")
        if len(self._theirs.live) >= MAX_TRANSFERS:
            raise OversizedError(f"more than {MAX_TRANSFERS} concurrent transfers offered",
                                 remote_text=f"over {MAX_TRANSFERS} concurrent transfers")
        if offer.transfer in self._theirs.recent:
            self._theirs.recent.remove(offer.transfer)
        self._theirs.live[offer.transfer] = _Incoming(offer)
        self._events.append(OfferReceived(offer))

    @property
    def _peer_suffix(self) -> str:
        return ".tgr" if self.role == "hub" else ".tgb"

    def _on_chunk(self, msg: Message) -> None:
        state = self._lookup(self._theirs, msg, _Incoming)
        if state is None:
            return
        assert isinstance(state, _Incoming)
        offset, body, tid = msg.header["offset"], msg.body, state.offer.transfer
        if state.expected is None or state.done:
            raise OutOfOrderError(f"chunk of {tid!r} before RESUME or after DONE",
                                  remote_text="chunk not expected now")
        if offset != state.expected:
            raise OutOfOrderError(f"chunk of {tid!r} at offset {offset}, expected "
                                  f"{state.expected}",
                                  remote_text=f"chunk at offset {offset}, expected "
                                              f"{state.expected}")
        if not body:
            raise MalformedError(f"empty chunk of {tid!r}", remote_text="empty chunk")
        if offset + len(body) > state.offer.size:
            raise OversizedError(f"chunk of {tid!r} ends at {offset + len(body)}, past the "
                                 f"offered {state.offer.size} bytes",
                                 remote_text="chunk past the offered size")
        state.expected = offset + len(body)
        self._events.append(ChunkReceived(tid, offset, body))

    def _on_done(self, msg: Message) -> None:
        state = self._lookup(self._theirs, msg, _Incoming)
        if state is None:
            return
        assert isinstance(state, _Incoming)
        if state.done or state.expected != state.offer.size:
            raise OutOfOrderError(f"{msg.type.name} of {state.offer.transfer!r} with "
                                  f"{state.expected} of {state.offer.size} bytes sent",
                                  remote_text=f"{msg.type.name} before every byte was sent")
        state.done = True
        self._events.append(TransferDone(state.offer.transfer))

    def send_resume(self, transfer: str, offset: int = 0) -> None:
        """Ask for an offered file from ``offset`` (the bytes we already hold, fsynced).

        Raises:
            UsageError: unknown transfer, resumed already, or offset past the size.
        """
        self._require_open("send RESUME")
        state = self._incoming(transfer)
        if state.expected is not None:
            raise UsageError(f"transfer {transfer!r} is resumed already")
        if not 0 <= offset <= state.offer.size:
            raise UsageError(f"resume offset {offset} is outside 0..{state.offer.size}")
        state.expected = state.acked = offset
        self._send(MessageType.RESUME, {"transfer": transfer, "offset": offset})

    def send_ack(self, transfer: str, offset: int) -> None:
        """Tell the sender every byte before ``offset`` is stored durably.

        Raises:
            UsageError: unknown transfer, or offset behind the last ACK or past what arrived.
        """
        self._require_open("send ACK")
        state = self._incoming(transfer)
        if state.expected is None or not state.acked <= offset <= state.expected:
            raise UsageError(f"ack offset {offset} of {transfer!r} is outside "
                             f"{state.acked}..{state.expected}")
        state.acked = offset
        self._send(MessageType.ACK, {"transfer": transfer, "offset": offset})

    def send_received(self, transfer: str) -> None:
        """After DONE and a successful :meth:`TransferReceiver.finish` and store.

        Raises:
            UsageError: unknown transfer, or DONE not received yet.
        """
        self._require_open("send RECEIVED")
        state = self._incoming(transfer)
        if not state.done:
            raise UsageError(f"transfer {transfer!r} is not done")
        self._theirs.finish(transfer)
        self._send(MessageType.RECEIVED, {"transfer": transfer})

    def _incoming(self, transfer: str) -> _Incoming:
        state = self._theirs.live.get(transfer)
        if not isinstance(state, _Incoming):
            raise UsageError(f"no incoming transfer {transfer!r}")
        return state

    # -- sending files

    def send_offer(self, offer: Offer) -> None:
        """Offer a file (hub: a .tgb bundle; agent: a .tgr result); wait for RESUME.

        Raises:
            UsageError: not open, wrong kind of file, id in use, or too many transfers.
        """
        self._require_open(f"send {self._OFFER.name}")
        if not offer.name.endswith(self._SUFFIX):
            raise UsageError(f"the {self.role} offers only {self._SUFFIX} files")
        if offer.transfer in self._mine.live:
            raise UsageError(f"transfer {offer.transfer!r} is already offered")
        if len(self._mine.live) >= MAX_TRANSFERS:
            raise UsageError(f"{MAX_TRANSFERS} transfers are already running")
        if offer.transfer in self._mine.recent:
            self._mine.recent.remove(offer.transfer)
        self._mine.live[offer.transfer] = _Outgoing(offer)
        self._send(self._OFFER, offer.to_header())

    def _next_chunk(self, transfer: str, offset: int, size: int) -> None:
        self._require_open(f"send {self._CHUNK.name}")
        state = self._outgoing(transfer)
        if state.next_offset is None or state.done:
            raise UsageError(f"transfer {transfer!r}: no RESUME yet, or DONE sent")
        if offset != state.next_offset:
            raise UsageError(f"transfer {transfer!r}: chunk at {offset}, next is "
                             f"{state.next_offset}")
        if not 0 < size <= MAX_CHUNK_BYTES:
            raise UsageError(f"a chunk is 1..{MAX_CHUNK_BYTES} bytes, not {size}")
        if offset + size > state.offer.size:
            raise UsageError(f"transfer {transfer!r}: chunk past the offered size")

    def send_chunk(self, transfer: str, offset: int, data: bytes) -> None:
        """Send the next bytes of an offered file, at exactly the next offset.

        Raises:
            UsageError: before RESUME, wrong offset, empty, over MAX_CHUNK_BYTES or past size.
        """
        self._next_chunk(transfer, offset, len(data))
        self._outgoing(transfer).next_offset = offset + len(data)
        self._send(self._CHUNK, {"transfer": transfer, "offset": offset}, data)

    def send_chunk_from(self, transfer: str, offset: int, size: int,
                        fill: Callable[[memoryview], None], *,
                        buffer: bytearray | None = None) -> None:
        """As :meth:`send_chunk`, with the ``size`` bytes written by ``fill`` straight into
        the message (a file read into it: no copy of the body in between). ``buffer``: a
        message already sent, reused when it has the right length (see
        :func:`~bundle.sync.messages.encode_chunk`). Nothing is queued if ``fill`` raises.

        Raises:
            UsageError: as :meth:`send_chunk`.
            OSError: as ``fill`` (the transfer stays where it was).
        """
        self._next_chunk(transfer, offset, size)
        message = encode_chunk(self._CHUNK, {"transfer": transfer, "offset": offset}, size,
                               fill, buffer=buffer)
        self._outgoing(transfer).next_offset = offset + size
        self._out.append(message)

    def send_done(self, transfer: str) -> None:
        """Every byte was sent; the receiver checks and answers RECEIVED (or CANCEL).

        Raises:
            UsageError: bytes remain to be sent.
        """
        self._require_open(f"send {self._DONE.name}")
        state = self._outgoing(transfer)
        if state.done or state.next_offset != state.offer.size:
            raise UsageError(f"transfer {transfer!r}: {state.next_offset} of "
                             f"{state.offer.size} bytes sent")
        state.done = True
        self._send(self._DONE, {"transfer": transfer})

    def in_flight(self, transfer: str) -> int:
        """Bytes sent but not acknowledged yet (for the layer's flow-control window)."""
        state = self._outgoing(transfer)
        return (state.next_offset or 0) - state.acked

    def _outgoing(self, transfer: str) -> _Outgoing:
        state = self._mine.live.get(transfer)
        if not isinstance(state, _Outgoing):
            raise UsageError(f"no outgoing transfer {transfer!r}")
        return state

    def _on_resume(self, msg: Message) -> None:
        state = self._lookup(self._mine, msg, _Outgoing)
        if state is None:
            return
        assert isinstance(state, _Outgoing)
        offset = msg.header["offset"]
        if state.next_offset is not None:
            raise OutOfOrderError(f"second RESUME for {state.offer.transfer!r}",
                                  remote_text="transfer resumed twice")
        if offset > state.offer.size:
            raise OversizedError(f"RESUME at {offset} past the offered {state.offer.size} "
                                 f"bytes", remote_text="resume offset past the offered size")
        state.next_offset = state.acked = offset
        self._events.append(ResumeRequested(state.offer.transfer, offset))

    def _on_ack(self, msg: Message) -> None:
        state = self._lookup(self._mine, msg, _Outgoing)
        if state is None:
            return
        assert isinstance(state, _Outgoing)
        offset = msg.header["offset"]
        if state.next_offset is None or not state.acked <= offset <= state.next_offset:
            raise OutOfOrderError(f"ACK of {state.offer.transfer!r} at {offset} is outside "
                                  f"{state.acked}..{state.next_offset}",
                                  remote_text="ack offset out of range")
        state.acked = offset
        self._events.append(AckReceived(state.offer.transfer, offset))

    def _on_received(self, msg: Message) -> None:
        state = self._lookup(self._mine, msg, _Outgoing)
        if state is None:
            return
        assert isinstance(state, _Outgoing)
        if not state.done:
            raise OutOfOrderError(f"RECEIVED for {state.offer.transfer!r} before DONE",
                                  remote_text="RECEIVED before DONE")
        self._mine.finish(state.offer.transfer)
        self._events.append(TransferReceived(state.offer.transfer))

    # -- both directions

    def send_cancel(self, transfer: str, offered_by: str, code: str, text: str) -> None:
        """Abandon a transfer in either direction (``offered_by``: "hub" or "agent").

        ``text`` goes to the peer: keep internals out of it.

        Raises:
            UsageError: no such transfer.
        """
        self._require_open("send CANCEL")
        table = self._mine if offered_by == self.role else self._theirs
        if transfer not in table.live:
            raise UsageError(f"no transfer {transfer!r} offered by the {offered_by}")
        table.finish(transfer)
        self._send(MessageType.CANCEL, {"transfer": transfer, "offered_by": offered_by,
                                        "code": code, "text": text[:MAX_TEXT_CHARS]})

    def _on_cancel(self, msg: Message) -> None:
        h = msg.header
        table = self._mine if h["offered_by"] == self.role else self._theirs
        if h["transfer"] not in table.live:
            if h["transfer"] in table.recent:
                return
            raise OutOfOrderError(f"CANCEL of unknown transfer {h['transfer']!r}",
                                  remote_text="CANCEL for unknown transfer")
        table.finish(h["transfer"])
        self._events.append(TransferCancelled(h["transfer"], h["offered_by"], h["code"],
                                              h["text"]))

    def send_heartbeat(self, id: int) -> None:
        """Queue a HEARTBEAT; the peer answers HEARTBEAT_ACK with the same ``id``."""
        self._require_open("send HEARTBEAT")
        self._send(MessageType.HEARTBEAT, {"id": id})

    def _on_heartbeat(self, msg: Message) -> None:
        self._send(MessageType.HEARTBEAT_ACK, {"id": msg.header["id"]})
        self._events.append(HeartbeatReceived(msg.header["id"]))

    def _on_heartbeat_ack(self, msg: Message) -> None:
        self._events.append(HeartbeatAcked(msg.header["id"]))
