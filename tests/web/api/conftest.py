"""An API client for the page-test site (:mod:`tests.web.pages`): every call is checked
against the OpenAPI document the app serves (status documented, body matches its schema)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask.testing import FlaskClient

from hub.db import db
from hub.services.tokens import issue_token
from tests.web.api.schema import check
from tests.web.pages import Site
from web.api import OPERATIONS, PREFIX

__all__ = ["Api", "api_for", "token_for"]

_names = itertools.count(1)


def token_for(site: Site, user: str, scopes: list[str], days: int = 30) -> str:
    """A new token of ``user`` (issued through the service, committed)."""
    with site.app.app_context():
        issued = issue_token(site.ctx(user), f"t{next(_names)}", scopes, days, max_days=90)
        secret = issued.secret
        db.session.commit()
    return secret


class Api:
    """Calls ``/api/v1`` with a bearer token (or none) and checks each answer."""

    def __init__(self, site: Site, token: str | None, client: FlaskClient | None = None) -> None:
        self.site, self.token = site, token
        self.client = client or site.app.test_client()
        self._doc: dict[str, Any] | None = None

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = self.site.app.test_client().get(f"{PREFIX}/openapi.json").get_json()
        return self._doc

    def template(self, method: str, path: str) -> str:
        adapter = self.site.app.url_map.bind("hub.test")
        endpoint, _args = adapter.match(PREFIX + path.split("?")[0], method=method)
        name = endpoint.split(".", 1)[1]
        return next(op.path for op in OPERATIONS if op.endpoint == name)

    def call(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = self.client.open(PREFIX + path, method=method, headers=headers, **kwargs)
        body = resp.get_json(silent=True)
        assert resp.status_code == status, (resp.status_code, body or resp.data[:300])
        assert resp.content_type.startswith("application/json")
        check(self.doc, self.template(method, path), method, status, body)
        return body

    def get(self, path: str, status: int = 200, **kw: Any) -> Any:
        return self.call("GET", path, status, **kw)

    def post(self, path: str, status: int = 200, **kw: Any) -> Any:
        return self.call("POST", path, status, **kw)


def api_for(site: Site, user: str, scopes: list[str]) -> Api:
    return Api(site, token_for(site, user, scopes))


@pytest.fixture
def api_site(site: Site) -> Site:
    return site
