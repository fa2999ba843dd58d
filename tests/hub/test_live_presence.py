"""Presence written by two live servers on one database (hub.live_hub, docs/scale.md): an
agent that moved to another live server stays online when its old connection ends late, and
shows offline once its new connection ends. Two real live servers on 127.0.0.1, one SQLite
file, the scripted agent of tests/hub/test_live.py; the clock is the test's, so nothing
depends on timing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from hub.db import make_session_factory
from hub.live import LiveHub, LiveServer, start_live
from hub.services.agents import get_agent
from hub.services.presence import agent_presence, presence_until
from tests.e2e import test_live as e2e_live
from tests.e2e.conftest import wait_for
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent
from tests.hub.test_live import DEADLINE, ScriptedAgent

file_world = e2e_live.file_world  # the fixture: the hub World on a SQLite file


def _server(world: World, data: Path) -> LiveServer:
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=data, actor="op", clock=world.clock,
                  poll_interval=0.05)
    return start_live(hub, "127.0.0.1", 0, allow_insecure_loopback=True)


def _row(world: World) -> tuple[str, str | None]:
    world.session.rollback()
    agent = get_agent(world.session, "site-01")
    found = agent_presence(agent, world.clock()).state, agent.live_conn
    world.session.rollback()
    return found


def _written(server: LiveServer) -> bool:
    """The server holds no connection and has written every disconnect."""
    return not server.online and not server.hub._gone and not server.hub._seen


def test_a_late_disconnect_of_the_old_live_server_does_not_mark_a_moved_agent_offline(
        file_world: World, tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    a = _server(world, tmp_path / "hubdata")
    b = _server(world, tmp_path / "hubdata")  # a second live process, same data directory

    async def scenario() -> None:
        via_a = ScriptedAgent(a.port, agent)
        via_b = ScriptedAgent(b.port, agent)
        await via_a.__aenter__()
        try:
            await asyncio.to_thread(wait_for, lambda: _row(world)[0] == "online", DEADLINE,
                                    "online through live server A")
            (held_by_a,) = {p.conn_id for p in a.hub.peers.values()}
            assert _row(world) == ("online", held_by_a)
            await via_b.__aenter__()  # the agent moved; its socket to A lingers
            await asyncio.to_thread(
                wait_for, lambda: _row(world)[1] not in (None, held_by_a), DEADLINE,
                "live server B to hold the agent")
            (held_by_b,) = {p.conn_id for p in b.hub.peers.values()}
        finally:
            await via_a.__aexit__(None, None, None)  # A's connection ends late
        try:
            await asyncio.to_thread(wait_for, lambda: _written(a), DEADLINE,
                                    "live server A to write its disconnect")
            assert _row(world) == ("online", held_by_b)  # A's write changed nothing
        finally:
            await via_b.__aexit__(None, None, None)
        await asyncio.to_thread(wait_for, lambda: _row(world) == ("offline", None), DEADLINE,
                                "offline once the connection to B ended")

    try:
        asyncio.run(scenario())
    finally:
        a.stop()
        b.stop()
        agent.close()


def test_heartbeats_are_written_with_online_until_one_interval_and_grace_ahead(
        file_world: World, tmp_path: Path) -> None:
    """LiveHub._flush_presence: each heartbeat's row gets ``last_seen`` and ``online_until``
    as presence_until says (computed once per flush), only while its connection holds the
    agent."""
    world = file_world
    _agent(world, tmp_path, "site-01")
    _agent(world, tmp_path, "site-02")
    for agent_id in ("site-01", "site-02"):
        get_agent(world.session, agent_id).live_conn = f"conn-{agent_id}"
    world.session.commit()
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock, heartbeat=30)
    heard = world.clock()
    later = heard + timedelta(seconds=7, microseconds=3)
    hub._flush_presence({"site-01": (heard, "conn-site-01"), "site-02": (later, "stale")}, {})
    world.session.rollback()
    one, two = get_agent(world.session, "site-01"), get_agent(world.session, "site-02")
    assert (one.last_seen, one.online_until) == (heard, presence_until(heard, 30))
    assert two.last_seen is None  # another connection holds it: unchanged
    hub._flush_presence({"site-02": (later, "conn-site-02")}, {})
    world.session.rollback()
    two = get_agent(world.session, "site-02")
    assert (two.last_seen, two.online_until) == (later, presence_until(later, 30))
