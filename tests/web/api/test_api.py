"""The HTTP API with personal tokens: a CI system's whole flow, every refusal (JSON error,
nothing changed), the upload caps, scope-limited visibility, and the audit of every call.
Every answer is checked against the OpenAPI document (tests/web/api/conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.db import ApiToken, AuditEvent, Deployment, db
from hub.services.approvers import register_key
from hub.services.readiness import waiting_for
from hub.services.releases import get_release
from hub.services.tokens import revoke_token
from hub.services.users import set_active
from hub.services.windows import add_rule
from signing.approvals import MAX_APPROVAL_BYTES, ApprovalDocument, sign_approval
from signing.keys import SigningKey
from tests.hub.services.approval_helpers import public_file
from tests.web.api.conftest import Api, api_for, token_for
from tests.web.pages import Site, make_site
from tests.web.test_pages_agents import enroll
from tests.web.test_pages_releases import counts, hello_tgz, make_release, stored


def _events(site: Site, action: str) -> list[AuditEvent]:
    with site.app.app_context():
        return list(db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _upload(api: Api, data: bytes, name: str, status: int) -> Any:
    return api.post("/releases", status, data={"archive": (io.BytesIO(data), name)},
                    content_type="multipart/form-data")


def test_ci_uploads_submits_and_people_approve_and_queue(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "plant-01", "test")
    ci = api_for(site, "dev", ["read", "releases:write"])
    created = _upload(ci, hello_tgz(tmp_path, "2.0.0"), "hello-2.0.0.tgz", 201)
    assert (created["product"], created["version"], created["state"]) == ("hello", "2.0.0",
                                                                        "draft")
    assert created["author"] == "dev" and created["steps"] == ["greet"]
    assert ci.post("/releases/hello/2.0.0/submit")["state"] == "submitted"
    assert [r["version"] for r in ci.get("/releases?product=hello")["releases"]] == ["2.0.0"]

    approver = api_for(site, "appr1", ["approve", "read"])
    approved = approver.post("/releases/hello/2.0.0/approve", json={"comment": "lgtm"})
    assert approved["state"] == "approved"
    assert [(a["by"], a["comment"]) for a in approved["approvals"]] == [("appr1", "lgtm")]

    operator = api_for(site, "op", ["deploy", "read"])
    queued = operator.post("/releases/hello/2.0.0/deployments", 201,
                           json={"environment": "test"})["deployments"]
    assert [(d["agent"], d["state"], d["queued_by"]) for d in queued] == [
        ("plant-01", "queued", "op")]
    listed = operator.get("/deployments?environment=test")["deployments"]
    assert [d["id"] for d in listed] == [queued[0]["id"]]
    assert operator.get(f"/deployments/{queued[0]['id']}")["version"] == "2.0.0"
    assert [e["name"] for e in operator.get("/environments")["environments"]] == ["prod", "test"]
    (agent,) = operator.get("/agents")["agents"]
    assert (agent["agent_id"], agent["presence"]) == ("plant-01", "never")
    me = operator.get("/me")
    assert me["user"] == "op" and me["token"]["scopes"] == ["read", "deploy"]

    # Audit: the services' events say they came through a token; every call is an event.
    with site.app.app_context():
        prefixes = {t.user.username: t.prefix for t in db.session.scalars(select(ApiToken))}
    (create_event,) = _events(site, "release.create")
    assert create_event.actor == "dev"
    assert json.loads(create_event.details)["via"] == f"api-token:{prefixes['dev']}"
    (approve_event,) = _events(site, "release.approve")
    assert json.loads(approve_event.details)["via"] == f"api-token:{prefixes['appr1']}"
    calls = [(e.actor, e.object_id, json.loads(e.details)) for e in _events(site, "api.call")]
    assert len(calls) == 10
    assert calls[0][:2] == ("dev", prefixes["dev"])
    assert calls[0][2]["method"] == "POST" and calls[0][2]["path"] == "/api/v1/releases"
    assert calls[0][2]["status"] == 201 and isinstance(calls[0][2]["token_id"], int)
    with site.app.app_context():
        used = {t.prefix: t.last_used_at for t in db.session.scalars(select(ApiToken))}
    assert all(used[p] == site.clock() for p in prefixes.values())


def _state(site: Site) -> tuple[str, int, int]:
    with site.app.app_context():
        rel = get_release(db.session(), "hello", "1.0.0")
        n_deps = db.session.scalar(select(func.count()).select_from(Deployment)) or 0
        n_approve = len(_events(site, "release.approve"))
        return rel.state, n_deps, n_approve + len(rel.approvals)


@pytest.mark.parametrize(("case", "status", "code", "audited"), [
    ("no-header", 401, "unauthorized", None),
    ("basic-auth", 401, "unauthorized", None),
    ("malformed", 401, "unauthorized", None),
    ("unknown", 401, "unauthorized", None),
    ("wrong-secret", 401, "unauthorized", "api.refused"),
    ("revoked", 401, "unauthorized", "api.refused"),
    ("expired", 401, "unauthorized", "api.refused"),
    ("owner-deactivated", 401, "unauthorized", "api.refused"),
    ("wrong-scope", 403, "insufficient_scope", "api.call"),
    ("role-missing", 403, "forbidden", "api.call"),
    ("session-cookie", 401, "unauthorized", None),
])
def test_refused_calls_answer_json_and_change_nothing(
    site: Site, tmp_path: Path, case: str, status: int, code: str, audited: str | None
) -> None:
    make_release(site, tmp_path)  # hello 1.0.0 by dev, submitted
    secret = token_for(site, "appr1" if case != "role-missing" else "dev", ["approve"], days=1)
    headers: dict[str, str] = {}
    client = None
    token: str | None = secret
    if case == "no-header":
        token = None
    elif case == "basic-auth":
        token, headers = None, {"Authorization": "Basic YXBwcjE6cGFzc3dvcmQ="}
    elif case == "malformed":
        token = "not-a-token"
    elif case == "unknown":
        token = "tgp_0123456789_" + "x" * 43
    elif case == "wrong-secret":
        token = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")
    elif case == "revoked":
        with site.app.app_context():
            tid = db.session.scalar(select(ApiToken.id).where(
                ApiToken.prefix == secret.split("_", 2)[0] + "_" + secret.split("_", 2)[1]))
            assert tid is not None
            revoke_token(site.ctx("appr1"), tid)
            db.session.commit()
    elif case == "expired":
        site.clock.advance(86400)
    elif case == "owner-deactivated":
        with site.app.app_context():
            set_active(site.ctx("admin"), "appr1", False)
            db.session.commit()
    elif case == "wrong-scope":
        token = token_for(site, "appr1", ["read"])
    elif case == "session-cookie":
        # A signed-in approver's browser, with its CSRF token: still no access to the API.
        client = site.client("appr1")
        token, headers = None, {"X-CSRF-Token": site.token(client)}
    api = Api(site, token, client)
    before = _state(site)
    refused_before = len(_events(site, "api.refused")) + len(_events(site, "api.call"))
    body = api.post("/releases/hello/1.0.0/approve", status, json={"comment": "x"},
                    headers=headers)
    assert body["error"] == code and body["message"]
    assert secret.split("_", 2)[2] not in body["message"]
    assert _state(site) == before == ("submitted", 0, 0)
    after = len(_events(site, "api.refused")) + len(_events(site, "api.call"))
    if audited is None:
        assert after == refused_before
    else:
        (event,) = _events(site, audited)[-1:]
        details = json.loads(event.details)
        assert details["status"] == status and details["path"].endswith("/approve")
        assert event.actor == ("dev" if case == "role-missing" else "appr1")


def test_upload_caps_are_the_web_settings(tmp_path: Path) -> None:
    with make_site(tmp_path, max_upload_bytes=2048) as site:
        ci = api_for(site, "dev", ["releases:write"])
        before = counts(site)
        body = _upload(ci, b"\0" * 4096, "big.tgz", 413)
        assert body["error"] == "too_large"
        assert "2 KiB (2048 bytes) (hub.toml [web] max_upload_bytes)" in body["message"]
        assert counts(site)[:2] == before[:2] and stored(site) == []


def test_a_refused_archive_names_the_file_not_the_hub_paths(site: Site, tmp_path: Path) -> None:
    ci = api_for(site, "dev", ["releases:write"])
    before = counts(site)
    body = _upload(ci, b"this is not an archive", "broken.tgz", 400)
    assert body["message"].startswith("broken.tgz: ")
    assert str(site.data_dir) not in body["message"]
    assert counts(site)[:2] == before[:2] and stored(site) == []
    missing = ci.post("/releases", 400, data={}, content_type="multipart/form-data")
    assert "choose a release archive" in missing["message"]


def test_objects_outside_the_callers_scope_look_absent(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))
    op = api_for(site, "op", ["deploy"])
    (prod_dep,) = op.post("/releases/hello/1.0.0/deployments", 201,
                          json={"environment": "prod"})["deployments"]
    viewer = api_for(site, "view-test", ["read"])
    assert viewer.get("/deployments")["deployments"] == []
    hidden = viewer.get(f"/deployments/{prod_dep['id']}", 404)
    absent = viewer.get("/deployments/999999", 404)
    assert hidden["message"] == f"deployment {prod_dep['id']} does not exist"
    assert absent["message"] == "deployment 999999 does not exist"
    assert viewer.get("/deployments?environment=prod", 404)["message"] == (
        "environment 'prod' does not exist")
    assert [e["name"] for e in viewer.get("/environments")["environments"]] == ["test"]
    nobody = api_for(site, "nobody", ["read"])
    assert nobody.get("/releases")["releases"] == []
    assert nobody.get("/releases/hello/1.0.0", 404)["error"] == "not_found"


def test_bad_bodies_are_refused_by_name(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    appr = api_for(site, "appr1", ["approve"])
    before = _state(site)
    assert "unknown field 'env'" in appr.post("/releases/hello/1.0.0/approve", 400,
                                              json={"env": "test"})["message"]
    assert "must be a str" in appr.post("/releases/hello/1.0.0/approve", 400,
                                        json={"comment": 3})["message"]
    assert "JSON object" in appr.post("/releases/hello/1.0.0/approve", 400, data="[1]",
                                      content_type="application/json")["message"]
    assert _state(site) == before
    op = api_for(site, "op", ["deploy", "read"])
    assert "unknown state 'done'" in op.get("/deployments?state=done", 400)["message"]


def test_reject_needs_a_comment_and_is_final(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path)
    appr = api_for(site, "appr1", ["approve", "read"])
    before = _state(site)
    assert "comment" in appr.post("/releases/hello/1.0.0/reject", 400, json={})["message"]
    assert _state(site) == before
    rejected = appr.post("/releases/hello/1.0.0/reject", json={"comment": "breaks billing"})
    assert rejected["state"] == "rejected"
    assert [(a["by"], a["decision"]) for a in rejected["approvals"]] == [("appr1", "reject")]
    shown = appr.get("/releases/hello/1.0.0")
    assert shown["state"] == "rejected" and shown["files"][0]["name"] == "step0.sh"
    again = api_for(site, "appr2", ["approve"]).post("/releases/hello/1.0.0/approve", 409)
    assert again["error"] == "conflict"


def test_a_failure_of_the_hub_is_json_logged_and_audited(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_ctx: object) -> list[object]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("web.api.routes.viewable_environments", broken)
    api = api_for(site, "op", ["read"])
    body = api.call("GET", "/environments", 500)
    assert body == {"error": "internal",
                    "message": "the hub could not answer this call; its log says why"}
    assert "disk on fire" in caplog.text
    (event,) = _events(site, "api.call")
    assert json.loads(event.details)["status"] == 500


def test_a_signed_approval_is_stored_as_sent_and_refusals_change_nothing(
    site: Site, tmp_path: Path
) -> None:
    make_release(site, tmp_path)  # hello 1.0.0 by dev, submitted
    key, stranger = SigningKey.generate(), SigningKey.generate()
    with site.app.app_context():
        register_key(site.ctx("appr1"), "appr1", public_file(key))
        rel = get_release(db.session(), "hello", "1.0.0")
        content_hash = rel.content_hash
        db.session.commit()
    now = int(site.clock().timestamp())

    def envelope(signer: SigningKey, approver: str = "appr1") -> bytes:
        doc = ApprovalDocument("hello", "1.0.0", content_hash, ("test",), approver, now,
                               now + 7 * 86400, "signed at my desk")
        return sign_approval(doc, signer)

    appr = api_for(site, "appr1", ["approve"])
    before = _state(site)
    for body, status, words in (
        (envelope(stranger), 400, "which is not an approver key registered to appr1"),
        (b"", 400, "send the approval file"),
        (b"{" * (MAX_APPROVAL_BYTES + 1), 413, "at most"),
    ):
        refused = appr.post("/releases/hello/1.0.0/signed-approvals", status, data=body,
                            content_type="application/json")
        assert words in refused["message"], refused
        assert _state(site) == before
    sent = envelope(key)
    rel_json = appr.post("/releases/hello/1.0.0/signed-approvals", 201, data=sent,
                         content_type="application/json")
    (approval,) = rel_json["approvals"]
    assert approval["signed_by"] == key.key_id and approval["environment"] == "test"
    assert rel_json["state"] == "approved"
    with site.app.app_context():
        (row,) = get_release(db.session(), "hello", "1.0.0").approvals
        assert row.envelope == sent  # the bytes as received
    (event,) = _events(site, "release.approve")
    assert json.loads(event.details)["via"].startswith("api-token:")


def test_deployments_say_what_they_wait_for(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))
    op = api_for(site, "op", ["deploy", "read"])
    (dep,) = op.post("/releases/hello/1.0.0/deployments", 201,
                     json={"environment": "test"})["deployments"]
    assert dep["waiting_for"] == []
    start = int(site.clock().timestamp())
    with site.app.app_context():
        add_rule(site.ctx("admin"), "freeze", {"kind": "once", "start": start - 60,
                                               "end": start + 3600, "reason": "quarter close"},
                 environment="test")
        db.session.commit()
    (reason,) = op.get(f"/deployments/{dep['id']}")["waiting_for"]
    assert reason["kind"] == "freeze" and "quarter close" in reason["text"]
    with site.app.app_context():
        row = db.session.get(Deployment, dep["id"])
        assert row is not None
        expected = [r.to_json() for r in waiting_for(db.session(), row, site.clock())]
    assert op.get(f"/deployments/{dep['id']}")["waiting_for"] == expected
