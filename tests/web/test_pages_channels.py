"""The channels pages: a product's channels with the releases in each; approve-promotion,
promote and recall buttons (CSRF, permissions, a refused promotion naming what is missing);
subscriptions on an environment's page."""

from __future__ import annotations

import json
import threading
from html import unescape as html_unescape
from pathlib import Path

from playwright.sync_api import Browser, Page, expect
from sqlalchemy import func, select
from werkzeug.serving import make_server

from hub.db import AuditEvent, ChannelEntry, ChannelSubscription, Deployment, db
from hub.services.approvals import approve_release
from hub.services.channels import ChannelRule, set_rule, subscribe
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import write_release
from tests.web.browser import ARTIFACTS, chromium, new_context  # noqa: F401 - chromium is a fixture
from tests.web.pages import Site
from web.channels import RELEASES_SHOWN


def _approved(site: Site, tmp: Path, version: str = "1.0.0") -> None:
    with site.app.app_context():
        release = create_release(site.ctx("dev"), write_release(tmp / "src", version=version),
                                 create_missing_product=True)
        submit_release(site.ctx("dev"), release)
        approve_release(site.ctx("appr1"), release)
        db.session.commit()


def _state(site: Site) -> tuple[int, int, list[tuple[int, str]], int]:
    with site.app.app_context():
        s = db.session
        return (s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
                s.scalar(select(func.count()).select_from(ChannelEntry)) or 0,
                [(d.id, d.state) for d in s.scalars(select(Deployment).order_by(Deployment.id))],
                s.scalar(select(func.count()).select_from(ChannelSubscription)) or 0)


def _channel_section(html: str, name: str) -> str:
    return html.split(f'id="channel-{name}"')[1].split("</section>")[0]


def test_channels_page_shows_each_channel_and_the_buttons_one_may_use(
    site: Site, tmp_path: Path
) -> None:
    _approved(site, tmp_path)
    with site.app.app_context():
        subscribe(site.ctx("admin"), "prod", "hello", "STABLE")
        db.session.commit()
    html = site.client("view").get("/channels/hello").get_data(as_text=True)
    assert html.index('id="channel-RELEASE"') < html.index('id="channel-CANARY"') < html.index(
        'id="channel-STABLE"')
    release = _channel_section(html, "RELEASE")
    assert 'data-release="1.0.0"' in release and "ready for CANARY" in release
    assert "promote-form" not in html and "recall-form" not in html
    assert "approve-promotion-form" not in html
    assert "No release in CANARY" in html
    assert 'href="/environments/prod"' in _channel_section(html, "STABLE")
    op = site.client("op").get("/channels/hello").get_data(as_text=True)
    assert "promote-form" in op and "recall-form" in op and "approve-promotion-form" not in op
    appr = site.client("appr2").get("/channels/hello").get_data(as_text=True)
    assert "approve-promotion-form" in appr and "promote-form" not in appr
    assert site.client("nobody").get("/channels/hello").status_code == 404  # as if absent
    index = site.client("view").get("/channels/").get_data(as_text=True)
    assert "RELEASE → CANARY → STABLE" in index
    assert '<a href="/channels/"' in index  # in the navigation bar


def test_promote_refused_then_approved_and_promoted_through_the_page(
    site: Site, tmp_path: Path
) -> None:
    _approved(site, tmp_path)
    with site.app.app_context():
        set_rule(site.ctx("admin"), "hello", "CANARY", ChannelRule(required_approvals=1))
        subscribe(site.ctx("admin"), "test", "hello", "CANARY")
        db.session.commit()
    form = {"version": "1.0.0", "to": "CANARY"}
    op = site.client("op")
    before = _state(site)
    assert op.post("/channels/hello/promote", data=form).status_code == 400  # no CSRF token
    assert site.post(site.client("appr1"), "/channels/hello/promote", form).status_code == 403
    refused = site.post(op, "/channels/hello/promote", form)
    assert refused.status_code == 303
    page = op.get("/channels/hello").get_data(as_text=True)
    assert "flash-error" in page and "missing: approvals: 0 of 1 distinct approver(s)" in page
    author = site.post(site.client("admin"), "/channels/hello/approve", form)
    assert author.status_code == 303  # admin is not the author: this one counts
    after_approval = _state(site)
    assert after_approval[1:] == before[1:]
    assert site.post(site.client("dev"), "/channels/hello/approve", form).status_code == 403

    done = site.post(op, "/channels/hello/promote", form)
    assert done.status_code == 303
    page = op.get("/channels/hello").get_data(as_text=True)
    assert "promoted from RELEASE to CANARY; deployments: test (queued)" in page
    assert 'data-release="1.0.0"' in _channel_section(page, "CANARY")


def test_recall_through_the_page_needs_a_reason_and_cancels(site: Site, tmp_path: Path) -> None:
    _approved(site, tmp_path)
    with site.app.app_context():
        subscribe(site.ctx("admin"), "test", "hello", "RELEASE")
        db.session.commit()
    _approved(site, tmp_path, "1.0.1")  # planned for test and queued at once
    op = site.client("op")
    before = _state(site)
    assert [s for _, s in before[2]] == ["queued"]
    form = {"version": "1.0.1", "channel": "RELEASE", "reason": "  "}
    assert site.post(op, "/channels/hello/recall", form).status_code == 400
    assert site.post(site.client("view"), "/channels/hello/recall",
                     {**form, "reason": "bad"}).status_code == 403
    assert _state(site) == before
    assert site.post(op, "/channels/hello/recall",
                     {**form, "reason": "bad build"}).status_code == 303
    page = op.get("/channels/hello").get_data(as_text=True)
    assert "recalled from RELEASE; 1 deployment(s) cancelled" in page
    assert 'data-release="1.0.1"' not in page
    assert [s for _, s in _state(site)[2]] == ["cancelled"]
    with site.app.app_context():
        details = json.loads(db.session.scalars(select(AuditEvent.details).where(
            AuditEvent.action == "channel.recall")).one())
    assert details["reason"] == "bad build"


def test_environment_page_subscriptions(site: Site, tmp_path: Path) -> None:
    _approved(site, tmp_path)
    admin = site.client("admin")
    page = admin.get("/environments/test").get_data(as_text=True)
    assert 'id="no-subscriptions"' in page and 'id="subscribe-form"' in page
    assert 'id="subscribe-form"' not in site.client("op").get(
        "/environments/test").get_data(as_text=True)
    before = _state(site)
    refused = site.post(site.client("op"), "/channels/subscriptions/test",
                        {"product": "hello", "channel": "STABLE"})
    assert refused.status_code == 403
    hidden = site.post(site.client("view-test"), "/channels/subscriptions/prod",
                       {"product": "hello", "channel": "STABLE"})
    assert hidden.status_code == 404  # an environment one may not view does not exist
    assert _state(site) == before
    assert site.post(admin, "/channels/subscriptions/test",
                     {"product": "hello", "channel": "stable"}).status_code == 303
    page = site.client("view").get("/environments/test").get_data(as_text=True)
    row = page.split('id="subscriptions-table"')[1].split("</table>")[0]
    assert 'data-product="hello"' in row and ">STABLE<" in row
    assert site.post(admin, "/channels/subscriptions/test/remove",
                     {"product": "hello"}).status_code == 303
    assert 'id="no-subscriptions"' in admin.get("/environments/test").get_data(as_text=True)


def test_approve_promote_and_recall_in_a_real_browser(
    site: Site, tmp_path: Path, chromium: Browser  # noqa: F811
) -> None:
    """Chromium clicks through the Channels page (CSP on, forms with their CSRF tokens):
    a refused promotion shows what is missing, an approver approves, the operator promotes
    (the subscribed environment's deployment is queued), then recalls with a reason."""
    _approved(site, tmp_path)
    with site.app.app_context():
        set_rule(site.ctx("admin"), "hello", "CANARY", ChannelRule(required_approvals=1))
        subscribe(site.ctx("admin"), "test", "hello", "CANARY")
        db.session.commit()
    server = make_server("127.0.0.1", 0, site.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="channels-web", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    shots = ARTIFACTS / "channels"
    shots.mkdir(parents=True, exist_ok=True)

    def page_of(user: str) -> Page:
        cookie = site.client(user).get_cookie("tiangong_session")
        assert cookie is not None
        context = new_context(chromium)
        context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base}])
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/channels/hello")
        return page

    errors: list[str] = []
    try:
        op = page_of("op")
        row = op.locator('#channel-RELEASE tr[data-release="1.0.0"]')
        expect(row.locator("td.next")).to_contain_text("approvals: 0 of 1")
        row.locator(".promote-button").click()
        expect(op.locator(".flash-error")).to_contain_text(
            "from RELEASE to CANARY refused; missing: approvals: 0 of 1")

        appr = page_of("appr1")
        expect(appr.locator(".promote-button")).to_have_count(0)
        appr.locator('#channel-RELEASE tr[data-release="1.0.0"] .approve-promotion-button').click()
        expect(appr.locator(".flash")).to_contain_text("You approved promoting hello 1.0.0 to "
                                                        "CANARY")
        expect(appr.locator('#channel-RELEASE tr[data-release="1.0.0"] td.next')).to_contain_text(
            "ready for CANARY (approved by appr1)")

        op.reload()
        op.locator('#channel-RELEASE tr[data-release="1.0.0"] .promote-button').click()
        expect(op.locator(".flash")).to_contain_text(
            "promoted from RELEASE to CANARY; deployments: test (queued)")
        canary = op.locator('#channel-CANARY tr[data-release="1.0.0"]')
        expect(canary).to_be_visible()
        op.screenshot(path=str(shots / "promoted.png"), full_page=True)

        canary.locator("input[name=reason]").fill("breaks invoices")
        canary.locator(".recall-button").click()
        expect(op.locator(".flash")).to_contain_text(
            "recalled from CANARY; 1 deployment(s) cancelled")
        expect(op.locator('#channel-CANARY tr[data-release="1.0.0"]')).to_have_count(0)
        assert [s for _, s in _state(site)[2]] == ["cancelled"]
        assert [e for e in errors if "favicon" not in e and "404" not in e] == []
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_admin_changes_rules_adds_and_removes_channels(site: Site, tmp_path: Path) -> None:
    _approved(site, tmp_path)
    with site.app.app_context():
        subscribe(site.ctx("admin"), "prod", "hello", "STABLE")
        db.session.commit()
    admin = site.client("admin")
    page = admin.get("/channels/hello").get_data(as_text=True)
    assert 'id="add-channel-form"' in page and page.count("rule-form") == 2  # not RELEASE
    assert 'id="add-channel-form"' not in site.client("op").get(
        "/channels/hello").get_data(as_text=True)

    def rules() -> list[str]:
        html = site.client("view").get("/channels/hello").get_data(as_text=True)
        return [part.split("</dd>")[0] for part in html.split('<dd class="rule">')[1:]]

    before = (_state(site), rules())
    for form, words in (({"required_approvals": "two"}, "must be a whole number, not 'two'"),
                        ({"soak": "a while"}, "is not a duration"),
                        ({"required_approvals": "11"}, "between 0 and 10, not 11")):
        bad = site.post(admin, "/channels/hello/rule", {"channel": "STABLE", **form})
        assert bad.status_code == 400 and words in html_unescape(bad.get_data(as_text=True))
    busy = site.post(admin, "/channels/hello/remove", {"channel": "STABLE"})
    assert busy.status_code == 409 and "has subscribers (prod)" in busy.get_data(as_text=True)
    assert (_state(site), rules()) == before

    saved = site.post(admin, "/channels/hello/rule", {
        "channel": "STABLE", "required_approvals": "2", "min_successes": "1",
        "no_failures": "1", "soak": "6h"})
    assert saved.status_code == 303
    assert rules()[2] == ("2 approver(s) of the promotion, not the author; succeeded on at "
                          "least 1 agent(s) subscribed to CANARY; no failure in CANARY; soak "
                          "6h since the last success in CANARY")
    assert site.post(admin, "/channels/hello/add",
                     {"name": "beta", "after": "CANARY"}).status_code == 303
    assert site.post(admin, "/channels/hello/remove", {"channel": "CANARY"}).status_code == 303
    html = site.client("view").get("/channels/hello").get_data(as_text=True)
    assert [c.split('"')[0] for c in html.split('data-channel="')[1:]] == [
        "RELEASE", "BETA", "STABLE"]


def test_a_long_channel_lists_its_newest_releases(site: Site, tmp_path: Path) -> None:
    for i in range(RELEASES_SHOWN + 2):
        site.clock.advance(1)
        _approved(site, tmp_path, f"1.0.{i}")
    html = site.client("view").get("/channels/hello").get_data(as_text=True)
    release = _channel_section(html, "RELEASE")
    assert release.count("data-release=") == RELEASES_SHOWN
    assert f"The newest {RELEASES_SHOWN} of {RELEASES_SHOWN + 2} releases in RELEASE" in release
    assert f'data-release="1.0.{RELEASES_SHOWN + 1}"' in release
    assert 'data-release="1.0.0"' not in release
