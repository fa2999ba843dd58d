"""The agent upgrades itself from a bundle that arrives by media (a file drop into its inbox):
a real `tiangong agent supervise` process runs the agent; an `agent-upgrade` step installs a
wheel of this tree built with a bumped version beside the running one, switches to it, and the
agent restarts into it; a second bundle brings it back to this version; a third carries a
build that cannot start, and the supervisor goes back to the version that ran before.

The wheels are built offline from a copy of this checkout (`pip wheel --no-deps
--no-build-isolation --no-index`), with the version changed in pyproject.toml and
tiangong/__init__.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tiangong
from tests.e2e.conftest import TIANGONG, HubKeys, run, set_fast_inbox, wait_for
from tests.e2e.test_agent_process import _create, _drop, _init_agent, _results, _verify_result

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tiangong", "agent", "hub", "web", "bundle", "signing")
THIS = tiangong.__version__
BUMPED = THIS + ".post1"
BROKEN = THIS + ".post2"
SILENT = THIS + ".post3"
UP_DEADLINE_S = 120  # seconds for a bundle to run and the agent to restart into a version
#: Appended to agent/cli.py of the BROKEN build: `agent run` exits at once with status 3
#: (it imports fine, so only the supervisor's deadline can catch it).
BREAK_RUN = """

def _broken_run(*args, **kwargs):
    raise SystemExit(3)


run_cmd.callback = _broken_run
"""


#: Appended to agent/upgrade.py of the SILENT build: it runs, but never says it is up.
NEVER_CONFIRM = """

def confirm_started(home):
    return None
"""


def build_wheel(tmp: Path, version: str, *, broken: bool = False, silent: bool = False) -> Path:
    tree = tmp / f"tree-{version}"
    for name in PACKAGES:
        shutil.copytree(REPO / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for rel, old, new in (("pyproject.toml", f'version = "{THIS}"', f'version = "{version}"'),
                          ("tiangong/__init__.py", f'__version__ = "{THIS}"',
                           f'__version__ = "{version}"')):
        text = (tree / rel).read_text()
        assert text.count(old) == 1, f"{rel}: the version line moved"
        (tree / rel).write_text(text.replace(old, new))
    if broken:
        with (tree / "agent" / "cli.py").open("a") as fh:
            fh.write(BREAK_RUN)
    if silent:
        with (tree / "agent" / "upgrade.py").open("a") as fh:
            fh.write(NEVER_CONFIRM)
    out = tmp / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "--wheel-dir", str(out),
                           str(tree)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob(f"tiangong-{version}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("upgrade-wheels")
    return {THIS: build_wheel(tmp, THIS), BUMPED: build_wheel(tmp, BUMPED),
            BROKEN: build_wheel(tmp, BROKEN, broken=True),
            SILENT: build_wheel(tmp, SILENT, silent=True)}


def upgrade_release(tmp: Path, wheel: Path, version: str, confirm: str = "60s") -> Path:
    release = tmp / f"release-{version}"
    release.mkdir()
    shutil.copy2(wheel, release / wheel.name)
    (release / "release.toml").write_text(f"""format = 1

[release]
product = "tiangong-agent"
version = "{version}"

[[steps]]
name = "upgrade the agent"
kind = "agent-upgrade"
wheel = "{wheel.name}"
confirm_timeout = "{confirm}"
""")
    return release


def upgrade_status(home: Path) -> dict[str, Any]:
    st: dict[str, Any] = json.loads(run("agent", "status", "--home", str(home),
                                        "--json").stdout)["upgrade"]
    return st


def runs(home: Path, version: str, not_pid: int | None = None) -> bool:
    running = upgrade_status(home)["running"]
    return (running is not None and running["version"] == version and running["alive"]
            and running["pid"] != not_pid)


def ship(keys: HubKeys, tmp: Path, home: Path, wheel: Path, version: str, seq: int,
         confirm: str = "60s") -> None:
    bundle = _create(keys, upgrade_release(tmp, wheel, version, confirm), tmp / f"b{seq}.tgb",
                     seq=seq)
    _drop(bundle, home)


def last_result(home: Path, keys: HubKeys, tmp: Path, count: int) -> dict[str, Any]:
    wait_for(lambda: len(_results(home)) >= count, UP_DEADLINE_S, f"result {count}")
    return _verify_result(_results(home)[count - 1], keys, home, tmp)


@pytest.mark.slow
def test_agent_upgrades_by_media_and_back_and_rolls_back_a_build_that_cannot_start(
    tmp_path: Path, hub_keys: HubKeys, wheels: dict[str, Path]
) -> None:
    home = _init_agent(tmp_path, hub_keys)
    set_fast_inbox(home)
    log = tmp_path / "supervisor.log"
    sup = start_supervisor(home, log)
    try:
        wait_for(lambda: runs(home, THIS), UP_DEADLINE_S, f"the agent running {THIS}")
        first_pid = upgrade_status(home)["running"]["pid"]

        # Up: this version -> the bumped build.
        ship(hub_keys, tmp_path, home, wheels[BUMPED], BUMPED, seq=1)
        wait_for(lambda: runs(home, BUMPED, not_pid=first_pid), UP_DEADLINE_S,
                 f"the agent running {BUMPED}")
        st = upgrade_status(home)
        assert st["current"] == BUMPED
        assert st["last_upgrade"]["state"] == "confirmed"
        assert (st["last_upgrade"]["from"], st["last_upgrade"]["to"]) == (THIS, BUMPED)
        assert (home / "versions" / BUMPED / "lib" / "tiangong" / "__init__.py").is_file()
        result = last_result(home, hub_keys, tmp_path, 1)
        assert result["status"] == "succeeded"
        step = result["body"]["steps"][0]
        assert step["details"]["state"] == "switched"
        assert (step["details"]["from"], step["details"]["to"]) == (THIS, BUMPED)
        assert f"tiangong {BUMPED} installed beside {THIS} and switched to" in step["summary"]

        # Back: the bumped build -> this version (installed side by side too).
        bumped_pid = upgrade_status(home)["running"]["pid"]
        ship(hub_keys, tmp_path, home, wheels[THIS], THIS, seq=2)
        wait_for(lambda: runs(home, THIS, not_pid=bumped_pid), UP_DEADLINE_S,
                 f"the agent running {THIS} again")
        st = upgrade_status(home)
        assert st["current"] == THIS
        assert (st["last_upgrade"]["from"], st["last_upgrade"]["to"],
                st["last_upgrade"]["state"]) == (BUMPED, THIS, "confirmed")
        text = run("agent", "status", "--home", str(home)).stdout
        assert (f"agent version: tiangong {THIS} (pid {upgrade_status(home)['running']['pid']});"
                f" last upgrade {BUMPED} -> {THIS}: confirmed") in text
        result = last_result(home, hub_keys, tmp_path, 2)
        assert result["status"] == "succeeded"
        assert result["body"]["steps"][0]["details"]["running"] == BUMPED  # who ran the step

        # A build that cannot start: the supervisor goes back to the version before it.
        back_pid = upgrade_status(home)["running"]["pid"]
        ship(hub_keys, tmp_path, home, wheels[BROKEN], BROKEN, seq=3, confirm="90s")
        wait_for(lambda: upgrade_status(home)["last_upgrade"]["state"] == "rolled-back",
                 UP_DEADLINE_S, "the rollback")
        wait_for(lambda: runs(home, THIS, not_pid=back_pid), UP_DEADLINE_S,
                 f"the agent running {THIS} after the rollback")
        st = upgrade_status(home)
        assert st["current"] == THIS
        assert f"tiangong {BROKEN} exited with status 3 before it was up" in \
            st["last_upgrade"]["reason"]
        result = last_result(home, hub_keys, tmp_path, 3)
        assert result["body"]["steps"][0]["details"]["to"] == BROKEN  # switched, went back
        assert sup.poll() is None  # the supervisor kept running throughout
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- supervisor log (tail):\n"
                             f"{log.read_text(errors='replace')[-8000:]}") from exc
    finally:
        stop_supervisor(sup)
    assert sup.returncode == 0, log.read_text()


def start_supervisor(home: Path, log: Path, env: dict[str, str] | None = None
                     ) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([*TIANGONG, "agent", "supervise", "--home", str(home)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})


def stop_supervisor(sup: subprocess.Popen[bytes]) -> None:
    if sup.poll() is not None:
        return
    os.killpg(sup.pid, signal.SIGTERM)
    try:
        sup.wait(timeout=60)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["upgrade-installed", "upgrade-recorded"])
def test_a_power_cut_during_the_upgrade_step_leaves_the_old_version_running(
    tmp_path: Path, hub_keys: HubKeys, wheels: dict[str, Path], point: str
) -> None:
    """Killed (SIGKILL) after installing, or after recording the switch but before switching:
    the supervisor's next start (systemd would restart it) runs the old version, the record
    says the switch did not finish, and the bundle's result says the step was interrupted."""
    home = _init_agent(tmp_path, hub_keys)
    set_fast_inbox(home)
    log = tmp_path / "supervisor.log"
    sup = start_supervisor(home, log, {"TIANGONG_CRASH_AT": point})
    try:
        wait_for(lambda: runs(home, THIS), UP_DEADLINE_S, f"the agent running {THIS}")
        ship(hub_keys, tmp_path, home, wheels[BUMPED], BUMPED, seq=1)
        sup.wait(timeout=UP_DEADLINE_S)
        assert sup.returncode == 128 + signal.SIGKILL, log.read_text()  # the child's death
        assert (home / "versions" / BUMPED / "lib").is_dir()  # installed before the cut
        assert not (home / "versions" / "current").exists()

        sup = start_supervisor(home, log)
        wait_for(lambda: runs(home, THIS), UP_DEADLINE_S, f"the agent running {THIS} again")
        st = upgrade_status(home)
        assert st["current"] is None  # the installed version, as before
        if point == "upgrade-recorded":
            assert st["last_upgrade"]["state"] == "rolled-back"
            assert f"the switch to tiangong {BUMPED} did not finish" in \
                st["last_upgrade"]["reason"]
        else:
            assert st["last_upgrade"] is None
        result = last_result(home, hub_keys, tmp_path, 1)
        assert result["status"] == "interrupted"
        assert result["body"]["steps"][0]["status"] == "interrupted"
    finally:
        stop_supervisor(sup)


@pytest.mark.slow
def test_a_version_that_runs_but_never_comes_up_is_rolled_back_at_its_deadline(
    tmp_path: Path, hub_keys: HubKeys, wheels: dict[str, Path]
) -> None:
    """The SILENT build starts and keeps running but never records that it is up: at the
    step's confirm_timeout the supervisor stops it and starts the version before it."""
    home = _init_agent(tmp_path, hub_keys)
    set_fast_inbox(home)
    log = tmp_path / "supervisor.log"
    sup = start_supervisor(home, log)
    try:
        wait_for(lambda: runs(home, THIS), UP_DEADLINE_S, f"the agent running {THIS}")
        first_pid = upgrade_status(home)["running"]["pid"]
        ship(hub_keys, tmp_path, home, wheels[SILENT], SILENT, seq=1, confirm="3s")
        wait_for(lambda: upgrade_status(home)["last_upgrade"] is not None
                 and upgrade_status(home)["last_upgrade"]["state"] == "rolled-back",
                 UP_DEADLINE_S, "the rollback at the deadline")
        wait_for(lambda: runs(home, THIS, not_pid=first_pid), UP_DEADLINE_S,
                 f"the agent running {THIS} after the rollback")
        st = upgrade_status(home)
        assert st["last_upgrade"]["reason"] == f"tiangong {SILENT} was not up within 3 s"
        assert st["current"] is None  # back to the installed version
        assert not (home / "versions" / "previous").exists()
        assert "supervisor: starting the agent (tiangong " + SILENT + ")" in log.read_text()
        assert sup.poll() is None
    finally:
        stop_supervisor(sup)
    assert sup.returncode == 0, log.read_text()
