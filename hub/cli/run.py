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
from tiangong import run_text

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


_out, _expires = run_text.out_option, run_text.expires_option
_follow = run_text.follow_options(
    "Stream the agent's live log, then the result (not with --out); exit 0 only when it "
    "succeeded.")


def _shipping(f: Any) -> Any:
    """The options every run command shares, in the order --help shows them."""
    for option in (json_option, _follow, _expires, _out, run_text.agent_option):
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
        raise click.UsageError(run_text.OUT_AND_FOLLOW)
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
            click.echo(run_text.queued(product, version, deployment, how.agent_id))
        return
    ok = bool(written) and not failed
    if how.as_json:
        _emit({**row, "shipped": ok, "written": written, "failed": failed}, True)
    else:
        for w in written:
            click.echo(run_text.written(product, version, how.agent_id, w["deployment"],
                                        w["sequence"], w["files"]))
        for f in failed:
            click.echo(f"error: deployment {f['deployment']}: {f['reason']}", err=True)
    if not ok:
        sys.exit(1)


def _follow_run(ctx: click.Context, deployment: int, how: _Delivery,
                row: dict[str, Any]) -> None:
    """Poll the hub's database for the live lines and the state of ``deployment`` until it
    is final or ``how.follow_for`` passed; print them as they come. Exit 0 only when the
    run succeeded."""
    from hub.services.run_follow import POLL_SECONDS, poll_run, result_json

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
                    run_text.echo_line(lines[-1])
            if not progress.agent_online and not said_offline and not progress.done:
                said_offline = True
                if not how.as_json:
                    run_text.not_online(how.agent_id)
            if progress.done or time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
        result = result_json(progress.result)
    ok = progress.done and progress.state == "succeeded"
    if how.as_json:
        _emit({**row, "state": progress.state, "done": progress.done, "lines": lines,
               "result": result}, True)
    else:
        run_text.echo_outcome(deployment, progress.state, progress.done, result,
                              int(how.follow_for.total_seconds()),
                              f"tiangong hub deployments show {deployment}")
    if not ok:
        sys.exit(1)


def _step(kind: str, file_name: str | None, **options: Any) -> dict[str, Any]:
    from hub.errors import ValidationError
    from hub.services.adhoc import adhoc_step

    try:
        return adhoc_step(kind, file_name, options)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc


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
        click.echo(run_text.created(product, version, step["kind"], what, how.agent_id,
                                    created["environment"]))
    _ship(ctx, product, version, how, created)


def _kind_command(kind: str) -> None:
    """``run KIND``: its options (tiangong/run_text.py, shared with ``tiangong remote
    run``), then the one-off release, the policy and the delivery."""

    @run.command(kind, help=run_text.KIND_HELP[kind])
    @run_text.kind_options(kind)
    @_shipping
    @click.pass_context
    def command(ctx: click.Context, /, agent_id: str, out_dir: Path | None, expires: str,
                follow: bool, follow_timeout: str, as_json: bool, **options: Any) -> None:
        script, opts = run_text.step_options(options)
        step = _step(kind, script.name if script is not None else None, **opts)
        _run(ctx, step, script,
             _delivery(agent_id, out_dir, expires, follow, follow_timeout, as_json))


for _kind in ("sql", "shell", "k8s", "http"):
    _kind_command(_kind)


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
