"""The ``tiangong`` command: groups ``bundle``, ``keys``, ``agent``, ``hub``, ``audit``,
``remote``.

Groups are imported only when invoked. When a group's extra is not installed, the command says
which extra to install instead of failing with an ImportError.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from tiangong import __version__

__all__ = ["main", "root"]

# name -> (module, attribute, extra that provides its dependencies, one-line help)
_GROUPS: dict[str, tuple[str, str, str | None, str]] = {
    "keys": ("signing.cli", "keys", None, "Create and inspect keys; manage the root of trust."),
    "bundle": ("bundle.cli", "bundle", None, "Create, inspect and verify bundle files."),
    "agent": ("agent.cli", "agent", "agent", "Run and inspect a site agent."),
    "hub": ("hub.cli_all", "hub", "hub",
            "Run the hub: releases, approvals, export, import, audit."),
    "audit": ("hub.audit_cli", "audit", None, "Verify an exported audit log offline."),
    "run": ("hub.cli.run", "run", "hub",
            "On the hub: run one SQL or shell file on one agent, audited like a release."),
    "remote": ("tiangong.remote", "remote", None,
               "Use a hub's HTTP API as yourself, with a personal API token."),
}


class SuggestingGroup(click.Group):
    """A group whose commands are imported when looked up: a mistyped name is answered with
    the close names among :meth:`list_commands` (click suggests from ``self.commands``, the
    commands imported so far — none before the lookup)."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            no_such = getattr(click.exceptions, "NoSuchCommand", None)  # click 8.4 and later
            if no_such is None or not isinstance(exc, no_such) or exc.possibilities:
                raise
            raise no_such(exc.command_name, possibilities=self.list_commands(ctx),
                          ctx=exc.ctx) from None


class LazyGroup(SuggestingGroup):
    """A click group whose sub-groups are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _GROUPS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr, extra, short_help = spec
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "a dependency"
            if missing == module_name or module_name.startswith(f"{missing}."):
                # The group itself is not part of this build yet.
                message = f"'{cmd_name}' is not available in this build."
                return _unavailable(cmd_name, short_help, message)
            hint = f"pip install 'tiangong[{extra}]'" if extra else "reinstall tiangong"
            return _unavailable(
                cmd_name,
                short_help,
                f"'tiangong {cmd_name}' needs {missing!r}, which is not installed. "
                f"Install it with: {hint}",
            )
        command: Any = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # List groups without importing them (help must work in a minimal install).
        rows = [(name, spec[3]) for name, spec in sorted(_GROUPS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, short_help: str, message: str) -> click.Command:
    @click.command(name=name, help=short_help, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args: tuple[str, ...]) -> None:
        click.echo(f"tiangong: {message}", err=True)
        sys.exit(2)

    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tiangong")
def root() -> None:
    """Tiangong ships signed, approved releases to sites that may never be online.

    A release becomes a signed bundle file (.tgb) that reaches a site's agent over a live
    connection or on removable media; the agent verifies it, runs its steps, and writes a
    signed result file (.tgr) that returns the same way.
    """


def main() -> None:
    root(prog_name="tiangong")


if __name__ == "__main__":
    main()
