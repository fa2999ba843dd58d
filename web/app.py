"""``create_web_app(config)``: the hub's app (:func:`hub.app.create_app`) with the web UI.

Nothing is created at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from hub.app import create_app, hub_config
from hub.config import HubConfig
from hub.services.context import Clock, utc_now
from web import init_app
from web.config import WebConfig, load_web_config

__all__ = ["create_web_app"]


def create_web_app(
    config: HubConfig | Mapping[str, Any] | None = None,
    web_config: WebConfig | Mapping[str, Any] | None = None,
    *,
    clock: Clock = utc_now,
) -> Flask:
    """The hub plus its web UI.

    Args:
        config: as for :func:`hub.app.create_app`.
        web_config: a :class:`WebConfig`, a mapping shaped like the TOML document
            (``{"web": {...}, "saml": {...}}``, tests), or None to read the ``[web]`` and
            ``[saml]`` tables of the hub's TOML file.
        clock: the clock for session timeouts and audit times (tests inject theirs).

    Raises:
        ConfigError: invalid hub or web settings, unusable IdP metadata.
    """
    app = create_app(config)
    hub = hub_config(app)
    if web_config is None:
        web_cfg = load_web_config(hub)
    elif isinstance(web_config, WebConfig):
        web_cfg = web_config
    else:
        web_cfg = WebConfig.from_mapping(web_config, hub.data_dir)
    init_app(app, web_cfg, clock)
    return app
