"""Rollback of a deployment: a new release that runs the undo data its agent recorded
(docs/rollouts.md, "Rollback").

:func:`create_rollback` builds a release of the same product, version
``<version>-rollback-<deployment id>``, whose steps reverse the deployment's bundle, last step
first:

* a ``k8s`` or ``file`` step becomes an ``undo`` step naming the bundle id and step number
  (the agent puts back what it recorded before the step changed anything);
* a ``sql`` step with ``down`` becomes an ``undo`` step carrying the down script, a ``shell``
  step with ``rollback`` one carrying the rollback script (run only where the step ran);
* a step that cannot be undone (sql without ``down``, shell without ``rollback``, an agent
  upgrade) is named in the release's description and in the audit event; a sql or shell one
  also gets an ``undo`` step without a script, which fails where the step ran saying it
  cannot be undone, so the rollback's result names it too.

Every undo step has ``on_failure = "continue"``: one step that cannot be put back does not
stop the others. The release is created and submitted like any release; it is approved,
queued and exported through the usual checks. Because an agent undoes only steps it recorded,
queueing it to the whole environment is safe: other agents report "nothing to undo". The
release records the deployment it rolls back (``Release.rollback_of``, one each).

**Automatically** (:func:`roll_back_automatically`, a rollout's ``auto_rollback``): the
approvals of a release cover its own undo — its approvers saw the release page, which marks
what cannot be undone, the ``down``/``rollback`` scripts are part of what they approved, and
the rollout's starter chose the automatic rollback. So the rollback release is recorded
approved **by inheritance** (``Release.approvals_from``; event
``release.approve_inherited`` naming the original release, its approvals and the rollout),
and queued for the one agent that ran the deployment; the live server pushes it, a media
export carries it. Windows and freezes hold it like any deployment. Its bundle carries the
original release's approvals, which a site counts only for an undo-only bundle of a bundle
it ran (agent.approvalcheck). All of it happens in the caller's transaction: a hub killed
in between (crash point ``hub.rollback-created``) leaves nothing, and the next pass (the
import done again, the scheduler's tick) does it once.

This module deliberately does not choose "the release that was there before" (deploy that
release again for that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bundle.steps import undo_support
from hub.db import Deployment, Release, Rollout
from hub.errors import ConflictError, InvalidStateError, ValidationError
from hub.faults import crash_point
from hub.services import audit
from hub.services.approval_rules import check_rule, counted_approvals
from hub.services.context import ServiceContext
from hub.services.deployments import get_deployment
from hub.services.generated import create_generated_release
from hub.services.releases import submit_release

__all__ = ["RollbackPlan", "create_rollback", "plan_rollback", "roll_back_automatically",
           "rollback_of"]

MAX_REASON_CHARS = 1000  # characters
_RAN = ("succeeded", "failed", "interrupted")


@dataclass
class RollbackPlan:
    """The steps (as ``release.toml`` tables), the release files they need, and what cannot
    be undone (``(number, name, why)``; ``ran`` says whether the result says it ran)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    not_undone: list[dict[str, Any]] = field(default_factory=list)


def plan_rollback(steps: Sequence[Mapping[str, Any]], bundle_id: str,
                  results: Sequence[Mapping[str, Any]] = ()) -> RollbackPlan:
    """Plan the undo steps for ``steps`` (a release's normalized steps) run as ``bundle_id``;
    ``results`` are the step results the deployment's result reported (may be empty)."""
    status = {int(r["index"]): str(r.get("status")) for r in results
              if isinstance(r.get("index"), int)}
    plan = RollbackPlan()
    for number in range(len(steps), 0, -1):
        step = steps[number - 1]
        ok, why = undo_support(step)
        kind = step["kind"]
        raw: dict[str, Any] = {
            "name": f"undo {number}: {step['name']}"[:100].rstrip(),
            "kind": "undo", "bundle": bundle_id, "step": number,
            "timeout": int(step["timeout_s"]), "on_failure": "continue",
        }
        if not ok:
            if not status or status.get(number) in _RAN:
                plan.not_undone.append({"step": number, "name": step["name"], "why": why,
                                        "ran": status.get(number) in _RAN})
                if kind in ("sql", "shell"):  # the agent says so where the step ran
                    plan.steps.append(raw)
            continue
        if kind in ("k8s", "sql"):
            raw["connection"] = step["connection"]
        if kind == "sql":
            raw.update(engine=step["engine"], script=step["down"])
        if kind == "shell":
            raw.update(script=step["rollback"], interpreter=step["interpreter"],
                       env=step["env"], args=step["args"], secrets_via=step["secrets_via"])
        if kind in ("sql", "shell"):
            raw["secrets"] = list(step["secrets"])
            if raw["script"] not in plan.files:
                plan.files.append(raw["script"])
        plan.steps.append(raw)
    return plan


def _version(release: Release, deployment: Deployment) -> str:
    suffix = f"-rollback-{deployment.id}"
    return release.version[: 64 - len(suffix)] + suffix


def create_rollback(ctx: ServiceContext, deployment_id: int,
                    reason: str) -> tuple[Release, RollbackPlan]:
    """Create and submit the rollback release of deployment ``deployment_id``.

    Raises:
        NotFoundError (no such deployment), InvalidStateError (never exported, so nothing ran),
        ValidationError (no reason, nothing can be undone, the release files are not stored),
        ConflictError (a rollback of it exists), PermissionDeniedError.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise ValidationError("a rollback needs a reason (--reason): it is audited")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is {len(reason)} characters; the limit is "
                              f"{MAX_REASON_CHARS}")
    dep = get_deployment(ctx.session, deployment_id)
    made = rollback_of(ctx, dep)
    if made is not None:
        raise ConflictError(f"deployment {dep.id} ({dep.release.label}) has a rollback "
                            f"release already: {made.label} ({made.state})")
    if dep.bundle_id is None:
        raise InvalidStateError(f"deployment {dep.id} ({dep.release.label}) was never exported, "
                                "so nothing ran at a site; cancel it instead of rolling back")
    release = dep.release
    results = list((dep.result_summary or {}).get("steps") or [])
    plan = plan_rollback(release.steps, dep.bundle_id, results)
    if len(plan.steps) == len([n for n in plan.not_undone
                               if release.steps[n["step"] - 1]["kind"] in ("sql", "shell")]):
        names = ", ".join(f"step {n['step']} ({n['name']}): {n['why']}" for n in plan.not_undone)
        raise ValidationError(f"deployment {dep.id} ({release.label}): none of its steps can "
                              f"be undone: {names}")
    stored = Path(release.stored_path) if release.stored_path else None
    if stored is None or not stored.is_dir():
        raise ValidationError(f"release {release.label}: its files are not stored on the hub, "
                              "so its down and rollback scripts cannot be shipped")
    if ctx.releases_dir is None:
        # The live server's and the scheduler's contexts store no files of their own; a
        # rollback release goes where the release it undoes is stored (releases/<hash>/).
        ctx = dataclasses.replace(ctx, releases_dir=stored.parent)
    where = f"{dep.environment.name}" + (f"/{dep.agent.agent_id}" if dep.agent else "")
    lines = [f"Rollback of deployment {dep.id} ({release.label}, bundle {dep.bundle_id}, "
             f"{where}): {reason}"]
    for item in plan.not_undone:
        lines.append(f"Not undone: step {item['step']} ({item['name']}): {item['why']}")
    rollback = create_generated_release(
        ctx, release.product.name, _version(release, dep), "\n".join(lines)[:4096],
        plan.steps, {name: stored / name for name in plan.files},
        source=f"rollback of deployment {dep.id}")
    rollback.rollback_of_id = dep.id
    submit_release(ctx, rollback)
    audit.record(ctx, "deployment.rollback", "deployment", str(dep.id), {
        "reason": reason, "release": release.label, "bundle_id": dep.bundle_id,
        "rollback_release": rollback.label, "content_hash": rollback.content_hash,
        "undo_steps": len(plan.steps), "not_undone": plan.not_undone})
    return rollback, plan


def rollback_of(ctx: ServiceContext, deployment: Deployment) -> Release | None:
    """The rollback release made for ``deployment``, if any."""
    release: Release | None = ctx.session.scalar(
        select(Release).where(Release.rollback_of_id == deployment.id))
    return release


def roll_back_automatically(author: ServiceContext, engine: ServiceContext,
                            deployment: Deployment, rollout: Rollout
                            ) -> tuple[Release, Deployment | None, str]:
    """A rollout's automatic rollback of failed ``deployment``: its rollback release
    (created and submitted by ``author``, the rollout's starter), approved by inheritance
    and queued for the deployment's agent by ``engine``. When the original release's
    approvals no longer meet the hub's rule for the environment, the release stays
    submitted for people to approve (the deployment is None). Returns what it did, in words.

    Raises:
        HubError (nothing done): see :func:`create_rollback`.
    """
    original, env = deployment.release, deployment.environment
    now = engine.now()
    check = check_rule(original, env, now=now)
    rollback, plan = create_rollback(
        author, deployment.id, f"rollout {rollout.id}: automatic rollback after its "
        f"deployment {deployment.id} {deployment.state}")
    if not check.met:
        return rollback, None, (f"rollback release {rollback.label} submitted, not queued: the "
                                f"approvals of {original.label} no longer meet the rule of "
                                f"{env.name} ({check.summary()}); approve and queue it")
    crash_point("hub.rollback-created")
    rollback.approvals_from = original
    rollback.state = "approved"
    rollback.decided_at = now
    engine.session.flush()
    audit.record(engine, "release.approve_inherited", "release", rollback.label, {
        "content_hash": rollback.content_hash, "inherited_from": original.label,
        "inherited_content_hash": original.content_hash, "rollout": rollout.id,
        "deployment": deployment.id, "environment": env.name,
        "approvals": [{"approver": a.approver.username, "at": a.at.isoformat(),
                       "environment": a.environment.name if a.environment else None,
                       "signed_by_key": a.key_id}
                      for a in counted_approvals(original, env, now)]})
    queued = Deployment(release=rollback, environment=env, agent=deployment.agent,
                        state="queued", queued_by=f"rollout:{rollout.id}", queued_at=now,
                        updated_at=now)
    engine.session.add(queued)
    engine.session.flush()
    audit.record(engine, "deployment.queue", "deployment", str(queued.id), {
        "release": rollback.label, "content_hash": rollback.content_hash,
        "environment": env.name,
        "agent": deployment.agent.agent_id if deployment.agent else None,
        "approvers": sorted(name for name, _ in check.approvers),
        "rollback_of": deployment.id, "rollout": rollout.id})
    where = deployment.agent.agent_id if deployment.agent else env.name
    return rollback, queued, (f"rollback release {rollback.label} ({len(plan.steps)} undo "
                              f"step(s)) approved by inheritance from {original.label} and "
                              f"queued for {where} (deployment {queued.id})")
