"""The ``tokens`` page ("API tokens"): a signed-in person issues personal API tokens for
the HTTP API (name, scopes, expiry), sees the new token's text once, lists their tokens
(prefix, scopes, expiry, last use, state) and revokes them; an admin also sees and revokes
everyone's.

Every rule is :mod:`hub.services.tokens`' (scopes, the ``[web] api_token_max_days`` cap,
who may revoke); this module reads the form, calls one service per POST, and turns a
refused form into a message. The page that shows a new token is answered directly (no
redirect, ``Cache-Control: no-store``): the secret is never stored and never in a URL.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from hub.db import API_TOKEN_SCOPES, db
from hub.errors import ConflictError, ValidationError
from hub.services.tokens import (
    SCOPE_HELP,
    all_tokens,
    issue_token,
    own_tokens,
    revoke_token,
    token_state,
)
from hub.services.users import can
from web.views import ctx, login_required, signed_in_user

__all__ = ["bp"]

DEFAULT_DAYS = 30  # days proposed by the form

bp = Blueprint("tokens", __name__, url_prefix="/tokens")


def _max_days() -> int:
    days: int = current_app.extensions["tiangong_web"].config.api_token_max_days
    return days


def _page(status: int = 200, **extra: Any) -> Any:
    sc = ctx()
    user = signed_in_user()
    now = sc.now()
    others = ([t for t in all_tokens(sc) if t.user_id != user.id]
              if can(user, "user.manage") else None)
    resp = render_template(
        "tokens/index.html", tokens=own_tokens(sc), others=others, now=now,
        state=lambda t: token_state(t, now), scopes=API_TOKEN_SCOPES, scope_help=SCOPE_HELP,
        max_days=_max_days(), default_days=min(DEFAULT_DAYS, _max_days()), **extra,
    )  # fmt: skip
    return resp, status, {"Cache-Control": "no-store"}


@bp.get("/")
@login_required
def index() -> Any:
    return _page()


@bp.post("/")
@login_required
def create() -> Any:
    name = request.form.get("name", "")
    scopes = request.form.getlist("scope")
    try:
        days = int(request.form.get("days", ""))
    except ValueError:
        return _page(400, error="the expiry must be a whole number of days", form=request.form)
    try:
        issued = issue_token(ctx(), name, scopes, days, max_days=_max_days())
    except (ValidationError, ConflictError) as exc:
        db.session.rollback()
        return _page(400, error=str(exc), form=request.form)
    token = issued.token
    shown = {"prefix": token.prefix, "name": token.name, "scopes": list(token.scopes),
             "expires_at": token.expires_at}
    db.session.commit()
    return _page(201, issued=shown, secret=issued.secret)


@bp.post("/<int:token_id>/revoke")
@login_required
def revoke(token_id: int) -> Any:
    token = revoke_token(ctx(), token_id)
    message = f"Revoked API token {token.prefix} ({token.name}) of {token.user.username}."
    db.session.commit()
    flash(message)
    return redirect(url_for("tokens.index"))
