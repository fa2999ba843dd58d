"""``tiangong hub serve --live-bind`` started as an operator would: the console script, from
a directory that holds the data directory ``hub/`` (as ``make demo`` does in ``demo-out/``).
The live child must not import the data directory as the ``hub`` package, and ``/healthz``
must say whether the live server answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.conftest import TIANGONG, run, wait_for
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
    """The live port is held by another process when `hub serve` starts: the live child's
    error names the address, the web side serves, and the child is started again until the
    port is free. A live child killed later is started again too."""
    data = tmp_path / "hub"  # the working directory holds a hub/ folder: the data dir
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "pass"}
    run("hub", "init", "--admin", "admin", env=env)
    tiangong = Path(sys.executable).parent / "tiangong"  # the console script, as installed
    assert tiangong.is_file()
    http_port, live_port = free_port(), free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", live_port))
    squatter.listen()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(tiangong), "hub", "serve", "--bind", f"127.0.0.1:{http_port}", "--workers",
             "1", "--live-bind", f"127.0.0.1:{live_port}", "--live-insecure-loopback"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_for(lambda: proc.poll() is not None or "starting it again" in log.read_text(),
                 DEADLINE, "hub serve to report its live child's exit")
        text = log.read_text()
        assert f"cannot listen on 127.0.0.1:{live_port}" in text, text
        assert "the live server (process " in text and "agents cannot connect" in text
        assert _health(http_port) is not None  # the web side serves meanwhile
        squatter.close()
        wait_for(lambda: proc.poll() is not None or (_health(http_port) == (
            200, {"status": "ok", "database": "ok", "live": "ok"})
            and "live server for hub" in log.read_text()), DEADLINE,
            "the live child started again to listen and /healthz to report it ok")
        assert proc.poll() is None, log.read_text()
        child = _live_child(proc.pid)
        assert child is not None, log.read_text()
        os.kill(child, signal.SIGTERM)  # the live server goes away; the web side stays
        wait_for(lambda: _live_child(proc.pid) not in (None, child) and _accepts(live_port),
                 DEADLINE, "a new live child to listen")
        assert f"process {child}) exited with code 0; agents cannot connect" in log.read_text()
        assert "No module named" not in log.read_text()
    finally:
        squatter.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
    assert "Traceback" not in log.read_text()


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


def test_init_with_local_sign_in_leaves_a_hub_the_admin_can_sign_in_to(tmp_path: Path) -> None:
    """`hub init --sign-in local` writes [web] local_login and the first admin's password:
    a real `hub serve` then lets the admin sign in over HTTP (form, CSRF token, cookie)."""
    import html
    import http.cookiejar
    import re
    import tomllib
    import urllib.parse

    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "pass"}
    init = subprocess.run([*TIANGONG, "hub", "init", "--admin", "admin", "--sign-in", "local",
                           "--admin-password-stdin", "--json"], input="a long trial password\n",
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=DEADLINE, check=False)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["sign_in"] == "local"
    web = tomllib.loads((data / "hub.toml").read_text())["web"]
    assert web == {"local_login": True, "secure_cookies": False}

    http_port = free_port()
    with (tmp_path / "serve.log").open("wb") as out:
        proc = subprocess.Popen([*TIANGONG, "hub", "serve", "--bind", f"127.0.0.1:{http_port}",
                                 "--workers", "1"], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        wait_for(lambda: proc.poll() is not None or _health(http_port) is not None, DEADLINE,
                 "/healthz to answer")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        base = f"http://127.0.0.1:{http_port}"
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

        def sign_in(password: str) -> tuple[int, str]:
            with browser.open(f"{base}/login/local", timeout=DEADLINE) as page:
                form = page.read().decode()
            token = html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', form)[1])
            body = urllib.parse.urlencode({"csrf_token": token, "username": "admin",
                                           "password": password}).encode()
            try:
                with browser.open(f"{base}/login/local", data=body, timeout=DEADLINE) as page:
                    return page.status, page.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        status, page = sign_in("not the password at all")
        assert status == 403 and "Signed in as" not in page
        status, page = sign_in("a long trial password")
        assert status == 200 and "Signed in as <strong>admin</strong>" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
