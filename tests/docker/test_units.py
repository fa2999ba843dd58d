"""The systemd units in docker/: `systemd-analyze verify` accepts them (with ExecStart pointing
at this environment's `tiangong`), and every ExecStart command line parses with the real CLI:
the exact subcommand with its options, plus --help, exits 0 (an unknown or misplaced option
exits 2 with "No such option")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.deploy_files import DOCKER_DIR, clean_env, unit_environment, unit_exec_start

TIANGONG = Path(sys.executable).parent / "tiangong"
INSTALLED = "/opt/tiangong/bin/tiangong"  # where the units expect the offline kit's install
UNITS = sorted(DOCKER_DIR.glob("*.service"))


def test_the_hub_web_live_and_agent_units_exist() -> None:
    assert [u.name for u in UNITS] == ["tiangong-agent.service", "tiangong-hub-live.service",
                                       "tiangong-hub.service"]


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run `bash .ci/install-test-deps` (make test does)"
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(TIANGONG)))
    proc = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_exec_start_parses_with_the_real_cli(unit: Path) -> None:
    argv = unit_exec_start(unit)
    assert argv[0] == INSTALLED
    env = {**clean_env(), **unit_environment(unit)}
    proc = subprocess.run([str(TIANGONG), *argv[1:], "--help"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: tiangong {' '.join(argv[1:3])} ")


def test_a_misplaced_option_fails_the_same_check() -> None:
    """The check above is not vacuous: the line the old hub image had fails it."""
    proc = subprocess.run([str(TIANGONG), "hub", "serve", "--data-dir", "/x", "--workres", "2",
                           "--help"], env=clean_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "No such option '--workres'" in proc.stderr


def test_every_unit_is_hardened_and_the_agent_unit_says_what_it_forbids() -> None:
    for unit in UNITS:
        text = unit.read_text()
        assert "NoNewPrivileges=yes" in text and "User=tiangong" in text, unit.name
    agent = (DOCKER_DIR / "tiangong-agent.service").read_text()
    assert "ProtectSystem=full" in agent and "ReadWritePaths=/var/lib/tiangong-agent" in agent
    install = (DOCKER_DIR.parent / "docs" / "install.md").read_text()
    assert "ProtectSystem=full" in install and "NoNewPrivileges" in install
