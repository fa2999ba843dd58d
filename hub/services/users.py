"""Users, role grants and the permission matrix.

Roles: ``viewer``, ``developer`` (create and submit releases), ``operator`` (queue
deployments, export/import, enroll agents), ``approver``, ``auditor`` (read, verify and
export the audit log), ``admin`` (everything, including grants). A grant is global
(environment NULL: every environment) or for one environment. An action asked without an
environment (creating a release, say) is allowed by global grants only.

:func:`can` answers, :func:`require` raises. The web UI may use :func:`can` to hide buttons,
but only the services' own :func:`require` calls protect anything.

Passwords (:func:`set_password`) are for the web UI's local sign-in (``[web] local_login``),
hashed with werkzeug's scrypt (the same hash break-glass uses); :func:`end_sessions` ends a
user's web sessions (table ``web_sessions``) at once: on deactivation and on an admin's
:func:`sign_out_everywhere`.

This module does not authenticate anyone: SAML or a password (web) or the local OS user
(CLI) do.
"""

from __future__ import annotations

import re

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hub.db import ROLES, Environment, RoleGrant, User, WebSession
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.services import audit
from hub.services.context import Clock, ServiceContext

__all__ = [
    "ACTIONS",
    "MIN_PASSWORD_CHARS",
    "ROLES",
    "SYSTEM_ACTIONS",
    "bootstrap_admin",
    "can",
    "clear_password",
    "create_user",
    "end_sessions",
    "get_user",
    "grant_role",
    "list_users",
    "manageable_users",
    "managed_user",
    "new_user",
    "open_sessions",
    "require",
    "require_ctx",
    "revoke_role",
    "roles_of",
    "set_active",
    "set_password",
    "sign_out_everywhere",
]

_ALL = frozenset(ROLES)
#: action -> roles allowing it (admin allows everything).
ACTIONS: dict[str, frozenset[str]] = {
    "view": _ALL,
    "product.create": frozenset({"developer", "admin"}),
    "release.create": frozenset({"developer", "admin"}),
    "release.submit": frozenset({"developer", "admin"}),
    "release.approve": frozenset({"approver", "admin"}),
    "environment.create": frozenset({"admin"}),
    "environment.update": frozenset({"admin"}),
    "agent.enroll": frozenset({"operator", "admin"}),
    "agent.revoke": frozenset({"operator", "admin"}),
    "deployment.queue": frozenset({"operator", "admin"}),
    "deployment.update": frozenset({"operator", "admin"}),
    "bundle.export": frozenset({"operator", "admin"}),
    "result.import": frozenset({"operator", "admin"}),
    "audit.read": frozenset({"auditor", "admin"}),
    "audit.verify": frozenset({"auditor", "admin"}),
    "audit.export": frozenset({"auditor", "admin"}),
    "audit.checkpoint": frozenset({"operator", "auditor", "admin"}),
    "user.manage": frozenset({"admin"}),
    # channels (hub.services.channels, hub.services.promotion): always global grants
    "channel.manage": frozenset({"admin"}),
    "channel.approve": frozenset({"approver", "admin"}),
    "channel.promote": frozenset({"operator", "admin"}),
    "channel.recall": frozenset({"operator", "admin"}),
}

MIN_PASSWORD_CHARS = 12  # characters of a local password
MAX_PASSWORD_CHARS = 1024  # characters (scrypt reads all of it)

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


def can(user: User | None, action: str, environment: Environment | None = None) -> bool:
    """Whether ``user`` may do ``action`` (in ``environment``, when the action has one).

    Raises:
        KeyError: ``action`` is not in :data:`ACTIONS` (a programming error).
    """
    allowed = ACTIONS[action]
    if user is None or not user.is_active:
        return False
    for grant in user.grants:
        if grant.role not in allowed and grant.role != "admin":
            continue
        if grant.environment_id is None:
            return True
        if environment is not None and grant.environment_id == environment.id:
            return True
    return False


def require(user: User | None, action: str, environment: Environment | None = None) -> None:
    """Raise unless :func:`can`.

    Raises:
        PermissionDeniedError: names the user, the action, the environment and the roles.
    """
    if can(user, action, environment):
        return
    who = user.username if user is not None else "an anonymous user"
    where = f" in environment {environment.name}" if environment is not None else ""
    roles = ", ".join(sorted(ACTIONS[action] | {"admin"}))
    inactive = " (account deactivated)" if user is not None and not user.is_active else ""
    raise PermissionDeniedError(
        f"{who}{inactive} may not {action}{where}: it needs one of the roles {roles}"
        + (_scoped_only(user, action) if environment is None and not inactive else "")
    )


def _scoped_only(user: User | None, action: str) -> str:
    """Why a user with the right role still may not act globally: their grants of it are
    per environment (`` (erin has approver only in environment prod; …)``), or ''."""
    allowed = ACTIONS[action] | {"admin"}
    scoped = sorted({(g.role, g.environment.name) for g in (user.grants if user else ())
                     if g.role in allowed and g.environment is not None})
    if user is None or not scoped:
        return ""
    where = ", ".join(f"{role} only in environment {env}" for role, env in scoped)
    return f" ({user.username} has {where}; this needs a global grant)"


#: system process (``ServiceContext.system``) -> the only actions it may do on its own.
#: ``live``: the live server exports deployments an operator already queued (records them
#: exported, signs the audit checkpoint every export carries) and imports the results its
#: authenticated agents upload. ``scheduler``: exports what a window or freeze released.
SYSTEM_ACTIONS: dict[str, frozenset[str]] = {
    "live": frozenset({"bundle.export", "result.import"}),
    # hub.scheduler: writes bundles of released deployments to the file share (export_dir)
    "scheduler": frozenset({"bundle.export"}),
}


def require_ctx(ctx: ServiceContext, action: str, environment: Environment | None = None) -> None:
    """:func:`require` for the context's actor, or, for a hub process acting on its own
    (``ctx.actor`` None and ``ctx.system`` set), only the actions in :data:`SYSTEM_ACTIONS`.

    Raises:
        PermissionDeniedError.
    """
    if ctx.actor is None and ctx.system is not None:
        if action in SYSTEM_ACTIONS.get(ctx.system, frozenset()):
            return
        raise PermissionDeniedError(f"the hub process system:{ctx.system} may not {action}")
    require(ctx.actor, action, environment)


def roles_of(user: User) -> list[tuple[str, str | None]]:
    """(role, environment name or None) pairs of ``user``."""
    return sorted(
        ((g.role, g.environment.name if g.environment else None) for g in user.grants),
        key=lambda rg: (rg[0], rg[1] or ""),
    )


def get_user(session: Session, username: str) -> User:
    """Raises NotFoundError."""
    user: User | None = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"user {username!r} does not exist")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def manageable_users(ctx: ServiceContext) -> list[User]:
    """Every user (SAML and local, active or not) for an admin managing grants.

    Raises:
        PermissionDeniedError (admin only).
    """
    require(ctx.actor, "user.manage")
    return list_users(ctx.session)


def managed_user(ctx: ServiceContext, username: str) -> User:
    """One user, with its grants, for an admin.

    Raises:
        PermissionDeniedError (admin only), NotFoundError.
    """
    require(ctx.actor, "user.manage")
    return get_user(ctx.session, username)


def new_user(
    session: Session, clock: Clock, username: str, display_name: str, email: str, source: str
) -> User:
    """Add a user without a permission check: for an authenticator that has just verified
    who this is (the SAML SP on a first login, ``bootstrap_admin``). People create users
    with :func:`create_user`, which needs ``user.manage``.

    Raises:
        ValidationError (user name, source), ConflictError (exists).
    """
    if not _USERNAME.match(username):
        raise ValidationError(
            f"user name {username!r} must be 1-64 lowercase letters, digits, . _ @ -"
        )
    if source not in ("saml", "local"):
        raise ValidationError(f"user source must be saml or local, not {source!r}")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ConflictError(f"user {username!r} already exists")
    user = User(
        username=username,
        display_name=display_name or username,
        email=email,
        is_active=True,
        source=source,
        created_at=clock(),
    )
    session.add(user)
    session.flush()
    return user


def bootstrap_admin(session: Session, clock: Clock, username: str) -> User:
    """Create the first admin (``hub init``); only while the hub has no users at all.

    Raises:
        ConflictError: users exist already.
        ValidationError: bad user name.
    """
    if session.scalar(select(func.count()).select_from(User)):
        raise ConflictError("the hub already has users; grant admin with `hub users grant`")
    user = new_user(session, clock, username, username, "", "local")
    session.add(RoleGrant(user=user, role="admin", granted_at=clock(), granted_by="system"))
    session.flush()
    audit.append_event(
        session, clock(), "system", "user.bootstrap_admin", "user", username, {"role": "admin"}
    )
    return user


def create_user(
    ctx: ServiceContext,
    username: str,
    *,
    display_name: str = "",
    email: str = "",
    source: str = "local",
) -> User:
    """Create a user (no roles yet).

    Raises:
        PermissionDeniedError, ValidationError, ConflictError.
    """
    require(ctx.actor, "user.manage")
    user = new_user(ctx.session, ctx.clock, username, display_name, email, source)
    audit.record(ctx, "user.create", "user", username, {"source": source, "email": email})
    return user


def _environment(session: Session, name: str | None) -> Environment | None:
    if name is None:
        return None
    env: Environment | None = session.scalar(select(Environment).where(Environment.name == name))
    if env is None:
        raise NotFoundError(f"environment {name!r} does not exist")
    return env


def grant_role(
    ctx: ServiceContext, username: str, role: str, environment: str | None = None
) -> RoleGrant:
    """Grant ``role`` to ``username`` globally or for one environment.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (unknown role),
        ConflictError (already granted).
    """
    require(ctx.actor, "user.manage")
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    user = get_user(ctx.session, username)
    env = _environment(ctx.session, environment)
    for g in user.grants:
        if g.role == role and g.environment_id == (env.id if env else None):
            raise ConflictError(f"{username} already has role {role} {_scope(env)}")
    grant = RoleGrant(
        user=user, role=role, environment=env, granted_at=ctx.now(), granted_by=ctx.actor_name
    )
    ctx.session.add(grant)
    ctx.session.flush()
    audit.record(ctx, "user.grant", "user", username, {"role": role, "environment": environment})
    return grant


def revoke_role(
    ctx: ServiceContext, username: str, role: str, environment: str | None = None
) -> None:
    """Remove a grant.

    Raises:
        PermissionDeniedError, NotFoundError (user, environment or grant),
        ConflictError (an admin removing the last global admin grant).
    """
    require(ctx.actor, "user.manage")
    user = get_user(ctx.session, username)
    env = _environment(ctx.session, environment)
    match = [
        g for g in user.grants if g.role == role and g.environment_id == (env.id if env else None)
    ]
    if not match:
        raise NotFoundError(f"{username} has no role {role} {_scope(env)}")
    if role == "admin" and env is None:
        admins = ctx.session.scalar(
            select(func.count())
            .select_from(RoleGrant)
            .where(RoleGrant.role == "admin", RoleGrant.environment_id.is_(None))
        )
        if admins is not None and admins <= 1:
            raise ConflictError("cannot remove the last global admin")
    for g in match:
        user.grants.remove(g)
        ctx.session.delete(g)
    ctx.session.flush()
    audit.record(ctx, "user.revoke", "user", username, {"role": role, "environment": environment})


def _scope(env: Environment | None) -> str:
    return f"in environment {env.name}" if env is not None else "globally"


def set_active(ctx: ServiceContext, username: str, active: bool) -> User:
    """Deactivate (or reactivate) a user: a deactivated user may do nothing, keeps its
    history, and is never deleted.

    Raises:
        PermissionDeniedError, NotFoundError, ConflictError (deactivating yourself).
    """
    require(ctx.actor, "user.manage")
    user = get_user(ctx.session, username)
    if not active and ctx.actor is not None and user.id == ctx.actor.id:
        raise ConflictError("you cannot deactivate yourself")
    user.is_active = active
    ended = 0 if active else end_sessions(ctx.session, user)
    ctx.session.flush()
    details = {} if active else {"sessions_ended": ended}
    audit.record(ctx, "user.activate" if active else "user.deactivate", "user", username, details)
    return user


def end_sessions(session: Session, user: User) -> int:
    """Delete every web session of ``user`` (no permission check: callers check); their
    cookies are worth nothing from the next request on. Returns how many ended."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    return int(getattr(result, "rowcount", 0) or 0)


def open_sessions(session: Session, user: User) -> int:
    """How many web sessions of ``user`` the hub holds (expired ones until purged)."""
    count = session.scalar(
        select(func.count()).select_from(WebSession).where(WebSession.user_id == user.id)
    )
    return int(count or 0)


def sign_out_everywhere(ctx: ServiceContext, username: str) -> int:
    """End every web session of ``username`` (an admin's "sign out everywhere"), audited
    with the number ended.

    Raises:
        PermissionDeniedError (admin only), NotFoundError.
    """
    require(ctx.actor, "user.manage")
    user = get_user(ctx.session, username)
    ended = end_sessions(ctx.session, user)
    audit.record(ctx, "user.sessions_ended", "user", username, {"sessions_ended": ended})
    return ended


def set_password(ctx: ServiceContext, username: str, password: str) -> None:
    """Set the local web sign-in password of ``username`` (an admin for anyone, a user for
    themselves); the user's other web sessions end. Audited without the password.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (shorter than
        :data:`MIN_PASSWORD_CHARS`, longer than :data:`MAX_PASSWORD_CHARS`).
    """
    user = get_user(ctx.session, username)
    if ctx.actor is None or ctx.actor.id != user.id or not ctx.actor.is_active:
        require(ctx.actor, "user.manage")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValidationError(
            f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, "
            f"not {len(password)}"
        )
    from werkzeug.security import generate_password_hash  # the web stack, only here

    user.password_hash = generate_password_hash(password)
    ended = end_sessions(ctx.session, user)
    ctx.session.flush()
    audit.record(ctx, "user.password_set", "user", username, {"sessions_ended": ended})


def clear_password(ctx: ServiceContext, username: str) -> None:
    """Remove ``username``'s local password (they can no longer sign in with one).

    Raises:
        PermissionDeniedError (admin only), NotFoundError.
    """
    require(ctx.actor, "user.manage")
    user = get_user(ctx.session, username)
    user.password_hash = None
    ctx.session.flush()
    audit.record(ctx, "user.password_cleared", "user", username, {})
