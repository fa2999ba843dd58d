"""Fixtures for the web UI's tests: the hub + web app served by a real WSGI server on the
port the SAML IdP fixture trusts, a fresh app (and database) per test, and an HTTP client
that logs in through the real SimpleSAMLphp IdP like a browser without JavaScript."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from hub.services.context import Clock, utc_now
from tests.fixtures.saml_idp import SamlIdP
from tests.web.pages import site  # noqa: F401 - the page tests' fixture
from web.app import create_web_app

HTTP_TIMEOUT_S = 10.0  # seconds per HTTP call in these tests
GROUP_ROLES = {
    "developers": ["developer"],
    "approvers": ["approver"],
    "operators": ["operator"],
}


class SwitchableApp:
    """A WSGI app forwarding to whichever Flask app the current test installed."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app installed by the test\n"]
        return self.app(environ, start_response)


@dataclass
class HubServer:
    base_url: str
    switch: SwitchableApp
    server: BaseWSGIServer


@pytest.fixture(scope="session")
def hub_server(saml_idp: SamlIdP, saml_sp_port: int) -> Iterator[HubServer]:
    """One loopback WSGI server on the SP port for the session; tests swap the app."""
    switch = SwitchableApp()
    server = make_server("127.0.0.1", saml_sp_port, switch, threaded=False)
    thread = threading.Thread(target=server.serve_forever, name="hub-wsgi", daemon=True)
    thread.start()
    try:
        yield HubServer(saml_idp.sp_base_url, switch, server)
    finally:
        server.shutdown()
        thread.join(timeout=HTTP_TIMEOUT_S)
        server.server_close()


def web_settings(idp: SamlIdP, **web: Any) -> dict[str, Any]:
    return {
        "web": {"secure_cookies": False, **web},
        "saml": {
            "sp_base_url": idp.sp_base_url,
            "idp_metadata_file": str(idp.metadata_file),
            "group_roles": GROUP_ROLES,
        },
    }


@pytest.fixture
def make_web_app(
    hub_server: HubServer, saml_idp: SamlIdP, tmp_path: Path
) -> Iterator[Callable[..., Flask]]:
    """Build a fresh app (its own data dir and SQLite database) and serve it."""

    data_dir = tmp_path / "hub"
    data_dir.mkdir()

    def make(clock: Clock = utc_now, **web: Any) -> Flask:
        app = create_web_app(
            {"data_dir": data_dir, "secret_key": "test-secret-key-not-for-production"},
            web_settings(saml_idp, **web),
            clock=clock,
        )
        hub_server.switch.app = app
        return app

    yield make
    hub_server.switch.app = None


@pytest.fixture
def web_app(make_web_app: Callable[..., Flask]) -> Flask:
    return make_web_app()


@pytest.fixture
def browser() -> Iterator[requests.Session]:
    """A cookie-keeping HTTP client (a browser without JavaScript)."""
    with requests.Session() as http:
        yield http


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def forms(html: str) -> list[dict[str, Any]]:
    """The forms of a page: ``[{"action": ..., "fields": {name: value}}]``."""
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def form_with(html: str, field: str) -> dict[str, Any] | None:
    return next((f for f in forms(html) if field in f["fields"]), None)


@dataclass
class IdPAnswer:
    """What the IdP sent back after the password: the auto-posting form, if any."""

    page: requests.Response
    acs_url: str | None
    fields: dict[str, str]


def idp_login(
    http: requests.Session, sp_base_url: str, username: str, password: str, next_url: str = ""
) -> IdPAnswer:
    """GET SP /login, follow to the IdP's login page, post the password; do not post to
    the ACS yet."""
    params = {"next": next_url} if next_url else {}
    page = http.get(f"{sp_base_url}/login", params=params, timeout=HTTP_TIMEOUT_S)
    assert page.status_code == 200, page.text[:500]
    login_form = form_with(page.text, "AuthState")
    assert login_form is not None, f"no IdP login form at {page.url}: {page.text[:500]}"
    answer = http.post(
        page.url,
        data={
            "AuthState": login_form["fields"]["AuthState"],
            "username": username,
            "password": password,
        },
        timeout=HTTP_TIMEOUT_S,
    )
    saml_form = form_with(answer.text, "SAMLResponse")
    if saml_form is None:
        return IdPAnswer(answer, None, {})
    return IdPAnswer(answer, saml_form["action"], dict(saml_form["fields"]))


def post_acs(http: requests.Session, answer: IdPAnswer, **override: str) -> requests.Response:
    assert answer.acs_url is not None
    return http.post(
        answer.acs_url,
        data={**answer.fields, **override},
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
