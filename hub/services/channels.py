"""Release channels of a product, their promotion rules, and environment subscriptions.

**Model** (docs/governance.md). Each product has ordered channels; a new product gets
:data:`DEFAULT_CHANNELS` (RELEASE → CANARY → STABLE). An approved release enters the first
channel; promotion moves it to the next one under that channel's **rule**
(:class:`ChannelRule`): how many distinct people other than the release's author approve
the promotion, and optional health gates measured in the environments subscribed to the
previous channel — succeeded on at least N agents, no failure there, a soak time since the
last success. An environment **subscribes** to one channel per product; a release reaching
that channel plans a deployment there. Entering, promoting and recalling are in
:mod:`hub.services.promotion`.

Admins (``channel.manage``) add, remove and reorder channels and set their rules; channels
are never renamed (the name is how people, subscriptions and the audit log refer to them).
Admins of an environment (``environment.update``) subscribe it.

This module does not move releases between channels and creates no deployments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hub.db import (
    Channel,
    ChannelEntry,
    ChannelSubscription,
    Environment,
    Product,
    PromotionApproval,
    Release,
)
from hub.errors import ConflictError, NotFoundError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.releases import get_product
from hub.services.users import require, require_ctx

__all__ = [
    "DEFAULT_CHANNELS",
    "MAX_CHANNELS",
    "MAX_MIN_SUCCESSES",
    "MAX_PROMOTION_APPROVALS",
    "MAX_SOAK_SECONDS",
    "ChannelRule",
    "active_entries",
    "add_channel",
    "channel_order",
    "channel_rows",
    "count_entries",
    "create_default_channels",
    "describe_rule",
    "entry_in",
    "format_duration",
    "get_channel",
    "list_channels",
    "normalize_name",
    "parse_duration",
    "remove_channel",
    "reorder_channels",
    "rule_answer",
    "rule_json",
    "set_rule",
    "subscribe",
    "subscribers",
    "subscription_rows",
    "subscriptions_of",
    "unsubscribe",
    "when",
]

DEFAULT_CHANNELS = ("RELEASE", "CANARY", "STABLE")
MAX_CHANNELS = 16  # channels per product
MAX_PROMOTION_APPROVALS = 10  # distinct approvers a promotion may demand
MAX_MIN_SUCCESSES = 1000  # agents a health gate may demand
MAX_SOAK_SECONDS = 90 * 86400  # seconds (90 days)
_NAME = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}$")
_DURATION = re.compile(r"^(\d{1,9})([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class ChannelRule:
    """What promoting a release *into* a channel needs (unset fields keep their value)."""

    required_approvals: int | None = None
    min_successes: int | None = None
    no_failures: bool | None = None
    soak_seconds: int | None = None
    preflight_within_h: int | None = None  # 0: off


#: Longest a passed preflight counts for a channel's promotion rule, in hours.
MAX_PREFLIGHT_HOURS = 30 * 24  # hours


def normalize_name(name: str) -> str:
    """A channel name as stored: upper case (``stable`` and ``STABLE`` are one channel).

    Raises:
        ValidationError: not 1-32 letters, digits, ``_`` or ``-`` starting with a letter.
    """
    upper = name.strip().upper()
    if not _NAME.match(upper):
        raise ValidationError(
            f"channel name {name[:40]!r} must be 1-32 letters, digits, '_' or '-', "
            "starting with a letter")
    return upper


def parse_duration(text: str, what: str = "soak time",
                   max_seconds: int = MAX_SOAK_SECONDS) -> int:
    """Seconds in ``90``, ``90s``, ``30m``, ``6h`` or ``2d``; ``what`` names the setting in
    errors.

    Raises:
        ValidationError: anything else, or more than ``max_seconds``.
    """
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ValidationError(
            f"{what} {text[:40]!r} is not a duration: give seconds or a number with "
            "s, m, h or d (30m, 6h, 2d)")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if seconds > max_seconds:
        raise ValidationError(f"{what} {text} is over the limit of {max_seconds // 86400} "
                              "days")
    return seconds


def format_duration(seconds: int) -> str:
    """``2d``, ``6h``, ``30m``, ``1h 30m``, ``45s``: for messages and pages."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


# --- reading --------------------------------------------------------------------------------


def channel_rows(session: Session, product: Product) -> list[dict[str, Any]]:
    """The channels of ``product`` in order, as ``hub channels list --json`` and the API show
    them: position, name, the releases in it (newest first), the environments subscribed,
    the rule for promoting into it (text and settings)."""
    chans = list_channels(session, product)
    rows = []
    for i, channel in enumerate(chans):
        previous = chans[i - 1] if i else None
        rows.append({
            "position": i + 1,
            "channel": channel.name,
            "releases": [e.release.version for e in active_entries(session, channel)],
            "subscribers": [e.name for e in subscribers(session, channel)],
            "rule": describe_rule(channel, previous),
            "rule_settings": rule_json(channel),
        })
    return rows


def rule_answer(session: Session, channel: Channel) -> dict[str, Any]:
    """A channel's promotion rule as ``hub channels rule --json`` and the API answer it:
    product, channel, the settings and the rule in words."""
    chans = list_channels(session, channel.product)
    index = chans.index(channel)
    return {"product": channel.product.name, "channel": channel.name, **rule_json(channel),
            "rule": describe_rule(channel, chans[index - 1] if index else None)}


def channel_order(session: Session, product_name: str) -> list[str]:
    """The names of a product's channels, first to last."""
    return [c.name for c in list_channels(session, get_product(session, product_name))]


def subscription_rows(session: Session, environment: Environment) -> list[dict[str, Any]]:
    """``environment``'s subscriptions as ``hub environments subscriptions --json`` shows
    them: product, channel, since, by."""
    return [{"product": s.product.name, "channel": s.channel.name, "since": s.created_at,
             "by": s.created_by} for s in subscriptions_of(session, environment)]


def list_channels(session: Session, product: Product) -> list[Channel]:
    """The channels of ``product`` in order (first = where approved releases enter)."""
    return list(session.scalars(
        select(Channel).where(Channel.product_id == product.id).order_by(Channel.position)))


def get_channel(session: Session, product: Product, name: str) -> Channel:
    """Raises NotFoundError (naming the product's channels), ValidationError (bad name)."""
    wanted = normalize_name(name)
    channels = list_channels(session, product)
    for channel in channels:
        if channel.name == wanted:
            return channel
    names = " → ".join(c.name for c in channels) or "none"
    raise NotFoundError(f"channel {wanted} of product {product.name} does not exist "
                        f"(its channels: {names})")


def active_entries(session: Session, channel: Channel,
                   limit: int | None = None) -> list[ChannelEntry]:
    """The releases in ``channel`` now (not recalled), newest entry first (at most
    ``limit``)."""
    query = (select(ChannelEntry)
             .where(ChannelEntry.channel_id == channel.id, ChannelEntry.recalled_at.is_(None))
             .order_by(ChannelEntry.entered_at.desc(), ChannelEntry.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count_entries(session: Session, channel: Channel) -> int:
    """How many releases are in ``channel`` now."""
    return int(session.scalar(select(func.count()).select_from(ChannelEntry).where(
        ChannelEntry.channel_id == channel.id, ChannelEntry.recalled_at.is_(None))) or 0)


def entry_in(session: Session, channel: Channel, release: Release) -> bool:
    """Whether ``release`` is in ``channel`` now."""
    return session.scalar(select(ChannelEntry.id).where(
        ChannelEntry.channel_id == channel.id, ChannelEntry.release_id == release.id,
        ChannelEntry.recalled_at.is_(None))) is not None


def subscribers(session: Session, channel: Channel) -> list[Environment]:
    """The environments subscribed to ``channel``, by name."""
    return list(session.scalars(
        select(Environment)
        .join(ChannelSubscription, ChannelSubscription.environment_id == Environment.id)
        .where(ChannelSubscription.channel_id == channel.id)
        .order_by(Environment.name)))


def subscriptions_of(session: Session, environment: Environment) -> list[ChannelSubscription]:
    """The subscriptions of ``environment``, by product name."""
    return list(session.scalars(
        select(ChannelSubscription)
        .join(Product, ChannelSubscription.product_id == Product.id)
        .where(ChannelSubscription.environment_id == environment.id)
        .order_by(Product.name)))


# --- channels -------------------------------------------------------------------------------


def create_default_channels(ctx: ServiceContext, product: Product) -> list[Channel]:
    """Give a new product :data:`DEFAULT_CHANNELS` (no rules); called by
    :func:`hub.services.releases.create_product` in its transaction, audited there."""
    now = ctx.now()
    made = [Channel(product_id=product.id, name=name, position=i, required_approvals=0,
                    min_successes=0, no_failures=False, soak_seconds=0, created_at=now)
            for i, name in enumerate(DEFAULT_CHANNELS)]
    ctx.session.add_all(made)
    ctx.session.flush()
    return made


def _order(channels: Sequence[Channel]) -> list[str]:
    return [c.name for c in channels]


def _renumber(session: Session, channels: Sequence[Channel]) -> None:
    for i, channel in enumerate(channels):
        channel.position = i
    session.flush()


def add_channel(ctx: ServiceContext, product_name: str, name: str, *,
                after: str | None = None, first: bool = False) -> Channel:
    """Add channel ``name`` to a product: at the end, after channel ``after``, or first.

    Raises:
        PermissionDeniedError (admin: ``channel.manage``), NotFoundError (product,
        ``after``), ValidationError (name, both ``after`` and ``first``), ConflictError
        (exists, or the product has :data:`MAX_CHANNELS`).
    """
    require(ctx.actor, "channel.manage")
    product = get_product(ctx.session, product_name)
    wanted = normalize_name(name)
    if after is not None and first:
        raise ValidationError("give --after CHANNEL or --first, not both")
    channels = list_channels(ctx.session, product)
    if any(c.name == wanted for c in channels):
        raise ConflictError(f"channel {wanted} of product {product.name} already exists")
    if len(channels) >= MAX_CHANNELS:
        raise ConflictError(f"product {product.name} has {len(channels)} channels, the limit "
                            f"is {MAX_CHANNELS}")
    index = len(channels)
    if first:
        index = 0
    elif after is not None:
        index = channels.index(get_channel(ctx.session, product, after)) + 1
    channel = Channel(product_id=product.id, name=wanted, position=len(channels),
                      required_approvals=0, min_successes=0, no_failures=False,
                      soak_seconds=0, created_at=ctx.now())
    ctx.session.add(channel)
    channels.insert(index, channel)
    _renumber(ctx.session, channels)
    audit.record(ctx, "channel.add", "product", product.name,
                 {"channel": wanted, "order": _order(channels)})
    return channel


def remove_channel(ctx: ServiceContext, product_name: str, name: str) -> list[str]:
    """Remove a channel; returns the releases it held (``VERSION``), which stay in the other
    channels. Its promotion approvals go with it.

    Raises:
        PermissionDeniedError, NotFoundError, ConflictError (environments subscribe to it —
        named —, or it is the product's only channel).
    """
    require(ctx.actor, "channel.manage")
    session = ctx.session
    product = get_product(session, product_name)
    channel = get_channel(session, product, name)
    envs = subscribers(session, channel)
    if envs:
        names = ", ".join(e.name for e in envs)
        raise ConflictError(
            f"channel {channel.name} of product {product.name} has subscribers ({names}): "
            f"subscribe them to another channel or unsubscribe them first")
    channels = list_channels(session, product)
    if len(channels) == 1:
        raise ConflictError(f"channel {channel.name} is the only channel of product "
                            f"{product.name}; a product keeps at least one")
    held = [e.release.version for e in active_entries(session, channel)]
    session.execute(delete(PromotionApproval).where(PromotionApproval.channel_id == channel.id))
    session.execute(delete(ChannelEntry).where(ChannelEntry.channel_id == channel.id))
    channels.remove(channel)
    session.delete(channel)
    session.flush()
    _renumber(session, channels)
    audit.record(ctx, "channel.remove", "product", product.name,
                 {"channel": channel.name, "releases": held, "order": _order(channels)})
    return held


def reorder_channels(ctx: ServiceContext, product_name: str,
                     names: Sequence[str]) -> list[Channel]:
    """Put the product's channels in the order ``names`` (each channel exactly once).

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (a channel missing, twice or
        unknown).
    """
    require(ctx.actor, "channel.manage")
    product = get_product(ctx.session, product_name)
    channels = list_channels(ctx.session, product)
    by_name = {c.name: c for c in channels}
    wanted = [normalize_name(n) for n in names]
    if sorted(wanted) != sorted(by_name) or len(set(wanted)) != len(wanted):
        raise ValidationError(
            f"name every channel of product {product.name} exactly once: "
            f"{', '.join(_order(channels))}; got {', '.join(wanted) or 'none'}")
    before = _order(channels)
    ordered = [by_name[n] for n in wanted]
    _renumber(ctx.session, ordered)
    audit.record(ctx, "channel.reorder", "product", product.name,
                 {"from": before, "to": wanted})
    return ordered


def _check_range(what: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise ValidationError(f"{what} must be between 0 and {top}, not {value}")


def set_rule(ctx: ServiceContext, product_name: str, name: str, rule: ChannelRule) -> Channel:
    """Change the promotion rule of a channel (the fields of ``rule`` that are set).

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (out of range; a rule on the
        first channel, which releases enter on approval, never by promotion).
    """
    require(ctx.actor, "channel.manage")
    product = get_product(ctx.session, product_name)
    channel = get_channel(ctx.session, product, name)
    if channel.position == 0:
        raise ValidationError(
            f"channel {channel.name} is the first channel of product {product.name}: releases "
            "enter it when approved, never by promotion, so a promotion rule would not apply")
    if rule.required_approvals is not None:
        _check_range("required approvals", rule.required_approvals, MAX_PROMOTION_APPROVALS)
    if rule.min_successes is not None:
        _check_range("minimum successful agents", rule.min_successes, MAX_MIN_SUCCESSES)
    if rule.soak_seconds is not None:
        _check_range("soak seconds", rule.soak_seconds, MAX_SOAK_SECONDS)
    if rule.preflight_within_h is not None:
        _check_range("preflight hours", rule.preflight_within_h, MAX_PREFLIGHT_HOURS)
    before = rule_json(channel)
    for field in ("required_approvals", "min_successes", "no_failures", "soak_seconds"):
        value = getattr(rule, field)
        if value is not None:
            setattr(channel, field, value)
    if rule.preflight_within_h is not None:
        channel.preflight_within_h = rule.preflight_within_h or None
    ctx.session.flush()
    audit.record(ctx, "channel.rule", "product", product.name,
                 {"channel": channel.name, "from": before, "to": rule_json(channel)})
    return channel


def rule_json(channel: Channel) -> dict[str, object]:
    """A channel's rule as plain data (audit details, ``--json``)."""
    return {"required_approvals": channel.required_approvals,
            "min_successes": channel.min_successes,
            "no_failures": channel.no_failures,
            "soak_seconds": channel.soak_seconds,
            "preflight_within_h": channel.preflight_within_h}


def describe_rule(channel: Channel, previous: Channel | None) -> str:
    """The rule in words: ``2 approvers; succeeded on ≥ 3 agents of CANARY; no failure;
    soak 1h`` (or what the first channel does)."""
    if previous is None:
        return "entered when a release is approved"
    parts = []
    if channel.required_approvals:
        parts.append(f"{channel.required_approvals} approver(s) of the promotion, not the "
                     "author")
    if channel.min_successes:
        parts.append(f"succeeded on at least {channel.min_successes} agent(s) subscribed to "
                     f"{previous.name}")
    if channel.no_failures:
        parts.append(f"no failure in {previous.name}")
    if channel.soak_seconds:
        parts.append(f"soak {format_duration(channel.soak_seconds)} since the last success in "
                     f"{previous.name}")
    if channel.preflight_within_h:
        parts.append(f"a preflight plan passed on every agent subscribed to {channel.name} "
                     f"within {channel.preflight_within_h} h")
    return "; ".join(parts) or "no conditions"


# --- subscriptions -------------------------------------------------------------------------


def subscribe(ctx: ServiceContext, environment: str, product_name: str,
              channel_name: str) -> tuple[ChannelSubscription, str | None]:
    """Subscribe ``environment`` to a product's channel (replacing its subscription to
    another channel of that product); returns it and the channel it replaced, if any.

    Subscribing deploys nothing by itself: the next release reaching the channel is planned
    for the environment (docs/governance.md).

    Raises:
        PermissionDeniedError (``environment.update`` there), NotFoundError,
        ConflictError (already subscribed to that channel).
    """
    session = ctx.session
    env = get_environment(session, environment)
    require_ctx(ctx, "environment.update", env)
    product = get_product(session, product_name)
    channel = get_channel(session, product, channel_name)
    existing = session.scalar(select(ChannelSubscription).where(
        ChannelSubscription.environment_id == env.id,
        ChannelSubscription.product_id == product.id))
    previous = None
    if existing is not None:
        if existing.channel_id == channel.id:
            raise ConflictError(f"environment {env.name} already subscribes to {channel.name} "
                                f"of product {product.name}")
        previous = existing.channel.name
        existing.channel = channel
        existing.created_at = ctx.now()
        existing.created_by = ctx.actor_name
        sub = existing
    else:
        sub = ChannelSubscription(environment=env, product=product, channel=channel,
                                  created_at=ctx.now(), created_by=ctx.actor_name)
        session.add(sub)
    session.flush()
    audit.record(ctx, "environment.subscribe", "environment", env.name,
                 {"product": product.name, "channel": channel.name, "previous": previous})
    return sub, previous


def unsubscribe(ctx: ServiceContext, environment: str, product_name: str) -> str:
    """End ``environment``'s subscription to ``product``; returns the channel it followed.
    Deployments already planned stay (a recall still cancels them).

    Raises:
        PermissionDeniedError, NotFoundError (also: not subscribed).
    """
    session = ctx.session
    env = get_environment(session, environment)
    require_ctx(ctx, "environment.update", env)
    product = get_product(session, product_name)
    existing = session.scalar(select(ChannelSubscription).where(
        ChannelSubscription.environment_id == env.id,
        ChannelSubscription.product_id == product.id))
    if existing is None:
        raise NotFoundError(f"environment {env.name} subscribes to no channel of product "
                            f"{product.name}")
    channel: str = existing.channel.name
    session.delete(existing)
    session.flush()
    audit.record(ctx, "environment.unsubscribe", "environment", env.name,
                 {"product": product.name, "channel": channel})
    return channel


def when(value: datetime | None) -> str:
    """``2026-11-23 09:00 UTC`` for messages."""
    return "-" if value is None else str(value.strftime("%Y-%m-%d %H:%M UTC"))
