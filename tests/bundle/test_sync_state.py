"""STATE (docs/live-protocol.md §3.1): an agent's inventory and holds on the live channel.

The hub takes only a strictly shaped body, only from a version 2 connection, only after
authentication, within its rate; whatever it refuses closes the connection and yields no
event (nothing for the layer to store).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bundle.sync import AgentSide, HubSide, MessageType, StateReceived
from bundle.sync.errors import (
    MalformedError,
    OutOfOrderError,
    OversizedError,
    RateLimitedError,
    SyncError,
    UsageError,
)
from bundle.sync.sides import STATE_BURST_MESSAGES
from bundle.sync.state import MAX_CONNECTIONS, MAX_HOLDS, MAX_STATE_BYTES
from tests.bundle.test_sync import AGENT_ID, AGENT_KEY, HUB_ID, last_message, open_pair, raw

STATE: dict[str, Any] = {
    "inventory": {
        "format": 1, "agent_version": "0.9.0", "os": "Linux 6.1.0 (x86_64)",
        "free_disk_bytes": 10_000_000_000, "cpus": 4, "memory_bytes": 8_000_000_000,
        "connections": {"billing-db": "postgres", "app cluster": "kubernetes"},
        "step_kinds": ["file", "k8s", "shell", "sql"], "time_zone": "Europe/Berlin",
        "window": "Sat 01:00-05:00 Europe/Berlin",
    },
    "holds": [{"bundle_id": "b-1", "sequence": 4, "kind": "window",
               "text": "window opens 2026-12-12 01:00 Europe/Berlin", "until": 1_765_497_600}],
}


def state_message(body: object, *, id: int = 0) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw(MessageType.STATE, {"id": id}, data)


def test_agent_state_reaches_the_hub_as_an_event() -> None:
    hub, agent = open_pair()
    agent.send_state(0, STATE)
    for message in agent.data_to_send():
        hub.receive_data(message)
    assert hub.events_received() == [StateReceived(0, STATE)]
    assert hub.is_open


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STATE)
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()

BAD_BODIES: list[tuple[str, object]] = [
    ("not json", b"{inventory"),
    ("not an object", [1, 2]),
    ("extra top-level key", {**STATE, "agent_id": "someone-else"}),
    ("missing holds", {"inventory": STATE["inventory"]}),
    ("inventory not an object", _with(("inventory",), "x")),
    ("extra inventory key", _with(("inventory", "secret"), "hunter2")),
    ("missing inventory key", _with(("inventory", "time_zone"), _DELETE)),
    ("wrong format", _with(("inventory", "format"), 2)),
    ("negative disk", _with(("inventory", "free_disk_bytes"), -1)),
    ("disk as text", _with(("inventory", "free_disk_bytes"), "lots")),
    ("cpus as bool", _with(("inventory", "cpus"), True)),
    ("long os", _with(("inventory", "os"), "x" * 201)),
    ("connection type not text", _with(("inventory", "connections"), {"db": 5})),
    ("connection name with a newline", _with(("inventory", "connections"), {"a\nb": "postgres"})),
    ("too many connections", _with(("inventory", "connections"),
                                   {f"c{i}": "postgres" for i in range(MAX_CONNECTIONS + 1)})),
    ("step kind not a code", _with(("inventory", "step_kinds"), ["Shell!"])),
    ("holds not a list", _with(("holds",), {})),
    ("too many holds", _with(("holds",), STATE["holds"] * (MAX_HOLDS + 1))),
    ("hold with a bad bundle id", _with(("holds", 0, "bundle_id"), "../etc")),
    ("hold with an extra key", _with(("holds", 0, "agent_id"), "other")),
    ("hold until as text", _with(("holds", 0, "until"), "soon")),
]


@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
def test_hub_refuses_a_malformed_state_and_stores_nothing(case: str, body: object) -> None:
    hub, _agent = open_pair()
    with pytest.raises(MalformedError):
        hub.receive_data(state_message(body))
    assert hub.events_received() == []
    assert last_message(hub)[1]["code"] == "malformed"
    assert hub.is_closed and hub.close_code == 4001


def test_hub_refuses_a_state_over_its_size_before_parsing() -> None:
    hub, _agent = open_pair()
    with pytest.raises(OversizedError):
        hub.receive_data(state_message(b" " * (MAX_STATE_BYTES + 1)))
    assert hub.events_received() == [] and hub.is_closed and hub.close_code == 4002


def test_state_before_authentication_is_refused() -> None:
    hub = HubSide(HUB_ID)
    with pytest.raises(SyncError):
        hub.receive_data(state_message(STATE))
    assert hub.events_received() == [] and hub.is_closed


def test_a_version_1_connection_cannot_send_state() -> None:
    hub, agent = open_pair(version=1)
    assert hub.version == 1
    with pytest.raises(UsageError):
        agent.send_state(0, STATE)
    with pytest.raises(OutOfOrderError):
        hub.receive_data(state_message(STATE))
    assert hub.events_received() == [] and hub.is_closed and hub.close_code == 4005


def test_state_faster_than_the_rate_closes_the_connection() -> None:
    hub, _agent = open_pair()
    for i in range(STATE_BURST_MESSAGES):
        hub.receive_data(state_message(STATE, id=i))
    assert len(hub.events_received()) == STATE_BURST_MESSAGES
    with pytest.raises(RateLimitedError):
        hub.receive_data(state_message(STATE, id=99))
    assert hub.events_received() == [] and hub.close_code == 4007


def test_agent_cannot_send_a_state_that_breaks_the_rules() -> None:
    _hub, agent = open_pair()
    with pytest.raises(UsageError):
        agent.send_state(0, _with(("inventory", "secret"), "x"))
    assert agent.data_to_send() == [] and agent.is_open


def test_agent_side_refuses_an_unknown_version() -> None:
    with pytest.raises(UsageError):
        AgentSide(AGENT_ID, HUB_ID, AGENT_KEY, version=3)
