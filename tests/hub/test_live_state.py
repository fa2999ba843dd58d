"""STATE on the live channel (docs/live-protocol.md §3.1) at a real LiveHub on a socket: the
hub files an agent's inventory and holds under the agent that authenticated the connection,
never under another; a malformed STATE closes the connection and stores nothing; a result
made before the STATE does not overwrite it, a newer one does (the preflight uses the newest
report)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from bundle.sync import PeerError
from hub.services.agents import get_agent
from hub.services.exchange import import_directory
from hub.services.preflight import check_inventory
from tests.bundle.test_sync_state import STATE, state_message
from tests.e2e import test_live as e2e_live
from tests.e2e.conftest import wait_for
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent, _result
from tests.hub.test_live import DEADLINE, ScriptedAgent, _serve

file_world = e2e_live.file_world


def _row(world: World, agent_id: str) -> tuple[Any, Any, Any]:
    world.session.rollback()
    a = get_agent(world.session, agent_id)
    out = (copy.deepcopy(a.inventory), copy.deepcopy(a.holds), a.inventory_at)
    world.session.rollback()
    return out


def test_state_is_stored_for_the_authenticated_agent_only(file_world: World,
                                                         tmp_path: Path) -> None:
    world = file_world
    one, other = _agent(world, tmp_path, "site-01"), _agent(world, tmp_path, "site-02")
    server = _serve(world, tmp_path)
    sent = copy.deepcopy(STATE)
    sent["inventory"]["connections"] = {"app-db": "postgres"}

    async def scenario() -> None:
        async with ScriptedAgent(server.port, one) as a:
            a.conn.send_state(0, sent)
            await a.flush()
            await asyncio.to_thread(wait_for, lambda: _row(world, "site-01")[0] is not None,
                                    DEADLINE, "the hub to store site-01's state")

    try:
        asyncio.run(scenario())
        inventory, holds, at = _row(world, "site-01")
        assert inventory["connections"] == {"app-db": "postgres"}
        assert inventory["window"] == STATE["inventory"]["window"]
        assert holds == STATE["holds"]
        assert at == world.clock()
        assert _row(world, "site-02") == (None, None, None)  # nobody else's row changes
        world.session.rollback()
        assert get_agent(world.session, "site-01").agent_version == "0.9.0"
        world.session.rollback()
        # The preflight reads it: a release naming billing-db is refused before export.
        (finding,) = check_inventory("site-01", [{"name": "migrate", "kind": "sql",
                                                  "connection": "billing-db"}], 0, inventory)
        assert "has no connection 'billing-db' (it has: app-db)" in finding.message

        # A result made before that STATE (media arriving late) leaves the STATE's report;
        # one made after it replaces it.
        world.clock.advance(-60)
        late = tmp_path / "late"
        late.mkdir()
        _result(one, "succeeded", "an old result").rename(late / "old.tgr")
        world.clock.advance(60)
        report = import_directory(world.ctx("op"), late, results_dir=tmp_path / "results")
        assert [r.status for r in report.rows] == ["imported"], report.rows
        world.session.commit()
        assert _row(world, "site-01")[0]["connections"] == {"app-db": "postgres"}

        world.clock.advance(120)
        newer = tmp_path / "newer"
        newer.mkdir()
        _result(one, "succeeded", "a new result").rename(newer / "new.tgr")
        report = import_directory(world.ctx("op"), newer, results_dir=tmp_path / "results")
        assert [r.status for r in report.rows] == ["imported"], report.rows
        world.session.commit()
        inventory, holds, at = _row(world, "site-01")
        assert inventory["connections"] == {}  # what the agent's own agent.toml says
        assert holds is None  # this result carries no holds: unknown, not "none"
        assert at == world.clock()
    finally:
        server.stop()
        one.close()
        other.close()


def test_a_malformed_state_closes_the_connection_and_stores_nothing(
        file_world: World, tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    server = _serve(world, tmp_path)
    forged = copy.deepcopy(STATE)
    forged["agent_id"] = "site-02"  # a body may not name an agent: refused outright

    async def scenario() -> tuple[object, int | None]:
        async with ScriptedAgent(server.port, agent) as a:
            await a.ws.send(state_message(forged))  # raw: the agent side would refuse it
            error = await a.until(lambda e: isinstance(e, PeerError))
            with contextlib.suppress(ConnectionClosed):
                await a.ws.recv()
            return error, a.ws.close_code

    try:
        error, code = asyncio.run(scenario())
        assert isinstance(error, PeerError) and error.code == "malformed"
        assert code == 4001
        assert _row(world, "site-01") == (None, None, None)
    finally:
        server.stop()
        agent.close()
