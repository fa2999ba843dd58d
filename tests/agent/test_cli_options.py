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
