"""The hub's Flask application factory (Flask tutorial style: ``create_app(config)``).

``create_app`` binds Flask-SQLAlchemy to the configured database, upgrades it to the
newest migration (unless ``run_migrations`` is false), and registers the ``/healthz``
endpoint. The web UI's blueprints (``web/``) are registered on top by their own issue;
they get service contexts from :func:`service_context` and only translate domain errors.

Nothing is created at import time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from hub.audit_mac import attach as attach_audit_mac
from hub.config import HubConfig, load_config
from hub.db import User, db, engine_options, install_sqlite_pragmas, normalize_url
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


@health.get("/healthz")
def healthz() -> Any:
    """200 with ``{"status": "ok", "database": "ok"}`` when the database answers and the live
    server (when one is configured: ``"live": "ok"``) accepts connections; 503 with what is
    ``unreachable``/``down`` otherwise."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        current_app.logger.exception("health check: database unreachable")
        return jsonify(status="unavailable", database="unreachable"), 503
    finally:
        db.session.remove()
    live = live_state(hub_config().live_bind)
    if live is None:
        return jsonify(status="ok", database="ok")
    if live == "down":
        return jsonify(status="unavailable", database="ok", live="down"), 503
    return jsonify(status="ok", database="ok", live="ok")


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
    url = normalize_url(cfg.database_url)
    app.config.update(
        SECRET_KEY=cfg.secret_key or None,
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(url),
        TIANGONG_HUB=cfg,
    )
    db.init_app(app)
    with app.app_context():
        install_sqlite_pragmas(db.engine)
        keys = hub_keys(app)
        attach_audit_mac(db.engine, keys.audit_mac if keys is not None else None)
        if cfg.run_migrations:
            upgrade(db.engine)
    app.register_blueprint(health)
    return app


def hub_config(app: Flask | None = None) -> HubConfig:
    cfg: HubConfig = (app or current_app).config["TIANGONG_HUB"]
    return cfg


def hub_keys(app: Flask | None = None) -> HubKeys | None:
    """The hub's keys from the data directory, loaded once per app (None before init)."""
    from hub.errors import ConfigError
    from hub.keystore import load_hub_keys

    the_app = app or current_app
    cache = the_app.extensions.setdefault("tiangong_hub", {})
    if "keys" not in cache:
        try:
            cache["keys"] = load_hub_keys(hub_config(the_app).data_dir)
        except ConfigError:
            cache["keys"] = None
    keys: HubKeys | None = cache["keys"]
    return keys


def service_context(actor: User | None) -> ServiceContext:
    """A service context for a request: Flask-SQLAlchemy's session, the real clock."""
    cfg = hub_config()
    return ServiceContext(db.session(), utc_now, actor, hub_keys(), cfg.releases_dir)
