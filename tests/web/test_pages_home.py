"""The dashboard at ``/``: deployed versions, approvals waiting for the user, offline agents,
failed deployments — each only for environments the user may view."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from hub.db import db
from hub.services.agents import EnrollmentRequest, enroll_agent, get_agent
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment, transition
from hub.services.presence import online_window
from hub.services.releases import create_release, get_release, submit_release
from signing.keys import BoxKeyPair, SigningKey
from tests.hub.conftest import write_release
from tests.web.pages import Site


def _agent(site: Site, env: str, agent_id: str) -> None:
    request = EnrollmentRequest(
        hostname=f"{agent_id}.example",
        ed25519_public=SigningKey.generate().public.raw.hex(),
        x25519_public=BoxKeyPair.generate().public.raw.hex(),
        agent_id=agent_id,
    )
    enroll_agent(site.ctx("admin"), env, request)


def _release(site: Site, tmp: Path, version: str, *approvers: str) -> None:
    rel = create_release(site.ctx("dev"), write_release(tmp / version, version=version),
                         create_missing_product=True)
    submit_release(site.ctx("dev"), rel)
    for who in approvers:
        approve_release(site.ctx(who), rel)


def _deploy(site: Site, version: str, env: str, *states: str) -> None:
    rel = get_release(db.session(), "hello", version)
    for dep in queue_deployment(site.ctx("op"), rel, env):
        for state in states:
            site.clock.advance(60)
            transition(site.ctx("op"), dep, state)


def _populate(site: Site, tmp: Path) -> None:
    """hello 1.0.0 succeeded in test (agent t-01) and failed in prod (agent p-01); hello
    1.1.0 is submitted and waits for approvals."""
    with site.app.app_context():
        _agent(site, "test", "t-01")
        _agent(site, "prod", "p-01")
        _release(site, tmp, "1.0.0", "appr1", "appr2")
        _deploy(site, "1.0.0", "test", "delivered", "succeeded")
        _deploy(site, "1.0.0", "prod", "delivered", "failed")
        _release(site, tmp, "1.1.0")
        db.session.commit()


def page_of(site: Site, who: str) -> str:
    resp = site.client(who).get("/")
    assert resp.status_code == 200, who
    return str(resp.get_data(as_text=True))


def section(page: str, table_id: str) -> str:
    m = re.search(rf'<table class="grid" id="{table_id}">.*?</table>', page, re.S)
    return m.group(0) if m else ""


def test_visitor_sees_the_sign_in_page(site: Site) -> None:
    page = site.client(None).get("/").get_data(as_text=True)
    assert 'id="deployed-table"' not in page and "Sign in" in page


def test_you_card_is_kept(site: Site) -> None:
    page = page_of(site, "appr-prod")
    assert 'id="username">appr-prod<' in page
    assert 'id="email">' in page and 'id="method">single sign-on<' in page
    assert 'id="roles"' in page and "approver (prod)" in page
    assert "Welcome, appr-prod" in page


def test_user_without_grants_sees_no_data(site: Site, tmp_path: Path) -> None:
    _populate(site, tmp_path)
    page = page_of(site, "nobody")
    assert 'id="no-environments"' in page
    for table in ("deployed-table", "pending-table", "offline-agents-table",
                  "failed-deployments-table"):
        assert section(page, table) == ""
    assert "hello" not in page and "t-01" not in page


def test_global_viewer_sees_every_environment(site: Site, tmp_path: Path) -> None:
    _populate(site, tmp_path)
    page = page_of(site, "view")
    deployed = section(page, "deployed-table")
    assert 'data-environment="test"' in deployed and 'data-environment="prod"' in deployed
    cell = re.search(r'data-cell="test/hello">(.*?)</td>', deployed, re.S)
    assert cell is not None and ">1.0.0</a>" in cell.group(1)
    prod = re.search(r'data-cell="prod/hello">(.*?)</td>', deployed, re.S)
    assert prod is not None and "1.0.0" not in prod.group(1)  # failed there: not deployed
    assert 'data-agent="t-01"' in section(page, "offline-agents-table")
    assert 'data-agent="p-01"' in section(page, "offline-agents-table")
    failed = section(page, "failed-deployments-table")
    assert "prod" in failed and "failed" in failed
    assert section(page, "pending-table") == ""  # a viewer approves nothing


def test_environment_viewer_sees_only_that_environment(site: Site, tmp_path: Path) -> None:
    _populate(site, tmp_path)
    page = page_of(site, "view-test")
    deployed = section(page, "deployed-table")
    assert 'data-environment="test"' in deployed
    assert 'data-environment="prod"' not in deployed and 'data-cell="prod/' not in deployed
    assert 'data-agent="t-01"' in section(page, "offline-agents-table")
    assert "p-01" not in page
    assert section(page, "failed-deployments-table") == ""
    assert 'id="no-failed"' in page
    assert not re.search(r"\bprod\b", page), "an environment the user cannot view is named"


def test_pending_approvals_follow_who_may_approve(site: Site, tmp_path: Path) -> None:
    _populate(site, tmp_path)
    for who in ("appr1", "appr2", "appr-prod"):
        pending = section(page_of(site, who), "pending-table")
        assert 'data-release="hello/1.1.0"' in pending, who
        assert 'data-release="hello/1.0.0"' not in pending, who  # approvals complete
    for who in ("dev", "op", "view"):
        assert 'id="no-pending"' in page_of(site, who), who
    with site.app.app_context():
        approve_release(site.ctx("appr1"), get_release(db.session(), "hello", "1.1.0"))
        db.session.commit()
    # appr1 is done; appr2 is still wanted: prod needs two distinct approvers
    assert 'id="no-pending"' in page_of(site, "appr1")
    pending = section(page_of(site, "appr2"), "pending-table")
    assert 'data-release="hello/1.1.0"' in pending and "prod" in pending


def test_agent_seen_recently_is_not_offline(site: Site, tmp_path: Path) -> None:
    _populate(site, tmp_path)
    with site.app.app_context():
        get_agent(db.session(), "t-01").last_seen = site.clock() - timedelta(seconds=30)
        get_agent(db.session(), "p-01").last_seen = site.clock() - online_window() * 2
        db.session.commit()
    offline = section(page_of(site, "op"), "offline-agents-table")
    assert "t-01" not in offline and 'data-agent="p-01"' in offline


def test_failed_deployment_retried_with_success_is_not_listed(site: Site,
                                                               tmp_path: Path) -> None:
    _populate(site, tmp_path)
    with site.app.app_context():
        _deploy(site, "1.0.0", "prod", "delivered", "succeeded")
        db.session.commit()
    page = page_of(site, "op")
    assert 'id="no-failed"' in page
    cell = re.search(r'data-cell="prod/hello">(.*?)</td>', section(page, "deployed-table"), re.S)
    assert cell is not None and ">1.0.0</a>" in cell.group(1)
