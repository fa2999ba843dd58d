"""Live sync protocol, sans-I/O: bytes in, events and bytes out (docs/live-protocol.md).

The two sides talk by piping one's ``data_to_send()`` into the other's ``receive_data()``;
no sockets, no sleeps: time is a ``FakeClock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle.sync import (
    HUB_LOG_BURST_MESSAGES,
    LOG_BURST_MESSAGES,
    LOG_MESSAGES_PER_SECOND,
    MAX_TRANSFERS,
    AckReceived,
    AgentSide,
    Authenticated,
    ChallengeReceived,
    ChunkReceived,
    Connection,
    Event,
    HeartbeatAcked,
    HeartbeatReceived,
    HelloReceived,
    HubSide,
    LogReceived,
    MessageType,
    Offer,
    OfferReceived,
    Part,
    PeerError,
    Refused,
    ResumeRequested,
    TransferCancelled,
    TransferDone,
    TransferReceived,
    TransferReceiver,
    Welcomed,
    auth_message,
    decode_message,
    encode_message,
)
from bundle.sync.errors import (
    AuthError,
    ConnectionClosedError,
    LogRateError,
    MalformedError,
    NotAuthenticatedError,
    OutOfOrderError,
    OversizedError,
    ProtocolError,
    RateLimitedError,
    RevokedAgentError,
    SyncError,
    TransferError,
    UnknownAgentError,
    UnknownTypeError,
    UsageError,
    VersionError,
    WrongHubError,
)
from bundle.sync.messages import (
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    MAX_LOG_LINE_BYTES,
    encode_chunk,
)
from signing.keys import SigningKey

HUB_ID = "hub-main"
AGENT_ID = "plant-a-01"
NONCE = bytes(range(32))
OTHER_NONCE = bytes(range(1, 33))
BINDING = hashlib.sha256(b"hub certificate DER").digest()
AGENT_KEY = SigningKey(bytes(32 * [7]))
OTHER_KEY = SigningKey(bytes(32 * [9]))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class MemorySink:
    parts: dict[int, bytearray] = field(default_factory=dict)

    def write(self, part: int, data: bytes | memoryview) -> None:
        self.parts.setdefault(part, bytearray()).extend(data)

    def joined(self) -> bytes:
        return b"".join(bytes(self.parts[i]) for i in sorted(self.parts))


def pipe(src: Connection, dst: Connection) -> list[Event]:
    for message in src.data_to_send():
        dst.receive_data(message)
    return dst.events_received()


def connect(clock: FakeClock | None = None, *, agent_key: SigningKey = AGENT_KEY,
            hub_binding: bytes = BINDING, agent_binding: bytes = BINDING,
            **agent_kwargs: object) -> tuple[HubSide, AgentSide]:
    clock = clock or FakeClock()
    hub = HubSide(HUB_ID, binding=hub_binding, clock=clock)
    agent = AgentSide(AGENT_ID, HUB_ID, agent_key, binding=agent_binding, clock=clock,
                      **agent_kwargs)  # type: ignore[arg-type]
    agent.send_hello()
    assert pipe(agent, hub) == [HelloReceived(AGENT_ID, agent.version)]
    hub.challenge(AGENT_KEY.public, NONCE, now=1_700_000_000)
    assert pipe(hub, agent) == [ChallengeReceived(HUB_ID, 1_700_000_000)]
    return hub, agent


def open_pair(clock: FakeClock | None = None, **agent_kwargs: object) -> tuple[HubSide, AgentSide]:
    hub, agent = connect(clock, **agent_kwargs)  # type: ignore[arg-type]
    assert pipe(agent, hub) == [Authenticated(AGENT_ID)]
    assert pipe(hub, agent) == [Welcomed(30)]
    assert hub.is_open and agent.is_open
    return hub, agent


def make_offer(data: bytes, transfer: str = "t1", name: str = "billing-2.4.0.tgb",
               parts: tuple[int, ...] = ()) -> Offer:
    cut, pos = [], 0
    for size in parts:
        cut.append(Part(size, hashlib.sha256(data[pos:pos + size]).hexdigest()))
        pos += size
    return Offer(transfer, name, len(data), hashlib.sha256(data).hexdigest(), tuple(cut))


def raw(mtype: int, header: object, body: bytes = b"", *, header_bytes: bytes | None = None
        ) -> bytes:
    payload = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack(">BH", mtype, len(payload)) + payload + body


def last_message(conn: Connection) -> tuple[MessageType, dict[str, object]]:
    out = conn.data_to_send()
    assert out, "nothing was queued"
    msg = decode_message(out[-1])
    return msg.type, dict(msg.header)


@dataclass
class Transfer:
    """Drives one file from ``sender`` to ``receiver`` the way the asyncio layers will."""

    sender: Connection
    receiver: Connection
    data: bytes
    sink: MemorySink = field(default_factory=MemorySink)
    sent_offsets: list[int] = field(default_factory=list)
    acked: int = 0

    def open(self, offer: Offer, existing: bytes = b"") -> TransferReceiver:
        self.sender.send_offer(offer)
        assert pipe(self.sender, self.receiver) == [OfferReceived(offer)]
        rx = TransferReceiver(offer, self.sink)
        rx.absorb_existing(existing)
        self.receiver.send_resume(offer.transfer, rx.offset)
        assert pipe(self.receiver, self.sender) == [ResumeRequested(offer.transfer, rx.offset)]
        self.acked = rx.offset
        return rx

    def send_chunks(self, rx: TransferReceiver, start: int, count: int | None = None,
                    chunk: int = MAX_CHUNK_BYTES) -> int:
        offset, n = start, 0
        tid = rx.offer.transfer
        while offset < len(self.data) and (count is None or n < count):
            piece = self.data[offset:offset + chunk]
            self.sender.send_chunk(tid, offset, piece)
            self.sent_offsets.append(offset)
            for event in pipe(self.sender, self.receiver):
                assert isinstance(event, ChunkReceived)
                rx.write(event.offset, event.data)
            self.receiver.send_ack(tid, rx.offset)  # the layer acks after fsync
            assert pipe(self.receiver, self.sender) == [AckReceived(tid, rx.offset)]
            self.acked = rx.offset
            offset += len(piece)
            n += 1
        return offset

    def finish(self, rx: TransferReceiver) -> None:
        tid = rx.offer.transfer
        self.sender.send_done(tid)
        assert pipe(self.sender, self.receiver) == [TransferDone(tid)]
        rx.finish()
        self.receiver.send_received(tid)
        assert pipe(self.receiver, self.sender) == [TransferReceived(tid)]


# --- happy path ---------------------------------------------------------------------------

def test_full_session_hub_and_agent() -> None:
    hub, agent = open_pair()
    bundle = bytes(range(256)) * (10 * 1024) + b"tail"  # 2.5 MiB + 4 bytes: three chunks
    t = Transfer(hub, agent, bundle)
    rx = t.open(make_offer(bundle))
    t.send_chunks(rx, 0)
    t.finish(rx)
    assert t.sink.joined() == bundle
    assert t.sent_offsets == [0, MAX_CHUNK_BYTES, 2 * MAX_CHUNK_BYTES]

    # Step logs flow live, in order, with their sequence numbers.
    agent.send_log("billing-2.4.0", 0, 1, "stdout", "migrating 12 tables\n")
    agent.send_log("billing-2.4.0", 0, 2, "stderr", "warning: ünïcode ok\n")
    assert pipe(agent, hub) == [
        LogReceived("billing-2.4.0", 0, 1, "stdout", "migrating 12 tables\n"),
        LogReceived("billing-2.4.0", 0, 2, "stderr", "warning: ünïcode ok\n"),
    ]

    # The result file goes back with the same mechanics, reversed.
    result = b"result bytes " * 5000
    r = Transfer(agent, hub, result)
    rrx = r.open(make_offer(result, transfer="r1", name="billing-2.4.0.result.tgr"))
    r.send_chunks(rrx, 0, chunk=16 * 1024)
    r.finish(rrx)
    assert r.sink.joined() == result

    # Heartbeats, both ways.
    agent.send_heartbeat(41)
    assert pipe(agent, hub) == [HeartbeatReceived(41)]
    assert pipe(hub, agent) == [HeartbeatAcked(41)]
    hub.send_heartbeat(7)
    assert pipe(hub, agent) == [HeartbeatReceived(7)]
    assert pipe(agent, hub) == [HeartbeatAcked(7)]
    assert hub.is_open and agent.is_open


def test_result_messages_use_result_types() -> None:
    _hub, agent = open_pair()
    agent.send_offer(make_offer(b"x" * 10, transfer="r1", name="a.tgr"))
    (message,) = agent.data_to_send()
    assert decode_message(message).type is MessageType.RESULT_OFFER


def test_split_file_is_written_per_part_and_each_part_is_checked() -> None:
    hub, agent = open_pair()
    data = bytes(range(200)) * 50  # 10,000 bytes cut 4,000 / 4,000 / 2,000
    t = Transfer(hub, agent, data)
    rx = t.open(make_offer(data, parts=(4000, 4000, 2000)))
    t.send_chunks(rx, 0, chunk=3000)  # chunks straddle part boundaries
    t.finish(rx)
    assert [len(t.sink.parts[i]) for i in range(3)] == [4000, 4000, 2000]
    assert t.sink.joined() == data


def test_corrupt_part_is_caught_at_its_end_not_at_the_end_of_the_file() -> None:
    data = bytes(range(200)) * 50
    offer = make_offer(data, parts=(4000, 4000, 2000))
    rx = TransferReceiver(offer, MemorySink())
    rx.write(0, data[:4000])
    bad = bytearray(data[4000:8000])
    bad[100] ^= 1
    with pytest.raises(TransferError, match="part 001"):
        rx.write(4000, bytes(bad))


def test_whole_file_digest_is_checked_on_finish() -> None:
    data = b"a" * 1000
    offer = Offer("t1", "a.tgb", 1000, hashlib.sha256(b"b" * 1000).hexdigest())
    rx = TransferReceiver(offer, MemorySink())
    rx.write(0, data)
    with pytest.raises(TransferError, match="SHA-256"):
        rx.finish()
    short = TransferReceiver(make_offer(data), MemorySink())
    short.write(0, data[:10])
    with pytest.raises(TransferError, match="10 of 1000"):
        short.finish()


@pytest.mark.parametrize(("offset", "size", "error"), [
    (5, 10, OutOfOrderError),   # gap
    (0, 2000, OversizedError),  # past the offered size
])
def test_transfer_receiver_refuses_bad_chunks(offset: int, size: int,
                                              error: type[SyncError]) -> None:
    sink = MemorySink()
    rx = TransferReceiver(make_offer(b"z" * 1000), sink)
    with pytest.raises(error):
        rx.write(offset, b"z" * size)
    assert rx.offset == 0 and not sink.parts  # nothing written


def test_bytes_altered_on_the_wire_are_caught_and_the_file_is_offered_again() -> None:
    hub, agent = open_pair()
    data = bytes(range(256)) * 40
    offer = make_offer(data)
    hub.send_offer(offer)
    pipe(hub, agent)
    sink = MemorySink()
    rx = TransferReceiver(offer, sink)
    agent.send_resume("t1", 0)
    pipe(agent, hub)
    hub.send_chunk("t1", 0, data)
    hub.send_done("t1")
    (chunk_msg, done_msg) = hub.data_to_send()
    tampered = bytearray(chunk_msg)
    tampered[-1] ^= 0x01  # one bit of the body flips in transit
    agent.receive_data(bytes(tampered))
    agent.receive_data(done_msg)
    for event in agent.events_received():
        if isinstance(event, ChunkReceived):
            rx.write(event.offset, event.data)
    with pytest.raises(TransferError) as info:
        rx.finish()
    agent.send_cancel("t1", "hub", info.value.code, info.value.remote_text)
    assert pipe(agent, hub) == [TransferCancelled("t1", "hub", "corrupt", "file digest mismatch")]
    with pytest.raises(UsageError):
        agent.send_received("t1")  # nothing can be reported as received

    t = Transfer(hub, agent, data)  # the hub offers it again, from 0
    rx2 = t.open(offer)
    t.send_chunks(rx2, 0)
    t.finish(rx2)
    assert t.sink.joined() == data


# --- resume -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunks_before_drop", [0, 1, 3])
def test_dropped_connection_resumes_at_the_acknowledged_offset(chunks_before_drop: int) -> None:
    data = hashlib.sha256(b"seed").digest() * (5 * MAX_CHUNK_BYTES // 32 + 100)  # ≈ 5 MiB
    offer = make_offer(data)
    hub, agent = open_pair()
    first = Transfer(hub, agent, data)
    rx = first.open(offer)
    first.send_chunks(rx, 0, count=chunks_before_drop)
    stored = first.sink.joined()  # what the agent fsynced (== acked)
    assert len(stored) == first.acked == chunks_before_drop * MAX_CHUNK_BYTES
    # One more chunk is in flight when the connection drops: it never arrives.
    if chunks_before_drop:
        hub.send_chunk("t1", first.acked, data[first.acked:first.acked + MAX_CHUNK_BYTES])
        hub.data_to_send()

    # New connection, new protocol objects: the agent rehashes what it holds and resumes.
    hub2, agent2 = open_pair()
    second = Transfer(hub2, agent2, data)
    rx2 = second.open(offer, existing=stored)
    assert rx2.offset == len(stored)
    second.send_chunks(rx2, rx2.offset)
    second.finish(rx2)

    sent_again = [o for o in second.sent_offsets if o < len(stored)]
    assert sent_again == []  # nothing already received is sent again
    assert sum(len(v) for v in second.sink.parts.values()) == len(data) - len(stored)
    assert stored + second.sink.joined() == data


def test_resume_after_the_last_byte_goes_straight_to_done() -> None:
    data = b"q" * 100
    hub, agent = open_pair()
    t = Transfer(hub, agent, data)
    rx = t.open(make_offer(data), existing=data)
    assert rx.offset == 100
    t.finish(rx)


# --- malformed messages -------------------------------------------------------------------

HEARTBEAT = int(MessageType.HEARTBEAT)
CHUNK = int(MessageType.CHUNK)
LOG = int(MessageType.LOG)

MALFORMED = [
    # (case, message bytes, error, wire code)
    ("empty", b"", MalformedError, "malformed"),
    ("prefix cut", b"\x40\x00", MalformedError, "malformed"),
    ("header cut", raw(HEARTBEAT, None, header_bytes=b'{"id":1}')[:-2], MalformedError,
     "malformed"),
    ("not JSON", raw(HEARTBEAT, None, header_bytes=b"{id: 1}"), MalformedError, "malformed"),
    ("not UTF-8", raw(HEARTBEAT, None, header_bytes=b'{"id":"\xff"}'), MalformedError,
     "malformed"),
    ("duplicate key", raw(HEARTBEAT, None, header_bytes=b'{"id":1,"id":2}'), MalformedError,
     "malformed"),
    ("float", raw(HEARTBEAT, None, header_bytes=b'{"id":1.5}'), MalformedError, "malformed"),
    ("header not an object", raw(HEARTBEAT, [1]), MalformedError, "malformed"),
    ("missing key", raw(HEARTBEAT, {}), MalformedError, "malformed"),
    ("extra key", raw(HEARTBEAT, {"id": 1, "x": 2}), MalformedError, "malformed"),
    ("wrong field type", raw(HEARTBEAT, {"id": "1"}), MalformedError, "malformed"),
    ("negative offset", raw(CHUNK, {"transfer": "t1", "offset": -1}, b"x"), MalformedError,
     "malformed"),
    ("body where none allowed", raw(HEARTBEAT, {"id": 1}, b"x"), MalformedError, "malformed"),
    ("log not UTF-8", raw(LOG, {"bundle_id": "b", "step": 0, "seq": 1, "stream": "stdout"},
                          b"\xff\xfe"), MalformedError, "malformed"),
    ("unknown type", raw(0x99, {"id": 1}), UnknownTypeError, "unknown-type"),
    ("header too large", struct.pack(">BH", HEARTBEAT, MAX_HEADER_BYTES + 1)
     + b" " * (MAX_HEADER_BYTES + 1), OversizedError, "oversized"),
    ("chunk too large", raw(CHUNK, {"transfer": "t1", "offset": 0}, b"x" * (MAX_CHUNK_BYTES + 1)),
     OversizedError, "oversized"),
    ("log line too large", raw(LOG, {"bundle_id": "b", "step": 0, "seq": 1, "stream": "stdout"},
                               b"x" * (MAX_LOG_LINE_BYTES + 1)), OversizedError, "oversized"),
]


@pytest.mark.parametrize(("case", "data", "error", "code"), MALFORMED,
                         ids=[c[0] for c in MALFORMED])
@pytest.mark.parametrize("side", ["hub", "agent"])
def test_malformed_message_raises_and_sends_error(side: str, case: str, data: bytes,
                                                  error: type[SyncError], code: str) -> None:
    hub, agent = open_pair()
    conn: Connection = hub if side == "hub" else agent
    with pytest.raises(error) as info:
        conn.receive_data(data)
    assert isinstance(info.value, ProtocolError)
    assert last_message(conn) == (MessageType.ERROR,
                                  {"code": code, "text": info.value.remote_text})
    assert conn.is_closed and conn.close_code == info.value.close_code
    assert conn.events_received() == []
    with pytest.raises(ConnectionClosedError):  # nothing more is read
        conn.receive_data(encode_message(MessageType.HEARTBEAT, {"id": 1}))
    assert conn.data_to_send() == []


def test_error_text_for_the_peer_leaves_out_internals() -> None:
    hub, _agent = open_pair()
    with pytest.raises(OutOfOrderError) as info:
        hub.receive_data(encode_message(MessageType.ACK, {"transfer": "secret-id", "offset": 0}))
    _, header = last_message(hub)
    assert "secret-id" in str(info.value)  # for the local operator
    assert "secret-id" not in str(header["text"])


# --- order --------------------------------------------------------------------------------

def chunk(offset: int, data: bytes, transfer: str = "t1") -> bytes:
    return encode_message(MessageType.CHUNK, {"transfer": transfer, "offset": offset}, data)


def offered_and_resumed(size: int = 100, resume: bool = True) -> tuple[HubSide, AgentSide]:
    hub, agent = open_pair()
    hub.send_offer(make_offer(b"d" * size))
    pipe(hub, agent)
    if resume:
        agent.send_resume("t1", 0)
        pipe(agent, hub)
    return hub, agent


def chunk_before_offer(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x", transfer="t9"))


def chunk_before_resume(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x"))


def chunk_skips_ahead(agent: AgentSide) -> None:
    agent.receive_data(chunk(10, b"x"))


def chunk_overlaps(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x" * 50))
    agent.receive_data(chunk(40, b"x" * 10))


def chunk_repeats(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x" * 50))
    agent.receive_data(chunk(0, b"x" * 50))


def chunk_beyond_size(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x" * 101))


def chunk_empty(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b""))


def done_early(agent: AgentSide) -> None:
    agent.receive_data(chunk(0, b"x" * 50))
    agent.receive_data(encode_message(MessageType.DONE, {"transfer": "t1"}))


def offer_twice(agent: AgentSide) -> None:
    agent.receive_data(encode_message(MessageType.OFFER, make_offer(b"d" * 100).to_header()))


def offer_result_from_hub(agent: AgentSide) -> None:
    offer = make_offer(b"d", transfer="t2", name="x.tgr")
    agent.receive_data(encode_message(MessageType.OFFER, offer.to_header()))


def too_many_offers(agent: AgentSide) -> None:
    for i in range(MAX_TRANSFERS):
        offer = make_offer(b"d", transfer=f"n{i}")
        agent.receive_data(encode_message(MessageType.OFFER, offer.to_header()))


def result_chunk_to_agent(agent: AgentSide) -> None:
    agent.receive_data(encode_message(MessageType.RESULT_CHUNK, {"transfer": "t1", "offset": 0},
                                      b"x"))


def hello_after_auth(agent: AgentSide) -> None:
    agent.receive_data(encode_message(MessageType.CHALLENGE, {
        "nonce": NONCE, "hub_id": HUB_ID, "time": 0}))


def cancel_unknown(agent: AgentSide) -> None:
    agent.receive_data(encode_message(MessageType.CANCEL, {
        "transfer": "t9", "offered_by": "hub", "code": "x", "text": ""}))


AGENT_ORDER = [
    ("chunk before offer", chunk_before_offer, OutOfOrderError, "out-of-order"),
    ("chunk before resume", chunk_before_resume, OutOfOrderError, "out-of-order"),
    ("chunk skips ahead", chunk_skips_ahead, OutOfOrderError, "out-of-order"),
    ("chunk overlaps", chunk_overlaps, OutOfOrderError, "out-of-order"),
    ("chunk repeats", chunk_repeats, OutOfOrderError, "out-of-order"),
    ("chunk beyond size", chunk_beyond_size, OversizedError, "oversized"),
    ("empty chunk", chunk_empty, MalformedError, "malformed"),
    ("done before every byte", done_early, OutOfOrderError, "out-of-order"),
    ("offer twice", offer_twice, OutOfOrderError, "out-of-order"),
    ("hub offers a result file", offer_result_from_hub, MalformedError, "malformed"),
    ("too many transfers", too_many_offers, OversizedError, "oversized"),
    ("result chunk sent to the agent", result_chunk_to_agent, OutOfOrderError, "out-of-order"),
    ("challenge after auth", hello_after_auth, OutOfOrderError, "out-of-order"),
    ("cancel of unknown transfer", cancel_unknown, OutOfOrderError, "out-of-order"),
]


@pytest.mark.parametrize(("case", "act", "error", "code"), AGENT_ORDER,
                         ids=[c[0] for c in AGENT_ORDER])
def test_agent_refuses_out_of_order_messages(case: str, act: Callable[[AgentSide], None],
                                             error: type[SyncError], code: str) -> None:
    _hub, agent = offered_and_resumed(resume=case != "chunk before resume")
    with pytest.raises(error):
        act(agent)
    received_before = [e for e in agent.events_received() if isinstance(e, ChunkReceived)]
    assert sum(len(e.data) for e in received_before) <= 100  # never past the offer
    mtype, header = last_message(agent)
    assert (mtype, header["code"]) == (MessageType.ERROR, code)
    assert agent.is_closed


def ack(offset: int) -> bytes:
    return encode_message(MessageType.ACK, {"transfer": "t1", "offset": offset})


HUB_ORDER = [
    ("ack beyond sent", lambda hub: hub.receive_data(ack(1)), OutOfOrderError),
    ("resume twice", lambda hub: hub.receive_data(encode_message(
        MessageType.RESUME, {"transfer": "t1", "offset": 0})), OutOfOrderError),
    ("received before done", lambda hub: hub.receive_data(encode_message(
        MessageType.RECEIVED, {"transfer": "t1"})), OutOfOrderError),
    ("offer (bundle) from the agent", lambda hub: hub.receive_data(encode_message(
        MessageType.OFFER, make_offer(b"x", "t7").to_header())), OutOfOrderError),
    ("result chunk before result offer", lambda hub: hub.receive_data(encode_message(
        MessageType.RESULT_CHUNK, {"transfer": "r1", "offset": 0}, b"x")), OutOfOrderError),
    ("result offer of a bundle file", lambda hub: hub.receive_data(encode_message(
        MessageType.RESULT_OFFER, make_offer(b"x", "r1").to_header())), MalformedError),
]


@pytest.mark.parametrize(("case", "act", "error"), HUB_ORDER, ids=[c[0] for c in HUB_ORDER])
def test_hub_refuses_out_of_order_messages(case: str, act: Callable[[HubSide], None],
                                           error: type[SyncError]) -> None:
    hub, _ = offered_and_resumed()
    with pytest.raises(error):
        act(hub)
    assert last_message(hub)[0] is MessageType.ERROR and hub.is_closed


def test_resume_past_the_offered_size_is_refused() -> None:
    hub, _ = offered_and_resumed(resume=False)
    with pytest.raises(OversizedError):
        hub.receive_data(encode_message(MessageType.RESUME, {"transfer": "t1", "offset": 101}))


# --- before authentication ----------------------------------------------------------------

def test_hub_refuses_everything_but_hello_before_authentication() -> None:
    cases: list[tuple[MessageType, dict[str, object], bytes]] = [
        (MessageType.LOG, {"bundle_id": "b", "step": 0, "seq": 1, "stream": "stdout"}, b"x"),
        (MessageType.HEARTBEAT, {"id": 1}, b""),
        (MessageType.RESULT_OFFER, make_offer(b"x", "r1", "a.tgr").to_header(), b""),
        (MessageType.ACK, {"transfer": "t1", "offset": 0}, b""),
    ]
    for mtype, header, body in cases:
        hub = HubSide(HUB_ID)
        with pytest.raises(NotAuthenticatedError):
            hub.receive_data(encode_message(mtype, header, body))
        assert last_message(hub)[1]["code"] == "unauthenticated"
        assert hub.events_received() == []


def test_hub_refuses_messages_after_hello_before_auth_and_auth_before_challenge() -> None:
    hub = HubSide(HUB_ID)
    hub.receive_data(encode_message(MessageType.HELLO, {
        "version": 1, "agent_id": AGENT_ID, "hub_id": HUB_ID}))
    with pytest.raises(OutOfOrderError):  # AUTH without a challenge to answer
        hub.receive_data(encode_message(MessageType.AUTH, {"signature": b"\0" * 64}))
    hub2, _ = connect()
    with pytest.raises(NotAuthenticatedError):
        hub2.receive_data(encode_message(MessageType.HEARTBEAT, {"id": 1}))
    assert not hub2.is_open


def test_agent_refuses_an_offer_before_welcome() -> None:
    _, agent = connect()
    with pytest.raises(NotAuthenticatedError):
        agent.receive_data(encode_message(MessageType.OFFER, make_offer(b"x").to_header()))
    assert last_message(agent)[1]["code"] == "unauthenticated"


def test_actions_before_welcome_are_usage_errors() -> None:
    _, agent = connect()
    with pytest.raises(UsageError):
        agent.send_log("b", 0, 1, "stdout", "x")
    with pytest.raises(UsageError):
        agent.send_offer(make_offer(b"x", "r1", "a.tgr"))


# --- authentication -----------------------------------------------------------------------

def forged_auth(key: SigningKey, *, hub_id: str = HUB_ID, agent_id: str = AGENT_ID,
                nonce: bytes = NONCE, binding: bytes = BINDING) -> bytes:
    signature = key.sign(auth_message(hub_id, agent_id, nonce, binding))
    return encode_message(MessageType.AUTH, {"signature": signature})


AUTH_ATTACKS = [
    ("another key", forged_auth(OTHER_KEY)),
    ("another nonce (replay)", forged_auth(AGENT_KEY, nonce=OTHER_NONCE)),
    ("another hub id", forged_auth(AGENT_KEY, hub_id="hub-evil")),
    ("another agent id", forged_auth(AGENT_KEY, agent_id="plant-b-02")),
    ("another channel binding", forged_auth(AGENT_KEY, binding=b"")),
    ("garbage signature", encode_message(MessageType.AUTH, {"signature": b"\x01" * 64})),
]


@pytest.mark.parametrize(("case", "message"), AUTH_ATTACKS, ids=[c[0] for c in AUTH_ATTACKS])
def test_bad_auth_is_refused(case: str, message: bytes) -> None:
    hub, agent = connect()
    agent.data_to_send()  # the genuine AUTH is lost; the attacker's arrives instead
    with pytest.raises(AuthError):
        hub.receive_data(message)
    assert last_message(hub) == (MessageType.REFUSE,
                                 {"code": "auth-failed", "text": "authentication failed"})
    assert hub.events_received() == [] and not hub.is_open and hub.close_code == 4010


def test_genuine_auth_verifies_and_the_forger_helper_matches_it() -> None:
    hub, agent = connect()
    agent.data_to_send()
    hub.receive_data(forged_auth(AGENT_KEY))
    assert hub.events_received() == [Authenticated(AGENT_ID)]


def test_auth_captured_on_one_connection_is_refused_on_the_next() -> None:
    hub, agent = connect()
    (captured,) = agent.data_to_send()
    hub.receive_data(captured)
    assert hub.is_open
    hub2 = HubSide(HUB_ID, binding=BINDING)
    hub2.receive_data(encode_message(MessageType.HELLO, {
        "version": 1, "agent_id": AGENT_ID, "hub_id": HUB_ID}))
    hub2.challenge(AGENT_KEY.public, OTHER_NONCE, now=0)  # a fresh nonce
    with pytest.raises(AuthError):
        hub2.receive_data(captured)
    assert not hub2.is_open


def test_agent_gets_a_clear_refusal() -> None:
    hub = HubSide(HUB_ID)
    agent = AgentSide(AGENT_ID, HUB_ID, AGENT_KEY)
    agent.send_hello()
    pipe(agent, hub)
    hub.fail(UnknownAgentError(f"agent {AGENT_ID} is not enrolled"))
    assert pipe(hub, agent) == [Refused("unknown-agent", "agent not enrolled")]
    assert agent.is_closed and hub.is_closed and hub.close_code == 4011


def test_an_agent_revoked_while_connected_is_refused() -> None:
    hub, agent = open_pair()
    hub.fail(RevokedAgentError(f"agent {AGENT_ID} revoked by alice"))
    assert pipe(hub, agent) == [Refused("revoked", "agent revoked")]
    assert agent.is_closed and hub.close_code == 4012


def test_hub_refuses_another_protocol_version_and_another_hub_id() -> None:
    hub = HubSide(HUB_ID)
    with pytest.raises(VersionError):
        hub.receive_data(encode_message(MessageType.HELLO, {
            "version": 3, "agent_id": AGENT_ID, "hub_id": HUB_ID}))
    assert last_message(hub) == (MessageType.REFUSE, {"code": "bad-version",
                                                      "text": "the hub speaks versions 1 and 2"})
    hub = HubSide(HUB_ID)
    with pytest.raises(WrongHubError):
        hub.receive_data(encode_message(MessageType.HELLO, {
            "version": 1, "agent_id": AGENT_ID, "hub_id": "hub-other"}))
    assert last_message(hub)[1]["code"] == "wrong-hub"


def test_a_chunk_is_read_straight_into_its_message() -> None:
    hub, _agent = offered_and_resumed(size=10)
    reads: list[int] = []

    def fill(view: memoryview) -> None:
        reads.append(len(view))
        view[:] = b"0123456789"[:len(view)]

    hub.send_chunk_from("t1", 0, 4, fill)
    (message,) = hub.data_to_send()
    assert message == chunk(0, b"0123")  # the same bytes as send_chunk's
    # A message already sent is reused when it has the same length ...
    assert isinstance(message, bytearray)
    hub.send_chunk_from("t1", 4, 4, lambda view: view.__setitem__(slice(None), b"4567"),
                        buffer=message)
    (again,) = hub.data_to_send()
    assert again is message and again == chunk(4, b"4567")
    # ... and a failed read queues nothing and leaves the transfer where it was.

    def broken(view: memoryview) -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        hub.send_chunk_from("t1", 8, 2, broken)
    assert hub.data_to_send() == [] and hub.in_flight("t1") == 8
    with pytest.raises(UsageError):  # over MAX_CHUNK_BYTES: refused before reading
        hub.send_chunk_from("t1", 8, MAX_CHUNK_BYTES + 1, fill)
    with pytest.raises(UsageError):
        encode_chunk(MessageType.ACK, {"transfer": "t1", "offset": 0}, 1, fill)
    assert reads == [4]


def test_agent_refuses_a_challenge_from_another_hub_and_signs_nothing() -> None:
    agent = AgentSide(AGENT_ID, HUB_ID, AGENT_KEY)
    agent.send_hello()
    agent.data_to_send()
    with pytest.raises(WrongHubError):
        agent.receive_data(encode_message(MessageType.CHALLENGE, {
            "nonce": NONCE, "hub_id": "hub-other", "time": 0}))
    out = [decode_message(m) for m in agent.data_to_send()]
    assert [m.type for m in out] == [MessageType.REFUSE]  # no AUTH
    hub = HubSide(HUB_ID)
    hub.receive_data(encode_message(MessageType.HELLO, {
        "version": 1, "agent_id": AGENT_ID, "hub_id": HUB_ID}))
    hub.events_received()
    hub.receive_data(encode_message(out[0].type, dict(out[0].header)))  # the agent's REFUSE
    assert hub.events_received() == [Refused("wrong-hub", "wrong hub")] and hub.is_closed


def test_auth_message_is_domain_separated_and_unambiguous() -> None:
    a = auth_message("ab", "c", NONCE, b"")
    assert a.startswith(b"\x00\x00\x00\x15tiangong-live-auth-v1")
    assert a != auth_message("a", "bc", NONCE, b"")
    assert auth_message("h", "a", NONCE, b"x") != auth_message("h", "a", NONCE, b"")
    with pytest.raises(UsageError):
        auth_message("h", "a", b"short", b"")


# --- logs ---------------------------------------------------------------------------------

def test_agent_log_budget_with_injected_clock() -> None:
    clock = FakeClock()
    hub, agent = open_pair(clock)
    for seq in range(LOG_BURST_MESSAGES):
        agent.send_log("b", 0, seq, "stdout", "x")
    with pytest.raises(LogRateError) as info:
        agent.send_log("b", 0, 9999, "stdout", "x")
    assert info.value.retry_after == pytest.approx(1 / LOG_MESSAGES_PER_SECOND)
    assert agent.log_wait() > 0
    clock.now += info.value.retry_after + 1e-9
    assert agent.log_wait() == 0
    agent.send_log("b", 0, LOG_BURST_MESSAGES, "stdout", "x")
    events = pipe(agent, hub)
    assert [e.seq for e in events if isinstance(e, LogReceived)] == list(
        range(LOG_BURST_MESSAGES + 1))
    assert hub.is_open


def test_hub_cuts_off_an_agent_that_floods_logs() -> None:
    clock = FakeClock()
    hub, agent = open_pair(clock, log_rate=1e9, log_burst=10 * HUB_LOG_BURST_MESSAGES)
    for seq in range(HUB_LOG_BURST_MESSAGES):
        agent.send_log("b", 0, seq, "stdout", "x")
    pipe(agent, hub)
    agent.send_log("b", 0, HUB_LOG_BURST_MESSAGES, "stdout", "x")
    clock.now += 0.5 / LOG_MESSAGES_PER_SECOND  # half a token: still nothing to spend
    with pytest.raises(RateLimitedError):
        pipe(agent, hub)
    assert last_message(hub)[1]["code"] == "rate-limited" and hub.close_code == 4007


def test_hub_accepts_logs_at_the_sustained_rate() -> None:
    clock = FakeClock()
    hub, agent = open_pair(clock, log_rate=1e9, log_burst=10**6)
    for seq in range(HUB_LOG_BURST_MESSAGES + 500):  # past the burst: only the rate holds
        clock.now += 1 / LOG_MESSAGES_PER_SECOND
        agent.send_log("b", 0, seq, "stdout", "x")
        pipe(agent, hub)
    assert hub.is_open


def test_log_too_long_is_a_usage_error() -> None:
    _, agent = open_pair()
    with pytest.raises(UsageError):
        agent.send_log("b", 0, 1, "stdout", "x" * (MAX_LOG_LINE_BYTES + 1))


# --- cancel -------------------------------------------------------------------------------

def test_cancel_in_both_directions_and_late_messages_are_ignored() -> None:
    hub, agent = offered_and_resumed()
    hub.send_chunk("t1", 0, b"d" * 10)
    in_flight = hub.data_to_send()
    agent.send_cancel("t1", "hub", "disk-full", "no space left in inbox")
    assert pipe(agent, hub) == [TransferCancelled("t1", "hub", "disk-full",
                                                  "no space left in inbox")]
    for message in in_flight:  # crossed the cancel on the wire
        agent.receive_data(message)
    assert agent.events_received() == [] and agent.is_open
    with pytest.raises(UsageError):
        hub.send_chunk("t1", 10, b"d")

    agent.send_offer(make_offer(b"r" * 10, "r1", "x.tgr"))
    pipe(agent, hub)
    hub.send_cancel("r1", "agent", "superseded", "")
    assert pipe(hub, agent) == [TransferCancelled("r1", "agent", "superseded", "")]

    # The same id may be offered again later (a retried delivery).
    t = Transfer(hub, agent, b"d" * 100)
    rx = t.open(make_offer(b"d" * 100))
    t.send_chunks(rx, 0)
    t.finish(rx)


def test_peer_error_is_an_event_and_closes() -> None:
    hub, agent = open_pair()
    hub.fail(ProtocolError("layer gave up"))
    assert pipe(hub, agent) == [PeerError("protocol", "protocol error")]
    assert agent.is_closed


# --- local misuse -------------------------------------------------------------------------

def test_sender_api_enforces_the_rules_on_our_side_too() -> None:
    hub, agent = offered_and_resumed()
    with pytest.raises(UsageError):
        hub.send_chunk("t1", 5, b"x")  # wrong offset
    with pytest.raises(UsageError):
        hub.send_chunk("t1", 0, b"x" * 101)  # past the size
    with pytest.raises(UsageError):
        hub.send_chunk("t1", 0, b"x" * (MAX_CHUNK_BYTES + 1))
    with pytest.raises(UsageError):
        hub.send_done("t1")  # bytes remain
    with pytest.raises(UsageError):
        hub.send_offer(make_offer(b"x", "t1"))  # id in use
    with pytest.raises(UsageError):
        hub.send_offer(make_offer(b"x", "r1", "a.tgr"))  # the hub sends bundles
    with pytest.raises(UsageError):
        agent.send_ack("t1", 1)  # nothing received yet
    with pytest.raises(UsageError):
        agent.send_received("t1")  # no DONE
    with pytest.raises(UsageError):
        agent.send_resume("t1", 0)  # resumed already
    hub.send_chunk("t1", 0, b"d" * 60)
    assert hub.in_flight("t1") == 60
    assert hub.data_to_send() and agent.data_to_send() == []


def test_offer_rules() -> None:
    with pytest.raises(MalformedError):
        Offer("t1", "../etc/passwd.tgb", 1, "0" * 64)
    with pytest.raises(MalformedError):
        Offer("t1", "a.tgb", 10, "0" * 64, (Part(4, "0" * 64), Part(4, "0" * 64)))
    with pytest.raises(MalformedError):
        Offer("t1", "a.tgb", 0, "0" * 64)


# --- fuzz ---------------------------------------------------------------------------------

def _fresh(side: str) -> Connection:
    if side == "hub":
        return HubSide(HUB_ID)
    if side == "agent-open":
        return open_pair()[1]
    if side == "hub-open":
        return offered_and_resumed()[0]
    agent = AgentSide(AGENT_ID, HUB_ID, AGENT_KEY)
    agent.send_hello()
    return agent


_TYPES = st.sampled_from([int(t) for t in MessageType] + [0, 0xFF])
_KEYS = st.sampled_from(["id", "transfer", "offset", "code", "text", "nonce", "hub_id",
                         "agent_id", "version", "size", "name"])


def _json_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(_KEYS, inner, max_size=5))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=20),
    _json_containers,
    max_leaves=10,
)
_SHAPED = st.builds(
    lambda t, h, body: struct.pack(">BH", t, len(h)) + h + body,
    _TYPES, _JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64),
)

_TID = st.sampled_from(["t1", "t2", "r1"])
_OFF = st.integers(0, 200)
_VALID = st.one_of(
    st.builds(lambda t, o, b: encode_message(MessageType.CHUNK, {"transfer": t, "offset": o}, b),
              _TID, _OFF, st.binary(min_size=1, max_size=120)),
    st.builds(lambda t, o, b: encode_message(
        MessageType.RESULT_CHUNK, {"transfer": t, "offset": o}, b),
        _TID, _OFF, st.binary(min_size=1, max_size=120)),
    st.builds(lambda m, t, o: encode_message(m, {"transfer": t, "offset": o}),
              st.sampled_from([MessageType.ACK, MessageType.RESUME]), _TID, _OFF),
    st.builds(lambda m, t: encode_message(m, {"transfer": t}),
              st.sampled_from([MessageType.DONE, MessageType.RECEIVED, MessageType.RESULT_DONE]),
              _TID),
    st.builds(lambda m, t, n: encode_message(m, make_offer(b"d" * 100, t, n).to_header()),
              st.sampled_from([MessageType.OFFER, MessageType.RESULT_OFFER]), _TID,
              st.sampled_from(["a.tgb", "a.tgr"])),
    st.builds(lambda t, by: encode_message(MessageType.CANCEL, {
        "transfer": t, "offered_by": by, "code": "x", "text": "y"}),
        _TID, st.sampled_from(["hub", "agent"])),
    st.builds(lambda m, i: encode_message(m, {"id": i}),
              st.sampled_from([MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK]),
              st.integers(0, 9)),
    st.just(encode_message(MessageType.LOG, {"bundle_id": "b", "step": 0, "seq": 1,
                                             "stream": "stdout"}, b"line")),
    st.just(encode_message(MessageType.HELLO, {"version": 1, "agent_id": AGENT_ID,
                                               "hub_id": HUB_ID})),
    st.just(forged_auth(AGENT_KEY)),
    st.just(encode_message(MessageType.WELCOME, {"heartbeat": 30})),
)


@settings(derandomize=True, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(side=st.sampled_from(["hub", "agent", "hub-open", "agent-open"]),
       messages=st.lists(st.binary(max_size=200) | _SHAPED | _VALID, min_size=1,
                         max_size=6))
def test_arbitrary_bytes_raise_only_sync_errors(side: str, messages: list[bytes]) -> None:
    conn = _fresh(side)
    for message in messages:
        with contextlib.suppress(SyncError):
            conn.receive_data(message)
        conn.events_received()
        for out in conn.data_to_send():
            decode_message(out)  # whatever we answer is itself well-formed


def test_a_chunk_body_is_a_read_only_view_of_the_message_not_a_copy() -> None:
    """File bytes are not copied out of the WebSocket message (a 1 MiB copy per chunk was the
    biggest cost left in the agent's event loop); the view cannot change the message, and
    bodies that are read as text stay ``bytes``."""
    data = bytes(range(256)) * 4096
    message = encode_message(MessageType.CHUNK, {"transfer": "t-1", "offset": 0}, data)
    body = decode_message(message).body
    assert isinstance(body, memoryview) and body.readonly and body.obj is message
    assert body == data
    log = encode_message(MessageType.LOG, {"bundle_id": "b-1", "step": 0, "seq": 0,
                                           "stream": "stdout"}, b"line")
    assert decode_message(log).body == b"line" and isinstance(decode_message(log).body, bytes)


@pytest.mark.parametrize("beat", [0, 1, 9, 10, 123_456, 2**63 - 1])
@pytest.mark.parametrize("mtype", [MessageType.HEARTBEAT, MessageType.HEARTBEAT_ACK])
def test_heartbeats_skip_the_json_codec_with_the_same_bytes_and_values(
        mtype: MessageType, beat: int) -> None:
    """A heartbeat and its ACK in canonical form are written and read without the JSON
    encoder and parser: the same bytes as the general encoder, the same header read back."""
    data = encode_message(mtype, {"id": beat})
    head = json.dumps({"id": beat}, separators=(",", ":")).encode()
    assert data == struct.pack(">BH", int(mtype), len(head)) + head
    msg = decode_message(data)
    assert (msg.type, msg.header, msg.body) == (mtype, {"id": beat}, b"")


def _raw(mtype: MessageType, head: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">BH", int(mtype), len(head)) + head + body


@pytest.mark.parametrize(("head", "body", "expected"), [
    (b'{"id": 5}', b"", 5),  # not canonical: the general parser reads it
    (b'{ "id":7 }', b"", 7),
    (b'{"id":-1}', b"", MalformedError),
    (b'{"id":9223372036854775808}', b"", MalformedError),  # 2**63
    (b'{"id":99999999999999999999}', b"", MalformedError),
    (b'{"id":01}', b"", MalformedError),
    (b'{"id":true}', b"", MalformedError),
    (b'{"id":1.0}', b"", MalformedError),
    (b'{"id":1,"x":2}', b"", MalformedError),
    (b'{"id":1}', b"x", MalformedError),  # a heartbeat carries no body
])
def test_heartbeats_not_in_canonical_form_get_the_general_checks(
        head: bytes, body: bytes, expected: int | type[Exception]) -> None:
    data = _raw(MessageType.HEARTBEAT, head, body)
    if isinstance(expected, int):
        assert decode_message(data).header == {"id": expected}
    else:
        with pytest.raises(expected):
            decode_message(data)


@pytest.mark.parametrize("beat", [-1, 2**63, True, "1"])
def test_a_heartbeat_id_out_of_range_is_not_encoded(beat: object) -> None:
    with pytest.raises(UsageError):
        encode_message(MessageType.HEARTBEAT_ACK, {"id": beat})
