"""The hub's Flask application factory (Flask tutorial style: ``create_app(config)``).

``create_app`` binds Flask-SQLAlchemy to the configured database, upgrades it to the
newest migration (unless ``run_migrations`` is false), and registers the ``/healthz``,
``/readyz`` and ``/metrics`` endpoints. The web UI's blueprints (``web/``) are registered on
top by their own issue; they get service contexts from :func:`service_context` and only
translate domain errors.

Nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, got_request_exception, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.routing import IntegerConverter, Map

from hub.audit_mac import attach as attach_audit_mac
from hub.config import HubConfig, load_config
from hub.db import User, db, engine_options, install_sqlite_pragmas, normalize_url
from hub.live_wake import wake_on_commit
from hub.migrate import upgrade
from hub.services import releases as _releases  # noqa: F401 - registers the release guard
from hub.services.context import HubKeys, ServiceContext, utc_now

__all__ = ["create_app", "hub_config", "hub_keys", "service_context"]

health = Blueprint("health", __name__)

LIVE_PROBE_TIMEOUT_S = 1.0  # seconds /healthz waits for the live server to accept


def live_state(live_bind: str) -> str | None:
    """``ok`` when the live server configured at ``live_bind`` accepts a TCP connection,
    ``down`` when not, None when no live server is configured. A wildcard address is probed
    on loopback."""
    if not live_bind:
        return None
    host, _sep, port = live_bind.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:  # listening on every address: ask on loopback
            host = "::1" if address.version == 6 else "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=LIVE_PROBE_TIMEOUT_S):
            return "ok"
    except (OSError, ValueError):
        return "down"


def _database_answers(what: str) -> bool:
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        current_app.logger.exception("%s: database unreachable", what)
        return False
    finally:
        db.session.remove()
    return True


@health.get("/healthz")
def healthz() -> Any:
    """200 with ``{"status": "ok", "database": "ok"}`` when the database answers and the live
    server (when one is configured: ``"live": "ok"``) accepts connections; 503 with what is
    ``unreachable``/``down`` otherwise."""
    if not _database_answers("health check"):
        return jsonify(status="unavailable", database="unreachable"), 503
    live = live_state(hub_config().live_bind)
    if live is None:
        return jsonify(status="ok", database="ok")
    if live == "down":
        return jsonify(status="unavailable", database="ok", live="down"), 503
    return jsonify(status="ok", database="ok", live="ok")


@health.get("/readyz")
def readyz() -> Any:
    """For load balancers: 200 ``{"status": "ready"}`` when this process can serve requests
    (its database answers), else 503. Unlike ``/healthz`` it does not look at the live
    server: a web process is ready to take requests while the live server restarts."""
    if not _database_answers("readiness check"):
        return jsonify(status="unavailable", database="unreachable"), 503
    return jsonify(status="ready", database="ok")


@health.get("/metrics")
def metrics() -> Any:
    """Prometheus metrics: every web worker's own figures and the hub-wide figures from the
    database (:mod:`hub.metrics`)."""
    from hub.metrics import CONTENT_TYPE_LATEST, HubCollector, render, web_registry

    try:
        body = render(web_registry(HubCollector(db.session, utc_now)))
    finally:
        db.session.remove()
    return current_app.response_class(body, mimetype=None,
                                      headers={"Content-Type": CONTENT_TYPE_LATEST})


def _count_response(response: Response) -> Response:
    from hub.metrics import web_metrics

    web_metrics().requests.labels(f"{response.status_code // 100}xx").inc()
    return response


def _count_exception(sender: Flask, exception: BaseException, **_: Any) -> None:
    from hub.metrics import web_metrics

    web_metrics().errors.labels(type(exception).__name__).inc()


#: The largest row id a route takes: every database's 32-bit INTEGER (PostgreSQL's, MariaDB's).
MAX_ROW_ID = 2**31 - 1


class RowNumber(IntegerConverter):
    """``<int:…>`` in the hub's routes: a number no larger than :data:`MAX_ROW_ID`, so a
    longer one is a 404 like any id that names nothing (it reached the database before and
    failed there: an overflow on SQLite, "integer out of range" on PostgreSQL, answered 500).
    """

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,
                 max: int | None = MAX_ROW_ID, signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, max, signed)


def create_app(config: HubConfig | Mapping[str, Any] | None = None) -> Flask:
    """Build the hub's WSGI app.

    Args:
        config: a :class:`HubConfig`, a mapping of its fields (tests), or None to read
            ``TIANGONG_HUB_*`` / ``hub.toml`` (:func:`hub.config.load_config`).

    Raises:
        ConfigError: the configuration is invalid.
    """
    if config is None:
        cfg = load_config()
    elif isinstance(config, HubConfig):
        cfg = config
    else:
        cfg = HubConfig.from_mapping(config)
    app = Flask("hub", instance_path=str(Path(cfg.data_dir).absolute() / "instance"))
    app.url_map.converters["int"] = RowNumber  # before any route is added
    url = normalize_url(cfg.database_url)
    app.config.update(
        SECRET_KEY=cfg.secret_key or None,
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(url),
        TIANGONG_HUB=cfg,
    )
    db.init_app(app)
    wake_on_commit(db.session, url)  # queueing in the web UI wakes the live server (SQLite)
    with app.app_context():
        install_sqlite_pragmas(db.engine)
        keys = hub_keys(app)
        attach_audit_mac(db.engine, keys.audit_mac if keys is not None else None)
        if cfg.run_migrations:
            upgrade(db.engine)
    app.register_blueprint(health)
    app.after_request(_count_response)
    got_request_exception.connect(_count_exception, app)
    return app


def hub_config(app: Flask | None = None) -> HubConfig:
    cfg: HubConfig = (app or current_app).config["TIANGONG_HUB"]
    return cfg


def hub_keys(app: Flask | None = None) -> HubKeys | None:
    """The hub's keys from the data directory (None before init): loaded once per app, and
    again when ``root.json`` changes (``hub keys install-root``; :class:`KeysReloader`)."""
    from hub.errors import ConfigError
    from hub.keystore import KeysReloader

    the_app = app or current_app
    cache = the_app.extensions.setdefault("tiangong_hub", {})
    if "keys" not in cache:
        try:
            cache["keys"] = KeysReloader(hub_config(the_app).data_dir)
        except ConfigError:
            cache["keys"] = None
    reloader: KeysReloader | None = cache["keys"]
    return None if reloader is None else reloader.current()


def service_context(actor: User | None) -> ServiceContext:
    """A service context for a request: Flask-SQLAlchemy's session, the real clock."""
    cfg = hub_config()
    return ServiceContext(db.session(), utc_now, actor, hub_keys(), cfg.releases_dir)
