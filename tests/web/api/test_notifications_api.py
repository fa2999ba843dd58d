"""The API's notification operations: an admin token adds webhook and e-mail targets and
sets thresholds, a reader sees them, an operator lists deliveries and retries one; every
refusal (scope, role, rule, an environment the caller may not view) changes nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, NotificationOutbox, NotificationWebhook, db
from hub.services.notifications import SmtpSettings, deliver_due
from hub.services.releases import create_product, create_release, submit_release
from tests.hub.conftest import write_release
from tests.web.api.conftest import api_for
from tests.web.pages import Site


def _counts(site: Site) -> tuple[int, int, int]:
    with site.app.app_context():
        a, b, c = (int(db.session.scalar(select(func.count()).select_from(m)) or 0)
                   for m in (NotificationWebhook, NotificationOutbox, AuditEvent))
        return a, b, c


def reader_config(site: Site) -> dict[str, object]:
    shown = api_for(site, "view", ["read"]).get("/environments/prod/notifications")
    return {"targets": shown["targets"], "agent_offline_s":
            shown["thresholds"]["agent_offline_s"]}


def test_targets_and_thresholds_through_the_api(site: Site) -> None:
    admin = api_for(site, "admin", ["admin"])
    reader = api_for(site, "view", ["read"])
    before = _counts(site)
    assert api_for(site, "op", ["read", "deploy"]).post(
        "/environments/prod/notifications/targets", 403,
        json={"kind": "email", "recipients": ["ops@example.org"],
              "events": ["agent.offline"]})["error"] == "insufficient_scope"
    assert "op" in api_for(site, "op", ["admin"]).post(
        "/environments/prod/notifications/targets", 403,
        json={"kind": "email", "recipients": ["ops@example.org"],
              "events": ["agent.offline"]})["message"]
    bad = admin.post("/environments/prod/notifications/targets", 400,
                     json={"kind": "email", "recipients": ["nope"], "events": ["agent.offline"]})
    assert "e-mail address 'nope'" in bad["message"]
    assert "webhook or email" in admin.post("/environments/prod/notifications/targets", 400,
                                            json={"kind": "sms", "events": []})["message"]
    admin.post("/environments/nowhere/notifications/targets", 404,
               json={"kind": "webhook", "url": "http://127.0.0.1/", "events": ["rollout.paused"]})
    assert "agent offline threshold 10 s: must be 60 s" in admin.call(
        "PUT", "/environments/prod/notifications/thresholds", 400,
        json={"agent_offline_s": 10})["message"]
    assert reader_config(site) == {"targets": [], "agent_offline_s": None}
    assert _counts(site)[:2] == before[:2]  # no target, no notification

    mail = admin.post("/environments/prod/notifications/targets", 201,
                      json={"kind": "email", "recipients": ["ops@example.org"],
                            "events": ["agent.offline", "result.overdue"]})
    hook = admin.post("/environments/prod/notifications/targets", 201,
                      json={"url": "http://127.0.0.1:9/hook", "events": ["rollout.paused"]})
    assert (mail["kind"], hook["kind"], hook["secret_file"]) == ("email", "webhook", "")
    th = admin.call("PUT", "/environments/prod/notifications/thresholds", 200,
                    json={"agent_offline_s": 7200, "result_overdue_s": None})
    assert (th["agent_offline_s"], th["result_overdue_s"], th["updated_by"]) == (
        7200, None, "admin")
    shown = reader.get("/environments/prod/notifications")
    assert [t["id"] for t in shown["targets"]] == [mail["id"], hook["id"]]
    assert shown["thresholds"]["agent_offline_s"] == 7200
    # view-test sees nothing of prod: a 404 like a missing environment
    api_for(site, "view-test", ["read"]).get("/environments/prod/notifications", 404)
    api_for(site, "op-test", ["admin"]).call(
        "DELETE", f"/notifications/targets/{hook['id']}", 404)
    removed = admin.call("DELETE", f"/notifications/targets/{hook['id']}", 200)
    assert removed["id"] == hook["id"]
    admin.call("DELETE", f"/notifications/targets/{hook['id']}", 404)
    assert [t["id"] for t in reader.get("/environments/prod/notifications")["targets"]] == [
        mail["id"]]


def test_deliveries_and_retry_now_through_the_api(site: Site, tmp_path: Path) -> None:
    admin = api_for(site, "admin", ["admin"])
    admin.post("/environments/prod/notifications/targets", 201,
               json={"kind": "email", "recipients": ["ops@example.org"],
                     "events": ["approval.needed"]})
    with site.app.app_context():
        dev = site.ctx("dev")
        create_product(dev, "hello")
        submit_release(dev, create_release(dev, write_release(tmp_path)))
        db.session.commit()
        engine = db.engine
    deliver_due(lambda: Session(engine), site.clock, smtp=SmtpSettings())  # no relay
    op = api_for(site, "op", ["read", "deploy"])
    [row] = op.get("/notifications/deliveries?environment=prod")["deliveries"]
    assert (row["kind"], row["state"], row["attempts"]) == ("email", "pending", 1)
    assert "[smtp]" in row["last_error"]
    before = _counts(site)
    api_for(site, "view", ["read"]).post(f"/notifications/deliveries/{row['id']}/retry", 403)
    api_for(site, "op-test", ["deploy"]).post(f"/notifications/deliveries/{row['id']}/retry",
                                              404)
    op.post("/notifications/deliveries/999/retry", 404)
    assert _counts(site)[:2] == before[:2]
    retried = op.post(f"/notifications/deliveries/{row['id']}/retry", 200)
    assert retried["state"] == "pending"
    assert retried["next_attempt_at"] == site.clock().isoformat()
    api_for(site, "view-test", ["read"]).get("/notifications/deliveries?environment=prod", 404)
