"""What every page blueprint shares: the signed-in user, a service context for the request,
``login_required``, and one translation of domain errors into HTTP answers.

Views translate, services decide (STYLE.md): a view reads the form, calls a service with
:func:`ctx`, and renders. Permission checks live in the services (``users.require``); a
:class:`~hub.errors.PermissionDeniedError` raised there becomes a 403 page here, a
:class:`~hub.errors.NotFoundError` a 404, a conflict or invalid state a 409, bad input a 400.
Views may call :func:`hub.services.users.can` to hide buttons, never to protect anything.

**Scope.** An object outside the signed-in user's scope (a deployment, agent or
environment they may not view, a release for someone with no grant, an export of an
environment they may not export) answers exactly like an object that does not exist: the
same 404 and the same words (:func:`in_scope`, :func:`visible_environment`). A 403 is
only ever given about an object the user can see (a viewer asking to revoke an agent they
can open), so refusals do not tell which objects exist.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Flask, current_app, redirect, render_template, request

from hub.app import hub_config, hub_keys
from hub.db import Environment, User, db
from hub.errors import (
    ConflictError,
    HubError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import can, require
from web.sessions import current_hub_user

__all__ = [
    "ctx",
    "in_scope",
    "init_app",
    "login_required",
    "signed_in_user",
    "status_for",
    "visible_environment",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def in_scope(absent: str, lookup: Callable[[], T], visible: Callable[[T], bool]) -> T:
    """``lookup()`` if it exists and ``visible`` says the user may see it.

    Raises:
        NotFoundError: with the message ``absent`` whether the object does not exist or is
            outside the user's scope (the two must not be told apart).
    """
    try:
        found = lookup()
    except NotFoundError:
        raise NotFoundError(absent) from None
    if not visible(found):
        raise NotFoundError(absent)
    return found


def visible_environment(name: str, action: str = "view") -> Environment:
    """The environment ``name`` if the signed-in user may view it, and then only if they
    may do ``action`` there.

    Raises:
        NotFoundError: no such environment, or one the user may not view (same words).
        PermissionDeniedError: the user sees the environment but may not do ``action``.
    """
    sc = ctx()
    env = in_scope(f"environment {name[:64]!r} does not exist",
                   lambda: get_environment(sc.session, name),
                   lambda e: can(sc.actor, "view", e))
    if action != "view":
        require(sc.actor, action, env)
    return env


def signed_in_user() -> User:
    """The signed-in user; only call inside a :func:`login_required` view."""
    user = current_hub_user()
    if user is None:  # pragma: no cover - login_required runs first
        raise PermissionDeniedError("not signed in")
    return user


def ctx() -> ServiceContext:
    """A service context acting as the signed-in user, with the web UI's clock."""
    cfg = hub_config()
    clock = current_app.extensions["tiangong_web"].clock
    return ServiceContext(db.session(), clock, current_hub_user(), hub_keys(), cfg.releases_dir)


def login_required(view: F) -> F:
    """Send a visitor who is not signed in to the sign-in page, then back here."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_hub_user() is None:
            target = request.full_path if request.query_string else request.path
            return redirect(f"/login?next={quote(target, safe='/')}")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def status_for(exc: HubError) -> int:
    """The HTTP status a domain error maps to."""
    if isinstance(exc, PermissionDeniedError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | InvalidStateError | SeparationOfDutiesError):
        return 409
    if isinstance(exc, ValidationError):
        return 400
    return 500


_TITLES = {400: "Not accepted", 403: "Not allowed", 404: "Not found", 409: "Not possible now",
           500: "Something went wrong"}


def init_app(app: Flask) -> None:
    """Register the error pages for domain errors (and plain 403/404)."""

    @app.errorhandler(HubError)
    def _hub_error(exc: HubError) -> Any:
        db.session.rollback()
        if exc.audit is not None:  # a refusal the audit log keeps (hub.errors)
            from hub.services.audit import record_refusal

            record_refusal(ctx(), exc)
            db.session.commit()
        status = status_for(exc)
        if status == 500:
            current_app.logger.error("unhandled hub error: %s", exc)
        return render_template("errors/error.html", status=status, title=_TITLES[status],
                               message=str(exc)), status

    for code in (403, 404, 405):
        @app.errorhandler(code)
        def _http_error(exc: Any, code: int = code) -> Any:
            if request.path.startswith("/api/"):  # the HTTP API answers JSON (web/api)
                from web.api import error_response

                return error_response(code, getattr(exc, "description", "") or "")
            if code == 405:
                return exc
            return render_template("errors/error.html", status=code, title=_TITLES[code],
                                   message=getattr(exc, "description", "")), code
