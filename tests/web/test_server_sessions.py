"""Server-side sessions (:mod:`web.sessions`): a copy of the cookie is worth nothing once
the session ended — by sign-out, deactivation, an admin's "sign out everywhere" or a
timeout — for GET and POST, and nothing changes when it is replayed. The clock is the
site's injected one (no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from hub.db import WebSession, db
from tests.web.pages import Site, csrf_of
from tests.web.test_authz_matrix import assert_unchanged, build_world, snapshot
from web.sessions import COOKIE_NAME, MAX_TOUCH_STEP_S

IDLE_S = 1800  # the defaults of web.config: idle 30 min, absolute 12 h
ABSOLUTE_S = 12 * 3600


def _steal(site: Site, victim: FlaskClient) -> FlaskClient:
    """A second browser holding a copy of ``victim``'s session cookie."""
    cookie = victim.get_cookie(COOKIE_NAME)
    assert cookie is not None
    thief = site.app.test_client()
    thief.set_cookie(COOKIE_NAME, cookie.value)
    return thief


def _signed_in_as(c: FlaskClient) -> str | None:
    page = c.get("/").get_data(as_text=True)
    if "Signed in as" not in page:
        return None
    return page.split("Signed in as <strong>", 1)[1].split("</strong>", 1)[0]


def _sessions(site: Site) -> int:
    with site.app.app_context():
        n = int(db.session.scalar(select(func.count()).select_from(WebSession)) or 0)
        db.session.remove()
    return n


def _assert_refused(site: Site, thief: FlaskClient, queue_url: str, token: str) -> None:
    """GETs answer as to a visitor who is not signed in; the POST that queued a deployment
    in the issue's report is refused and changes nothing."""
    assert _signed_in_as(thief) is None
    resp = thief.get("/deployments/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    before = snapshot(site)
    resp = thief.post(queue_url, data={"environment": "test", "csrf_token": token})
    assert resp.status_code in (302, 400), resp.status_code
    if resp.status_code == 302:
        assert resp.headers["Location"].startswith("/login?next=")
    assert_unchanged(before, snapshot(site), f"a replayed POST {queue_url}")


@pytest.fixture
def queue_url(site: Site, tmp_path: Path) -> str:
    world = build_world(site, tmp_path)
    return f"/releases/{world.product}/{world.unqueued}/queue"


def test_stolen_cookie_is_refused_after_sign_out(site: Site, queue_url: str) -> None:
    op = site.client("op")
    token = csrf_of(op.get("/releases/").get_data(as_text=True))
    thief = _steal(site, op)
    assert _signed_in_as(thief) == "op"  # the copy works while the session lives
    resp = site.post(op, "/logout")
    assert resp.status_code == 302
    assert _signed_in_as(op) is None
    _assert_refused(site, thief, queue_url, token)


def test_deactivation_ends_sessions_at_once(site: Site, queue_url: str) -> None:
    op = site.client("op")
    token = csrf_of(op.get("/releases/").get_data(as_text=True))
    thief = _steal(site, op)
    admin = site.client("admin")
    resp = site.post(admin, "/admin/users/op/active", {"active": "0", "confirmed": "1"})
    assert resp.status_code == 302
    _assert_refused(site, thief, queue_url, token)
    assert _signed_in_as(op) is None
    # Reactivating does not bring the old sessions back.
    assert site.post(admin, "/admin/users/op/active", {"active": "1"}).status_code == 302
    assert _signed_in_as(thief) is None


def test_admin_signs_a_user_out_everywhere(site: Site, queue_url: str) -> None:
    op1, op2 = site.client("op"), site.client("op")
    dev = site.client("dev")
    token = csrf_of(op1.get("/releases/").get_data(as_text=True))
    admin = site.client("admin")
    page = admin.get("/admin/users/op").get_data(as_text=True)
    opened = _sessions(site) - 2  # dev's and admin's
    assert opened >= 2 and f"{opened} web session(s) open" in page
    resp = site.post(admin, "/admin/users/op/sessions/end")
    assert resp.status_code == 302
    page = admin.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"op is signed out everywhere ({opened} session(s) ended)" in page
    assert _sessions(site) == 2
    _assert_refused(site, op1, queue_url, token)
    assert _signed_in_as(op2) is None
    assert _signed_in_as(dev) == "dev"  # other people's sessions are untouched
    assert _signed_in_as(admin) == "admin"


def test_sign_out_everywhere_is_admin_only(site: Site) -> None:
    dev = site.client("dev")
    site.client("op")
    before = _sessions(site)
    assert site.post(dev, "/admin/users/op/sessions/end").status_code == 403
    assert _sessions(site) == before


@pytest.mark.parametrize(
    ("steps", "alive"),
    [
        ([IDLE_S - 1], True),  # just inside the idle timeout
        ([IDLE_S + 1], False),  # idle too long
        ([IDLE_S - 60] * 24, True),  # busy for 11.6 h: within the absolute lifetime
        ([IDLE_S - 60] * 25, False),  # busy for 12.1 h: past it, however busy
    ],
)
def test_idle_and_absolute_timeouts(
    site: Site, steps: list[int], alive: bool
) -> None:
    """The owner and a thief keep the session busy together; neither can keep it past the
    absolute lifetime, and an idle session ends for both."""
    owner = site.client("op")
    thief = _steal(site, owner)
    for i, seconds in enumerate(steps):
        site.clock.advance(seconds)
        who = (owner, thief)[i % 2]
        page = who.get("/").get_data(as_text=True)
        if i < len(steps) - 1:
            assert "Signed in as" in page
    assert ("Signed in as" in page) is alive
    if not alive:
        assert "Your session has expired" in page
        assert _signed_in_as(thief) is None and _signed_in_as(owner) is None
        assert _sessions(site) == 0  # the expired row is gone


def test_a_cookie_for_a_session_that_never_existed_is_anonymous(site: Site) -> None:
    owner = site.client("op")
    cookie = owner.get_cookie(COOKIE_NAME)
    assert cookie is not None
    with site.app.app_context():
        db.session.execute(WebSession.__table__.delete())
        db.session.commit()
    assert _signed_in_as(owner) is None


def _last_seen(site: Site) -> object:
    with site.app.app_context():
        value = db.session.scalar(select(WebSession.last_seen_at))
        db.session.remove()
    return value


def test_a_burst_of_requests_writes_the_session_once(site: Site) -> None:
    """Requests within MAX_TOUCH_STEP_S of the last write only read the row; the idle
    limit still counts from the last write, so it can end early by that much, never late."""
    owner = site.client("op")
    first = _last_seen(site)
    for _ in range(5):
        site.clock.advance(5)
        assert _signed_in_as(owner) == "op"
    assert _last_seen(site) == first  # 25 s of page loads: no write
    site.clock.advance(MAX_TOUCH_STEP_S)
    assert _signed_in_as(owner) == "op"
    assert _last_seen(site) != first
