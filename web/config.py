"""The web UI's settings: the ``[web]`` and ``[saml]`` tables of the hub's TOML file.

The hub's own settings live in the ``[hub]`` table (:mod:`hub.config`); the web UI reads the
same file (``<data_dir>/hub.toml`` or ``TIANGONG_HUB_CONFIG``)::

    [web]
    secure_cookies = true            # Secure flag on cookies (false only for plain-http loopback)
    idle_timeout_s = 1800            # seconds without a request before a session ends
    absolute_timeout_s = 43200       # seconds after login a session ends regardless
    local_login = false              # hub users sign in with a password (`hub users
                                     # set-password`); refused beyond loopback without TLS
    login_window_s = 900             # seconds over which failed password sign-ins count
    login_max_failures_per_user = 5  # failures per user name per window, then refused
    login_max_failures_per_address = 20  # failures per source address per window
    max_upload_bytes = 268435456     # bytes of a release archive upload (256 MiB)
    max_unpacked_file_bytes = 268435456   # bytes of one unpacked file
    max_unpacked_total_bytes = 1073741824 # bytes of all unpacked files together
    max_unpacked_files = 10000       # members of an uploaded archive
    max_unpack_ratio = 100           # unpacked bytes per uploaded byte, at most
    api_token_max_days = 90          # days a personal API token may live, at most

    [web.break_glass]                # local admin for when the IdP is down; off by default
    enabled = false
    username = "breakglass"          # an existing *local* hub user (e.g. from `hub init`)
    password_hash = "scrypt:..."     # werkzeug.security.generate_password_hash output

    [saml]
    sp_base_url = "https://hub.example.org"   # how browsers reach the hub (required)
    idp_metadata_file = "idp-metadata.xml"    # relative to data_dir; never fetched over HTTP
    want_messages_signed = true      # require the IdP to sign <Response> and logout messages
    sp_cert_file = ""                # optional: sign AuthnRequests / logout messages
    sp_key_file = ""

    [saml.attributes]                # SAML attribute names (NameFormat basic or URI)
    username = "uid"
    email = "email"
    display_name = "displayName"
    groups = "groups"

    [saml.group_roles]               # IdP group -> hub roles (global grants, granted_by "saml")
    developers = ["developer"]

This module only parses and checks values; it opens no file but the TOML file itself.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from hub.config import CONFIG_FILE, ENV_PREFIX, HubConfig
from hub.db import ROLES
from hub.errors import ConfigError

__all__ = [
    "DEFAULT_ABSOLUTE_TIMEOUT_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "AttributeNames",
    "BreakGlassConfig",
    "LoginLimits",
    "SamlConfig",
    "UploadLimits",
    "WebConfig",
    "load_web_config",
]

DEFAULT_IDLE_TIMEOUT_S = 30 * 60  # seconds
DEFAULT_ABSOLUTE_TIMEOUT_S = 12 * 3600  # seconds
DEFAULT_LOGIN_WINDOW_S = 15 * 60  # seconds over which failed password sign-ins count
DEFAULT_MAX_FAILURES_PER_USER = 5  # failed sign-ins per user name per window
DEFAULT_MAX_FAILURES_PER_ADDRESS = 20  # failed sign-ins per source address per window
DEFAULT_API_TOKEN_MAX_DAYS = 90  # days a personal API token may live, at most
MAX_API_TOKEN_DAYS = 3650  # days: the largest api_token_max_days accepted


@dataclass(frozen=True)
class AttributeNames:
    """Which SAML attributes carry the user's identity."""

    username: str = "uid"
    email: str = "email"
    display_name: str = "displayName"
    groups: str = "groups"


@dataclass(frozen=True)
class SamlConfig:
    sp_base_url: str
    idp_metadata_file: Path
    want_messages_signed: bool = True
    sp_cert_file: Path | None = None
    sp_key_file: Path | None = None
    attributes: AttributeNames = field(default_factory=AttributeNames)
    group_roles: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        url = urlsplit(self.sp_base_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ConfigError(
                f"saml.sp_base_url {self.sp_base_url!r} must be an http(s) URL without "
                "query or fragment"
            )
        object.__setattr__(self, "sp_base_url", self.sp_base_url.rstrip("/"))
        if (self.sp_cert_file is None) != (self.sp_key_file is None):
            raise ConfigError("saml.sp_cert_file and saml.sp_key_file go together")
        for group, roles in self.group_roles.items():
            for role in roles:
                if role not in ROLES:
                    raise ConfigError(
                        f"saml.group_roles.{group}: unknown role {role!r}; roles are "
                        f"{', '.join(ROLES)}"
                    )

    @property
    def sp_entity_id(self) -> str:
        return self.sp_base_url + "/saml/metadata"

    @property
    def acs_url(self) -> str:
        return self.sp_base_url + "/saml/acs"

    @property
    def sls_url(self) -> str:
        return self.sp_base_url + "/saml/sls"


@dataclass(frozen=True)
class BreakGlassConfig:
    enabled: bool = False
    username: str = ""
    password_hash: str = ""

    def __post_init__(self) -> None:
        if self.enabled and not (self.username and self.password_hash):
            raise ConfigError("web.break_glass is enabled but username or password_hash is empty")


#: ``[web]`` keys of :class:`UploadLimits` (same names as its fields).
UPLOAD_KEYS = ("max_upload_bytes", "max_unpacked_file_bytes", "max_unpacked_total_bytes",
               "max_unpacked_files", "max_unpack_ratio")


@dataclass(frozen=True)
class UploadLimits:
    """Caps on a release archive uploaded through the web UI (``[web]`` keys, same names).

    The request body is cut at ``max_upload_bytes`` before anything reads it; the archive's
    declared sizes are checked against the others before a byte of a member is written
    (:class:`bundle.release_archive.ArchiveLimits`), and the bytes written are counted too.
    """

    max_upload_bytes: int = 256 * 1024**2  # bytes of the whole upload
    max_unpacked_file_bytes: int = 256 * 1024**2  # bytes of one unpacked file
    max_unpacked_total_bytes: int = 1024**3  # bytes of all unpacked files together
    max_unpacked_files: int = 10_000  # members of the archive
    max_unpack_ratio: int = 100  # unpacked bytes per uploaded byte

    def __post_init__(self) -> None:
        for name in UPLOAD_KEYS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"web.{name} must be positive, not {getattr(self, name)}")

    @classmethod
    def from_table(cls, web: Mapping[str, Any]) -> UploadLimits:
        """From the ``[web]`` table (missing keys: the defaults).

        Raises:
            ConfigError: a value that is not a positive whole number.
        """
        defaults = cls()
        return cls(**{k: _int(web, k, getattr(defaults, k)) for k in UPLOAD_KEYS})


@dataclass(frozen=True)
class LoginLimits:
    """How many failed password sign-ins (local or break-glass) are allowed per window."""

    window_s: int = DEFAULT_LOGIN_WINDOW_S
    max_failures_per_user: int = DEFAULT_MAX_FAILURES_PER_USER
    max_failures_per_address: int = DEFAULT_MAX_FAILURES_PER_ADDRESS

    def __post_init__(self) -> None:
        for name in ("window_s", "max_failures_per_user", "max_failures_per_address"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"web.login_{name} must be positive, not {getattr(self, name)}")


@dataclass(frozen=True)
class WebConfig:
    saml: SamlConfig | None = None
    secure_cookies: bool = True
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S
    absolute_timeout_s: int = DEFAULT_ABSOLUTE_TIMEOUT_S
    break_glass: BreakGlassConfig = field(default_factory=BreakGlassConfig)
    local_login: bool = False
    login_limits: LoginLimits = field(default_factory=LoginLimits)
    uploads: UploadLimits = field(default_factory=UploadLimits)
    api_token_max_days: int = DEFAULT_API_TOKEN_MAX_DAYS

    def __post_init__(self) -> None:
        if not 1 <= self.api_token_max_days <= MAX_API_TOKEN_DAYS:
            raise ConfigError(
                f"web.api_token_max_days must be 1-{MAX_API_TOKEN_DAYS}, "
                f"not {self.api_token_max_days}")
        if not 0 < self.idle_timeout_s <= self.absolute_timeout_s:
            raise ConfigError(
                f"web.idle_timeout_s ({self.idle_timeout_s}) must be positive and at most "
                f"web.absolute_timeout_s ({self.absolute_timeout_s})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], data_dir: Path) -> WebConfig:
        """Build from the parsed TOML document (its ``web`` and ``saml`` tables).

        Relative file paths are taken relative to ``data_dir``.

        Raises:
            ConfigError: unknown key, wrong type, unknown role, bad URL.
        """
        web = dict(_table(values, "web"))
        bg = _table(web, "break_glass", prefix="web.")
        web.pop("break_glass", None)
        _known("web", web, {"secure_cookies", "idle_timeout_s", "absolute_timeout_s",
                            "local_login", "login_window_s", "login_max_failures_per_user",
                            "login_max_failures_per_address", "api_token_max_days",
                            *UPLOAD_KEYS})
        _known("web.break_glass", bg, {"enabled", "username", "password_hash"})
        saml_values = values.get("saml")
        saml = None if saml_values is None else _saml(_table(values, "saml"), data_dir)
        try:
            return cls(
                saml=saml,
                secure_cookies=_bool("web.secure_cookies", web.get("secure_cookies", True)),
                idle_timeout_s=int(web.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)),
                absolute_timeout_s=int(web.get("absolute_timeout_s", DEFAULT_ABSOLUTE_TIMEOUT_S)),
                break_glass=BreakGlassConfig(
                    enabled=_bool("web.break_glass.enabled", bg.get("enabled", False)),
                    username=str(bg.get("username", "")),
                    password_hash=str(bg.get("password_hash", "")),
                ),
                local_login=_bool("web.local_login", web.get("local_login", False)),
                login_limits=LoginLimits(
                    window_s=_int(web, "login_window_s", DEFAULT_LOGIN_WINDOW_S),
                    max_failures_per_user=_int(web, "login_max_failures_per_user",
                                               DEFAULT_MAX_FAILURES_PER_USER),
                    max_failures_per_address=_int(web, "login_max_failures_per_address",
                                                  DEFAULT_MAX_FAILURES_PER_ADDRESS),
                ),
                uploads=UploadLimits.from_table(web),
                api_token_max_days=_int(web, "api_token_max_days",
                                        DEFAULT_API_TOKEN_MAX_DAYS),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"web settings: {exc}") from exc


def _table(values: Mapping[str, Any], name: str, prefix: str = "") -> Mapping[str, Any]:
    table = values.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix}{name} must be a table")
    return table


def _known(where: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {where} setting(s): {', '.join(unknown)}")


def _int(table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"web.{key} must be a whole number, not {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"web.{key} must be a whole number, not {value!r}") from None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _path(value: Any, data_dir: Path) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (data_dir / path).absolute()


def _saml(values: Mapping[str, Any], data_dir: Path) -> SamlConfig:
    values = dict(values)
    attrs = dict(_table(values, "attributes", prefix="saml."))
    groups = _table(values, "group_roles", prefix="saml.")
    values.pop("attributes", None)
    values.pop("group_roles", None)
    _known(
        "saml",
        values,
        {"sp_base_url", "idp_metadata_file", "want_messages_signed", "sp_cert_file",
         "sp_key_file"},
    )  # fmt: skip
    _known("saml.attributes", attrs, {"username", "email", "display_name", "groups"})
    if not values.get("sp_base_url"):
        raise ConfigError("saml.sp_base_url is required (how browsers reach the hub)")
    metadata = _path(values.get("idp_metadata_file", "idp-metadata.xml"), data_dir)
    assert metadata is not None
    group_roles: dict[str, tuple[str, ...]] = {}
    for group, roles in groups.items():
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ConfigError(f"saml.group_roles.{group} must be a list of role names")
        group_roles[str(group)] = tuple(roles)
    return SamlConfig(
        sp_base_url=str(values["sp_base_url"]),
        idp_metadata_file=metadata,
        want_messages_signed=_bool(
            "saml.want_messages_signed", values.get("want_messages_signed", True)
        ),
        sp_cert_file=_path(values.get("sp_cert_file"), data_dir),
        sp_key_file=_path(values.get("sp_key_file"), data_dir),
        attributes=AttributeNames(**{k: str(v) for k, v in attrs.items()}),
        group_roles=MappingProxyType(group_roles),
    )


def load_web_config(
    hub: HubConfig,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WebConfig:
    """Read ``[web]``/``[saml]`` from the hub's TOML file (same file :mod:`hub.config` reads).

    No file means the defaults: no SAML (nobody can log in but a break-glass admin, which
    is off by default too).

    Raises:
        ConfigError: unreadable or invalid file, invalid settings.
    """
    env = os.environ if environ is None else environ
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path is None:
        candidate = Path(hub.data_dir) / CONFIG_FILE
        path = candidate if candidate.exists() else None
    if path is None:
        return WebConfig()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"hub config {path}: {exc}") from exc
    return WebConfig.from_mapping(doc, Path(hub.data_dir))
