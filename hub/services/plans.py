"""Preflight plans: ask the sites whether they can run a release, changing nothing there.

Issue 14 §3; docs/rollouts.md, "Preflight bundles". :func:`create_plan` writes one signed plan
bundle (docs/bundle-format.md §6.11) of a release for an environment (every agent of it) or
one agent: the release's steps and files, and the signed approvals a deployment would carry
(a site that requires them runs the release's own check scripts only with them); no chain,
policy or secrets. A release not yet approved for the environment travels without its check
scripts and without its http steps (the author's code, and URLs the author chose). Its
sequence is the :class:`~hub.db.PlanBundle` row's id — one counter for the whole hub, so every
agent sees plans in the order they were made, and deployment sequences are never touched. It
is written to ``--out`` (media) or, without it, into the live spool of each target agent
(``<data_dir>/live-outbox/<agent>/``), which the live server offers at the agent's next
connection or push.

Agents answer with a signed result (``plan-passed`` / ``plan-failed``); the importer calls
:func:`record_outcome`, which keeps one :class:`~hub.db.PlanOutcome` per plan and agent, and
then advances the running rollouts of the release (they may wait on the gate below).

**The gate.** :func:`preflight_waits` says, for a release and some agents, what keeps "a plan
passed on every one of them within N hours" from being true; rollouts use it before queueing
each batch (``Strategy.preflight_within_h``, :mod:`hub.services.rollouts`) and channel
promotion rules before promoting (``Channel.preflight_within_h``,
:mod:`hub.services.promotion`). An agent's answer to the *newest* plan it answered counts (a
pass followed by a failure is a failure), and "within N hours" is measured from when that
plan was made (the site checked after that).

This module does not export deployments, import files or run checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bundle.manifest import Target
from bundle.writer import plan_manifest, write_bundle
from hub.db import Agent, Environment, PlanBundle, PlanOutcome, Release
from hub.errors import (
    ConfigError,
    NotEnoughApprovalsError,
    PreflightRequiredError,
    RefusalEvent,
    ValidationError,
)
from hub.faults import crash_point
from hub.services import audit
from hub.services.agents import get_agent
from hub.services.approval_export import bundle_approvals
from hub.services.approval_rules import check_rule
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.export import _check_release_files, _roots_up_to
from hub.services.users import require_ctx

__all__ = ["DEFAULT_EXPIRES", "PLAN_STATUSES", "REFUSED", "PlanReport", "create_plan",
           "deploy_waits", "is_plan", "latest_outcomes", "outcomes_json", "preflight_waits",
           "record_outcome", "require_passed_plan", "without_http_steps"]

#: How long a plan stays valid at the sites by default.
DEFAULT_EXPIRES = timedelta(hours=24)
#: Result statuses of a plan's answer, and the outcome each records.
PLAN_STATUSES = {"plan-passed": "passed", "plan-failed": "failed"}
#: The outcome a plan's refusal records (a signed ``rejected`` result naming the plan: the
#: agent refused it by a rule checked after its signature — expired, a replay).
REFUSED = "refused"
MAX_CHECKS_KEPT = 500  # checks kept from one outcome
LIVE_SPOOL = "live-outbox"  # under the data directory (= hub.live_hub.LiveHub.spool_root)


@dataclass(frozen=True)
class PlanReport:
    """What :func:`create_plan` made: the plan's sequence, its bundle and files, and the
    agents expected to answer."""

    sequence: int
    bundle_id: str
    release: str
    target: str
    files: tuple[Path, ...]
    agents: tuple[str, ...]
    expires_at: datetime
    approvals: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "bundle_id": self.bundle_id,
                "release": self.release, "target": self.target,
                "files": [str(p) for p in self.files], "agents": list(self.agents),
                "expires_at": self.expires_at.isoformat(), "approvals": self.approvals,
                "note": self.note}


def _targets(session: Session, environment: str | None,
             agent_id: str | None) -> tuple[Environment, Agent | None, list[Agent]]:
    if (environment is None) == (agent_id is None):
        raise ValidationError("give --environment or --agent (one of them)")
    if agent_id is not None:
        agent = get_agent(session, agent_id)
        if agent.status != "enrolled":
            raise ValidationError(f"agent {agent_id} is {agent.status}")
        return agent.environment, agent, [agent]
    assert environment is not None
    env = get_environment(session, environment)
    agents = list(session.scalars(select(Agent).where(
        Agent.environment_id == env.id, Agent.status == "enrolled").order_by(Agent.agent_id)))
    if not agents:
        raise ValidationError(f"environment {environment} has no enrolled agent to plan on")
    return env, None, agents


def create_plan(ctx: ServiceContext, release: Release, *, environment: str | None = None,
                agent_id: str | None = None, out_dir: Path | None = None,
                expires_in: timedelta = DEFAULT_EXPIRES) -> PlanReport:
    """Write a plan bundle of ``release`` for ``environment`` or ``agent_id`` into
    ``out_dir`` (media) or, without it, into each target agent's live spool. Audited
    (``plan.create``); needs ``bundle.export`` in the target's environment.

    Raises:
        ValidationError: no or two targets, a revoked agent, an environment without agents,
            the release's stored files changed. NotFoundError: unknown environment/agent.
        PermissionDeniedError. ConfigError: no release key, or no data directory for live.
        BundleError, OSError: the bundle cannot be written (nothing is recorded).
    """
    session = ctx.session
    env, agent, agents = _targets(session, environment, agent_id)
    require_ctx(ctx, "bundle.export", env)
    keys = ctx.keys
    if keys is None or keys.release_key is None:
        raise ConfigError("the hub's release key is not loaded; cannot sign a plan")
    if out_dir is None and keys.data_dir is None:
        raise ConfigError("no --out and no hub data directory for the live spool")
    source = _check_release_files(release.label, release.stored_path, release.content_hash)
    now = ctx.now()
    who = agent.agent_id if agent is not None else env.name
    # Expired (expires_at = created_at) until its files are written: the live server offers
    # unexpired plans, and one committed before its file reached the spool was marked
    # offered with nothing to offer, and never offered again.
    row = PlanBundle(release=release, environment=env, agent=agent, bundle_id="",
                     files=[], created_by=ctx.actor.username if ctx.actor else "system",
                     created_at=now, expires_at=now)
    session.add(row)
    session.flush()  # the id is the plan's sequence
    row.bundle_id = f"plan-{release.product.name}-{release.version}-{who}-{row.id}"[:128]
    created = int(now.timestamp())
    target = (Target(agents=(agent.agent_id,), environment=env.name) if agent is not None
              else Target(environment=env.name))
    manifest, payloads = plan_manifest(
        source, bundle_id=row.bundle_id, issuer=keys.release_key.key_id, target=target,
        root_version=keys.root.version, sequence=row.id, created=created,
        expires=created + int(expires_in.total_seconds()), counter=release.id,
        author=release.author.username)
    # A site that requires signed approvals runs the release's own check scripts only with
    # them (agent.plancheck): carry what a deployment would; without, the plan still checks
    # everything else there, and says so.
    note: str | None = None
    try:
        approvals = bundle_approvals(ctx, release, env, created=created,
                                     expires=created + int(expires_in.total_seconds()))
    except (NotEnoughApprovalsError, ConfigError) as exc:
        approvals, note = [], (f"the plan carries no approvals ({exc}); sites that require "
                               "them report the release's check scripts skipped")
    if approvals:
        manifest = replace(manifest, approvals=tuple(approvals))
    # A check script is the author's code, and an http step's URL the author's choice: they
    # ride along only when a deployment of the release could be queued here too (approved,
    # meeting the environment's rule) — a site whose root delegates no approvals runs
    # whatever check a plan names, and sends the HEAD of an http step's URL (with the
    # site connection's credentials) wherever the step points.
    unapproved = _scripts_withheld(release, env, now)
    if unapproved is not None and any("check" in step for step in manifest.steps):
        manifest = replace(manifest, steps=tuple(
            {k: v for k, v in step.items() if k != "check"} for step in manifest.steps))
        note = "; ".join(filter(None, [note, (
            f"the release's check scripts are left out: {unapproved}; a plan runs no code "
            "a deployment could not — plan again once it is approved")]))
    if unapproved is not None and any(step.get("kind") == "http" for step in manifest.steps):
        steps, left_out = without_http_steps(manifest.steps)
        manifest = replace(manifest, steps=steps)
        note = "; ".join(filter(None, [note, (
            f"the release's http step(s) {', '.join(left_out)} are left out: {unapproved}; a "
            "plan makes no site contact a URL its author chose — plan again once it is "
            "approved")]))
    name = f"{row.bundle_id}.tgb"
    dirs = ([out_dir] if out_dir is not None else
            [keys.data_dir / LIVE_SPOOL / a.agent_id for a in agents])  # type: ignore[operator]
    # The sequence is committed before any file carries it: on SQLite a rolled-back id is
    # handed out again, so a process killed after writing the file would leave a plan on the
    # media (or in the live spool) whose sequence the next plan reuses, and the site would
    # refuse that next plan as a replay. Killed from here on, the row stays, with no files.
    session.commit()
    written: list[Path] = []
    try:
        first = dirs[0]
        first.mkdir(parents=True, exist_ok=True)
        bundle = write_bundle(first / name, manifest, payloads, [keys.release_key],
                              roots=_roots_up_to(keys.root_updates, keys.root.version))
        written.extend(bundle.paths)
        for other in dirs[1:]:  # the same bytes into each agent's spool
            other.mkdir(parents=True, exist_ok=True)
            tmp = other / f".{name}.tmp"
            shutil.copyfile(bundle.paths[0], tmp)
            os.replace(tmp, other / name)
            written.append(other / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        _forget_unwritten(session, row)
        raise
    crash_point("hub.plan-written")
    row.files = [str(p) for p in written]
    row.expires_at = now + expires_in  # offered from the commit below
    audit.record(ctx, "plan.create", "release", str(release.id), {
        "release": release.label, "plan": row.id, "bundle_id": row.bundle_id,
        "environment": env.name, "agent": agent.agent_id if agent else None,
        "agents": [a.agent_id for a in agents], "files": row.files,
        "expires_at": row.expires_at.isoformat()})
    session.commit()
    return PlanReport(row.id, row.bundle_id, release.label,
                      f"agent {who}" if agent is not None else f"environment {who}",
                      tuple(written), tuple(a.agent_id for a in agents), row.expires_at,
                      len(approvals), note)


def _forget_unwritten(session: Session, row: PlanBundle) -> None:
    """Remove the committed row of a plan whose files could not be written (they were
    removed, so its sequence may be handed out again). Best effort: the error that got us
    here is the one to report."""
    try:
        session.rollback()
        session.delete(row)
        session.commit()
    except SQLAlchemyError:
        session.rollback()


def without_http_steps(steps: Sequence[Mapping[str, Any]]
                       ) -> tuple[tuple[dict[str, Any], ...], list[str]]:
    """``steps`` without their ``http`` steps, and the names left out. A step that ran
    ``after`` a left-out step runs after what that step ran after (the graph stays valid,
    bundle.dag: every name a step of the plan, no cycle); a step without ``after`` follows
    the step before it, as always."""
    dropped = {str(s.get("name")).casefold(): list(s.get("after", ()))
               for s in steps if s.get("kind") == "http"}

    def expand(names: Sequence[Any], seen: set[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            key = str(name).casefold()
            if key not in dropped:
                out.append(str(name))
            elif key not in seen:
                seen.add(key)
                out.extend(expand(dropped[key], seen))
        return out

    kept = []
    for step in steps:
        if step.get("kind") == "http":
            continue
        copy = dict(step)
        if "after" in copy:
            unique: dict[str, str] = {}  # step names ignore letter case (bundle.steps)
            for name in expand(copy["after"], set()):
                unique.setdefault(name.casefold(), name)
            copy["after"] = list(unique.values())
        kept.append(copy)
    return tuple(kept), [str(s.get("name")) for s in steps if s.get("kind") == "http"]


def _scripts_withheld(release: Release, env: Environment, now: datetime) -> str | None:
    """Why ``release``'s own check scripts and http steps may not travel in a plan for
    ``env`` (it is not approved, or short of the environment's approval rule), or None."""
    if release.state != "approved":
        return f"{release.label} is {release.state}"
    check = check_rule(release, env, now=now, inherited=False)
    return None if check.met else check.summary()


def is_plan(session: Session, bundle_id: str) -> bool:
    """Whether ``bundle_id`` names a plan this hub made."""
    return session.scalar(select(PlanBundle.id).where(PlanBundle.bundle_id == bundle_id)) \
        is not None


def record_outcome(ctx: ServiceContext, agent: Agent, bundle_id: str, status: str,
                   body: Mapping[str, Any], result_seq: int) -> str | None:
    """Keep ``agent``'s signed answer to plan ``bundle_id`` (called by the result importer,
    in its transaction): ``plan-passed``, ``plan-failed`` or ``rejected`` (outcome
    ``refused``, its reason the summary). A refusal never replaces the answer the agent gave
    after it ran that plan (a copy of it delivered again is refused as a replay). Returns a
    flag for the import when the plan is not this hub's or not addressed to the agent, or a
    refusal is not kept (the result is still imported), else None."""
    session = ctx.session
    plan = session.scalar(select(PlanBundle).where(PlanBundle.bundle_id == bundle_id))
    if plan is None:
        return f"plan: bundle {bundle_id} is not a plan this hub made"
    if (plan.agent_id is not None and plan.agent_id != agent.id) or \
            plan.environment_id != agent.environment_id:
        return f"plan: plan {plan.id} was not addressed to agent {agent.agent_id}"
    raw = body.get("plan")
    checks = [c for c in (raw.get("checks") if isinstance(raw, Mapping) else None) or []
              if isinstance(c, Mapping)][:MAX_CHECKS_KEPT]
    row = session.scalar(select(PlanOutcome).where(PlanOutcome.plan_id == plan.id,
                                                   PlanOutcome.agent_id == agent.id))
    if status == "rejected" and row is not None and row.status != REFUSED:
        return (f"plan: agent {agent.agent_id} refused plan {plan.id} again after it answered "
                f"{row.status} ({str(body.get('summary', ''))[:300]}); the answer is kept")
    if row is None:
        row = PlanOutcome(plan=plan, release_id=plan.release_id, agent=agent)
        session.add(row)
    row.status = REFUSED if status == "rejected" else PLAN_STATUSES[status]
    row.summary = str(body.get("summary", ""))[:4000]
    row.checks = [{k: (str(c.get(k))[:2000] if c.get(k) is not None else None)
                   for k in ("check", "status", "summary", "step", "target")} for c in checks]
    row.result_seq = result_seq
    row.received_at = ctx.now()
    session.flush()
    audit.record(ctx, "plan.outcome", "release", str(plan.release_id), {
        "plan": plan.id, "agent": agent.agent_id, "status": row.status,
        "failed": [c["summary"] for c in row.checks if c["status"] == "failed"][:20]})
    from hub.services.promotion import advance_release
    from hub.services.rollouts import after_plan

    after_plan(ctx, plan.release)
    advance_release(ctx, plan.release)  # planned deployments may wait for the policy
    return None


def latest_outcomes(session: Session, release: Release) -> dict[int, PlanOutcome]:
    """Each agent's answer to the newest plan of ``release`` it answered (by agent row id).
    Newest by plan, not by arrival: media may bring an old plan's answer last."""
    rows = session.scalars(select(PlanOutcome).where(PlanOutcome.release_id == release.id)
                           .order_by(PlanOutcome.plan_id, PlanOutcome.id))
    return {r.agent_id: r for r in rows}


def preflight_waits(session: Session, release: Release, agents: Sequence[Agent],
                    within: timedelta, now: datetime) -> list[str]:
    """Why "a plan of ``release`` passed on every one of ``agents`` within ``within``" is not
    true at ``now`` (one sentence per agent; empty: the gate is open)."""
    latest = latest_outcomes(session, release)
    hours = f"{within.total_seconds() / 3600:g} h"
    # What a plan made before the release was approved leaves out (and a site that requires
    # approvals skips without them): the release's own check scripts, and the HEAD of its
    # http steps' URLs. A pass without them is not a preflight yet.
    steps = [step for step in release.steps or [] if isinstance(step, Mapping)]
    needed = [(check, count, what) for check, count, what in (
        ("check-script", sum(isinstance(s.get("check"), str) for s in steps),
         "running the release's {n} check script(s)"),
        ("http", sum(s.get("kind") == "http" for s in steps),
         "asking the servers of the release's {n} http step(s)")) if count]
    out = []
    for agent in agents:
        found = latest.get(agent.id)
        missing = [what.format(n=count) for check, count, what in needed if found and sum(
            c.get("check") == check and c.get("status") == "passed"
            for c in found.checks or []) < count]
        if found is None:
            out.append(f"{agent.agent_id}: no preflight plan of {release.label} has been "
                       f"answered (tiangong hub releases plan {release.product.name} "
                       f"{release.version} --agent {agent.agent_id})")
        elif found.status != "passed":  # failed, or refused by the agent
            out.append(f"{agent.agent_id}: preflight plan {found.plan_id} {found.status} at "
                       f"{found.received_at:%Y-%m-%d %H:%M} UTC: {found.summary[:300]}")
        elif missing:
            out.append(f"{agent.agent_id}: preflight plan {found.plan_id} passed without "
                       f"{' or '.join(missing)} (it was made before {release.label} was "
                       "approved, or without the approvals the site requires); plan again")
        elif found.plan.created_at < now - within:
            # Measured from when the plan was made: the site checked after that, so a plan
            # answered late by media never counts as fresher than it is.
            out.append(f"{agent.agent_id}: preflight plan {found.plan_id} passed, but it was "
                       f"made at {found.plan.created_at:%Y-%m-%d %H:%M} UTC, more than "
                       f"{hours} ago; plan again")
    return out


def deploy_waits(session: Session, release: Release, env: Environment, agents: Sequence[Agent],
                 now: datetime, *, within_h: int | None = None) -> list[str]:
    """The one preflight gate of queueing ``release`` for ``agents`` of ``env``, whoever
    queues it (``deployments queue``, the web Deploy form, the API, a rollout's batch, a
    channel's planned deployment, a lost bundle queued again): the environment's policy
    (``Environment.preflight_within_h``) and a rollout's own ``within_h`` — the stricter
    counts. What keeps it closed, one sentence per agent (empty: open, or no gate)."""
    hours = [h for h in (env.preflight_within_h, within_h) if h]
    if not hours:
        return []
    if not agents:
        return [f"environment {env.name} has no enrolled agent, so no preflight plan of "
                f"{release.label} can pass there"]
    return preflight_waits(session, release, agents, timedelta(hours=min(hours)), now)


def require_passed_plan(ctx: ServiceContext, release: Release, env: Environment,
                        agents: Sequence[Agent]) -> None:
    """Refuse to queue ``release`` for ``agents`` of ``env`` while its preflight policy is
    not met (:func:`deploy_waits`). The refusal names the release, each agent and what is
    missing, and is audited (``deployment.refused``) although nothing is queued.

    Raises:
        PreflightRequiredError.
    """
    waits = deploy_waits(ctx.session, release, env, agents, ctx.now())
    if not waits:
        return
    assert env.preflight_within_h
    message = (f"environment {env.name} requires a preflight plan of {release.label} passed "
               f"on every target agent within {env.preflight_within_h} h: "
               f"{'; '.join(waits)}; nothing queued")
    raise PreflightRequiredError(message, audit=RefusalEvent(
        "deployment.refused", "release", str(release.id),
        {"release": release.label, "content_hash": release.content_hash,
         "environment": env.name, "agents": [a.agent_id for a in agents],
         "rule": f"preflight within {env.preflight_within_h} h", "missing": waits[:50]}))


def outcomes_json(session: Session, release: Release) -> list[dict[str, Any]]:
    """The plans of ``release`` with every agent's answer (newest plan first), for the
    release page and ``--json``."""
    plans = session.scalars(select(PlanBundle).where(PlanBundle.release_id == release.id)
                            .order_by(PlanBundle.id.desc()))
    out = []
    for plan in plans:
        answers = session.scalars(select(PlanOutcome).where(PlanOutcome.plan_id == plan.id)
                                  .order_by(PlanOutcome.agent_id))
        out.append({
            "plan": plan.id, "bundle_id": plan.bundle_id, "environment": plan.environment.name,
            "agent": plan.agent.agent_id if plan.agent else None,
            "created_by": plan.created_by, "created_at": plan.created_at.isoformat(),
            "expires_at": plan.expires_at.isoformat(),
            "outcomes": [{"agent": o.agent.agent_id, "status": o.status, "summary": o.summary,
                          "received_at": o.received_at.isoformat(), "checks": o.checks}
                         for o in answers]})
    return out
