"""``tiangong remote windows|freezes add|list|remove|end`` against a real ``tiangong hub
serve`` on 127.0.0.1: the same names, options and messages as ``tiangong hub windows|
freezes``, each change audited as the token's owner (``via api-token:…``); a person without
the admin role, a token without the admin scope, a bad SPEC and a second end are refused,
exit 1 with the hub's words, and change nothing (no rule, no ``window.*``/``freeze.*``
event; the refused call itself is audited as ``api.call`` with its status)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.db import AuditEvent, PolicyRule
from hub.services.tokens import issue_token
from tests.e2e.test_live_serve import HubServe
from tests.e2e.test_remote import _ctx, _hub_session, _remote
from tests.e2e.test_remote import served as served  # the fixture


def token_file(data: Path, tmp: Path, user: str, name: str, scopes: list[str]) -> Path:
    """A token ``name`` of ``user`` as its owner would issue it on the web UI, saved 0600."""
    with _hub_session(data) as session:
        secret = issue_token(_ctx(session, data, user), name, scopes, 7, max_days=90).secret
    path = tmp / f"{name}.token"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def _rules(data: Path) -> list[tuple[int, str, str | None, bool]]:
    with _hub_session(data) as session:
        return [(r.id, r.kind, r.environment.name if r.environment else None,
                 r.ended_at is not None) for r in session.scalars(select(PolicyRule))]


def _events(data: Path, prefix: str) -> list[tuple[str, str, dict[str, Any]]]:
    with _hub_session(data) as session:
        return [(e.action, e.actor, json.loads(e.details)) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith(prefix))
            .order_by(AuditEvent.seq))]


def test_windows_and_freezes_managed_remotely(
    tmp_path: Path, served: tuple[Path, dict[str, str], HubServe]
) -> None:
    data, _env, server = served
    admin = token_file(data, tmp_path, "admin", "admin-all", ["admin", "read"])
    op_admin_scope = token_file(data, tmp_path, "op", "op-admin", ["admin", "read"])
    op_read = token_file(data, tmp_path, "op", "op-read", ["read"])

    def remote(token: Path, *args: str, check: bool = True) -> Any:
        return _remote(server, token, *args, check=check)

    # Refusals first: nothing exists before or after them.
    bad = remote(admin, "windows", "add", "someday", "--environment", "plant-a", check=False)
    assert bad.returncode == 1
    assert "error: the hub refused (400 bad_request): window: " in bad.stderr
    role = remote(op_admin_scope, "windows", "add", "sat 01:00-05:00 UTC", "--environment",
                  "plant-a", check=False)
    assert role.returncode == 1 and "(403 forbidden)" in role.stderr
    assert "op may not environment.update" in role.stderr
    scope = remote(op_read, "freezes", "add", "12-24..12-26 UTC: x", check=False)
    assert scope.returncode == 1 and "(403 insufficient_scope)" in scope.stderr
    missing = remote(admin, "windows", "add", "sat 01:00-05:00 UTC", "--environment",
                     "nowhere", check=False)
    assert missing.returncode == 1 and "(404 not_found)" in missing.stderr
    assert _rules(data) == []
    assert _events(data, "window.") == [] and _events(data, "freeze.") == []
    refused_calls = [(actor, d["status"]) for _a, actor, d in _events(data, "api.call")]
    assert refused_calls == [("admin", 400), ("op", 403), ("op", 403), ("admin", 404)]

    # Added as `hub windows|freezes add` would say it.
    window = json.loads(remote(admin, "windows", "add", "sat,sun 01:00-05:00 Europe/Berlin",
                               "--environment", "plant-a", "--json").stdout)
    assert (window["kind"], window["environment"], window["product"]) == (
        "window", "plant-a", None)
    said = remote(admin, "freezes", "add", "12-20..01-05 UTC: year end").stdout
    assert said.startswith(f"freeze {window['id'] + 1} added: every year Dec 20 – Jan 5 UTC "
                           "(year end) (environment every, product every)"), said
    listed = remote(op_read, "windows", "list", "--environment", "plant-a").stdout
    assert "Europe/Berlin" in listed and "DESCRIPTION" in listed
    (freeze,) = json.loads(remote(op_read, "freezes", "list", "--json").stdout)

    # Ending: a reason is required (usage, exit 2, nothing sent); a second end is refused.
    no_reason = remote(admin, "freezes", "end", str(freeze["id"]), check=False)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    ended = remote(admin, "freezes", "end", str(freeze["id"]), "--reason", "close finished")
    assert ended.stdout.strip() == f"freeze {freeze['id']} ended (every year Dec 20 – Jan 5 " \
                                   "UTC (year end))"
    again = remote(admin, "freezes", "end", str(freeze["id"]), "--reason", "twice",
                   check=False)
    assert again.returncode == 1 and "(409 conflict)" in again.stderr
    assert "already ended" in again.stderr
    assert json.loads(remote(op_read, "freezes", "list", "--json").stdout) == []
    (kept,) = json.loads(remote(op_read, "freezes", "list", "--all", "--json").stdout)
    assert (kept["id"], kept["ended_by"]) == (freeze["id"], "admin")

    # Removing: the operator may not; the admin may, once.
    denied = remote(op_admin_scope, "windows", "remove", str(window["id"]), check=False)
    assert denied.returncode == 1 and "(403 forbidden)" in denied.stderr
    assert _rules(data) == [(window["id"], "window", "plant-a", False),
                            (freeze["id"], "freeze", None, True)]
    gone = json.loads(remote(admin, "windows", "remove", str(window["id"]), "--json").stdout)
    assert gone["id"] == window["id"]
    twice = remote(admin, "windows", "remove", str(window["id"]), check=False)
    assert twice.returncode == 1 and f"window {window['id']} does not exist" in twice.stderr
    assert _rules(data) == [(freeze["id"], "freeze", None, True)]

    # Audited as the token's owner, through the token.
    changes = [(a, actor) for a, actor, _d in _events(data, "window.")
               + _events(data, "freeze.")]
    assert sorted(changes) == [("freeze.add", "admin"), ("freeze.end", "admin"),
                               ("window.add", "admin"), ("window.remove", "admin")]
    assert all(d["via"].startswith("api-token:tgp_")
               for _a, _u, d in _events(data, "window.") + _events(data, "freeze."))
