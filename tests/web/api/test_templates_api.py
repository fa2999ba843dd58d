"""The API's job templates (``/templates``): a definition added through the API is checked by
every rule of ``hub templates add`` (a refusal names the caller's file, never the hub's
temporary directory, and stores nothing); values are checked before anything is created;
a run goes the ad-hoc way (waits for its approval, or goes under a 0-approval policy);
``release`` gives the release files. Scopes and roles are refused, audited, and change
nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, JobTemplate, Release, db
from hub.services.adhoc_policy import set_adhoc_policy
from tests.web.api.conftest import api_for
from tests.web.pages import Site
from tests.web.test_pages_agents import enroll

DEFINITION = """name = "purge"
kind = "sql"
file = "purge.sql"
description = "old sessions"
[step]
engine = "postgres"
connection = "app-db"
[[params]]
name = "days"
type = "int"
min = 1
max = 365
default = 30
"""
SQL = "DELETE FROM sessions WHERE age_days > {{days}};\n"


def _add(definition: str = DEFINITION, sql: str = SQL, **extra: Any) -> dict[str, Any]:
    return {"definition_name": "purge.toml", "definition": definition,
            "file_name": "purge.sql",
            "content_base64": base64.b64encode(sql.encode()).decode(), **extra}


def _state(site: Site) -> tuple[int, int, int, list[str]]:
    with site.app.app_context():
        count = [int(db.session.scalar(select(func.count()).select_from(m)) or 0)
                 for m in (JobTemplate, Release, Deployment)]
        actions = [e.action for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("template.%")))]
        return count[0], count[1], count[2], actions


def test_templates_added_shown_and_refused(site: Site) -> None:
    dev = api_for(site, "dev", ["releases:write", "read"])
    before = _state(site)
    for api, status, body, message in (
        (api_for(site, "dev", ["read"]), 403, _add(), "lacks the scope 'releases:write'"),
        (api_for(site, "view", ["releases:write"]), 403, _add(), "view may not release.create"),
        (dev, 400, _add(sql="DELETE FROM s WHERE owner = {{who}};\n"),
         "purge.toml: file purge.sql: placeholder {{who}} names no parameter (declared: "
         "days)"),
        (dev, 400, _add(file_name="other.sql"), "purge.toml: file purge.sql:"),
        (dev, 400, _add(definition=DEFINITION.replace('kind = "sql"', 'kind = "ftp"')),
         "purge.toml: kind must be one of"),
        (dev, 400, _add(definition_name="../purge.toml"),
         "field 'definition_name' must be a plain file name"),
    ):
        answer = api.post("/templates", status, json=body)
        assert message in answer["message"], (message, answer)
        assert "tiangong-api-template-" not in answer["message"]
    assert _state(site) == before
    with site.app.app_context():  # each refused call audited as its caller, with its status
        calls = [(e.actor, json.loads(e.details)["status"]) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "api.call")
            .order_by(AuditEvent.seq))]
    assert calls == [("dev", 403), ("view", 403), *[("dev", 400)] * 4]

    added = dev.post("/templates", 201, json=_add())
    assert (added["name"], added["version"], added["kind"]) == ("purge", 1, "sql")
    assert dev.post("/templates", 201, json=_add(sql=SQL.upper().replace(
        "{{DAYS}}", "{{days}}")))["version"] == 2
    ping = dev.post("/templates", 201, json={
        "definition_name": "ping.toml", "definition": 'name = "ping"\nkind = "http"\n'
        '[step]\nurl = "https://status.internal/ping/{{who}}"\n[[params]]\nname = "who"\n'
        'type = "string"\n'})  # an http template without a body
    assert (ping["kind"], ping["file"], ping["step"]["url"]) == (
        "http", "", "https://status.internal/ping/{{who}}")
    dev.post("/templates", 400, json={"definition_name": "ping.toml",
                                      "definition": "name = 'ping'", "file_name": "x.json"})
    reader = api_for(site, "view", ["read"])
    assert [(t["name"], t["version"]) for t in reader.get("/templates")["templates"]] == [
        ("ping", 1), ("purge", 2)]
    shown = reader.get("/templates/purge?version=1")
    assert shown["text"] == SQL and shown["described"] == ["days (int 1..365, default 30)"]
    reader.get("/templates/purge?version=3", 404)
    reader.get("/templates/purge?version=x", 400)
    reader.get("/templates/nothing", 404)
    with site.app.app_context():
        [event, _second, _ping] = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "template.add")).all()
        assert event.actor == "dev"
        assert json.loads(event.details)["via"].startswith("api-token:tgp_")


def test_template_runs_and_release(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "run-agent-1")
    api_for(site, "dev", ["releases:write"]).post("/templates", 201, json=_add())
    admin = api_for(site, "admin", ["releases:write", "deploy", "read"])
    before = _state(site)
    for api, status, body, message in (
        (admin, 400, {"agent": "run-agent-1", "params": {"days": 400}},
         "template purge v1: parameter days: 400 is above the maximum 365"),
        (admin, 400, {"agent": "run-agent-1", "params": {"colour": "red"}},
         "unknown parameter colour (it takes days)"),
        (admin, 400, {"agent": "run-agent-1", "params": {"days": [1]}},
         "a value is a string, a number or a boolean"),
        (admin, 404, {"agent": "nowhere"}, "agent 'nowhere' does not exist"),
        (api_for(site, "dev", ["releases:write", "deploy"]), 403, {"agent": "run-agent-1"},
         "dev may not deployment.queue in environment test"),
        (api_for(site, "admin", ["deploy"]), 403, {"agent": "run-agent-1"},
         "lacks the scope 'releases:write'"),
    ):
        answer = api.post("/templates/purge/runs", status, json=body)
        assert message in answer["message"], (message, answer)
    admin.post("/templates/nothing/runs", 404, json={"agent": "run-agent-1"})
    assert _state(site) == before

    waits = admin.post("/templates/purge/runs", 201,
                       json={"agent": "run-agent-1", "params": {"days": 90}})
    assert (waits["shipped"], waits["template"]) == (False, "template purge v1")
    assert "waiting for 1 approval" in waits["waiting_for"]
    with site.app.app_context():
        set_adhoc_policy(site.ctx("admin"), "test", 0)
        db.session.commit()
    went = admin.post("/templates/purge/runs", 201, json={"agent": "run-agent-1"})
    assert went["shipped"] is True and went["deployment"] is not None
    with site.app.app_context():
        rel = db.session.scalars(select(Release).order_by(Release.id.desc())).first()
        assert rel is not None and rel.steps[0]["name"] == "purge v1"
        runs = [json.loads(e.details)["values"] for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "template.run"))]
        assert runs == [{"days": 90}, {"days": 30}]

    files = api_for(site, "dev", ["releases:write"]).post(
        "/templates/purge/release", json={"product": "ops", "release_version": "1.0.0",
                                          "params": {"days": "7"}})
    assert files["template"] == "template purge v1" and files["values"] == {"days": 7}
    toml = base64.b64decode(files["files"]["release.toml"]).decode()
    assert 'product = "ops"' in toml and 'version = "1.0.0"' in toml
    assert base64.b64decode(files["files"]["run.sql"]) == (
        b"DELETE FROM sessions WHERE age_days > 7;\n")
    api_for(site, "op", ["releases:write"]).post(
        "/templates/purge/release", 403, json={"product": "ops", "release_version": "1.0.1"})
    refused = api_for(site, "dev", ["releases:write"]).post(  # a name no release may have
        "/templates/purge/release", 400, json={"product": "Ops", "release_version": "1.0.1"})
    assert refused["message"].startswith("template purge v1: release.toml: [release] "
                                         "product = 'Ops' is not valid: lower-case letters")
    with site.app.app_context():
        released = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "template.release")).all()
        assert [e.actor for e in released] == ["dev"]


PING = """name = "ping"
kind = "http"
[step]
url = "https://status.internal/ping"
secret_headers = { Authorization = "{{token}}" }
[[params]]
name = "token"
type = "secret-ref"
choices = ["status-token"]
default = "status-token"
"""


def test_a_secret_ref_names_only_the_secrets_its_author_allowed(site: Site,
                                                                 tmp_path: Path) -> None:
    """A run naming another secret of the environment is refused before anything is
    created, naming the parameter and the secret, and audited as the token's owner; a
    definition whose secret-ref lists no choices is refused when added."""
    enroll(site, tmp_path, "run-agent-1")
    dev = api_for(site, "dev", ["releases:write"])
    answer = dev.post("/templates", 400, json={"definition_name": "ping.toml",
                                               "definition": PING.replace(
                                                   'choices = ["status-token"]\n', "")})
    assert "ping.toml: parameter token: a secret-ref needs 'choices'" in answer["message"]
    dev.post("/templates", 201, json={"definition_name": "ping.toml", "definition": PING})
    admin = api_for(site, "admin", ["releases:write", "deploy", "read"])
    before = _state(site)
    answer = admin.post("/templates/ping/runs", 400, json={
        "agent": "run-agent-1", "params": {"token": "db-root-password"}})
    assert answer["message"] == ("template ping v1: parameter token: secret "
                                 "'db-root-password' is not one the template allows "
                                 "(status-token)")
    admin.post("/templates/ping/release", 400, json={
        "product": "ops", "release_version": "1.0.0", "params": {"token": "db-root-password"}})
    count = before[:3]
    assert _state(site)[:3] == count  # no template, release or deployment more
    with site.app.app_context():
        refused = db.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "template.refused").order_by(AuditEvent.seq)).all()
        assert [(e.actor, e.object_id) for e in refused] == [("admin", "ping v1")] * 2
        details = json.loads(refused[0].details)
        assert (details["parameter"], details["secret"], details["allowed"]) == (
            "token", "db-root-password", ["status-token"])
        assert "is not one the template allows" in details["refused"]
    went = admin.post("/templates/ping/runs", 201, json={"agent": "run-agent-1"})
    assert went["template"] == "template ping v1"


def test_template_versions_that_are_no_numbers_are_refused(site: Site) -> None:
    """A superscript digit ('\u00b2' is str.isdigit() but not int()) and a version past the
    database's integer were a 500 (ValueError, OverflowError) in show, run and release."""
    dev = api_for(site, "dev", ["releases:write", "read", "deploy"])
    dev.post("/templates", 201, json=_add())
    before = _state(site)
    for query in ("%C2%B2", "99999999999999999999", "0"):
        body = dev.get(f"/templates/purge?version={query}", 400)
        assert "must be a version number" in body["message"]
    for version in (2**70, 0):
        body = dev.post("/templates/purge/release", 400, json={
            "product": "p", "release_version": "1.0.0", "version": version})
        assert "field 'version' is a version number" in body["message"]
    resp = site.app.test_client().get("/api/v1/deployments/99999999999999999999/progress",
                                      headers={"Authorization": f"Bearer {dev.token}"})
    assert resp.status_code == 404  # a path id past the database's integer names nothing
    body = dev.get("/templates/" + "a" * 5000, 404)  # the name is cut, as other 404s
    assert body["message"] == f"template {'a' * 64!r} not found (`tiangong hub templates list`)"
    assert _state(site) == before
