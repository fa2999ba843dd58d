"""Click option blocks that ``tiangong hub`` and ``tiangong remote`` commands share, so that
the local command and its remote twin take the same arguments, options and help (the words
they print are in ``rule_text``, ``run_text`` and ``channel_text``). Only click and the
standard library: ``tiangong remote`` has no hub extra."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["Decorator", "deployment_reason", "freeze_end", "promotion", "recall",
           "release_reject", "rule_add", "rule_list", "stack", "template_release"]

Decorator = Callable[[Any], Any]


def stack(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` as if written one per line, top first."""

    def apply(f: Any) -> Any:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


#: ``windows|freezes add SPEC [--environment E] [--product P]``
rule_add = stack(
    click.argument("spec"),
    click.option("--environment", default=None,
                 help="Only this environment (default: every environment)."),
    click.option("--product", default=None, help="Only this product (default: every "
                 "product)."))


def rule_list(kind: str) -> Decorator:
    """``windows|freezes list [--environment E] [--product P]``, and ``--all`` for freezes
    (ended ones are kept; windows never end)."""
    options = [click.option("--environment", default=None,
                            help="Those that apply to this environment."),
               click.option("--product", default=None,
                            help="Those that apply to this product.")]
    if kind == "freeze":
        options.append(click.option("--all", "include_ended", is_flag=True,
                                    help="Include ended freezes."))
    return stack(*options)


#: ``freezes end RULE_ID --reason TEXT``
freeze_end = stack(click.argument("rule_id", type=int),
                   click.option("--reason", required=True,
                                help="Why it ends now (audited)."))

#: ``deployments override DEPLOYMENT_ID --reason TEXT``
deployment_reason = stack(
    click.argument("deployment_id", type=int),
    click.option("--reason", required=True, help="Why it must deploy despite freezes and "
                 "windows (audited, and carried in the bundle)."))


def template_release(param_option: Decorator) -> Decorator:
    """``templates release NAME OUT --product P --version V [--param k=v …]``."""
    return stack(
        click.argument("name"),
        click.argument("out", type=click.Path(file_okay=False, path_type=Path)),
        click.option("--product", required=True),
        click.option("--version", "release_version", required=True),
        param_option)


_release = stack(click.argument("product"), click.argument("version"))


def promotion(to_help: str) -> Decorator:
    """``releases promote|approve-promotion PRODUCT VERSION [--to CHANNEL] [--comment]``."""
    return stack(_release,
                 click.option("--to", "to", default=None, metavar="CHANNEL", help=to_help),
                 click.option("--comment", default=""))


#: ``releases recall PRODUCT VERSION --channel C --reason TEXT``
recall = stack(
    _release,
    click.option("--channel", required=True,
                 help="Pull the release from this channel (and every later one it is in)."),
    click.option("--reason", required=True, help="Why (required; the sites see it)."))

#: ``releases reject PRODUCT VERSION --comment TEXT [--environment E]``
release_reject = stack(_release, click.option("--comment", required=True,
                                              help="Why (required)."),
                       click.option("--environment", default=None))
