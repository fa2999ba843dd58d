"""``tiangong agent``: --home before or after the command, and ``agent init``'s refusal of a
missing root document (naming where the hub wrote it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fixtures.trust import make_trust
from tiangong.cli import root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root_json = make_trust().write_root(tmp_path)
    home = tmp_path / "agent"
    result = CliRunner().invoke(root, ["agent", "init", str(home), "--root", str(root_json),
                                       "--id", "site-01", "--environment", "plant-a"])
    assert result.exit_code == 0, result.output
    return home


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_home_before_or_after_the_command(home: Path, tmp_path: Path, where: str) -> None:
    env = {"TIANGONG_AGENT_HOME": str(home) if where == "env" else None}
    argv = {"before": ["agent", "--home", str(home), "status", "--json"],
            "after": ["agent", "status", "--json", "--home", str(home)],
            "env": ["agent", "status", "--json"]}[where]
    result = CliRunner(env=env).invoke(root, argv)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["agent_id"] == "site-01"


def test_home_after_the_command_wins(home: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["agent", "--home", str(tmp_path / "elsewhere"),
                                       "status", "--json", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["agent_id"] == "site-01"
    assert "before or after the command" in " ".join(
        CliRunner().invoke(root, ["agent", "--help"]).output.split())


def test_init_takes_the_group_home(tmp_path: Path) -> None:
    root_json = make_trust().write_root(tmp_path)
    home = tmp_path / "grouphome"
    result = CliRunner().invoke(root, ["agent", "--home", str(home), "init", "--root",
                                       str(root_json), "--id", "site-02"])
    assert result.exit_code == 0, result.output
    assert (home / "agent.toml").is_file()


def test_init_without_the_root_document_says_where_it_is(tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["agent", "init", str(tmp_path / "agent"), "--root",
                                       "root.json"])
    assert result.exit_code == 2
    assert "<hub data dir>/root.json (written by `tiangong hub init`)" in result.output
    assert not (tmp_path / "agent").exists()


def test_apply_leaves_a_link_or_a_fifo_alone(home: Path, tmp_path: Path) -> None:
    """'agent apply /dev/null' as root "refused" the device as a bundle and moved it into
    quarantine/ (the device node left /dev, seen by hand); a FIFO hung the command. Like the
    inbox, apply now leaves whatever is not a regular file alone: one error naming it,
    exit 1, nothing moved, no result written, nothing recorded."""
    import os

    fifo = tmp_path / "pipe.tgb"
    os.mkfifo(fifo)
    target = tmp_path / "real.tgb"
    target.write_bytes(b"not a bundle")
    link = tmp_path / "link.tgb"
    link.symlink_to(target)
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    for path, what in ((fifo, "a device, FIFO or socket"), (link, "a symbolic link")):
        result = CliRunner().invoke(root, ["agent", "apply", str(path), "--home", str(home)])
        assert result.exit_code == 1
        assert result.output == (
            f"Error: {path} is {what}, not a regular file: the agent reads only regular files "
            "(as its inbox does); nothing was done. Copy the bundle file itself and apply the "
            "copy\n")
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before
    assert fifo.exists() and link.is_symlink() and target.read_bytes() == b"not a bundle"
