"""Local password sign-in (``[web] local_login``): off unless configured, refused to plain
HTTP from another machine and at start on a hub listening beyond loopback, rate-limited per
user name and per source address (break-glass too), audited without one event per wrong
password. The clock is the site's injected one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from hub.db import AuditEvent, LoginThrottle, WebSession, db
from hub.errors import ConfigError
from hub.services.users import set_password
from tests.web.pages import Site, make_site
from web.app import create_web_app

PASSWORD = "dev's long password"
WINDOW_S = 900


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Site]:
    with make_site(tmp_path, local_login=True, login_window_s=WINDOW_S,
                   login_max_failures_per_user=5, login_max_failures_per_address=8) as s:
        with s.app.app_context():
            set_password(s.ctx("admin"), "dev", PASSWORD)
            set_password(s.ctx("admin"), "op", "op's long password")
            db.session.commit()
        yield s


def _client(site: Site, address: str = "127.0.0.1") -> FlaskClient:
    c = site.app.test_client()
    c.environ_base["REMOTE_ADDR"] = address
    return c


def _sign_in(c: FlaskClient, username: str, password: str, next_url: str = "",
             base_url: str = "http://localhost") -> Any:
    page = c.get("/login/local", base_url=base_url)
    assert page.status_code == 200, page.status_code
    token = page.get_data(as_text=True).split('name="csrf_token" value="', 1)[1].split('"')[0]
    url = f"/login/local?next={next_url}" if next_url else "/login/local"
    return c.post(url, data={"username": username, "password": password,
                             "csrf_token": token}, base_url=base_url)


def _who(c: FlaskClient) -> str | None:
    page = c.get("/").get_data(as_text=True)
    if "Signed in as" not in page:
        return None
    return page.split("Signed in as <strong>", 1)[1].split("</strong>", 1)[0]


def _auth_events(site: Site) -> list[tuple[str, str, str]]:
    with site.app.app_context():
        rows = [(e.actor, e.action, e.object_id) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("auth.%")).order_by(AuditEvent.seq))]
        db.session.remove()
    return rows


def _state(site: Site) -> tuple[list[Any], int]:
    with site.app.app_context():
        events = len(list(db.session.scalars(select(AuditEvent))))
        sessions = [s.user_id for s in db.session.scalars(select(WebSession))]
        db.session.remove()
    return sessions, events


def test_off_unless_configured(site: Site) -> None:
    c = _client(site)
    assert c.get("/login/local").status_code == 404
    assert c.get("/login").status_code == 200  # the page saying what to configure
    assert "local_login" in c.get("/login").get_data(as_text=True)


def test_sign_in_with_a_password(local: Site) -> None:
    c = _client(local)
    # /login sends to the password form (no SAML on this hub), keeping where to go next.
    resp = c.get("/login?next=/releases/")
    assert resp.status_code == 302 and "/login/local?next=/releases/" in resp.headers["Location"]
    resp = _sign_in(c, "dev", PASSWORD, next_url="/releases/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/releases/"
    assert _who(c) == "dev"
    assert _auth_events(local) == [("dev", "auth.local_login", "dev")]
    with local.app.app_context():
        (row,) = db.session.scalars(select(WebSession)).all()
        assert row.method == "local"
        db.session.remove()


@pytest.mark.parametrize(("username", "password"), [
    ("dev", "a wrong password!"),
    ("ghost", PASSWORD),  # no such user: the same answer
    ("appr1", "appr1 has no password"),  # a user without a password: the same answer
])
def test_wrong_passwords_are_refused_alike(local: Site, username: str, password: str) -> None:
    c = _client(local)
    before = _state(local)
    resp = _sign_in(c, username, password)
    assert resp.status_code == 403
    assert "Wrong user name or password." in resp.get_data(as_text=True)
    assert _who(c) is None
    sessions, events = _state(local)
    assert sessions == before[0] and events == before[1] + 1  # the first failure, audited
    assert _auth_events(local) == [("anonymous", "auth.local_refused", username)]


def test_failures_are_rate_limited_per_user_and_audited_in_aggregate(local: Site) -> None:
    c = _client(local)
    for _ in range(5):
        assert _sign_in(c, "dev", "a wrong password!").status_code == 403
    assert _auth_events(local) == [
        ("anonymous", "auth.local_refused", "dev"),  # the first of the window
        ("anonymous", "auth.login_throttled", "dev"),  # the fifth: the limit
    ]
    # The right password now does not help: it is not even checked.
    other = _client(local, "127.0.0.9")
    before = _state(local)
    resp = _sign_in(other, "dev", PASSWORD)
    assert resp.status_code == 429 and "try again in 15 minute(s)" in resp.get_data(as_text=True)
    assert _who(other) is None and _state(local) == before
    # Another user is not locked out.
    assert _sign_in(_client(local), "op", "op's long password").status_code == 302
    # After the window, dev signs in; the failures before are in the audit event.
    local.clock.advance(WINDOW_S + 1)
    assert _sign_in(other, "dev", PASSWORD).status_code == 302
    assert _who(other) == "dev"


def test_success_reports_the_failures_before_it(local: Site) -> None:
    c = _client(local)
    for _ in range(2):
        _sign_in(c, "dev", "a wrong password!")
    assert _sign_in(c, "dev", PASSWORD).status_code == 302
    with local.app.app_context():
        event = db.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "auth.local_login")).one()
        assert '"failures_before":2' in event.details.replace(" ", "")
        assert db.session.get(LoginThrottle, "user:dev") is None  # cleared
        db.session.remove()


def test_failures_are_rate_limited_per_address(local: Site) -> None:
    """One address trying many user names is stopped after 8 failures (the address limit),
    even for a user name with no failures of its own."""
    c = _client(local, "127.0.0.7")
    for i in range(8):
        assert _sign_in(c, f"guess{i}", "wrong wrong wrong").status_code == 403
    resp = _sign_in(c, "dev", PASSWORD)
    assert resp.status_code == 429 and _who(c) is None
    assert _sign_in(_client(local, "127.0.0.8"), "dev", PASSWORD).status_code == 302
    throttled = [e for e in _auth_events(local) if e[1] == "auth.login_throttled"]
    assert throttled == [("anonymous", "auth.login_throttled", "guess7")]


def test_plain_http_from_another_machine_is_refused(local: Site) -> None:
    remote = _client(local, "192.0.2.10")
    page = remote.get("/login/local")
    assert page.status_code == 403
    assert "only offered over TLS or on this machine" in page.get_data(as_text=True)
    before = _state(local)
    with remote.session_transaction() as sess:
        sess["_csrf"] = "t"
    resp = remote.post("/login/local", data={"username": "dev", "password": PASSWORD,
                                             "csrf_token": "t"})
    assert resp.status_code == 403 and _who(remote) is None
    assert _state(local) == before
    # Over TLS (a proxy that terminates it and says so), the same address may sign in.
    assert _sign_in(_client(local, "192.0.2.10"), "dev", PASSWORD,
                    base_url="https://localhost").status_code == 302


def test_hub_listening_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listens on 0\.0\.0\.0:8400, beyond loopback"):
        create_web_app(
            {"data_dir": tmp_path, "secret_key": "k" * 32, "bind": "0.0.0.0:8400"},
            {"web": {"local_login": True}},
        )
    # The same hub on loopback starts.
    create_web_app({"data_dir": tmp_path, "secret_key": "k" * 32, "bind": "127.0.0.1:8400"},
                   {"web": {"local_login": True}})


def test_break_glass_is_rate_limited_too(tmp_path: Path) -> None:
    secret = "break glass password"
    with make_site(tmp_path, break_glass={"enabled": True, "username": "admin",
                                          "password_hash": generate_password_hash(secret)},
                   login_max_failures_per_user=3) as s:
        c = _client(s)
        for _ in range(3):
            assert _sign_in(c, "admin", "wrong").status_code == 403
        resp = _sign_in(c, "admin", secret)
        assert resp.status_code == 429 and _who(c) is None
        assert [e[1] for e in _auth_events(s)] == ["auth.break_glass_refused",
                                                    "auth.login_throttled"]


def test_two_processes_counting_the_same_first_failure(
    local: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another hub process inserts ``user:dev``'s counter between this one's look-up and
    its insert: the insert collides, the sign-in is counted again on the other's row and
    answered 403 (not 500)."""
    from datetime import timedelta

    from web import throttle

    real = throttle.record_failure
    calls = []

    class Blind:
        """This process's session, not seeing the other's row at its first look-up."""

        def __init__(self, session: Any) -> None:
            self.session, self.blind = session, True

        def get(self, model: Any, key: str) -> Any:
            if self.blind and key == "user:dev":
                self.blind = False
                return None
            return self.session.get(model, key)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    def racing(session: Any, keys: list[str], now: Any, limits: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            with db.engine.begin() as other:  # the other hub process, committed
                other.execute(LoginThrottle.__table__.insert().values(
                    key="user:dev", failures=1, window_start=now - timedelta(seconds=1)))
            return real(Blind(session), keys, now, limits)
        return real(session, keys, now, limits)

    monkeypatch.setattr(throttle, "record_failure", racing)
    resp = _sign_in(_client(local), "dev", "a wrong password!")
    assert resp.status_code == 403 and len(calls) == 2
    with local.app.app_context():
        assert db.session.get(LoginThrottle, "user:dev").failures == 2
        db.session.remove()
