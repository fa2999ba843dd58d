"""hub.live_http: /metrics, /healthz and /readyz on the live port, answered before any
WebSocket handshake, against a real live server on 127.0.0.1; the database check and the
live server's own figures."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from hub.live import LiveHub, start_live
from tests.hub.conftest import Keys


def _get(port: int, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _hub(keys: Keys, tmp_path: Path, database: Path) -> LiveHub:
    engine = create_engine(f"sqlite:///{database}")
    return LiveHub(session_factory=sessionmaker(engine), keys=keys.hub,
                   data_dir=tmp_path / "hubdata", actor="op")


def test_health_and_metrics_of_a_live_server_with_its_database(keys: Keys,
                                                             tmp_path: Path) -> None:
    server = start_live(_hub(keys, tmp_path, tmp_path / "hub.db"), "127.0.0.1", 0,
                        allow_insecure_loopback=True)
    try:
        status, kind, body = _get(server.port, "/healthz")
        assert (status, kind) == (200, "application/json")
        assert json.loads(body) == {"status": "ok", "database": "ok", "live": "ok"}
        status, _, body = _get(server.port, "/readyz?from=lb")
        assert (status, json.loads(body)) == (200, {"status": "ready", "database": "ok"})
        status, kind, body = _get(server.port, "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=")
        assert "tiangong_live_connected_agents 0.0" in body
        assert "process_open_fds" in body
        # Any other path is a WebSocket handshake (and refused as a plain GET).
        assert _get(server.port, "/live")[0] == 426
    finally:
        server.stop()


def test_an_unreachable_database_makes_the_live_server_unhealthy_and_not_ready(
        keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "hub.db"
    server = start_live(_hub(keys, tmp_path, missing), "127.0.0.1", 0,
                        allow_insecure_loopback=True)
    try:
        status, _, body = _get(server.port, "/healthz")
        assert (status, json.loads(body)) == (503, {"status": "unavailable",
                                                    "database": "unreachable", "live": "ok"})
        status, _, body = _get(server.port, "/readyz")
        assert (status, json.loads(body)) == (503, {"status": "unavailable",
                                                    "database": "unreachable"})
        assert _get(server.port, "/metrics")[0] == 200  # its own figures need no database
    finally:
        server.stop()
    assert not missing.parent.exists()  # nothing was created by asking
