"""``tiangong hub backup`` / ``hub restore``: a consistent copy of the hub (database, release
store, keys still encrypted, configuration) and bringing it up in a new data directory (rules
in ``hub.services.backup``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hub.cli.base import _config, _done, _state, hub, json_option
from hub.errors import HubError


@hub.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
def backup_cmd(ctx: click.Context, directory: Path, as_json: bool) -> None:
    """Write a consistent backup of the hub into DIRECTORY (new or empty): the database
    (SQLite online backup or pg_dump), the release store, the keys as they are on disk
    (encrypted) and hub.toml. The root key is left out: keep it offline. DIRECTORY holds the
    hub's private keys: store it like the data directory."""
    from hub.services import backup

    try:
        report = backup.backup(_config(_state(ctx)), directory)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    left = "".join(f"\n  not copied: {name} (the root key belongs offline)"
                   for name in report.left_out)
    _done(as_json, f"backup of hub {report.hub_id} ({report.database}, {report.files} files) "
          f"written to {report.directory}{left}",
          {"directory": str(report.directory), "hub_id": report.hub_id,
           "database": report.database, "files": report.files,
           "left_out": list(report.left_out)})


@hub.command("restore")
@click.argument("backup_dir", metavar="BACKUP", type=click.Path(
    file_okay=False, exists=True, path_type=Path))
@click.option("--database-url", help="The database to restore into: an empty PostgreSQL "
              "database for a PostgreSQL backup (required then); default for SQLite: "
              "<data-dir>/hub.db.")
@json_option
@click.pass_context
def restore_cmd(ctx: click.Context, backup_dir: Path, database_url: str | None,
                as_json: bool) -> None:
    """Bring the backup in BACKUP up as a hub in the new data directory given by --data-dir
    (it must not exist or be empty). Every file is checked against the backup's SHA-256
    list first. Afterwards run `tiangong hub audit verify`."""
    from hub.services import backup

    data_dir = _state(ctx).data_dir
    if data_dir is None:
        raise click.UsageError("give --data-dir (the new data directory) or set "
                               "TIANGONG_HUB_DATA_DIR")
    try:
        hub_id = backup.restore(backup_dir, Path(data_dir).absolute(), database_url)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _done(as_json, f"hub {hub_id} restored into {data_dir}; check it with "
          f"`tiangong hub audit verify --data-dir {data_dir}`",
          {"hub_id": hub_id, "data_dir": str(data_dir)})
