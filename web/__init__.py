"""Tiangong's web UI: Flask blueprints on top of the hub services (views translate,
services decide).

:func:`init_app` adds the UI to an app made by :func:`hub.app.create_app`: settings, CSRF,
sessions, the SAML SP and the blueprints. :func:`web.app.create_web_app` does both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, redirect, url_for
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from hub.db import db
from hub.errors import ConfigError
from hub.services.context import Clock, utc_now
from web.config import WebConfig
from web.replay import ReplayCache

__all__ = ["NAV", "WebState", "init_app", "listens_beyond_loopback", "nav_for"]

#: The page blueprints, one module each (``web/<name>.py`` with templates in
#: ``templates/<name>/``), in the order of the navigation bar.
PAGES = ("home", "releases", "channels", "environments", "windows", "agents", "deployments",
         "rollouts", "media", "audit", "admin", "tokens", "approvals", "secrets",
         "notifications", "jobs")
#: Navigation: (blueprint, label) for each page but home.
NAV = (("releases", "Releases"), ("channels", "Channels"), ("environments", "Environments"),
       ("windows", "Windows"), ("agents", "Agents"), ("deployments", "Deployments"),
       ("rollouts", "Fleet"), ("jobs", "Jobs"), ("media", "Media"), ("audit", "Audit"),
       ("admin", "Admin"), ("tokens", "API tokens"))
#: The action a page's index needs, for the pages some signed-in people may not open (the
#: others list only what one may view, possibly nothing).
NAV_NEEDS = {"releases": "view", "channels": "view", "audit": "audit.read",
             "admin": "user.manage", "jobs": "view"}


def nav_for(user: Any) -> list[tuple[str, str]]:
    """The navigation items ``user`` can open (the services still decide on each request;
    this only hides links that would answer 403). Releases need any grant at all."""
    from hub.services.releases import can_read
    from hub.services.users import can

    def may(name: str) -> bool:
        need = NAV_NEEDS.get(name)
        if need is None:
            return True
        return can_read(user) if name in ("releases", "channels") else can(user, need)

    return [(name, label) for name, label in NAV if may(name)]


@dataclass(frozen=True)
class WebState:
    """What the views need, kept in ``app.extensions["tiangong_web"]``."""

    config: WebConfig
    clock: Clock
    saml_settings: OneLogin_Saml2_Settings | None
    replay: ReplayCache | None


def init_app(app: Flask, config: WebConfig, clock: Clock = utc_now) -> None:
    """Register the web UI on ``app``.

    Raises:
        ConfigError: no secret key, unusable IdP metadata or SAML settings, local password
            sign-in on a hub listening beyond loopback (``hub serve`` has no TLS of its own).
    """
    from hub.app import hub_config
    from web import auth, csrf, sessions, views
    from web.saml import build_settings

    if not app.secret_key:
        raise ConfigError("the web UI needs secret_key (TIANGONG_HUB_SECRET_KEY)")
    bind = hub_config(app).bind
    if config.local_login and listens_beyond_loopback(bind):
        raise ConfigError(
            f"[web] local_login = true, but the hub listens on {bind}, beyond loopback, "
            "without TLS: passwords would cross the network in clear. Bind to 127.0.0.1 "
            "behind a TLS-terminating proxy on this machine, or use SAML (docs/web-login.md)"
        )
    settings = replay = None
    if config.saml is not None:
        settings = build_settings(config.saml)
        with app.app_context():
            replay = ReplayCache(db.engine)
    app.extensions["tiangong_web"] = WebState(config, clock, settings, replay)
    sessions.init_app(app, config, clock)
    csrf.init_app(app)
    assets = Blueprint(
        "assets", __name__, static_folder="static", static_url_path="/assets",
        template_folder="templates",
    )  # fmt: skip
    app.register_blueprint(assets)

    @app.get("/favicon.ico")
    def _favicon() -> Any:
        # Browsers ask for /favicon.ico on their own; answer with the page icon, not a 404.
        return redirect(url_for("assets.static", filename="favicon.svg"), code=301)

    app.register_blueprint(auth.bp)
    for name in PAGES:
        app.register_blueprint(importlib.import_module(f"web.{name}").bp)
    views.init_app(app)
    from web import api

    app.register_blueprint(api.bp)  # /api/v1: personal tokens only (web/api/__init__.py)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {
            "break_glass_enabled": config.break_glass.enabled,
            "local_login_enabled": config.local_login,
            "saml_enabled": settings is not None,
            "nav_pages": nav_for(sessions.current_hub_user()),
        }

    # The logout form's POST is answered by a redirect to the IdP: allow that origin too.
    idp_origins = sorted(_idp_origins(settings)) if settings is not None else []
    form_action = " ".join(["'self'", *idp_origins])
    csp = (f"default-src 'self'; base-uri 'none'; object-src 'none'; "
           f"form-action {form_action}; frame-ancestors 'none'")

    @app.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("Content-Security-Policy", csp)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        return resp


def listens_beyond_loopback(bind: str) -> bool:
    """Whether a gunicorn ``bind`` (``HOST:PORT``, ``[::1]:PORT``, ``unix:PATH``) accepts
    connections from other machines."""
    from bundle.sync import is_loopback

    if bind.startswith("unix:"):
        return False
    host = bind.strip().rpartition(":")[0].strip("[]")
    return not is_loopback(host)


def _idp_origins(settings: OneLogin_Saml2_Settings) -> set[str]:
    origins = set()
    for url in (settings.get_idp_sso_url(), settings.get_idp_slo_url()):
        if url:
            parts = urlsplit(url)
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return origins
