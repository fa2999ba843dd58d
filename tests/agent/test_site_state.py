"""What the agent tells the hub about itself: its inventory (with its window) and the holds it
enforces, in every result and in the live channel's STATE (agent.service ``holds``,
``site_state``; agent.live ``state_changed``, the client's STATE and version fallback;
docs/live-protocol.md §3.1)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from agent.live import state_changed
from bundle.sync import HubSide
from bundle.sync.state import check_state
from bundle.windows import Policy
from hub.services.agents import get_agent
from tests.agent.conftest import drop
from tests.agent.test_holds import SAT_NIGHT, SAT_OPENS, Site, _bundle, _release, _result
from tests.bundle.test_sync_state import STATE
from tests.e2e import test_live as e2e_live
from tests.e2e.conftest import wait_for
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent

file_world = e2e_live.file_world
DEADLINE = 30.0  # seconds for anything that crosses the socket

WINDOW_TEXT = "Sat 01:00–05:00 Europe/Berlin"
OPENS_TEXT = "window opens Sat 2027-01-16 01:00 Europe/Berlin"


def test_holds_and_window_are_reported_in_the_state_and_in_results(site: Site,
                                                                   tmp_path: Path) -> None:
    agent, kit, clock = site
    state = agent.site_state()
    assert state["holds"] == [] and state["inventory"]["window"] is None
    check_state(state)
    first = agent.process(drop(agent, _bundle(
        kit, _release(tmp_path, "one", [("a", "true\n")]), tmp_path / "1.tgb", 1,
        Policy((SAT_NIGHT,)))))
    second = agent.process(drop(agent, _bundle(
        kit, _release(tmp_path, "two", [("b", "true\n")]), tmp_path / "2.tgb", 2,
        Policy((SAT_NIGHT,)))))
    assert (first.status, second.status) == ("on-hold", "on-hold")
    state = check_state(agent.site_state())
    assert state["inventory"]["window"] == WINDOW_TEXT
    assert state["holds"] == [
        {"bundle_id": first.bundle_id, "sequence": 1, "kind": "window", "text": OPENS_TEXT,
         "until": SAT_OPENS},
        {"bundle_id": second.bundle_id, "sequence": 2, "kind": "chain",
         "text": f"after bundle {first.bundle_id} (sequence 1, one 1.0), which is held: "
                 f"{OPENS_TEXT}", "until": None},
    ]
    # The operator runs the first now: its result says the second is held for its window.
    agent.run_now(first.bundle_id or "", "urgent fix", "alice")
    ran = agent.run_accepted(first.bundle_id or "")
    assert ran.status == "succeeded"
    body = _result(agent, kit, ran.result, tmp_path)["body"]
    assert body["holds"] == [{"bundle_id": second.bundle_id, "sequence": 2, "kind": "window",
                              "text": OPENS_TEXT, "until": SAT_OPENS}]
    assert body["inventory"]["window"] == WINDOW_TEXT
    # The window opens: the second runs; nothing is held any more.
    clock.t = SAT_OPENS
    (done,) = agent.run_once()
    assert done.status == "succeeded"
    assert _result(agent, kit, done.result, tmp_path)["body"]["holds"] == []
    assert agent.holds() == []


def test_a_state_changes_on_what_matters_and_not_on_small_disk_moves() -> None:
    sent = copy.deepcopy(STATE)
    free = sent["inventory"]["free_disk_bytes"]

    def moved(**changes: object) -> dict[str, object]:
        now = copy.deepcopy(sent)
        now["inventory"].update(changes)
        return now

    assert state_changed(None, sent)
    assert not state_changed(sent, copy.deepcopy(sent))
    assert not state_changed(sent, moved(free_disk_bytes=free - free // 20))
    assert state_changed(sent, moved(free_disk_bytes=free - free // 10))
    assert state_changed(sent, moved(free_disk_bytes=None))
    assert state_changed(sent, moved(connections={}))
    assert state_changed(sent, {**copy.deepcopy(sent), "holds": []})


def _row(world: World) -> tuple[object, object]:
    world.session.rollback()
    a = get_agent(world.session, "site-01")
    out = (copy.deepcopy(a.inventory), copy.deepcopy(a.holds))
    world.session.rollback()
    return out


def test_the_live_client_sends_the_agents_state_once_connected(file_world: World,
                                                               tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    server = e2e_live._hub(world, tmp_path)
    client = e2e_live._start_client(agent, server)
    client.client.state_source = agent.site_state
    try:
        wait_for(lambda: _row(world)[0] is not None, DEADLINE,
                 "the hub to store the agent's inventory")
        inventory, holds = _row(world)
        assert inventory == {k: v for k, v in agent.inventory().items()
                             if k != "format"} | {"free_disk_bytes":
                                                  inventory["free_disk_bytes"]}  # type: ignore[index]
        assert holds == []
    finally:
        client.close()
        server.stop()
        agent.close()


def test_an_agent_speaks_version_1_to_a_hub_that_knows_no_state(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older hub refuses HELLO version 2 (bad-version): the agent reconnects speaking
    version 1, without STATE, and everything else works as before."""
    monkeypatch.setattr(HubSide, "versions", (1,))
    world = file_world
    agent = _agent(world, tmp_path)
    server = e2e_live._hub(world, tmp_path)
    client = e2e_live._start_client(agent, server)
    client.client.state_source = agent.site_state
    try:
        wait_for(client.client.connected.is_set, DEADLINE, "the agent to connect (version 1)")
        assert client.client.version == 1
        assert client.client.last_refusal is not None
        assert client.client.last_refusal[0] == "bad-version"
        assert _row(world) == (None, None)
    finally:
        client.close()
        server.stop()
        agent.close()


def test_the_config_connections_reach_the_inventory_by_name_only(site: Site) -> None:
    agent, _kit, _clock = site
    config = dataclasses.replace(agent.config, connections={
        "billing-db": {"type": "postgres", "dsn": "postgresql://u:secret@db/billing"},
        "bad\nname": {"type": "postgres"}})
    agent.config = config
    inventory = agent.inventory()
    assert inventory["connections"] == {"billing-db": "postgres"}
    assert "secret" not in repr(inventory)
    check_state({"inventory": inventory, "holds": []})
