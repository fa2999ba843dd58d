"""Every ``tiangong … --help`` prints its usage and exits 0, without the options a command
needs to run (``remote``'s --url among them): help is what an operator reads to learn them."""

from __future__ import annotations

import click
from click.testing import CliRunner

import hub.cli as hub_cli
from tiangong.cli import root


def _paths(cmd: click.Command, path: list[str]) -> list[list[str]]:
    found = [path]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, [*path, name]
            found += _paths(sub, [*path, name])
    return found


def test_every_command_prints_its_help() -> None:
    hub_cli.load_all()
    runner = CliRunner(env={"TIANGONG_HUB_URL": None})
    paths = _paths(root, [])
    assert ["remote", "whoami"] in paths and ["hub", "serve"] in paths
    failed = []
    for path in paths:
        result = runner.invoke(root, [*path, "--help"])
        if result.exit_code != 0 or not result.output.startswith("Usage: "):
            failed.append((" ".join(path), result.exit_code, result.output[-200:]))
    assert not failed, failed
