"""The release page shows approvers each preflight plan and every agent's outcome, with the
checks that failed (hub.services.plans; docs/rollouts.md, "Preflight bundles")."""

from __future__ import annotations

import shutil
from pathlib import Path

from hub.db import db
from hub.services.agents import get_agent
from hub.services.exchange import import_directory
from hub.services.plans import create_plan, record_outcome
from hub.services.releases import get_release
from tests.web.pages import Site, request_file
from tests.web.test_pages_releases import make_release, text


def _enroll(site: Site, tmp: Path, agent_id: str) -> None:
    media = tmp / f"enroll-{agent_id}"
    media.mkdir()
    shutil.copy(request_file(site, tmp, agent_id, "test"), media)
    report = import_directory(site.ctx("admin"), media, results_dir=tmp / "results")
    assert [r.status for r in report.rows] == ["enrolled"], report.rows


def test_release_page_shows_preflight_outcomes_to_approvers(site: Site,
                                                            tmp_path: Path) -> None:
    make_release(site, tmp_path)
    page = text(site.client("appr1").get("/releases/hello/1.0.0"))
    assert 'id="no-preflight"' in page
    assert "tiangong hub releases plan hello 1.0.0 --environment ENV" in page
    with site.app.app_context():
        _enroll(site, tmp_path, "site-01")
        _enroll(site, tmp_path, "site-02")
        rel = get_release(db.session(), "hello", "1.0.0")
        plan = create_plan(site.ctx("admin"), rel, environment="test", out_dir=tmp_path / "m")
        body = {"summary": "plan failed: 1 of 4 check(s) failed",
                "plan": {"checks": [
                    {"check": "connection", "status": "failed", "step": "schema",
                     "target": "billing-db", "summary": "connection 'billing-db' is not "
                     "defined in the agent config (defined: app-db)"},
                    {"check": "free-space", "status": "passed", "step": None,
                     "target": "/var/lib/tiangong", "summary": "plenty"}]}}
        assert record_outcome(site.ctx("admin"), get_agent(db.session(), "site-01"),
                              plan.bundle_id, "plan-failed", body, 1) is None
        assert record_outcome(site.ctx("admin"), get_agent(db.session(), "site-02"),
                              plan.bundle_id, "plan-passed", {"summary": "ok"}, 1) is None
        later = create_plan(site.ctx("admin"), rel, agent_id="site-01",
                            out_dir=tmp_path / "m")
        db.session.commit()
    page = text(site.client("appr1").get("/releases/hello/1.0.0"))
    assert 'id="preflight-table"' in page
    assert (f'data-plan="{plan.sequence}" data-agent="site-01" data-outcome="failed"'
            in page)
    assert (f'data-plan="{plan.sequence}" data-agent="site-02" data-outcome="passed"'
            in page)
    assert "connection (schema): connection &#39;billing-db&#39; is not defined" in page
    assert "plenty" not in page  # only failed checks are listed
    assert f'data-plan="{later.sequence}" data-outcome="waiting"' in page
    assert "no answer yet" in page
    # The preflight section comes before the approvals, where approvers decide.
    assert page.index('id="preflight-heading"') < page.index('id="approvals-heading"')
