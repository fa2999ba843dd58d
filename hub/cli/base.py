"""``tiangong hub``: the group, its global options and the helpers every command uses.

Global options: ``--data-dir`` (or ``TIANGONG_HUB_DATA_DIR``) and ``--local-admin NAME`` (or
``TIANGONG_HUB_LOCAL_ADMIN``; default: the operating-system login name), accepted before the
command (``hub --local-admin carol import …``) or after it (``hub import … --local-admin
carol``); after wins.

**Local-admin mode.** These commands open the hub's database and keys directly, so whoever
runs them can read the data directory and could do anything anyway: the CLI does not
authenticate anyone. ``--local-admin NAME`` only says which hub user's roles apply and whose
name goes into the audit log, and every event it writes says so (``"via": "local-admin"``
in its details), so a reader of the log tells a person signed in through SAML or a personal
API token from a name typed at the hub's console. People who are not at the console use the
web UI or the HTTP API with a personal token (``tiangong remote``, docs/api.md).
``--as USER`` (and ``TIANGONG_HUB_AS``) is the deprecated spelling of ``--local-admin``: it
still works, prints a warning, and is audited the same.

Output: readable tables by default, ``--json`` on every command that reports for scripts.
Exit codes: 0 success; 1 a domain error (permission, state, conflict, validation — the
message says which rule); 2 usage or configuration error; 3 audit verification failed.

Commands only translate: every rule is in ``hub/services``. Each command runs in one
transaction, committed only when the service call succeeded.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hub.errors import ConfigError, HubError, NotFoundError, PermissionDeniedError
from tiangong.cli import SuggestingGroup
from tiangong.output import cell, done, emit

__all__ = ["COMMAND_MODULES", "hub"]


#: How events written by ``tiangong hub`` commands say who typed the name (ServiceContext.via).
LOCAL_ADMIN = "local-admin"
AS_DEPRECATED = ("warning: --as (and TIANGONG_HUB_AS) is deprecated: use --local-admin NAME "
                 "(TIANGONG_HUB_LOCAL_ADMIN); the command runs in local-admin mode and is "
                 "audited as such either way")


@dataclass
class CliState:
    data_dir: Path | None
    actor: str | None

    def actor_name(self) -> str:
        """The hub user this command acts as: ``--local-admin`` or the OS login name."""
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
    the missing user is the one the command acts as (``--local-admin``). Also for a message
    that ends in such an error (``enrollment request refused: environment 'x' does not exist``)."""
    message = str(exc)
    match = _NOT_FOUND.search(message)
    if match is None or match.group(1) not in _FIXES:
        return message
    kind, name = match.groups()
    if kind == "release":
        name = name.split(" ")[0]
    fix = _FIXES[kind].format(name=name)
    if acting_as is not None:
        how = ("--local-admin was not given, so the hub user is your login name; give "
               "--local-admin NAME or " if defaulted else "")
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


_DISK_TROUBLE = re.compile(r"disk I/O error|database or disk is full|readonly database|"
                           r"unable to open database file")


def _migrate(engine: Any) -> None:
    """A newer hub on an older database: migrate it before the command's first query (as
    ``hub serve`` does), saying so; a migration that fails stops the command."""
    from sqlalchemy.exc import SQLAlchemyError

    from hub.errors import ConfigError
    from hub.migrate import ensure_current

    try:
        moved = ensure_current(engine)
    except ConfigError as exc:  # a database newer than this hub
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0][:300]
        # SQLite's words for a full or read-only disk (its WAL files cannot be made): not
        # a schema problem, though the first query (the schema's revision) meets it.
        what, fix = "cannot be migrated to this hub's schema", ""
        if _DISK_TROUBLE.search(first):
            what = "cannot be opened"
            fix = " (is its disk full or read-only? free space or remount it read-write)"
        click.echo(f"error: the hub database {engine.url.render_as_string(hide_password=True)} "
                   f"{what}: {exc.__class__.__name__}: {first}{fix}", err=True)
        sys.exit(2)
    if moved is not None:
        click.echo(f"migrated the hub database from revision {moved[0] or 'none'} to "
                   f"{moved[1]} (this hub is newer than the database was)", err=True)


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
    if cfg.run_migrations:
        _migrate(engine)
    session = make_session_factory(engine)()
    try:
        actor = None
        if as_actor:
            try:
                actor = get_user(session, state.actor_name())
            except NotFoundError as exc:
                raise NotFoundError(with_fix(exc, acting_as=state.actor_name(),
                                             defaulted=state.actor is None)) from exc
        sc = ServiceContext(session, utc_now, actor, keys, cfg.releases_dir, via=LOCAL_ADMIN)
        yield sc
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
        if exc.audit is not None:  # a refusal the audit log keeps (hub.errors)
            from hub.services.audit import record_refusal

            record_refusal(sc, exc)
            session.commit()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        session.close()
        engine.dispose()


_emit, _done, _cell = emit, done, cell  # shared with `tiangong remote` (tiangong.output)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


# --- root group -----------------------------------------------------------------------


_DATA_DIR_HELP = "The hub's data directory [env TIANGONG_HUB_DATA_DIR]."
_LOCAL_ADMIN_HELP = (
    "Local-admin mode: act as this hub user [env TIANGONG_HUB_LOCAL_ADMIN; default: your "
    "login name]. Nobody is authenticated (whoever reads the data directory can do "
    "anything); events say via local-admin. Remote people use `tiangong remote`.")
_AS_HELP = "Deprecated spelling of --local-admin (prints a warning) [env TIANGONG_HUB_AS]."


def _late_data_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _state(ctx).data_dir = value


def _late_actor(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        if param.name == "late_as":
            click.echo(AS_DEPRECATED, err=True)
        _state(ctx).actor = value


class HubGroup(click.Group):
    """A command group whose every command also accepts the global options ``--data-dir``
    and ``--local-admin`` (and the deprecated ``--as``) after its name (``hub import DIR
    --local-admin carol``), besides before it."""

    group_class: type[click.Group] | type[type] | None = type  # sub-groups are HubGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.extend([
                click.Option(["--data-dir", "late_data_dir"], expose_value=False,
                             type=click.Path(file_okay=False, path_type=Path),
                             callback=_late_data_dir, help=_DATA_DIR_HELP.replace(
                                 " [env", " (also accepted before the command) [env")),
                click.Option(["--local-admin", "late_actor"], metavar="NAME",
                             expose_value=False, callback=_late_actor,
                             help="Local-admin mode: act as this hub user (also accepted "
                             "before the command; see `tiangong hub --help`)."),
                click.Option(["--as", "late_as"], metavar="USER", expose_value=False,
                             callback=_late_actor, hidden=True, help=_AS_HELP),
            ])
        super().add_command(cmd, name)


#: Each ``hub`` command and the modules of ``hub.cli`` that attach it and its sub-commands
#: (``releases plan`` is in ``plans``): a command's modules are imported when it is looked
#: up, so ``hub users list`` does not import the export, audit or serve commands.
#: tests/hub/test_cli_modules.py checks this table against what the modules register.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "agents": ("sites", "rollouts"),
    "audit": ("audit",),
    "backup": ("backup",),
    "channels": ("channels",),
    "deployments": ("deployments", "windows"),
    "environments": ("sites", "channels"),
    "export": ("exchange",),
    "fleet": ("rollouts",),
    "freezes": ("windows",),
    "import": ("exchange",),
    "init": ("setup",),
    "keys": ("trust",),
    "live": ("serve",),
    "notifications": ("notifications",),
    "products": ("releases",),
    "releases": ("releases", "channels", "plans"),
    "restore": ("backup",),
    "rollouts": ("rollouts",),
    "schedule": ("schedule",),
    "scheduler": ("serve",),
    "secrets": ("secrets",),
    "serve": ("serve",),
    "templates": ("templates",),
    "tls": ("setup",),
    "users": ("users",),
    "windows": ("windows",),
}


class LazyHubGroup(SuggestingGroup, HubGroup):
    """The ``hub`` group: imports the modules of a command (:data:`COMMAND_MODULES`) when
    click looks the command up, instead of every command module at start-up."""

    group_class = HubGroup  # its sub-groups (users, releases …) are plain HubGroups

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            importlib.import_module(f"hub.cli.{module}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyHubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    envvar="TIANGONG_HUB_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help=_DATA_DIR_HELP,
)
@click.option("--local-admin", "actor", envvar="TIANGONG_HUB_LOCAL_ADMIN", metavar="NAME",
              help=_LOCAL_ADMIN_HELP)
@click.option("--as", "actor_as", envvar="TIANGONG_HUB_AS", metavar="USER", hidden=True,
              help=_AS_HELP)
@click.pass_context
def hub(ctx: click.Context, data_dir: Path | None, actor: str | None,
        actor_as: str | None) -> None:
    """Run the hub on its own machine: releases, approvals, environments, agents,
    deployments, audit.

    These commands work in local-admin mode: they open the hub's database and keys, and
    --local-admin NAME (default: your login name) says whose roles apply; every event says
    "via local-admin". From anywhere else use `tiangong remote` with a personal API token.

    The global options --data-dir and --local-admin go before the command or after it
    (after wins): `tiangong hub --local-admin carol import /media/usb` is `tiangong hub
    import /media/usb --local-admin carol`. Commands that print something a script would
    read take --json.
    """
    if actor_as is not None:
        click.echo(AS_DEPRECATED, err=True)
    ctx.obj = CliState(data_dir, actor if actor is not None else actor_as)
