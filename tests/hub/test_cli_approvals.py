"""CLI for the hub's approval rules and approver groups: ``hub users groups``, ``hub
environments approval-rule`` (set, list, per channel, refused values change nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub.test_cli import hub_dir, run

__all__ = ["hub_dir"]


def test_groups_and_rules_from_the_cli(hub_dir: Path) -> None:
    run(hub_dir, "environments", "create", "prod")
    run(hub_dir, "users", "groups", "add", "alice", "dba")
    run(hub_dir, "users", "groups", "add", "bob", "ops")
    groups = json.loads(run(hub_dir, "users", "groups", "list", "--json").output)
    assert {g["username"]: g["groups"] for g in groups}["alice"] == ["dba"]
    out = run(hub_dir, "environments", "approval-rule", "prod", "--required", "2",
              "--min-groups", "2", "--group", "dba", "--group", "ops")
    assert out.output.strip() == (
        "environment prod: 2 approvals from 2 groups (dba, ops)"
    )
    run(hub_dir, "environments", "approval-rule", "prod", "--channel", "stable",
        "--required", "1", "--min-groups", "1")
    rules = json.loads(run(hub_dir, "environments", "approval-rule", "prod", "--json").output)
    assert rules == [
        {"environment": "prod", "channel": None, "required": 2, "groups": ["dba", "ops"],
         "min_groups": 2},
        {"environment": "prod", "channel": "stable", "required": 1, "groups": ["dba", "ops"],
         "min_groups": 1},
    ]
    # a rule that cannot be met is refused and nothing changes
    bad = run(hub_dir, "environments", "approval-rule", "prod", "--min-groups", "3", ok=False)
    assert bad.exit_code != 0 and "min groups must be 1..2" in bad.output
    again = json.loads(run(hub_dir, "environments", "approval-rule", "prod", "--json").output)
    assert again == rules
    # only admins change groups
    denied = run(hub_dir, "users", "groups", "add", "bob", "dba", actor="bob", ok=False)
    assert denied.exit_code != 0 and "may not user.manage" in denied.output
    run(hub_dir, "environments", "approval-rule", "prod", "--channel", "stable", "--clear")
    assert len(json.loads(run(hub_dir, "environments", "approval-rule", "prod",
                              "--json").output)) == 1
