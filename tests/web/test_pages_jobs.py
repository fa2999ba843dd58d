"""The jobs pages: the job templates list, and the "Run…" form of an agent or environment
page — one file run on one agent through the services `tiangong run` uses: the
environment's ad-hoc policy decides whether it is queued at once (then the deployment's page)
or waits for an approval (then the release's page, submitted, nothing queued); refusals
change nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, Release, db
from hub.services.adhoc_policy import set_adhoc_policy
from hub.services.templates import add_template
from tests.web.pages import Site
from tests.web.test_pages_agents import enroll


def _counts() -> tuple[int, int]:
    return (int(db.session.scalar(select(func.count()).select_from(Release)) or 0),
            int(db.session.scalar(select(func.count()).select_from(Deployment)) or 0))


def _form(**extra: Any) -> dict[str, Any]:
    return {"agent": "run-agent-1", "kind": "shell", "reason": "clear the cache", **extra}


def test_the_templates_list(site: Site, tmp_path: Path) -> None:
    empty = site.client("view").get("/jobs/").get_data(as_text=True)
    assert 'id="no-templates"' in empty
    (tmp_path / "purge.sql").write_text("DELETE FROM s WHERE age > {{days}};\n")
    (tmp_path / "t.toml").write_text(
        'name = "purge"\nkind = "sql"\nfile = "purge.sql"\ndescription = "old rows"\n'
        '[step]\nengine = "postgres"\nconnection = "db"\n'
        '[[params]]\nname = "days"\ntype = "int"\nmax = 90\n')
    with site.app.app_context():
        add_template(site.ctx("dev"), tmp_path / "t.toml")
        db.session.commit()
    html = site.client("view").get("/jobs/").get_data(as_text=True)
    row = html.split('data-template="purge"')[1].split("</tr>")[0]
    assert "old rows" in row and "<code>days (int ..90, required)</code>" in row
    assert "DELETE FROM s WHERE age &gt; {{days}};" in row
    assert site.client("view-test").get("/jobs/").status_code == 403


def test_run_form_links_and_refusals(site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "run-agent-1")
    admin = site.client("admin")
    agent_page = admin.get("/agents/run-agent-1").get_data(as_text=True)
    assert 'id="run-link" href="/jobs/run?agent=run-agent-1"' in agent_page
    env_page = admin.get("/environments/test").get_data(as_text=True)
    assert 'id="run-link" href="/jobs/run?environment=test"' in env_page
    form = admin.get("/jobs/run?agent=run-agent-1").get_data(as_text=True)
    assert "In test, ad-hoc runs follow the environment&#39;s rule (1 approval)." in form
    for who in ("dev", "op"):  # each holds one of the two roles a run needs
        assert 'id="run-link"' not in site.client(who).get(
            "/agents/run-agent-1").get_data(as_text=True)
        resp = site.post(site.client(who), "/jobs/run", _form(text="echo hi\n"))
        assert resp.status_code == 403
    with site.app.app_context():
        before = _counts()
    for data, message in ((_form(text="echo hi\n", reason=""), "say why"),
                          (_form(), "upload a file or type its text"),
                          (_form(kind="ftp", text="x"), "kind must be one of"),
                          (_form(kind="sql", text="SELECT 1;", connection="no such"),
                           "field connection")):
        resp = site.post(admin, "/jobs/run", data)
        assert resp.status_code == 400 and message in resp.get_data(as_text=True)
    with site.app.app_context():
        assert _counts() == before


def test_a_run_waits_for_its_approval_or_goes_under_the_policy(
        site: Site, tmp_path: Path) -> None:
    enroll(site, tmp_path, "run-agent-1")
    admin = site.client("admin")
    waiting = site.post(admin, "/jobs/run", _form(text="echo one\n"))
    assert waiting.status_code == 302 and "/releases/adhoc/" in waiting.headers["Location"]
    page = admin.get(waiting.headers["Location"]).get_data(as_text=True)
    assert "waiting for 1 approval" in page
    with site.app.app_context():
        [rel] = db.session.scalars(select(Release)).all()
        assert rel.state == "submitted" and "clear the cache" in rel.description
        assert "from the web UI" in rel.description and _counts() == (1, 0)
        set_adhoc_policy(site.ctx("admin"), "test", 0)
        db.session.commit()
    upload = (io.BytesIO(b"echo two\n"), "two.sh")
    shipped = site.post(admin, "/jobs/run", _form(file=upload),
                        content_type="multipart/form-data")
    assert shipped.status_code == 302 and "/deployments/" in shipped.headers["Location"]
    with site.app.app_context():
        [dep] = db.session.scalars(select(Deployment)).all()
        assert dep.state == "queued" and dep.agent is not None
        assert dep.agent.agent_id == "run-agent-1" and dep.release.steps[0]["name"] == "run two.sh"
        actions = [e.action for e in db.session.scalars(select(AuditEvent))]
        assert "release.policy_approve" in actions and "deployment.queue" in actions
        queued = [json.loads(e.details) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "deployment.queue"))]
        assert queued[0]["adhoc_rule"] == "0 approvals"
