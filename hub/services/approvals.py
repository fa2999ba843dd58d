"""Approvals: approve or reject a submitted release, with the four-eyes rule.

* The author never approves (or rejects) their own release (:class:`SeparationOfDutiesError`).
* An approval is global (environment NULL) or for one environment; an approver granted only
  for environment E may approve only for E.
* A release becomes ``approved`` at its first approval; an environment that requires N
  approvals accepts a deployment only when N *distinct* approvers (never the author)
  approved globally or for it — :func:`distinct_approvers`, checked when queueing.
* Any rejection makes the release ``rejected`` (final; make a new release).

Approvals travel inside the bundle manifest: :func:`approvals_for_manifest`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.audit_chain import format_at
from hub.db import Approval, Environment, Release, User
from hub.errors import (
    ConflictError,
    InvalidStateError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import can, require

__all__ = [
    "MAX_COMMENT_CHARS",
    "approval_scopes",
    "approvals_for_manifest",
    "approve_release",
    "distinct_approvers",
    "reject_release",
    "visible_approvals",
]

MAX_COMMENT_CHARS = 4096  # characters


def _common(
    ctx: ServiceContext, release: Release, environment: str | None, comment: str, verb: str
) -> Environment | None:
    env = get_environment(ctx.session, environment) if environment is not None else None
    require(ctx.actor, "release.approve", env)
    assert ctx.actor is not None
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValidationError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    if release.author_id == ctx.actor.id:
        raise SeparationOfDutiesError(
            f"release {release.label}: {ctx.actor.username} is its author and cannot {verb} it"
        )
    if release.state not in ("submitted", "approved"):
        raise InvalidStateError(
            f"release {release.label} is {release.state}; only a submitted or approved "
            f"release can be {verb}d"
        )
    return env


def approve_release(
    ctx: ServiceContext, release: Release, *, comment: str = "", environment: str | None = None
) -> Approval:
    """Record the actor's approval (globally, or for ``environment``).

    Raises:
        PermissionDeniedError, SeparationOfDutiesError (own release), InvalidStateError
        (draft or rejected), ConflictError (the actor already approved in this scope),
        NotFoundError (environment), ValidationError (comment too long).
    """
    env = _common(ctx, release, environment, comment, "approve")
    assert ctx.actor is not None
    env_id = env.id if env is not None else None
    for a in release.approvals:
        if a.approver_id == ctx.actor.id and a.environment_id == env_id:
            raise ConflictError(
                f"{ctx.actor.username} already approved release {release.label} "
                + (f"for {env.name}" if env else "globally")
            )
    now = ctx.now()
    approval = Approval(
        release=release,
        approver=ctx.actor,
        environment=env,
        decision="approve",
        comment=comment,
        at=now,
    )
    ctx.session.add(approval)
    release.state = "approved"
    release.decided_at = release.decided_at or now
    ctx.session.flush()
    audit.record(
        ctx,
        "release.approve",
        "release",
        release.label,
        {"environment": environment, "comment": comment, "content_hash": release.content_hash},
    )
    _after_approval(ctx, release)
    return approval


def _after_approval(ctx: ServiceContext, release: Release) -> None:
    """An approved release enters its product's first channel; deployments planned for it
    that waited for this approval are queued (:mod:`hub.services.promotion`)."""
    from hub.services import promotion  # promotion builds on this module

    promotion.enter_first_channel(ctx, release)
    promotion.advance_release(ctx, release)


def reject_release(
    ctx: ServiceContext, release: Release, *, comment: str, environment: str | None = None
) -> Approval:
    """Reject the release (final). A comment saying why is required.

    Raises:
        ValidationError (no comment), and the errors of :func:`approve_release`.
    """
    if not comment.strip():
        raise ValidationError(f"rejecting release {release.label} needs a comment saying why")
    env = _common(ctx, release, environment, comment, "reject")
    now = ctx.now()
    approval = Approval(
        release=release,
        approver=ctx.actor,
        environment=env,
        decision="reject",
        comment=comment,
        at=now,
    )
    ctx.session.add(approval)
    release.state = "rejected"
    release.decided_at = now
    ctx.session.flush()
    audit.record(
        ctx,
        "release.reject",
        "release",
        release.label,
        {"environment": environment, "comment": comment, "content_hash": release.content_hash},
    )
    return approval


def _counting(release: Release, environment: Environment | None) -> list[Approval]:
    return [
        a
        for a in release.approvals
        if a.decision == "approve"
        and a.approver_id != release.author_id
        and (
            a.environment_id is None
            or (environment is not None and a.environment_id == environment.id)
        )
    ]


def distinct_approvers(release: Release, environment: Environment | None) -> set[str]:
    """User names of distinct non-author approvers valid for ``environment`` (global
    approvals count everywhere)."""
    return {a.approver.username for a in _counting(release, environment)}


def approvals_for_manifest(
    release: Release, environment: Environment | None = None
) -> list[dict[str, Any]]:
    """The approvals a bundle for ``environment`` carries: ``[{by, at, comment}]`` in the
    order they were given (``at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), strict-JSON ready."""
    return [
        {"by": a.approver.username, "at": format_at(a.at), "comment": a.comment}
        for a in _counting(release, environment)
    ]


# --- read-only queries for the web UI ---------------------------------------------------


def approval_scopes(
    user: User | None, release: Release, environments: Iterable[Environment]
) -> list[Environment | None]:
    """Where ``user`` could approve (or reject) ``release`` now: None (globally) when a
    global grant allows it, then each of ``environments`` a grant allows, leaving out the
    scopes the user already decided in (all of them once the user decided globally).

    Empty for the release's author (four eyes), for a release that is not submitted or
    approved, and for a user without the approver right. This only decides which buttons a
    page offers; :func:`approve_release` and :func:`reject_release` check for themselves.
    """
    if (
        user is None
        or release.author_id == user.id
        or release.state not in ("submitted", "approved")
    ):
        return []
    decided = {a.environment_id for a in release.approvals if a.approver_id == user.id}
    if None in decided:  # a global decision already counts everywhere
        return []
    scopes: list[Environment | None] = []
    if can(user, "release.approve"):
        scopes.append(None)
    scopes.extend(
        env
        for env in environments
        if can(user, "release.approve", env) and env.id not in decided
    )
    return scopes


def visible_approvals(user: User | None, release: Release) -> list[Approval]:
    """The approvals and rejections of ``release`` that ``user`` may see: global ones, and
    those for environments the user may view (an approval for another environment is that
    environment's data)."""
    return [
        a
        for a in release.approvals
        if a.environment is None or can(user, "view", a.environment)
    ]
