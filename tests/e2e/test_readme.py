"""The README's round trip runs as printed.

The shell block after ``<!-- readme-test: round-trip -->`` in README.md is extracted and run
by bash (``-e -u -o pipefail``) in a temporary directory, with real ``tiangong`` processes
(the console script of this environment). Only paths are substituted: the hub's and the
agent's directories, the mounted stick, and the sample release (relative to a clone). The
root key's passphrase comes from ``TIANGONG_KEY_PASSPHRASE``, as the block's comment says,
since a test has no terminal to type it on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test: round-trip -->"


def readme_block(marker: str = MARKER) -> str:
    """The fenced ``sh`` block right after ``marker`` in README.md."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(marker)
    assert lines[start + 1] == "```sh", f"README.md:{start + 2}: expected a ```sh block"
    end = lines.index("```", start + 2)
    return "\n".join(lines[start + 2 : end]) + "\n"


def substitute(block: str, paths: dict[str, str]) -> str:
    for printed, here in paths.items():
        assert printed in block, f"the README block no longer mentions {printed}"
        block = block.replace(printed, here)
    return block


def test_readme_round_trip_runs_as_printed(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "tiangong").is_file(), "the tiangong console script is not installed"
    (tmp_path / "usb").mkdir()  # the mounted stick
    script = substitute(readme_block(), {
        "/var/lib/tiangong-hub": str(tmp_path / "hub"),
        "/var/lib/tiangong-agent": str(tmp_path / "agent"),
        "/media/usb": str(tmp_path / "usb"),
        "examples/releases/": f"{REPO}/examples/releases/",
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIANGONG_")}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
               TIANGONG_KEY_PASSPHRASE="readme-test-passphrase")
    proc = subprocess.run(["bash", "-x", "-e", "-u", "-o", "pipefail", "-c", script],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, f"the README block failed:\n{proc.stdout}\n{proc.stderr}"
    # the enrollment request is still on the stick: imported again, it is a duplicate
    assert "1 imported, 1 duplicate, 0 rejected" in proc.stdout
    assert "hello-1.0.0" in proc.stdout and "succeeded" in proc.stdout
    assert "audit.jsonl: audit log verified" in proc.stdout

    def hub(*args: str) -> str:
        return subprocess.run(["tiangong", "hub", "--data-dir", str(tmp_path / "hub"), *args],
                              env=env, capture_output=True, text=True, check=True,
                              timeout=120).stdout

    (deployment,) = json.loads(hub("deployments", "list", "--json", "--local-admin", "audrey"))
    assert deployment["state"] == "succeeded"
    assert deployment["release"] == "hello 1.0.0" and deployment["environment"] == "plant-a"
    assert json.loads(hub("audit", "verify", "--json", "--local-admin", "audrey"))["ok"] is True
    (archived,) = (tmp_path / "agent" / "archive").glob("*.tgb")  # it ran at the "site"
    again = subprocess.run(["tiangong", "agent", "apply", str(archived), "--json", "--home",
                            str(tmp_path / "agent")], env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 1, again.stderr  # applied once only
    assert json.loads(again.stdout)["status"] == "duplicate"
