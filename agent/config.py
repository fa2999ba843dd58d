"""The agent's configuration: its identity, its directories, and the site's connections/secrets.

The config is a TOML file in the agent home (``agent.toml``), written by ``tiangong agent init``
and edited by the site's operators. Connections and secrets are defined by the *site*, never by
a bundle: a step names a connection (``connection = "billing-db"``) and the agent resolves it
here. A secret value can come from the config itself, a file, an environment variable, or a
secret sealed to this agent inside the bundle::

    [connections.billing-db]
    type = "postgres"                       # postgres | mysql | kubernetes
    dsn = "postgresql://billing@127.0.0.1:5432/billing"
    password = { env = "BILLING_DB_PASSWORD" }

    [connections.cluster]
    type = "kubernetes"
    kubeconfig = "/etc/tiangong/kubeconfig"
    context = "plant-a"

    [secrets]
    api_token = { file = "/etc/tiangong/api-token" }
    greeting  = "hello"                      # inline (fine for non-secrets in tests/demos)

A value of the form ``{ secret = "name" }`` refers to a named secret, which may be supplied
by a sealed secret in the bundle. This module does not open sealed secrets (the runner does,
just in time) and never logs values.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.executors.base import Connection

__all__ = ["AgentConfig", "ConfigError", "load_config", "resolve_connection", "resolve_secret"]

CONFIG_NAME = "agent.toml"
CONNECTION_TYPES = ("postgres", "mysql", "kubernetes", "http")


class ConfigError(Exception):
    """The agent configuration is invalid or a reference cannot be resolved."""


@dataclass(frozen=True)
class AgentConfig:
    home: Path
    agent_id: str
    environment: str | None
    hub_id: str | None
    labels: Mapping[str, str]
    settle_seconds: float = 5.0
    rescan_seconds: float = 10.0
    polling_observer: bool = False
    bundle_timeout_s: int = 6 * 3600
    step_log_cap_bytes: int = 1024 * 1024
    result_expires_s: int = 365 * 86400
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    secrets: Mapping[str, Any] = field(default_factory=dict)
    hub_url: str | None = None
    allow_insecure_loopback: bool = False  # plain ws:// to a loopback hub (tests only)
    metrics_textfile: Path | None = None  # node-exporter textfile (agent.metrics); None: off
    max_parallel_steps: int = 1  # steps of one bundle run at once ([run], docs/agent.md)

    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def staging(self) -> Path:
        return self.home / "staging"

    @property
    def archive(self) -> Path:
        return self.home / "archive"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def journal_path(self) -> Path:
        return self.home / "journal.sqlite"

    @property
    def root_path(self) -> Path:
        return self.home / "trust" / "root.json"

    @property
    def hub_ca_path(self) -> Path:
        """The hub's live-channel CA, pinned from the enrollment response; the live client
        trusts no other CA."""
        return self.home / "trust" / "hub-ca.pem"


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


#: Most steps of one bundle an agent may run at once ([run] max_parallel_steps).
MAX_PARALLEL_STEPS = 64  # steps


def _parallel(path: Path, value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_PARALLEL_STEPS:
        raise ConfigError(f"{path}: [run] max_parallel_steps = {value!r} must be a whole "
                          f"number from 1 to {MAX_PARALLEL_STEPS} (1: one step at a time)")
    return value


def load_config(home: Path) -> AgentConfig:
    """Read ``home/agent.toml``.

    Raises:
        ConfigError: missing file, TOML syntax error (with line), or an invalid field.
    """
    path = Path(home) / CONFIG_NAME
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} not found: is {home} an agent home? Create one with 'tiangong agent init'"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    agent = _table(doc, "agent")
    inbox = _table(doc, "inbox")
    run = _table(doc, "run")
    metrics = _table(doc, "metrics")
    agent_id = agent.get("id")
    if not isinstance(agent_id, str) or not agent_id:
        raise ConfigError(f"{path}: [agent] id must be a non-empty string")
    connections = _table(doc, "connections")
    for name, spec in connections.items():
        if not isinstance(spec, dict) or spec.get("type") not in CONNECTION_TYPES:
            raise ConfigError(
                f"{path}: connection {name!r}: type must be one of {', '.join(CONNECTION_TYPES)}"
            )
    labels = agent.get("labels", {})
    if not isinstance(labels, dict):
        raise ConfigError(f"{path}: [agent] labels must be a table")
    try:
        return AgentConfig(
            home=Path(home).resolve(),
            agent_id=agent_id,
            environment=agent.get("environment") or None,
            hub_id=agent.get("hub_id") or None,
            labels={str(k): str(v) for k, v in labels.items()},
            settle_seconds=float(inbox.get("settle_seconds", 5.0)),
            rescan_seconds=float(inbox.get("rescan_seconds", 10.0)),
            polling_observer=bool(inbox.get("polling_observer", False)),
            bundle_timeout_s=int(run.get("bundle_timeout_s", 6 * 3600)),
            step_log_cap_bytes=int(run.get("step_log_cap_bytes", 1024 * 1024)),
            result_expires_s=int(run.get("result_expires_s", 365 * 86400)),
            connections=connections,
            secrets=_table(doc, "secrets"),
            hub_url=agent.get("hub_url") or None,
            allow_insecure_loopback=_bool(path, "allow_insecure_loopback",
                                          agent.get("allow_insecure_loopback", False)),
            metrics_textfile=_textfile(path, home, metrics.get("textfile")),
            max_parallel_steps=_parallel(path, run.get("max_parallel_steps", 1)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _textfile(path: Path, home: Path, value: object) -> Path | None:
    """``[metrics] textfile``: a ``*.prom`` path (relative: under the agent home), or None."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.endswith(".prom"):
        raise ConfigError(f"{path}: [metrics] textfile must be a path ending in .prom "
                          "(node-exporter's textfile collector reads only those), "
                          f"not {value!r}")
    return Path(home).resolve() / value


def _bool(path: Path, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: [agent] {name} must be true or false")
    return value


def resolve_secret(
    config: AgentConfig, name: str, sealed: Mapping[str, str] | None = None
) -> str:
    """The value of secret ``name``: a sealed secret from the bundle wins over the config.

    Raises:
        ConfigError: the secret is not defined anywhere, or its source cannot be read
            (the message names the source, never the value).
    """
    if sealed and name in sealed:
        return sealed[name]
    if name not in config.secrets:
        raise ConfigError(
            f"secret {name!r} is not defined in [secrets] of the agent config "
            "and was not sealed into the bundle"
        )
    return _resolve_value(config, config.secrets[name], f"secret {name!r}", sealed)


def _resolve_value(
    config: AgentConfig, spec: Any, what: str, sealed: Mapping[str, str] | None
) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        (source, ref), = spec.items()
        if source == "env":
            value = os.environ.get(str(ref))
            if value is None:
                raise ConfigError(f"{what}: environment variable {ref} is not set")
            return value
        if source == "file":
            p = Path(str(ref))
            if not p.is_absolute():
                p = config.home / p
            try:
                return p.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"{what}: cannot read {p}: {exc.strerror}") from exc
        if source == "secret":
            return resolve_secret(config, str(ref), sealed)
    raise ConfigError(f"{what}: value must be a string or {{env=..}}, {{file=..}}, {{secret=..}}")


def resolve_connection(
    config: AgentConfig, name: str, sealed: Mapping[str, str] | None = None
) -> Connection:
    """The site connection ``name`` with its secrets resolved.

    Raises:
        ConfigError: not defined, or a secret it needs cannot be resolved.
    """
    spec = config.connections.get(name)
    if spec is None:
        known = ", ".join(sorted(config.connections)) or "none"
        raise ConfigError(
            f"connection {name!r} is not defined in the agent config (defined: {known})"
        )
    params: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "type":
            continue
        if key in ("password",):
            params[key] = _resolve_value(config, value, f"connection {name!r} {key}", sealed)
        elif (key in ("kubeconfig", "ca_file") and isinstance(value, str)
              and not Path(value).is_absolute()):
            params[key] = str(config.home / value)
        else:
            params[key] = value
    if spec["type"] == "kubernetes":
        params.setdefault("in_cluster", False)
        params.setdefault("context", None)
    return Connection(name=name, type=str(spec["type"]), params=params)
