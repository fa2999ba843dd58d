"""CSRF protection for every state-changing request: one random token per session.

Every form carries ``<input type="hidden" name="csrf_token" value="{{ csrf_token() }}">``
(or a script sends the ``X-CSRF-Token`` header); :func:`init_app` installs a
``before_request`` check refusing any POST, PUT, PATCH or DELETE whose token is missing or
differs from the session's with **400**. The token is renewed at login and logout
(:func:`rotate_token`).

Views marked with :func:`exempt` skip the check: only the SAML ACS, which is protected by
the IdP's signature and by ``InResponseTo`` against the login this browser started. Paths
under ``/api/`` skip it too: the HTTP API (:mod:`web.api`) is authenticated by bearer
tokens only, never by the session cookie, so a forged cross-site request carries nothing
it would accept.

This module does not check ``Origin``/``Referer`` and does not protect GET requests (views
must not change state on GET).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, abort, current_app, request, session

__all__ = ["FIELD", "HEADER", "csrf_token", "exempt", "init_app", "rotate_token"]

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SESSION_KEY = "_csrf"
TOKEN_BYTES = 32  # random bytes per token
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_EXEMPT_ATTR = "_tiangong_csrf_exempt"

F = TypeVar("F", bound=Callable[..., Any])


def csrf_token() -> str:
    """The session's token, created on first use (templates call this)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session[SESSION_KEY] = token
    return token


def rotate_token() -> str:
    """A fresh token (after login and logout)."""
    session.pop(SESSION_KEY, None)
    return csrf_token()


def exempt(view: F) -> F:
    """Mark a view as not needing a CSRF token (only for signed protocol endpoints)."""
    setattr(view, _EXEMPT_ATTR, True)
    return view


def _check() -> None:
    if request.method in _SAFE or request.path.startswith("/api/"):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and getattr(view, _EXEMPT_ATTR, False):
        return
    expected = session.get(SESSION_KEY)
    given = request.form.get(FIELD) or request.headers.get(HEADER) or ""
    if (
        not isinstance(expected, str)
        or not expected
        or not hmac.compare_digest(expected.encode(), given.encode())
    ):
        abort(400, description="The form's CSRF token is missing or invalid; reload the page.")


def init_app(app: Flask) -> None:
    """Install the check and the ``csrf_token()`` template global."""
    app.before_request(_check)
    app.jinja_env.globals["csrf_token"] = csrf_token
