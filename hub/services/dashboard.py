"""The dashboard's read-only queries: what is deployed where, what waits for the user's
approval, which agents have gone quiet and which deployments failed.

Everything here is seen through the acting user's grants: only environments the user may
``view`` appear, so the dashboard never shows another environment's data. Products and
releases belong to no environment and are listed for anyone who may read them.

This module changes nothing and writes no audit event; the pages that act call the other
services.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Agent, Deployment, Environment, Product, Release, User
from hub.services.approval_rules import check_rule
from hub.services.approvals import approval_scopes
from hub.services.context import ServiceContext
from hub.services.environments import visible_environments
from hub.services.presence import agent_presence
from hub.services.releases import can_read, list_products
from hub.services.users import can

__all__ = [
    "MAX_FAILED_SHOWN",
    "Dashboard",
    "DeployedVersion",
    "PendingApproval",
    "build_dashboard",
    "can_approve_somewhere",
]

#: Failed deployments listed, newest first.
MAX_FAILED_SHOWN = 20  # deployments
FAILED_STATES = ("failed", "rejected", "interrupted")


@dataclass(frozen=True)
class DeployedVersion:
    """The newest succeeded deployment of a product in an environment.

    ``versions`` holds every version the environment's agents last succeeded with, newest
    first, when they differ (an agent that has not run the newest one yet).
    """

    version: str
    finished_at: datetime | None
    deployment_id: int
    versions: tuple[str, ...]


@dataclass(frozen=True)
class PendingApproval:
    """A release the user could approve now, and the environments still short of
    approvals (names) that the user may approve for."""

    release: Release
    short_in: tuple[str, ...]


@dataclass(frozen=True)
class Dashboard:
    environments: list[Environment]
    products: list[Product]
    deployed: dict[tuple[str, str], DeployedVersion]  # (environment, product) ->
    pending: list[PendingApproval]
    offline_agents: list[Agent]
    failed: list[Deployment]
    now: datetime


def _deployed(session: Session, envs: list[Environment]) -> dict[tuple[str, str], DeployedVersion]:
    ids = [env.id for env in envs]
    if not ids:
        return {}
    rows = session.scalars(
        select(Deployment)
        .where(Deployment.state == "succeeded", Deployment.environment_id.in_(ids))
        .order_by(Deployment.id)
    )
    # newest succeeded deployment per (environment, product, agent); later ids win
    per_agent: dict[tuple[str, str, int | None], Deployment] = {}
    for dep in rows:
        key = (dep.environment.name, dep.release.product.name, dep.agent_id)
        old = per_agent.get(key)
        if old is None or _finished(dep) >= _finished(old):
            per_agent[key] = dep
    grouped: dict[tuple[str, str], list[Deployment]] = {}
    for (env, product, _agent), dep in per_agent.items():
        grouped.setdefault((env, product), []).append(dep)
    result: dict[tuple[str, str], DeployedVersion] = {}
    for cell, deps in grouped.items():
        deps.sort(key=lambda d: (_finished(d), d.id), reverse=True)
        versions = tuple(dict.fromkeys(d.release.version for d in deps))
        newest = deps[0]
        result[cell] = DeployedVersion(
            newest.release.version, newest.finished_at, newest.id, versions
        )
    return result


def _finished(dep: Deployment) -> datetime:
    return dep.finished_at or dep.updated_at


def _pending(session: Session, user: User | None, envs: list[Environment]) -> list[PendingApproval]:
    if user is None or not can_approve_somewhere(user, envs):
        return []
    releases = session.scalars(
        select(Release)
        .where(Release.state.in_(("submitted", "approved")))
        .order_by(Release.submitted_at, Release.id)
    )
    pending = []
    for release in releases:
        scopes = approval_scopes(user, release, envs)
        if not scopes:
            continue
        # Environments the user may approve for that still lack approvals; a global
        # approval counts in every visible environment.
        targets = envs if None in scopes else [s for s in scopes if s is not None]
        short = tuple(
            env.name
            for env in targets
            if not check_rule(release, env).met
        )
        if release.state == "submitted" or short:
            pending.append(PendingApproval(release, short))
    return pending


def can_approve_somewhere(user: User, envs: list[Environment]) -> bool:
    return can(user, "release.approve") or any(can(user, "release.approve", e) for e in envs)


def _offline(session: Session, envs: list[Environment], now: datetime) -> list[Agent]:
    """Enrolled agents that are not online (:mod:`hub.services.presence`: seen within the
    online window), never-connected ones included. Agents reached only by file drop are
    seen when their results are imported, so they show up here between visits."""
    ids = [env.id for env in envs]
    if not ids:
        return []
    agents = session.scalars(
        select(Agent)
        .where(Agent.status == "enrolled", Agent.environment_id.in_(ids))
        .order_by(Agent.agent_id)
    )
    return [a for a in agents if not agent_presence(a, now).online]


def _failed(session: Session, envs: list[Environment]) -> list[Deployment]:
    """Failed, rejected or interrupted deployments not since retried with success (same
    release, environment and agent), newest first."""
    ids = [env.id for env in envs]
    if not ids:
        return []
    deps = list(
        session.scalars(
            select(Deployment)
            .where(Deployment.environment_id.in_(ids))
            .order_by(Deployment.id.desc())
        )
    )
    succeeded = {
        (d.release_id, d.environment_id, d.agent_id): d.id for d in deps if d.state == "succeeded"
    }
    failed = [
        d
        for d in deps
        if d.state in FAILED_STATES
        and succeeded.get((d.release_id, d.environment_id, d.agent_id), 0) < d.id
    ]
    return failed[:MAX_FAILED_SHOWN]


def build_dashboard(ctx: ServiceContext) -> Dashboard:
    """Everything the dashboard shows, for ``ctx.actor``."""
    envs = visible_environments(ctx.session, ctx.actor)
    now = ctx.now()
    return Dashboard(
        environments=envs,
        products=list_products(ctx.session) if can_read(ctx.actor) else [],
        deployed=_deployed(ctx.session, envs),
        pending=_pending(ctx.session, ctx.actor, envs),
        offline_agents=_offline(ctx.session, envs, now),
        failed=_failed(ctx.session, envs),
        now=now,
    )
