"""The API's change-control operations (channels, promotion, recall, windows, freezes): each
does what its CLI command does, answers the documented schema (checked on every call), and
every refusal answers JSON naming the rule and changes nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from hub.db import AuditEvent, ChannelEntry, PolicyRule, db
from tests.web.api.conftest import api_for
from tests.web.pages import Site
from tests.web.test_pages_releases import make_release


def _count(site: Site, model: type, **where: object) -> int:
    with site.app.app_context():
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return db.session.scalar(query) or 0


def test_channels_promotion_and_recall_through_the_api(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))  # hello 1.0.0, in RELEASE
    reader = api_for(site, "view", ["read"])
    (first, canary, stable) = reader.get("/products/hello/channels")["channels"]
    assert (first["channel"], first["releases"]) == ("RELEASE", ["1.0.0"])
    assert (canary["channel"], stable["channel"]) == ("CANARY", "STABLE")
    reader.get("/products/nothing/channels", 404)

    op = api_for(site, "op", ["deploy", "read"])
    refused = op.post("/releases/hello/1.0.0/recall", 400, json={"channel": "RELEASE"})
    assert "'reason' are required" in refused["message"]
    done = op.post("/releases/hello/1.0.0/promote", json={"comment": "canary time"})
    assert (done["from"], done["to"]) == ("RELEASE", "CANARY")
    assert reader.get("/products/hello/channels")["channels"][1]["releases"] == ["1.0.0"]
    again = op.post("/releases/hello/1.0.0/promote", 409, json={"to": "CANARY"})
    assert "CANARY" in again["message"]

    # A channel rule needs an approver other than the author: recorded, then counted.
    with site.app.app_context():
        from hub.services.channels import ChannelRule, set_rule

        set_rule(site.ctx("admin"), "hello", "STABLE", ChannelRule(required_approvals=1))
        db.session.commit()
    before = _count(site, ChannelEntry)
    short = op.post("/releases/hello/1.0.0/promote", 409, json={"to": "STABLE"})
    assert "approv" in short["message"] and _count(site, ChannelEntry) == before
    approved = api_for(site, "appr1", ["approve"]).post(
        "/releases/hello/1.0.0/promotion-approvals", 201, json={"to": "STABLE"})
    assert approved == {"product": "hello", "version": "1.0.0", "channel": "STABLE",
                        "approvers": ["appr1"], "required": 1}
    assert op.post("/releases/hello/1.0.0/promote", json={"to": "STABLE"})["to"] == "STABLE"

    recalled = op.post("/releases/hello/1.0.0/recall",
                       json={"channel": "CANARY", "reason": "corrupts invoices"})
    assert recalled["channels"] == ["CANARY", "STABLE"]
    assert reader.get("/products/hello/channels")["channels"][2]["releases"] == []
    # A token without the scope is refused before anything runs.
    api_for(site, "op", ["read"]).post("/releases/hello/1.0.0/promote", 403,
                                        json={"to": "CANARY"})


def test_windows_and_freezes_through_the_api(site: Site) -> None:
    admin = api_for(site, "admin", ["admin", "read"])
    window = admin.post("/windows", 201, json={"spec": "sat,sun 01:00-05:00 Europe/Berlin",
                                               "environment": "test"})
    assert window["kind"] == "window" and window["environment"] == "test"
    assert "Europe/Berlin" in window["description"]
    freeze = admin.post("/freezes", 201, json={"spec": "12-20..01-05 UTC: year end"})
    assert freeze["kind"] == "freeze" and freeze["environment"] is None

    viewer = api_for(site, "view-test", ["read"])
    assert [w["id"] for w in viewer.get("/windows?environment=test")["windows"]] == [
        window["id"]]
    assert [f["id"] for f in viewer.get("/freezes")["freezes"]] == [freeze["id"]]
    viewer.get("/windows?environment=prod", 404)  # an environment it may not view

    # Refusals: a bad spec, a non-admin, an operator token without the scope — nothing
    # is added, and the audit log has no rule event for them.
    events = _count(site, AuditEvent)
    rules = _count(site, PolicyRule)
    bad = admin.post("/windows", 400, json={"spec": "someday"})
    assert bad["error"] == "bad_request" and "window" in bad["message"]
    admin.post("/windows", 400, json={"environment": "test"})
    api_for(site, "op", ["admin", "read"]).post(
        "/windows", 403, json={"spec": "sat 01:00-05:00 UTC", "environment": "test"})
    api_for(site, "op", ["read"]).post("/freezes", 403, json={"spec": "12-24..12-26 UTC: x"})
    assert _count(site, PolicyRule) == rules
    assert _count(site, AuditEvent, action="window.add") == 1
    assert _count(site, AuditEvent) >= events

    ended = admin.post(f"/freezes/{freeze['id']}/end", json={"reason": "released early"})
    assert ended["ended_by"] == "admin" and ended["ended_at"] is not None
    assert admin.get("/freezes")["freezes"] == []
    assert [f["id"] for f in admin.get("/freezes?all=1")["freezes"]] == [freeze["id"]]
    admin.post(f"/freezes/{freeze['id']}/end", 409, json={"reason": "twice"})
    admin.post(f"/freezes/{freeze['id']}/end", 400, json={"reason": ""})

    removed = admin.call("DELETE", f"/windows/{window['id']}", 200)
    assert removed["id"] == window["id"]
    admin.call("DELETE", f"/windows/{window['id']}", 404)
    admin.call("DELETE", f"/freezes/{window['id']}", 404)  # not a freeze
    assert admin.get("/windows")["windows"] == []


def test_overrides_through_the_api(site: Site, tmp_path: Path) -> None:
    """Request and confirm a hub override: a reason and a second person (docs/governance.md
    "Hub override"); every refusal answers the rule and adds no override and no event."""
    from hub.db import DeploymentOverride
    from hub.services.deployments import queue_deployment
    from hub.services.releases import get_release

    make_release(site, tmp_path, approvers=("appr1",))
    with site.app.app_context():
        [dep] = queue_deployment(site.ctx("op"), get_release(db.session(), "hello", "1.0.0"),
                                 "test")
        dep_id = dep.id
        db.session.commit()
    path = f"/deployments/{dep_id}/override"
    op = api_for(site, "op", ["deploy", "read"])
    for api, status, body, message in (
        (op, 400, {"reason": ""}, "reason"),
        (api_for(site, "op", ["read"]), 403, {"reason": "fix"}, "lacks the scope 'deploy'"),
        (api_for(site, "view", ["deploy"]), 403, {"reason": "fix"},
         "view may not deployment.queue in environment test"),
        (api_for(site, "appr-prod", ["deploy"]), 404, {"reason": "fix"},
         f"deployment {dep_id} does not exist"),
    ):
        assert message in api.post(path, status, json=body)["message"]
    api_for(site, "op", ["deploy"]).post("/deployments/99999/override", 404,
                                         json={"reason": "fix"})
    assert _count(site, DeploymentOverride) == 0
    assert _count(site, AuditEvent, action="override.request") == 0

    asked = op.post(path, 201, json={"reason": "security fix CVE-2027-0042"})
    assert (asked["state"], asked["requested_by"], asked["confirmed_by"]) == (
        "requested", "op", None)
    op.post(path, 409, json={"reason": "twice"})
    own = op.post(f"{path}/confirm", 409)
    assert "op requested this override and cannot confirm it" in own["message"]
    api_for(site, "view", ["deploy"]).post(f"{path}/confirm", 403)
    confirmed = api_for(site, "op-test", ["deploy"]).post(f"{path}/confirm")
    assert (confirmed["state"], confirmed["confirmed_by"]) == ("confirmed", "op-test")
    api_for(site, "op-test", ["deploy"]).post(f"{path}/confirm", 409)
    assert [_count(site, AuditEvent, action=a) for a in ("override.request",
                                                         "override.confirm")] == [1, 1]
