"""Browser sessions kept in the hub database, with idle and absolute timeouts.

:func:`start_session` is called once a login has been verified (SAML, a local password or
break-glass): it clears whatever the cookie held, draws a random session token, stores its
SHA-256 in table ``web_sessions`` (migration 0003) with the login time, the last request's
time and the absolute end, logs the user in and renews the CSRF token. The cookie (Flask's
signed cookie) carries the token, never the session's state.

Every request looks the token up (:func:`_load_session`, a ``before_request`` hook ahead of
everything that reads the signed-in user): no row, a row of another user, an inactive user,
more than ``web.idle_timeout_s`` since the last request or past the absolute end
(``web.absolute_timeout_s`` after login) — the request is anonymous, and an expired row is
deleted. Otherwise the request's time becomes the row's ``last_seen_at`` (written only when it is
:func:`_touch_step_s` old, so a busy page costs reads, not commits); the absolute end
never moves, so a stolen cookie is worth nothing after it, however busy it is kept.

Ending a session deletes its row, so a copy of the cookie is refused from the next request
on, in every hub process: :func:`end_session` (sign-out), and
:func:`hub.services.users.end_sessions` (deactivation, an admin's "sign out everywhere",
a new password). Expired rows of anyone are purged at each login.

Cookies: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` unless ``web.secure_cookies = false``
(plain-http loopback only); no "remember me" cookie. Times come from the injected clock.

This module does not authenticate anyone (:mod:`web.auth` does).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, flash, g, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import delete, or_

from hub.db import User, WebSession, db
from hub.services.context import Clock
from web import csrf
from web.config import WebConfig

__all__ = ["WebUser", "current_hub_user", "end_session", "init_app", "start_session"]

SID_KEY = "_tg_sid"  # the cookie key holding the session token
METHOD = "_tg_auth"
COOKIE_NAME = "tiangong_session"
TOKEN_BYTES = 32  # random bytes per session token
#: At most this stale before a request writes a session's last_seen_at (_touch_step_s).
MAX_TOUCH_STEP_S = 30.0  # seconds
_EXPIRED = object()


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


def _state() -> Any:
    from flask import current_app

    return current_app.extensions["tiangong_web"]


def _now() -> datetime:
    now: datetime = _state().clock()
    return now


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start_session(user: User, method: str, **extra: Any) -> None:
    """Log ``user`` in after a verified login (``method``: ``saml``, ``local`` or
    ``break_glass``): a new server-side session, committed at once."""
    cfg: WebConfig = _state().config
    now = _now()
    old = session.get(SID_KEY)
    if isinstance(old, str):
        db.session.execute(delete(WebSession).where(WebSession.id == _digest(old)))
    _purge(now, cfg)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = WebSession(
        id=_digest(token), user_id=user.id, method=method, created_at=now, last_seen_at=now,
        expires_at=now + timedelta(seconds=cfg.absolute_timeout_s),
    )  # fmt: skip
    db.session.add(row)
    db.session.commit()
    session.clear()
    session.permanent = True
    session[SID_KEY] = token
    session[METHOD] = method
    for key, value in extra.items():
        session[f"_tg_{key}"] = value
    g.tg_user_id = user.id
    login_user(WebUser(user), remember=False, fresh=True)
    csrf.rotate_token()


def _purge(now: datetime, cfg: WebConfig) -> None:
    idle_before = now - timedelta(seconds=cfg.idle_timeout_s)
    db.session.execute(
        delete(WebSession).where(
            or_(WebSession.expires_at <= now, WebSession.last_seen_at < idle_before)
        )
    )


def end_session() -> None:
    """Sign out: delete the server-side session, forget everything the cookie held, and
    start a fresh CSRF token."""
    token = session.get(SID_KEY)
    if isinstance(token, str):
        db.session.execute(delete(WebSession).where(WebSession.id == _digest(token)))
        db.session.commit()
    g.tg_user_id = None
    logout_user()
    session.clear()
    csrf.rotate_token()


def _lookup() -> WebSession | object | None:
    """The valid session row of this request's cookie; :data:`_EXPIRED` when it timed out
    (the row is deleted), None when there is none."""
    token = session.get(SID_KEY)
    if not isinstance(token, str):
        return None
    row = db.session.get(WebSession, _digest(token))
    if row is None:
        return None
    cfg: WebConfig = _state().config
    now = _now()
    if now >= row.expires_at or (now - row.last_seen_at).total_seconds() > cfg.idle_timeout_s:
        db.session.delete(row)
        db.session.commit()
        return _EXPIRED
    if (now - row.last_seen_at).total_seconds() >= _touch_step_s(cfg):
        row.last_seen_at = now
        db.session.commit()
    return row


def _touch_step_s(cfg: WebConfig) -> float:
    """How stale ``last_seen_at`` may get before a request writes it: a tenth of the idle
    timeout, at most :data:`MAX_TOUCH_STEP_S`. A burst of page loads (and their assets) then
    costs reads, not one commit each; the idle limit can only end early by this much, never
    late."""
    return min(MAX_TOUCH_STEP_S, cfg.idle_timeout_s / 10)


def _load_session() -> None:
    """``before_request``: find the session row; a cookie without a valid one is cleared."""
    found = _lookup()
    g.tg_user_id = found.user_id if isinstance(found, WebSession) else None
    if g.tg_user_id is None and (SID_KEY in session or "_user_id" in session):
        logout_user()
        session.clear()
        csrf.rotate_token()
        if found is _EXPIRED:
            flash("Your session has expired; please sign in again.", "info")


def init_app(app: Flask, cfg: WebConfig, clock: Clock) -> None:
    """Configure cookies and flask-login, and install the session check."""
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
    manager.session_protection = None  # sessions end on the server, not by IP/UA heuristics
    manager.init_app(app)

    def load_user(user_id: str) -> WebUser | None:
        owner: int | None = getattr(g, "tg_user_id", None)
        if owner is None or str(owner) != user_id:
            return None
        user = db.session.get(User, owner)
        if user is None or not user.is_active:
            return None
        return WebUser(user)

    manager.user_loader(load_user)
    app.before_request(_load_session)
