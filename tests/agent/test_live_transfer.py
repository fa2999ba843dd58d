"""agent.live: bundles in through the worker thread of bundle.live_file, against a scripted hub
(HubSide on a real socket on 127.0.0.1): every byte checked before the inbox sees the file,
ACKs only for fsynced bytes and in order, a bad part or a flipped byte refused with nothing
in the inbox and no partial file left (the whole path with a real hub: tests/e2e/test_live.py).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from agent import heap, live
from agent.config import AgentConfig
from bundle.live_file import MAX_PENDING_BYTES, FileReceiver
from bundle.sync import (
    MAX_CHUNK_BYTES,
    AckReceived,
    HelloReceived,
    HubSide,
    Offer,
    Part,
    ResumeRequested,
    TransferCancelled,
    TransferReceived,
)
from tests.agent.test_live import _FakeHub, _Keys, _run_client
from tests.e2e.conftest import wait_for

DEADLINE = 60.0  # seconds for anything that crosses the socket
MiB = 1024 * 1024


class _ScriptedHub(_FakeHub):
    """A hub (HubSide) on 127.0.0.1 that offers one file once the agent is welcomed and
    sends ``wire`` (the bytes as they go out, maybe corrupted) in CHUNKs, then DONE;
    records ACK offsets and how the transfer ended."""

    def __init__(self, offer: Offer, wire: bytes, drop_at: int | None = None) -> None:
        self.offer, self.wire = offer, wire
        self.drop_at = drop_at  # the first connection is closed after sending these bytes
        self.resumes: list[int] = []  # RESUME offsets, one per connection that asked
        self.acks: list[int] = []
        self.ended: list[Any] = []  # TransferReceived / TransferCancelled
        super().__init__(_Keys.identity, silent=False)

    async def _handler(self, ws: ServerConnection) -> None:
        conn = HubSide("hub-test", heartbeat=30)
        async for message in ws:
            assert isinstance(message, bytes)
            was_open = conn.is_open
            conn.receive_data(message)
            if conn.is_open and not was_open and not self.ended:
                conn.send_offer(self.offer)
            for event in conn.events_received():
                if isinstance(event, HelloReceived):
                    conn.challenge(self.key.public, os.urandom(32), int(time.time()))
                elif isinstance(event, ResumeRequested):
                    self.resumes.append(event.offset)
                    for offset in range(event.offset, len(self.wire), MAX_CHUNK_BYTES):
                        if self.drop_at is not None and offset >= self.drop_at:
                            self.drop_at = None
                            await ws.close()  # the connection is lost mid-transfer
                            return
                        conn.send_chunk(event.transfer, offset,
                                        self.wire[offset:offset + MAX_CHUNK_BYTES])
                        for out in conn.data_to_send():
                            await ws.send(out)
                    conn.send_done(event.transfer)
                elif isinstance(event, AckReceived):
                    self.acks.append(event.offset)
                elif isinstance(event, TransferReceived | TransferCancelled):
                    self.ended.append(event)
            for out in conn.data_to_send():
                await ws.send(out)


def _deliver(tmp_path: Path, offer: Offer, wire: bytes,
             drop_at: int | None = None) -> tuple[_ScriptedHub, AgentConfig]:
    (tmp_path / "inbox").mkdir()
    hub = _ScriptedHub(offer, wire, drop_at)
    client, stop, thread = _run_client(tmp_path, hub)
    try:
        wait_for(lambda: bool(hub.ended), DEADLINE, "the agent to answer the transfer")
    finally:
        stop.set()
        thread.join(DEADLINE)
        hub.stop.set()
        hub.thread.join(DEADLINE)
    assert not thread.is_alive()
    return hub, client.config


def _offer(data: bytes, parts: list[bytes] | None = None) -> Offer:
    split = tuple(Part(len(p), hashlib.sha256(p).hexdigest()) for p in parts or [])
    return Offer("b-1", "billing-2.4.0.tgb", len(data), hashlib.sha256(data).hexdigest(), split)


def _heap_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the live client's calls of agent.heap (in order), which still run."""
    calls: list[str] = []

    def recorded(name: str) -> Callable[[], bool]:
        real: Callable[[], bool] = getattr(heap, name)

        def call() -> bool:
            calls.append(name)
            return real()

        return call

    for name in ("keep_freed_blocks", "give_back"):
        monkeypatch.setattr(heap, name, recorded(name))
    return calls


def read_sizes(monkeypatch: pytest.MonkeyPatch, queues: list[int] | None = None
               ) -> list[int | None]:
    """Record what :func:`agent.live.read_in_large_pieces` gave each connection of the live
    client (the call still runs), and into ``queues`` how many messages ``websockets`` may
    read ahead of it on that connection."""
    sizes: list[int | None] = []
    real = live.read_in_large_pieces

    def recorded(ws: Any) -> int | None:
        sizes.append(real(ws))
        if queues is not None:
            queues.append(ws.max_queue_high)
        return sizes[-1]

    monkeypatch.setattr(live, "read_in_large_pieces", recorded)
    return sizes


def one_copy_frames(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record what :func:`agent.live_frames.read_frames_in_one_copy` answered for each
    connection of the live client (the call still runs)."""
    installed: list[bool] = []
    real = live.read_frames_in_one_copy

    def recorded(ws: Any) -> bool:
        installed.append(real(ws))
        return installed[-1]

    monkeypatch.setattr(live, "read_frames_in_one_copy", recorded)
    return installed


def pending_limits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``max_pending`` of every FileReceiver the live client opens."""
    limits: list[int] = []
    real = FileReceiver.open

    def recorded(path: Path, offer: Offer, **kwargs: Any) -> FileReceiver:
        file = real(path, offer, **kwargs)
        limits.append(file.max_pending)
        return file

    monkeypatch.setattr(FileReceiver, "open", recorded)
    return limits


@pytest.mark.parametrize("size", [MiB // 2, 20 * MiB + 5])  # in the loop; in the worker
def test_a_bundle_arrives_whole_with_acks_for_fsynced_bytes_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    heap_calls = _heap_calls(monkeypatch)
    queues: list[int] = []
    reads = read_sizes(monkeypatch, queues)
    frames = one_copy_frames(monkeypatch)
    pending = pending_limits(monkeypatch)
    data = os.urandom(size)
    hub, config = _deliver(tmp_path, _offer(data), data)
    assert isinstance(hub.ended[0], TransferReceived)
    assert (config.inbox / "billing-2.4.0.tgb").read_bytes() == data
    assert hub.acks == sorted(set(hub.acks)) and hub.acks[-1] == size
    # An ACK after the first 8 MiB, not only at the end (one fsync may cover more than
    # 8 MiB when the disk is behind: bundle.live_file).
    assert hub.acks[0] <= 9 * MiB
    assert list(config.staging.glob("live-*.part")) == []
    # The message buffers were kept for reuse from the transfer's start, and the heap's free
    # memory went back once it was in (agent.heap).
    assert heap_calls == ["keep_freed_blocks", "give_back"]
    # The socket was read in pieces of 2 MiB, not asyncio's 256 KiB (ws:// here; wss://:
    # tests/agent/test_live_tls.py), and every byte arrived all the same.
    assert reads == [live.SOCKET_READ_BYTES]
    # Each CHUNK's payload was copied once out of what was read (agent.live_frames).
    assert frames == [True]
    # At most 4 messages read ahead by websockets and 4 MiB waiting for the file's worker:
    # beyond that the agent stops reading and TCP holds the hub back (bundle.live_file).
    assert queues == [live.QUEUE_MESSAGES] == [4]
    assert pending == [MAX_PENDING_BYTES] == [4 * MiB]


def test_a_transfer_cut_off_gives_the_heap_back_and_resumes_on_the_next_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heap_calls = _heap_calls(monkeypatch)
    data = os.urandom(12 * MiB)
    hub, config = _deliver(tmp_path, _offer(data), data, drop_at=4 * MiB)
    assert isinstance(hub.ended[0], TransferReceived)
    assert (config.inbox / "billing-2.4.0.tgb").read_bytes() == data
    assert len(hub.resumes) == 2 and hub.resumes[0] == 0 and hub.resumes[1] <= 4 * MiB
    # The cut-off connection gave the free memory back, then the resumed transfer kept its
    # buffers again and gave them back once in.
    assert heap_calls == ["keep_freed_blocks", "give_back", "keep_freed_blocks", "give_back"]


def _flip(data: bytes, at: int) -> bytes:
    bad = bytearray(data)
    bad[at] ^= 0x01
    return bytes(bad)


@pytest.mark.parametrize(("case", "size"), [
    ("flipped byte, unsplit, in the loop", MiB // 2),
    ("flipped byte, unsplit, in the worker", 12 * MiB),
    ("bad part 001 of 3", 12 * MiB),
    ("bad last part", 12 * MiB),
])
def test_bad_bytes_are_refused_and_nothing_reaches_the_inbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, size: int) -> None:
    heap_calls = _heap_calls(monkeypatch)
    data = os.urandom(size)
    parts = None
    at = size // 2
    if "part" in case:
        parts = [data[:4 * MiB], data[4 * MiB:9 * MiB], data[9 * MiB:]]
        at = 5 * MiB if "001" in case else size - 1
    hub, config = _deliver(tmp_path, _offer(data, parts), _flip(data, at))
    ended = hub.ended[0]
    assert isinstance(ended, TransferCancelled) and ended.code == "corrupt"
    if "part" in case:
        assert "part digest mismatch" in ended.text
    # Nothing in the inbox, no partial left to resume from, and no ACK ever claimed the
    # bad byte as durable and accepted: an ACK past it can only precede the check of its
    # part, which then refused the transfer.
    assert list(config.inbox.iterdir()) == []
    assert list(config.staging.glob("live-*.part")) == []
    if "001" in case:
        assert all(a <= 9 * MiB for a in hub.acks)  # part 001 ends at 9 MiB
    assert heap_calls == ["keep_freed_blocks", "give_back"]  # a refused one ends too


def test_a_file_the_agent_cannot_write_is_cancelled_as_io_error(tmp_path: Path) -> None:
    """The staging file cannot be opened (here: a directory stands in its place): the hub
    hears CANCEL ``io-error`` (it keeps the bundle for the next connection) and nothing
    reaches the inbox."""
    data = os.urandom(3 * MiB)
    (tmp_path / "staging" / "live-b-1.part").mkdir(parents=True)
    hub, config = _deliver(tmp_path, _offer(data), data)
    ended = hub.ended[0]
    assert isinstance(ended, TransferCancelled) and ended.code == "io-error"
    assert hub.acks == []
    assert list(config.inbox.iterdir()) == []
    assert (config.staging / "live-b-1.part").is_dir()  # nothing of it was touched
