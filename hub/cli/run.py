"""``tiangong run``: ad-hoc runs by the hub's local admin (docs/operations.md, "Ad-hoc runs").

``run sql --file F --agent A --connection C`` and ``run shell --file F --agent A`` build a
one-off release (product ``adhoc``) and submit it; when the agent's environment's approval
rule is met it is queued for that agent and exported to ``--out``; otherwise the command
stops, naming the approval it waits for, and ``run ship VERSION --agent A --out DIR`` ships
it once approved. Same global options and identity rules as ``tiangong hub`` (local-admin
mode). Every rule is in ``hub.services.adhoc`` and the services it calls.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from hub.cli.base import (
    _DATA_DIR_HELP,
    _LOCAL_ADMIN_HELP,
    AS_DEPRECATED,
    CliState,
    HubGroup,
    _emit,
    _services,
    json_option,
)
from signing.durations import parse_duration

__all__ = ["run"]


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", envvar="TIANGONG_HUB_DATA_DIR",
              type=click.Path(file_okay=False, path_type=Path), help=_DATA_DIR_HELP)
@click.option("--local-admin", "actor", envvar="TIANGONG_HUB_LOCAL_ADMIN", metavar="NAME",
              help=_LOCAL_ADMIN_HELP)
@click.option("--as", "actor_as", envvar="TIANGONG_HUB_AS", metavar="USER", hidden=True)
@click.pass_context
def run(ctx: click.Context, data_dir: Path | None, actor: str | None,
        actor_as: str | None) -> None:
    """Run one SQL or shell file on one agent, through the hub's audited release path.

    Runs on the hub's machine in local-admin mode, like `tiangong hub`.
    """
    if actor_as is not None:
        click.echo(AS_DEPRECATED, err=True)
    ctx.obj = CliState(data_dir, actor if actor is not None else actor_as)


_out = click.option("--out", "out_dir", required=True,
                    type=click.Path(file_okay=False, path_type=Path),
                    help="Where to write the bundle (the mounted USB stick or share).")
_file = click.option("--file", "script", required=True,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The file to run (stored with the release, at most 16 MiB).")
_agent = click.option("--agent", "agent_id", required=True,
                      help="The enrolled agent that runs it.")
_timeout = click.option("--timeout", default="10m", show_default=True, metavar="DURATION",
                        help="How long the step may run (1s to 24h; checked like a "
                             "release's).")
_expires = click.option("--expires", default="14d", show_default=True, metavar="DURATION",
                        help="How long the bundle stays valid at the site.")


def _expiry(text: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _ship(ctx: click.Context, product: str, version: str, agent_id: str, out_dir: Path,
          expires_in: timedelta, as_json: bool, created: dict[str, Any]) -> None:
    """Second transaction: ship (or refuse, leaving the submitted release as it is)."""
    from hub.services.adhoc import ship_adhoc
    from hub.services.releases import get_release

    row = {**created, "product": product, "version": version, "agent": agent_id}
    # A refusal (approvals missing, preflight) rolls this transaction back: nothing queued,
    # no sequence used; the submitted release stays as the first transaction left it.
    with _services(ctx) as sc:
        report = ship_adhoc(sc, get_release(sc.session, product, version), agent_id,
                            out_dir, expires_in=expires_in)
        written: list[dict[str, Any]] = [
            {"deployment": b.deployment_id, "sequence": b.sequence,
             "files": [str(p) for p in b.paths]} for b in report.written]
        failed = [{"deployment": d, "reason": r} for d, r in report.failed]
    ok = bool(written) and not failed
    if as_json:
        _emit({**row, "shipped": ok, "written": written, "failed": failed}, True)
    else:
        for w in written:
            click.echo(f"{product} {version}: deployment {w['deployment']}, sequence "
                       f"{w['sequence']} for agent {agent_id}: {', '.join(w['files'])}")
        for f in failed:
            click.echo(f"error: deployment {f['deployment']}: {f['reason']}", err=True)
    if not ok:
        sys.exit(1)


def _run(ctx: click.Context, step: dict[str, Any], script: Path, agent_id: str,
         out_dir: Path, expires: str, as_json: bool) -> None:
    from hub.services.adhoc import create_adhoc_release

    expires_in = _expiry(expires)
    with _services(ctx) as sc:
        made = create_adhoc_release(sc, agent_id, step, script)
        product, version = made.release.product.name, made.release.version
        created = {"environment": made.environment,
                   "content_hash": made.release.content_hash}
    if not as_json:
        click.echo(f"release {product} {version} created and submitted "
                   f"({step['kind']} {script.name} for agent {agent_id}, "
                   f"environment {created['environment']})")
    _ship(ctx, product, version, agent_id, out_dir, expires_in, as_json, created)


@run.command("sql")
@_file
@_agent
@click.option("--connection", required=True, help="The agent's connection (agent.toml).")
@click.option("--engine", type=click.Choice(["postgres", "mysql"]), default="postgres",
              show_default=True, help="The connection's database engine.")
@_timeout
@_out
@_expires
@json_option
@click.pass_context
def run_sql(ctx: click.Context, script: Path, agent_id: str, connection: str, engine: str,
            timeout: str, out_dir: Path, expires: str, as_json: bool) -> None:
    """Run a SQL file on one agent's connection (a one-off release of product adhoc)."""
    step = {"name": f"run {script.name}", "kind": "sql", "engine": engine,
            "connection": connection, "timeout": timeout}
    _run(ctx, step, script, agent_id, out_dir, expires, as_json)


@run.command("shell")
@_file
@_agent
@click.option("--interpreter", type=click.Choice(["sh", "bash", "python"]), default="sh",
              show_default=True, help="What runs the file at the agent.")
@_timeout
@_out
@_expires
@json_option
@click.pass_context
def run_shell(ctx: click.Context, script: Path, agent_id: str, interpreter: str,
              timeout: str, out_dir: Path, expires: str, as_json: bool) -> None:
    """Run a script on one agent's machine (a one-off release of product adhoc)."""
    step = {"name": f"run {script.name}", "kind": "shell", "interpreter": interpreter,
            "timeout": timeout}
    _run(ctx, step, script, agent_id, out_dir, expires, as_json)


@run.command("ship")
@click.argument("version")
@click.option("--agent", "agent_id", required=True)
@_out
@_expires
@json_option
@click.pass_context
def run_ship(ctx: click.Context, version: str, agent_id: str, out_dir: Path, expires: str,
             as_json: bool) -> None:
    """Ship ad-hoc release VERSION once approved: queue it for --agent and export it."""
    from hub.services.adhoc import ADHOC_PRODUCT

    _ship(ctx, ADHOC_PRODUCT, version, agent_id, out_dir, _expiry(expires), as_json, {})
