"""``tiangong hub serve``: the hub app under gunicorn (never the Flask dev server).

Uses gunicorn's documented ``BaseApplication`` embedding: options are set in code, the app
object is built by :func:`hub.app.create_app` in the master and forked into workers.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from hub.config import HubConfig

__all__ = ["HubServer", "serve"]


class HubServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application serving one prepared Flask app."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        return self._app


def serve(config: HubConfig) -> None:
    """Run until interrupted. Migrations run once, in the master, before forking."""
    from hub.app import create_app
    from hub.db import db

    app = create_app(config)
    with app.app_context():
        db.engine.dispose()  # no pooled connection may cross the fork into workers
    HubServer(
        app,
        {
            "bind": config.bind,
            "workers": config.workers,
            "accesslog": "-",
            "errorlog": "-",
            "timeout": 60,
        },
    ).run()
