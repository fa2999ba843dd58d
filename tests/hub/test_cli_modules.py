"""``tiangong hub`` imports a command's modules only when the command is looked up
(hub.cli.base.COMMAND_MODULES): the table must name, for every command, exactly the modules
that attach it and its sub-commands, or a command would be missing from a process."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click

import hub.cli as hub_cli
from hub.cli.base import COMMAND_MODULES
from hub.cli.base import hub as hub_group


def _modules_of(cmd: click.Command) -> set[str]:
    found = {cmd.callback.__module__} if cmd.callback is not None else set()
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            found |= _modules_of(sub)
    return found


def test_the_table_names_every_command_and_the_modules_that_attach_it() -> None:
    for info in pkgutil.iter_modules(hub_cli.__path__):
        importlib.import_module(f"hub.cli.{info.name}")
    attached = {name: {m.removeprefix("hub.cli.") for m in _modules_of(cmd)}
                for name, cmd in hub_group.commands.items()}
    assert attached == {name: set(modules) for name, modules in COMMAND_MODULES.items()}


def test_a_command_imports_only_its_own_modules() -> None:
    """And neither Flask nor Alembic: the web app and migrations import them."""
    code = (
        "import sys, click\n"
        "from tiangong.cli import root\n"
        "ctx = click.Context(root)\n"
        "hub = root.get_command(ctx, 'hub')\n"
        "users = hub.get_command(click.Context(hub, parent=ctx), 'users')\n"
        "assert sorted(users.commands)[:2] == ['activate', 'add'], sorted(users.commands)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('hub.cli.'))\n"
        "assert loaded == ['hub.cli.base', 'hub.cli.users'], loaded\n"
        "import hub.db, hub.migrate, hub.services.users  # what a command runs with\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'alembic'})\n"
        "assert heavy == [], heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_a_mistyped_command_is_answered_with_the_close_names() -> None:
    """The groups import their commands when looked up, so click's suggestions (made from
    the commands imported so far: none) must come from the whole table instead."""
    from click.testing import CliRunner

    from tiangong.cli import root

    for args, typo, close in ((["hub", "serv"], "serv", "'serve'"),
                              (["hub", "deployment", "list"], "deployment", "'deployments'"),
                              (["bundl", "verify"], "bundl", "'bundle'")):
        result = CliRunner().invoke(root, args)
        assert result.exit_code == 2, result.output
        assert f"No such command {typo!r}" in result.output
        assert "Did you mean" in result.output and close in result.output, result.output
