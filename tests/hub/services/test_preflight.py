"""hub.services.preflight: a release against an agent's inventory (pure checks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.db import Agent
from hub.services.preflight import (
    DISK_FACTOR,
    check_inventory,
    clean_inventory,
    store_inventories,
    store_inventory,
)

INV: dict[str, Any] = {
    "agent_version": "1.0", "os": "Linux", "free_disk_bytes": 10 * 1024 * 1024, "cpus": 2,
    "memory_bytes": 1 << 30, "connections": {"app-db": "postgres", "kube": "kubernetes"},
    "step_kinds": ["shell", "sql", "k8s"], "time_zone": "UTC",
}


def _sql(conn: str, engine: str = "postgres") -> dict[str, Any]:
    return {"name": f"to {conn}", "kind": "sql", "engine": engine, "connection": conn}


@pytest.mark.parametrize(("steps", "payload", "messages"), [
    ([_sql("app-db")], 1024, []),
    ([_sql("billing-db")], 1024,
     ["agent s7 has no connection 'billing-db' (it has: app-db, kube); step 1 "
      "('to billing-db') needs it"]),
    ([_sql("app-db", "mysql")], 1024,
     ["agent s7's connection 'app-db' is of type 'postgres'; step 1 ('to app-db') needs "
      "'mysql'"]),
    ([{"name": "up", "kind": "agent-upgrade", "wheel": "w.whl"}], 1024,
     ["agent s7 cannot run agent-upgrade steps (step 1 ('up'); it can run: shell, sql, k8s)"]),
    ([_sql("app-db")], 6 * 1024 * 1024,
     [f"agent s7 has 10.0 MiB free in its home; the release's files (6.0 MiB) need "
      f"{6 * DISK_FACTOR:.1f} MiB there"]),
    # The same missing connection in two steps is said once.
    ([_sql("billing-db"), _sql("billing-db")], 1, [
        "agent s7 has no connection 'billing-db' (it has: app-db, kube); step 1 "
        "('to billing-db') needs it"]),
])
def test_findings(steps: list[dict[str, Any]], payload: int, messages: list[str]) -> None:
    found = check_inventory("s7", steps, payload, INV)
    assert [f.message for f in found] == messages
    assert all(f.blocking for f in found)


def test_unknown_inventory_is_a_warning() -> None:
    [finding] = check_inventory("s7", [_sql("billing-db")], 1, None)
    assert not finding.blocking
    assert finding.to_json()["severity"] == "warning"
    assert "has sent no inventory yet" in finding.message


def test_clean_inventory_keeps_known_bounded_fields() -> None:
    raw = {**INV, "connections": {"db": "postgres", "x" * 500: 7}, "secret": "hunter2",
           "cpus": -1, "step_kinds": ["sql", 3]}
    clean = clean_inventory(raw)
    assert clean is not None
    assert "secret" not in clean
    assert clean["cpus"] is None
    assert clean["step_kinds"] == ["sql"]
    assert clean["connections"] == {"db": "postgres", "x" * 200: ""}
    assert clean_inventory("not a mapping") is None


T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _report(version: str | None, minutes: int) -> tuple[dict[str, Any], datetime]:
    body: dict[str, Any] = {"summary": "ok"}
    if version is not None:
        body["inventory"] = {**INV, "agent_version": version}
        body["holds"] = [{"bundle_id": f"b-{version}", "sequence": 1, "text": "held"}]
    return body, T0 + timedelta(minutes=minutes)


@pytest.mark.parametrize(("kept_at", "reports"), [
    (None, [("1.0", 1), ("1.1", 2), ("1.2", 3)]),
    (None, [("1.0", 3), ("1.1", 2)]),  # an older result made later: the later one stays
    (None, [("1.0", 1), (None, 5), ("1.1", 2)]),  # one without an inventory changes nothing
    (10, [("1.0", 1), ("1.1", 2)]),  # a newer live STATE is kept
    (2, [("1.0", 1), ("1.1", 2), ("1.2", 1)]),  # the same time as the kept one: replaced
    (None, [(None, 1)]),
    (None, []),
])
def test_store_inventories_keeps_what_storing_each_in_turn_keeps(
    kept_at: int | None, reports: list[tuple[str | None, int]]
) -> None:
    """An import stores the inventories of a batch's results of one agent at once; the
    agent ends as if each had been stored in turn, and the outcome says the same."""
    bodies = [_report(v, m) for v, m in reports]

    def agent() -> Agent:
        a = Agent(agent_id="s7", inventory=None, holds=None, agent_version=None,
                  inventory_at=None)
        if kept_at is not None:
            a.inventory, a.holds, a.agent_version = {"kept": True}, [], "0.9"
            a.inventory_at = T0 + timedelta(minutes=kept_at)
        return a

    one_by_one, at_once = agent(), agent()
    stored = [store_inventory(one_by_one, body, at) for body, at in bodies]
    assert store_inventories(at_once, bodies) == any(stored)
    for column in ("inventory", "holds", "agent_version", "inventory_at"):
        assert getattr(at_once, column) == getattr(one_by_one, column), column
