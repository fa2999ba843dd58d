"""The environments pages: list, an environment with its agents, deployments and required
approvals; admins create environments and change the required approvals."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from hub.db import AuditEvent, Environment, db
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment
from hub.services.environments import get_environment
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import write_release
from tests.web.pages import Site
from tests.web.test_pages_agents import enroll, set_last_seen


def _deploy_twice(site: Site, tmp: Path) -> list[int]:
    """Two approved releases queued for test (one agent there): their deployment ids."""
    ids = []
    with site.app.app_context():
        for version in ("1.0.0", "1.1.0"):
            release = create_release(site.ctx("dev"), write_release(tmp / "src", version=version),
                                     create_missing_product=True)
            submit_release(site.ctx("dev"), release)
            approve_release(site.ctx("appr1"), release)
            ids += [d.id for d in queue_deployment(site.ctx("op"), release, "test")]
        db.session.commit()
    return ids


def test_index_lists_only_viewable_environments(site: Site) -> None:
    html = site.client("view").get("/environments/").get_data(as_text=True)
    assert 'data-environment="test"' in html and 'data-environment="prod"' in html
    only_test = site.client("view-test").get("/environments/").get_data(as_text=True)
    assert 'data-environment="test"' in only_test
    assert re.search(r"(?<![\w-])prod(?![\w-])", only_test) is None
    none = site.client("nobody").get("/environments/")
    assert none.status_code == 200 and "ask an administrator" in none.get_data(as_text=True)
    assert 'id="create-environment-form"' not in html
    assert 'id="create-environment-form"' in site.client("admin").get(
        "/environments/").get_data(as_text=True)


def test_environment_page_shows_agents_deployments_and_approvals(
    site: Site, tmp_path: Path
) -> None:
    enroll(site, tmp_path, "env-agent-1")
    set_last_seen(site, "env-agent-1", timedelta(seconds=10))
    first, second = _deploy_twice(site, tmp_path)
    resp = site.client("view-test").get("/environments/test")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'id="required-approvals">1 distinct' in html
    agents = html.split('id="agents-table"')[1].split("</table>")[0]
    assert "env-agent-1" in agents and ">online<" in agents
    deployments = html.split('id="deployments-table"')[1].split("</table>")[0]
    # latest first, each linking to its deployment page
    assert deployments.index(f'href="/deployments/{second}"') < deployments.index(
        f'href="/deployments/{first}"')
    assert "hello 1.1.0" in deployments and ">queued<" in deployments
    assert 'id="required-approvals-form"' not in html
    assert 'id="enroll-agent-link"' not in html
    assert 'id="enroll-agent-link"' in site.client("op-test").get(
        "/environments/test").get_data(as_text=True)


def test_environment_page_needs_a_grant_there(site: Site) -> None:
    assert site.client("view-test").get("/environments/prod").status_code == 404
    assert site.client("nobody").get("/environments/test").status_code == 404
    assert site.client("appr-prod").get("/environments/prod").status_code == 200
    assert site.client("view").get("/environments/nowhere").status_code == 404


def test_admin_creates_an_environment(site: Site) -> None:
    c = site.client("admin")
    resp = site.post(c, "/environments/", {"name": "plant-a", "description": "Plant A",
                                           "required_approvals": "3"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/environments/plant-a"
    page = c.get("/environments/plant-a").get_data(as_text=True)
    assert "Plant A" in page and 'id="required-approvals">3 distinct' in page
    again = site.post(c, "/environments/", {"name": "plant-a", "required_approvals": "1"})
    assert again.status_code == 409 and "already exists" in again.get_data(as_text=True)


def _names(site: Site) -> list[str]:
    with site.app.app_context():
        return list(db.session.scalars(select(Environment.name).order_by(Environment.name)))


def test_creating_is_admin_only_and_bad_input_is_a_400(site: Site) -> None:
    before = _names(site)
    for who in ("op", "view", "dev", "appr1"):
        resp = site.post(site.client(who), "/environments/",
                         {"name": "sneaky", "required_approvals": "1"})
        assert resp.status_code == 403, who
    # Refused before the field is even looked at: 403, not 400.
    assert site.post(site.client("op"), "/environments/",
                     {"name": "sneaky", "required_approvals": "many"}).status_code == 403
    c = site.client("admin")
    bad_name = site.post(c, "/environments/", {"name": "Bad Name", "required_approvals": "1"})
    assert bad_name.status_code == 400
    assert "lowercase letters" in bad_name.get_data(as_text=True)
    not_number = site.post(c, "/environments/", {"name": "ok-name", "required_approvals": "two"})
    assert not_number.status_code == 400
    assert "whole number from 1 to 10, not &#39;two&#39;" in not_number.get_data(as_text=True)
    too_many = site.post(c, "/environments/", {"name": "ok-name", "required_approvals": "11"})
    assert too_many.status_code == 400 and "not 11" in too_many.get_data(as_text=True)
    assert _names(site) == before


def test_admin_changes_required_approvals(site: Site) -> None:
    c = site.client("admin")
    assert 'id="required-approvals-form"' in c.get("/environments/prod").get_data(as_text=True)
    resp = site.post(c, "/environments/prod/required-approvals", {"required_approvals": "3"})
    assert resp.status_code == 302
    assert "now requires 3" in c.get("/environments/prod").get_data(as_text=True)
    for bad, says in (("0", "not 0"), ("abc", "not &#39;abc&#39;"), ("", "not &#39;&#39;")):
        r = site.post(c, "/environments/prod/required-approvals", {"required_approvals": bad})
        assert r.status_code == 400 and says in r.get_data(as_text=True), bad
    for who in ("op", "appr-prod", "view-test"):
        r = site.post(site.client(who), "/environments/prod/required-approvals",
                      {"required_approvals": "1"})
        assert r.status_code == (404 if who == "view-test" else 403), who
    assert site.post(c, "/environments/nowhere/required-approvals",
                     {"required_approvals": "1"}).status_code == 404
    with site.app.app_context():
        assert get_environment(db.session(), "prod").required_approvals == 3


def test_environment_page_shows_its_adhoc_policy(site: Site) -> None:
    from hub.services.adhoc_policy import set_adhoc_policy

    before = site.client("view-test").get("/environments/test").get_data(as_text=True)
    assert ('id="adhoc-policy">ad-hoc runs follow the environment\'s rule (1 approval)'
            in before.replace("&#39;", "'"))
    with site.app.app_context():
        set_adhoc_policy(site.ctx("admin"), "test", 0)
        db.session.commit()
    after = site.client("view-test").get("/environments/test").get_data(as_text=True)
    assert 'id="adhoc-policy">ad-hoc runs need no approval' in after


def test_admin_sets_and_clears_the_preflight_policy(site: Site) -> None:
    """The environment page's preflight policy form (docs/rollouts.md, "Preflight policy of
    an environment"): admins only, bounded, audited; a refusal changes nothing."""

    def policy() -> int | None:
        with site.app.app_context():
            return db.session.scalar(select(Environment.preflight_within_h)
                                     .where(Environment.name == "test"))

    def events() -> int:
        with site.app.app_context():
            return len(list(db.session.scalars(select(AuditEvent.seq).where(
                AuditEvent.action == "environment.preflight_policy"))))

    assert site.post(site.client("op"), "/environments/test/preflight-policy",
                     {"within_h": "24"}).status_code == 403
    assert site.post(site.client("op"), "/environments/test/preflight-policy",
                     {"within_h": "soon"}).status_code == 403  # 403 before 400
    c = site.client("admin")
    for bad, words in (("0", "a preflight policy of 0 h: give 1 … 720 hours"),
                       ("721", "of 721 h"), ("soon", "not &#39;soon&#39;"),
                       ("\u00b2", "not &#39;\u00b2&#39;")):  # isdigit() but no int(): a 500
        resp = site.post(c, "/environments/test/preflight-policy", {"within_h": bad})
        assert resp.status_code == 400 and words in resp.get_data(as_text=True), bad
    assert policy() is None and events() == 0
    page = c.get("/environments/test").get_data(as_text=True)
    assert 'id="preflight-policy-form"' in page and "no preflight policy" in page
    done = site.post(c, "/environments/test/preflight-policy", {"within_h": "24"})
    assert done.status_code == 302 and policy() == 24
    page = c.get("/environments/test").get_data(as_text=True)
    assert "passed on each target agent within 24 h" in page
    assert 'id="preflight-policy-form"' not in \
        site.client("op").get("/environments/test").get_data(as_text=True)
    site.post(c, "/environments/test/preflight-policy", {"within_h": ""})
    assert policy() is None and events() == 2
