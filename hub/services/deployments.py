"""Deployments: queue an approved release for an environment; move it through its states.

**Model.** Queueing creates one :class:`~hub.db.Deployment` per *enrolled* agent of the
environment (revoked agents get nothing). An environment with no agent yet gets one
deployment with ``agent_id`` NULL, addressed to the environment as a whole; export may
address its bundle to the environment (target ``env:<name>``). Each deployment later gets
its own bundle, sequence and result.

**States**::

    planned ──► queued (a channel subscription planned it; :mod:`hub.services.promotion`
       │                queues it once its approvals are met)
       └──► cancelled ◄── queued (a recall of the release from the channel)

    queued ──► exporting ──► exported ──► delivered ──► running ──► succeeded | failed |
       │           │              │             │                   interrupted
       │           └──────────────┴─────────────┴──► rejected (the agent refused the
       │                                             bundle); a result may skip states
       └──► delivered (live channel) ──► …

    interrupted | failed | succeeded ──► retried ──► succeeded | failed | interrupted
                                                      (tiangong agent retry)
    exported ──► lost (an operator declared the bundle lost, ``hub.services.chain``; a
                 result that arrives for it anyway still moves it on — except the agent's
                 refusal of the lost bundle, which only joins its history:
                 :func:`record_refused_lost`)

``exporting``: an export claimed the deployment (``claimed_by``) and recorded the bundle it
is writing (:attr:`~hub.db.Deployment.export_intent`: sequence, bundle id, times, file) —
committed *before* the file gets its final name, so a result for it is always accepted
(:mod:`hub.services.export_claims`). ``succeeded``, ``failed``, ``rejected``,
``interrupted`` and ``lost`` are final for queueing (an operator may queue the release
again); a later result of a ``tiangong agent retry`` still moves a finished deployment on,
through ``retried`` (:func:`record_result`), and every result is one
:class:`~hub.db.DeploymentAttempt` (attempt number, outcome, times): the history.

**Sequences.** :func:`allocate_sequence` hands out the next bundle sequence for a target
under a row lock (``UPDATE … SET next_sequence = next_sequence + 1`` first), so two
concurrent exports never share one; export claims a deployment, calls it, records the
bundle it will write, then calls :func:`mark_exported` once the file is on the media.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BindParameter, bindparam, func, select, update
from sqlalchemy.orm import Session

from hub.db import (
    Agent,
    ChannelEntry,
    Deployment,
    DeploymentAttempt,
    Environment,
    Release,
    SequenceCounter,
)
from hub.errors import (
    ConflictError,
    InvalidStateError,
    NotEnoughApprovalsError,
    NotFoundError,
    ValidationError,
)
from hub.services import audit
from hub.services.agents import agent_target
from hub.services.approval_rules import Rule, check_rule
from hub.services.context import ServiceContext
from hub.services.environments import environment_id, get_environment, list_environments
from hub.services.export_claims import show_loaded
from hub.services.notifications import enqueue
from hub.services.users import can, require, require_ctx

__all__ = [
    "FINAL_STATES",
    "REFUSED_AS_LOST",
    "RETRY_FROM",
    "TRANSITIONS",
    "allocate_sequence",
    "allocate_sequences",
    "attempt_outcome",
    "deployment_target",
    "get_deployment",
    "get_visible_deployment",
    "list_deployments",
    "mark_delivered_many",
    "mark_exported",
    "mark_exported_many",
    "pending_exports",
    "queue_deployment",
    "record_refused_lost",
    "record_result",
    "transition",
    "visible_deployments",
]

FINAL_STATES = frozenset(
    {"succeeded", "failed", "rejected", "interrupted", "lost", "cancelled"})
RETRY_FROM = frozenset({"interrupted", "failed", "succeeded"})  # an agent retry moves on
TRANSITIONS: dict[str, frozenset[str]] = {
    # planned: a channel subscription created it; it waits until it may be exported
    # (hub.services.promotion), or a recall cancels it.
    "planned": frozenset({"queued", "cancelled"}),
    "queued": frozenset({"exporting", "exported", "delivered", "cancelled"}),
    "exporting": frozenset(
        {"exported", "delivered", "running", "succeeded", "failed", "rejected", "interrupted",
         "lost"}
    ),
    "exported": frozenset(
        {"delivered", "running", "succeeded", "failed", "rejected", "interrupted", "lost"}
    ),
    "lost": frozenset({"delivered", "running", "succeeded", "failed", "rejected", "interrupted"}),
    "delivered": frozenset({"running", "succeeded", "failed", "rejected", "interrupted"}),
    "running": frozenset({"succeeded", "failed", "interrupted"}),
    "succeeded": frozenset({"retried"}),
    "failed": frozenset({"retried"}),
    "rejected": frozenset(),
    "interrupted": frozenset({"retried"}),
    "retried": frozenset({"running", "succeeded", "failed", "interrupted"}),
    "cancelled": frozenset(),
}
_TIMESTAMP = {
    "exported": "exported_at",
    "delivered": "delivered_at",
    "running": "started_at",
    "succeeded": "finished_at",
    "failed": "finished_at",
    "rejected": "finished_at",
    "interrupted": "finished_at",
    "lost": "finished_at",
    "cancelled": "finished_at",
}


def deployment_target(deployment: Deployment) -> str:
    """``agent:<agent_id>`` or, for an environment-wide deployment, ``env:<name>``."""
    if deployment.agent is not None:
        return agent_target(deployment.agent.agent_id)
    return f"env:{deployment.environment.name}"


def get_deployment(session: Session, deployment_id: int) -> Deployment:
    """Raises NotFoundError."""
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFoundError(f"deployment {deployment_id} does not exist")
    return dep


def list_deployments(
    session: Session, environment: str | None = None, state: str | None = None
) -> list[Deployment]:
    query = select(Deployment).order_by(Deployment.id)
    if environment is not None:
        query = query.where(Deployment.environment_id == get_environment(session, environment).id)
    if state is not None:
        query = query.where(Deployment.state == state)
    return list(session.scalars(query))


def visible_deployments(
    ctx: ServiceContext,
    environment: str | None = None,
    state: str | None = None,
    *,
    limit: int | None = None,
) -> list[Deployment]:
    """Deployments the actor may view (``view`` in their environment), newest first,
    optionally of one environment and/or state, at most ``limit``.

    Raises:
        NotFoundError (unknown environment), PermissionDeniedError (may not view the
        environment asked for).
    """
    query = select(Deployment).order_by(Deployment.id.desc())
    if environment is not None:
        env = get_environment(ctx.session, environment)
        require(ctx.actor, "view", env)
        query = query.where(Deployment.environment_id == env.id)
    else:
        envs = [e.id for e in list_environments(ctx.session) if can(ctx.actor, "view", e)]
        query = query.where(Deployment.environment_id.in_(envs))
    if state is not None:
        query = query.where(Deployment.state == state)
    if limit is not None:
        query = query.limit(limit)
    return list(ctx.session.scalars(query))


def get_visible_deployment(ctx: ServiceContext, deployment_id: int) -> Deployment:
    """:func:`get_deployment` for an actor who may view its environment.

    Raises:
        NotFoundError, PermissionDeniedError.
    """
    dep = get_deployment(ctx.session, deployment_id)
    require(ctx.actor, "view", dep.environment)
    return dep


def pending_exports(
    session: Session, environment: str | Environment, agent_id: str | None = None,
    *, agent_ids: Collection[str] | None = None,
) -> list[Deployment]:
    """Queued deployments of ``environment`` (its name, or the environment already loaded;
    optionally for one agent, or for the agents ``agent_ids``) — export's work.

    One query, filtered by the database: the live server calls this for every connected
    agent, and filtering in Python cost a lazy load per queued deployment (N² with N agents).
    """
    env_id = environment_id(session, environment)
    if agent_ids is not None and agent_id is None:  # the live server's, once a call: made once
        return list(session.scalars(_QUEUED_OF_AGENTS, {"env_id": env_id,
                                                        "agent_ids": sorted(agent_ids)}))
    query = (
        select(Deployment)
        .where(Deployment.environment_id == env_id, Deployment.state == "queued")
        .order_by(Deployment.id)
    )
    if agent_id is not None:
        query = query.join(Agent, Deployment.agent_id == Agent.id).where(
            Agent.agent_id == agent_id)
    return list(session.scalars(query))


#: pending_exports for the agents ``agent_ids`` of the environment ``env_id``
_QUEUED_OF_AGENTS = (
    select(Deployment)
    .join(Agent, Deployment.agent_id == Agent.id)
    .where(Deployment.environment_id == bindparam("env_id"), Deployment.state == "queued",
           Agent.agent_id.in_(bindparam("agent_ids", expanding=True)))
    .order_by(Deployment.id)
)


def _refuse_recalled(session: Session, release: Release) -> None:
    """A release recalled from any channel is never queued again, by hand or by a rollout
    (issue 13 §1): the operator is told who recalled it, from where and why."""
    recalled = session.scalars(
        select(ChannelEntry)
        .where(ChannelEntry.release_id == release.id, ChannelEntry.recalled_at.is_not(None))
        .order_by(ChannelEntry.recalled_at)
    ).first()
    if recalled is not None:
        raise InvalidStateError(
            f"release {release.label} was recalled from {recalled.channel.name} by "
            f"{recalled.recalled_by}: {recalled.recall_reason}; a recalled release is not "
            "deployed again (ship a new version)"
        )


def queue_deployment(ctx: ServiceContext, release: Release, environment: str,
                     *, agent_id: str | None = None,
                     rule: Rule | None = None) -> list[Deployment]:
    """Queue ``release`` for ``environment``: one deployment per enrolled agent, or one
    environment-wide deployment when it has none; with ``agent_id``, for that enrolled agent
    of the environment only (an ad-hoc run, ``tiangong run``). ``rule`` replaces the
    environment's approval rule: only :func:`hub.services.adhoc.ship_adhoc` passes one (the
    environment's ad-hoc policy, for one agent).

    Raises:
        PermissionDeniedError (operator of the environment), NotFoundError,
        InvalidStateError (release not approved, or recalled from a channel),
        NotEnoughApprovalsError (fewer distinct
        non-author approvers than the environment requires), ConflictError (already
        queued or in flight for that agent), PreflightRequiredError (the environment's
        preflight policy is not met: :func:`hub.services.plans.require_passed_plan`, audited
        ``deployment.refused``).
    """
    session = ctx.session
    env = get_environment(session, environment)
    require(ctx.actor, "deployment.queue", env)
    if release.state != "approved":
        raise InvalidStateError(
            f"release {release.label} is {release.state}; only an approved release can be queued"
        )
    _refuse_recalled(session, release)
    if rule is not None and agent_id is None:
        raise ValidationError("an approval rule of its own applies to one agent's run only")
    # A rollback's inherited approvals are for its rollout's own queueing only.
    check = check_rule(release, env, now=ctx.now(), rule=rule, inherited=False)
    if not check.met:
        inherited = ("" if release.approvals_from is None else
                     f" (its approvals are inherited from {release.approvals_from.label} "
                     "for the automatic rollback of one deployment only; to queue it by "
                     "hand, approve it as a release of its own)")
        raise NotEnoughApprovalsError(
            f"release {release.label} has {check.found} distinct approval(s) valid for "
            f"{env.name}, which requires {check.rule.describe()}: {check.summary()}"
            + inherited)
    agents = list(
        session.scalars(
            select(Agent)
            .where(Agent.environment_id == env.id, Agent.status == "enrolled")
            .order_by(Agent.agent_id)
        )
    )
    targets: list[Agent | None] = list(agents) if agents else [None]
    if agent_id is not None:
        targets = [a for a in agents if a.agent_id == agent_id]
        if not targets:
            raise NotFoundError(f"agent {agent_id!r} is not an enrolled agent of environment "
                                f"{env.name}")
    active = list(
        session.scalars(
            select(Deployment).where(
                Deployment.release_id == release.id,
                Deployment.environment_id == env.id,
                Deployment.state.not_in(FINAL_STATES),
            )
        )
    )
    busy = {d.agent_id for d in active}
    for agent in targets:
        if (agent.id if agent else None) in busy:
            who = f"agent {agent.agent_id}" if agent else f"environment {env.name}"
            raise ConflictError(f"release {release.label} is already queued or in flight for {who}")
    if rule is None:  # an ad-hoc run follows the environment's ad-hoc policy instead
        from hub.services.plans import require_passed_plan

        require_passed_plan(ctx, release, env, [a for a in targets if a is not None])
    now = ctx.now()
    created = []
    for agent in targets:
        dep = Deployment(
            release=release,
            environment=env,
            agent=agent,
            state="queued",
            queued_by=ctx.actor_name,
            queued_at=now,
            updated_at=now,
        )
        session.add(dep)
        created.append(dep)
    session.flush()
    # One insert for all the events: one append (and autoflush over every new deployment)
    # per event took minutes for a rollout to 10,000 agents, holding the database's write
    # lock (docs/benchmarks.md, "Session 8: live burst").
    approvers = sorted(name for name, _ in check.approvers)
    audit.record_many(ctx, [
        ("deployment.queue", "deployment", str(dep.id), {
            "release": release.label,
            "content_hash": release.content_hash,
            "environment": env.name,
            "agent": dep.agent.agent_id if dep.agent else None,
            "approvers": approvers,
            **({"adhoc_rule": check.rule.describe()} if rule is not None else {}),
        }) for dep in created])
    return created


def transition(
    ctx: ServiceContext,
    deployment: Deployment,
    new_state: str,
    *,
    summary: Mapping[str, Any] | None = None,
    action: str = "deployment.update",
    flush: bool = True,
) -> Deployment:
    """Move ``deployment`` to ``new_state`` (validated against :data:`TRANSITIONS`).
    ``flush=False`` leaves the row's update to the session's next flush (a batch of
    deployments written in one statement at its commit, :mod:`hub.services.export`).

    Raises:
        PermissionDeniedError, InvalidStateError (naming both states and what is allowed).
    """
    require_ctx(ctx, action, deployment.environment)
    allowed = TRANSITIONS.get(deployment.state, frozenset())
    if new_state not in allowed:
        options = ", ".join(sorted(allowed)) or "nothing (it is final)"
        raise InvalidStateError(
            f"deployment {deployment.id} is {deployment.state} and cannot become {new_state}; "
            f"allowed: {options}"
        )
    before = deployment.state
    now = ctx.now()
    deployment.state = new_state
    deployment.updated_at = now
    column = _TIMESTAMP.get(new_state)
    if column is not None and getattr(deployment, column) is None:
        setattr(deployment, column, now)
    if summary is not None:
        deployment.result_summary = dict(summary)
    if flush:
        ctx.session.flush()
    details: dict[str, Any] = {"from": before, "to": new_state}
    if summary is not None:
        details["summary"] = dict(summary)
    audit.record(ctx, "deployment." + new_state, "deployment", str(deployment.id), details)
    if new_state in ("failed", "rejected", "interrupted"):
        enqueue(ctx, "deployment.failed", deployment.environment, {
            "deployment": deployment.id, "state": new_state,
            "release": deployment.release.label,
            "agent": deployment.agent.agent_id if deployment.agent else None,
            "summary": details.get("summary")})
    return deployment


def allocate_sequence(
    session: Session, target: str, *, agent: Agent | None = None
) -> tuple[int, int]:
    """Allocate the next bundle sequence for ``target``; returns ``(root_version, seq)``.

    Locks the counter row for the rest of the transaction, so concurrent exports get
    distinct numbers. Creates the counter (sequence 1) when missing.
    """
    locked = session.execute(
        update(SequenceCounter)
        .where(SequenceCounter.target == target)
        .values(next_sequence=SequenceCounter.next_sequence + 1)
    )
    if locked.rowcount == 0:  # type: ignore[attr-defined]
        session.add(
            SequenceCounter(
                target=target,
                agent_id=agent.id if agent else None,
                next_sequence=2,
                root_version=1,
            )
        )
        session.flush()
        return 1, 1
    next_after, root_version = session.execute(
        select(SequenceCounter.next_sequence, SequenceCounter.root_version).where(
            SequenceCounter.target == target
        )
    ).one()
    return root_version, next_after - 1


def allocate_sequences(
    session: Session, wanted: Sequence[tuple[str, Agent | None]]
) -> list[int]:
    """:func:`allocate_sequence` for many targets at once (an export batch): the sequence
    of each item of ``wanted`` (target, its agent), in order; a target that appears
    several times gets consecutive numbers. Two or three statements in all, whatever the
    number of targets: one read, one update per existing counter (executemany), one
    insert per new counter. The updates lock the counter rows for the rest of the
    transaction, as :func:`allocate_sequence` does.
    """
    counts: dict[str, int] = {}
    agents: dict[str, Agent | None] = {}
    for target, agent in wanted:
        counts[target] = counts.get(target, 0) + 1
        agents.setdefault(target, agent)
    if not counts:
        return []
    targets = sorted(counts)
    existing = set(session.scalars(_COUNTERS_OF, {"targets": targets}))
    after: dict[str, int] = {}  # target -> next_sequence after this allocation
    if existing:
        session.execute(_ADVANCE_COUNTER, [{"t": t, "n": counts[t]} for t in sorted(existing)])
        after = {target: int(after_next) for target, after_next in session.execute(
            _NEXT_OF, {"targets": sorted(existing)})}
    for target in targets:
        if target not in existing:
            agent = agents[target]
            session.add(SequenceCounter(target=target, agent_id=agent.id if agent else None,
                                        next_sequence=counts[target] + 1, root_version=1))
            after[target] = counts[target] + 1
    session.flush()
    given = {t: after[t] - counts[t] for t in targets}
    out = []
    for target, _ in wanted:
        out.append(given[target])
        given[target] += 1
    return out


# allocate_sequences' statements, made once (an export call runs them; a statement built
# per call costs its construction and cache key again, 40-90 us each)
_COUNTER_TABLE = SequenceCounter.__table__
_TARGETS: BindParameter[list[str]] = bindparam("targets", expanding=True)
_COUNTERS_OF = select(SequenceCounter.target).where(SequenceCounter.target.in_(_TARGETS))
#: executemany: counter ``t`` advanced by ``n``
_ADVANCE_COUNTER = (update(_COUNTER_TABLE).where(_COUNTER_TABLE.c.target == bindparam("t"))
                    .values(next_sequence=_COUNTER_TABLE.c.next_sequence + bindparam("n")))
_NEXT_OF = (select(SequenceCounter.target, SequenceCounter.next_sequence)
            .where(SequenceCounter.target.in_(_TARGETS)))


def mark_exported(
    ctx: ServiceContext,
    deployment: Deployment,
    *,
    bundle_id: str,
    bundle_path: str,
    sequence: int,
    root_version: int,
    flush: bool = True,
) -> Deployment:
    """Record the bundle written for ``deployment`` and move it to ``exported`` (``flush``
    as :func:`transition`).

    Raises:
        PermissionDeniedError (operator: bundle.export), InvalidStateError (neither queued
        nor claimed by an export).
    """
    require_ctx(ctx, "bundle.export", deployment.environment)
    if deployment.state not in ("queued", "exporting"):
        raise InvalidStateError(f"deployment {deployment.id} is {deployment.state}, not queued")
    deployment.bundle_id = bundle_id
    deployment.bundle_path = bundle_path
    deployment.sequence = sequence
    deployment.root_version = root_version
    return transition(
        ctx,
        deployment,
        "exported",
        summary=None,
        action="bundle.export",
        flush=flush,
    )



def mark_exported_many(
    ctx: ServiceContext,
    environment: Environment,
    rows: Sequence[Mapping[str, Any]],
) -> list[audit.NewEvent]:
    """:func:`mark_exported` for many ``exporting`` deployments of ``environment`` with one
    executemany UPDATE (no ORM objects): each row gives ``id``, ``bundle_id``,
    ``bundle_path``, ``sequence``, ``root_version`` and ``export_intent`` (stored as given);
    the claim is released. The caller read them ``exporting`` holding the audit head (every
    writer of deployments takes it first) and appends the returned ``deployment.exported``
    events (the ones :func:`transition` appends), one per row, in order.

    Raises:
        PermissionDeniedError (operator: bundle.export).
    """
    require_ctx(ctx, "bundle.export", environment)
    if not rows:
        return []
    now = ctx.now()
    ctx.session.execute(
        _MARK_EXPORTED,
        [{"b_id": row["id"], "b_bundle_id": row["bundle_id"],
          "b_bundle_path": row["bundle_path"], "b_sequence": row["sequence"],
          "b_root_version": row["root_version"], "b_export_intent": row["export_intent"],
          "b_now": now}
         for row in rows])
    for row in rows:
        show_loaded(ctx.session, row["id"], state="exported", updated_at=now, claimed_by=None,
                    unless_set={"exported_at": now},
                    **{key: row[key] for key in ("bundle_id", "bundle_path", "sequence",
                                                 "root_version", "export_intent")})
    return [("deployment.exported", "deployment", str(row["id"]),
             {"from": "exporting", "to": "exported"}) for row in rows]


_TABLE = Deployment.__table__
#: mark_exported_many's update (executemany; Core: no session object to synchronise, the
#: loaded rows are given the values by show_loaded), made once
_NOW = bindparam("b_now", type_=_TABLE.c.updated_at.type)
_MARK_EXPORTED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.state == "exporting")
    .values(state="exported", updated_at=_NOW,
            exported_at=func.coalesce(_TABLE.c.exported_at, _NOW),
            claimed_by=None,
            bundle_id=bindparam("b_bundle_id"), bundle_path=bindparam("b_bundle_path"),
            sequence=bindparam("b_sequence"), root_version=bindparam("b_root_version"),
            export_intent=bindparam("b_export_intent", type_=JSON))
)


def record_result(
    ctx: ServiceContext,
    deployment: Deployment,
    *,
    state: str,
    result_seq: int,
    result_sha256: str,
    steps: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    previous: list[DeploymentAttempt] | None = None,
    flush: bool = True,
) -> DeploymentAttempt:
    """Record one imported result of ``deployment`` as an attempt and move the deployment.

    The attempt number is the agent's (the highest step ``attempt`` the result reports: 1
    for the first run, one more for each ``tiangong agent retry``), else the next free one.
    A result newer than every recorded attempt moves the deployment to ``state``; if the
    deployment had already finished, this result is a retry: ``… → retried → state``. An
    older result (media brought them out of order) only adds its attempt to the history.

    ``previous``: the deployment's attempts, when the caller has loaded them already (the
    importer, one query per batch); the new attempt is appended to it. ``flush=False``
    leaves the rows to the session's next flush (a batch written together).

    Raises:
        PermissionDeniedError, InvalidStateError (a move the states do not allow, e.g. a
        ``rejected`` result after a run).
    """
    session = ctx.session
    if previous is None:
        previous = list(
            session.scalars(
                select(DeploymentAttempt).where(DeploymentAttempt.deployment_id == deployment.id)
            )
        )
    numbers = {a.attempt for a in previous}
    reported = _ints(steps, "attempt")
    number = max(reported) if reported else len(previous) + 1
    if number in numbers or number < 1:
        number = max(numbers, default=0) + 1
    attempt = DeploymentAttempt(
        deployment_id=deployment.id,
        attempt=number,
        result_seq=result_seq,
        result_sha256=result_sha256,
        status=state,
        started_at=_when(min(_ints(steps, "started_at"), default=None)),
        finished_at=_when(max(_ints(steps, "finished_at"), default=None)),
        imported_at=ctx.now(),
    )
    session.add(attempt)
    newest = all(a.result_seq < result_seq for a in previous)
    if newest:
        if previous and deployment.state in RETRY_FROM:
            transition(
                ctx,
                deployment,
                "retried",
                summary={"attempt": number, "previous": deployment.state},
                action="result.import",
                flush=flush,
            )
        if deployment.state != state:
            transition(ctx, deployment, state, summary=summary, action="result.import",
                       flush=flush)
        else:
            deployment.result_summary = dict(summary)
    previous.append(attempt)
    if flush:
        session.flush()
    return attempt


REFUSED_AS_LOST = "rejected: declared lost"  # the outcome shown for such an attempt


def record_refused_lost(
    ctx: ServiceContext,
    deployment: Deployment,
    *,
    result_seq: int,
    result_sha256: str,
) -> DeploymentAttempt:
    """Record the agent's signed refusal of the bundle of a ``lost`` deployment (it turned
    up at the site after the hub declared it lost) as an attempt of that deployment. The
    state stays ``lost``: the decision stands and the bundle never ran; the attempt's
    outcome reads :data:`REFUSED_AS_LOST` (:func:`attempt_outcome`).

    Raises:
        InvalidStateError: the deployment is not lost (nothing recorded).
    """
    if deployment.state != "lost":
        raise InvalidStateError(
            f"deployment {deployment.id} is {deployment.state}, not lost: a refusal of a "
            "lost bundle cannot be attached to it"
        )
    session = ctx.session
    numbers = session.scalars(
        select(DeploymentAttempt.attempt).where(DeploymentAttempt.deployment_id == deployment.id)
    ).all()
    attempt = DeploymentAttempt(
        deployment_id=deployment.id,
        attempt=max(numbers, default=0) + 1,
        result_seq=result_seq,
        result_sha256=result_sha256,
        status="rejected",
        imported_at=ctx.now(),
    )
    session.add(attempt)
    session.flush()
    return attempt


def attempt_outcome(attempt: DeploymentAttempt) -> str:
    """What an attempt's outcome reads: its status, or :data:`REFUSED_AS_LOST` for the
    agent's refusal of a bundle the hub declared lost (the deployment stayed ``lost``)."""
    if attempt.status == "rejected" and attempt.deployment.state == "lost":
        return REFUSED_AS_LOST
    return attempt.status


def mark_delivered_many(
    ctx: ServiceContext,
    rows: Sequence[tuple[int, Environment | None]],
) -> list[audit.NewEvent]:
    """:func:`transition` to ``delivered`` (action ``bundle.export``) for many ``exported``
    deployments, given as (id, environment), with one executemany UPDATE and no ORM
    objects. The caller read them ``exported`` holding the audit head (every writer of
    deployments takes it first) and appends the returned ``deployment.delivered`` events
    (the ones :func:`transition` appends), one per row, in order. Per deployment this cost
    the live server more than its bundle's export in a burst (docs/benchmarks.md,
    "Session 8: live burst").

    Raises:
        PermissionDeniedError (operator: bundle.export, in any environment of ``rows``).
    """
    checked: set[int | None] = set()
    for _, environment in rows:
        key = None if environment is None else environment.id
        if key not in checked:
            require_ctx(ctx, "bundle.export", environment)
            checked.add(key)
    if not rows:
        return []
    now = ctx.now()
    table = Deployment.__table__
    ctx.session.execute(
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.state == "exported")
        .values(state="delivered", updated_at=now,
                delivered_at=func.coalesce(table.c.delivered_at, now))
        .execution_options(synchronize_session=False),
        [{"b_id": dep_id} for dep_id, _ in rows])
    for dep_id, _ in rows:
        show_loaded(ctx.session, dep_id, state="delivered", updated_at=now,
                    unless_set={"delivered_at": now})
    return [("deployment.delivered", "deployment", str(dep_id),
             {"from": "exported", "to": "delivered"}) for dep_id, _ in rows]


def _ints(steps: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    """The non-negative integer values of ``key`` in the result's steps (others ignored)."""
    out: list[int] = []
    for step in steps:
        value = step.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out.append(value)
    return out


def _when(unix: int | None) -> datetime | None:
    if unix is None:
        return None
    try:
        return datetime.fromtimestamp(unix, UTC)
    except (OverflowError, OSError, ValueError):
        return None
