"""Live delivery over a real WebSocket on 127.0.0.1 (docs/live-protocol.md §10).

The hub's live server runs in its own thread and event loop on a file-backed SQLite
database; the agent's live client runs in another thread; an :class:`agent.service.Agent`
processes what lands in its inbox. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent import live as agent_live
from agent.inbox import ReadyItem
from agent.live import LiveClient
from agent.service import Agent
from bundle.sync import MAX_MESSAGE_BYTES, AgentSide, Refused
from hub import live_hub
from hub.db import AuditEvent, Deployment, make_engine, make_session_factory
from hub.live import LiveHub, LiveServer, start_live
from hub.migrate import upgrade
from hub.services.agents import revoke_agent
from hub.services.deployments import queue_deployment
from hub.services.environments import create_environment
from hub.services.exchange import export_environment
from hub.services.users import bootstrap_admin, create_user, grant_role
from signing.keys import SigningKey
from tests.e2e.conftest import wait_for
from tests.hub.conftest import PEOPLE, FakeClock, World, make_keys
from tests.hub.services.test_exchange import _agent, _approved_release

DEADLINE = 30.0  # seconds for anything that crosses the socket


@pytest.fixture
def file_world(tmp_path: Path) -> Iterator[World]:
    """The hub World of tests/hub/conftest.py, on a SQLite file other threads can open."""
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(engine)
    clock = FakeClock()
    with Session(engine, expire_on_commit=False) as session:
        bootstrap_admin(session, clock, "admin")
        w = World(session, clock, make_keys(), tmp_path / "releases")
        admin = w.ctx("admin")
        create_environment(admin, "test")
        create_environment(admin, "prod", required_approvals=2)
        for name, roles in PEOPLE.items():
            create_user(admin, name)
            for role in roles:
                r, _, env = role.partition("@")
                grant_role(admin, name, r, env or None)
        session.commit()
        yield w
    engine.dispose()


def _hub(world: World, tmp_path: Path) -> LiveServer:
    engine = world.session.get_bind()
    hub = LiveHub(session_factory=make_session_factory(engine), keys=world.keys.hub,  # type: ignore[arg-type]
                  data_dir=tmp_path / "hubdata", actor="op", clock=world.clock)
    return start_live(hub, "127.0.0.1", 0, allow_insecure_loopback=True)


@dataclasses.dataclass
class _Client:
    client: LiveClient
    stop: threading.Event
    thread: threading.Thread

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


def _start_client(agent: Agent, server: LiveServer) -> _Client:
    config = dataclasses.replace(agent.config, hub_url=f"ws://127.0.0.1:{server.port}/live")
    client = LiveClient(config, keys=agent.keys, allow_insecure_loopback=True,
                        outbox_poll_seconds=0.05, min_backoff=0.05,
                        max_backoff=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(client.run(stop),), daemon=True)
    thread.start()
    return _Client(client, stop, thread)


def _deployment_state(world: World) -> str:
    world.session.rollback()  # end any read transaction: see what the hub committed
    (dep,) = world.session.scalars(select(Deployment))
    state = dep.state
    world.session.rollback()
    return state


def _process_live_inbox(agent: Agent) -> list[str]:
    statuses = []
    for f in sorted(agent.config.inbox.glob("*.tgb")):
        out = agent.process(ReadyItem(f.name, (f,), f.stat().st_size, "single", 0.0))
        statuses.append(out.status)
    return statuses


def test_online_agent_receives_runs_and_result_is_imported(file_world: World,
                                                           tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    server = _hub(world, tmp_path)
    client = _start_client(agent, server)
    try:
        wait_for(lambda: "site-01" in server.online, DEADLINE, "the agent to come online")
        world.session.rollback()
        queue_deployment(world.ctx("op"), release, "test")
        world.session.commit()
        # As on approval: push now (the push on connecting may have taken it already).
        server.push_pending("site-01").result(DEADLINE)

        wait_for(lambda: any(agent.config.inbox.glob("*.tgb")), DEADLINE,
                 "the bundle to land in the agent's inbox")
        assert len(list(agent.config.inbox.glob("*.tgb"))) == 1
        assert not list(agent.config.staging.glob("live-*.part"))
        agent.runner.live_log = client.client.live_log  # as Agent(config, live_log=...) does
        assert _process_live_inbox(agent) == ["succeeded"]
        # The step's output reached the hub live, one line per seq.
        (bundle_id,) = [b.bundle_id for b in agent.journal.bundles()]
        log_file = tmp_path / "hubdata" / "live-logs" / "site-01" / f"{bundle_id}.log"
        wait_for(log_file.exists, DEADLINE, "step logs at the hub")
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert [r["seq"] for r in lines] == list(range(len(lines)))
        assert lines and lines[0]["step"] == 0
        assert [r["step"] for r in lines] == sorted(r["step"] for r in lines)

        wait_for(lambda: _deployment_state(world) == "succeeded", DEADLINE,
                 "the result to be uploaded and imported")
        # The importer commits, then stores the file verbatim; RECEIVED follows.
        wait_for(lambda: any((tmp_path / "hubdata" / "results").glob("*.tgr")), DEADLINE,
                 "the result to be stored verbatim")
        spool = tmp_path / "hubdata" / "live-outbox" / "site-01"
        assert not list(spool.glob("*.tgb")) and list((spool / "sent").glob("*.tgb"))
        wait_for(lambda: len(client.client.sent_results()) == 1, DEADLINE,
                 "the agent to record the result as sent")
        world.session.rollback()
        seen = world.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "result.import")).all()
        assert len(seen) == 1
        world.session.rollback()
    finally:
        client.close()
        server.stop()
        agent.close()


async def _raw_hello(port: int, agent_id: str) -> tuple[list[object], int | None, str | None]:
    conn = AgentSide(agent_id, "hub-test", SigningKey.generate())
    async with connect(f"ws://127.0.0.1:{port}/live", compression=None,
                       max_size=MAX_MESSAGE_BYTES) as ws:
        conn.send_hello()
        for m in conn.data_to_send():
            await ws.send(m)
        events: list[object] = []
        try:
            async for message in ws:
                assert isinstance(message, bytes)
                conn.receive_data(message)
                events += conn.events_received()
        except ConnectionClosed:
            pass
        return events, ws.close_code, ws.close_reason


@pytest.mark.parametrize(("who", "code", "close", "text"), [
    ("stranger-01", "unknown-agent", 4011, "agent not enrolled"),
    ("site-01", "revoked", 4012, "agent revoked"),
])
def test_unknown_or_revoked_agent_is_refused_with_its_close_reason(
        file_world: World, tmp_path: Path, who: str, code: str, close: int, text: str) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    revoke_agent(world.ctx("op"), "site-01", reason="decommissioned")
    world.session.commit()
    server = _hub(world, tmp_path)
    try:
        events, close_code, reason = asyncio.run(_raw_hello(server.port, who))
        assert events == [Refused(code, text)]
        assert (close_code, reason) == (close, code)
        assert not server.online
        assert not (tmp_path / "hubdata" / "live-outbox").exists()  # nothing exported
        world.session.rollback()
        refused = world.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "live.refused")).all()
        assert [(e.object_id, f'"{code}"' in e.details) for e in refused] == [(who, True)]
        world.session.rollback()
    finally:
        server.stop()
        agent.close()


def test_byte_flipped_on_the_wire_is_rejected_and_nothing_runs(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    cancelled = threading.Event()
    original_read = LiveHub.read_chunk
    original_cancelled = LiveHub._cancelled

    def flip(self: LiveHub, fd: int, offset: int, view: memoryview) -> None:
        original_read(self, fd, offset, view)
        view[len(view) // 2] ^= 0x01

    def note_cancel(self: LiveHub, peer: object, event: object) -> None:
        original_cancelled(self, peer, event)  # type: ignore[arg-type]
        if getattr(event, "code", None) == "corrupt":
            cancelled.set()

    monkeypatch.setattr(LiveHub, "read_chunk", flip)
    monkeypatch.setattr(LiveHub, "_cancelled", note_cancel)
    server = _hub(world, tmp_path)  # the deployment is pushed as the agent connects
    client = _start_client(agent, server)
    try:
        assert cancelled.wait(DEADLINE), "the agent did not cancel the corrupt transfer"
        assert not list(agent.config.inbox.glob("*.tgb"))
        assert not list(agent.config.staging.glob("live-*.part"))
        assert agent.journal.bundles() == []
        spool = tmp_path / "hubdata" / "live-outbox" / "site-01"
        assert len(list(spool.glob("*.tgb"))) == 1  # still waiting at the hub
        assert _deployment_state(world) == "exported"
    finally:
        client.close()
        server.stop()
        agent.close()


def test_offline_bundle_waits_and_a_partial_download_resumes_where_it_stopped(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    sent_offsets: list[int] = []
    original_read = LiveHub.read_chunk

    def record(self: LiveHub, fd: int, offset: int, view: memoryview) -> None:
        sent_offsets.append(offset)
        original_read(self, fd, offset, view)

    monkeypatch.setattr(LiveHub, "read_chunk", record)
    server = _hub(world, tmp_path)
    try:
        # The agent is offline: the bundle is exported into the hub's spool and waits.
        assert server.push_pending("site-01").result(DEADLINE) == 1
        (spooled,) = (tmp_path / "hubdata" / "live-outbox" / "site-01").glob("*.tgb")
        # An earlier connection dropped after 1,000 bytes had been written and fsynced.
        held = 1000
        bundle_bytes = spooled.read_bytes()
        agent.config.staging.mkdir(parents=True, exist_ok=True)
        partial = agent.config.staging / f"live-{spooled.stem}.part"
        partial.write_bytes(bundle_bytes[:held])

        client = _start_client(agent, server)
        try:
            wait_for(lambda: any(agent.config.inbox.glob("*.tgb")), DEADLINE,
                     "the resumed bundle to land in the inbox")
            assert sent_offsets[0] == held  # nothing already held was sent again
            assert (agent.config.inbox / spooled.name).read_bytes() == bundle_bytes
            assert not partial.exists()
            assert _process_live_inbox(agent) == ["succeeded"]
            wait_for(lambda: _deployment_state(world) == "succeeded", DEADLINE,
                     "the result to be imported")
        finally:
            client.close()
    finally:
        server.stop()
        agent.close()


async def _send_logs(port: int, agent: Agent, bundle_id: str) -> None:
    assert agent.config.hub_id is not None
    conn = AgentSide(agent.config.agent_id, agent.config.hub_id, agent.keys.identity)
    async with connect(f"ws://127.0.0.1:{port}/live", compression=None,
                       max_size=MAX_MESSAGE_BYTES) as ws:
        conn.send_hello()
        while not conn.is_open:
            for m in conn.data_to_send():
                await ws.send(m)
            conn.receive_data(await ws.recv())  # type: ignore[arg-type]
        conn.send_log(bundle_id, 0, 0, "stdout", "first line")
        conn.send_log(bundle_id, 0, 1, "stderr", "second line")
        conn.send_log(bundle_id, 0, 0, "stdout", "first line")  # re-sent after a reconnect
        conn.send_heartbeat(7)
        for m in conn.data_to_send():
            await ws.send(m)
        while True:  # the hub handles messages in order: its answer means the logs are in
            conn.receive_data(await ws.recv())  # type: ignore[arg-type]
            if any(getattr(e, "id", None) == 7 for e in conn.events_received()):
                return


def test_log_lines_are_stored_once_per_sequence_number(file_world: World,
                                                       tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    # A bundle addressed to the agent (exported to media here): LOG lines of any other
    # bundle close the connection (tests/e2e/test_live_hostile.py).
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    export_environment(world.ctx("op"), "test", tmp_path / "usb", agent_id="site-01")
    world.session.commit()
    (bundle_id,) = world.session.scalars(select(Deployment.bundle_id))
    world.session.rollback()
    assert bundle_id is not None
    server = _hub(world, tmp_path)
    try:
        asyncio.run(_send_logs(server.port, agent, bundle_id))
        lines = (tmp_path / "hubdata" / "live-logs" / "site-01" / f"{bundle_id}.log"
                 ).read_text().splitlines()
        assert [json.loads(line) for line in lines] == [
            {"seq": 0, "step": 0, "stream": "stdout", "text": "first line"},
            {"seq": 1, "step": 0, "stream": "stderr", "text": "second line"},
        ]
    finally:
        server.stop()
        agent.close()


def test_hub_stopped_mid_transfer_agent_reconnects_and_resumes(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    monkeypatch.setattr(live_hub, "READ_BYTES", 256)  # many small chunks
    monkeypatch.setattr(agent_live, "ACK_EVERY_BYTES", 256)
    stall_at = 1024
    sent: list[tuple[str, int]] = []
    stalled = threading.Event()
    original_read = LiveHub.read_chunk
    first: list[LiveHub] = []

    def read(self: LiveHub, fd: int, offset: int, view: memoryview) -> None:
        generation = "first" if self is first[0] else "second"
        if generation == "first" and offset >= stall_at:
            stalled.set()
            raise asyncio.CancelledError  # the hub stops sending, as if it hung
        sent.append((generation, offset))
        original_read(self, fd, offset, view)

    monkeypatch.setattr(LiveHub, "read_chunk", read)
    server = _hub(world, tmp_path)
    first.append(server.hub)
    client = _start_client(agent, server)
    try:
        assert stalled.wait(DEADLINE), "the first hub never reached the stall point"
        server.stop()  # the hub goes away mid-transfer
        assert not list(agent.config.inbox.glob("*.tgb"))
        second = LiveHub(session_factory=server.hub.session_factory, keys=world.keys.hub,
                         data_dir=tmp_path / "hubdata", actor="op", clock=world.clock)
        server = start_live(second, "127.0.0.1", server.port, allow_insecure_loopback=True)
        wait_for(lambda: any(agent.config.inbox.glob("*.tgb")), DEADLINE,
                 "the resumed bundle to land in the inbox")
        # The second hub sends from what the agent held (fsynced), never from 0 again.
        again = [offset for generation, offset in sent if generation == "second"]
        assert again and 0 < again[0] <= stall_at and again == sorted(again)
        spooled = tmp_path / "hubdata" / "live-outbox" / "site-01" / "sent"
        wait_for(lambda: any(spooled.glob("*.tgb")), DEADLINE, "RECEIVED at the hub")
        (bundle,) = spooled.glob("*.tgb")
        assert (agent.config.inbox / bundle.name).read_bytes() == bundle.read_bytes()
        assert _process_live_inbox(agent) == ["succeeded"]
        wait_for(lambda: _deployment_state(world) == "succeeded", DEADLINE,
                 "the result to be imported by the second hub")
    finally:
        client.close()
        server.stop()
        agent.close()


def test_the_agent_learns_that_the_hub_rejected_its_result(
        file_world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A result the importer refuses is answered CANCEL ``rejected`` (not RECEIVED): the
    agent logs why and does not offer it again; nothing stays in the hub's live-inbox."""
    world = file_world
    agent = _agent(world, tmp_path)
    bogus = agent.config.outbox / "bogus-result.tgr"
    bogus.write_bytes(b"not a result bundle" * 100)
    server = _hub(world, tmp_path)
    caplog.set_level("INFO", logger="tiangong.agent.live")
    client = _start_client(agent, server)
    try:
        wait_for(lambda: "bogus-result.tgr" in client.client.sent_results(), DEADLINE,
                 "the hub's answer to the result")
        assert "live: the hub rejected result bogus-result.tgr:" in caplog.text
        assert "received and imported result bogus-result.tgr" not in caplog.text
        inbox = tmp_path / "hubdata" / "live-inbox"
        assert [p for p in inbox.rglob("*") if p.is_file()] == []
        assert bogus.exists()  # the agent's own file stays where it was
    finally:
        client.close()
        server.stop()
        agent.close()
