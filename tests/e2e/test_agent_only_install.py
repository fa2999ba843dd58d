"""The agent runs without the hub's web stack (``pip install 'tiangong[agent]'``).

The agent's commands run in a subprocess whose import system refuses Flask, SQLAlchemy,
Alembic, python3-saml, gunicorn, Pygments and prometheus-client (the hub extra's own
packages), as an agent-only install would lack them. (APScheduler is
in the agent extra too: scheduled site jobs use its cron triggers.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import HubKeys

BLOCKER = r"""
import sys, importlib.abc
BLOCKED = {"flask", "flask_sqlalchemy", "flask_login", "flask_migrate", "sqlalchemy",
           "alembic", "onelogin", "gunicorn", "xmlsec", "pygments", "prometheus_client"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
        return None
sys.meta_path.insert(0, Block())
from tiangong.cli import main
sys.argv = ["tiangong", *sys.argv[1:]]
main()
"""

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"TIANGONG_KEY_PASSPHRASE": "test-pass", "PATH": "/usr/bin:/bin"})


def test_agent_commands_work_without_the_hub_stack(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = tmp_path / "agent"
    out = _run("agent", "init", str(home), "--root", str(hub_keys.root_json), "--id", "site-01",
               "--environment", "plant-a")
    assert out.returncode == 0, out.stderr
    bundle = tmp_path / "hello.tgb"
    out = _run("bundle", "create", str(HELLO), "--key", str(hub_keys.release_key), "--root",
               str(hub_keys.root_json), "--agent", "site-01", "--environment", "plant-a",
               "--sequence", "1", "-o", str(bundle), "--no-progress")
    assert out.returncode == 0, out.stderr
    out = _run("agent", "apply", str(bundle), "--home", str(home))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout
    assert _run("agent", "status", "--home", str(home)).returncode == 0


def test_hub_group_says_which_extra_to_install() -> None:
    out = _run("hub", "init", "--admin", "admin")
    assert out.returncode == 2
    assert "pip install 'tiangong[hub]'" in out.stderr


def test_help_works_without_the_hub_stack() -> None:
    """Commands are imported when looked up (bundle's names on first use, PEP 562): help
    of the groups an agent-only install uses must not reach into the hub's modules."""
    for args in (["--help"], ["agent", "--help"], ["bundle", "verify", "--help"],
                 ["agent", "run", "--help"]):
        out = _run(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert out.stdout.startswith("Usage: tiangong"), (args, out.stdout)
