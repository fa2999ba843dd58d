"""The fleet page and the rollout pages (web.rollouts): what each agent runs, presence and
pending; a rollout's batches, gate, each agent's state, what the batch waits for, the
reload while it runs; a rollout in an environment one may not view is a 404."""

from __future__ import annotations

from html import unescape
from pathlib import Path

from hub.db import db
from hub.services.agents import enroll_agent
from hub.services.approvals import approve_release
from hub.services.deployments import get_deployment, mark_exported, transition
from hub.services.releases import create_release, submit_release
from hub.services.rollouts import Strategy, start_rollout
from tests.hub.conftest import write_release, write_undoable_release
from tests.hub.services.test_deployments import request
from tests.web.pages import Site, csrf_of


def _rollout(site: Site, tmp: Path, env: str = "test") -> int:
    """Two agents in ``env``; hello 1.0.0 rolled out to them, canary 1 and a manual gate;
    started by admin. Returns the rollout's id."""
    with site.app.app_context():
        for i in (1, 2):
            enroll_agent(site.ctx("admin"), env, request(f"{env}-{i}", f"{env}-site-{i}"))
        release = create_release(site.ctx("dev"), write_release(tmp / "src"),
                                 create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        approve_release(site.ctx("appr2"), release)
        rollout = start_rollout(site.ctx("admin"), release, environment=env,
                                strategy=Strategy(canary=1, manual=True))
        db.session.commit()
        return rollout.id


def test_fleet_and_rollout_pages(site: Site, tmp_path: Path) -> None:
    rid = _rollout(site, tmp_path)
    op = site.client("op")
    page = unescape(op.get(f"/rollouts/{rid}").get_data(as_text=True))
    assert '<noscript><meta http-equiv="refresh" content="15"></noscript>' in page
    assert "rollout-live.js" in page and f'data-state-url="/rollouts/{rid}/state"' in page
    assert "canary 1; the rest at once; gate: manual confirmation" in page
    assert 'Batch 1<span class="batch-current"> (current)</span>' in page
    assert "not queued" in page
    with site.app.app_context():
        from hub.services.rollouts import advance, get_rollout

        rollout = get_rollout(db.session, rid)
        (target,) = [t for t in rollout_targets(rollout) if t.deployment_id is not None]
        dep_id = target.deployment_id
        assert dep_id is not None
        dep = get_deployment(db.session, dep_id)
        mark_exported(site.ctx("op"), dep, bundle_id="b1", bundle_path="/m/b1", sequence=1,
                      root_version=1)
        exported = dep.exported_at.isoformat()
        db.session.commit()
    page = unescape(op.get(f"/rollouts/{rid}").get_data(as_text=True))
    assert '<td class="agent-reached">media</td>' in page  # owes a result since:
    assert f'<td class="agent-owes">{exported}</td>' in page
    state = op.get(f"/rollouts/{rid}/state")
    assert state.headers["Cache-Control"] == "no-store"
    doc = state.get_json()
    assert (doc["state"], doc["running"], doc["current_batch"]) == ("running", True, 1)
    (agent,) = doc["batches"][0]["agents"]
    assert agent["state"] == "exported" and agent["owes_result_since"] == exported
    assert agent["reached"] == "media"
    assert agent["deployment_url"] == f"/deployments/{dep_id}"
    assert doc["batches"][0]["status"].startswith("started ")
    with site.app.app_context():
        dep = get_deployment(db.session, dep_id)
        transition(site.ctx("op"), dep, "succeeded")
        advance(site.ctx("op"), get_rollout(db.session, rid))
        db.session.commit()
    page = unescape(op.get(f"/rollouts/{rid}").get_data(as_text=True))
    assert "gate: manual confirmation" in page and "another operator than admin" in page
    fleet = unescape(op.get("/fleet").get_data(as_text=True))
    assert "test-site-1" in fleet and "hello 1.0.0" in fleet
    listing = unescape(op.get("/rollouts/").get_data(as_text=True))
    assert f'href="/rollouts/{rid}"' in listing


def test_rollout_outside_ones_environments_is_a_404(site: Site, tmp_path: Path) -> None:
    rid = _rollout(site, tmp_path, env="prod")
    viewer = site.client("view-test")
    assert viewer.get(f"/rollouts/{rid}").status_code == 404
    assert viewer.get("/rollouts/999999").status_code == 404
    assert f"/rollouts/{rid}" not in viewer.get("/rollouts/").get_data(as_text=True)
    assert "prod-site-1" not in viewer.get("/fleet").get_data(as_text=True)


def rollout_targets(rollout):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from hub.db import RolloutTarget

    return list(db.session.scalars(select(RolloutTarget).where(
        RolloutTarget.rollout_id == rollout.id)))


def test_buttons_confirm_the_gate_and_pause(site: Site, tmp_path: Path) -> None:
    rid = _rollout(site, tmp_path)
    with site.app.app_context():
        from hub.services.rollouts import after_deployments, get_rollout

        (target,) = [t for t in rollout_targets(get_rollout(db.session, rid))
                     if t.deployment_id is not None]
        assert target.deployment_id is not None
        dep = get_deployment(db.session, target.deployment_id)
        mark_exported(site.ctx("op"), dep, bundle_id="b1", bundle_path="/m/b1", sequence=1,
                      root_version=1)
        transition(site.ctx("op"), dep, "succeeded")
        after_deployments(site.ctx("op"), [dep.id])
        db.session.commit()
    viewer = site.client("view-test")
    assert 'id="rollout-pause-button"' not in viewer.get(f"/rollouts/{rid}").get_data(
        as_text=True)
    # The starter (admin) sees the button but the service refuses: nothing changes.
    admin = site.client("admin")
    page = admin.get(f"/rollouts/{rid}").get_data(as_text=True)
    refused = admin.post(f"/rollouts/{rid}/act", data={
        "action": "confirm", "csrf_token": csrf_of(page)})
    assert refused.status_code == 403
    assert "another operator" in unescape(refused.get_data(as_text=True))
    op = site.client("op")
    page = op.get(f"/rollouts/{rid}").get_data(as_text=True)
    assert 'id="rollout-confirm-button"' in page
    done = op.post(f"/rollouts/{rid}/act", data={"action": "confirm",
                                                 "csrf_token": csrf_of(page)})
    assert done.status_code == 302
    page = unescape(op.get(f"/rollouts/{rid}").get_data(as_text=True))
    assert "gate confirmed by op" in page
    assert 'Batch 2<span class="batch-current"> (current)</span>' in page
    op.post(f"/rollouts/{rid}/act", data={"action": "pause", "reason": "coffee",
                                          "csrf_token": csrf_of(page)})
    page = unescape(op.get(f"/rollouts/{rid}").get_data(as_text=True))
    assert ">paused<" in page and "coffee" in page and 'http-equiv="refresh"' not in page
    assert 'id="rollout-resume-button"' in page


def test_the_rollout_page_shows_its_automatic_rollbacks(site: Site, tmp_path: Path) -> None:
    src = write_undoable_release(tmp_path, version="3.0")
    with site.app.app_context():
        for i in (1, 2):
            enroll_agent(site.ctx("admin"), "test", request(f"rb-{i}", f"rb-site-{i}"))
        release = create_release(site.ctx("dev"), src, create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        approve_release(site.ctx("appr2"), release)
        rollout = start_rollout(site.ctx("admin"), release, environment="test",
                                strategy=Strategy(canary=1, auto_rollback=True))
        (target,) = [t for t in rollout_targets(rollout) if t.deployment_id is not None]
        assert target.deployment_id is not None
        dep = get_deployment(db.session, target.deployment_id)
        mark_exported(site.ctx("op"), dep, bundle_id="b-rb", bundle_path="/m/b-rb",
                      sequence=1, root_version=1)
        transition(site.ctx("op"), dep, "failed")
        from hub.services.rollouts import advance

        advance(site.ctx("op"), rollout)
        rid, dep_id = rollout.id, dep.id
        db.session.commit()
    page = unescape(site.client("op").get(f"/rollouts/{rid}").get_data(as_text=True))
    section = page.split('id="rollbacks"', 1)[1]
    assert f"deployment {dep_id}</a>" in section and f"hello 3.0-rollback-{dep_id}" in section
    assert "by inheritance from hello 3.0" in section and "rb-site-1</a>" in section
    assert '<span class="badge badge-queued">queued</span>' in section
