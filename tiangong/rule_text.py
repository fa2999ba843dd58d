"""What ``tiangong hub windows|freezes|deployments why|override`` and their ``tiangong
remote`` twins print, in one place so that the two say the same words (only click and the
standard library: ``tiangong remote`` has no hub extra). ``row`` is a rule as
``hub.services.windows.rule_json`` gives it (the CLI's and the API's JSON)."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["RULE_COLUMNS", "added", "columns", "echo_why", "ended", "override_confirmed",
           "override_requested", "removed"]

RULE_COLUMNS = ("id", "environment", "product", "description", "created_by")


def columns(kind: str) -> list[str]:
    """The table columns of a listing of ``kind`` (freezes: when and by whom ended)."""
    return [*RULE_COLUMNS, *(("ended_at", "ended_by") if kind == "freeze" else ())]


def added(kind: str, row: dict[str, Any]) -> str:
    return (f"{kind} {row['id']} added: {row['description']} (environment "
            f"{row['environment'] or 'every'}, product {row['product'] or 'every'})")


def removed(kind: str, rule_id: int, row: dict[str, Any]) -> str:
    return f"{kind} {rule_id} removed ({row['description']})"


def ended(rule_id: int, row: dict[str, Any]) -> str:
    return f"freeze {rule_id} ended ({row['description']})"


def override_requested(row: dict[str, Any], group: str) -> str:
    """``group``: the command group that confirms it (``tiangong hub``, ``tiangong remote``)."""
    return (f"override of deployment {row['deployment']} requested by {row['requested_by']}; "
            f"a second person confirms it with `{group} deployments confirm-override "
            f"{row['deployment']}`")


def override_confirmed(row: dict[str, Any]) -> str:
    return (f"override of deployment {row['deployment']} confirmed by {row['confirmed_by']} "
            f"(requested by {row['requested_by']})")


def echo_why(data: dict[str, Any]) -> None:
    """``deployments why`` for people: ``data`` has id, release, environment, state and
    waiting_for (each reason's kind and text, hub/services/readiness.py)."""
    head = (f"deployment {data['id']} ({data['release']} → {data['environment']}) is "
            f"{data['state']}")
    if not data["waiting_for"]:
        click.echo(f"{head}: waiting for nothing")
        return
    click.echo(f"{head}, waiting for:")
    for reason in data["waiting_for"]:
        click.echo(f"  {reason['kind']}: {reason['text']}")
