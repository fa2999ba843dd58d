"""``tiangong hub``: the group, its global options and the helpers every command uses.

Global options: ``--data-dir`` (or ``TIANGONG_HUB_DATA_DIR``) and ``--as USER`` (or
``TIANGONG_HUB_AS``; default: the operating-system login name). **The CLI trusts the local
operating-system user**: whoever can read the data directory (database, online keys) can act
as any hub user, so protect the data directory like the keys it holds. ``--as`` only says
which hub user's roles apply and whose name goes into the audit log.

Output: readable tables by default, ``--json`` on every listing/showing command for scripts.
Exit codes: 0 success; 1 a domain error (permission, state, conflict, validation — the
message says which rule); 2 usage or configuration error; 3 audit verification failed.

Commands only translate: every rule is in ``hub/services``. Each command runs in one
transaction, committed only when the service call succeeded.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from hub.errors import ConfigError, HubError

__all__ = ["hub"]


@dataclass
class CliState:
    data_dir: Path | None
    actor: str | None


def _state(ctx: click.Context) -> CliState:
    state = ctx.find_object(CliState)
    assert state is not None
    return state


def _config(state: CliState) -> Any:
    from hub.config import load_config

    if state.data_dir is None:
        raise click.UsageError("give --data-dir or set TIANGONG_HUB_DATA_DIR")
    return load_config(state.data_dir)


@contextlib.contextmanager
def _services(ctx: click.Context, *, as_actor: bool = True) -> Iterator[Any]:
    """Open a session, build the service context, commit on success, roll back on error."""
    from hub.db import make_engine, make_session_factory
    from hub.keystore import load_hub_keys
    from hub.services import releases as _releases  # noqa: F401 - registers the release guard
    from hub.services.context import ServiceContext, utc_now
    from hub.services.users import get_user

    state = _state(ctx)
    try:
        cfg = _config(state)
        if not (cfg.data_dir / "root.json").exists():
            raise ConfigError(f"{cfg.data_dir} is not an initialised hub: run `tiangong hub init`")
        keys = load_hub_keys(cfg.data_dir)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    engine = make_engine(cfg.database_url)
    session = make_session_factory(engine)()
    try:
        actor = None
        if as_actor:
            name = state.actor or getpass.getuser()
            actor = get_user(session, name)
        yield ServiceContext(session, utc_now, actor, keys, cfg.releases_dir)
        session.commit()
    except HubError as exc:
        session.rollback()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        session.close()
        engine.dispose()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _emit(
    rows: Sequence[dict[str, Any]] | dict[str, Any],
    as_json: bool,
    columns: Sequence[str] | None = None,
) -> None:
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=2, sort_keys=True))
        return
    if isinstance(rows, dict):
        width = max((len(k) for k in rows), default=0)
        for key, value in rows.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value, default=_json_default)
            click.echo(f"{key.ljust(width)}  {_cell(value)}")
        return
    if not rows:
        click.echo("(none)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


# --- root group -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="TIANGONG_HUB_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The hub's data directory [env TIANGONG_HUB_DATA_DIR].",
)
@click.option(
    "--as",
    "actor",
    envvar="TIANGONG_HUB_AS",
    metavar="USER",
    help="Act as this hub user [env TIANGONG_HUB_AS; default: your login name]. The CLI "
    "trusts the local OS user who can read the data directory.",
)
@click.pass_context
def hub(ctx: click.Context, data_dir: Path | None, actor: str | None) -> None:
    """Run the hub: releases, approvals, environments, agents, deployments, audit."""
    ctx.obj = CliState(data_dir, actor)
