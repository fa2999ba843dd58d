"""Browser sessions: flask-login on Flask's signed cookie, with idle and absolute timeouts.

:func:`start_session` is called once a login has been verified (SAML or break-glass): it
clears whatever the session held, logs the user in, stamps the login time and renews the
CSRF token. A ``before_request`` hook ends the session when it has been idle longer than
``web.idle_timeout_s`` or is older than ``web.absolute_timeout_s`` (times from the injected
clock), and every request reloads the user from the database, so a deactivated user is
logged out at their next request.

Cookies: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` unless ``web.secure_cookies = false``
(plain-http loopback tests only); no "remember me" cookie.

This module does not authenticate anyone (:mod:`web.auth` does) and keeps no server-side
session store: ending a session clears the cookie, and the absolute timeout bounds what a
stolen cookie is worth.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, flash, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from hub.db import User, db
from hub.services.context import Clock
from web import csrf
from web.config import WebConfig

__all__ = ["WebUser", "current_hub_user", "end_session", "init_app", "start_session"]

LOGIN_AT = "_tg_login_at"
SEEN_AT = "_tg_seen_at"
METHOD = "_tg_auth"
COOKIE_NAME = "tiangong_session"


class WebUser(UserMixin):  # type: ignore[misc]
    """flask-login's view of a hub user (``.user`` is the :class:`hub.db.User`)."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.id = str(user.id)

    @property
    def is_active(self) -> bool:
        return bool(self.user.is_active)


def current_hub_user() -> User | None:
    """The logged-in hub user of this request, or None."""
    if current_user.is_authenticated:
        user: User = current_user.user
        return user
    return None


def _state(app: Flask | None = None) -> Any:
    from flask import current_app

    return (app or current_app).extensions["tiangong_web"]


def start_session(user: User, method: str, **extra: Any) -> None:
    """Log ``user`` in after a verified login (``method``: ``saml`` or ``break_glass``)."""
    now = _state().clock().timestamp()
    session.clear()
    session.permanent = True
    login_user(WebUser(user), remember=False, fresh=True)
    session[LOGIN_AT] = now
    session[SEEN_AT] = now
    session[METHOD] = method
    for key, value in extra.items():
        session[f"_tg_{key}"] = value
    csrf.rotate_token()


def end_session() -> None:
    """Log out and forget everything the session held (then a fresh CSRF token)."""
    logout_user()
    session.clear()
    csrf.rotate_token()


def _enforce_timeouts() -> None:
    if not current_user.is_authenticated:
        return
    cfg: WebConfig = _state().config
    now = _state().clock().timestamp()
    login_at, seen_at = session.get(LOGIN_AT), session.get(SEEN_AT)
    if not isinstance(login_at, int | float) or not isinstance(seen_at, int | float):
        end_session()
        return
    if now - login_at > cfg.absolute_timeout_s or now - seen_at > cfg.idle_timeout_s:
        end_session()
        flash("Your session has expired; please sign in again.", "info")
        return
    session[SEEN_AT] = now


def init_app(app: Flask, cfg: WebConfig, clock: Clock) -> None:
    """Configure cookies and flask-login, and install the timeout check."""
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=cfg.secure_cookies,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=cfg.absolute_timeout_s),
        REMEMBER_COOKIE_SECURE=cfg.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
    )
    manager = LoginManager()
    manager.login_view = "auth.login"
    manager.session_protection = None  # sessions end by timeouts, not by IP/UA heuristics
    manager.init_app(app)

    def load_user(user_id: str) -> WebUser | None:
        try:
            user = db.session.get(User, int(user_id))
        except ValueError:
            return None
        if user is None or not user.is_active:
            return None
        return WebUser(user)

    manager.user_loader(load_user)
    app.before_request(_enforce_timeouts)
