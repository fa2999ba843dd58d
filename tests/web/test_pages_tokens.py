"""The "API tokens" page: issue (secret shown once, never stored), list, revoke by the
owner or an admin; a refused form changes nothing; the API stops accepting a revoked
token at once."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from hub.db import ApiToken, db
from tests.web.api.conftest import Api
from tests.web.pages import Site, make_site

_SECRET = re.compile(r'<code id="token-secret">(tgp_[0-9a-f]{10}_[A-Za-z0-9_-]+)</code>')


def _tokens(site: Site) -> list[tuple[str, str, str | None]]:
    with site.app.app_context():
        return [(t.user.username, t.name, t.revoked_by)
                for t in db.session.scalars(select(ApiToken).order_by(ApiToken.id))]


def _issue(site: Site, who: str, name: str, scopes: list[str], days: str = "7") -> tuple[
        int, str]:
    c = site.client(who)
    resp = site.post(c, "/tokens/", {"name": name, "scope": scopes, "days": days})
    return resp.status_code, resp.get_data(as_text=True)


def test_issue_shows_the_secret_once_and_the_api_accepts_it(site: Site) -> None:
    status, page = _issue(site, "dev", "ci-hello", ["read", "releases:write"])
    assert status == 201
    match = _SECRET.search(page)
    assert match is not None
    secret = match.group(1)
    assert "shown only this once" in page
    with site.app.app_context():
        token = db.session.scalar(select(ApiToken))
        assert token is not None and token.token_hash != secret
        assert token.scopes == ["read", "releases:write"]
        assert token.expires_at == site.clock() + timedelta(days=7)
    listing = site.client("dev").get("/tokens/").get_data(as_text=True)
    assert secret not in listing and secret.split("_", 2)[0] + "_" in listing
    assert Api(site, secret).get("/me")["token"]["name"] == "ci-hello"


def test_refused_forms_say_why_and_issue_nothing(tmp_path: Path) -> None:
    with make_site(tmp_path, api_token_max_days=10) as site:
        for form, words in (
            ({"name": "x", "scope": ["read"], "days": "11"},
             "expiry must be 1-10 days (hub.toml [web] api_token_max_days), not 11"),
            ({"name": "x", "scope": [], "days": "1"}, "at least one scope"),
            ({"name": "", "scope": ["read"], "days": "1"}, "name must be 1-100"),
            ({"name": "x", "scope": ["read"], "days": "soon"}, "whole number of days"),
        ):
            c = site.client("dev")
            resp = site.post(c, "/tokens/", form)
            assert resp.status_code == 400
            assert words in resp.get_data(as_text=True)
            with site.app.app_context():
                assert db.session.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_owner_and_admin_revoke_and_the_api_refuses_at_once(site: Site) -> None:
    _, page = _issue(site, "dev", "mine", ["read"])
    match = _SECRET.search(page)
    assert match is not None
    secret = match.group(1)
    _issue(site, "op", "ops", ["deploy"])
    api = Api(site, secret)
    api.get("/me")
    # An admin sees everyone's tokens; dev sees only their own.
    admin_page = site.client("admin").get("/tokens/").get_data(as_text=True)
    assert 'id="all-tokens"' in admin_page and ">mine<" in admin_page and ">ops<" in admin_page
    dev_page = site.client("dev").get("/tokens/").get_data(as_text=True)
    assert 'id="all-tokens"' not in dev_page and ">ops<" not in dev_page
    with site.app.app_context():
        ids = {t.name: t.id for t in db.session.scalars(select(ApiToken))}
    # Someone else's token is answered as one that does not exist, and stays.
    c = site.client("dev2")
    assert site.post(c, f"/tokens/{ids['mine']}/revoke").status_code == 404
    assert _tokens(site) == [("dev", "mine", None), ("op", "ops", None)]
    c = site.client("dev")
    resp = site.post(c, f"/tokens/{ids['mine']}/revoke")
    assert resp.status_code == 302
    c = site.client("admin")
    assert site.post(c, f"/tokens/{ids['ops']}/revoke").status_code == 302
    assert _tokens(site) == [("dev", "mine", "dev"), ("op", "ops", "admin")]
    refused = api.get("/me", 401)
    assert "was revoked at" in refused["message"]
