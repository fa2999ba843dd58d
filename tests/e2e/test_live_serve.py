"""``tiangong hub serve --live-bind`` runs the live server as a child process: a real hub
process pushes a queued deployment to a real agent process on 127.0.0.1 — over wss:// with the
CA ``hub init`` made and the agent pinned from its enrollment response, or over plain ws://
with ``--live-insecure-loopback`` — the result comes back live and is imported, and SIGTERM
stops both servers.

The helpers (:func:`free_port`, :class:`HubServe`, :func:`start_hub_serve`) are meant for
other end-to-end tests built on a running ``hub serve``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import TIANGONG, add_people, run, set_fast_inbox, wait_for
from tests.fixtures.dbservers import free_port

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
DEADLINE = 60.0  # seconds for anything that crosses a process boundary


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class HubServe:
    """A running ``tiangong hub serve`` (gunicorn + the live child)."""

    proc: subprocess.Popen[bytes]
    http_port: int
    live_port: int
    log: Path
    tls: bool = False

    @property
    def live_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.live_port}/live"

    def stop(self) -> int:
        """SIGTERM, as systemd or Kubernetes would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(DEADLINE)


def start_hub_serve(data_dir: Path, env: dict[str, str], log: Path, *,
                    tls: bool = False) -> HubServe:
    """Start ``hub serve`` with a live server on loopback — plain ws://
    (``--live-insecure-loopback``), or wss:// with the certificate ``hub init`` made (then
    it must name 127.0.0.1) — and return once /healthz answers and the live port accepts
    connections."""
    import os

    http_port, live_port = free_port(), free_port()
    insecure = [] if tls else ["--live-insecure-loopback"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*TIANGONG, "hub", "--data-dir", str(data_dir), "serve",
             "--bind", f"127.0.0.1:{http_port}", "--workers", "1",
             "--live-bind", f"127.0.0.1:{live_port}", *insecure],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    server = HubServe(proc, http_port, live_port, log, tls)
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(http_port), DEADLINE,
                 "hub serve to answer /healthz")
        wait_for(lambda: proc.poll() is not None or _accepts(live_port), DEADLINE,
                 "the live server to listen")
        assert proc.poll() is None, log.read_text()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def hub_cli(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str],
                                              Callable[..., subprocess.CompletedProcess[str]]]]:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}

    def hub(*args: str, user: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=env, check=check)

    hub("init", "--admin", "admin", "--hub-id", "hub-live-e2e", "--tls-name", "127.0.0.1")
    yield data, env, hub


@pytest.mark.parametrize("tls", [True, False], ids=["wss", "ws-loopback"])
def test_hub_serve_runs_the_live_server_and_delivers_live(
        tmp_path: Path,
        hub_cli: tuple[Path, dict[str, str], Callable[..., subprocess.CompletedProcess[str]]],
        tls: bool,
) -> None:
    data, env, hub = hub_cli
    add_people(env, (("alice", "developer"), ("bob", "approver"), ("carol", "operator")))
    server = start_hub_serve(data, env, tmp_path / "hub-serve.log", tls=tls)
    agent = None
    try:
        home = tmp_path / "agent"
        insecure = [] if tls else ["--insecure-loopback"]
        run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
            "--environment", "plant-a", "--hub-url", server.live_url, *insecure)
        set_fast_inbox(home)
        request = next((home / "outbox").glob("enrollment-*.json"))
        response = tmp_path / "response.json"
        hub("agents", "enroll", str(request), "--out", str(response), user="carol")
        request.unlink()  # the outbox is for results; the request has been carried over
        out = run("agent", "enroll-response", str(response), "--home", str(home))
        assert "live TLS CA pinned" in out.stdout
        hub("releases", "create", str(HELLO), "--create-product", user="alice")
        hub("releases", "submit", "hello", "1.0.0", user="alice")
        hub("releases", "approve", "hello", "1.0.0", user="bob")
        hub("deployments", "queue", "hello", "1.0.0", "--environment", "plant-a",
            user="carol")

        agent_log = tmp_path / "agent.log"
        with agent_log.open("wb") as log_fh:
            agent = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                                     stdout=log_fh, stderr=subprocess.STDOUT)

        def state() -> str:
            deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
            return str(deps[0]["state"])

        wait_for(lambda: state() in ("succeeded", "failed"), DEADLINE,
                 "the live result to be imported")
        assert state() == "succeeded", agent_log.read_text() + server.log.read_text()
        assert not list(data.glob("live-outbox/site-01/*.tgb"))  # delivered: moved to sent/
        assert list(data.glob("live-outbox/site-01/sent/*.tgb"))

        # Nobody exported by hand: the live server did, as the hub's own system actor.
        events = json.loads(hub("audit", "show", "--last", "200", "--json").stdout)
        by_live = {e["action"] for e in events if e["actor"] == "system:live"}
        assert by_live, [(e["actor"], e["action"]) for e in events]
        agents = json.loads(hub("agents", "list", "--json", user="carol").stdout)
        assert agents[0]["last_seen"] is not None

        # The same process serves the web UI (hub init wrote the secret key it needs).
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/",
                                    timeout=DEADLINE) as page:
            html = page.read().decode()
            assert page.status == 200 and "tiangong.css" in html
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/assets/tiangong.css",
                                    timeout=DEADLINE) as css:
            assert css.status == 200
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(DEADLINE)
        code = server.stop()
    assert code == 0, server.log.read_text()
    assert not _accepts(server.live_port)  # the live child stopped with gunicorn
    assert not _accepts(server.http_port)


def test_the_live_child_does_not_outlive_a_killed_hub_serve(
        tmp_path: Path,
        hub_cli: tuple[Path, dict[str, str], Callable[..., subprocess.CompletedProcess[str]]],
) -> None:
    """SIGKILL gives gunicorn's master no chance to stop its child: the child notices that
    its parent is gone and frees the live port for the next `hub serve`."""
    data, env, _hub = hub_cli
    server = start_hub_serve(data, env, tmp_path / "hub-serve.log", tls=True)
    server.proc.kill()
    server.proc.wait(DEADLINE)
    wait_for(lambda: not _accepts(server.live_port), DEADLINE, "the live port to close")
    assert "parent process" in server.log.read_text()


def test_hub_serve_refuses_plain_ws_off_loopback(
        tmp_path: Path,
        hub_cli: tuple[Path, dict[str, str], Callable[..., subprocess.CompletedProcess[str]]],
) -> None:
    _data, _env, hub = hub_cli
    out = hub("serve", "--live-bind", "0.0.0.0:1", "--live-insecure-loopback", check=False)
    assert out.returncode == 2
    assert "loopback addresses only" in out.stderr


def test_hub_serve_without_certificate_names_the_file(
        tmp_path: Path,
        hub_cli: tuple[Path, dict[str, str], Callable[..., subprocess.CompletedProcess[str]]],
) -> None:
    data, _env, hub = hub_cli
    (data / "hub.toml").write_text((data / "hub.toml").read_text()
                                   + '\n[live]\nbind = "127.0.0.1:1"\n'
                                   'tls_cert_file = "nowhere/server.crt"\n')
    out = hub("serve", check=False)
    assert out.returncode == 2
    assert str(data / "nowhere" / "server.crt") in out.stderr


@pytest.mark.parametrize(("action", "allowed"), [
    ("bundle.export", True),
    ("audit.checkpoint", False),  # an export signs its checkpoint under bundle.export
    ("result.import", True),
    ("deployment.queue", False),
    ("agent.enroll", False),
    ("release.approve", False),
    ("user.manage", False),
])
def test_the_live_system_actor_may_only_export_and_import(action: str, allowed: bool) -> None:
    from hub.errors import PermissionDeniedError
    from hub.services.context import ServiceContext, utc_now
    from hub.services.users import require_ctx

    live = ServiceContext(None, utc_now, None, system="live")  # type: ignore[arg-type]
    nobody = ServiceContext(None, utc_now, None)  # type: ignore[arg-type]
    assert live.actor_name == "system:live"
    if allowed:
        require_ctx(live, action)
    else:
        with pytest.raises(PermissionDeniedError, match=f"system:live may not {action}"):
            require_ctx(live, action)
    with pytest.raises(PermissionDeniedError):  # no actor and no system flag: nobody
        require_ctx(nobody, action)
