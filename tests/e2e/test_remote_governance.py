"""``tiangong remote windows|freezes add|list|remove|end`` against a real ``tiangong hub
serve`` on 127.0.0.1: the same names, options and messages as ``tiangong hub windows|
freezes``, each change audited as the token's owner (``via api-token:…``); a person without
the admin role, a token without the admin scope, a bad SPEC and a second end are refused,
exit 1 with the hub's words, and change nothing (no rule, no ``window.*``/``freeze.*``
event; the refused call itself is audited as ``api.call`` with its status)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.db import AuditEvent, PolicyRule
from hub.services.tokens import issue_token
from tests.e2e.conftest import run
from tests.e2e.test_live_serve import HELLO, HubServe
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
    data, env, server = served
    admin = token_file(data, tmp_path, "admin", "admin-all", ["admin", "read", "deploy"])
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
    _override_part(tmp_path, data, env, server, admin)


def _override_part(tmp: Path, data: Path, env: dict[str, str], server: HubServe,
                   admin: Path) -> None:
    """``remote deployments why|override|confirm-override``: a deployment held by a freeze
    says so; the operator asks, cannot confirm their own request, the admin confirms."""
    for args in (("releases", "create", str(HELLO), "--create-product"),
                 ("releases", "submit", "hello", "1.0.0")):
        run("hub", "--local-admin", "dev", *args, env=env)
    run("hub", "--local-admin", "appr", "releases", "approve", "hello", "1.0.0", env=env)
    (dep,) = json.loads(run("hub", "--local-admin", "op", "deployments", "queue", "hello",
                            "1.0.0", "--environment", "plant-a", "--json", env=env).stdout)
    op = token_file(data, tmp, "op", "op-deploy", ["deploy", "read"])
    now = datetime.now(UTC)
    spec = (f"{(now - timedelta(hours=1)):%Y-%m-%dT%H:%MZ}/"
            f"{(now + timedelta(days=1)):%Y-%m-%dT%H:%MZ}: quarter close")
    assert _remote(server, admin, "freezes", "add", spec, "--environment", "plant-a").stdout
    why = _remote(server, op, "deployments", "why", str(dep["id"])).stdout
    assert why.startswith(f"deployment {dep['id']} (hello 1.0.0 → plant-a) is queued, "
                          "waiting for:\n  freeze: frozen until"), why
    asked = _remote(server, op, "deployments", "override", str(dep["id"]), "--reason",
                    "security fix").stdout.strip()
    assert asked == (f"override of deployment {dep['id']} requested by op; a second person "
                     "confirms it with `tiangong remote deployments confirm-override "
                     f"{dep['id']}`")
    own = _remote(server, op, "deployments", "confirm-override", str(dep["id"]), check=False)
    assert own.returncode == 1 and "op requested this override and cannot confirm it" in \
        own.stderr
    confirmed = json.loads(_remote(server, admin, "deployments", "confirm-override",
                                   str(dep["id"]), "--json").stdout)
    assert (confirmed["state"], confirmed["confirmed_by"]) == ("confirmed", "admin")
    waiting = json.loads(_remote(server, op, "deployments", "why", str(dep["id"]),
                                 "--json").stdout)["waiting_for"]
    assert [r["kind"] for r in waiting] == []
    assert [(a, actor) for a, actor, _d in _events(data, "override.")] == [
        ("override.request", "op"), ("override.confirm", "admin")]

    # Approving a promotion remotely: an approver may, the operator may not.
    run("hub", "--local-admin", "admin", "channels", "rule", "hello", "CANARY", "--approvals",
        "1", env=env)
    op_approve = token_file(data, tmp, "op", "op-approve", ["approve"])
    refused = _remote(server, op_approve, "releases", "approve-promotion", "hello", "1.0.0",
                      check=False)
    assert refused.returncode == 1 and "(403 forbidden)" in refused.stderr
    assert _events(data, "channel.promotion_approve") == []
    appr = token_file(data, tmp, "appr", "appr-approve", ["approve"])
    said = _remote(server, appr, "releases", "approve-promotion", "hello", "1.0.0",
                   "--comment", "canary ok").stdout.strip()
    assert said == "promoting hello 1.0.0 to CANARY approved (1 of 1 required: appr)"
    [(_a, actor, details)] = _events(data, "channel.promotion_approve")
    assert actor == "appr" and details["via"].startswith("api-token:tgp_")
    _channels_part(tmp, data, env, server, admin)


def _channels_part(tmp: Path, data: Path, env: dict[str, str], server: HubServe,
                   admin: Path) -> None:
    """``remote channels add|order|rule|remove``, ``remote environments subscribe|
    subscriptions|unsubscribe|preflight-policy``: the words of the `tiangong hub` commands;
    the operator refused (nothing changes); audited as the admin through the token."""
    op = token_file(data, tmp, "op", "op-admin-2", ["admin", "read"])
    changes = ("channel.add", "channel.reorder", "channel.rule", "channel.remove",
               "environment.")
    before = [e for p in changes for e in _events(data, p)]
    for args in (("channels", "add", "hello", "beta"),
                 ("environments", "subscribe", "plant-a", "--product", "hello", "--channel",
                  "STABLE"),
                 ("environments", "preflight-policy", "plant-a", "--within", "24")):
        refused = _remote(server, op, *args, check=False)
        assert refused.returncode == 1 and "(403 forbidden)" in refused.stderr, args
    both = _remote(server, admin, "environments", "preflight-policy", "plant-a", "--within",
                   "2", "--clear", check=False)
    assert both.returncode == 2 and "--clear takes no --within" in both.stderr
    assert [e for p in changes for e in _events(data, p)] == before

    said = _remote(server, admin, "channels", "add", "hello", "beta", "--after", "CANARY")
    assert said.stdout.strip() == "channel BETA added to hello: RELEASE → CANARY → BETA → STABLE"
    local = run("hub", "--local-admin", "admin", "channels", "order", "hello", "RELEASE",
                "BETA", "CANARY", "STABLE", env=env).stdout.strip()
    remote_said = _remote(server, admin, "channels", "order", "hello", "RELEASE", "BETA",
                          "CANARY", "STABLE").stdout.strip()
    assert local == remote_said == "channels of hello: RELEASE → BETA → CANARY → STABLE"
    rule = json.loads(_remote(server, admin, "channels", "rule", "hello", "BETA", "--soak",
                              "1h", "--json").stdout)
    assert (rule["channel"], rule["soak_seconds"]) == ("BETA", 3600)
    shown = _remote(server, op, "channels", "rule", "hello", "BETA").stdout.strip()
    assert shown == run("hub", "--local-admin", "admin", "channels", "rule", "hello", "BETA",
                        env=env).stdout.strip()
    assert _remote(server, admin, "environments", "subscribe", "plant-a", "--product", "hello",
                   "--channel", "beta").stdout.strip() == (
        "environment plant-a subscribes to BETA of hello")
    (sub,) = json.loads(_remote(server, op, "environments", "subscriptions", "plant-a",
                                "--json").stdout)
    assert (sub["product"], sub["channel"], sub["by"]) == ("hello", "BETA", "admin")
    assert _remote(server, admin, "environments", "unsubscribe", "plant-a", "--product",
                   "hello").stdout.strip() == (
        "environment plant-a no longer subscribes to BETA of hello")
    assert _remote(server, admin, "channels", "remove", "hello", "beta").stdout.strip() == (
        "channel BETA removed from hello: RELEASE → CANARY → STABLE")
    policy = _remote(server, admin, "environments", "preflight-policy", "plant-a",
                     "--within", "24").stdout.strip()
    assert policy == ("environment plant-a: every deployment needs a preflight plan of its "
                      "release passed on each target agent within 24 h")
    assert _remote(server, op, "environments", "preflight-policy", "plant-a").stdout.strip() \
        == policy == run("hub", "--local-admin", "admin", "environments", "preflight-policy",
                         "plant-a", env=env).stdout.strip()
    cleared = json.loads(_remote(server, admin, "environments", "preflight-policy", "plant-a",
                                 "--clear", "--json").stdout)
    assert cleared["preflight_within_h"] is None
    names = [e["name"] for e in json.loads(_remote(server, op, "environments", "--json").stdout)]
    assert "plant-a" in names  # `remote environments` still lists
    done = [(a, actor, d) for p in changes for a, actor, d in _events(data, p)
            if (a, actor, d) not in before]
    assert sorted(a for a, _u, _d in done) == [
        "channel.add", "channel.remove", "channel.reorder", "channel.reorder", "channel.rule",
        "environment.preflight_policy", "environment.preflight_policy",
        "environment.subscribe", "environment.unsubscribe"]
    assert {actor for _a, actor, _d in done} == {"admin"}
    vias = [str(d.get("via")) for _a, _u, d in done]  # one reorder was the local command's
    assert vias.count("local-admin") == 1
    assert all(v.startswith("api-token:tgp_") for v in vias if v != "local-admin")


def test_site_secrets_managed_remotely(
    tmp_path: Path, served: tuple[Path, dict[str, str], HubServe]
) -> None:
    """``remote secrets set|list|delete``: the value read from an environment variable,
    never printed back; the operator refused, nothing stored; audited as the admin."""
    data, _env, server = served
    admin = token_file(data, tmp_path, "admin", "admin-all", ["admin", "read"])
    op_admin_scope = token_file(data, tmp_path, "op", "op-admin", ["admin", "read"])
    value = "s3cret-Value-for-the-db"

    def remote(token: Path, *args: str) -> Any:
        proc = run("remote", "--url", f"http://127.0.0.1:{server.http_port}", "--token-file",
                   str(token), "secrets", *args, check=False,
                   env={"DB_PASS": value})
        assert value not in proc.stdout + proc.stderr
        return proc

    def stored() -> list[Path]:
        return sorted((data / "secrets").rglob("*.json"))

    refused = remote(op_admin_scope, "set", "plant-a", "db-pass", "--from-env", "DB_PASS")
    assert refused.returncode == 1 and "op may not environment.update" in refused.stderr
    assert stored() == [] and _events(data, "secret.") == []
    done = remote(admin, "set", "plant-a", "db-pass", "--from-env", "DB_PASS")
    assert done.stdout.strip() == ("secret db-pass of plant-a stored (encrypted; it is not "
                                   "shown again)")
    (listed,) = json.loads(remote(op_admin_scope, "list", "plant-a", "--json").stdout)
    assert (listed["name"], listed["set_by"]) == ("db-pass", "admin")
    denied = remote(op_admin_scope, "delete", "plant-a", "db-pass")
    assert denied.returncode == 1 and "(403 forbidden)" in denied.stderr
    assert remote(admin, "delete", "plant-a", "db-pass").stdout.strip() == (
        "secret db-pass of plant-a deleted")
    assert json.loads(remote(admin, "list", "plant-a", "--json").stdout) == []
    assert stored() == []
    actions = [(a, actor) for a, actor, _d in _events(data, "secret.")]
    assert actions == [("secret.set", "admin"), ("secret.deleted", "admin")]

