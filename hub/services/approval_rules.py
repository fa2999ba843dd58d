"""The hub's approval rules: how many approvals a release needs for an environment (and,
optionally, for the channel it reaches the environment through), from which groups.

A rule (:class:`Rule`) is

* ``required`` — distinct approvers, never the release's author;
* ``groups`` — only approvers in one of these groups count (empty: any approver);
* ``min_groups`` — the counted approvers come from at least this many distinct groups
  (``2`` is "approvers from two different groups").

Every environment has its own rule (``environments.required_approvals``,
``approval_groups``, ``approval_min_groups``); a per-channel rule (``approval_rules``)
replaces it for releases reaching the environment through that channel.
:func:`check_rule` counts a release's approvals against it — approvals given globally or
for that environment, not expired, by active users — and says, in one sentence, what is
missing. Queueing a deployment, the dashboard and "waiting for" reasons all ask it.

This is the hub's own rule. What a *site* requires is the root's delegation for its
environment (``signing.approvals.evaluate_approvals``), checked again before export by
:mod:`hub.services.approval_export`; the two are configured separately on purpose (the root
is signed offline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import object_session

from hub.db import Approval, ApprovalRule, ApproverKey, Channel, Environment, Release
from hub.errors import NotFoundError, ValidationError
from hub.services import audit
from hub.services.approvers import parse_group_names
from hub.services.context import ServiceContext
from hub.services.environments import MAX_REQUIRED_APPROVALS, get_environment
from hub.services.users import require

__all__ = [
    "MAX_REQUIRED",
    "Rule",
    "RuleCheck",
    "assign_groups",
    "check_rule",
    "clear_channel_rule",
    "counted_approvals",
    "max_distinct_groups",
    "rule_for",
    "rules_of",
    "set_channel_rule",
    "set_environment_rule",
]

MAX_REQUIRED = MAX_REQUIRED_APPROVALS  # approvers a rule may require

# A channel as the rules spell it: hub.services.channels' names, in lower case.
CHANNEL_RULE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Rule:
    """An approval rule; ``channel`` None is the environment's own rule."""

    environment: str
    required: int
    groups: tuple[str, ...] = ()
    min_groups: int = 1
    channel: str | None = None

    def describe(self) -> str:
        """``2 approvals from 2 groups (dba, ops)``."""
        text = f"{self.required} approval{'s' if self.required != 1 else ''}"
        if self.min_groups > 1:
            text += f" from {self.min_groups} groups"
        if self.groups:
            text += f" ({'from ' if self.min_groups <= 1 else ''}{', '.join(self.groups)})"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "channel": self.channel,
            "required": self.required,
            "groups": list(self.groups),
            "min_groups": self.min_groups,
        }


@dataclass(frozen=True)
class RuleCheck:
    """The outcome of :func:`check_rule`."""

    rule: Rule
    #: (user name, the user's groups that count) of each counted approver, in order
    approvers: tuple[tuple[str, tuple[str, ...]], ...]
    groups_covered: int
    #: approvals that do not count and why (``"carol: not in group dba or ops"``)
    ignored: tuple[str, ...] = field(default=())

    @property
    def met(self) -> bool:
        return len(self.approvers) >= self.rule.required and (
            self.rule.min_groups <= 1 or self.groups_covered >= self.rule.min_groups
        )

    @property
    def found(self) -> int:
        return len(self.approvers)

    def summary(self) -> str:
        """``environment prod needs 2 approvals from 2 groups; found 1 (alice/dba)``."""
        where = f"environment {self.rule.environment}"
        if self.rule.channel:
            where += f" (channel {self.rule.channel})"
        found = ", ".join(f"{n}/{'+'.join(g) or '-'}" for n, g in self.approvers) or "none"
        text = f"{where} needs {self.rule.describe()}; found {self.found} ({found})"
        if self.rule.min_groups > 1:
            text += f" from {self.groups_covered} group{'s' if self.groups_covered != 1 else ''}"
        if self.ignored:
            text += "; not counted: " + "; ".join(self.ignored)
        return text


def _check_rule_values(required: int, groups: Sequence[str], min_groups: int) -> list[str]:
    names = parse_group_names(groups)
    if not 1 <= required <= MAX_REQUIRED:
        raise ValidationError(f"required approvals must be 1..{MAX_REQUIRED}, not {required}")
    if not 1 <= min_groups <= required:
        raise ValidationError(
            f"approvers from {min_groups} groups cannot be met by {required} approver(s): "
            f"min groups must be 1..{required}"
        )
    if names and min_groups > len(names):
        raise ValidationError(
            f"approvers from {min_groups} groups cannot be met when only {len(names)} "
            f"group(s) count ({', '.join(names)})"
        )
    return names


def set_environment_rule(
    ctx: ServiceContext,
    environment: str,
    *,
    required: int,
    groups: Sequence[str] = (),
    min_groups: int = 1,
) -> Rule:
    """Set an environment's own approval rule (admin), audited with before and after.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (out of range; more groups
        required than counted).
    """
    env = get_environment(ctx.session, environment)
    require(ctx.actor, "environment.update", env)
    names = _check_rule_values(required, groups, min_groups)
    before = rule_for(env).to_json()
    env.required_approvals = required
    env.approval_groups = names
    env.approval_min_groups = min_groups
    ctx.session.flush()
    after = rule_for(env)
    audit.record(
        ctx, "environment.approval_rule", "environment", env.name,
        {"from": before, "to": after.to_json()},
    )
    return after


def set_channel_rule(
    ctx: ServiceContext,
    environment: str,
    channel: str,
    *,
    required: int,
    groups: Sequence[str] = (),
    min_groups: int = 1,
) -> Rule:
    """Set the rule for releases reaching ``environment`` through ``channel`` (admin).

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError.
    """
    env = get_environment(ctx.session, environment)
    require(ctx.actor, "environment.update", env)
    names = _check_rule_values(required, groups, min_groups)
    channel = _channel_name(channel)
    _require_known_channel(ctx, channel)
    row = _channel_row(ctx, env, channel)
    before = rule_for(env, channel).to_json()
    if row is None:
        row = ApprovalRule(environment=env, channel=channel)
        ctx.session.add(row)
    row.required, row.groups, row.min_groups = required, names, min_groups
    row.updated_at, row.updated_by = ctx.now(), ctx.actor_name
    ctx.session.flush()
    after = rule_for(env, channel)
    audit.record(
        ctx, "environment.approval_rule", "environment", env.name,
        {"channel": channel, "from": before, "to": after.to_json()},
    )
    return after


def clear_channel_rule(ctx: ServiceContext, environment: str, channel: str) -> None:
    """Remove the per-channel rule (the environment's own rule applies again).

    Raises:
        PermissionDeniedError, NotFoundError (environment or rule), ValidationError (not a
        channel name).
    """
    env = get_environment(ctx.session, environment)
    require(ctx.actor, "environment.update", env)
    channel = _channel_name(channel)
    row = _channel_row(ctx, env, channel)
    if row is None:
        raise NotFoundError(f"environment {env.name} has no approval rule for channel {channel!r}")
    before = rule_for(env, channel).to_json()
    ctx.session.delete(row)
    ctx.session.flush()
    audit.record(
        ctx, "environment.approval_rule", "environment", env.name,
        {"channel": channel, "from": before, "to": None},
    )


def _require_known_channel(ctx: ServiceContext, channel: str) -> None:
    """A per-channel rule only ever applies to releases reaching an environment through a
    channel of that name: refuse one that no product has (a typo would silently never
    apply). The default names count (every new product gets them).

    Raises:
        ValidationError: naming the channels that exist.
    """
    from hub.services.channels import DEFAULT_CHANNELS

    known = {n.lower() for n in ctx.session.scalars(select(Channel.name).distinct())}
    known |= {n.lower() for n in DEFAULT_CHANNELS}
    if channel not in known:
        raise ValidationError(
            f"no product has a channel {channel!r} (channels: {', '.join(sorted(known))}); "
            "a per-channel rule applies only to releases reaching the environment through "
            "that channel: add the channel first (tiangong hub channels add PRODUCT NAME) "
            "or correct the name")


def _channel_name(channel: str) -> str:
    """``channel`` as the rules spell it: lower case (``STABLE`` and ``stable`` are one).

    Raises:
        ValidationError: not a channel name (the channel commands' rule).
    """
    name = channel.strip().lower()
    if not CHANNEL_RULE_NAME.match(name):
        raise ValidationError(f"channel name {channel[:80]!r} must be 1-32 letters, digits, "
                              "'_' or '-', starting with a letter")
    return name


def _channel_row(ctx: ServiceContext, env: Environment, channel: str) -> ApprovalRule | None:
    row: ApprovalRule | None = ctx.session.scalar(
        select(ApprovalRule).where(
            ApprovalRule.environment_id == env.id, ApprovalRule.channel == channel
        )
    )
    return row


def rule_for(env: Environment, channel: str | None = None) -> Rule:
    """The rule for releases reaching ``env`` (through ``channel`` when given): the
    channel's rule if the environment has one, otherwise the environment's own. ``channel``
    is spelt either way (``STABLE`` as the channels print it, ``stable`` as rules store it)."""
    if channel is not None:
        channel = channel.strip().lower()
        session = object_session(env)
        row = None
        if session is not None:
            row = session.scalar(
                select(ApprovalRule).where(
                    ApprovalRule.environment_id == env.id, ApprovalRule.channel == channel
                )
            )
        if row is not None:
            return Rule(env.name, row.required, tuple(row.groups), row.min_groups, channel)
    return Rule(
        env.name,
        env.required_approvals,
        tuple(env.approval_groups or ()),
        env.approval_min_groups or 1,
    )


def rules_of(ctx: ServiceContext, environment: str) -> list[Rule]:
    """An environment's own rule, then its per-channel rules by channel name.

    Raises:
        PermissionDeniedError (view), NotFoundError.
    """
    env = get_environment(ctx.session, environment)
    require(ctx.actor, "view", env)
    rows = ctx.session.scalars(
        select(ApprovalRule)
        .where(ApprovalRule.environment_id == env.id)
        .order_by(ApprovalRule.channel)
    )
    return [rule_for(env)] + [
        Rule(env.name, r.required, tuple(r.groups), r.min_groups, r.channel) for r in rows
    ]


def counted_approvals(
    release: Release, environment: Environment | None, now: datetime | None = None
) -> list[Approval]:
    """The approvals of ``release`` that may count for ``environment``: decisions
    ``approve`` given globally or for it, not by the author, not expired at ``now``."""
    return [
        a
        for a in release.approvals
        if a.decision == "approve"
        and a.approver_id != release.author_id
        and (
            a.environment_id is None
            or (environment is not None and a.environment_id == environment.id)
        )
        and (now is None or a.expires_at is None or a.expires_at > now)
    ]


def max_distinct_groups(members: Sequence[Iterable[str]]) -> int:
    """How many distinct groups ``members`` (each person's groups) can represent when each
    person stands for one group: a maximum bipartite matching (people are few)."""
    return sum(1 for g in assign_groups(members) if g is not None)


def assign_groups(members: Sequence[Iterable[str]]) -> list[str | None]:
    """For each person of ``members`` (their groups), the group they stand for so that as
    many distinct groups as possible are represented (a maximum bipartite matching; people
    are few); None for a person who stands for no group of their own."""
    owner: dict[str, int] = {}

    def place(person: int, seen: set[str]) -> bool:
        for group in sorted(set(members[person])):
            if group in seen:
                continue
            seen.add(group)
            if group not in owner or place(owner[group], seen):
                owner[group] = person
                return True
        return False

    for person in range(len(members)):
        place(person, set())
    chosen: list[str | None] = [None] * len(members)
    for group, person in owner.items():
        chosen[person] = group
    return chosen


def _revoked_keys(release: Release) -> set[str]:
    """Ids of the revoked approver keys that signed approvals of ``release``."""
    ids = {a.key_id for a in release.approvals if a.key_id is not None}
    session = object_session(release)
    if not ids or session is None:
        return set()
    return set(session.scalars(select(ApproverKey.key_id).where(
        ApproverKey.key_id.in_(ids), ApproverKey.revoked_at.is_not(None))))


def check_rule(
    release: Release,
    env: Environment,
    *,
    channel: str | None = None,
    now: datetime | None = None,
    rule: Rule | None = None,
    inherited: bool = True,
) -> RuleCheck:
    """Count ``release``'s approvals against the rule for ``env`` (and ``channel``), or
    against ``rule`` when given (an ad-hoc run's, :mod:`hub.services.adhoc_policy`). A
    signed approval whose approver key was revoked at the hub does not count. A release
    approved by inheritance (a rollout's automatic rollback, ``Release.approvals_from``)
    meets the rule with its own approvals or, ``inherited`` (default), with those of the
    release it inherits them from."""
    if inherited and release.approvals_from is not None:
        own = check_rule(release, env, channel=channel, now=now, rule=rule, inherited=False)
        if own.met:
            return own
        return check_rule(release.approvals_from, env, channel=channel, now=now, rule=rule,
                          inherited=False)
    rule = rule if rule is not None else rule_for(env, channel)
    wanted = set(rule.groups)
    counted: dict[str, tuple[str, ...]] = {}
    ignored: list[str] = []
    revoked = _revoked_keys(release)
    for a in counted_approvals(release, env, now):
        user = a.approver
        name = user.username
        if name in counted:
            continue
        if not user.is_active:
            ignored.append(f"{name}: account deactivated")
            continue
        if a.key_id is not None and a.key_id in revoked:
            ignored.append(f"{name}: signed by revoked key {a.key_id[:16]}")
            continue
        groups = tuple(g for g in user.group_names if not wanted or g in wanted)
        if wanted and not groups:
            ignored.append(f"{name}: not in group {' or '.join(rule.groups)}")
            continue
        counted[name] = groups
    covered = max_distinct_groups(list(counted.values()))
    return RuleCheck(rule, tuple(counted.items()), covered, tuple(dict.fromkeys(ignored)))
