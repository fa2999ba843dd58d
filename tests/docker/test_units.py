"""The systemd units in docker/: `systemd-analyze verify` accepts them (with ExecStart pointing
at this environment's `tiangong`), and every ExecStart command line parses with the real CLI:
the exact subcommand with its options, plus --help, exits 0 (an unknown or misplaced option
exits 2 with "No such option"); and the three command lines really start (hub web + live on
one data directory, the agent) and stop cleanly on SIGTERM."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.docker.deploy_files import (
    DOCKER_DIR,
    START_DEADLINE_S,
    STOP_DEADLINE_S,
    clean_env,
    healthz,
    remap,
    remap_all,
    unit_environment,
    unit_exec_start,
)
from tests.fixtures.dbservers import free_port, wait_for

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


def test_the_units_command_lines_start_a_hub_web_live_pair_and_an_agent(tmp_path: Path) -> None:
    """Each ExecStart, with its Environment= and paths remapped, really starts: the web unit
    answers /healthz, the live unit listens (and the web unit does not start a second live
    server), and the agent unit watches its inbox. Each stops cleanly on SIGTERM (systemctl
    stop)."""
    data, home = tmp_path / "hub-data", tmp_path / "agent-home"
    http, live = free_port(), free_port()
    mapping = {INSTALLED: str(TIANGONG), "/var/lib/tiangong-hub": str(data),
               "/var/lib/tiangong-agent": str(home), "0.0.0.0:8400": f"127.0.0.1:{http}",
               "0.0.0.0:8401": f"127.0.0.1:{live}"}
    base = {**clean_env(), "TIANGONG_KEY_PASSPHRASE": "units-test-passphrase"}
    subprocess.run([str(TIANGONG), "hub", "init", "--data-dir", str(data), "--admin", "admin",
                    "--sign-in", "none"], env=base, capture_output=True, timeout=300,
                   stdin=subprocess.DEVNULL, check=True)
    subprocess.run([str(TIANGONG), "agent", "init", str(home), "--root", str(data / "root.json"),
                    "--id", "units-01"], env=base, capture_output=True, timeout=300,
                   stdin=subprocess.DEVNULL, check=True)

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        unit = DOCKER_DIR / name
        env = {**base, **{k: remap(v, mapping) for k, v in unit_environment(unit).items()}}
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(remap_all(unit_exec_start(unit), mapping), env=env,
                                    stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        return proc, log

    def running(proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()}")
        return ready()

    units: list[tuple[str, Callable[[], bool]]] = [
        ("tiangong-hub-live.service", lambda: _listening(live)),
        ("tiangong-hub.service", lambda: healthz(http) == {"status": "ok", "database": "ok"}),
        ("tiangong-agent.service",
         lambda: "watching" in (tmp_path / "tiangong-agent.service.log").read_text()),
    ]
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for name, ready in units:
            proc, log = start(name)
            started.append((proc, log))
            wait_for(functools.partial(running, proc, log, ready), START_DEADLINE_S, name)
        assert "live server" not in (tmp_path / "tiangong-hub.service.log").read_text()
    finally:
        for proc, _log in started:
            os.killpg(proc.pid, signal.SIGTERM)
        codes = []
        for proc, _log in started:
            try:
                codes.append(proc.wait(timeout=STOP_DEADLINE_S))
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    assert codes == [0, 0, 0], [log.read_text() for _, log in started]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0
