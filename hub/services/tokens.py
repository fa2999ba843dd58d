"""Personal API tokens: issue, list, revoke, and authenticate a presented token.

A token is issued to a signed-in person for themselves (web UI "API tokens" page), with a
name, one or more scopes (:data:`hub.db.API_TOKEN_SCOPES`) and a required expiry of at most
``[web] api_token_max_days``. The secret is returned once by :func:`issue_token` and never
again: the hub stores only its public prefix (``tgp_`` + 10 hex digits, which names the
token in lists and audit events) and the SHA-256 of the whole token. A token drawn from 256
random bits needs no slow hash: nobody can guess a preimage, and the comparison is
constant-time.

Token text: ``tgp_<10 hex>_<43 url-safe characters>``.

**Scopes limit a token, roles still decide.** A call made with a token must be allowed by
the token's scopes (:func:`require_scope`, checked by the API before any service is called)
*and* by the person's roles (checked by the services as for the web UI). ``admin`` allows
every scope. Scopes and what they open (docs/api.md):

* ``read``: list and show releases, deployments, environments, agents;
* ``releases:write``: upload and submit releases;
* ``approve``: approve or reject releases;
* ``deploy``: queue deployments;
* ``admin``: all of the above.

Revoking: the owner, or an admin (``user.manage``). A revoked or expired token, or one
whose owner is deactivated, authenticates nothing (:func:`authenticate` raises
:class:`TokenRefusedError`).

This module does not read HTTP requests and does not write the per-call audit events (the
API does); it audits issuing and revoking.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db import API_TOKEN_SCOPES, ApiToken, User
from hub.errors import (
    ConflictError,
    HubError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.users import can, require

__all__ = [
    "MAX_ACTIVE_TOKENS",
    "MAX_NAME_CHARS",
    "SCOPE_HELP",
    "TOKEN_PREFIX",
    "InsufficientScopeError",
    "IssuedToken",
    "TokenRefusedError",
    "all_tokens",
    "authenticate",
    "get_token",
    "is_active",
    "issue_token",
    "own_tokens",
    "require_scope",
    "revoke_token",
    "token_state",
]

TOKEN_PREFIX = "tgp_"  # noqa: S105 - the public part every token starts with
PREFIX_HEX = 10  # hex digits after tgp_ that name a token
SECRET_BYTES = 32  # random bytes of a token's secret part
MAX_ACTIVE_TOKENS = 50  # unrevoked tokens per person
MAX_NAME_CHARS = 100  # characters of a token's name
MAX_TOKEN_CHARS = 200  # characters of a presented token (anything longer is refused unread)
_NAME = re.compile(r"^[^\x00-\x1f\x7f]+$")
_TOKEN = re.compile(rf"^(tgp_[0-9a-f]{{{PREFIX_HEX}}})_([A-Za-z0-9_-]{{20,100}})$")

#: scope -> what it opens (shown on the tokens page and in docs/api.md).
SCOPE_HELP = {
    "read": "list and show releases, deployments, environments and agents",
    "releases:write": "upload and submit releases",
    "approve": "approve or reject releases",
    "deploy": "queue deployments",
    "admin": "everything the other scopes allow",
}


class TokenRefusedError(HubError):
    """A presented token authenticates nothing. ``token`` is the stored token when the
    prefix named one (revoked, expired, owner deactivated, wrong secret), else None."""

    def __init__(self, message: str, token: ApiToken | None = None) -> None:
        super().__init__(message)
        self.token = token


class InsufficientScopeError(PermissionDeniedError):
    """The token does not carry the scope an operation needs (the person's roles are not
    asked)."""


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the stored row and the token text, shown to its owner once."""

    token: ApiToken
    secret: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_scopes(scopes: list[str]) -> list[str]:
    if not scopes:
        raise ValidationError(
            f"a token needs at least one scope (one of {', '.join(API_TOKEN_SCOPES)})")
    unknown = sorted(set(scopes) - set(API_TOKEN_SCOPES))
    if unknown:
        raise ValidationError(
            f"unknown scope {unknown[0]!r}: scopes are {', '.join(API_TOKEN_SCOPES)}")
    return [s for s in API_TOKEN_SCOPES if s in scopes]


def issue_token(
    ctx: ServiceContext, name: str, scopes: list[str], days: int, *, max_days: int
) -> IssuedToken:
    """Issue a token to the acting person, valid for ``days`` days (1 … ``max_days``).

    Raises:
        PermissionDeniedError: no acting person, or an inactive one.
        ValidationError: empty or too long name, no or unknown scope, expiry out of range.
        ConflictError: the person has :data:`MAX_ACTIVE_TOKENS` unrevoked tokens already
            (or one of that name).
    """
    user = ctx.actor
    if user is None or not user.is_active:
        raise PermissionDeniedError("API tokens are issued to a signed-in, active person")
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or not _NAME.match(name):
        raise ValidationError(
            f"a token's name must be 1-{MAX_NAME_CHARS} printable characters")
    ordered = _check_scopes(scopes)
    if not 1 <= days <= max_days:
        raise ValidationError(
            f"a token's expiry must be 1-{max_days} days (hub.toml [web] api_token_max_days), "
            f"not {days}")
    now = ctx.now()
    active = [t for t in own_tokens(ctx) if is_active(t, now)]
    if len(active) >= MAX_ACTIVE_TOKENS:
        raise ConflictError(
            f"{user.username} has {len(active)} active API tokens, the most allowed "
            f"({MAX_ACTIVE_TOKENS}); revoke one first")
    if any(t.name == name for t in active):
        raise ConflictError(f"{user.username} already has an active API token named {name!r}")
    prefix = TOKEN_PREFIX + secrets.token_hex(PREFIX_HEX // 2)
    while ctx.session.scalar(select(func.count()).where(ApiToken.prefix == prefix)):
        prefix = TOKEN_PREFIX + secrets.token_hex(PREFIX_HEX // 2)  # pragma: no cover
    secret = f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    token = ApiToken(
        user_id=user.id, name=name, prefix=prefix, token_hash=_digest(secret), scopes=ordered,
        created_at=now, expires_at=now + timedelta(days=days),
    )  # fmt: skip
    ctx.session.add(token)
    ctx.session.flush()
    audit.record(ctx, "token.issue", "api_token", prefix, {
        "id": token.id, "name": name, "scopes": ordered, "owner": user.username,
        "expires_at": token.expires_at.isoformat()})
    return IssuedToken(token, secret)


def is_active(token: ApiToken, now: datetime) -> bool:
    """Neither revoked nor expired."""
    return token.revoked_at is None and now < token.expires_at


def token_state(token: ApiToken, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired``."""
    if token.revoked_at is not None:
        return "revoked"
    return "active" if now < token.expires_at else "expired"


def own_tokens(ctx: ServiceContext) -> list[ApiToken]:
    """The acting person's tokens, newest first."""
    if ctx.actor is None:
        return []
    return list(ctx.session.scalars(
        select(ApiToken).where(ApiToken.user_id == ctx.actor.id).order_by(ApiToken.id.desc())))


def all_tokens(ctx: ServiceContext) -> list[ApiToken]:
    """Every person's tokens, newest first.

    Raises:
        PermissionDeniedError: the actor may not manage users.
    """
    require(ctx.actor, "user.manage")
    return list(ctx.session.scalars(select(ApiToken).order_by(ApiToken.id.desc())))


def get_token(ctx: ServiceContext, token_id: int) -> ApiToken:
    """A token the actor owns or, for an admin, anyone's.

    Raises:
        NotFoundError: no such token, or someone else's for a non-admin (same words).
    """
    token = ctx.session.get(ApiToken, token_id)
    mine = token is not None and ctx.actor is not None and token.user_id == ctx.actor.id
    if token is None or not (mine or can(ctx.actor, "user.manage")):
        raise NotFoundError(f"API token {token_id} does not exist")
    return token


def revoke_token(ctx: ServiceContext, token_id: int) -> ApiToken:
    """Revoke a token (its owner, or an admin): it authenticates nothing from now on.

    Raises:
        NotFoundError, ConflictError (already revoked).
    """
    token = get_token(ctx, token_id)
    if token.revoked_at is not None:
        raise ConflictError(f"API token {token.prefix} ({token.name}) is already revoked")
    token.revoked_at = ctx.now()
    token.revoked_by = ctx.actor_name
    ctx.session.flush()
    audit.record(ctx, "token.revoke", "api_token", token.prefix, {
        "id": token.id, "name": token.name, "owner": token.user.username})
    return token


def authenticate(session: Session, now: datetime, presented: str) -> tuple[ApiToken, User]:
    """The token and person behind ``presented`` (the text after ``Bearer``); records the
    time as the token's last use (the caller commits).

    Raises:
        TokenRefusedError: malformed or unknown token (``token`` None), wrong secret,
            revoked, expired, owner deactivated (``token`` set). Messages never include
            the presented text.
    """
    match = _TOKEN.match(presented) if len(presented) <= MAX_TOKEN_CHARS else None
    if match is None:
        raise TokenRefusedError("the API token is malformed (expected tgp_…)")
    token = session.scalar(select(ApiToken).where(ApiToken.prefix == match.group(1)))
    if token is None:
        raise TokenRefusedError(f"API token {match.group(1)} is unknown")
    if not hmac.compare_digest(token.token_hash, _digest(presented)):
        raise TokenRefusedError(f"API token {token.prefix}: the secret does not match", token)
    if token.revoked_at is not None:
        raise TokenRefusedError(
            f"API token {token.prefix} ({token.name}) was revoked at "
            f"{token.revoked_at:%Y-%m-%d %H:%M:%S}Z", token)
    if now >= token.expires_at:
        raise TokenRefusedError(
            f"API token {token.prefix} ({token.name}) expired at "
            f"{token.expires_at:%Y-%m-%d %H:%M:%S}Z", token)
    user = token.user
    if not user.is_active:
        raise TokenRefusedError(
            f"API token {token.prefix}: its owner {user.username} is deactivated", token)
    token.last_used_at = now
    return token, user


def require_scope(token: ApiToken, scope: str) -> None:
    """Raise unless ``token`` carries ``scope`` (or ``admin``).

    Raises:
        InsufficientScopeError: names the token, the scope needed and the scopes it has.
    """
    if scope not in API_TOKEN_SCOPES:  # pragma: no cover - a programming error
        raise KeyError(scope)
    if scope in token.scopes or "admin" in token.scopes:
        return
    raise InsufficientScopeError(
        f"API token {token.prefix} ({token.name}) lacks the scope {scope!r}; it has "
        f"{', '.join(token.scopes)}")
