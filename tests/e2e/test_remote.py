"""``tiangong remote`` against a real ``tiangong hub serve`` on 127.0.0.1: a CI token uploads
and submits a release directory, an approver approves, an operator queues, each with their
own personal token; refusals (a token without the scope or the role, a revoked token, a
token file others may read, plain http beyond loopback) exit non-zero, say why, and change
nothing; the audit log names each person, says "via api-token:…", and still verifies."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.config import load_config
from hub.db import Approval, AuditEvent, Release, make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.services.context import ServiceContext, utc_now
from hub.services.tokens import issue_token, revoke_token
from hub.services.users import get_user
from tests.e2e.conftest import run
from tests.e2e.test_live_serve import HELLO, HubServe, start_hub_serve


@contextmanager
def _hub_session(data: Path) -> Iterator[Session]:
    cfg = load_config(data)
    keys = load_hub_keys(data)
    engine = make_engine(cfg.database_url, audit_mac=keys.audit_mac)
    session = make_session_factory(engine)()
    try:
        yield session
        session.commit()
    finally:
        session.close()
        engine.dispose()


def _ctx(session: Session, data: Path, user: str) -> ServiceContext:
    return ServiceContext(session, utc_now, get_user(session, user), load_hub_keys(data),
                          data / "releases")


def _token_file(data: Path, tmp: Path, user: str, scopes: list[str]) -> tuple[Path, int]:
    """A token of ``user`` as its owner would issue it on the web UI, saved 0600."""
    with _hub_session(data) as session:
        issued = issue_token(_ctx(session, data, user), f"{user}-cli", scopes, 7, max_days=90)
        token_id, secret = issued.token.id, issued.secret
    path = tmp / f"{user}.token"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path, token_id


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], HubServe]]:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}
    run("hub", "--local-admin", "admin", "init", "--admin", "admin", "--hub-id", "hub-remote",
        "--environment", "plant-a", env=env)
    for name, role in (("dev", "developer"), ("appr", "approver"), ("op", "operator"),
                       ("aud", "auditor")):
        run("hub", "--local-admin", "admin", "users", "add", name, "--role", role, env=env)
    server = start_hub_serve(data, env, tmp_path / "hub-serve.log")
    try:
        yield data, env, server
    finally:
        server.stop()


def _remote(server: HubServe, token: Path, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("remote", "--url", f"http://127.0.0.1:{server.http_port}", "--token-file",
               str(token), *args, check=check)


def _releases(data: Path) -> list[tuple[str, str]]:
    with _hub_session(data) as session:
        return [(r.version, r.state) for r in session.scalars(select(Release))]


def test_ci_and_people_work_through_the_api_with_their_own_tokens(
    tmp_path: Path, served: tuple[Path, dict[str, str], HubServe]
) -> None:
    data, env, server = served
    ci, _ = _token_file(data, tmp_path, "dev", ["read", "releases:write"])
    appr, _ = _token_file(data, tmp_path, "appr", ["approve", "read"])
    op, _ = _token_file(data, tmp_path, "op", ["deploy", "read"])

    who = json.loads(_remote(server, ci, "whoami", "--json").stdout)
    assert who["user"] == "dev" and who["token"]["scopes"] == ["read", "releases:write"]
    created = json.loads(_remote(server, ci, "releases", "upload", str(HELLO), "--json").stdout)
    assert (created["product"], created["version"], created["state"]) == ("hello", "1.0.0",
                                                                        "draft")
    assert "submitted" in _remote(server, ci, "releases", "submit", "hello", "1.0.0").stdout

    # The author's CI token may not approve: no scope; with the scope, the four-eyes rule.
    refused = _remote(server, ci, "releases", "approve", "hello", "1.0.0", check=False)
    assert refused.returncode == 1
    assert "the hub refused (403 insufficient_scope)" in refused.stderr
    assert _releases(data) == [("1.0.0", "submitted")]

    # The approver signs at their desk with their personal key and uploads the file.
    key, approval = tmp_path / "appr.key", tmp_path / "approval.json"
    run("keys", "generate", "--role", "approver", "--kdf-profile", "interactive", "-o",
        str(key), env=env)
    run("hub", "--local-admin", "admin", "users", "add-key", "appr", f"{key}.pub", env=env)
    run("keys", "approve", "--key", str(key), "--approver", "appr", "--release", str(HELLO),
        "--environment", "plant-a", "--comment", "ok", "-o", str(approval), env=env)
    approved = json.loads(_remote(server, appr, "releases", "approve", "hello", "1.0.0",
                                  "--signature", str(approval), "--json").stdout)
    assert approved["state"] == "approved"
    assert approved["approvals"][0]["signed_by"] is not None
    with _hub_session(data) as session:
        (stored,) = session.scalars(select(Approval)).all()
        assert stored.envelope == approval.read_bytes()
    queued = json.loads(_remote(server, op, "deployments", "queue", "hello", "1.0.0",
                                "--environment", "plant-a", "--json").stdout)
    assert [(d["environment"], d["state"], d["queued_by"]) for d in queued] == [
        ("plant-a", "queued", "op")]
    table = _remote(server, op, "deployments", "list").stdout
    assert "plant-a" in table and "queued" in table and "WAITING_FOR" in table
    shown = json.loads(_remote(server, op, "deployments", "show", str(queued[0]["id"]),
                               "--json").stdout)
    assert shown["id"] == queued[0]["id"] and isinstance(shown["waiting_for"], list)
    listed = json.loads(_remote(server, op, "releases", "list", "--json").stdout)
    assert [(r["version"], r["state"]) for r in listed] == [("1.0.0", "approved")]

    # Change control over the API: channels, promotion, recall, windows and freezes.
    chans = json.loads(_remote(server, op, "channels", "hello", "--json").stdout)
    assert [(c["channel"], c["releases"]) for c in chans] == [
        ("RELEASE", ["1.0.0"]), ("CANARY", []), ("STABLE", [])]
    promoted = _remote(server, op, "releases", "promote", "hello", "1.0.0").stdout
    assert "promoted from RELEASE to CANARY" in promoted
    recalled = json.loads(_remote(server, op, "releases", "recall", "hello", "1.0.0",
                                  "--channel", "CANARY", "--reason", "bad build",
                                  "--json").stdout)
    assert recalled["channels"] == ["CANARY"]
    run("hub", "--local-admin", "admin", "windows", "add", "sat 01:00-05:00 UTC",
        "--environment", "plant-a", env=env)
    (window,) = json.loads(_remote(server, op, "windows", "list", "--environment", "plant-a",
                                   "--json").stdout)
    assert window["environment"] == "plant-a" and "Sat" in window["description"]
    assert json.loads(_remote(server, op, "freezes", "list", "--json").stdout) == []

    with _hub_session(data) as session:
        events = {e.action: e for e in session.scalars(select(AuditEvent))}
    for action, actor in (("release.create", "dev"), ("release.submit", "dev"),
                          ("release.approve", "appr"), ("deployment.queue", "op")):
        assert events[action].actor == actor
        assert json.loads(events[action].details)["via"].startswith("api-token:tgp_")
    verified = run("hub", "--local-admin", "aud", "audit", "verify", "--json", env=env)
    assert json.loads(verified.stdout)["ok"] is True


def test_refusals_exit_non_zero_say_why_and_change_nothing(
    tmp_path: Path, served: tuple[Path, dict[str, str], HubServe]
) -> None:
    data, _env, server = served
    ci, ci_id = _token_file(data, tmp_path, "dev", ["releases:write"])
    with _hub_session(data) as session:
        revoke_token(_ctx(session, data, "dev"), ci_id)
    revoked = _remote(server, ci, "releases", "upload", str(HELLO), check=False)
    assert revoked.returncode == 1 and "(401 unauthorized)" in revoked.stderr
    assert "was revoked at" in revoked.stderr

    loose, _ = _token_file(data, tmp_path, "appr", ["approve"])
    loose.chmod(0o644)
    refused = _remote(server, loose, "releases", "list", check=False)
    assert refused.returncode == 2
    assert f"token file {loose}: group or others may access it (mode 0644)" in refused.stderr
    assert f"chmod 600 {loose}" in refused.stderr

    clear = run("remote", "--url", "http://hub.example.org", "--token-file", str(ci),
                "releases", "list", check=False)
    assert clear.returncode == 2 and "plain http sends the token in clear" in clear.stderr
    # The operator's token with the approve scope still lacks the approver role.
    op, _ = _token_file(data, tmp_path, "op", ["approve", "releases:write"])
    made = _remote(server, op, "releases", "upload", str(HELLO), check=False)
    assert made.returncode == 1 and "(403 forbidden)" in made.stderr
    assert "op may not release.create" in made.stderr
    assert _releases(data) == []
