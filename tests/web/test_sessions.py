"""Break-glass login (off by default, every attempt audited) and session timeouts, with
an injected clock (no sleeping)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import requests
from flask import Flask
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from hub.db import AuditEvent, db
from hub.services.users import bootstrap_admin
from tests.fixtures.saml_idp import SamlIdP
from tests.web.conftest import HTTP_TIMEOUT_S, form_with

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def glass_app(make_web_app: Callable[..., Flask], clock: Clock) -> Flask:
    app = make_web_app(
        clock=clock,
        idle_timeout_s=600,
        absolute_timeout_s=3600,
        break_glass={
            "enabled": True,
            "username": "breakglass",
            "password_hash": generate_password_hash(PASSWORD),
        },
    )
    with app.app_context():
        bootstrap_admin(db.session, clock, "breakglass")
        db.session.commit()
        db.session.remove()
    return app


def _audit(app: Flask) -> list[tuple[str, str]]:
    with app.app_context():
        rows = [(e.actor, e.action) for e in db.session.scalars(select(AuditEvent))]
        db.session.remove()
    return [r for r in rows if r[1].startswith("auth.")]


def _break_glass(
    http: requests.Session, idp: SamlIdP, password: str, with_csrf: bool = True
) -> requests.Response:
    page = http.get(f"{idp.sp_base_url}/login/local", timeout=HTTP_TIMEOUT_S)
    form = form_with(page.text, "csrf_token")
    assert form is not None
    data = {"username": "breakglass", "password": password}
    if with_csrf:
        data["csrf_token"] = form["fields"]["csrf_token"]
    return http.post(
        f"{idp.sp_base_url}/login/local", data=data, allow_redirects=False, timeout=HTTP_TIMEOUT_S
    )


def _home(http: requests.Session, idp: SamlIdP) -> str:
    return http.get(f"{idp.sp_base_url}/", timeout=HTTP_TIMEOUT_S).text


def test_break_glass_is_off_by_default(
    web_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    assert (
        browser.get(f"{saml_idp.sp_base_url}/login/local", timeout=HTTP_TIMEOUT_S).status_code
        == 404
    )
    resp = browser.post(
        f"{saml_idp.sp_base_url}/login/local",
        data={"username": "breakglass", "password": PASSWORD},
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code in (400, 404)
    assert _audit(web_app) == []


def test_break_glass_login_is_audited(
    glass_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    resp = _break_glass(browser, saml_idp, PASSWORD)
    assert resp.status_code == 302
    page = _home(browser, saml_idp)
    assert "break-glass account" in page
    assert "admin" in page
    assert _audit(glass_app) == [("breakglass", "auth.break_glass_login")]


def test_break_glass_wrong_password_is_refused_and_audited(
    glass_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    resp = _break_glass(browser, saml_idp, "wrong")
    assert resp.status_code == 403
    assert "Welcome" not in _home(browser, saml_idp)
    assert _audit(glass_app) == [("breakglass", "auth.break_glass_refused")]


def test_break_glass_without_csrf_token_is_refused(
    glass_app: Flask, browser: requests.Session, saml_idp: SamlIdP
) -> None:
    resp = _break_glass(browser, saml_idp, PASSWORD, with_csrf=False)
    assert resp.status_code == 400
    assert "Welcome" not in _home(browser, saml_idp)
    assert _audit(glass_app) == []


@pytest.mark.parametrize(
    ("steps", "signed_in"),
    [
        ([599], True),  # just inside the idle timeout
        ([601], False),  # idle too long
        ([500, 500, 500, 500, 500, 500, 500], True),  # active, 3500 s after login
        ([500, 500, 500, 500, 500, 500, 500, 500], False),  # 4000 s: past the absolute timeout
    ],
)
def test_session_timeouts(
    glass_app: Flask,
    browser: requests.Session,
    saml_idp: SamlIdP,
    clock: Clock,
    steps: list[int],
    signed_in: bool,
) -> None:
    assert _break_glass(browser, saml_idp, PASSWORD).status_code == 302
    for i, seconds in enumerate(steps):
        clock.advance(seconds)
        page = _home(browser, saml_idp)
        if i < len(steps) - 1:
            assert "Welcome" in page
    assert ("Welcome" in page) is signed_in
    if not signed_in:
        assert "Your session has expired" in page
