"""``tiangong hub schedule export | report | list | remove``: the hub's own timed work —
exports and reports of an environment to a file share on a cron, run by the hub scheduler
(``hub.services.hub_schedules``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from hub.cli.base import _done, _emit, _services, hub, json_option


@hub.group("schedule")
def schedule() -> None:
    """The hub's own timed work: scheduled exports to a file share, run by the hub
    scheduler (`hub serve` runs it) at each fire time of a cron expression."""


F = TypeVar("F", bound=Callable[..., Any])


def _schedule_options(what: str) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for option in reversed((
            click.option("--environment", required=True, help=f"Whose {what}."),
            click.option("--to", "to", required=True, type=click.Path(file_okay=False),
                         help="The directory (a mounted file share) written into."),
            click.option("--cron", required=True, metavar="'M H DOM MON DOW'",
                         help="5 fields (minute hour day-of-month month day-of-week), or 6 "
                              "with seconds first."),
            click.option("--timezone", default="UTC", show_default=True,
                         help="IANA time zone of --cron."),
            json_option, click.pass_context)):
            f = cast(F, option(f))
        return f
    return wrap


def _add(ctx: click.Context, kind: str, environment: str, to: str, cron: str, timezone: str,
         as_json: bool) -> None:
    import os

    from hub.services.hub_schedules import add_export, add_report

    add = add_report if kind == "report" else add_export
    with _services(ctx) as sc:
        info = add(sc, environment, os.path.abspath(to), cron, timezone)
    _done(as_json, f"schedule {info.id}: {kind} {environment} to {info.target_dir} at "
          f"'{info.cron}' ({info.timezone})", info.to_json())


@schedule.command("export")
@_schedule_options("queued deployments to export")
def export(ctx: click.Context, environment: str, to: str, cron: str, timezone: str,
           as_json: bool) -> None:
    """At each fire time of CRON, export what is queued for ENVIRONMENT into --to (admins;
    the same export as `hub export`, written atomically and audited)."""
    _add(ctx, "export", environment, to, cron, timezone, as_json)


@schedule.command("report")
@_schedule_options("report to write")
def report(ctx: click.Context, environment: str, to: str, cron: str, timezone: str,
           as_json: bool) -> None:
    """At each fire time of CRON, write ENVIRONMENT's report REPORT-<env>.json into --to
    (admins): agents, deployments, failures since the last report, awaited results, open
    incidents, undelivered notifications."""
    _add(ctx, "report", environment, to, cron, timezone, as_json)


@schedule.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Active schedules, with the last fire time and what it did."""
    from hub.services.hub_schedules import list_schedules

    with _services(ctx) as sc:
        rows = [i.to_json() for i in list_schedules(sc)]
    if not as_json:
        for row in rows:
            last = row["last_result"] or {}
            row["last"] = (f"{len(last.get('written', []))} written, "
                           f"{len(last.get('failed', []))} failed"
                           + (f", {last['error']}" if last.get("error") else "")
                           if last else "")
    _emit(rows, as_json, None if as_json else ["id", "kind", "environment", "to", "cron",
                                                "timezone", "last_fire_at", "last"])


@schedule.command("remove")
@click.argument("schedule_id", type=int)
@json_option
@click.pass_context
def remove(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """End schedule SCHEDULE_ID (admins)."""
    from hub.services.hub_schedules import remove_schedule

    with _services(ctx) as sc:
        info = remove_schedule(sc, schedule_id)
    _done(as_json, f"schedule {schedule_id} removed", info.to_json())
