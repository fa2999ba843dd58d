"""The web UI's settings: the ``[web]`` and ``[saml]`` tables of the hub's TOML file.

The hub's own settings live in the ``[hub]`` table (:mod:`hub.config`); the web UI reads the
same file (``<data_dir>/hub.toml`` or ``TIANGONG_HUB_CONFIG``)::

    [web]
    secure_cookies = true            # Secure flag on cookies (false only for plain-http loopback)
    idle_timeout_s = 1800            # seconds without a request before a session ends
    absolute_timeout_s = 43200       # seconds after login a session ends regardless

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
    "SamlConfig",
    "WebConfig",
    "load_web_config",
]

DEFAULT_IDLE_TIMEOUT_S = 30 * 60  # seconds
DEFAULT_ABSOLUTE_TIMEOUT_S = 12 * 3600  # seconds


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


@dataclass(frozen=True)
class WebConfig:
    saml: SamlConfig | None = None
    secure_cookies: bool = True
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S
    absolute_timeout_s: int = DEFAULT_ABSOLUTE_TIMEOUT_S
    break_glass: BreakGlassConfig = field(default_factory=BreakGlassConfig)

    def __post_init__(self) -> None:
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
        _known("web", web, {"secure_cookies", "idle_timeout_s", "absolute_timeout_s"})
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
