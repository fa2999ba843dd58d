"""What ``tiangong hub channels|environments subscribe|unsubscribe|subscriptions|
preflight-policy`` and their ``tiangong remote`` twins print and which options they take, in
one place so that the two say the same words (only click and the standard library:
``tiangong remote`` has no hub extra). Each ``row`` is the command's ``--json`` answer, the
same from the CLI and from the API."""

from __future__ import annotations

from typing import Any

import click

from tiangong.options import stack

__all__ = ["CHANNEL_COLUMNS", "SUBSCRIPTION_COLUMNS", "add_options", "added", "list_rows",
           "ordered", "policy", "preflight_options", "removed", "rule", "rule_options",
           "subscribe_options", "subscribed", "unsubscribe_options", "unsubscribed"]

CHANNEL_COLUMNS = ("position", "channel", "releases", "subscribers", "rule")
SUBSCRIPTION_COLUMNS = ("product", "channel", "since", "by")


def list_rows(rows: list[dict[str, Any]], as_json: bool) -> list[dict[str, Any]]:
    """``channels list``: the rows as printed (a table leaves the rule's settings out)."""
    return rows if as_json else [{k: v for k, v in r.items() if k != "rule_settings"}
                                 for r in rows]


def _order(row: dict[str, Any]) -> str:
    return " → ".join(row["order"])


def added(row: dict[str, Any]) -> str:
    return f"channel {row['channel']} added to {row['product']}: {_order(row)}"


def removed(row: dict[str, Any]) -> str:
    what = f" (it held {', '.join(row['releases'])})" if row["releases"] else ""
    return f"channel {row['channel']} removed from {row['product']}{what}: {_order(row)}"


def ordered(row: dict[str, Any]) -> str:
    return f"channels of {row['product']}: {_order(row)}"


def rule(row: dict[str, Any]) -> str:
    return f"{row['product']} {row['channel']}: {row['rule']}"


def subscribed(row: dict[str, Any]) -> str:
    was = f" (was {row['previous']})" if row["previous"] else ""
    return (f"environment {row['environment']} subscribes to {row['channel']} of "
            f"{row['product']}{was}")


def unsubscribed(row: dict[str, Any]) -> str:
    return (f"environment {row['environment']} no longer subscribes to {row['channel']} of "
            f"{row['product']}")


def policy(row: dict[str, Any]) -> str:
    return f"environment {row['environment']}: {row['policy']}"


#: ``channels rule PRODUCT NAME`` and its options (each unset keeps its value)
rule_options = stack(
    click.argument("product"), click.argument("name"),
    click.option("--approvals", type=int, default=None,
                 help="Distinct people, never the release's author, who must approve a "
                      "promotion into this channel (`releases approve-promotion`); 0: "
                      "none."),
    click.option("--min-successes", type=int, default=None, metavar="N",
                 help="Health gate: the release succeeded on at least N agents of the "
                      "environments subscribed to the previous channel; 0: off."),
    click.option("--no-failures/--allow-failures", default=None,
                 help="Health gate: refuse while the release failed (failed, rejected or "
                      "interrupted) in an environment subscribed to the previous "
                      "channel."),
    click.option("--soak", default=None, metavar="DURATION",
                 help="Health gate: time since the last success in the previous channel "
                      "(90s, 30m, 6h, 2d); 0: off."),
    click.option("--preflight-within", "preflight_within_h", type=click.IntRange(0, 720),
                 default=None, metavar="HOURS",
                 help="Preflight gate: a plan of the release passed on every agent "
                      "subscribed to this channel within HOURS (`hub releases plan`); 0: "
                      "off."),
)


#: ``environments preflight-policy NAME [--within H | --clear]``
preflight_options = stack(
    click.argument("name"),
    click.option("--within", "within_h", type=int, default=None,
                 help="Every deployment to NAME needs a preflight plan of its release passed "
                      "on each target agent within this many hours."),
    click.option("--clear", is_flag=True, help="Deployments to NAME need no passed plan "
                 "again."))
#: ``channels add PRODUCT NAME [--after CHANNEL | --first]``
add_options = stack(
    click.argument("product"), click.argument("name"),
    click.option("--after", default=None, metavar="CHANNEL",
                 help="Insert after this channel (default: at the end)."),
    click.option("--first", is_flag=True,
                 help="Insert as the first channel (where approved releases enter)."))
#: ``environments subscribe ENVIRONMENT --product P --channel C``
subscribe_options = stack(click.argument("environment"),
                           click.option("--product", required=True),
                           click.option("--channel", required=True))
#: ``environments unsubscribe ENVIRONMENT --product P``
unsubscribe_options = stack(click.argument("environment"),
                             click.option("--product", required=True))
