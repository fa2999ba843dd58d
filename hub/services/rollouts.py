"""Fleet rollouts: a release rolled over many agents in batches, each followed by a gate
(docs/rollouts.md).

**Model.** A :class:`~hub.db.Rollout` names a release, a target set (an environment, or a
label selector ``k=v,k2=v2`` over enrolled agents of any environment) and a
:class:`Strategy`. At start the targets are ordered (named canary agents first, then by
agent id) and split into batches, stored as :class:`~hub.db.RolloutTarget` rows: the plan
never changes afterwards. When a batch starts, each of its agents gets an ordinary
``queued`` deployment (one per agent target), so export, live delivery and media work
unchanged; agents of later batches have no deployment yet.

**Engine.** :func:`advance` looks at the rollout and does the next thing, if any; it is
called when results are imported, when a gate is confirmed, by the hub's scheduler (soak
times) and by ``tiangong hub rollouts advance``. It is idempotent: a batch is started in
the same transaction that records it started (``current_batch``), so a hub killed between
batches (crash point ``hub.rollout-batch-queued``) leaves either the old batch (and the next
call starts the new one) or the new one — never a batch queued twice.

A batch is **done** when every deployment of it is final; it then passes its **gate** when
the failures are within the threshold, the soak time has passed since it was done, and (if
the strategy asks) a person confirmed it. Failures over the threshold **pause** or
**abort** the rollout (``on_failure``) and optionally call the automatic rollback action
(:data:`ROLLBACK_ACTIONS`; pluggable until the rollback service lands).

**Who.** Starting needs ``deployment.queue`` in every environment of the targets; pause,
resume, abort, cancel need ``deployment.update``; confirming a gate needs
``deployment.queue`` in every environment of the batch **and** must be another person than
the one who started the rollout (two people see every manual gate). The engine acts on its
own as ``system:rollout``. Every action is audited (``rollout.*``).

**Readiness.** Before queueing a batch the hub's approval rule must be met for each
environment (else the batch waits, saying so); windows and freezes hold queued deployments
as usual (:mod:`hub.services.readiness` gives the reasons the rollout page shows).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Agent, Deployment, Environment, Release, Rollout, RolloutBatch, RolloutTarget
from hub.errors import (
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from hub.faults import crash_point
from hub.services import audit
from hub.services.approval_rules import check_rule
from hub.services.context import ServiceContext
from hub.services.deployments import FINAL_STATES, transition
from hub.services.environments import get_environment
from hub.services.notifications import enqueue
from hub.services.readiness import waiting_for
from hub.services.users import require_ctx

__all__ = [
    "FAILED_STATES",
    "ROLLBACK_ACTIONS",
    "STATES",
    "Strategy",
    "abort_rollout",
    "advance",
    "advance_all",
    "after_deployments",
    "after_plan",
    "cancel_rollout",
    "confirm_gate",
    "get_rollout",
    "list_rollouts",
    "parse_selector",
    "pause_rollout",
    "plan_batches",
    "resume_rollout",
    "rollback_releases",
    "rollout_json",
    "rollout_scope",
    "select_agents",
    "set_agent_labels",
    "start_rollout",
]

STATES = ("running", "paused", "succeeded", "aborted", "cancelled")
ACTIVE = ("running", "paused")
#: deployment states that count against the failure threshold
FAILED_STATES = frozenset({"failed", "rejected", "interrupted"})
ENGINE = "rollout"  # ServiceContext.system of the engine acting on its own
MAX_BATCHES = 1000

#: Automatic rollback: called with (engine context, rollout, the failed deployments) when a
#: strategy with ``auto_rollback`` crosses its failure threshold; returns what it did.
RollbackAction = Callable[[ServiceContext, Rollout, list[Deployment]], str]


def rollback_releases(ctx: ServiceContext, rollout: Rollout, failed: list[Deployment]) -> str:
    """The hub's automatic rollback (docs/rollouts.md, "Automatic rollback"): for each
    failed deployment that ran and has no rollback yet, its rollback release (the recorded
    undo data, :func:`hub.services.rollback.roll_back_automatically`) is created by the
    person who started the rollout, approved by inheritance from the release it undoes and
    queued for the agent that ran it, each in a savepoint of the caller's transaction. What
    could not be done is said, not raised (the import that got us here goes on)."""
    from hub.errors import HubError
    from hub.services.rollback import roll_back_automatically, rollback_of
    from hub.services.users import get_user

    try:
        starter = ctx.as_user(get_user(ctx.session, rollout.created_by))
    except HubError as exc:
        return f"no rollback release: {exc}"
    said = []
    for dep in failed:
        made = rollback_of(ctx, dep)
        if made is not None:
            said.append(f"deployment {dep.id}: rolled back already by {made.label}")
            continue
        if dep.state == "rejected":
            said.append(f"deployment {dep.id}: nothing to roll back (the site refused its "
                        "bundle before anything ran)")
            continue
        try:
            with ctx.session.begin_nested():
                _, _, did = roll_back_automatically(starter, ctx, dep, rollout)
            said.append(f"deployment {dep.id}: {did}")
        except (HubError, OSError) as exc:  # never fail the import that got us here
            said.append(f"deployment {dep.id}: no rollback release: {exc}")
    return "; ".join(said)


ROLLBACK_ACTIONS: list[RollbackAction] = [rollback_releases]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_VALUE = re.compile(r"^[A-Za-z0-9._/:-]{0,200}$")


_PERCENT = re.compile(r"^(\d{1,3})%$")


def _percent(value: str | None, what: str) -> int | None:
    """``P`` of ``"P%"``; None for a plain number or nothing."""
    if value is None or not value.strip() or value.strip().isdecimal():
        return None
    m = _PERCENT.match(value.strip())
    if m is None:
        raise ValidationError(f"{what} {value[:32]!r}: give a number N or a percentage P%")
    return int(m.group(1))


@dataclass(frozen=True)
class Strategy:
    """How the targets are split and gated.

    * ``canary``: the first batch is this many agents (0: no canary batch);
      ``canary_agents`` names them instead (agent ids);
    * ``batch_size`` or ``batch_percent`` (of all targets, rounded up): the size of each
      later batch; neither: everything after the canary in one batch ("all at once" when
      there is no canary either);
    * gate after each batch: ``soak_s`` seconds after it is done, ``manual`` confirmation;
    * gate before each batch: ``preflight_within_h`` — a preflight plan of the release
      passed on every agent of the batch within that many hours (:mod:`hub.services.plans`);
    * ``max_failures`` (count) or ``max_failure_percent`` (of all targets): failures
      allowed over the whole rollout before ``on_failure`` (``pause`` or ``abort``);
      ``auto_rollback`` calls the rollback action then.
    """

    canary: int = 0
    canary_agents: tuple[str, ...] = ()
    batch_size: int | None = None
    batch_percent: int | None = None
    soak_s: int = 0
    manual: bool = False
    max_failures: int = 0
    max_failure_percent: int | None = None
    on_failure: str = "pause"
    auto_rollback: bool = False
    preflight_within_h: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ValidationError naming the field and its rule."""
        if self.canary < 0 or self.canary > 10000:
            raise ValidationError(f"canary: {self.canary} agents; give 0 … 10000")
        if self.batch_size is not None and self.batch_percent is not None:
            raise ValidationError("give a batch size or a batch percentage, not both")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValidationError(f"batch size {self.batch_size}: give at least 1 agent")
        if self.batch_percent is not None and not 1 <= self.batch_percent <= 100:
            raise ValidationError(f"batch percentage {self.batch_percent}: give 1 … 100")
        if not 0 <= self.soak_s <= 30 * 86400:
            raise ValidationError(f"soak {self.soak_s} s: give 0 … 30 days")
        if self.max_failures < 0:
            raise ValidationError(f"max failures {self.max_failures}: give 0 or more")
        if self.max_failure_percent is not None and not 0 <= self.max_failure_percent <= 100:
            raise ValidationError(f"max failure percentage {self.max_failure_percent}: "
                                  "give 0 … 100")
        if self.on_failure not in ("pause", "abort"):
            raise ValidationError(f"on failure {self.on_failure!r}: give pause or abort")
        if self.preflight_within_h is not None and not 1 <= self.preflight_within_h <= 24 * 30:
            raise ValidationError(f"preflight within {self.preflight_within_h} h: give 1 … "
                                  "720 hours")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["canary_agents"] = list(self.canary_agents)
        return out

    @classmethod
    def from_text(cls, *, canary: str = "0", batch: str | None = None, soak_s: int = 0,
                  manual: bool = False, max_failures: str = "0", on_failure: str = "pause",
                  auto_rollback: bool = False, preflight_within_h: int | None = None
                  ) -> Strategy:
        """A strategy as people type it (``hub rollouts start`` and the web form):
        ``canary`` a number of agents or agent ids separated by commas; ``batch`` and
        ``max_failures`` a number ``N`` or a percentage ``P%``.

        Raises:
            ValidationError: naming the field and its rule (also every :meth:`check`).
        """
        canary = canary.strip() or "0"
        strategy = cls(
            canary=int(canary) if canary.isdecimal() else 0,
            canary_agents=() if canary.isdecimal() else tuple(
                c.strip() for c in canary.split(",") if c.strip()),
            batch_size=int(batch) if batch and batch.strip().isdecimal() else None,
            batch_percent=_percent(batch, "batch"),
            soak_s=soak_s, manual=manual,
            max_failures=int(max_failures) if max_failures.strip().isdecimal() else 0,
            max_failure_percent=_percent(max_failures, "max failures"),
            on_failure=on_failure, auto_rollback=auto_rollback,
            preflight_within_h=preflight_within_h)
        strategy.check()
        return strategy

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Strategy:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        known["canary_agents"] = tuple(known.get("canary_agents", ()))
        return cls(**known)

    def allowed_failures(self, targets: int) -> int:
        if self.max_failure_percent is not None:
            return targets * self.max_failure_percent // 100
        return self.max_failures

    def describe(self) -> str:
        parts = []
        if self.canary_agents:
            parts.append(f"canary {', '.join(self.canary_agents)}")
        elif self.canary:
            parts.append(f"canary {self.canary}")
        if self.batch_size is not None:
            parts.append(f"batches of {self.batch_size}")
        elif self.batch_percent is not None:
            parts.append(f"batches of {self.batch_percent}%")
        else:
            parts.append("the rest at once" if parts else "all at once")
        gate = []
        if self.soak_s:
            gate.append(f"soak {self.soak_s} s")
        if self.manual:
            gate.append("manual confirmation")
        if gate:
            parts.append("gate: " + " + ".join(gate))
        if self.preflight_within_h is not None:
            parts.append(f"each batch after a preflight passed on it within "
                         f"{self.preflight_within_h} h")
        limit = (f"{self.max_failure_percent}%" if self.max_failure_percent is not None
                 else str(self.max_failures))
        parts.append(f"{self.on_failure} after more than {limit} failure(s)"
                     + (", then roll back" if self.auto_rollback else ""))
        return "; ".join(parts)


# ---- labels and selectors ------------------------------------------------------------


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → ``{k: v, k2: v2}``. Raises ValidationError naming the bad part."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL.match(key) or not _VALUE.match(value):
            raise ValidationError(
                f"label selector part {part!r}: write name=value (names: letters, digits, "
                "._/- up to 63 characters; values up to 200 of letters, digits, ._/:-)")
        out[key] = value
    if not out:
        raise ValidationError("empty label selector: write name=value[,name=value…]")
    return out


def set_agent_labels(ctx: ServiceContext, agent_id: str, changes: Sequence[str]) -> Agent:
    """Apply ``k=v`` (set) and ``k-`` (remove) to an agent's labels; admins only
    (``environment.update``). Audited as ``agent.label`` with before and after.

    Raises:
        NotFoundError, PermissionDeniedError, ValidationError (nothing changed).
    """
    from hub.services.agents import MAX_LABELS, get_agent

    agent = get_agent(ctx.session, agent_id)
    require_ctx(ctx, "environment.update", agent.environment)
    before = dict(agent.labels or {})
    after = dict(before)
    for change in changes:
        if change.endswith("-") and "=" not in change:
            key = change[:-1]
            if key not in after:
                raise ValidationError(f"agent {agent_id} has no label {key!r} to remove")
            del after[key]
        else:
            after.update(parse_selector(change))
    if len(after) > MAX_LABELS:
        raise ValidationError(f"agent {agent_id} would have {len(after)} labels; at most "
                              f"{MAX_LABELS}")
    agent.labels = after
    ctx.session.flush()
    audit.record(ctx, "agent.label", "agent", agent_id, {"before": before, "after": after})
    return agent


def select_agents(session: Session, *, environment: str | None = None,
                  labels: Mapping[str, str] | None = None) -> list[Agent]:
    """Enrolled agents of ``environment`` and/or carrying every label of ``labels``,
    ordered by agent id."""
    query = select(Agent).where(Agent.status == "enrolled").order_by(Agent.agent_id)
    if environment is not None:
        query = query.where(Agent.environment_id == get_environment(session, environment).id)
    agents = list(session.scalars(query))
    if labels:
        agents = [a for a in agents
                  if all(str((a.labels or {}).get(k)) == v for k, v in labels.items())]
    return agents


# ---- planning ----------------------------------------------------------------------------


def plan_batches(agents: Sequence[Agent], strategy: Strategy) -> list[list[Agent]]:
    """Split ``agents`` (already ordered) into batches; deterministic.

    Raises:
        ValidationError: a named canary agent is not a target; no targets.
    """
    if not agents:
        raise ValidationError("the rollout has no target: no enrolled agent matches")
    by_id = {a.agent_id: a for a in agents}
    missing = [name for name in strategy.canary_agents if name not in by_id]
    if missing:
        raise ValidationError(f"canary agent(s) {', '.join(missing)} are not among the "
                              f"{len(agents)} target agent(s)")
    if strategy.canary_agents:
        first = [by_id[name] for name in strategy.canary_agents]
    else:
        first = list(agents[: strategy.canary])
    rest = [a for a in agents if a not in first]
    batches = [first] if first else []
    size = strategy.batch_size
    if strategy.batch_percent is not None:
        size = max(1, math.ceil(len(agents) * strategy.batch_percent / 100))
    if size is None:
        if rest:
            batches.append(rest)
    else:
        batches += [rest[i:i + size] for i in range(0, len(rest), size)]
    if len(batches) > MAX_BATCHES:
        raise ValidationError(f"{len(batches)} batches; at most {MAX_BATCHES}")
    return batches


# ---- reading -----------------------------------------------------------------------------


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    """Raises NotFoundError."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} does not exist")
    return rollout


def list_rollouts(session: Session, state: str | None = None) -> list[Rollout]:
    query = select(Rollout).order_by(Rollout.id.desc())
    if state is not None:
        query = query.where(Rollout.state == state)
    return list(session.scalars(query))


def _targets(session: Session, rollout: Rollout, batch: int | None = None
             ) -> list[RolloutTarget]:
    query = select(RolloutTarget).where(RolloutTarget.rollout_id == rollout.id)
    if batch is not None:
        query = query.where(RolloutTarget.batch == batch)
    return list(session.scalars(query.order_by(RolloutTarget.batch, RolloutTarget.position)))


def _batches(session: Session, rollout: Rollout) -> list[RolloutBatch]:
    return list(session.scalars(select(RolloutBatch).where(
        RolloutBatch.rollout_id == rollout.id).order_by(RolloutBatch.number)))


def _batch(session: Session, rollout: Rollout, number: int) -> RolloutBatch:
    row: RolloutBatch | None = session.scalar(select(RolloutBatch).where(
        RolloutBatch.rollout_id == rollout.id, RolloutBatch.number == number))
    assert row is not None, f"rollout {rollout.id} has no batch {number}"
    return row


def rollout_scope(session: Session, rollout: Rollout) -> list[Environment]:
    """The environments of a rollout's agents (seeing it needs ``view`` in each)."""
    return _environments(_targets(session, rollout))


def _environments(targets: Sequence[RolloutTarget]) -> list[Environment]:
    seen: dict[int, Environment] = {}
    for t in targets:
        seen.setdefault(t.agent.environment_id, t.agent.environment)
    return list(seen.values())


# ---- starting ----------------------------------------------------------------------------


def start_rollout(ctx: ServiceContext, release: Release, *, environment: str | None = None,
                  labels: Mapping[str, str] | None = None,
                  strategy: Strategy | None = None) -> Rollout:
    """Plan a rollout of ``release`` and start its first batch.

    Raises:
        ValidationError (no target, bad strategy, neither environment nor labels),
        PermissionDeniedError (``deployment.queue`` in every target environment),
        InvalidStateError (release not approved; an active rollout of it shares an agent),
        NotFoundError.
    """
    session = ctx.session
    strategy = strategy or Strategy()
    strategy.check()
    if environment is None and not labels:
        raise ValidationError("say which agents: an environment, or a label selector")
    if release.state != "approved":
        raise InvalidStateError(f"release {release.label} is {release.state}; only an "
                                "approved release can be rolled out")
    if release.approvals_from is not None:
        raise InvalidStateError(f"release {release.label} is approved by inheritance from "
                                f"{release.approvals_from.label} for the automatic rollback "
                                "of one deployment only; it is not rolled out")
    agents = select_agents(session, environment=environment, labels=labels)
    batches = plan_batches(agents, strategy)
    for env in {a.environment_id: a.environment for a in agents}.values():
        require_ctx(ctx, "deployment.queue", env)
    if strategy.auto_rollback:
        _require_rollback_author(ctx)
    busy = _busy_agents(session, release, agents)
    if busy:
        raise InvalidStateError(f"agent(s) {', '.join(busy)} are already in an active "
                                f"rollout of {release.label}; abort or cancel it first")
    now = ctx.now()
    selector: dict[str, Any] = {}
    if environment is not None:
        selector["environment"] = environment
    if labels:
        selector["labels"] = dict(labels)
    rollout = Rollout(release=release, selector=selector, strategy=strategy.to_json(),
                      state="running", reason="", current_batch=0, failures_accepted=0,
                      rolled_back=False, created_by=ctx.actor_name, created_at=now,
                      updated_at=now)
    session.add(rollout)
    session.flush()
    for number, batch in enumerate(batches, start=1):
        session.add(RolloutBatch(rollout_id=rollout.id, number=number))
        for position, agent in enumerate(batch):
            session.add(RolloutTarget(rollout_id=rollout.id, agent_id=agent.id, batch=number,
                                      position=position))
    session.flush()
    audit.record(ctx, "rollout.start", "rollout", str(rollout.id), {
        "release": release.label, "selector": selector, "strategy": strategy.to_json(),
        "batches": [[a.agent_id for a in b] for b in batches]})
    advance(ctx, rollout)
    return rollout


def _require_rollback_author(ctx: ServiceContext) -> None:
    """The automatic rollback creates and submits rollback releases in the name of the
    person who starts the rollout: they must be allowed to.

    Raises: PermissionDeniedError naming the option."""
    for action in ("release.create", "release.submit"):
        try:
            require_ctx(ctx, action, None)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(
                f"--auto-rollback: the automatic rollback creates and submits the rollback "
                f"releases in the name of the person who starts the rollout, and {exc}") from None


def _busy_agents(session: Session, release: Release, agents: Sequence[Agent]) -> list[str]:
    ids = {a.id for a in agents}
    rows = session.execute(
        select(Agent.agent_id, RolloutTarget.agent_id)
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .join(Agent, Agent.id == RolloutTarget.agent_id)
        .where(Rollout.release_id == release.id, Rollout.state.in_(ACTIVE))).all()
    return sorted({name for name, aid in rows if aid in ids})


# ---- the engine --------------------------------------------------------------------------


def _engine(ctx: ServiceContext) -> ServiceContext:
    return ServiceContext(ctx.session, ctx.clock, None, ctx.keys, ctx.releases_dir,
                          system=ENGINE)


def advance(ctx: ServiceContext, rollout: Rollout) -> list[str]:
    """Do what is due for ``rollout`` now; returns what it did (sentences; empty: nothing).
    Safe to call any number of times."""
    if rollout.state != "running":
        return []
    session = ctx.session
    engine = _engine(ctx)
    done: list[str] = []
    if rollout.current_batch == 0:
        done += _start_batch(engine, rollout, 1)
        return done
    number = rollout.current_batch
    batch = _batch(session, rollout, number)
    targets = _targets(session, rollout, number)
    if any(t.deployment_id is None for t in targets):  # waited for approvals
        done += _queue_targets(engine, rollout, targets)
    over = _over_threshold(session, rollout)
    if over is not None:
        done += _fail(engine, rollout, over)
        return done
    if any(t.deployment is None or t.deployment.state not in FINAL_STATES for t in targets):
        return done
    now = ctx.now()
    if batch.done_at is None:
        batch.done_at = now
        audit.record(engine, "rollout.batch_done", "rollout", str(rollout.id), {
            "batch": number, "states": {t.agent.agent_id: t.deployment.state
                                        for t in targets if t.deployment is not None}})
        done.append(f"batch {number} done")
    last = max(b.number for b in _batches(session, rollout))
    if number == last:
        _set_state(engine, rollout, "succeeded", f"all {last} batch(es) done")
        done.append("rollout succeeded")
        return done
    if _gate_wait(rollout, batch, now):
        return done
    done += _start_batch(engine, rollout, number + 1)
    return done


def _gate_wait(rollout: Rollout, batch: RolloutBatch, now: datetime) -> str | None:
    """What the gate after ``batch`` (done) still waits for, or None."""
    strategy = Strategy.from_json(rollout.strategy)
    assert batch.done_at is not None
    if strategy.soak_s and now < batch.done_at + timedelta(seconds=strategy.soak_s):
        until = batch.done_at + timedelta(seconds=strategy.soak_s)
        return f"soak until {until:%Y-%m-%d %H:%M:%S} UTC"
    if strategy.manual and batch.confirmed_at is None:
        return (f"manual confirmation (`tiangong hub rollouts confirm {rollout.id}` by "
                f"another operator than {rollout.created_by})")
    return None


def _start_batch(engine: ServiceContext, rollout: Rollout, number: int) -> list[str]:
    batch = _batch(engine.session, rollout, number)
    rollout.current_batch = number
    rollout.updated_at = batch.started_at = engine.now()
    targets = _targets(engine.session, rollout, number)
    audit.record(engine, "rollout.batch_start", "rollout", str(rollout.id), {
        "batch": number, "agents": [t.agent.agent_id for t in targets]})
    out = [f"batch {number} started", *_queue_targets(engine, rollout, targets)]
    engine.session.flush()
    crash_point("hub.rollout-batch-queued")
    return out


def _queue_targets(engine: ServiceContext, rollout: Rollout,
                   targets: Sequence[RolloutTarget]) -> list[str]:
    """Queue a deployment for each target without one whose environment's approval rule
    is met (the others wait; :func:`batch_waits` says why)."""
    session = engine.session
    release = rollout.release
    now = engine.now()
    out: list[str] = []
    if _preflight_waits(session, rollout, targets, now):
        return out  # the whole batch waits for its preflight (batch_waits says why)
    for t in targets:
        if t.deployment_id is not None:
            continue
        env = t.agent.environment
        if not check_rule(release, env, now=now).met:
            continue
        dep = Deployment(release=release, environment=env, agent=t.agent, state="queued",
                         queued_by=f"rollout:{rollout.id}", queued_at=now, updated_at=now)
        session.add(dep)
        session.flush()
        t.deployment_id = dep.id
        audit.record(engine, "deployment.queue", "deployment", str(dep.id), {
            "release": release.label, "content_hash": release.content_hash,
            "environment": env.name, "agent": t.agent.agent_id, "rollout": rollout.id})
        out.append(f"deployment {dep.id} queued for {t.agent.agent_id}")
    session.flush()
    return out


def _failed(session: Session, rollout: Rollout) -> list[Deployment]:
    return [t.deployment for t in _targets(session, rollout)
            if t.deployment is not None and t.deployment.state in FAILED_STATES]


def _over_threshold(session: Session, rollout: Rollout) -> list[Deployment] | None:
    """The failed deployments when there are more than the strategy allows (beyond those
    accepted by a resume), else None."""
    strategy = Strategy.from_json(rollout.strategy)
    failed = _failed(session, rollout)
    total = len(_targets(session, rollout))
    if len(failed) - rollout.failures_accepted > strategy.allowed_failures(total):
        return failed
    return None


def _fail(engine: ServiceContext, rollout: Rollout, failed: list[Deployment]) -> list[str]:
    strategy = Strategy.from_json(rollout.strategy)
    names = ", ".join(f"{d.agent.agent_id if d.agent else '?'} ({d.state})" for d in failed)
    reason = f"{len(failed)} failure(s), over the threshold: {names}"
    out = []
    if strategy.on_failure == "abort":
        out += _stop(engine, rollout, "aborted", reason)
    else:
        _set_state(engine, rollout, "paused", reason)
        out.append(f"paused: {reason}")
    if strategy.auto_rollback:  # each failed deployment is rolled back once
        rollout.rolled_back = True
        if not ROLLBACK_ACTIONS:
            said = "no automatic rollback action is installed at this hub"
        else:
            said = "; ".join(action(engine, rollout, failed) for action in ROLLBACK_ACTIONS)
        audit.record(engine, "rollout.rollback", "rollout", str(rollout.id), {
            "deployments": [d.id for d in failed], "result": said})
        rollout.reason = f"{rollout.reason}; rollback: {said}"
        out.append(f"rollback: {said}")
    return out


def _set_state(ctx: ServiceContext, rollout: Rollout, state: str, reason: str) -> None:
    before = rollout.state
    rollout.state = state
    rollout.reason = reason
    rollout.updated_at = ctx.now()
    ctx.session.flush()
    audit.record(ctx, f"rollout.{state}", "rollout", str(rollout.id),
                 {"from": before, "to": state, "reason": reason})
    if state == "paused":  # the webhooks of every environment the rollout reaches
        envs = {t.agent.environment.id: t.agent.environment
                for t in _targets(ctx.session, rollout)}
        for env in sorted(envs.values(), key=lambda e: e.name):
            enqueue(ctx, "rollout.paused", env, {"rollout": rollout.id,
                                                 "release": rollout.release.label,
                                                 "reason": reason})


def _stop(ctx: ServiceContext, rollout: Rollout, state: str, reason: str, *,
          withdraw: bool = False) -> list[str]:
    """End the rollout: queued deployments cancelled; with ``withdraw``, exported bundles
    not yet at the site declared lost so the decision reaches the site."""
    from hub.services.chain import LOSABLE_STATES, declare_lost

    out = []
    _set_state(ctx, rollout, state, reason)
    actor = ctx if ctx.actor is not None else None
    for t in _targets(ctx.session, rollout):
        dep = t.deployment
        if dep is None:
            continue
        if dep.state in ("queued", "planned"):
            if actor is not None:
                transition(actor, dep, "cancelled", summary={"rollout": rollout.id,
                                                             "reason": reason})
            else:
                _cancel_as_engine(ctx, dep, rollout, reason)
            out.append(f"deployment {dep.id} cancelled")
        elif withdraw and dep.state in LOSABLE_STATES and dep.bundle_id is not None:
            declare_lost(ctx, dep.id, f"rollout {rollout.id} {state} by {ctx.actor_name}: "
                         f"{reason}")
            out.append(f"deployment {dep.id} withdrawn (bundle declared lost)")
    return out


def _cancel_as_engine(ctx: ServiceContext, dep: Deployment, rollout: Rollout,
                      reason: str) -> None:
    """The engine's own abort (threshold crossed): it may only cancel deployments it
    queued itself for this rollout."""
    before = dep.state
    now = ctx.now()
    dep.state = "cancelled"
    dep.updated_at = now
    dep.finished_at = dep.finished_at or now
    ctx.session.flush()
    audit.record(ctx, "deployment.cancelled", "deployment", str(dep.id),
                 {"from": before, "to": "cancelled",
                  "summary": {"rollout": rollout.id, "reason": reason}})


def after_deployments(ctx: ServiceContext, deployment_ids: Sequence[int]) -> list[str]:
    """Advance every running rollout owning one of ``deployment_ids`` (result import
    calls this once its deployments moved)."""
    if not deployment_ids:
        return []
    ids = set(ctx.session.scalars(select(RolloutTarget.rollout_id).where(
        RolloutTarget.deployment_id.in_(list(deployment_ids)))))
    out = []
    for rid in sorted(ids):
        out += advance(ctx, get_rollout(ctx.session, rid))
    return out


def advance_all(ctx: ServiceContext) -> dict[int, list[str]]:
    """:func:`advance` every running rollout (the scheduler's tick; soak times)."""
    out = {}
    for rollout in list_rollouts(ctx.session, "running"):
        did = advance(ctx, rollout)
        if did:
            out[rollout.id] = did
    return out


def next_wakeup(session: Session) -> datetime | None:
    """When the earliest soak of a running rollout ends (the scheduler wakes then)."""
    soonest = None
    for rollout in list_rollouts(session, "running"):
        soak = int(rollout.strategy.get("soak_s") or 0)
        if not soak or rollout.current_batch == 0:
            continue
        batch = _batch(session, rollout, rollout.current_batch)
        if batch.done_at is not None:
            when = batch.done_at + timedelta(seconds=soak)
            soonest = when if soonest is None else min(soonest, when)
    return soonest


# ---- people's actions --------------------------------------------------------------------


def _require_all(ctx: ServiceContext, action: str, rollout: Rollout,
                 targets: Sequence[RolloutTarget] | None = None) -> None:
    for env in _environments(targets if targets is not None
                             else _targets(ctx.session, rollout)):
        require_ctx(ctx, action, env)


def _require_state(rollout: Rollout, verb: str, *states: str) -> None:
    if rollout.state not in states:
        raise InvalidStateError(f"rollout {rollout.id} is {rollout.state}; only a "
                                f"{' or '.join(states)} rollout can be {verb}")


def pause_rollout(ctx: ServiceContext, rollout: Rollout, reason: str = "") -> Rollout:
    """No further batch starts; deployments already queued or in flight go on.

    Raises: PermissionDeniedError, InvalidStateError."""
    _require_all(ctx, "deployment.update", rollout)
    _require_state(rollout, "paused", "running")
    _set_state(ctx, rollout, "paused", reason.strip() or f"paused by {ctx.actor_name}")
    return rollout


def resume_rollout(ctx: ServiceContext, rollout: Rollout) -> list[str]:
    """Run again; failures so far are accepted (the threshold counts new ones).

    Raises: PermissionDeniedError, InvalidStateError."""
    _require_all(ctx, "deployment.update", rollout)
    _require_state(rollout, "resumed", "paused")
    accepted = len(_failed(ctx.session, rollout))
    before = rollout.failures_accepted
    rollout.failures_accepted = accepted
    _set_state(ctx, rollout, "running", f"resumed by {ctx.actor_name}"
               + (f"; {accepted - before} failure(s) accepted" if accepted > before else ""))
    return advance(ctx, rollout)


def abort_rollout(ctx: ServiceContext, rollout: Rollout, reason: str = "") -> list[str]:
    """Stop for good: no further batch; queued deployments cancelled; bundles already
    exported stay valid (use :func:`cancel_rollout` to withdraw them).

    Raises: PermissionDeniedError, InvalidStateError."""
    _require_all(ctx, "deployment.update", rollout)
    _require_state(rollout, "aborted", *ACTIVE)
    return _stop(ctx, rollout, "aborted", reason.strip() or f"aborted by {ctx.actor_name}")


def cancel_rollout(ctx: ServiceContext, rollout: Rollout, reason: str = "") -> list[str]:
    """:func:`abort_rollout`, and every exported bundle not yet at the site is declared
    lost (:func:`hub.services.chain.declare_lost`): the next bundle to that agent carries
    the signed decision and the agent refuses the withdrawn one.

    Raises: PermissionDeniedError (also ``bundle.export``), InvalidStateError."""
    _require_all(ctx, "deployment.update", rollout)
    _require_all(ctx, "bundle.export", rollout)
    _require_state(rollout, "cancelled", *ACTIVE)
    return _stop(ctx, rollout, "cancelled",
                 reason.strip() or f"cancelled by {ctx.actor_name}", withdraw=True)


def confirm_gate(ctx: ServiceContext, rollout: Rollout) -> list[str]:
    """Confirm the manual gate after the current batch; the next batch starts at once
    (after the soak time, if any).

    Raises:
        PermissionDeniedError (the starter; no ``deployment.queue`` where the next batch
        goes), InvalidStateError (not running, no manual gate, batch not done, already
        confirmed, last batch).
    """
    session = ctx.session
    _require_state(rollout, "confirmed", "running")
    strategy = Strategy.from_json(rollout.strategy)
    if not strategy.manual:
        raise InvalidStateError(f"rollout {rollout.id} has no manual gate")
    number = rollout.current_batch
    batch = _batch(session, rollout, number)
    following = _targets(session, rollout, number + 1)
    if not following:
        raise InvalidStateError(f"rollout {rollout.id} is at its last batch ({number}): "
                                "there is no gate to confirm")
    _require_all(ctx, "deployment.queue", rollout, following)
    if ctx.actor_name == rollout.created_by:
        raise PermissionDeniedError(
            f"{ctx.actor_name} started rollout {rollout.id} and may not confirm its gate: "
            "another operator must (two people see every manual gate)")
    if batch.confirmed_at is not None:
        raise InvalidStateError(f"the gate after batch {number} of rollout {rollout.id} was "
                                f"confirmed by {batch.confirmed_by} already")
    if batch.done_at is None:
        owing = [t.agent.agent_id for t in _targets(session, rollout, number)
                 if t.deployment is None or t.deployment.state not in FINAL_STATES]
        raise InvalidStateError(f"batch {number} of rollout {rollout.id} is not done: "
                                f"{len(owing)} agent(s) owe a result ({', '.join(owing)})")
    batch.confirmed_by = ctx.actor_name
    batch.confirmed_at = ctx.now()
    session.flush()
    audit.record(ctx, "rollout.confirm", "rollout", str(rollout.id), {"batch": number})
    return advance(ctx, rollout)


# ---- what the pages show -----------------------------------------------------------------


def _preflight_waits(session: Session, rollout: Rollout, targets: Sequence[RolloutTarget],
                     now: datetime) -> list[str]:
    """The preflight gate for the targets not queued yet (empty: open): the strategy's
    hours and each target environment's policy, through the one gate of every queueing
    (:func:`hub.services.plans.deploy_waits`)."""
    within = Strategy.from_json(rollout.strategy).preflight_within_h
    by_env: dict[int, list[Agent]] = {}
    for t in targets:
        if t.deployment_id is None:
            by_env.setdefault(t.agent.environment_id, []).append(t.agent)
    from hub.services.plans import deploy_waits

    out: list[str] = []
    for agents in by_env.values():
        out += deploy_waits(session, rollout.release, agents[0].environment, agents, now,
                            within_h=within)
    return out


def after_plan(ctx: ServiceContext, release: Release) -> list[str]:
    """Advance the running rollouts of ``release`` (a preflight outcome was imported: a
    batch may have waited for it)."""
    out = []
    for rollout in ctx.session.scalars(select(Rollout).where(
            Rollout.release_id == release.id, Rollout.state == "running")):
        out += advance(ctx, rollout)
    return out


def batch_waits(session: Session, rollout: Rollout, number: int, now: datetime) -> list[str]:
    """Why batch ``number`` does not move on at ``now`` (sentences)."""
    batch = _batch(session, rollout, number)
    targets = _targets(session, rollout, number)
    out: list[str] = []
    if batch.started_at is None:
        return ["not started"]
    preflight = [f"preflight: {w}" for w in _preflight_waits(session, rollout, targets, now)]
    out += preflight
    for t in targets:
        if t.deployment is None:
            check = check_rule(rollout.release, t.agent.environment, now=now)
            if not check.met or not preflight:
                out.append(f"{t.agent.agent_id}: approval {check.found} of "
                           f"{check.rule.required}: {check.summary()}")
            continue
        for reason in waiting_for(session, t.deployment, now):
            out.append(f"{t.agent.agent_id}: {reason.text}")
    if batch.done_at is not None and rollout.state == "running":
        gate = _gate_wait(rollout, batch, now)
        if gate is not None:
            out.append(f"gate: {gate}")
    return out


def _agent_json(t: RolloutTarget, now: datetime) -> dict[str, Any]:
    dep = t.deployment
    online = t.agent.online_until is not None and t.agent.online_until > now
    row: dict[str, Any] = {
        "agent": t.agent.agent_id, "environment": t.agent.environment.name,
        "reached": "live" if online else "media",
        "deployment": dep.id if dep else None, "state": dep.state if dep else "not queued",
        "owes_result_since": None,
    }
    if dep is not None and dep.state in ("exported", "delivered", "running", "lost") \
            and dep.exported_at is not None:
        row["owes_result_since"] = dep.exported_at.isoformat()
    return row


def _rollbacks_json(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """The rollback releases of the rollout's deployments and how their deployments went."""
    ids = [t.deployment_id for t in _targets(session, rollout) if t.deployment_id is not None]
    if not ids:
        return []
    out = []
    for release in session.scalars(select(Release).where(Release.rollback_of_id.in_(ids))
                                   .order_by(Release.id)):
        deps = list(session.scalars(select(Deployment).where(
            Deployment.release_id == release.id).order_by(Deployment.id)))
        out.append({"rolls_back": release.rollback_of_id, "release": release.label,
                    "state": release.state,
                    "inherited_from": (release.approvals_from.label
                                       if release.approvals_from is not None else None),
                    "deployments": [{"id": d.id, "state": d.state,
                                     "agent": d.agent.agent_id if d.agent else None}
                                    for d in deps]})
    return out


def rollout_json(session: Session, rollout: Rollout, now: datetime) -> dict[str, Any]:
    """Everything the rollout page and ``rollouts show --json`` say."""
    strategy = Strategy.from_json(rollout.strategy)
    batches = []
    for b in _batches(session, rollout):
        targets = _targets(session, rollout, b.number)
        batches.append({
            "number": b.number,
            "started_at": b.started_at.isoformat() if b.started_at else None,
            "done_at": b.done_at.isoformat() if b.done_at else None,
            "confirmed_by": b.confirmed_by,
            "confirmed_at": b.confirmed_at.isoformat() if b.confirmed_at else None,
            "waiting_for": (batch_waits(session, rollout, b.number, now)
                            if b.number == rollout.current_batch else []),
            "agents": [_agent_json(t, now) for t in targets],
        })
    return {
        "id": rollout.id, "release": rollout.release.label, "state": rollout.state,
        "reason": rollout.reason, "selector": rollout.selector,
        "strategy": strategy.to_json(), "strategy_text": strategy.describe(),
        "current_batch": rollout.current_batch, "batches": batches,
        "failures_accepted": rollout.failures_accepted,
        "rolled_back": rollout.rolled_back, "rollbacks": _rollbacks_json(session, rollout),
        "created_by": rollout.created_by,
        "created_at": rollout.created_at.isoformat(),
        "updated_at": rollout.updated_at.isoformat(),
    }
