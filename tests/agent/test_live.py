"""agent.live: the reconnect backoff and the hub-silence keepalive (the connection work is in
tests/e2e/test_live.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.config import AgentConfig
from agent.live import LiveClient
from bundle.sync import HeartbeatReceived, HelloReceived, HubSide
from signing.keys import SigningKey
from tests.e2e.conftest import wait_for

DEADLINE = 30.0  # seconds for anything that crosses the socket


class _Keys:
    identity = SigningKey.generate()


def _config(tmp_path: Path, hub_url: str | None = "ws://127.0.0.1:1/live") -> AgentConfig:
    return AgentConfig(home=tmp_path, agent_id="site-01", environment="test",
                       hub_id="hub-test", labels={}, hub_url=hub_url,
                       allow_insecure_loopback=True)


@pytest.mark.parametrize("rng", [0.0, 0.5, 1.0])
def test_backoff_doubles_with_jitter_and_is_bounded(tmp_path: Path, rng: float) -> None:
    client = LiveClient(_config(tmp_path), keys=_Keys(), min_backoff=1.0,  # type: ignore[arg-type]
                        max_backoff=30.0, rng=lambda: rng)
    delays = [client.backoff(n) for n in range(1, 10)]
    ceilings = [min(30.0, 2.0 ** (n - 1)) for n in range(1, 10)]
    assert delays == [c * (0.5 + 0.5 * rng) for c in ceilings]
    assert max(delays) <= 30.0


def test_no_hub_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no hub_url"):
        LiveClient(_config(tmp_path, None), keys=_Keys())  # type: ignore[arg-type]


class _FakeHub:
    """A hub speaking the protocol (HubSide) on 127.0.0.1 that WELCOMEs with a 1 s heartbeat,
    then answers heartbeats — or, ``silent``, never sends anything again (a hub that froze
    while the TCP connection stays up)."""

    def __init__(self, key: SigningKey, *, silent: bool) -> None:
        self.key, self.silent = key, silent
        self.connections = 0
        self.heartbeats = 0
        self.stop = threading.Event()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(ready),),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(DEADLINE)

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        conn = HubSide("hub-test", heartbeat=1)
        async for message in ws:
            assert isinstance(message, bytes)
            welcomed_before = conn.is_open  # WELCOME itself is still sent
            conn.receive_data(message)
            for event in conn.events_received():
                if isinstance(event, HelloReceived):
                    conn.challenge(self.key.public, os.urandom(32), int(time.time()))
                elif isinstance(event, HeartbeatReceived):
                    self.heartbeats += 1
            if self.silent and welcomed_before:
                conn.data_to_send()  # read, never answer
                continue
            for out in conn.data_to_send():
                await ws.send(out)

    async def _main(self, ready: threading.Event) -> None:
        async with serve(self._handler, "127.0.0.1", 0, compression=None,
                         ping_interval=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            while not self.stop.is_set():
                await asyncio.sleep(0.05)


def _run_client(tmp_path: Path, hub: _FakeHub) -> tuple[LiveClient, threading.Event,
                                                         threading.Thread]:
    config = _config(tmp_path, f"ws://127.0.0.1:{hub.port}/live")
    client = LiveClient(config, keys=_Keys(), min_backoff=0.05,  # type: ignore[arg-type]
                        max_backoff=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(client.run(stop),), daemon=True)
    thread.start()
    return client, stop, thread


@pytest.mark.parametrize("silent", [True, False])
def test_a_hub_silent_for_three_heartbeats_is_given_up(tmp_path: Path, silent: bool) -> None:
    """The protocol's heartbeats are the agent's keepalive (no WebSocket pings): a hub that
    sends nothing for three heartbeat intervals, not even the ACKs, is cut off and the agent
    reconnects; a hub that answers keeps its one connection however long it lasts."""
    hub = _FakeHub(_Keys.identity, silent=silent)
    client, stop, thread = _run_client(tmp_path, hub)
    try:
        if silent:
            wait_for(lambda: hub.connections >= 2, DEADLINE, "the agent to reconnect")
            assert client.last_error is not None
            assert "sent nothing for" in client.last_error
            assert "3 heartbeat intervals of 1 s" in client.last_error
        else:
            wait_for(lambda: hub.heartbeats >= 5, DEADLINE, "five heartbeats")
            assert hub.connections == 1
            assert client.last_error is None
    finally:
        stop.set()
        thread.join(DEADLINE)
        hub.stop.set()
        hub.thread.join(DEADLINE)
    assert not thread.is_alive()
