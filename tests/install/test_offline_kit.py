"""The offline install kit: `make offline-kit`'s script builds it (once per test session; pip's
cache makes a second build cheap), then the agent and the hub install from it into fresh
virtual environments with no package index reachable, and `agent init` / `hub init` run from
those installs. A damaged kit is refused before anything is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600  # seconds: a first build downloads every wheel
INSTALL_TIMEOUT_S = 300  # seconds per install from the kit
UNREACHABLE = "http://127.0.0.1:9/simple"  # the discard port: nothing answers

pytestmark = pytest.mark.slow


def _offline_env() -> dict[str, str]:
    """No pip configuration, no extra wheel directories, and an index that does not answer:
    if the kit missed a wheel, the install fails here."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "TIANGONG_")) and k.lower() not in (
               "http_proxy", "https_proxy", "all_proxy")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=UNREACHABLE,
               PIP_NO_CACHE_DIR="1", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")
    return env


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("offline-kit") / "kit"
    proc = subprocess.run(["bash", str(REPO / "docker" / "offline-kit.sh"), str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def test_make_offline_kit_runs_the_kit_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "offline-kit: $(STAMP)\n\tPYTHON=$(BIN)/python bash docker/offline-kit.sh $(KIT)\n" \
        in makefile


def test_the_kit_holds_wheels_checksums_install_script_docs_and_deploy_files(kit: Path) -> None:
    wheels = sorted(p.name for p in (kit / "wheels").iterdir())
    assert all(w.endswith(".whl") for w in wheels)
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert {"tiangong", "flask", "gunicorn", "websockets", "watchdog", "kubernetes",
            "psycopg", "psycopg-binary", "pymysql", "cryptography", "pynacl"} <= names
    proc = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=kit,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {ln.split(maxsplit=1)[1] for ln in (kit / "SHA256SUMS").read_text().splitlines()}
    files = {str(p.relative_to(kit)) for p in kit.rglob("*") if p.is_file()}
    assert listed == files - {"SHA256SUMS"}
    assert (kit / "docs" / "install.md").is_file() and (kit / "docs" / "README.md").is_file()
    assert os.access(kit / "install.sh", os.X_OK)
    for name in ("Dockerfile.hub", "Dockerfile.agent", "compose.yaml", "tiangong-hub.service",
                 "tiangong-hub-live.service", "tiangong-agent.service"):
        assert (kit / "docker" / name).is_file(), name
    assert (kit / "docker" / "helm" / "tiangong" / "Chart.yaml").is_file()
    info = (kit / "KIT-INFO.txt").read_text()
    assert f"python {sys.version.split()[0]}" in info


def _install(kit: Path, what: str, prefix: Path) -> None:
    proc = subprocess.run([str(kit / "install.sh"), what, str(prefix)], env=_offline_env(),
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"installed tiangong[{what}] into {prefix}" in proc.stdout


def test_agent_and_hub_install_from_the_kit_with_no_index_and_initialise(
        kit: Path, tmp_path: Path) -> None:
    hub_venv, agent_venv = tmp_path / "hub-venv", tmp_path / "agent-venv"
    _install(kit, "hub", hub_venv)
    _install(kit, "agent", agent_venv)
    # The agent's install carries none of the hub's web stack.
    agent_pkgs = subprocess.run([str(agent_venv / "bin" / "python"), "-m", "pip", "list",
                                 "--format=freeze"], env=_offline_env(), capture_output=True,
                                text=True, timeout=120, check=True).stdout.lower()
    assert "watchdog==" in agent_pkgs and "flask==" not in agent_pkgs

    data = tmp_path / "hub-data"
    env = {**_offline_env(), "TIANGONG_KEY_PASSPHRASE": "kit-test-passphrase"}
    hub = subprocess.run([str(hub_venv / "bin" / "tiangong"), "hub", "init", "--data-dir",
                          str(data), "--admin", "alice", "--environment", "plant-a",
                          "--sign-in", "none"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert hub.returncode == 0, hub.stderr
    assert (data / "hub.toml").is_file() and (data / "root.json").is_file()

    home = tmp_path / "agent-home"
    agent = subprocess.run([str(agent_venv / "bin" / "tiangong"), "agent", "init", str(home),
                            "--root", str(data / "root.json"), "--id", "plant-a-01",
                            "--environment", "plant-a"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL, check=False)
    assert agent.returncode == 0, agent.stderr
    assert (home / "agent.toml").is_file()
    assert (home / "outbox" / "enrollment-plant-a-01.json").is_file()
    # Both run from their own environment, not from this checkout.
    for venv in (hub_venv, agent_venv):
        where = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import agent, hub; print(agent.__file__)"
                                if venv == hub_venv else "import agent; print(agent.__file__)"],
                               env=_offline_env(), cwd=tmp_path, capture_output=True,
                               text=True, timeout=60, check=True)
        assert where.stdout.startswith(str(venv)), where.stdout


def test_a_damaged_kit_is_refused_before_anything_is_installed(kit: Path,
                                                               tmp_path: Path) -> None:
    copy = tmp_path / "kit"
    shutil.copytree(kit, copy, copy_function=os.link)  # hard links: cheap
    wheel = next((copy / "wheels").glob("tiangong-*.whl"))
    data = wheel.read_bytes()
    wheel.unlink()  # a new inode: the shared kit stays intact
    wheel.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    prefix = tmp_path / "venv"
    proc = subprocess.run([str(copy / "install.sh"), "agent", str(prefix)], env=_offline_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert f"{copy}/SHA256SUMS does not match the kit's files" in proc.stderr
    assert wheel.name in proc.stdout + proc.stderr
    assert not prefix.exists()
    assert (kit / "wheels" / wheel.name).read_bytes() == data
