"""The app factory, /healthz, and `hub serve` under gunicorn as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from hub.app import create_app
from hub.db import db
from tests.fixtures.databases import wait_for
from tests.fixtures.dbservers import free_port as _free_port
from tiangong.cli import root


def test_create_app_migrates_and_answers_health(tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path, "secret_key": "test"})
    with app.app_context():
        assert "audit_events" in inspect(db.engine).get_table_names()
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}
    with app.app_context():
        db.engine.dispose()


def test_health_reports_a_live_server_that_does_not_listen(tmp_path: Path) -> None:
    """A live address is configured but nothing listens there (the live child is down, or
    is being started again): 503 naming the live server, the database ok."""
    port = _free_port()
    app = create_app({"data_dir": tmp_path, "live_bind": f"127.0.0.1:{port}"})
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (
        503, {"status": "unavailable", "database": "ok", "live": "down"})
    assert app.test_client().get("/readyz").status_code == 200  # ready while it restarts
    with app.app_context():
        db.engine.dispose()


def test_health_reports_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(
        {
            "data_dir": tmp_path,
            "database_url": f"sqlite:///{tmp_path / 'missing' / 'hub.db'}",
            "run_migrations": False,
        }
    )
    monkeypatch.setattr(app.logger, "disabled", True)  # shared by every app: restored after
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"


def test_readiness_follows_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"data_dir": tmp_path})
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready",
                                                                  "database": "ok"})
    with app.app_context():
        db.engine.dispose()
    broken = create_app({"data_dir": tmp_path,
                         "database_url": f"sqlite:///{tmp_path / 'missing' / 'hub.db'}",
                         "run_migrations": False})
    monkeypatch.setattr(broken.logger, "disabled", True)
    response = broken.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}


def test_metrics_without_a_database_say_so_instead_of_failing(tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path,
                      "database_url": f"sqlite:///{tmp_path / 'missing' / 'hub.db'}",
                      "run_migrations": False})
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    assert "tiangong_database_up 0.0" in response.get_data(as_text=True)
    assert "tiangong_deployments" not in response.get_data(as_text=True)


def test_create_app_on_postgresql(pg_db: str, tmp_path: Path) -> None:
    app = create_app({"data_dir": tmp_path, "database_url": pg_db})
    assert app.test_client().get("/healthz").status_code == 200
    with app.app_context():
        db.engine.dispose()


def test_hub_serve_runs_gunicorn(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    init = CliRunner().invoke(
        root, ["hub", "--data-dir", str(data), "init", "--admin", "a", "--insecure-no-passphrase"]
    )
    assert init.exit_code == 0, init.output
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiangong.cli",
            "hub",
            "--data-dir",
            str(data),
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/healthz"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    try:
        wait_for(healthy, 60, f"hub serve to answer {url}")
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == b'{"database":"ok","status":"ok"}\n'
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert b"Booting worker" in (tmp_path / "serve.log").read_bytes()


def test_service_context_in_a_request(tmp_path: Path) -> None:
    """What the web UI will do: a request-scoped service context with the app's session."""
    from hub.app import service_context
    from hub.services.environments import create_environment, list_environments
    from hub.services.users import bootstrap_admin, get_user

    app = create_app({"data_dir": tmp_path})
    with app.test_request_context("/"):
        ctx = service_context(None)
        bootstrap_admin(ctx.session, ctx.clock, "admin")
        create_environment(ctx.as_user(get_user(ctx.session, "admin")), "plant-a")
        db.session.commit()
        assert ctx.keys is None  # no root.json in this data directory yet
        assert [e.name for e in list_environments(db.session())] == ["plant-a"]
        db.engine.dispose()
