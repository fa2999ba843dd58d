"""hub.live / hub.live_hub: where plain ws:// may be served; the push loop (a deployment
queued elsewhere reaches a connected agent without anyone calling ``push_pending``), the
``have-it`` answer, and revocation of a connected agent — against a scripted agent on a real
socket. The whole flow with a real agent is in tests/e2e/test_live.py and
tests/e2e/test_live_processes.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.service import Agent
from bundle.sync import (
    MAX_MESSAGE_BYTES,
    AgentSide,
    HeartbeatAcked,
    OfferReceived,
    Refused,
    Welcomed,
)
from hub.db import AuditEvent, Deployment, make_session_factory
from hub.errors import ConfigError
from hub.live import LiveHub, LiveServer, start_live
from hub.services.agents import get_agent, revoke_agent
from hub.services.deployments import queue_deployment
from hub.services.export_claims import STALE_CLAIM
from hub.services.presence import agent_presence, live_work_of
from tests.e2e import test_live as e2e_live
from tests.e2e.conftest import wait_for
from tests.hub.conftest import Keys, World
from tests.hub.services.test_exchange import _agent, _approved_release

DEADLINE = 30.0  # seconds for anything that crosses the socket
file_world = e2e_live.file_world  # the fixture: the hub World on a SQLite file


def _hub(keys: Keys, tmp_path: Path) -> LiveHub:
    def no_db() -> Any:
        raise AssertionError("no database work expected")

    return LiveHub(session_factory=no_db, keys=keys.hub, data_dir=tmp_path, actor="op")


@pytest.mark.parametrize(("host", "allow", "why"), [
    ("127.0.0.1", False, "needs TLS"),
    ("0.0.0.0", True, "only loopback"),  # noqa: S104 - the address being refused
    ("hub.example", True, "only loopback"),
])
def test_plain_ws_is_refused_unless_allowed_on_loopback(keys: Keys, tmp_path: Path, host: str,
                                                       allow: bool, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        start_live(_hub(keys, tmp_path), host, 0, allow_insecure_loopback=allow)


def test_plain_ws_on_loopback_when_allowed(keys: Keys, tmp_path: Path) -> None:
    server = start_live(_hub(keys, tmp_path), "127.0.0.1", 0, allow_insecure_loopback=True)
    try:
        assert server.port > 0 and server.online == frozenset()
    finally:
        server.stop()
    assert not server.thread.is_alive()


# -- the push loop, have-it and revocation, with a scripted agent on a real socket ----------


def _serve(world: World, tmp_path: Path) -> LiveServer:
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock, poll_interval=0.05)
    return start_live(hub, "127.0.0.1", 0, allow_insecure_loopback=True)


class ScriptedAgent:
    """A protocol-level agent (no files, no runner): the test decides every answer."""

    def __init__(self, port: int, agent: Agent) -> None:
        assert agent.config.hub_id is not None
        self.url = f"ws://127.0.0.1:{port}/live"
        self.conn = AgentSide(agent.config.agent_id, agent.config.hub_id, agent.keys.identity)
        self.ws: Any = None
        self.greeting: object = None  # WELCOME or REFUSE

    async def __aenter__(self) -> ScriptedAgent:
        self.ws = await connect(self.url, compression=None, max_size=MAX_MESSAGE_BYTES)
        self.conn.send_hello()
        await self.flush()
        self.greeting = await self.until(lambda e: isinstance(e, Welcomed | Refused))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def flush(self) -> None:
        for message in self.conn.data_to_send():
            await self.ws.send(message)

    async def until(self, match: Callable[[object], bool]) -> object:
        """Read until an event matches (answering heartbeats); fail after the deadline."""
        async with asyncio.timeout(DEADLINE):
            while True:
                self.conn.receive_data(await self.ws.recv())
                events = self.conn.events_received()
                await self.flush()
                for event in events:
                    if match(event):
                        return event


def _state(world: World) -> str:
    world.session.rollback()
    (dep,) = world.session.scalars(select(Deployment))
    state = dep.state
    world.session.rollback()
    return state


def _audit(world: World, action: str) -> list[AuditEvent]:
    world.session.rollback()
    rows = list(world.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
    world.session.rollback()
    return rows


def test_queued_deployment_is_pushed_to_a_connected_agent_without_push_pending(
        file_world: World, tmp_path: Path) -> None:
    """Queued in another session (as a web worker or the CLI would) after the agent
    connected: the push loop offers it; the agent answers have-it (it came by media first),
    so the hub marks it delivered and keeps it out of the spool."""
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    server = _serve(world, tmp_path)

    async def scenario() -> OfferReceived:
        async with ScriptedAgent(server.port, agent) as a:
            queue_deployment(world.ctx("op"), release, "test")
            world.session.commit()
            offer = await a.until(lambda e: isinstance(e, OfferReceived))
            assert isinstance(offer, OfferReceived)
            a.conn.send_cancel(offer.offer.transfer, "hub", "have-it", "already here")
            await a.flush()
            await asyncio.to_thread(wait_for, lambda: _state(world) == "delivered", DEADLINE,
                                    "the hub to mark the deployment delivered")
            return offer

    try:
        offer = asyncio.run(scenario())
        spool = tmp_path / "hubdata" / "live-outbox" / "site-01"
        assert not list(spool.glob("*.tgb"))  # never offered again
        assert [p.name for p in (spool / "sent").glob("*.tgb")] == [offer.offer.name]
        (event,) = _audit(world, "live.delivered")
        assert json.loads(event.details)["how"] == "have-it"
        assert len(_audit(world, "deployment.delivered")) == 1
    finally:
        server.stop()
        agent.close()


def test_more_spooled_bundles_than_transfer_slots_are_offered_as_slots_come_free(
        file_world: World, tmp_path: Path) -> None:
    """Six bundles wait in the spool, four may be on the wire (MAX_TRANSFERS): four are
    offered at once, and each that the agent confirms frees a slot for the next, in name
    order, until all six left the spool for ``sent/``; none is offered twice."""
    world = file_world
    agent = _agent(world, tmp_path)
    spool = tmp_path / "hubdata" / "live-outbox" / "site-01"
    spool.mkdir(parents=True)
    names = [f"spooled-{i}.tgb" for i in range(6)]
    for name in names:
        (spool / name).write_bytes(name.encode())
    server = _serve(world, tmp_path)

    async def scenario() -> list[str]:
        offered: list[str] = []
        async with ScriptedAgent(server.port, agent) as a:
            while len(offered) < len(names):
                offer = await a.until(lambda e: isinstance(e, OfferReceived))
                assert isinstance(offer, OfferReceived)
                offered.append(offer.offer.name)
                if len(offered) >= 4:  # all slots taken: confirm the oldest offered
                    done = offered[len(offered) - 4]
                    a.conn.send_cancel(done.removesuffix(".tgb"), "hub", "have-it", "here")
                    await a.flush()
            await asyncio.to_thread(
                wait_for, lambda: len(list((spool / "sent").glob("*.tgb"))) == 3, DEADLINE,
                "the hub to move the confirmed bundles into sent/")
        return offered

    try:
        assert asyncio.run(scenario()) == names
        assert sorted(p.name for p in spool.glob("*.tgb")) == names[3:]  # not confirmed
    finally:
        server.stop()
        agent.close()


def test_revoked_agent_is_dropped_while_connected_and_refused_on_reconnect(
        file_world: World, tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    server = _serve(world, tmp_path)

    async def connected_then_revoked() -> tuple[object, int | None]:
        async with ScriptedAgent(server.port, agent) as a:
            revoke_agent(world.ctx("op"), "site-01", reason="stolen")
            world.session.commit()
            refused = await a.until(lambda e: isinstance(e, Refused))
            with contextlib.suppress(ConnectionClosed):
                await a.ws.recv()
            return refused, a.ws.close_code

    async def reconnect() -> tuple[object, int | None]:
        async with ScriptedAgent(server.port, agent) as a:
            with contextlib.suppress(ConnectionClosed):
                await a.ws.recv()
            return a.greeting, a.ws.close_code

    try:
        assert asyncio.run(connected_then_revoked()) == (Refused("revoked", "agent revoked"),
                                                         4012)
        wait_for(lambda: not server.online, DEADLINE, "the hub to forget the connection")
        (dropped,) = _audit(world, "live.revoked")
        assert dropped.object_id == "site-01"
        assert json.loads(dropped.details)["code"] == "revoked"
        event, close_code = asyncio.run(reconnect())
        assert (event, close_code) == (Refused("revoked", "agent revoked"), 4012)
        assert [e.object_id for e in _audit(world, "live.refused")] == ["site-01"]
    finally:
        server.stop()
        agent.close()


def test_an_export_that_fails_is_not_retried_every_poll(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued deployment whose release files changed on disk cannot be exported: the push
    loop tries once, audits the failure, and leaves it alone (for EXPORT_RETRY_SECONDS)
    instead of filling the audit log four times a second."""
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    rounds = 0
    original = LiveHub.poll_once

    async def counted(self: LiveHub) -> None:
        nonlocal rounds
        await original(self)
        rounds += 1

    monkeypatch.setattr(LiveHub, "poll_once", counted)
    server = _serve(world, tmp_path)

    async def scenario() -> None:
        async with ScriptedAgent(server.port, agent):
            stored = Path(release.stored_path)
            script = next(p for p in stored.rglob("*") if p.is_file() and p.suffix != ".toml")
            script.write_text(script.read_text() + "# changed after approval\n")
            queue_deployment(world.ctx("op"), release, "test")
            world.session.commit()
            await asyncio.to_thread(wait_for, lambda: bool(_audit(world, "bundle.export_failed")),
                                    DEADLINE, "the push loop to try the export")
            seen = rounds
            await asyncio.to_thread(wait_for, lambda: rounds >= seen + 10, DEADLINE,
                                    "ten more rounds of the push loop")

    try:
        asyncio.run(scenario())
        (failed,) = _audit(world, "bundle.export_failed")
        assert "changed on disk" in json.loads(failed.details)["reason"]
        assert _state(world) == "queued"  # waits for an operator; media export says why too
        assert not list((tmp_path / "hubdata" / "live-outbox" / "site-01").glob("*.tgb"))
    finally:
        server.stop()
        agent.close()


def test_authentication_and_heartbeats_keep_presence_online(file_world: World,
                                                           tmp_path: Path) -> None:
    """The live server writes last_seen on authentication and on every heartbeat, which is
    all the web and CLI processes see of presence."""
    world = file_world
    agent = _agent(world, tmp_path)
    server = _serve(world, tmp_path)

    def presence() -> tuple[str, datetime | None]:
        world.session.rollback()
        p = agent_presence(get_agent(world.session, "site-01"), world.clock())
        world.session.rollback()
        return p.state, p.last_seen

    start = world.clock()

    async def became(expected: tuple[str, datetime | None], what: str) -> None:
        # The write runs in a worker thread of the server: wait for it, with a deadline.
        await asyncio.to_thread(wait_for, lambda: presence() == expected, DEADLINE, what)

    async def scenario() -> None:
        assert presence() == ("never", None)
        async with ScriptedAgent(server.port, agent) as a:
            await became(("online", start), "last_seen written on authentication")
            world.clock.advance(600)  # ten minutes of silence: offline
            assert presence() == ("offline", start)
            a.conn.send_heartbeat(1)
            await a.flush()
            await a.until(lambda e: isinstance(e, HeartbeatAcked))
            await became(("online", start + timedelta(seconds=600)),
                         "last_seen written on the heartbeat")

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
        agent.close()


def test_agents_connecting_together_are_asked_for_queued_work_in_one_query(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At authentication the hub asks whether the agent has work queued before it runs an
    export: agents authenticating while that query runs share the next one (10,000 agents
    reconnecting ran 10,000 empty exports); a query that fails answers "queued", so the
    export runs and reports the error as it did."""
    world = file_world
    one = _agent(world, tmp_path, "site-01")
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    world.session.commit()
    two = _agent(world, tmp_path, "site-02")  # enrolled after the queueing: nothing for it
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock)
    asked: list[list[str]] = []
    real = hub._queued_of

    def counted(agent_ids: list[str]) -> set[str]:
        asked.append(sorted(agent_ids))
        return real(agent_ids)

    monkeypatch.setattr(hub, "_queued_of", counted)

    async def ask(*agents: str) -> list[bool]:
        return list(await asyncio.gather(*(hub._queued_at_connect(a) for a in agents)))

    try:
        assert asyncio.run(ask("site-01", "site-02", "site-03")) == [True, False, False]
        assert asked == [["site-01", "site-02", "site-03"]]
        # and their spool directories were made, for a rollout's exports to find
        assert sorted(p.relative_to(hub.spool_root).as_posix()
                      for p in hub.spool_root.rglob("*")) == [
            "site-01", "site-01/sent", "site-02", "site-02/sent", "site-03", "site-03/sent"]

        def broken(agent_ids: list[str]) -> set[str]:
            raise OSError("database unreachable")

        monkeypatch.setattr(hub, "_queued_of", broken)
        assert asyncio.run(ask("site-01", "site-02")) == [True, True]

        def bug(agent_ids: list[str]) -> set[str]:
            raise RuntimeError("a bug")

        # a bug is answered too: an unanswered push held its agent's push lock for good
        monkeypatch.setattr(hub, "_queued_of", bug)
        assert asyncio.run(asyncio.wait_for(ask("site-01", "site-02"), DEADLINE)) == [True, True]
    finally:
        one.close()
        two.close()


def test_claims_of_exports_that_are_gone_are_released_for_the_push_loop(
        file_world: World, tmp_path: Path) -> None:
    """A deployment left ``exporting`` under the claim of a process that is gone (a killed
    live server or ``hub export``) counted as no work for the push loop, which counts only
    unclaimed ``exporting`` rows: it waited for other work for its agent. The live server
    releases such claims at its start; a claim that may still be live is left."""
    world = file_world
    agents = [_agent(world, tmp_path, "site-01"), _agent(world, tmp_path, "site-02")]
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    world.session.commit()
    gone, live = world.session.scalars(select(Deployment).order_by(Deployment.id)).all()
    for dep, at in ((gone, world.clock() - STALE_CLAIM * 2), (live, world.clock())):
        dep.state, dep.claimed_by, dep.claimed_at = "exporting", "gone-host:1:1", at
    world.session.commit()
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock)
    try:
        assert live_work_of(world.session, ["site-01", "site-02"]) == []
        assert hub.release_dead_claims() == 1
        world.session.expire_all()
        assert (gone.claimed_by, live.claimed_by) == (None, "gone-host:1:1")
        assert gone.agent is not None
        assert [(w.agent_id, w.queued) for w in live_work_of(
            world.session, ["site-01", "site-02"])] == [(gone.agent.agent_id, 1)]
        assert hub.release_dead_claims() == 0  # nothing more to release
    finally:
        for agent in agents:
            agent.close()


def test_an_agent_is_not_counted_silent_while_the_hub_pauses_reading_its_messages(
        tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The silence timer fires while the reading loop waits in a message's handling (an
    upload waiting for the disk: the agent's heartbeats wait unread in the socket): the
    agent is given three more intervals, not closed; once reading goes on and it still says
    nothing, it is closed."""
    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=keys.hub, data_dir=tmp_path, actor=None, heartbeat=30)
    spawned: list[str] = []

    def spawn(coro: Any) -> None:
        spawned.append(coro.__qualname__)
        coro.close()

    monkeypatch.setattr(hub, "_spawn", spawn)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        peer = SimpleNamespace(silence=None, ending=False, handling=True, heard=loop.time() - 91,
                               conn=SimpleNamespace(is_closed=False, agent_id="site-01"))
        hub._silent(peer)  # type: ignore[arg-type]
        assert spawned == [] and peer.silence is not None
        assert peer.silence.when() >= loop.time() + 89  # three intervals from now
        peer.silence.cancel()
        peer.handling, peer.heard = False, loop.time() - 91
        hub._silent(peer)  # type: ignore[arg-type]
        assert spawned == ["LiveHub._close"] and peer.silence is None

    asyncio.run(scenario())


def test_an_agent_silent_for_three_heartbeat_intervals_is_closed_and_shown_offline(
        file_world: World, tmp_path: Path) -> None:
    """One timer per authenticated connection watches for silence (no timeout around each
    message): an agent that sends nothing for three heartbeat intervals after its last
    message is closed (code 1000), counted as ``heartbeat_missed``, and shown offline at
    once with no connection holding it."""
    world = file_world
    agent = _agent(world, tmp_path)
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock, poll_interval=0.05, heartbeat=1)
    server = start_live(hub, "127.0.0.1", 0, allow_insecure_loopback=True)

    def row() -> tuple[str, str | None]:
        world.session.rollback()
        found = get_agent(world.session, "site-01")
        state = agent_presence(found, world.clock(), heartbeat=1).state, found.live_conn
        world.session.rollback()
        return state

    async def scenario() -> ConnectionClosed:
        async with ScriptedAgent(server.port, agent) as a:
            a.conn.send_heartbeat(1)
            await a.flush()
            await a.until(lambda e: isinstance(e, HeartbeatAcked))
            await asyncio.to_thread(wait_for, lambda: row()[0] == "online", DEADLINE,
                                    "online after authentication")
            try:  # nothing sent from here on
                async with asyncio.timeout(DEADLINE):
                    while True:
                        await a.ws.recv()
            except ConnectionClosed as exc:
                return exc
        raise AssertionError("unreachable")

    try:
        closed = asyncio.run(scenario())
        assert closed.rcvd is not None and closed.rcvd.code == 1000
        assert hub.metrics.registry.get_sample_value(
            "tiangong_live_errors_total", {"kind": "heartbeat_missed"}) == 1
        wait_for(lambda: row() == ("offline", None), DEADLINE, "the disconnect written")
    finally:
        server.stop()
        agent.close()


@pytest.mark.parametrize("fails", ["open", "fsync_dir"])
def test_a_result_the_hub_cannot_store_is_cancelled_io_error_and_the_connection_stays(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    """The hub's live-inbox cannot take the upload's partial file (disk full, read-only), or
    the received file cannot be moved durably to where the importer takes it (EIO): the
    OSError escaped the connection's handler, which closed the connection (1011) — the agent
    reconnected and offered again, in a loop, and no bundle reached it meanwhile. Now the
    offer is cancelled ``io-error`` (the agent offers it again on its next connection),
    nothing is left in live-inbox, and the connection stays up."""
    import errno

    import hub.live_hub as live_hub_mod
    from bundle.sync import HeartbeatAcked as Acked
    from bundle.sync import Offer, ResumeRequested, TransferCancelled

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "open":  # the partial file cannot be created
        monkeypatch.setattr(live_hub_mod.FileReceiver, "open", full)
    else:  # received and checked, but its move to where the importer takes it not durable
        monkeypatch.setattr(live_hub_mod, "fsync_dir", full)
    world = file_world
    agent = _agent(world, tmp_path)
    server = _serve(world, tmp_path)
    data = b"not really a result"

    async def scenario() -> tuple[object, object]:
        async with ScriptedAgent(server.port, agent) as a:
            a.conn.send_offer(Offer("t1", "site-01-000001-succeeded.tgr", len(data),
                                    hashlib.sha256(data).hexdigest()))
            await a.flush()
            if fails == "fsync_dir":
                await a.until(lambda e: isinstance(e, ResumeRequested))
                a.conn.send_chunk("t1", 0, data)
                a.conn.send_done("t1")
                await a.flush()
            ended = await a.until(lambda e: isinstance(e, TransferCancelled))
            a.conn.send_heartbeat(1)
            await a.flush()
            alive = await a.until(lambda e: isinstance(e, Acked))
            return ended, alive

    try:
        ended, alive = asyncio.run(scenario())
        assert isinstance(ended, TransferCancelled) and ended.code == "io-error"
        assert isinstance(alive, Acked)  # the same connection answers on
        inbox = tmp_path / "hubdata" / "live-inbox"
        assert not [p for p in inbox.rglob("*") if p.is_file()]
    finally:
        server.stop()
        agent.close()


def test_a_resumed_result_is_reopened_off_the_event_loop(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result upload resumed after a dropped connection: the bytes already received (up
    to [live] max_result_bytes, 1 GiB) are fsynced and hashed again before RESUME — that ran
    on the live server's event loop, stalling every agent's connection meanwhile. It runs
    in a worker thread; the RESUME offset is still the bytes found."""
    import threading

    import hub.live_hub as live_hub_mod
    from bundle.sync import Offer, ResumeRequested
    from hub.live_files import partial_path

    threads: list[threading.Thread] = []
    real = live_hub_mod.FileReceiver.open

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(live_hub_mod.FileReceiver, "open", spy)
    world = file_world
    agent = _agent(world, tmp_path)
    server = _serve(world, tmp_path)
    data = b"a result, resumed after a dropped connection"
    left = partial_path(tmp_path / "hubdata" / "live-inbox", "site-01", "t1")
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(data[:9])

    async def scenario() -> object:
        async with ScriptedAgent(server.port, agent) as a:
            a.conn.send_offer(Offer("t1", "site-01-000001-succeeded.tgr", len(data),
                                    hashlib.sha256(data).hexdigest()))
            await a.flush()
            return await a.until(lambda e: isinstance(e, ResumeRequested))

    try:
        resume = asyncio.run(scenario())
        assert isinstance(resume, ResumeRequested) and resume.offset == 9
        assert len(threads) == 1 and threads[0] is not server.thread
    finally:
        server.stop()
        agent.close()


def test_a_bundle_the_agent_found_corrupt_is_hashed_again_before_its_next_offer(
        keys: Keys, tmp_path: Path) -> None:
    """The OFFER carries the digest the export reported (SpoolDigests.remember), kept while
    the file's inode, size and modification time are unchanged. Bytes that changed on the
    disk without those changing (bit rot, a restored time) made the agent refuse the file as
    ``corrupt`` — and every later offer carried the same stale digest: refused forever.
    The agent's ``corrupt`` now drops what is remembered: the next offer reads the file."""
    import hashlib
    from types import SimpleNamespace

    from bundle.sync.events import TransferCancelled

    hub = _hub(keys, tmp_path)
    path = tmp_path / "spool" / "a1" / "b.tgb"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"bundle bytes")
    hub._digests.remember(path, 12, "0" * 64)  # what the export said; the disk says otherwise
    peer = SimpleNamespace(outgoing={"t1": path}, acked={},
                           conn=SimpleNamespace(agent_id="a1"))
    hub._cancelled(peer, TransferCancelled("t1", "hub", "corrupt", "digest differs"))  # type: ignore[arg-type]
    assert hub._digests.get(path) == (12, hashlib.sha256(b"bundle bytes").hexdigest())
    assert path.exists() and not peer.outgoing  # still spooled, offered again later


class _ChunkConn:
    """The protocol's side of a file being sent, as ``_send_file`` uses it: CHUNK messages
    built into the buffer handed over when it fits (as ``encode_chunk``), counted."""

    def __init__(self) -> None:
        self.agent_id = "a1"
        self.is_open = True
        self.out: list[bytearray] = []
        self.reused = 0
        self.done = False

    def in_flight(self, transfer: str) -> int:
        return 0  # every byte acknowledged at once: only the writer sets the pace

    def send_chunk_from(self, transfer: str, offset: int, size: int,
                        fill: Callable[[memoryview], None], *,
                        buffer: bytearray | None = None) -> None:
        if buffer is not None and len(buffer) == size:
            self.reused += 1
        message = buffer if buffer is not None and len(buffer) == size else bytearray(size)
        fill(memoryview(message))
        self.out.append(message)

    def send_done(self, transfer: str) -> None:
        self.done = True

    def data_to_send(self) -> list[bytearray]:
        out, self.out = self.out, []
        return out


def test_sent_chunk_buffers_are_reused_while_a_file_is_sent_and_dropped_after(
        keys: Keys, tmp_path: Path) -> None:
    """The writer keeps a sent CHUNK message to be filled again — while a file is being
    sent on the connection. After the last one nothing is kept: an agent's connection
    lives for days, and 2 MiB held by each of 10,000 would be 20 GiB."""
    from websockets.protocol import State as WsState

    from hub.live_guard import LiveLimits
    from hub.live_hub import _Peer

    hub = _hub(keys, tmp_path)
    path = tmp_path / "b.tgb"
    data = os.urandom(6 * 1024 * 1024 + 5)
    path.write_bytes(data)
    sent: list[bytes] = []

    async def send(message: bytes | bytearray) -> None:
        sent.append(bytes(message))
        await asyncio.sleep(0)

    ws = SimpleNamespace(send=send, state=WsState.OPEN,
                         protocol=SimpleNamespace(state=WsState.OPEN),
                         transport=SimpleNamespace(get_write_buffer_size=lambda: 0))
    conn = _ChunkConn()
    peer = _Peer(ws, conn, "127.0.0.1", LiveLimits())  # type: ignore[arg-type]
    peer.outgoing["t1"] = path
    peer.acked["t1"] = asyncio.Event()

    async def run() -> None:
        writer = asyncio.create_task(hub._write_loop(peer))
        await hub._send_file(peer, "t1", 0)
        assert conn.done and peer.sending == 0 and peer.spare == []
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while peer.queue and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        peer.ending = True
        peer.wakeup.set()
        await asyncio.wait_for(writer, DEADLINE)

    asyncio.run(run())
    assert b"".join(sent) == data  # every byte, in order
    assert conn.reused >= 1  # buffers were filled again during the transfer ...
    assert peer.spare == []  # ... and none is kept once it is sent
