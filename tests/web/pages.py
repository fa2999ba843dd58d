"""A populated hub + web app for page tests, driven by Flask's test client (no IdP).

Signing in is done the way :mod:`web.auth` does after a verified SAML login
(:func:`web.sessions.start_session`), through a test-only request context, so page tests
cost milliseconds; the real SAML login is covered by ``test_saml.py`` and the browser flow.

People (``PEOPLE``): global grants, ``role@env`` for a grant on one environment only.
Environments: ``test`` (1 approval) and ``prod`` (2 approvals). The hub's keys are created
in the data directory as ``tiangong hub init`` would.

Use::

    def test_x(site: Site) -> None:
        c = site.client("dev")
        page = c.get("/releases/")
        resp = site.post(c, "/releases/upload", {"file": ...})
"""

from __future__ import annotations

import atexit
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from agent.home import init_home
from hub.app import hub_config, hub_keys
from hub.db import db
from hub.keystore import create_trust
from hub.migrate import upgrade
from hub.services.context import ServiceContext
from hub.services.users import bootstrap_admin, get_user
from tests.hub.conftest import FakeClock, seed_people
from web.app import create_web_app
from web.sessions import start_session

__all__ = ["PEOPLE", "Site", "csrf_of", "make_site", "request_file", "site"]

#: user name -> grants (``role`` global, ``role@env`` for one environment)
PEOPLE: dict[str, tuple[str, ...]] = {
    "dev": ("developer",),
    "dev2": ("developer",),
    "appr1": ("approver",),
    "appr2": ("approver",),
    "appr-prod": ("approver@prod",),
    "op": ("operator",),
    "op-test": ("operator@test",),
    "aud": ("auditor",),
    "view": ("viewer",),
    "view-test": ("viewer@test",),
    "nobody": (),
}

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    m = _CSRF.search(html)
    assert m is not None, "no CSRF token on the page"
    return m.group(1)


@dataclass
class Site:
    app: Flask
    clock: FakeClock
    data_dir: Path

    def client(self, username: str | None) -> FlaskClient:
        """A test client signed in as ``username`` (None: not signed in)."""
        c = self.app.test_client()
        if username is None:
            return c
        with self.app.test_request_context("/"):
            user = get_user(db.session(), username)
            start_session(user, "saml")
            from flask import session

            saved = dict(session)
        with c.session_transaction() as sess:
            sess.update(saved)
        return c

    def token(self, c: FlaskClient) -> str:
        with c.session_transaction() as sess:
            tok = sess.get("_csrf")
        assert isinstance(tok, str), "the session has no CSRF token"
        return tok

    def post(self, c: FlaskClient, url: str, data: Mapping[str, Any] | None = None,
             **kwargs: Any) -> Any:
        """POST a form with the session's CSRF token added."""
        return c.post(url, data={**(data or {}), "csrf_token": self.token(c)}, **kwargs)

    def ctx(self, username: str | None = "admin") -> ServiceContext:
        """A service context (call inside ``with site.app.app_context():``)."""
        user = get_user(db.session(), username) if username is not None else None
        return ServiceContext(db.session(), self.clock, user, hub_keys(self.app),
                              hub_config(self.app).releases_dir)


def request_file(site: Site, tmp: Path, agent_id: str, environment: str | None = "test") -> Path:
    """A real signed enrollment request, as ``tiangong agent init`` writes it."""
    _, path = init_home(
        tmp / f"home-{agent_id}",
        root_file=site.data_dir / "root.json",
        agent_id=agent_id,
        environment=environment,
        now=int(site.clock().timestamp()),
    )
    return path


_TEMPLATE: Path | None = None  # see migrated_hub_db()


def migrated_hub_db(dest: Path) -> None:
    """Write at ``dest`` a copy of a SQLite hub database that :func:`hub.migrate.upgrade`
    brought to head once per test process (every Alembic revision costs about 0.1 s of CPU,
    paid by each of several hundred page tests otherwise); ``create_web_app`` then finds it
    current. The migrations themselves are tested in tests/hub/test_migrations.py."""
    global _TEMPLATE
    if _TEMPLATE is None:
        folder = Path(tempfile.mkdtemp(prefix="tiangong-web-db-"))
        atexit.register(shutil.rmtree, folder, True)
        upgrade(f"sqlite:///{folder / 'hub.db'}")
        _TEMPLATE = folder / "hub.db"
    src, dst = sqlite3.connect(_TEMPLATE), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@contextmanager
def make_site(tmp_path: Path, **web: Any) -> Iterator[Site]:
    """A populated site whose ``[web]`` table has ``web`` on top of plain-http cookies."""
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    migrated_hub_db(data_dir / "hub.db")
    clock = FakeClock()
    create_trust(data_dir, int(clock().timestamp()), hub_id="hub-web",
                 insecure_no_passphrase=True)
    app = create_web_app(
        {"data_dir": data_dir, "secret_key": "test-secret-key-not-for-production"},
        {"web": {"secure_cookies": False, **web}},
        clock=clock,
    )
    app.config["TESTING"] = True
    s = Site(app, clock, data_dir)
    with app.app_context():
        bootstrap_admin(db.session(), clock, "admin")
        seed_people(s.ctx("admin"), PEOPLE)
        db.session.commit()
    yield s
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with make_site(tmp_path) as s:
        yield s
