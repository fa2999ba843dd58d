"""The notifications page of an environment: an admin adds an e-mail target and sets the
thresholds through the forms (CSRF); the deliveries table shows a failed notification with
its last error and attempts, and an operator's "Retry now" makes it due; viewers see no
forms and are refused; a bad address is refused and nothing changes."""

from __future__ import annotations

from html import unescape
from pathlib import Path

from sqlalchemy.orm import Session

from hub.db import db
from hub.services.incidents import get_thresholds
from hub.services.notifications import (
    MAX_ATTEMPTS,
    SmtpSettings,
    backoff,
    deliver_due,
    list_webhooks,
)
from hub.services.releases import create_product, create_release, submit_release
from tests.hub.conftest import write_release
from tests.web.pages import Site


def _config(site: Site) -> tuple[list[str], int | None]:
    with site.app.app_context():
        return ([t.url for t in list_webhooks(site.ctx(), "prod")],
                get_thresholds(site.ctx(), "prod").agent_offline_s)


def test_targets_thresholds_deliveries_and_retry_now(site: Site, tmp_path: Path) -> None:
    admin = site.client("admin")
    assert 'id="notifications-link"' in admin.get("/environments/prod").get_data(as_text=True)
    page = admin.get("/notifications/prod").get_data(as_text=True)
    assert 'id="target-form"' in page and 'id="no-targets"' in page

    bad = site.post(admin, "/notifications/prod/targets",
                    {"kind": "email", "recipients": "ops", "events": "approval.needed"},
                    follow_redirects=True)
    assert "e-mail address 'ops'" in unescape(bad.get_data(as_text=True))
    bad = site.post(admin, "/notifications/prod/thresholds",
                    {"agent_offline": "5s", "result_overdue": "off"}, follow_redirects=True)
    assert "at least 1 minute" in unescape(bad.get_data(as_text=True))
    assert _config(site) == ([], None)

    added = site.post(admin, "/notifications/prod/targets",
                      {"kind": "email", "recipients": "ops@example.org",
                       "events": "approval.needed"}, follow_redirects=True)
    assert "E-mail target 1 added: ops@example.org" in unescape(added.get_data(as_text=True))
    saved = site.post(admin, "/notifications/prod/thresholds",
                      {"agent_offline": "2h", "result_overdue": "1d"}, follow_redirects=True)
    html = unescape(saved.get_data(as_text=True))
    assert "agent offline after 2h, result overdue after 1d" in html
    assert _config(site) == (["ops@example.org"], 7200)

    with site.app.app_context():  # a release submitted; no relay: every attempt fails
        dev = site.ctx("dev")
        create_product(dev, "hello")
        submit_release(dev, create_release(dev, write_release(tmp_path)))
        db.session.commit()
        engine = db.engine
    for attempt in range(1, MAX_ATTEMPTS + 1):
        deliver_due(lambda: Session(engine), site.clock, smtp=SmtpSettings())
        site.clock.advance(backoff(attempt).total_seconds())
    op = site.client("op")
    html = unescape(op.get("/notifications/prod").get_data(as_text=True))
    row = html.split('id="delivery-1"')[1].split("</tr>")[0]
    assert "failed" in row and f"<td>{MAX_ATTEMPTS}</td>" in row
    assert "no SMTP relay configured" in row and "Retry now" in row
    assert 'id="target-form"' not in html  # operators do not configure

    view = site.client("view")
    assert "Retry now" not in view.get("/notifications/prod").get_data(as_text=True)
    assert site.post(view, "/notifications/prod/deliveries/1/retry", {}).status_code == 403
    assert site.post(op, "/notifications/prod/targets/1/remove", {}).status_code == 403
    assert site.post(op, "/notifications/test/deliveries/1/retry", {}).status_code == 404
    assert "failed" in unescape(op.get("/notifications/prod").get_data(as_text=True)).split(
        'id="delivery-1"')[1].split("</tr>")[0]

    retried = site.post(op, "/notifications/prod/deliveries/1/retry", {},
                        follow_redirects=True)
    html = unescape(retried.get_data(as_text=True))
    assert "Notification 1 is due now" in html
    assert 'class="state-pending"' in html.split('id="delivery-1"')[1].split("</tr>")[0]

    admin = site.client("admin")  # the first session ended while the hours of retries passed
    removed = site.post(admin, "/notifications/prod/targets/1/remove", {},
                        follow_redirects=True)
    assert "Target 1 (ops@example.org) removed" in unescape(removed.get_data(as_text=True))
    assert _config(site) == ([], 7200)
