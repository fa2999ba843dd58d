"""``tiangong hub export`` and ``tiangong hub import``: the hub's side of the USB stick.

Attached to the ``hub`` group of ``hub.cli.base``; the rules live in ``hub.services.exchange``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from bundle.cli import progress_bar
from hub.cli.base import _config, _emit, _services, _state, hub, json_option, with_fix
from signing.durations import parse_duration

__all__ = ["export_cmd", "import_cmd"]


progress_option = click.option(
    "--progress", "force_progress", is_flag=True,
    help="Report progress on stderr even when it is not a terminal (on a terminal it is "
         "always shown).")


@hub.command("export")
@click.option("--environment", required=True, help="Export queued deployments of this env.")
@click.option("--agent", "agent_id", help="Only deployments for this agent.")
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where to write (the mounted USB stick or share).")
@click.option("--expires", default="14d", show_default=True, metavar="DURATION",
              help="How long the bundles stay valid at the site.")
@click.option("--split", type=int, metavar="BYTES",
              help="Split bundles into parts of at most BYTES (e.g. 4294967295 for FAT32).")
@click.option("--force", is_flag=True,
              help="Export even when preflight finds that a target lacks a connection, "
                   "step kind or disk space the release needs (recorded in the audit log).")
@json_option
@progress_option
@click.pass_context
def export_cmd(ctx: click.Context, environment: str, agent_id: str | None, out_dir: Path,
               expires: str, split: int | None, force: bool, as_json: bool,
               force_progress: bool) -> None:
    """Write a signed bundle for every queued deployment of ENVIRONMENT into --out.

    Each bundle gets the next sequence number of its agent, the release's approvals and the
    latest signed audit checkpoint; it is re-read and verified after writing. An index file
    (INDEX-<environment>.txt) on the media lists what is there and for whom. Running it
    again with nothing queued writes nothing. Before a sequence is used, each release is
    checked against its targets' last known inventory (preflight): a missing connection,
    step kind or disk space refuses that deployment (it stays queued) unless --force. Any
    number of exports may run at once: each deployment is written by exactly one
    ("exported by another process" in the others).
    An export that was killed is completed by the next one, which also removes what it
    left on the media. Exit code 1 if any deployment failed.
    """
    from hub.errors import DestinationError
    from hub.services.exchange import export_environment
    from hub.services.export import utc_text

    try:
        expires_in = timedelta(seconds=parse_duration(expires))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with _services(ctx) as sc, progress_bar(force=force_progress) as progress:
        try:
            report = export_environment(sc, environment, out_dir, agent_id=agent_id,
                                        expires_in=expires_in, split_size=split,
                                        progress=progress, force=force)
        except DestinationError as exc:  # the media, before any deployment
            raise click.ClickException(str(exc)) from exc
    rows: list[dict[str, Any]] = [{"deployment": b.deployment_id, "agent": b.agent_id, "release":
             f"{b.product} {b.version}", "sequence": b.sequence,
             "files": [str(p) for p in b.paths], "size": b.size} for b in report.written]
    if as_json:
        _emit({"written": rows, "failed": [{"deployment": d, "reason": r}
                                          for d, r in report.failed],
               "taken": report.taken, "recovered": report.recovered,
               "held": [{"deployment": d, "reason": r} for d, r in report.held],
               "warnings": [{"deployment": d, "message": m} for d, m in report.warnings],
               "capped": [{"deployment": d, "expires": utc_text(e)} for d, e in report.capped],
               "cleaned": report.cleaned,
               "index": str(report.index) if report.index else None,
               "index_error": report.index_error}, True)
    else:
        for name in report.cleaned:
            click.echo(f"removed {name} (left in {out_dir} by an export that was killed)")
        for d in report.taken:
            click.echo(f"deployment {d}: exported by another process")
        for d, reason in report.held:
            click.echo(f"deployment {d}: held, not exported: {reason}")
        for d, message in report.warnings:
            click.echo(f"deployment {d}: preflight warning: {message}", err=True)
        for line in report.capped_lines(f"--expires {expires}"):
            click.echo(line, err=True)
        if not rows and not report.failed and not report.held:
            click.echo(f"nothing to export for {environment}: nothing written")
        for d in report.recovered:
            click.echo(f"deployment {d}: completing an export that was interrupted or failed "
                       "(same sequence and bundle id)")
        for r in rows:
            click.echo(f"wrote {', '.join(Path(f).name for f in r['files'])}  "
                       f"({r['release']} for {r['agent'] or 'the environment'}, "
                       f"sequence {r['sequence']})")
        for d, reason in report.failed:
            click.echo(f"FAILED deployment {d}: {reason}", err=True)
        if report.index:
            click.echo(f"index: {report.index}")
        if report.index_error:
            click.echo(f"warning: {report.index_error}" + (
                "; the bundles above are written and recorded" if rows else ""), err=True)
    sys.exit(1 if report.failed else 0)


@hub.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Result files recorded per database transaction. Smaller batches cost "
                   "more time per file; a failing file never affects another either way.")
@json_option
@progress_option
@click.pass_context
def import_cmd(ctx: click.Context, directory: Path, batch_size: int, as_json: bool,
               force_progress: bool) -> None:
    """Import every result file (*.tgr) and enrollment request in DIRECTORY.

    Each result is verified against the registered key of the agent it claims to come
    from, advances its deployment, and is stored verbatim in the audit log. Importing the
    same file twice changes nothing. Bad files are reported and left in place. Exit code 1
    if any file was rejected.
    """
    from hub.services.exchange import import_directory

    results_dir = _config(_state(ctx)).data_dir / "results"
    try:
        with _services(ctx) as sc, progress_bar(force=force_progress) as progress:
            report = import_directory(sc, directory, results_dir=results_dir,
                                      batch_size=batch_size, progress=progress)
    except KeyboardInterrupt:
        # The batch in progress was rolled back and its private copies removed (the
        # worker pool ignores Ctrl-C and is shut down by this process).
        click.echo(f"tiangong hub import: interrupted (Ctrl-C): the files recorded before "
                   f"stay imported, once; the others in {directory} were not touched: run "
                   "the same command again to import them", err=True)
        sys.exit(130)
    rows = [{"file": r.file, "status": r.status, "agent": r.agent_id,
             "deployment": r.deployment_id, "flags": list(r.flags),
             "reason": with_fix(r.reason) if r.status == "rejected" and r.reason else r.reason}
            for r in report.rows]
    if as_json:
        _emit(rows, True)
    else:
        _emit(rows, False, ["file", "status", "agent", "deployment", "reason"])
        for r in report.rows:
            for flag in r.flags:
                click.echo(f"FLAG {r.file}: {flag}", err=True)
        click.echo(f"{report.count('imported')} imported, {report.count('duplicate')} "
                   f"duplicate, {report.count('rejected')} rejected, "
                   f"{report.count('enrolled')} enrolled")
    sys.exit(1 if report.count("rejected") else 0)
