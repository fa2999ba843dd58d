"""The API's rollout operations: start (a canary with a manual gate), show, the gate refused
to the starter and confirmed by another operator, pause/resume, cancel; refusals answer JSON
and change nothing; a rollout outside the caller's environments is a 404."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from hub.db import Deployment, Rollout, db
from hub.services.agents import enroll_agent
from hub.services.deployments import get_deployment, mark_exported, transition
from hub.services.rollouts import after_deployments
from tests.hub.services.test_deployments import request
from tests.web.api.conftest import api_for
from tests.web.pages import Site
from tests.web.test_pages_releases import make_release


def _count(site: Site, model: type) -> int:
    with site.app.app_context():
        return db.session.scalar(select(func.count()).select_from(model)) or 0


def _finish(site: Site, deployment_id: int) -> None:
    with site.app.app_context():
        dep = get_deployment(db.session, deployment_id)
        mark_exported(site.ctx("op"), dep, bundle_id=f"b{dep.id}", bundle_path="/m",
                      sequence=dep.id, root_version=1)
        transition(site.ctx("op"), dep, "succeeded")
        after_deployments(site.ctx("op"), [dep.id])
        db.session.commit()


def test_rollout_through_the_api(site: Site, tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))
    with site.app.app_context():
        for i in (1, 2, 3):
            enroll_agent(site.ctx("admin"), "test", request(f"h{i}", f"api-site-{i}"))
        db.session.commit()
    op = api_for(site, "op", ["deploy", "read"])
    bad = op.post("/releases/hello/1.0.0/rollouts", 400,
                  json={"environment": "test", "batch_size": 0})
    assert "batch size 0" in bad["message"] and _count(site, Rollout) == 0
    view = op.post("/releases/hello/1.0.0/rollouts", 201,
                   json={"environment": "test", "canary": 1, "manual": True})
    rid = view["id"]
    assert [len(b["agents"]) for b in view["batches"]] == [1, 2]
    _finish(site, view["batches"][0]["agents"][0]["deployment"])
    refused = op.post(f"/rollouts/{rid}/confirm", 403)
    assert "another operator" in refused["message"]
    assert op.get(f"/rollouts/{rid}")["current_batch"] == 1 and _count(site, Deployment) == 1
    admin = api_for(site, "admin", ["deploy", "read"])
    view = admin.post(f"/rollouts/{rid}/confirm")
    assert view["current_batch"] == 2 and _count(site, Deployment) == 3
    assert op.post(f"/rollouts/{rid}/pause", json={"reason": "lunch"})["state"] == "paused"
    assert op.post(f"/rollouts/{rid}/resume")["state"] == "running"
    view = op.post(f"/rollouts/{rid}/cancel", json={"reason": "enough"})
    assert view["state"] == "cancelled" and len(view["did"]) == 2
    op.post(f"/rollouts/{rid}/explode", 404)
    viewer = api_for(site, "view-test", ["read"])
    assert viewer.get(f"/rollouts/{rid}")["state"] == "cancelled"
    reader = api_for(site, "op", ["read"])
    reader.post(f"/rollouts/{rid}/pause", 403)


def test_rollout_outside_the_callers_environments_is_absent(site: Site,
                                                            tmp_path: Path) -> None:
    make_release(site, tmp_path, approvers=("appr1", "appr2"))
    with site.app.app_context():
        enroll_agent(site.ctx("admin"), "prod", request("p1", "api-prod-1"))
        db.session.commit()
    rid = api_for(site, "op", ["deploy", "read"]).post(
        "/releases/hello/1.0.0/rollouts", 201, json={"environment": "prod"})["id"]
    viewer = api_for(site, "view-test", ["read", "deploy"])
    assert viewer.get(f"/rollouts/{rid}", 404)["message"] == viewer.get(
        "/rollouts/999999", 404)["message"].replace("999999", str(rid))
    viewer.post(f"/rollouts/{rid}/abort", 404)
    assert api_for(site, "op", ["read"]).get(f"/rollouts/{rid}")["state"] == "running"
