"""``tiangong run``: ad-hoc runs by the hub's local admin (docs/operations.md, "Ad-hoc runs").

``run sql|shell|k8s --file F --agent A`` and ``run http --url U --agent A`` build a one-off
release (product ``adhoc``) and submit it; when the agent's environment's ad-hoc policy is
met it is queued for that agent and exported to ``--out``, or left to the live server's push
(``--follow`` streams the live log and the result); otherwise the command stops, naming the
approval it waits for, and ``run ship VERSION --agent A`` ships it once approved. Same
global options and identity rules as ``tiangong hub`` (local-admin mode). Every rule is in
``hub.services.adhoc`` and the services it calls.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
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
    _config,
    _emit,
    _services,
    _state,
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


_out = click.option("--out", "out_dir", default=None,
                    type=click.Path(file_okay=False, path_type=Path),
                    help="Write the bundle here for media (the mounted USB stick or share). "
                         "Without it the run is queued and the hub's live server delivers "
                         "it when the agent is online.")
_follow = click.option("--follow", is_flag=True,
                       help="Stream the agent's live log, then the result (not with --out).")
_follow_timeout = click.option("--follow-timeout", default="30m", show_default=True,
                               metavar="DURATION",
                               help="How long --follow waits for the result (the run goes "
                                    "on after it stops waiting).")
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


def _shipping(f: Any) -> Any:
    """The options every run command shares, in the order --help shows them."""
    for option in (json_option, _follow_timeout, _follow, _expires, _out, _agent):
        f = option(f)
    return f


def _expiry(text: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@dataclass(frozen=True)
class _Delivery:
    agent_id: str
    out_dir: Path | None
    expires_in: timedelta
    follow: bool
    follow_for: timedelta
    as_json: bool


def _delivery(agent_id: str, out_dir: Path | None, expires: str, follow: bool,
              follow_timeout: str, as_json: bool) -> _Delivery:
    if follow and out_dir is not None:
        raise click.UsageError("--follow and --out exclude each other: a run on media comes "
                               "back with `tiangong hub import`")
    return _Delivery(agent_id, out_dir, _expiry(expires), follow, _expiry(follow_timeout),
                     as_json)


def _ship(ctx: click.Context, product: str, version: str, how: _Delivery,
          created: dict[str, Any]) -> None:
    """Second transaction: ship (or refuse, leaving the submitted release as it is)."""
    from hub.services.adhoc import ship_adhoc
    from hub.services.releases import get_release

    row = {**created, "product": product, "version": version, "agent": how.agent_id}
    # A refusal (approvals missing, preflight) rolls this transaction back: nothing queued,
    # no sequence used; the submitted release stays as the first transaction left it.
    with _services(ctx) as sc:
        shipped = ship_adhoc(sc, get_release(sc.session, product, version), how.agent_id,
                             how.out_dir, expires_in=how.expires_in)
        deployment = shipped.deployment.id
        report = shipped.report
        written: list[dict[str, Any]] = [
            {"deployment": b.deployment_id, "sequence": b.sequence,
             "files": [str(p) for p in b.paths]} for b in (report.written if report else [])]
        failed = [{"deployment": d, "reason": r} for d, r in (report.failed if report else [])]
    row = {**row, "deployment": deployment}
    if how.out_dir is None:
        if how.follow:
            _follow_run(ctx, deployment, how, row)
        elif how.as_json:
            _emit({**row, "shipped": True, "queued": True}, True)
        else:
            click.echo(f"{product} {version}: deployment {deployment} queued for agent "
                       f"{how.agent_id}; the hub's live server delivers it when the agent "
                       f"is online (`tiangong hub export --agent {how.agent_id}` for media)")
        return
    ok = bool(written) and not failed
    if how.as_json:
        _emit({**row, "shipped": ok, "written": written, "failed": failed}, True)
    else:
        for w in written:
            click.echo(f"{product} {version}: deployment {w['deployment']}, sequence "
                       f"{w['sequence']} for agent {how.agent_id}: {', '.join(w['files'])}")
        for f in failed:
            click.echo(f"error: deployment {f['deployment']}: {f['reason']}", err=True)
    if not ok:
        sys.exit(1)


def _follow_run(ctx: click.Context, deployment: int, how: _Delivery,
                row: dict[str, Any]) -> None:
    """Poll the hub's database for the live lines and the state of ``deployment`` until it
    is final or ``how.follow_for`` passed; print them as they come. Exit 0 only when the
    run succeeded."""
    from hub.services.run_follow import POLL_SECONDS, poll_run

    data_dir = _config(_state(ctx)).data_dir
    deadline = time.monotonic() + how.follow_for.total_seconds()
    after, said_offline = -1, False
    lines: list[dict[str, Any]] = []
    with _services(ctx) as sc:
        while True:
            progress = poll_run(sc, deployment, data_dir, after)
            sc.session.rollback()  # read-only: end the snapshot so the next poll sees news
            after = progress.last_seq
            for line in progress.lines:
                lines.append(line.to_json())
                if not how.as_json:
                    click.echo(f"[step {line.step + 1} {line.stream}] {line.text.rstrip()}")
            if not progress.agent_online and not said_offline and not progress.done:
                said_offline = True
                if not how.as_json:
                    click.echo(f"agent {how.agent_id} is not online: waiting for it to "
                               "connect (the run stays queued if you stop following)",
                               err=True)
            if progress.done or time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        result = progress.result
        steps = [{"step": s.index, "name": s.name, "status": s.status,
                  "summary": s.summary, "exit_code": s.exit_code}
                 for s in (result.steps if result else [])]
    ok = progress.done and progress.state == "succeeded"
    if how.as_json:
        _emit({**row, "state": progress.state, "done": progress.done, "lines": lines,
               "result": None if result is None else {
                   "status": result.status, "summary": result.summary, "steps": steps,
                   "problem": result.problem}}, True)
    elif not progress.done:
        click.echo(f"error: deployment {deployment} is still {progress.state} after "
                   f"{_duration(how.follow_for)}; it goes on at the agent (`tiangong hub "
                   f"deployments show {deployment}`)", err=True)
    else:
        click.echo(f"deployment {deployment}: {progress.state}"
                   + (f" — {result.summary}" if result and result.summary else ""))
        for s in steps:
            click.echo(f"  step {s['step']} {s['name']}: {s['status']}"
                       + (f" (exit {s['exit_code']})" if s["exit_code"] is not None else "")
                       + (f" — {s['summary']}" if s["summary"] else ""))
        if result is not None and result.problem:
            click.echo(f"error: {result.problem}", err=True)
    if not ok:
        sys.exit(1)


def _duration(d: timedelta) -> str:
    return f"{int(d.total_seconds())}s"


def _run(ctx: click.Context, step: dict[str, Any], script: Path | None,
         how: _Delivery) -> None:
    from hub.services.adhoc import create_adhoc_release

    with _services(ctx) as sc:
        made = create_adhoc_release(sc, how.agent_id, step, script)
        product, version = made.release.product.name, made.release.version
        created = {"environment": made.environment,
                   "content_hash": made.release.content_hash}
    if not how.as_json:
        what = script.name if script is not None else step.get("url", "")
        click.echo(f"release {product} {version} created and submitted "
                   f"({step['kind']} {what} for agent {how.agent_id}, "
                   f"environment {created['environment']})")
    _ship(ctx, product, version, how, created)


@run.command("sql")
@_file
@click.option("--connection", required=True, help="The agent's connection (agent.toml).")
@click.option("--engine", type=click.Choice(["postgres", "mysql"]), default="postgres",
              show_default=True, help="The connection's database engine.")
@_timeout
@_shipping
@click.pass_context
def run_sql(ctx: click.Context, script: Path, agent_id: str, connection: str, engine: str,
            timeout: str, out_dir: Path | None, expires: str, follow: bool,
            follow_timeout: str, as_json: bool) -> None:
    """Run a SQL file on one agent's connection (a one-off release of product adhoc)."""
    step = {"name": f"run {script.name}", "kind": "sql", "engine": engine,
            "connection": connection, "timeout": timeout}
    _run(ctx, step, script,
         _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json))


@run.command("shell")
@_file
@click.option("--interpreter", type=click.Choice(["sh", "bash", "python"]), default="sh",
              show_default=True, help="What runs the file at the agent.")
@_timeout
@_shipping
@click.pass_context
def run_shell(ctx: click.Context, script: Path, agent_id: str, interpreter: str,
              timeout: str, out_dir: Path | None, expires: str, follow: bool,
              follow_timeout: str, as_json: bool) -> None:
    """Run a script on one agent's machine (a one-off release of product adhoc)."""
    step = {"name": f"run {script.name}", "kind": "shell", "interpreter": interpreter,
            "timeout": timeout}
    _run(ctx, step, script,
         _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json))


@run.command("k8s")
@_file
@click.option("--connection", required=True,
              help="The agent's Kubernetes connection (agent.toml).")
@click.option("--namespace", default=None, help="For objects that name no namespace.")
@click.option("--wait", is_flag=True, help="Wait until the applied workloads rolled out.")
@_timeout
@_shipping
@click.pass_context
def run_k8s(ctx: click.Context, script: Path, agent_id: str, connection: str,
            namespace: str | None, wait: bool, timeout: str, out_dir: Path | None,
            expires: str, follow: bool, follow_timeout: str, as_json: bool) -> None:
    """Apply one manifest file (server-side apply) on one agent's cluster."""
    step: dict[str, Any] = {"name": f"apply {script.name}", "kind": "k8s",
                            "connection": connection, "timeout": timeout}
    if namespace is not None:
        step["namespace"] = namespace
    if wait:
        step["wait"] = True
    _run(ctx, step, script,
         _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json))


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise click.UsageError(f"--header {value!r}: write it as 'Name: value'")
        out[name.strip()] = text.strip()
    return out


def _expect(values: tuple[str, ...]) -> list[int | str]:
    return [int(v) if v.isdigit() else v for v in values]


@run.command("http")
@click.option("--url", required=True, help="http:// or https:// URL (no user:password@).")
@click.option("--method", type=click.Choice(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
              default="GET", show_default=True)
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="A request header (repeatable).")
@click.option("--body", "body", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file sent as the request body (not with GET or HEAD).")
@click.option("--expect", multiple=True, metavar="STATUS",
              help="A status (200) or class (2xx) that means success (repeatable; "
                   "default 2xx).")
@click.option("--connection", default=None,
              help="The agent's http connection (CA file, basic auth).")
@click.option("--retries", type=int, default=0, show_default=True)
@_timeout
@_shipping
@click.pass_context
def run_http(ctx: click.Context, url: str, method: str, headers: tuple[str, ...],
             body: Path | None, expect: tuple[str, ...], connection: str | None, retries: int,
             timeout: str, agent_id: str, out_dir: Path | None, expires: str, follow: bool,
             follow_timeout: str, as_json: bool) -> None:
    """Send one HTTP request from one agent's machine and check its status."""
    step: dict[str, Any] = {"name": f"{method} {url}"[:200], "kind": "http", "method": method,
                            "url": url, "timeout": timeout}
    if headers:
        step["headers"] = _headers(headers)
    if expect:
        step["expect"] = _expect(expect)
    if connection is not None:
        step["connection"] = connection
    if retries:
        step["retries"] = retries
    _run(ctx, step, body,
         _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json))


@run.command("ship")
@click.argument("version")
@_shipping
@click.pass_context
def run_ship(ctx: click.Context, version: str, agent_id: str, out_dir: Path | None,
             expires: str, follow: bool, follow_timeout: str, as_json: bool) -> None:
    """Ship ad-hoc release VERSION once approved: queue it for --agent and export it to
    --out, or leave it to the live server (--follow to watch it)."""
    from hub.services.adhoc import ADHOC_PRODUCT

    _ship(ctx, ADHOC_PRODUCT, version,
          _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json), {})
