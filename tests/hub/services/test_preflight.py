"""hub.services.preflight: a release against an agent's inventory (pure checks)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.services.preflight import DISK_FACTOR, check_inventory, clean_inventory

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
