"""``tiangong hub``: the group, its global options and the helpers every command uses.

Global options: ``--data-dir`` (or ``TIANGONG_HUB_DATA_DIR``) and ``--as USER`` (or
``TIANGONG_HUB_AS``; default: the operating-system login name), accepted before the command
(``hub --as carol import …``) or after it (``hub import … --as carol``); after wins.
**The CLI trusts the local operating-system user**: whoever can read the data directory
(database, online keys) can act as any hub user, so protect the data directory like the keys
it holds. ``--as`` only says which hub user's roles apply and whose name goes into the audit
log.

Output: readable tables by default, ``--json`` on every command that reports for scripts.
Exit codes: 0 success; 1 a domain error (permission, state, conflict, validation — the
message says which rule); 2 usage or configuration error; 3 audit verification failed.

Commands only translate: every rule is in ``hub/services``. Each command runs in one
transaction, committed only when the service call succeeded.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from hub.errors import ConfigError, HubError, NotFoundError, PermissionDeniedError

__all__ = ["hub"]


@dataclass
class CliState:
    data_dir: Path | None
    actor: str | None

    def actor_name(self) -> str:
        """The hub user this command acts as: ``--as`` or the operating-system login name."""
        return self.actor or getpass.getuser()


#: What creates each kind of missing object; ``{name}`` is the name in the error.
_FIXES = {
    "user": "create it with `tiangong hub users add {name} --role ROLE` (as an admin; "
            "roles: viewer, developer, operator, approver, auditor, admin)",
    "environment": "create it with `tiangong hub environments create {name}` (as an admin)",
    "product": "create it with `tiangong hub products create {name}`, or give "
               "`releases create --create-product`",
    "release": "create it with `tiangong hub releases create DIR`; "
               "`tiangong hub releases list` shows what exists",
    "agent": "`tiangong hub agents list` shows the enrolled agents",
    "deployment": "`tiangong hub deployments list` shows the deployments",
}
_NOT_FOUND = re.compile(r"(?:^|: )(\w+) '?([^':]+?)'? does not exist$")


_DENIED = re.compile(r"^(\S+)( \(account deactivated\))? may not \S+"
                     r"(?: in environment (\S+))?: it needs one of the roles ")


def with_grant_fix(exc: PermissionDeniedError) -> str:
    """The message of ``exc`` followed by the command an admin runs to allow it."""
    message = str(exc)
    match = _DENIED.match(message)
    if match is None:
        return message
    user, deactivated, environment = match.groups()
    if deactivated:
        return f"{message}; an admin reactivates it with `tiangong hub users activate {user}`"
    scope = f" --environment {environment}" if environment else ""
    return (f"{message}; an admin grants one with "
            f"`tiangong hub users grant {user} ROLE{scope}`")


def with_fix(exc: NotFoundError | str, *, acting_as: str | None = None,
             defaulted: bool = False) -> str:
    """The message of ``exc`` followed by the command that fixes it (``user 'carol' does not
    exist: create it with `tiangong hub users add carol --role ROLE` …``). ``acting_as``:
    the missing user is the one the command acts as (``--as``). Also for a message that ends
    in such an error (``enrollment request refused: environment 'x' does not exist``)."""
    message = str(exc)
    match = _NOT_FOUND.search(message)
    if match is None or match.group(1) not in _FIXES:
        return message
    kind, name = match.groups()
    if kind == "release":
        name = name.split(" ")[0]
    fix = _FIXES[kind].format(name=name)
    if acting_as is not None:
        how = ("--as was not given, so the hub user is your login name; give --as USER or "
               if defaulted else "")
        return f"{message} (the user this command acts as): {how}{fix}"
    return f"{message}: {fix}"


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
    engine = make_engine(cfg.database_url, audit_mac=keys.audit_mac)
    session = make_session_factory(engine)()
    try:
        actor = None
        if as_actor:
            try:
                actor = get_user(session, state.actor_name())
            except NotFoundError as exc:
                raise NotFoundError(with_fix(exc, acting_as=state.actor_name(),
                                             defaulted=state.actor is None)) from exc
        yield ServiceContext(session, utc_now, actor, keys, cfg.releases_dir)
        session.commit()
    except NotFoundError as exc:
        session.rollback()
        click.echo(f"error: {with_fix(exc)}", err=True)
        sys.exit(1)
    except PermissionDeniedError as exc:
        session.rollback()
        click.echo(f"error: {with_grant_fix(exc)}", err=True)
        sys.exit(1)
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


def _done(as_json: bool, text: str, data: dict[str, Any]) -> None:
    """Report one command's result: ``text`` for people, ``data`` as JSON with --json."""
    if as_json:
        _emit(data, True)
    else:
        click.echo(text)


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


_DATA_DIR_HELP = "The hub's data directory [env TIANGONG_HUB_DATA_DIR]."
_AS_HELP = ("Act as this hub user [env TIANGONG_HUB_AS; default: your login name]. The CLI "
            "trusts the local OS user who can read the data directory.")


def _late_data_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _state(ctx).data_dir = value


def _late_actor(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _state(ctx).actor = value


class HubGroup(click.Group):
    """A command group whose every command also accepts the global options ``--data-dir``
    and ``--as`` after its name (``hub import DIR --as carol``), besides before it."""

    group_class = type  # sub-groups (users, releases …) are HubGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.extend([
                click.Option(["--data-dir", "late_data_dir"], expose_value=False,
                             type=click.Path(file_okay=False, path_type=Path),
                             callback=_late_data_dir, help=_DATA_DIR_HELP.replace(
                                 " [env", " (also accepted before the command) [env")),
                click.Option(["--as", "late_actor"], metavar="USER", expose_value=False,
                             callback=_late_actor, help="Act as this hub user (also "
                             "accepted before the command; see `tiangong hub --help`)."),
            ])
        super().add_command(cmd, name)


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="TIANGONG_HUB_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help=_DATA_DIR_HELP,
)
@click.option("--as", "actor", envvar="TIANGONG_HUB_AS", metavar="USER", help=_AS_HELP)
@click.pass_context
def hub(ctx: click.Context, data_dir: Path | None, actor: str | None) -> None:
    """Run the hub: releases, approvals, environments, agents, deployments, audit.

    The global options --data-dir and --as go before the command or after it (after
    wins): `tiangong hub --as carol import /media/usb` is `tiangong hub import /media/usb
    --as carol`. Commands that print something a script would read take --json.
    """
    ctx.obj = CliState(data_dir, actor)
