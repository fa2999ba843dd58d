"""The API's ad-hoc runs (``POST /runs``, ``POST /runs/{version}/ship``, ``GET
/deployments/{id}/progress``): the same services as ``tiangong run`` and the web's Run…
form — a run waits, submitted, for the approval the environment's ad-hoc policy wants, goes
under a 0-approval policy, and is followed by polling; every refusal (scope, role, bad
field, unknown agent, a kind's missing option, approvals still missing) answers JSON naming
the rule and leaves no release, no deployment and no run event behind."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, Release, db
from hub.services.adhoc_policy import set_adhoc_policy
from hub.services.approvals import approve_release
from hub.services.releases import get_release
from tests.web.api.conftest import api_for
from tests.web.pages import Site
from tests.web.test_pages_agents import enroll


def _state(site: Site) -> tuple[int, int, list[str]]:
    """Releases, deployments, and the actions audited (but ``api.call`` and issuing the
    tokens the test uses)."""
    with site.app.app_context():
        return (int(db.session.scalar(select(func.count()).select_from(Release)) or 0),
                int(db.session.scalar(select(func.count()).select_from(Deployment)) or 0),
                [e.action for e in db.session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.action.not_in(("api.call", "token.issue")))
                    .order_by(AuditEvent.seq))])


def _shell(text: str = "echo hi\n", **extra: Any) -> dict[str, Any]:
    return {"kind": "shell", "agent": "run-agent-1", "file_name": "hi.sh",
            "content_base64": base64.b64encode(text.encode()).decode(), **extra}


def _calls(site: Site) -> list[tuple[str, int]]:
    with site.app.app_context():
        return [(e.actor, json.loads(e.details)["status"]) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "api.call")
            .order_by(AuditEvent.seq))]


def test_run_refusals_change_nothing(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "run-agent-1")
    before = _state(site)
    admin = api_for(site, "admin", ["releases:write", "deploy", "read"])
    refusals: list[tuple[Any, int, dict[str, Any], str]] = [
        (api_for(site, "admin", ["deploy"]), 403, _shell(), "lacks the scope 'releases:write'"),
        (api_for(site, "admin", ["releases:write"]), 403, _shell(), "lacks the scope 'deploy'"),
        # each holds one of the two roles a run needs
        (api_for(site, "dev", ["releases:write", "deploy"]), 403, _shell(),
         "dev may not deployment.queue in environment test"),
        (api_for(site, "op", ["releases:write", "deploy"]), 403, _shell(),
         "op may not release.create"),
        (admin, 404, _shell(agent="nowhere"), "agent 'nowhere' does not exist"),
        (admin, 400, _shell(kind="ftp"), "an ad-hoc run is sql, shell, k8s, http, not 'ftp'"),
        (admin, 400, {"kind": "shell"}, "fields 'kind' and 'agent' are required"),
        (admin, 400, _shell(kind="sql"), "a sql run needs connection"),
        (admin, 400, _shell(engine="mysql"), "a shell run does not take engine"),
        (admin, 400, _shell(colour="red"), "unknown field 'colour'"),
        (admin, 400, _shell(content_base64="not base64!"), "is not base64"),
        (admin, 400, _shell(file_name="../etc/passwd"), "must be a plain file name"),
        (admin, 400, _shell(kind="sql", connection="app-db", timeout="a while"),
         "timeout"),
        (admin, 400, {"kind": "http", "agent": "run-agent-1", "url": "https://x.internal/",
                      "headers": {"A": 1}}, "field 'headers' must map names to strings"),
    ]
    for api, status, body, message in refusals:
        answer = api.post("/runs", status, json=body)
        assert message in answer["message"], (message, answer)
    assert _state(site) == before
    # Each refused call is audited as its caller, with its status.
    assert [s for _u, s in _calls(site)] == [status for _a, status, _b, _m in refusals]
    assert {u for u, _s in _calls(site)} == {"admin", "dev", "op"}


def test_a_run_waits_then_ships_and_is_followed(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "run-agent-1")
    admin = api_for(site, "admin", ["releases:write", "deploy", "read"])
    waiting = admin.post("/runs", 201, json=_shell(reason="clear the cache"))
    assert (waiting["shipped"], waiting["deployment"], waiting["state"]) == (
        False, None, "submitted")
    assert waiting["waiting_for"].startswith(
        f"release adhoc {waiting['version']} not shipped: environment test requires 1 "
        "approval, it has 0; waiting for 1 approval")
    _releases, deployments, actions = _state(site)
    assert deployments == 0 and "release.submit" in actions
    assert "deployment.queue" not in actions
    with site.app.app_context():
        rel = get_release(db.session(), "adhoc", waiting["version"])
        assert "clear the cache" in rel.description and "from the HTTP API" in rel.description
        assert rel.steps[0]["name"] == "run hi.sh"

    # Shipping before the approval is refused, nothing queued; after it, queued.
    before = _state(site)
    refused = admin.post(f"/runs/{waiting['version']}/ship", 409,
                         json={"agent": "run-agent-1"})
    assert "waiting for 1 approval" in refused["message"] and _state(site) == before
    api_for(site, "op", ["deploy"]).post(f"/runs/{waiting['version']}/ship", 404,
                                         json={"agent": "nowhere"})
    with site.app.app_context():
        approve_release(site.ctx("appr1"), get_release(db.session(), "adhoc",
                                                       waiting["version"]))
        db.session.commit()
    shipped = api_for(site, "op", ["deploy"]).post(f"/runs/{waiting['version']}/ship",
                                                   json={"agent": "run-agent-1"})
    assert shipped["shipped"] is True and shipped["state"] == "approved"

    # Under a 0-approval policy a run goes at once.
    with site.app.app_context():
        set_adhoc_policy(site.ctx("admin"), "test", 0)
        db.session.commit()
    went = admin.post("/runs", 201, json={
        "kind": "http", "agent": "run-agent-1", "url": "https://cache.internal/purge",
        "method": "POST", "expect": [204, "2xx"], "retries": 2,
        "headers": {"Content-Type": "application/json"}, "file_name": "body.json",
        "content_base64": base64.b64encode(b'{"all": true}').decode()})
    assert went["shipped"] is True and went["state"] == "approved"
    with site.app.app_context():
        dep = db.session.get(Deployment, went["deployment"])
        assert dep is not None and dep.state == "queued"
        step = dep.release.steps[0]
        assert (step["name"], step["method"], step["expect"], step["retries"]) == (
            "POST https://cache.internal/purge", "POST", [204, "2xx"], 2)
        actions = [e.action for e in db.session.scalars(select(AuditEvent))]
        assert "release.policy_approve" in actions
        via = [json.loads(e.details).get("via") for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "release.create"))]
        assert all(v is not None and v.startswith("api-token:tgp_") for v in via)

    # Following: the state, no lines yet, the agent offline, not done.
    reader = api_for(site, "view", ["read"])
    progress = reader.get(f"/deployments/{went['deployment']}/progress")
    assert progress == {"deployment": went["deployment"], "state": "queued", "done": False,
                        "agent_online": False, "last_seq": -1, "lines": [], "result": None}
    reader.get(f"/deployments/{went['deployment']}/progress?after=x", 400)
    api_for(site, "view-test", ["read"]).get("/deployments/99999/progress", 404)
    api_for(site, "appr-prod", ["read"]).get(f"/deployments/{went['deployment']}/progress",
                                             404)


def test_a_run_on_media_answers_its_bundle(site: Site, tmp_path: Path) -> None:
    """`"out": true` (`tiangong remote run … --out DIR`): the run is created and submitted,
    then exported as `tiangong run --out` would write it, valid `expires`; the answer carries
    the bundle and the media's INDEX, and nothing is left in the hub's export directory. A
    run the policy holds is created, submitted and not exported; `expires` without `out`
    is refused, nothing created."""
    from bundle.inspect import inspect
    from hub.app import hub_config
    from web.media import EXPORTS_DIR

    enroll(site, tmp_path, "run-agent-1")
    admin = api_for(site, "admin", ["releases:write", "deploy", "read"])
    before = _state(site)
    refused = admin.post("/runs", 400, json=_shell(expires="2d"))
    assert "field 'expires' is for a bundle on media" in refused["message"]
    bad = admin.post("/runs", 400, json=_shell(out=True, expires="soon"))
    assert "field 'expires'" in bad["message"]
    assert _state(site) == before

    held = admin.post("/runs", 201, json=_shell(out=True))
    assert (held["shipped"], held["deployment"], held["state"]) == (False, None, "submitted")
    assert "waiting for 1 approval" in held["waiting_for"] and "media" not in held
    assert _state(site)[1] == 0  # created and submitted, nothing queued

    with site.app.app_context():
        set_adhoc_policy(site.ctx("admin"), "test", 0)
        db.session.commit()
    went = admin.post("/runs", 201, json=_shell(out=True, expires="2d"))
    media = went["media"]
    assert went["shipped"] is True and media["download"] is None and media["failed"] == []
    assert media["expires_in_s"] == 2 * 86400
    (bundle,) = [f for f in media["files"] if f["name"].endswith(".tgb")]
    assert (bundle["deployment"], bundle["sequence"]) == (went["deployment"], 1)
    assert any(f["name"].startswith("INDEX-") for f in media["files"])
    path = tmp_path / bundle["name"]
    path.write_bytes(base64.b64decode(bundle["content_base64"]))
    seen = inspect(path).manifest
    assert seen is not None and seen.target.agents == ("run-agent-1",)
    assert seen.expires - seen.created == 2 * 86400
    with site.app.app_context():
        dep = db.session.get(Deployment, went["deployment"])
        assert dep is not None and dep.state == "exported"
        exports = hub_config().data_dir / EXPORTS_DIR
        assert not exports.exists() or list(exports.iterdir()) == []
