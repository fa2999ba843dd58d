"""The windows page (list, add, remove, end a freeze: CSRF, permissions) and the deployment
page's "Why is this not deploying?" section with the two-person override (web.windows,
web.deployments)."""

from __future__ import annotations

from html import unescape
from pathlib import Path

from sqlalchemy import func, select

from hub.db import DeploymentOverride, PolicyRule, db
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment
from hub.services.releases import create_release, submit_release
from hub.services.windows import add_rule
from tests.hub.conftest import write_release
from tests.web.pages import Site

SAT = "sat 01:00-05:00 Europe/Berlin"


def _rules(site: Site) -> int:
    with site.app.app_context():
        return db.session.scalar(select(func.count()).select_from(PolicyRule)) or 0


def _queued(site: Site, tmp: Path) -> int:
    with site.app.app_context():
        release = create_release(site.ctx("dev"), write_release(tmp / "src"),
                                 create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        (dep,) = queue_deployment(site.ctx("op"), release, "test")
        db.session.commit()
        return dep.id


def test_admin_adds_lists_and_removes_a_window(site: Site) -> None:
    admin = site.client("admin")
    page = admin.get("/windows/").get_data(as_text=True)
    assert 'id="add-rule-form"' in page and "No windows" in page
    resp = site.post(admin, "/windows/", {"kind": "window", "spec": SAT,
                                          "environment": "test"}, follow_redirects=True)
    assert resp.status_code == 200
    html = unescape(resp.get_data(as_text=True))
    assert "Window 1 added: Sat 01:00–05:00 Europe/Berlin." in html
    table = html.split('id="windows-table"')[1].split("</table>")[0]
    assert "Sat 01:00–05:00 Europe/Berlin" in table and "test" in table
    # A viewer sees it but gets no forms.
    viewer = site.client("view").get("/windows/").get_data(as_text=True)
    assert "Sat 01:00–05:00 Europe/Berlin" in unescape(viewer)
    assert 'id="add-rule-form"' not in viewer and "remove-window-1-form" not in viewer
    resp = site.post(admin, "/windows/window/1/remove", follow_redirects=True)
    assert "Window 1 removed" in unescape(resp.get_data(as_text=True))
    assert _rules(site) == 0


def test_freeze_with_reason_field_then_ended(site: Site) -> None:
    admin = site.client("admin")
    resp = site.post(admin, "/windows/", {"kind": "freeze", "spec": "12-20..01-05 UTC",
                                          "reason": "year end", "environment": ""},
                     follow_redirects=True)
    html = unescape(resp.get_data(as_text=True))
    assert "Freeze 1 added: every year Dec 20 – Jan 5 UTC (year end)." in html
    resp = site.post(admin, "/windows/freeze/1/end", {"reason": " "})
    assert resp.status_code == 400 and "needs a reason" in resp.get_data(as_text=True)
    resp = site.post(admin, "/windows/freeze/1/end", {"reason": "the year is done"},
                     follow_redirects=True)
    html = resp.get_data(as_text=True)
    assert "Freeze 1 ended" in html and 'id="ended-freezes-table"' in html


def test_refusals_change_nothing(site: Site) -> None:
    # No CSRF token: 400, nothing stored.
    admin = site.client("admin")
    resp = admin.post("/windows/", data={"kind": "window", "spec": SAT})
    assert resp.status_code == 400 and _rules(site) == 0
    # Not an admin: 403 naming the rule, nothing stored.
    op = site.client("op")
    resp = site.post(op, "/windows/", {"kind": "window", "spec": SAT, "environment": "test"})
    assert resp.status_code == 403 and "environment.update" in resp.get_data(as_text=True)
    assert _rules(site) == 0
    # A bad spec: 400 naming the problem, nothing stored.
    resp = site.post(admin, "/windows/", {"kind": "window", "spec": "sat 01:00-05:00 Mars/X"})
    assert resp.status_code == 400 and "unknown time zone" in resp.get_data(as_text=True)
    assert _rules(site) == 0
    with site.app.app_context():
        add_rule(site.ctx("admin"), "window", SAT, environment="test")
        db.session.commit()
    resp = site.post(op, "/windows/window/1/remove")
    assert resp.status_code == 403 and _rules(site) == 1


def test_deployment_page_says_why_and_takes_a_two_person_override(site: Site,
                                                                  tmp_path: Path) -> None:
    dep_id = _queued(site, tmp_path)
    now = int(site.clock().timestamp())
    with site.app.app_context():
        add_rule(site.ctx("admin"), "freeze", {"kind": "once", "start": now - 60,
                                               "end": now + 7200, "reason": "audit week"},
                 environment="test")
        db.session.commit()
    op = site.client("op")
    html = unescape(op.get(f"/deployments/{dep_id}").get_data(as_text=True))
    reasons = html.split('id="waiting-for-list"')[1].split("</ul>")[0]
    assert 'data-kind="freeze"' in reasons
    assert "frozen until Mon 2026-11-23 11:00 UTC (audit week)" in reasons
    assert 'id="override-form"' in html and 'id="confirm-override-form"' not in html
    resp = site.post(op, f"/deployments/{dep_id}/override", {"reason": "security fix"},
                     follow_redirects=True)
    html = unescape(resp.get_data(as_text=True))
    assert "requested; a second person must confirm" in html
    assert 'id="confirm-override-form"' not in html  # not for the requester
    # The requester confirming by a forged POST is refused; nothing changes.
    resp = site.post(op, f"/deployments/{dep_id}/confirm-override")
    assert resp.status_code == 409 and "cannot confirm it" in resp.get_data(as_text=True)
    with site.app.app_context():
        row = db.session.scalars(select(DeploymentOverride)).one()
        assert row.state == "requested"
    admin = site.client("admin")
    page = admin.get(f"/deployments/{dep_id}").get_data(as_text=True)
    assert 'id="confirm-override-form"' in page
    resp = site.post(admin, f"/deployments/{dep_id}/confirm-override", follow_redirects=True)
    html = unescape(resp.get_data(as_text=True))
    assert "confirmed (requested by op)" in html
    assert 'id="waiting-for-nothing"' in html
    # A viewer sees the reasons, never the forms.
    viewer = site.client("view").get(f"/deployments/{dep_id}").get_data(as_text=True)
    assert 'id="override-form"' not in viewer and 'id="confirm-override-form"' not in viewer
