"""Environments: where releases go, and how many distinct approvals they require.

Channels, maintenance windows and change freezes come later; this module does not model
them yet.
"""

from __future__ import annotations

import re

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from hub.db import Deployment, Environment, User
from hub.errors import ConflictError, NotFoundError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.users import can, require

__all__ = [
    "MAX_PREFLIGHT_HOURS",
    "MAX_REQUIRED_APPROVALS",
    "create_environment",
    "describe_preflight_policy",
    "environment_for",
    "environment_id",
    "get_environment",
    "latest_deployments",
    "list_environments",
    "set_preflight_policy",
    "set_required_approvals",
    "viewable_environments",
    "visible_environments",
]

MAX_REQUIRED_APPROVALS = 10  # distinct approvers an environment may demand
MAX_PREFLIGHT_HOURS = 24 * 30  # the longest preflight policy (as a rollout's gate)
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def get_environment(session: Session, name: str) -> Environment:
    """Raises NotFoundError."""
    env: Environment | None = session.scalar(_BY_NAME, {"name": name})
    if env is None:
        raise NotFoundError(f"environment {name!r} does not exist")
    return env


#: get_environment's statement, made once (every export call asks it: a statement built per
#: call costs its construction and cache key again)
_BY_NAME = select(Environment).where(Environment.name == bindparam("name"))


def environment_id(session: Session, environment: str | Environment) -> int:
    """The id of ``environment``, given by name or already loaded (no query then).

    Raises NotFoundError."""
    if isinstance(environment, Environment):
        return environment.id
    return get_environment(session, environment).id


def list_environments(session: Session) -> list[Environment]:
    return list(session.scalars(select(Environment).order_by(Environment.name)))


def visible_environments(session: Session, user: User | None) -> list[Environment]:
    """The environments ``user`` may view (a global grant: all; else those granted), by name.

    Lists in the web UI start here, so that nobody sees an environment, its agents or its
    deployments without a grant there.
    """
    return [env for env in list_environments(session) if can(user, "view", env)]


def viewable_environments(ctx: ServiceContext) -> list[Environment]:
    """:func:`visible_environments` for the context's actor."""
    return visible_environments(ctx.session, ctx.actor)


def environment_for(ctx: ServiceContext, name: str, action: str = "view") -> Environment:
    """The environment ``name``, if the actor may do ``action`` there.

    For views that show or hand out something of one environment (its page, a file an
    export of it wrote, an agent's enrollment response) without calling a service that
    checks by itself.

    Raises:
        NotFoundError, PermissionDeniedError.
    """
    env = get_environment(ctx.session, name)
    require(ctx.actor, action, env)
    return env


def latest_deployments(session: Session, env: Environment, limit: int = 50) -> list[Deployment]:
    """The newest ``limit`` deployments of ``env``, newest first (no permission check: the
    caller has looked ``env`` up with :func:`environment_for`)."""
    query = (
        select(Deployment)
        .where(Deployment.environment_id == env.id)
        .order_by(Deployment.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def _check_required(value: int) -> None:
    if not 1 <= value <= MAX_REQUIRED_APPROVALS:
        raise ValidationError(
            f"required approvals must be between 1 and {MAX_REQUIRED_APPROVALS}, not {value}"
        )


def create_environment(
    ctx: ServiceContext, name: str, *, description: str = "", required_approvals: int = 1
) -> Environment:
    """Create an environment.

    Raises:
        PermissionDeniedError (admin only), ValidationError, ConflictError.
    """
    require(ctx.actor, "environment.create")
    if not _NAME.match(name):
        raise ValidationError(
            f"environment name {name!r} must be 1-64 lowercase letters, digits and dashes"
        )
    _check_required(required_approvals)
    if ctx.session.scalar(select(Environment.id).where(Environment.name == name)) is not None:
        raise ConflictError(f"environment {name!r} already exists")
    env = Environment(
        name=name,
        description=description,
        required_approvals=required_approvals,
        created_at=ctx.now(),
    )
    ctx.session.add(env)
    ctx.session.flush()
    audit.record(
        ctx,
        "environment.create",
        "environment",
        name,
        {"required_approvals": required_approvals, "description": description},
    )
    return env


def set_required_approvals(ctx: ServiceContext, name: str, required_approvals: int) -> Environment:
    """Change how many distinct approvers a deployment to ``name`` needs.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError.
    """
    env = get_environment(ctx.session, name)
    require(ctx.actor, "environment.update", env)
    _check_required(required_approvals)
    if required_approvals < (env.approval_min_groups or 1):
        raise ValidationError(
            f"environment {name} wants approvers from {env.approval_min_groups} groups, which "
            f"{required_approvals} approver(s) cannot meet; lower it first (hub environments "
            "approval-rule --min-groups)"
        )
    before = env.required_approvals
    env.required_approvals = required_approvals
    ctx.session.flush()
    audit.record(
        ctx,
        "environment.required_approvals",
        "environment",
        name,
        {"from": before, "to": required_approvals},
    )
    return env


def describe_preflight_policy(env: Environment) -> str:
    """``deployments need a preflight plan passed on each agent within 24 h`` / ``no
    preflight policy …``."""
    if not env.preflight_within_h:
        return ("no preflight policy: deployments need no passed plan (a rollout or channel "
                "rule may still ask for one)")
    return (f"every deployment needs a preflight plan of its release passed on each target "
            f"agent within {env.preflight_within_h} h")


def set_preflight_policy(ctx: ServiceContext, name: str, within_h: int | None) -> Environment:
    """Set (``within_h`` hours) or clear (None) ``name``'s preflight policy, which every path
    queueing a deployment there obeys (:func:`hub.services.plans.deploy_waits`); audited
    ``environment.preflight_policy``.

    Raises:
        PermissionDeniedError (not an admin of the environment), NotFoundError,
        ValidationError (hours out of range).
    """
    env = get_environment(ctx.session, name)
    require(ctx.actor, "environment.update", env)
    if within_h is not None and not 1 <= within_h <= MAX_PREFLIGHT_HOURS:
        raise ValidationError(f"environment {name}: a preflight policy of {within_h} h: give "
                              f"1 … {MAX_PREFLIGHT_HOURS} hours (or clear it)")
    before = env.preflight_within_h
    env.preflight_within_h = within_h
    ctx.session.flush()
    audit.record(ctx, "environment.preflight_policy", "environment", name,
                 {"from": before, "to": within_h, "policy": describe_preflight_policy(env)})
    return env
