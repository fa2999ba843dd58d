"""Site secrets: values an admin stores per environment, sealed to each target agent at export.

docs/operations.md ("Site secrets") and docs/security.md ("Site secrets at rest"). The rules:

* **Write-only.** ``set_secret`` stores a value; nothing returns it to a person again:
  :func:`list_secrets` gives names, who set them and when. A new value replaces the old one
  (rotation = a new value + a release that references the secret).
* **Encrypted at rest, key outside the database.** Each value is a NaCl ``SecretBox``
  (XSalsa20-Poly1305) under a 32-byte key in ``<data_dir>/keys/secrets.key`` (mode 0600,
  made on first use), in ``<data_dir>/secrets/<environment>/<name>.json``. The plaintext
  binds the environment and name, so a file copied under another name or environment does
  not open. The database holds only audit events naming the environment and the secret.
* **Sealed at export.** For a bundle of a release whose steps list secret ``name`` in their
  ``secrets``, the export seals the environment's value of ``name`` to each target agent's
  X25519 box key (``signing.sealed``) into the manifest's ``secrets``. A name the environment
  does not store is not sealed: the agent then uses its own ``[secrets]`` (docs/agent.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
import nacl.utils
from sqlalchemy import select
from sqlalchemy.orm import Session

from bundle.manifest import SecretEntry
from hub.db import Agent, Deployment
from hub.errors import NotFoundError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require_ctx
from signing.fileio import fsync_dir
from signing.keys import BoxPublicKey
from signing.sealed import MAX_SEALED_BYTES, SEALED_OVERHEAD_BYTES, seal_secret

__all__ = ["SecretInfo", "delete_secret", "list_secrets", "seal_for_agents", "sealed_names",
           "secret_recipients", "set_secret", "stored_names"]

KEY_FILE = "secrets.key"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: Longest value, in bytes of UTF-8: what still fits one sealed secret with its context.
MAX_VALUE_BYTES = MAX_SEALED_BYTES - SEALED_OVERHEAD_BYTES - 1024  # bytes


@dataclass(frozen=True)
class SecretInfo:
    environment: str
    name: str
    set_by: str
    set_at: str

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "name": self.name, "set_by": self.set_by,
                "set_at": self.set_at}


def _data_dir(ctx: ServiceContext) -> Path:
    if ctx.keys is None or ctx.keys.data_dir is None:
        raise ValidationError("site secrets need the hub's data directory (its keys are not "
                              "loaded in this process)")
    return ctx.keys.data_dir


def _key(data_dir: Path, *, create: bool) -> bytes | None:
    path = data_dir / "keys" / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another hub process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(path.parent)
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise ValidationError(f"{path} is {len(key)} bytes, not a {nacl.secret.SecretBox.KEY_SIZE}"
                              "-byte secrets key; restore it from the hub's backup")
    return key


def _check_name(name: str) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValidationError(f"secret name {name[:80]!r} is not valid: letters, digits, '_' "
                              "and '-', starting with a letter or digit, at most 64 characters "
                              "(as in a step's secrets)")
    return name


def _path(data_dir: Path, environment: str, name: str) -> Path:
    return data_dir / "secrets" / environment / f"{name}.json"


def set_secret(ctx: ServiceContext, environment: str, name: str, value: str) -> SecretInfo:
    """Store (or replace) secret ``name`` of ``environment``; admins only; audited without
    the value.

    Raises:
        PermissionDeniedError, NotFoundError (environment), ValidationError (name, value).
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    _check_name(name)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"secret {name!r}: the value must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise ValidationError(f"secret {name!r} is {size} bytes; the limit is "
                              f"{MAX_VALUE_BYTES} bytes")
    data_dir = _data_dir(ctx)
    key = _key(data_dir, create=True)
    assert key is not None
    plaintext = json.dumps({"environment": env.name, "name": name, "value": value},
                           sort_keys=True).encode("utf-8")
    box = nacl.secret.SecretBox(key).encrypt(plaintext)
    info = SecretInfo(env.name, name, ctx.actor_name, ctx.now().isoformat())
    doc = {**info.to_json(), "box": base64.b64encode(bytes(box)).decode("ascii")}
    path = _path(data_dir, env.name, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    audit.record(ctx, "secret.set", "environment", env.name, {"secret": name})
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return info


def delete_secret(ctx: ServiceContext, environment: str, name: str) -> SecretInfo:
    """Forget secret ``name`` of ``environment`` (admins; audited).

    Raises:
        PermissionDeniedError, NotFoundError.
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    path = _path(_data_dir(ctx), env.name, _check_name(name))
    info = _info(path)
    if info is None:
        raise NotFoundError(f"environment {env.name} stores no secret {name!r}")
    audit.record(ctx, "secret.deleted", "environment", env.name, {"secret": name})
    path.unlink()
    fsync_dir(path.parent)
    return info


def _info(path: Path) -> SecretInfo | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return SecretInfo(doc["environment"], doc["name"], doc["set_by"], doc["set_at"])


def list_secrets(ctx: ServiceContext, environment: str) -> list[SecretInfo]:
    """Names of the secrets ``environment`` stores, with who set them and when — never the
    values. Any signed-in user may list them (names are in releases anyway)."""
    env = get_environment(ctx.session, environment)
    folder = _data_dir(ctx) / "secrets" / env.name
    if not folder.is_dir():
        return []
    infos = [_info(p) for p in sorted(folder.glob("*.json"))]
    return [i for i in infos if i is not None]


def sealed_names(ctx: ServiceContext, environment: str, steps: Iterable[Any]) -> list[str]:
    """The secrets an export seals: those the release's steps list and the environment
    stores, sorted ([] in a process without the data directory)."""
    if ctx.keys is None or ctx.keys.data_dir is None:
        return []
    wanted = {str(n) for step in steps if isinstance(step, dict)
              for n in step.get("secrets", ()) or ()}
    return stored_names(ctx, environment, wanted)


def secret_recipients(session: Session, dep: Deployment) -> list[tuple[str, str]]:
    """``(agent_id, x25519 public hex)`` of the agents a deployment's bundle is for: its
    agent, or every enrolled agent of its environment."""
    if dep.agent is not None:
        return [(dep.agent.agent_id, dep.agent.x25519_public)]
    rows = session.scalars(select(Agent).where(Agent.environment_id == dep.environment_id,
                                               Agent.status == "enrolled")
                           .order_by(Agent.agent_id))
    return [(a.agent_id, a.x25519_public) for a in rows]


def stored_names(ctx: ServiceContext, environment: str, wanted: Iterable[str]) -> list[str]:
    """Which of ``wanted`` the environment stores, sorted."""
    data_dir = _data_dir(ctx)
    return sorted({n for n in wanted if _NAME_RE.fullmatch(n)
                   and _path(data_dir, environment, n).is_file()})


def _open(data_dir: Path, environment: str, name: str) -> str:
    path = _path(data_dir, environment, name)
    key = _key(data_dir, create=False)
    if key is None:
        raise ValidationError(f"{data_dir / 'keys' / KEY_FILE} is missing; secret {name!r} of "
                              f"{environment} cannot be opened (restore the key or set the "
                              "secret again)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        plain = nacl.secret.SecretBox(key).decrypt(base64.b64decode(doc["box"]))
        inner = json.loads(plain)
    except FileNotFoundError:
        raise NotFoundError(f"environment {environment} no longer stores secret "
                            f"{name!r}; set it again") from None
    except (nacl.exceptions.CryptoError, ValueError, KeyError):
        inner = None
    if not isinstance(inner, dict) or (inner.get("environment"), inner.get("name")) != (
            environment, name):
        raise ValidationError(f"{path} does not open with the hub's secrets key as secret "
                              f"{name!r} of {environment}; set the secret again")
    value: str = inner["value"]
    return value


def seal_for_agents(ctx: ServiceContext, environment: str, names: Sequence[str],
                    agents: Sequence[tuple[str, str]], bundle_id: str) -> tuple[SecretEntry, ...]:
    """Seal each of ``names`` (stored by ``environment``) to each ``(agent_id, x25519 hex)``.

    Raises:
        NotFoundError, ValidationError: a secret no longer opens; nothing is sealed.
    """
    data_dir = _data_dir(ctx)
    entries: list[SecretEntry] = []
    for name in names:
        value = _open(data_dir, environment, name)
        for agent_id, box_hex in agents:
            sealed = seal_secret(value, bundle_id=bundle_id, agent_id=agent_id, name=name,
                                 recipient=BoxPublicKey.from_hex(box_hex))
            entries.append(SecretEntry(name, agent_id, sealed))
    return tuple(entries)
