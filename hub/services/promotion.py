"""Releases moving through a product's channels (docs/governance.md), and the deployments
channel subscriptions plan.

* :func:`enter_first_channel` — an approved release enters the product's first channel
  (called by :func:`hub.services.approvals.approve_release` when a release becomes approved).
* :func:`approve_promotion` — one person approves promoting a release into a channel.
* :func:`promote` — moves a release from the channel it is in to the next one, if that
  channel's rule (:mod:`hub.services.channels`) is met; otherwise
  :class:`~hub.errors.PromotionRefusedError` says everything that is missing, and nothing
  changes.
* :func:`recall` — pulls a release from a channel and every later one; its planned and
  queued deployments in the environments subscribed to those channels are cancelled, and
  the bundles already exported there are declared lost (:mod:`hub.services.chain`), so the
  next bundle to each such agent carries the signed decision and the agent refuses the
  recalled bundle with the hub's reason.

**Planned deployments.** A release entering a channel gets a ``planned`` deployment per
enrolled agent (or one for the environment, when it has none) of each environment
subscribed to that channel — unless the release is already deployed, or on its way, there.
A planned deployment is not exported: :func:`advance_planned` moves it to ``queued`` (which
export takes) once :func:`waiting_for` names nothing — today the environment's required
approval rule for releases reaching it through the channel it subscribes to
(:func:`hub.services.approval_rules.check_rule`). It runs when the deployment is planned
and after each approval of the release.

Health gates count deployments of the release in the environments subscribed to the
previous channel *now*: ``succeeded`` counts one per agent; ``failed``, ``rejected`` and
``interrupted`` are failures (a retried run that then succeeded is ``succeeded``); the soak
time runs from the latest ``finished_at`` of a success.

This module writes no bundles; export (``hub.services.export``) takes the queued ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.db import (
    Agent,
    Channel,
    ChannelEntry,
    ChannelSubscription,
    Deployment,
    PromotionApproval,
    Release,
)
from hub.errors import (
    ConflictError,
    InvalidStateError,
    PromotionRefusedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services import approval_rules, audit
from hub.services.approval_rules import RuleCheck
from hub.services.approvals import MAX_COMMENT_CHARS
from hub.services.chain import MAX_REASON_CHARS, declare_lost
from hub.services.channels import (
    format_duration,
    get_channel,
    list_channels,
    subscribers,
    when,
)
from hub.services.context import ServiceContext
from hub.services.releases import get_release
from hub.services.users import require_ctx

__all__ = [
    "CANCELLABLE_STATES",
    "FAILED_STATES",
    "GateFacts",
    "Promotion",
    "Recall",
    "advance_planned",
    "advance_release",
    "approval_check",
    "approve_promotion",
    "check_promotion",
    "enter_first_channel",
    "entries_of",
    "next_channel",
    "promote",
    "promotion_approvers",
    "promotion_json",
    "recall",
    "recall_json",
    "subscribed_channel",
    "waiting_for",
]

FAILED_STATES = ("failed", "rejected", "interrupted")  # a health gate's "failure"
CANCELLABLE_STATES = ("planned", "queued")  # a recall cancels these
_AT_SITE_STATES = ("delivered", "running", "retried")  # beyond the hub's reach


@dataclass(frozen=True)
class GateFacts:
    """What the health gates measured in the previous channel's environments."""

    environments: tuple[str, ...]
    succeeded: tuple[str, ...]  # agents (or ``env:<name>``) where the release succeeded
    failed: tuple[str, ...]  # ``<agent> (<state>, deployment <id>)``
    last_success: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"environments": list(self.environments), "succeeded": list(self.succeeded),
                "failed": list(self.failed),
                "last_success": self.last_success.isoformat() if self.last_success else None}


@dataclass(frozen=True)
class Promotion:
    """A release promoted: its new entry, who approved, what the gates saw, and the
    deployments planned (and of those, queued at once)."""

    entry: ChannelEntry
    previous: Channel
    approvers: tuple[str, ...]
    facts: GateFacts
    planned: tuple[Deployment, ...]
    queued: tuple[Deployment, ...]


@dataclass
class Recall:
    """What a recall did: the channels the release left, and its deployments cancelled,
    declared lost (exported, not yet at the site) and out of reach (at the site already)."""

    release: Release
    channels: list[str] = field(default_factory=list)
    cancelled: list[Deployment] = field(default_factory=list)
    lost: list[Deployment] = field(default_factory=list)
    at_site: list[Deployment] = field(default_factory=list)
    in_export: list[Deployment] = field(default_factory=list)  # no bundle id yet: recall again


# --- where a release is -------------------------------------------------------------------


def entries_of(session: Session, release: Release) -> list[ChannelEntry]:
    """Every channel entry of ``release`` (recalled ones too), in channel order."""
    return list(session.scalars(
        select(ChannelEntry).join(Channel, ChannelEntry.channel_id == Channel.id)
        .where(ChannelEntry.release_id == release.id).order_by(Channel.position)))


def next_channel(session: Session, release: Release,
                 to: str | None = None) -> tuple[Channel, Channel]:
    """``(from, to)``: the channel ``release`` is promoted from and the one it enters —
    ``to``, or the channel after the last one it is in.

    Raises:
        NotFoundError (channel), InvalidStateError (not approved; in no channel; already in
        ``to`` or recalled from it; not in the channel before ``to``; in the last channel).
    """
    if release.state != "approved":
        raise InvalidStateError(f"release {release.label} is {release.state}; only an "
                                "approved release moves through channels")
    channels = list_channels(session, release.product)
    entries = {e.channel_id: e for e in entries_of(session, release)}
    active = [c for c in channels if c.id in entries and entries[c.id].recalled_at is None]
    if not active:
        raise InvalidStateError(f"release {release.label} is in no channel of product "
                                f"{release.product.name} (recalled from all of them?)")
    if to is None:
        index = channels.index(active[-1]) + 1
        if index == len(channels):
            raise InvalidStateError(f"release {release.label} is in {active[-1].name}, the "
                                    f"last channel of product {release.product.name}")
        target = channels[index]
    else:
        target = get_channel(session, release.product, to)
        index = channels.index(target)
    entry = entries.get(target.id)
    if entry is not None:
        if entry.recalled_at is not None:
            raise InvalidStateError(
                f"release {release.label} was recalled from {target.name} by "
                f"{entry.recalled_by} at {when(entry.recalled_at)} ({entry.recall_reason}); "
                "a recalled release does not go back: make a new release")
        raise ConflictError(f"release {release.label} is in {target.name} already")
    if index == 0:
        raise InvalidStateError(f"{target.name} is the first channel of product "
                                f"{release.product.name}: releases enter it when approved")
    previous = channels[index - 1]
    if previous not in active:
        where = ", ".join(c.name for c in active)
        raise InvalidStateError(
            f"release {release.label} is not in {previous.name}, the channel before "
            f"{target.name} (it is in {where}): promote it one channel at a time")
    return previous, target


def promotion_approvers(session: Session, release: Release, channel: Channel) -> list[str]:
    """Distinct active people other than the author who approved promoting ``release``
    into ``channel``, by name."""
    rows = session.scalars(select(PromotionApproval).where(
        PromotionApproval.channel_id == channel.id, PromotionApproval.release_id == release.id))
    return sorted({a.approver.username for a in rows
                   if a.approver_id != release.author_id and a.approver.is_active})


def _deployments_in(session: Session, release: Release, env_ids: list[int]) -> list[Deployment]:
    if not env_ids:
        return []
    return list(session.scalars(select(Deployment).where(
        Deployment.release_id == release.id, Deployment.environment_id.in_(env_ids))
        .order_by(Deployment.id)))


def _where(dep: Deployment) -> str:
    return dep.agent.agent_id if dep.agent is not None else f"env:{dep.environment.name}"


def gate_facts(session: Session, release: Release, previous: Channel) -> GateFacts:
    """What the health gates see of ``release`` in the environments subscribed to
    ``previous`` (see the module docstring)."""
    envs = subscribers(session, previous)
    deps = _deployments_in(session, release, [e.id for e in envs])
    ok = [d for d in deps if d.state == "succeeded"]
    finished = [d.finished_at for d in ok if d.finished_at is not None]
    return GateFacts(
        environments=tuple(e.name for e in envs),
        succeeded=tuple(sorted({_where(d) for d in ok})),
        failed=tuple(f"{_where(d)} ({d.state}, deployment {d.id})"
                     for d in deps if d.state in FAILED_STATES),
        last_success=max(finished, default=None),
    )


def check_promotion(session: Session, release: Release, previous: Channel, target: Channel,
                    now: datetime) -> tuple[list[str], list[str], GateFacts]:
    """``(missing, approvers, facts)``: what the rule of ``target`` still misses (empty: it
    is met), the promotion's counted approvers, and what the health gates measured."""
    missing: list[str] = []
    approvers = promotion_approvers(session, release, target)
    need = target.required_approvals
    if len(approvers) < need:
        have = f" ({', '.join(approvers)})" if approvers else ""
        missing.append(f"approvals: {len(approvers)} of {need} distinct approver(s) other than "
                       f"the author {release.author.username}{have}")
    facts = gate_facts(session, release, previous)
    gated = target.min_successes or target.no_failures or target.soak_seconds
    if gated and not facts.environments:
        missing.append(f"health: no environment subscribes to {previous.name} of product "
                       f"{release.product.name}, so nothing can show the release works there")
    elif gated:
        envs = ", ".join(facts.environments)
        if len(facts.succeeded) < target.min_successes:
            missing.append(f"successes: succeeded on {len(facts.succeeded)} of "
                           f"{target.min_successes} agent(s) in {previous.name} ({envs})")
        if target.no_failures and facts.failed:
            missing.append(f"no failure: failed in {previous.name} on "
                           + ", ".join(facts.failed))
        if target.soak_seconds:
            soak = timedelta(seconds=target.soak_seconds)
            if facts.last_success is None:
                missing.append(f"soak {format_duration(target.soak_seconds)}: no success yet "
                               f"in {previous.name} ({envs}) to start it")
            elif now - facts.last_success < soak:
                ready = facts.last_success + soak
                missing.append(
                    f"soak {format_duration(target.soak_seconds)}: last success in "
                    f"{previous.name} at {when(facts.last_success)}, so not before "
                    f"{when(ready)} ({format_duration(int((ready - now).total_seconds()) + 1)} "
                    "from now)")
    if target.preflight_within_h:
        missing += _preflight_missing(session, release, target, now)
    return missing, approvers, facts


def _preflight_missing(session: Session, release: Release, target: Channel,
                       now: datetime) -> list[str]:
    """The preflight gate of ``target``'s rule: a plan of ``release`` passed on every agent
    of the environments subscribed to ``target`` within its hours (hub.services.plans)."""
    from hub.services.plans import preflight_waits

    assert target.preflight_within_h
    envs = subscribers(session, target)
    agents = list(session.scalars(select(Agent).where(
        Agent.environment_id.in_([e.id for e in envs]), Agent.status == "enrolled")
        .order_by(Agent.agent_id))) if envs else []
    if not agents:
        return [f"preflight: no enrolled agent subscribes to {target.name} of product "
                f"{release.product.name}, so no plan can pass there"]
    waits = preflight_waits(session, release, agents, timedelta(hours=target.preflight_within_h),
                            now)
    return [f"preflight: {w}" for w in waits]


# --- moving a release ---------------------------------------------------------------------


def _enter(ctx: ServiceContext, release: Release, channel: Channel) -> ChannelEntry:
    """Record ``release`` in ``channel``. Two processes entering it at once: the unique
    (channel, release) row lets one win; the other gets a ConflictError (not a database
    error), its transaction still usable (a savepoint).

    Raises:
        ConflictError.
    """
    entry = ChannelEntry(channel_id=channel.id, release_id=release.id, entered_at=ctx.now(),
                         entered_by=ctx.actor_name)
    try:
        with ctx.session.begin_nested():
            ctx.session.add(entry)
    except IntegrityError:
        raise ConflictError(f"release {release.label} entered {channel.name} meanwhile "
                            "(another promotion or approval)") from None
    return entry


def enter_first_channel(ctx: ServiceContext, release: Release) -> ChannelEntry | None:
    """Put a just-approved ``release`` into its product's first channel (audited
    ``channel.enter``) and plan it for the environments subscribed there. Nothing when the
    product has no channel or the release is in one already. The approval decided; no
    permission of its own is checked."""
    session = ctx.session
    channels = list_channels(session, release.product)
    if not channels or entries_of(session, release):
        return None
    try:
        entry = _enter(ctx, release, channels[0])
    except ConflictError:
        return None  # a concurrent approval put it there
    audit.record(ctx, "channel.enter", "release", release.label,
                 {"channel": channels[0].name, "content_hash": release.content_hash})
    plan(ctx, release, channels[0])
    return entry


def approve_promotion(ctx: ServiceContext, product: str, version: str, to: str | None = None,
                      *, comment: str = "") -> tuple[PromotionApproval, Channel]:
    """Record the actor's approval of promoting a release into ``to`` (default: the next
    channel); returns it and the channel.

    Raises:
        PermissionDeniedError (``channel.approve``), NotFoundError,
        SeparationOfDutiesError (the release's author), ConflictError (approved already;
        already in the channel), InvalidStateError (see :func:`next_channel`),
        ValidationError (comment too long).
    """
    require_ctx(ctx, "channel.approve")
    assert ctx.actor is not None
    session = ctx.session
    release = get_release(session, product, version)
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValidationError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    _, target = next_channel(session, release, to)
    if release.author_id == ctx.actor.id:
        raise SeparationOfDutiesError(
            f"release {release.label}: {ctx.actor.username} is its author and cannot approve "
            f"its promotion to {target.name}")
    if ctx.actor.username in promotion_approvers(session, release, target):
        raise ConflictError(f"{ctx.actor.username} already approved promoting release "
                            f"{release.label} to {target.name}")
    approval = PromotionApproval(channel_id=target.id, release_id=release.id,
                                 approver_id=ctx.actor.id, comment=comment, at=ctx.now())
    session.add(approval)
    session.flush()
    audit.record(ctx, "channel.promotion_approve", "release", release.label,
                 {"channel": target.name, "content_hash": release.content_hash,
                  "comment": comment})
    return approval, target


def promote(ctx: ServiceContext, product: str, version: str, to: str | None = None, *,
            comment: str = "") -> Promotion:
    """Promote a release into ``to`` (default: the channel after the last one it is in).

    Raises:
        PermissionDeniedError (``channel.promote``), NotFoundError, InvalidStateError (see
        :func:`next_channel`), ConflictError (already there), PromotionRefusedError (the
        rule of ``to`` is not met: every missing condition named; nothing changed),
        ValidationError (comment too long).
    """
    require_ctx(ctx, "channel.promote")
    session = ctx.session
    release = get_release(session, product, version)
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValidationError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    previous, target = next_channel(session, release, to)
    now = ctx.now()
    missing, approvers, facts = check_promotion(session, release, previous, target, now)
    if missing:
        raise PromotionRefusedError(
            f"promotion of release {release.label} from {previous.name} to {target.name} "
            f"refused; missing: " + "; ".join(missing))
    entry = _enter(ctx, release, target)
    audit.record(ctx, "channel.promote", "release", release.label,
                 {"from": previous.name, "to": target.name,
                  "content_hash": release.content_hash, "approvers": approvers,
                  "gates": facts.to_json(), "comment": comment})
    planned = plan(ctx, release, target)
    queued = tuple(d for d in planned if d.state == "queued")
    return Promotion(entry, previous, tuple(approvers), facts, tuple(planned), queued)


# --- planned deployments ------------------------------------------------------------------


def plan(ctx: ServiceContext, release: Release, channel: Channel) -> list[Deployment]:
    """Plan ``release`` for every environment subscribed to ``channel`` (see the module
    docstring), then queue those that wait for nothing; returns the planned deployments."""
    session = ctx.session
    now = ctx.now()
    made: list[Deployment] = []
    for env in subscribers(session, channel):
        agents = list(session.scalars(
            select(Agent).where(Agent.environment_id == env.id, Agent.status == "enrolled")
            .order_by(Agent.agent_id)))
        targets: list[Agent | None] = list(agents) if agents else [None]
        taken = {d.agent_id for d in _deployments_in(session, release, [env.id])
                 if d.state not in ("failed", "rejected", "interrupted", "lost", "cancelled")}
        for agent in targets:
            if (agent.id if agent else None) in taken:
                continue
            dep = Deployment(release=release, environment=env, agent=agent, state="planned",
                             queued_by=ctx.actor_name, queued_at=now, updated_at=now)
            session.add(dep)
            made.append(dep)
    session.flush()
    for dep in made:
        audit.record(ctx, "deployment.planned", "deployment", str(dep.id), {
            "release": release.label, "content_hash": release.content_hash,
            "environment": dep.environment.name,
            "agent": dep.agent.agent_id if dep.agent else None, "channel": channel.name})
    advance_planned(ctx, made)
    return made


def subscribed_channel(session: Session, dep: Deployment) -> Channel | None:
    """The channel of ``dep``'s product that its environment subscribes to, if any."""
    sub = session.scalar(select(ChannelSubscription).where(
        ChannelSubscription.environment_id == dep.environment_id,
        ChannelSubscription.product_id == dep.release.product_id))
    return None if sub is None else sub.channel


def approval_check(session: Session, dep: Deployment, now: datetime) -> RuleCheck:
    """The hub's approval rule for ``dep``: the environment's rule for releases reaching it
    through the channel it subscribes to. Only the release's own approvals count: inherited
    ones are for a rollout's automatic rollback of one deployment (docs/governance.md)."""
    channel = subscribed_channel(session, dep)
    return approval_rules.check_rule(dep.release, dep.environment, now=now,
                                     channel=None if channel is None else channel.name,
                                     inherited=False)


def waiting_for(session: Session, dep: Deployment, now: datetime) -> list[str]:
    """Why planned deployment ``dep`` is not queued yet (empty: nothing).

    The hub's approval rule (:func:`approval_check`) and the environment's preflight
    policy (:func:`hub.services.plans.deploy_waits`). (Windows and freezes are
    ``hub.services.readiness``'s.)
    """
    if dep.release.state != "approved":  # rejected after it was planned
        return [f"release {dep.release.label} is {dep.release.state}"]
    check = approval_check(session, dep, now)
    if not check.met:
        return [f"approvals: {check.summary()}"]
    from hub.services.plans import deploy_waits

    return [f"preflight: {w}" for w in deploy_waits(
        session, dep.release, dep.environment, [dep.agent] if dep.agent else [], now)]


def advance_planned(ctx: ServiceContext, deployments: list[Deployment]) -> list[Deployment]:
    """Queue each planned deployment of ``deployments`` that waits for nothing (audited
    ``deployment.queued``, ``from: planned``); returns those queued. The move is
    conditional on the row still being ``planned`` (a recall may have cancelled it)."""
    queued = []
    for dep in deployments:
        now = ctx.now()
        if dep.state != "planned" or waiting_for(ctx.session, dep, now):
            continue
        moved = ctx.session.execute(
            update(Deployment).where(Deployment.id == dep.id, Deployment.state == "planned")
            .values(state="queued", updated_at=now).execution_options(synchronize_session=False))
        ctx.session.refresh(dep)
        if getattr(moved, "rowcount", 0) != 1:
            continue
        audit.record(ctx, "deployment.queued", "deployment", str(dep.id), {
            "from": "planned", "to": "queued", "release": dep.release.label,
            "environment": dep.environment.name,
            "approvers": [n for n, _ in approval_check(ctx.session, dep, now).approvers]})
        queued.append(dep)
    return queued


def advance_release(ctx: ServiceContext, release: Release) -> list[Deployment]:
    """:func:`advance_planned` for every planned deployment of ``release`` (after an
    approval of it)."""
    planned = list(ctx.session.scalars(select(Deployment).where(
        Deployment.release_id == release.id, Deployment.state == "planned")
        .order_by(Deployment.id)))
    return advance_planned(ctx, planned)


# --- recall -------------------------------------------------------------------------------


def promotion_json(product: str, version: str, done: Promotion) -> dict[str, Any]:
    """A promotion as ``hub releases promote --json`` and the API answer it."""
    return {
        "product": product, "version": version, "from": done.previous.name,
        "to": done.entry.channel.name, "approvers": list(done.approvers),
        "gates": done.facts.to_json(),
        "deployments": [{"deployment": d.id, "environment": d.environment.name,
                         "agent": d.agent.agent_id if d.agent else None, "state": d.state}
                        for d in done.planned]}


def recall_json(product: str, version: str, reason: str, done: Recall) -> dict[str, Any]:
    """A recall as ``hub releases recall --json`` and the API answer it."""
    return {
        "product": product, "version": version, "channels": done.channels, "reason": reason,
        "cancelled": [d.id for d in done.cancelled], "lost": [d.id for d in done.lost],
        "at_site": [d.id for d in done.at_site], "in_export": [d.id for d in done.in_export]}


def recall(ctx: ServiceContext, product: str, version: str, channel: str,
           reason: str) -> Recall:
    """Pull a release from ``channel`` and every later channel it is in (see the module
    docstring). Audited ``channel.recall`` with the reason and every deployment touched.

    Raises:
        PermissionDeniedError (``channel.recall``; ``bundle.export`` where an exported
        bundle must be declared lost), NotFoundError, ValidationError (no reason, too
        long), InvalidStateError (the release is not in ``channel``).
    """
    require_ctx(ctx, "channel.recall")
    session = ctx.session
    release = get_release(session, product, version)
    reason = reason.strip()
    if not reason:
        raise ValidationError(f"say why release {release.label} is recalled (--reason): "
                              "the sites see it")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is {len(reason)} characters, over "
                              f"{MAX_REASON_CHARS}")
    start = get_channel(session, release.product, channel)
    entries = [e for e in entries_of(session, release)
               if e.channel.position >= start.position and e.recalled_at is None]
    if not entries or entries[0].channel_id != start.id:
        raise InvalidStateError(f"release {release.label} is not in {start.name}; nothing "
                                "to recall")
    now = ctx.now()
    out = Recall(release)
    for entry in entries:
        entry.recalled_at, entry.recalled_by, entry.recall_reason = now, ctx.actor_name, reason
        out.channels.append(entry.channel.name)
    env_ids = sorted({s.environment_id for s in session.scalars(
        select(ChannelSubscription).where(
            ChannelSubscription.channel_id.in_([e.channel_id for e in entries])))})
    session.flush()
    site_reason = f"release {release.label} recalled from {start.name}: {reason}"
    for dep in _deployments_in(session, release, env_ids):
        if dep.state in CANCELLABLE_STATES and _cancel(ctx, dep, start.name, reason):
            out.cancelled.append(dep)
        if dep.state in ("exporting", "exported") and dep.bundle_id is not None:
            declare_lost(ctx, dep.id, site_reason)
            out.lost.append(dep)
        elif dep.state == "exporting":
            out.in_export.append(dep)
        elif dep.state in _AT_SITE_STATES:
            out.at_site.append(dep)
    audit.record(ctx, "channel.recall", "release", release.label, {
        "channels": out.channels, "reason": reason, "content_hash": release.content_hash,
        "cancelled": [d.id for d in out.cancelled], "lost": [d.id for d in out.lost],
        "at_site": [d.id for d in out.at_site], "in_export": [d.id for d in out.in_export]})
    return out


def _cancel(ctx: ServiceContext, dep: Deployment, channel: str, reason: str) -> bool:
    """Cancel ``dep`` if it is still planned or queued (an export may claim it meanwhile:
    then it is declared lost instead, by the caller, once it reads the new state)."""
    before = dep.state
    now = ctx.now()
    moved = ctx.session.execute(
        update(Deployment)
        .where(Deployment.id == dep.id, Deployment.state.in_(CANCELLABLE_STATES))
        .values(state="cancelled", updated_at=now, finished_at=now)
        .execution_options(synchronize_session=False))
    ctx.session.refresh(dep)
    if getattr(moved, "rowcount", 0) != 1:
        return False
    audit.record(ctx, "deployment.cancelled", "deployment", str(dep.id), {
        "from": before, "to": "cancelled", "release": dep.release.label,
        "environment": dep.environment.name, "channel": channel, "reason": reason})
    return True
