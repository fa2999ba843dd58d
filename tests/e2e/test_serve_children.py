"""``tiangong hub serve --live-bind`` started as an operator would: the console script, from
a directory that holds the data directory ``hub/`` (as ``make demo`` does in ``demo-out/``).
The live child must not import the data directory as the ``hub`` package, and ``/healthz``
must say whether the live server answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.conftest import run, wait_for
from tests.e2e.test_live_serve import DEADLINE, _accepts, free_port


def _health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def _live_child(pid: int) -> int | None:
    """The pid of the ``hub live`` child of process ``pid`` (None while there is none)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"live" in cmdline and b"--parent-pid" in cmdline:
                return int(child)
    return None


def test_serve_from_a_directory_holding_hub_and_healthz_reports_live(tmp_path: Path) -> None:
    data = tmp_path / "hub"  # the working directory holds a hub/ folder: the data dir
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "pass"}
    run("hub", "init", "--admin", "admin", env=env)
    tiangong = Path(sys.executable).parent / "tiangong"  # the console script, as installed
    assert tiangong.is_file()
    http_port, live_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(tiangong), "hub", "serve", "--bind", f"127.0.0.1:{http_port}", "--workers",
             "1", "--live-bind", f"127.0.0.1:{live_port}", "--live-insecure-loopback"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_for(lambda: proc.poll() is not None or _health(http_port) == (
            200, {"status": "ok", "database": "ok", "live": "ok"}), DEADLINE,
            "/healthz to report the database and the live server ok")
        assert proc.poll() is None, log.read_text()
        assert _accepts(live_port)
        child = _live_child(proc.pid)
        assert child is not None, log.read_text()
        os.kill(child, signal.SIGTERM)  # the live server goes away; the web side stays
        wait_for(lambda: _health(http_port) == (
            503, {"status": "unavailable", "database": "ok", "live": "down"}), DEADLINE,
            "/healthz to report the live server down")
        assert "No module named" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)


def test_healthz_without_a_live_server_does_not_mention_it(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "pass"}
    run("hub", "init", "--admin", "admin", env=env)
    http_port = free_port()
    with (tmp_path / "serve.log").open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "tiangong"), "hub", "serve", "--bind",
             f"127.0.0.1:{http_port}", "--workers", "1"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_for(lambda: proc.poll() is not None or _health(http_port) is not None, DEADLINE,
                 "/healthz to answer")
        assert _health(http_port) == (200, {"status": "ok", "database": "ok"})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
