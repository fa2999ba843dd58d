"""The hub's configuration: a TOML file plus ``TIANGONG_HUB_*`` environment variables.

Precedence (last wins): defaults < ``<data_dir>/hub.toml`` (or the file named by
``TIANGONG_HUB_CONFIG``) < environment variables < explicit overrides (CLI options, tests).

=============================  ===============================  ============================
setting                        variable                         default
=============================  ===============================  ============================
data_dir                       TIANGONG_HUB_DATA_DIR            (required)
database_url                   TIANGONG_HUB_DATABASE_URL        sqlite:///<data_dir>/hub.db
secret_key                     TIANGONG_HUB_SECRET_KEY          (required to serve the UI)
bundle_expiry_s                TIANGONG_HUB_BUNDLE_EXPIRY_S     30 days, in seconds
bind                           TIANGONG_HUB_BIND                127.0.0.1:8400
workers                        TIANGONG_HUB_WORKERS             2
hub_id                         TIANGONG_HUB_HUB_ID              (from root.json at init)
export_dir                     TIANGONG_HUB_EXPORT_DIR          (none: the web UI offers a download)
scheduled_export               TIANGONG_HUB_SCHEDULED_EXPORT    "" (the scheduler writes nothing)
live_bind                      TIANGONG_HUB_LIVE_BIND           "" (no live server)
live_tls_cert_file             TIANGONG_HUB_LIVE_TLS_CERT_FILE  <data_dir>/tls/server.crt
live_tls_key_file              TIANGONG_HUB_LIVE_TLS_KEY_FILE   <data_dir>/tls/server.key
live_allow_insecure_loopback   TIANGONG_HUB_LIVE_ALLOW_...      false
live_binding_cert_file         TIANGONG_HUB_LIVE_BINDING_...    "" (= live_tls_cert_file)
live_<limit>                   TIANGONG_HUB_LIVE_<LIMIT>        see hub.live_guard.LiveLimits
smtp_host                      TIANGONG_HUB_SMTP_HOST           "" (e-mail targets cannot send)
smtp_port                      TIANGONG_HUB_SMTP_PORT           25
smtp_starttls                  TIANGONG_HUB_SMTP_STARTTLS       false
smtp_ca_file                   TIANGONG_HUB_SMTP_CA_FILE        "" (the system's CAs)
smtp_from                      TIANGONG_HUB_SMTP_FROM           tiangong-hub@localhost
smtp_username                  TIANGONG_HUB_SMTP_USERNAME       "" (no AUTH)
smtp_password_file             TIANGONG_HUB_SMTP_PASSWORD_FILE  ""
smtp_timeout_s                 TIANGONG_HUB_SMTP_TIMEOUT_S      10.0
=============================  ===============================  ============================

In ``hub.toml`` the live settings sit in their own table, without the ``live_`` prefix::

    [live]
    bind = "0.0.0.0:8401"              # empty or absent: `hub serve` runs no live server
    tls_cert_file = "tls/server.crt"   # relative paths are under the data directory
    tls_key_file = "tls/server.key"
    allow_insecure_loopback = false    # plain ws:// on a loopback address only (tests, or
                                       # behind a TLS-terminating proxy on the same host)
    binding_cert_file = ""             # the certificate agents see, if not tls_cert_file:
                                       # a TLS-terminating proxy's (channel binding, §5.2)
    handshake_timeout_s = 10.0         # and every other limit of hub.live_guard.LiveLimits
                                       # (docs/live.md, "Limits"), each with its unit

E-mail notifications (hub.services.notifications) go to an internal relay, configured in
their own ``[smtp]`` table the same way::

    [smtp]
    host = "relay.internal"            # empty or absent: e-mail targets fail with that reason
    port = 25
    starttls = true                    # STARTTLS before anything else is sent
    ca_file = "/etc/ssl/relay-ca.pem"  # the relay's CA (empty: the system's)
    from = "tiangong@example.org"
    username = ""                      # AUTH only with a username; the password stays in
    password_file = ""                 # this file (read at each delivery)
    timeout_s = 10.0

The live server listens on a port of its own, beside the WSGI port: gunicorn's workers are
synchronous WSGI processes, the live server is one asyncio process holding every agent's
WebSocket (docs/live.md).

This module does not create anything on disk (``hub init`` does) and never reads keys.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from hub.live_guard import LiveLimits

__all__ = ["DEFAULT_BUNDLE_EXPIRY_S", "ENV_PREFIX", "HubConfig", "load_config"]

ENV_PREFIX = "TIANGONG_HUB_"
LIVE_TABLE = "live"  # the [live] table of hub.toml; its keys map to live_<key>
SMTP_TABLE = "smtp"  # the [smtp] table: the relay of e-mail notifications (smtp_<key>)
DEFAULT_BUNDLE_EXPIRY_S = 30 * 24 * 3600  # seconds
CONFIG_FILE = "hub.toml"


@dataclass(frozen=True)
class HubConfig:
    """Everything the hub needs to run; paths are absolute after :func:`load_config`."""

    data_dir: Path
    database_url: str = ""
    secret_key: str = ""
    bundle_expiry_s: int = DEFAULT_BUNDLE_EXPIRY_S
    bind: str = "127.0.0.1:8400"
    workers: int = 2
    hub_id: str = ""
    run_migrations: bool = True
    live_bind: str = ""
    live_tls_cert_file: str = ""
    live_tls_key_file: str = ""
    live_allow_insecure_loopback: bool = False
    live_binding_cert_file: str = ""
    # The live server's limits (hub.live_guard.LiveLimits: names, units, defaults).
    live_handshake_timeout_s: float = LiveLimits.handshake_timeout_s
    live_max_unauthenticated_per_address: int = LiveLimits.max_unauthenticated_per_address
    live_max_unauthenticated: int = LiveLimits.max_unauthenticated
    live_login_failures_before_backoff: int = LiveLimits.login_failures_before_backoff
    live_login_failure_window_s: float = LiveLimits.login_failure_window_s
    live_login_backoff_s: float = LiveLimits.login_backoff_s
    live_login_backoff_max_s: float = LiveLimits.login_backoff_max_s
    live_refused_audit_interval_s: float = LiveLimits.refused_audit_interval_s
    live_send_timeout_s: float = LiveLimits.send_timeout_s
    live_send_buffer_bytes: int = LiveLimits.send_buffer_bytes
    live_send_buffer_max_bytes: int = LiveLimits.send_buffer_max_bytes
    live_max_result_bytes: int = LiveLimits.max_result_bytes
    live_partial_max_age_s: float = LiveLimits.partial_max_age_s
    live_log_quota_agent_bytes: int = LiveLimits.log_quota_agent_bytes
    live_log_quota_total_bytes: int = LiveLimits.log_quota_total_bytes
    live_heartbeat_s: int = LiveLimits.heartbeat_s
    live_poll_s: float = LiveLimits.poll_s
    live_export_processes: int = LiveLimits.export_processes
    #: where the web UI's Media page writes exported bundles (a mounted share), relative to
    #: data_dir unless absolute; empty: the page offers the bundles as a download instead.
    export_dir: str = ""
    #: environments (comma-separated; "*": all) whose queued deployments the scheduler
    #: (hub.scheduler) writes into export_dir when their window opens or freeze ends.
    scheduled_export: str = ""
    #: the SMTP relay of e-mail notifications ([smtp] in hub.toml)
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_ca_file: str = ""
    smtp_from: str = "tiangong-hub@localhost"
    smtp_username: str = ""
    smtp_password_file: str = ""
    smtp_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'hub.db'}")
        if self.bundle_expiry_s <= 0:
            raise ConfigError(f"bundle_expiry_s must be positive, not {self.bundle_expiry_s}")
        try:
            LiveLimits.from_config(self)
        except ValueError as exc:
            raise ConfigError(f"hub config: {exc}") from exc

    @property
    def export_path(self) -> Path | None:
        """``export_dir`` as an absolute path, or None when it is not set."""
        if not self.export_dir:
            return None
        path = Path(self.export_dir).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    @property
    def releases_dir(self) -> Path:
        return self.data_dir / "releases"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def root_path(self) -> Path:
        return self.data_dir / "root.json"

    @property
    def tls_dir(self) -> Path:
        """Where ``hub init`` / ``hub tls issue`` keep the private CA and server certificate."""
        return self.data_dir / "tls"

    @property
    def live_tls_cert(self) -> Path:
        """The live server's certificate chain (PEM); relative settings are under data_dir."""
        return self._under_data(self.live_tls_cert_file, self.tls_dir / "server.crt")

    @property
    def live_tls_key(self) -> Path:
        """The live server's private key (PEM)."""
        return self._under_data(self.live_tls_key_file, self.tls_dir / "server.key")

    @property
    def live_binding_cert(self) -> Path | None:
        """The certificate whose tls-server-end-point agents sign, when it is not the live
        server's own (a TLS-terminating proxy's); None otherwise."""
        if not self.live_binding_cert_file:
            return None
        return self._under_data(self.live_binding_cert_file, self.tls_dir / "server.crt")

    def _under_data(self, value: str, default: Path) -> Path:
        if not value:
            return default
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> HubConfig:
        """Build from a plain mapping (Flask-style test config).

        Raises:
            ConfigError: unknown key, missing data_dir or a value of the wrong type.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown hub setting(s): {', '.join(unknown)}")
        if "data_dir" not in values:
            raise ConfigError("data_dir is required (TIANGONG_HUB_DATA_DIR or --data-dir)")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            kwargs[name] = _coerce(name, known[name].type, value)
        return cls(**kwargs)


def _coerce(name: str, type_name: object, value: Any) -> Any:
    text = str(type_name)
    try:
        if text == "int" and not isinstance(value, int):
            return int(value)
        if text == "float" and not isinstance(value, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if text == "bool" and isinstance(value, str):
            return value.strip().lower() in {"1", "true", "yes", "on"}
        if text == "Path":
            return Path(value).expanduser().absolute()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"hub setting {name}: {value!r} is not a valid {text}") from exc
    return value


def load_config(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Read the configuration (see the module docstring for precedence).

    Raises:
        ConfigError: no data directory, unreadable or invalid TOML, unknown settings.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    from_env = {
        f.name: env[ENV_PREFIX + f.name.upper()]
        for f in fields(HubConfig)
        if ENV_PREFIX + f.name.upper() in env
    }
    chosen_dir = data_dir or from_env.get("data_dir")
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path is None and chosen_dir is not None:
        candidate = Path(chosen_dir) / CONFIG_FILE
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"hub config {path}: {exc}") from exc
        hub_values = dict(file_values.get("hub", file_values))
        live = file_values.get(LIVE_TABLE, hub_values.pop(LIVE_TABLE, {}))
        hub_values.pop(LIVE_TABLE, None)
        smtp = file_values.get(SMTP_TABLE, hub_values.pop(SMTP_TABLE, {}))
        hub_values.pop(SMTP_TABLE, None)
        values.update(hub_values)
        values.update(_table(path, LIVE_TABLE, live, _LIVE_KEYS))
        values.update(_table(path, SMTP_TABLE, smtp, _SMTP_KEYS))
    values.update(from_env)
    if data_dir is not None:
        values["data_dir"] = data_dir
    values.update(overrides or {})
    return HubConfig.from_mapping(values)


_LIVE_KEYS = ("bind", "tls_cert_file", "tls_key_file", "allow_insecure_loopback",
              "binding_cert_file", *LiveLimits.setting_names())


_SMTP_KEYS = ("host", "port", "starttls", "ca_file", "from", "username", "password_file",
              "timeout_s")


def _table(path: str | os.PathLike[str], name: str, table: object,
           keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``[name]`` table of hub.toml (``[live]``, ``[smtp]``) as ``name_*`` settings.

    Raises:
        ConfigError: not a table, or a key that table does not know.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"hub config {path}: [{name}] must be a table")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"hub config {path}: unknown [{name}] setting(s) "
                          f"{', '.join(unknown)} (known: {', '.join(keys)})")
    return {f"{name}_{key}": value for key, value in table.items()}


def with_overrides(config: HubConfig, **changes: Any) -> HubConfig:
    """A copy of ``config`` with some settings changed."""
    return replace(config, **changes)
