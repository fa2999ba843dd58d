"""Tiangong's HTTP API (``/api/v1``): JSON over HTTP for CI systems and ``tiangong remote``,
authenticated by personal API tokens only (:mod:`hub.services.tokens`).

**Who is calling.** Every operation but ``GET /api/v1/openapi.json`` needs
``Authorization: Bearer tgp_…``. Browser session cookies authenticate nothing here: the
API never asks flask-login who is signed in, so a page of another site that makes a
signed-in browser send a request to the API gets a 401 (the reason CSRF tokens do not
apply to the API, and its views are CSRF-exempt). A token must carry the operation's scope
(:func:`hub.services.tokens.require_scope`, checked before any service runs) and the
person's roles must allow the action (the services check, exactly as for the web UI:
:mod:`hub.services.context`). Objects outside the person's scope answer 404 like objects
that do not exist (as in :mod:`web.views`).

**Audit.** Every call made with a token the hub knows writes one ``api.call`` event (actor:
the token's owner; details: token id and prefix, method, path, HTTP status), in the same
transaction as what the call changed; the services' own events carry
``"via": "api-token:<prefix>"``. A refused token the hub knows (wrong secret, revoked,
expired, owner deactivated) writes ``api.refused``. A token the hub does not know has no
owner to name: it is logged (prefix only), not audited, so that nobody can fill the audit
log anonymously.

**Errors** are JSON ``{"error": CODE, "message": TEXT}`` with the status of
:func:`web.views.status_for` (401 ``unauthorized``, 403 ``forbidden`` /
``insufficient_scope``, 404, 409, 400, 413 ``too_large``; 500 ``internal`` for a failure
of the hub itself, whose traceback goes to the log, never to the caller).

**One source of truth.** Each view is registered with :func:`operation`, which records its
method, path, scope, parameters and response schemas in :data:`OPERATIONS`; the OpenAPI 3.1
document (:mod:`web.api.openapi`, served at ``/api/v1/openapi.json``) is built from that
list, and ``tests/web/api`` checks that routes and document agree and that responses match
their schemas.

This package does not decide anything a service decides, and serves no HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hub.app import hub_config, hub_keys
from hub.db import ApiToken, User, db
from hub.errors import HubError, PermissionDeniedError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.tokens import (
    InsufficientScopeError,
    TokenRefusedError,
    authenticate,
    require_scope,
)
from web import csrf

__all__ = [
    "OPERATIONS",
    "PREFIX",
    "ApiError",
    "Operation",
    "Param",
    "api_ctx",
    "bp",
    "error_response",
    "operation",
]

PREFIX = "/api/v1"
#: Longest request path written into an audit event.
MAX_AUDITED_PATH_CHARS = 300  # characters

bp = Blueprint("api", __name__, url_prefix=PREFIX)


class ApiError(Exception):
    """An answer other than success, raised by a view: ``status``, ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Param:
    """A path or query parameter of an operation."""

    name: str
    where: str  # path | query
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = True


@dataclass(frozen=True)
class Operation:
    """One API operation as the OpenAPI document describes it."""

    endpoint: str
    method: str
    rule: str  # Flask rule under PREFIX
    scope: str | None  # None: no token needed
    summary: str
    description: str
    responses: dict[int, str]  # status -> schema name in web.api.openapi.SCHEMAS
    params: tuple[Param, ...] = ()
    body: str | None = None  # schema name, or "multipart:<field>" for an upload

    @property
    def path(self) -> str:
        """The OpenAPI path (``/releases/{product}``) of :attr:`rule`."""
        out = []
        for part in self.rule.split("/"):
            if part.startswith("<") and part.endswith(">"):
                part = "{" + part[1:-1].split(":")[-1] + "}"
            out.append(part)
        return PREFIX + "/".join(out)


#: Every operation of the API, in the order registered (the OpenAPI document's order).
OPERATIONS: list[Operation] = []

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "too_large", 500: "internal"}


def _error(status: int, code: str, message: str) -> Response:
    resp = jsonify(error=code, message=message)
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="tiangong"'
    return resp


def error_response(status: int, message: str) -> Response:
    """The API's JSON answer for an HTTP error raised outside its views (no such route:
    404, a method the route does not take: 405)."""
    return _error(status, _CODES.get(status, "error"),
                  message or f"no such API operation: {request.method} {request.path}")


def _clock_now() -> Any:
    return current_app.extensions["tiangong_web"].clock()


def api_ctx() -> ServiceContext:
    """A service context acting as the token's owner (inside an :func:`operation` view)."""
    cfg = hub_config()
    token: ApiToken = g.api_token
    return ServiceContext(db.session(), current_app.extensions["tiangong_web"].clock,
                          g.api_user, hub_keys(), cfg.releases_dir,
                          via=f"api-token:{token.prefix}")


def _audit_call(action: str, user: User, token: ApiToken, status: int,
                extra: dict[str, Any] | None = None) -> None:
    sc = ServiceContext(db.session(), current_app.extensions["tiangong_web"].clock, user,
                        hub_keys(), hub_config().releases_dir)
    audit.record(sc, action, "api_token", token.prefix, {
        "token_id": token.id, "method": request.method,
        "path": request.path[:MAX_AUDITED_PATH_CHARS], "status": status, **(extra or {})})


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _sep, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "unauthorized",
                       "send a personal API token: Authorization: Bearer tgp_… (docs/api.md); "
                       "the API does not accept browser sessions")
    return value.strip()


def _run(view: Callable[..., Any], scope: str, kwargs: dict[str, Any]) -> Response:
    """Authenticate, check the scope, run the view, audit, commit (see the module doc)."""
    try:
        presented = _bearer()
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    try:
        token, user = authenticate(db.session(), _clock_now(), presented)
    except TokenRefusedError as exc:
        db.session.rollback()
        if exc.token is not None:
            _audit_call("api.refused", exc.token.user, exc.token, 401, {"reason": str(exc)})
            db.session.commit()
        else:
            current_app.logger.warning("API call with a refused token: %s", exc)
        return _error(401, "unauthorized", str(exc))
    g.api_token, g.api_user = token, user
    try:
        require_scope(token, scope)
        result = view(**kwargs)
        payload, status = result if isinstance(result, tuple) else (result, 200)
        resp = jsonify(payload)
        resp.status_code = status
    except ApiError as exc:
        db.session.rollback()
        resp = _error(exc.status, exc.code, exc.message)
    except PermissionDeniedError as exc:
        db.session.rollback()
        code = "insufficient_scope" if isinstance(exc, InsufficientScopeError) else "forbidden"
        resp = _error(403, code, str(exc))
    except HubError as exc:
        db.session.rollback()
        if exc.audit is not None:  # a refusal the audit log keeps (hub.errors)
            from hub.services.audit import record_refusal

            record_refusal(api_ctx(), exc)
        from web.views import status_for

        status = status_for(exc)
        if status == 500:
            current_app.logger.error("unhandled hub error in the API: %s", exc)
        resp = _error(status, _CODES[status], str(exc))
    except RequestEntityTooLarge:
        db.session.rollback()
        from web.releases import size_text, upload_limit

        resp = _error(413, "too_large", "the upload is larger than the limit of "
                      f"{size_text(upload_limit())} (hub.toml [web] max_upload_bytes)")
    except HTTPException as exc:
        db.session.rollback()
        status = exc.code or 500
        resp = _error(status, _CODES.get(status, "error"), exc.description or exc.name)
    except Exception:  # the traceback goes to the log, the caller gets JSON
        db.session.rollback()
        current_app.logger.exception("API call %s %s failed", request.method, request.path)
        resp = _error(500, "internal", "the hub could not answer this call; its log says why")
    token, user = db.session.merge(token), db.session.merge(user)
    token.last_used_at = _clock_now()
    _audit_call("api.call", user, token, resp.status_code)
    db.session.commit()
    return resp


def operation(
    rule: str, method: str, *, scope: str | None, summary: str, responses: dict[int, str],
    params: tuple[Param, ...] = (), body: str | None = None, errors: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view as an API operation and describe it for the OpenAPI document.

    The view returns a JSON-able payload, or ``(payload, status)``; it raises domain errors
    or :class:`ApiError`. ``errors``: the statuses it may answer besides 401, 403 and 500
    (added for every operation with a scope).
    """

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        described = dict(responses)
        for status in (*((401, 403, 500) if scope is not None else ()), *errors):
            described.setdefault(status, "Error")
        OPERATIONS.append(Operation(
            endpoint=view.__name__, method=method.upper(), rule=rule, scope=scope,
            summary=summary, description=(view.__doc__ or "").strip(),
            responses=described, params=params, body=body,
        ))  # fmt: skip
        if scope is None:
            wrapped: Callable[..., Any] = view
        else:
            @functools.wraps(view)
            def wrapped(**kwargs: Any) -> Response:
                return _run(view, scope, kwargs)

        bp.add_url_rule(rule, endpoint=view.__name__, view_func=csrf.exempt(wrapped),
                        methods=[method.upper()])
        return wrapped

    return register


def _cap_body() -> None:
    """Cap every API request body at ``[web] max_upload_bytes`` before anything reads it."""
    from web.releases import upload_limit

    request.max_content_length = upload_limit()


bp.before_request(_cap_body)

from web.api import channels as _channels  # noqa: E402,F401 - channel admin, subscriptions
from web.api import governance as _governance  # noqa: E402,F401 - channels, windows, freezes
from web.api import notifications as _notifications  # noqa: E402,F401 - notifications
from web.api import rollouts as _rollouts  # noqa: E402,F401 - the rollout operations
from web.api import routes as _routes  # noqa: E402,F401 - registers the operations
from web.api import runs as _runs  # noqa: E402,F401 - ad-hoc runs and following them
from web.api import secrets as _secrets  # noqa: E402,F401 - the site-secret operations
from web.api import templates as _templates  # noqa: E402,F401 - job templates
