"""The ``admin`` pages: every user the hub knows (seen through SAML or created locally), with
their role grants; an admin grants and revokes roles (globally or for one environment),
deactivates or reactivates accounts, and signs a user out everywhere (every web session of
theirs ends at once).

Destructive changes (deactivating, revoking a role) take two steps without any script (the
CSP allows none): the first POST answers with a confirmation page whose form repeats the
fields with ``confirmed=1``; only that second POST changes anything.

Every rule is :mod:`hub.services.users`' (admin only, no duplicate grant, never the last
global admin, never yourself deactivated); this module reads forms, calls one service per
POST, and turns a refused change (bad role, duplicate, last admin) into a message on the
user's page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import ROLES, db
from hub.errors import ConflictError, NotFoundError, ValidationError
from hub.services.approvers import list_keys, set_groups
from hub.services.context import ServiceContext
from hub.services.environments import list_environments
from hub.services.users import (
    grant_role,
    manageable_users,
    managed_user,
    open_sessions,
    revoke_role,
    roles_of,
    set_active,
    sign_out_everywhere,
)
from web.views import ctx, login_required, signed_in_user

__all__ = ["bp"]

#: Refusals shown as a message on the user's page (a PermissionDeniedError stays a 403).
_REFUSED = (ConflictError, NotFoundError, ValidationError)

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/")
@login_required
def index() -> Any:
    users = manageable_users(ctx())
    return render_template(
        "admin/index.html",
        users=[(u, roles_of(u)) for u in users],
    )


@bp.get("/users/<username>")
@login_required
def user(username: str) -> Any:
    sc = ctx()
    u = managed_user(sc, username)
    return render_template(
        "admin/user.html",
        u=u,
        grants=sorted(u.grants, key=lambda g: (g.role, g.environment.name if g.environment
                                                   else "")),
        roles=ROLES,
        environments=list_environments(sc.session),
        is_self=u.id == signed_in_user().id,
        sessions=open_sessions(sc.session, u),
        approver_keys=list_keys(sc.session, u),
    )


def _back(username: str) -> Any:
    return redirect(url_for("admin.user", username=username))


def _environment_field() -> str | None:
    """The form's environment: empty means a global grant."""
    return (request.form.get("environment") or "").strip() or None


def _confirm(username: str, endpoint: str, question: str, button: str) -> Any:
    """The confirmation step of a destructive change: the same form again, confirmed."""
    fields = {k: v for k, v in request.form.items() if k not in ("csrf_token", "confirmed")}
    return render_template(
        "admin/confirm.html", username=username, question=question, button=button,
        action=url_for(endpoint, username=username), fields=fields,
    )  # fmt: skip


def _confirmed() -> bool:
    return request.form.get("confirmed") == "1"


def _apply(username: str, refused: str, change: Callable[[ServiceContext], str]) -> Any:
    """Run one service call for ``username``'s page: commit and say what changed, or roll
    back and say why not (``refused`` starts that message)."""
    sc = ctx()
    managed_user(sc, username)  # 403/404 before reading the form
    try:
        message = change(sc)
    except _REFUSED as exc:
        db.session.rollback()
        flash(f"{refused}: {exc}", "error")
        return _back(username)
    db.session.commit()
    flash(message, "info")
    return _back(username)


def _scope(env: str | None) -> str:
    return f"in {env}" if env else "globally"


def _role_change(username: str, granting: bool) -> Any:
    role = (request.form.get("role") or "").strip()
    env = _environment_field()

    def change(sc: ServiceContext) -> str:
        if granting:
            grant_role(sc, username, role, env)
            return f"{username} now has role {role} {_scope(env)}."
        revoke_role(sc, username, role, env)
        return f"Role {role} {_scope(env)} revoked from {username}."

    return _apply(username, "Not granted" if granting else "Not revoked", change)


@bp.post("/users/<username>/grant")
@login_required
def grant(username: str) -> Any:
    return _role_change(username, granting=True)


@bp.post("/users/<username>/revoke")
@login_required
def revoke(username: str) -> Any:
    if not _confirmed():
        managed_user(ctx(), username)  # 403/404 before anything else
        role = (request.form.get("role") or "").strip()
        return _confirm(username, "admin.revoke",
                        f"Revoke role {role} {_scope(_environment_field())} from {username}?",
                        "Revoke")
    return _role_change(username, granting=False)


@bp.post("/users/<username>/active")
@login_required
def active(username: str) -> Any:
    value = request.form.get("active")
    if value == "0" and not _confirmed():
        managed_user(ctx(), username)  # 403/404 before anything else
        return _confirm(username, "admin.active",
                        f"Deactivate {username}? They are signed out everywhere at once and "
                        "can do nothing until reactivated; their history stays.",
                        f"Deactivate {username}")

    def change(sc: ServiceContext) -> str:
        if value not in ("0", "1"):
            raise ValidationError("the form must say active=1 (reactivate) or 0 (deactivate)")
        set_active(sc, username, value == "1")
        return f"{username} is {'active' if value == '1' else 'deactivated'}."

    return _apply(username, "Nothing changed", change)


@bp.post("/users/<username>/groups")
@login_required
def groups(username: str) -> Any:
    """Set ``username``'s approver groups (comma- or space-separated names)."""
    names = (request.form.get("groups") or "").replace(",", " ").split()

    def change(sc: ServiceContext) -> str:
        now = set_groups(sc, username, names)
        return f"{username} is in group(s) {', '.join(now) or 'none'}."

    return _apply(username, "Groups not changed", change)


@bp.post("/users/<username>/sessions/end")
@login_required
def end_sessions(username: str) -> Any:
    """Sign ``username`` out everywhere: every web session of theirs ends at once."""

    def change(sc: ServiceContext) -> str:
        ended = sign_out_everywhere(sc, username)
        return f"{username} is signed out everywhere ({ended} session(s) ended)."

    return _apply(username, "Nothing changed", change)
