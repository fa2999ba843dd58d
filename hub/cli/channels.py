"""``tiangong hub channels …`` (list, add, remove, order, rule), ``hub releases promote |
approve-promotion | recall`` and ``hub environments subscribe | unsubscribe``: the commands
of release channels (rules in ``hub.services.channels`` and ``hub.services.promotion``;
docs/governance.md)."""

from __future__ import annotations

from typing import Any

import click

from hub.cli.base import _done, _emit, _services, hub, json_option
from hub.cli.releases import releases
from hub.cli.sites import environments
from tiangong import channel_text, options


@hub.group()
def channels() -> None:
    """Release channels of a product (RELEASE → CANARY → STABLE by default).

    An approved release enters the first channel; `hub releases promote` moves it to the
    next one under that channel's rule; environments subscribe to one channel per product
    and get a planned deployment when a release reaches it. See docs/governance.md.
    """


def _channel_rows(sc: Any, product: str) -> list[dict[str, Any]]:
    from hub.services.channels import channel_rows
    from hub.services.releases import get_product

    return channel_rows(sc.session, get_product(sc.session, product))


@channels.command("list")
@click.argument("product")
@json_option
@click.pass_context
def channels_list(ctx: click.Context, product: str, as_json: bool) -> None:
    """The channels of PRODUCT in order: the releases in each (newest first), the
    environments subscribed, and the rule for promoting into it."""
    from hub.services.users import require

    with _services(ctx) as sc:
        require(sc.actor, "view")
        rows = _channel_rows(sc, product)
    _emit(channel_text.list_rows(rows, as_json), as_json, channel_text.CHANNEL_COLUMNS)


@channels.command("add")
@channel_text.add_options
@json_option
@click.pass_context
def channels_add(ctx: click.Context, product: str, name: str, after: str | None, first: bool,
                 as_json: bool) -> None:
    """Add channel NAME to PRODUCT (admin). Names are stored in upper case and never
    renamed; a new channel has no promotion rule until `hub channels rule` sets one."""
    from hub.services.channels import add_channel, channel_order

    with _services(ctx) as sc:
        channel = add_channel(sc, product, name, after=after, first=first)
        row = {"product": product, "channel": channel.name,
               "order": channel_order(sc.session, product)}
    _done(as_json, channel_text.added(row), row)


@channels.command("remove")
@click.argument("product")
@click.argument("name")
@json_option
@click.pass_context
def channels_remove(ctx: click.Context, product: str, name: str, as_json: bool) -> None:
    """Remove channel NAME of PRODUCT (admin); refused while environments subscribe to it.
    The releases it held stay in the other channels."""
    from hub.services.channels import channel_order, normalize_name, remove_channel

    with _services(ctx) as sc:
        held = remove_channel(sc, product, name)
        row = {"product": product, "channel": normalize_name(name), "releases": held,
               "order": channel_order(sc.session, product)}
    _done(as_json, channel_text.removed(row), row)


@channels.command("order")
@click.argument("product")
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_context
def channels_order(ctx: click.Context, product: str, names: tuple[str, ...],
                   as_json: bool) -> None:
    """Reorder the channels of PRODUCT (admin): name every channel once, first to last
    (`hub channels order hello RELEASE BETA CANARY STABLE`)."""
    from hub.services.channels import reorder_channels

    with _services(ctx) as sc:
        row = {"product": product,
               "order": [c.name for c in reorder_channels(sc, product, names)]}
    _done(as_json, channel_text.ordered(row), row)


@channels.command("rule")
@channel_text.rule_options
@json_option
@click.pass_context
def channels_rule(ctx: click.Context, product: str, name: str, approvals: int | None,
                  min_successes: int | None, no_failures: bool | None, soak: str | None,
                  preflight_within_h: int | None, as_json: bool) -> None:
    """Show or change the rule for promoting a release into channel NAME (admin to
    change). Options not given keep their value; with none, the rule is printed."""
    from hub.services.channels import (
        ChannelRule,
        get_channel,
        parse_duration,
        rule_answer,
        set_rule,
    )
    from hub.services.releases import get_product
    from hub.services.users import require

    with _services(ctx) as sc:
        rule = ChannelRule(approvals, min_successes, no_failures,
                           None if soak is None else parse_duration(soak), preflight_within_h)
        if rule == ChannelRule():
            require(sc.actor, "view")
            channel = get_channel(sc.session, get_product(sc.session, product), name)
        else:
            channel = set_rule(sc, product, name, rule)
        data = {**rule_answer(sc.session, channel), "product": product}
    _done(as_json, channel_text.rule(data), data)


# --- releases ---------------------------------------------------------------------------


@releases.command("promote")
@options.promotion("The channel to enter (default: the one after the last channel the "
                   "release is in).")
@json_option
@click.pass_context
def releases_promote(ctx: click.Context, product: str, version: str, to: str | None,
                     comment: str, as_json: bool) -> None:
    """Promote a release to the next channel (operator). Refused, with everything that is
    missing, unless the channel's rule is met (`hub channels rule`); environments
    subscribed to the channel get a planned deployment, queued for export once the
    release has the approvals the environment requires."""
    from hub.services.promotion import promote, promotion_json

    with _services(ctx) as sc:
        done = promote(sc, product, version, to, comment=comment)
        data = promotion_json(product, version, done)
    planned = data["deployments"]
    lines = [f"release {product} {version} promoted from {data['from']} to {data['to']}"]
    lines += [f"  deployment {p['deployment']} for {p['environment']}"
              f"{' agent ' + str(p['agent']) if p['agent'] else ''}: {p['state']}"
              for p in planned]
    if not planned:
        lines.append(f"  no environment subscribed to {data['to']} needs a deployment")
    _done(as_json, "\n".join(lines), data)


@releases.command("approve-promotion")
@options.promotion("The channel (default: the next one).")
@json_option
@click.pass_context
def releases_approve_promotion(ctx: click.Context, product: str, version: str, to: str | None,
                               comment: str, as_json: bool) -> None:
    """Approve promoting a release into a channel (approver; never the release's author).
    Counts toward the channel's --approvals rule; `hub releases promote` then promotes."""
    from hub.services.promotion import approve_promotion, promotion_approvers
    from hub.services.releases import get_release

    with _services(ctx) as sc:
        _, channel = approve_promotion(sc, product, version, to, comment=comment)
        have = promotion_approvers(sc.session, get_release(sc.session, product, version),
                                   channel)
        need, name = channel.required_approvals, channel.name
    _done(as_json, f"{sc.actor_name} approved promoting {product} {version} to {name} "
          f"({len(have)} of {need} required: {', '.join(have)})",
          {"product": product, "version": version, "channel": name, "approvers": have,
           "required": need})


@releases.command("recall")
@options.recall
@json_option
@click.pass_context
def releases_recall(ctx: click.Context, product: str, version: str, channel: str, reason: str,
                    as_json: bool) -> None:
    """Recall a release from a channel (operator): its planned and queued deployments in
    the subscribed environments are cancelled; bundles exported but not yet at the site
    are declared lost, and the next bundle to each such agent carries that signed
    decision, so the agent refuses the recalled bundle with this reason."""
    from hub.services.promotion import recall, recall_json

    with _services(ctx) as sc:
        done = recall(sc, product, version, channel, reason)
        data = recall_json(product, version, reason, done)
        lines = [f"release {product} {version} recalled from {', '.join(done.channels)}"]
        lines += [f"  deployment {d.id} ({d.environment.name}): cancelled"
                  for d in done.cancelled]
        lines += [f"  deployment {d.id} ({d.environment.name}): bundle declared lost; the next "
                  "bundle to that agent tells the site" for d in done.lost]
        lines += [f"  deployment {d.id} ({d.environment.name}): already at the site "
                  f"({d.state}); the hub cannot stop it" for d in done.at_site]
        lines += [f"  deployment {d.id} ({d.environment.name}): being exported now; run the "
                  "recall again when the export has finished" for d in done.in_export]
    _done(as_json, "\n".join(lines), data)


# --- environments -----------------------------------------------------------------------


@environments.command("subscribe")
@channel_text.subscribe_options
@json_option
@click.pass_context
def environments_subscribe(ctx: click.Context, environment: str, product: str, channel: str,
                           as_json: bool) -> None:
    """Subscribe ENVIRONMENT to a channel of a product (admin of the environment); replaces
    its subscription to another channel of that product. The next release reaching the
    channel is planned for the environment; nothing already in the channel is."""
    from hub.services.channels import subscribe

    with _services(ctx) as sc:
        sub, previous = subscribe(sc, environment, product, channel)
        row = {"environment": environment, "product": product, "channel": sub.channel.name,
               "previous": previous}
    _done(as_json, channel_text.subscribed(row), row)


@environments.command("unsubscribe")
@channel_text.unsubscribe_options
@json_option
@click.pass_context
def environments_unsubscribe(ctx: click.Context, environment: str, product: str,
                             as_json: bool) -> None:
    """End ENVIRONMENT's subscription to a product's channel (admin of the environment).
    Deployments already planned stay."""
    from hub.services.channels import unsubscribe

    with _services(ctx) as sc:
        row = {"environment": environment, "product": product,
               "channel": unsubscribe(sc, environment, product)}
    _done(as_json, channel_text.unsubscribed(row), row)


@environments.command("subscriptions")
@click.argument("environment")
@json_option
@click.pass_context
def environments_subscriptions(ctx: click.Context, environment: str, as_json: bool) -> None:
    """The channels ENVIRONMENT follows, one per product."""
    from hub.services.channels import subscription_rows
    from hub.services.environments import environment_for

    with _services(ctx) as sc:
        rows = subscription_rows(sc.session, environment_for(sc, environment))
    _emit(rows, as_json, channel_text.SUBSCRIPTION_COLUMNS)


__all__ = ["channels"]
