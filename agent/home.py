"""The agent home: ``tiangong agent init`` and the files it creates.

Layout (all under the home directory, created 0700)::

    agent.toml            the configuration (site connections and secrets are added here)
    agent.lock            held (flock) by the one process using the home; holds its pid
    journal.sqlite        the journal (agent.journal), 0600
    keys/identity.key     Ed25519 identity: signs results, proves the agent to the hub
    keys/box.key          X25519 key: bundles seal the site's secrets to it
    keys/*.pub            their public halves (the hub also gets them in the enrollment)
    trust/root.json       the hub's root document, pinned at init from a file the operator gives
    trust/hub-ca.pem      the hub's live-channel CA, pinned from the enrollment response
                          (``tiangong agent enroll-response``); the live client trusts only it
    inbox/                bundles arrive here (USB stick, share, live channel)
    staging/              private: bundles being verified
    archive/              bundles that were accepted, after they ran
    quarantine/           bundles that were refused, each with <name>.reason.txt
    outbox/               signed result files (and the enrollment request) for the hub
    logs/ runs/           step logs and per-step working directories

The agent's private keys are stored unencrypted (mode 0600, ``protection: none``) by default
because the daemon must start unattended after a power cut; the home directory's permissions
(and, in a container, its volume) are the protection. ``--passphrase-env VAR`` encrypts them
instead, and the daemon then reads the passphrase from ``VAR`` at start.

This module does not talk to the hub.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from agent.config import CONFIG_NAME, AgentConfig, load_config
from agent.journal import Journal
from signing.envelope import TYPE_ENROLLMENT, sign_envelope
from signing.keyfile import (
    load_private_key,
    save_private_key,
    write_file_atomic,
    write_public_key,
)
from signing.keys import BoxKeyPair, SigningKey
from signing.roots import TrustedRoot
from signing.strictjson import dumps_canonical
from tiangong import __version__

__all__ = ["LOCK_NAME", "MAX_RESPONSE_BYTES", "AgentKeys", "EnrollmentInfo", "HomeError",
           "HomeLock", "import_enrollment_response", "init_home", "load_keys", "lock_home"]

LOCK_NAME = "agent.lock"

MAX_RESPONSE_BYTES = 256 * 1024  # bytes of an enrollment response file
MAX_CA_PEM_BYTES = 16 * 1024  # bytes of the hub's CA certificate inside it

SUBDIRS = ("inbox", "staging", "archive", "quarantine", "outbox", "logs", "runs", "keys",
           "trust")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class HomeError(Exception):
    """The agent home cannot be created or used."""


class HomeLock:
    """The exclusive lock on an agent home (``flock`` on ``agent.lock``), released by
    :meth:`release` or when the process ends, however it ends."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_home(home: Path, purpose: str) -> HomeLock:
    """Take the home's exclusive lock for ``purpose`` (``agent run``, ``agent apply`` ...).

    Raises:
        HomeError: another process holds it (the message names its pid and what it does),
            or the lock file cannot be opened.
    """
    import fcntl

    path = Path(home) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise HomeError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise HomeError(
            f"the agent home {home} is in use by another process ({holder}; lock file "
            f"{path}); stop it before running {purpose}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
    return HomeLock(fd, path)


@dataclass(frozen=True)
class AgentKeys:
    identity: SigningKey
    box: BoxKeyPair


def _passphrase(env: str | None) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise HomeError(f"environment variable {env} (the key passphrase) is not set")
    return value


def load_keys(config: AgentConfig, passphrase_env: str | None = None) -> AgentKeys:
    """Load the agent's identity and box keys.

    Raises:
        HomeError: a key file is missing or cannot be opened.
    """
    from signing.errors import KeyFileError

    env = passphrase_env or os.environ.get("TIANGONG_AGENT_PASSPHRASE_ENV")
    try:
        pw = _passphrase(env) if env else None
        ident = load_private_key(config.keys_dir / "identity.key", passphrase=pw)
        box = load_private_key(config.keys_dir / "box.key", passphrase=pw)
        return AgentKeys(ident.signing_key(), box.box_keypair())
    except (KeyFileError, OSError) as exc:
        raise HomeError(f"cannot load the agent keys from {config.keys_dir}: {exc}") from exc


def init_home(
    home: Path,
    *,
    root_file: Path,
    agent_id: str | None = None,
    environment: str | None = None,
    labels: Mapping[str, str] | None = None,
    hub_url: str | None = None,
    passphrase_env: str | None = None,
    now: int | None = None,
    allow_insecure_loopback: bool = False,
) -> tuple[AgentConfig, Path]:
    """Create an agent home; return its config and the path of the enrollment request.

    Raises:
        HomeError: the home already holds an agent, the root file is not a valid self-signed
            root, or the agent id is malformed.
    """
    from signing.errors import SigningError

    home = Path(home)
    now = int(time.time()) if now is None else now
    if (home / CONFIG_NAME).exists():
        raise HomeError(f"{home} already holds an agent ({CONFIG_NAME} exists); refusing to "
                        "overwrite its keys")
    try:
        root_bytes = Path(root_file).read_bytes()
        root = TrustedRoot.pin(root_bytes, now)
    except OSError as exc:
        raise HomeError(f"cannot read the hub root document {root_file}: {exc}") from exc
    except SigningError as exc:
        raise HomeError(f"{root_file} is not a valid hub root document: {exc}") from exc

    identity = SigningKey.generate()
    box = BoxKeyPair.generate()
    hostname = socket.gethostname()
    if agent_id is None:
        base = re.sub(r"[^a-z0-9.-]+", "-", hostname.lower()).strip("-.") or "agent"
        agent_id = f"{base[:40]}-{identity.key_id[:8]}"
    if not _ID_RE.match(agent_id):
        raise HomeError(f"agent id {agent_id!r} must match {_ID_RE.pattern}")

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    for sub in SUBDIRS:
        (home / sub).mkdir(exist_ok=True, mode=0o700)

    pw = _passphrase(passphrase_env)
    for name, key in (("identity.key", identity), ("box.key", box)):
        info = save_private_key(home / "keys" / name, key, role="agent",
                                label=f"{agent_id} {name[:-4]}", passphrase=pw,
                                insecure_no_passphrase=pw is None)
        write_public_key(home / "keys" / f"{name}.pub", info)
    write_file_atomic(home / "trust" / "root.json", root_bytes, mode=0o644, overwrite=True)

    doc: dict[str, Any] = {
        "agent": {
            "id": agent_id,
            "hub_id": root.document.hub_id,
            "labels": dict(labels or {}),
        },
        "inbox": {"settle_seconds": 5.0, "rescan_seconds": 10.0, "polling_observer": False},
        "run": {"bundle_timeout_s": 6 * 3600, "step_log_cap_bytes": 1024 * 1024},
        "connections": {},
        "secrets": {},
    }
    if environment:
        doc["agent"]["environment"] = environment
    if hub_url:
        doc["agent"]["hub_url"] = hub_url
    if allow_insecure_loopback:
        doc["agent"]["allow_insecure_loopback"] = True
    header = (
        "# Tiangong agent configuration. Site connections and secrets are defined here and\n"
        "# referenced by name from release steps; see docs/agent.md.\n"
    )
    write_file_atomic(home / CONFIG_NAME, (header + tomli_w.dumps(doc)).encode(), mode=0o600)
    config = load_config(home)

    journal = Journal(config.journal_path)
    try:
        # The time floor starts at the root's issue time, or now if later: a fresh agent
        # whose clock is set back still refuses a bundle that expired before either.
        journal.pin_root(root.document.hub_id, root_bytes, root.version,
                         time_floor=max(root.document.issued, now))
    finally:
        journal.close()

    request = {
        "type": "tiangong/enrollment-request",
        "agent_id": agent_id,
        "hostname": hostname,
        "environment": environment,
        "labels": dict(labels or {}),
        "ed25519_public": identity.public.raw.hex(),
        "x25519_public": box.public.raw.hex(),
        "agent_version": __version__,
        "platform": platform.platform(terse=True),
        "hub_id": root.document.hub_id,
        "created": now,
    }
    # Signed by the identity key itself: proof that the requester holds it.
    envelope = sign_envelope(TYPE_ENROLLMENT, dumps_canonical(request), [identity])
    req_path = home / "outbox" / f"enrollment-{agent_id}.json"
    write_file_atomic(req_path, envelope, mode=0o644, overwrite=True)
    return config, req_path


@dataclass(frozen=True)
class EnrollmentInfo:
    """What an imported enrollment response told the agent."""

    agent_id: str
    environment: str
    hub_id: str
    ca_pinned: Path | None
    live_url: str | None


def import_enrollment_response(config: AgentConfig, data: bytes,
                               source: str = "enrollment response") -> EnrollmentInfo:
    """Verify the hub's signed enrollment response (``tiangong hub agents enroll --out``)
    and pin the live channel's CA it carries to ``trust/hub-ca.pem``.

    Verified, then parsed, then acted on: the envelope must be signed by the hub's release
    key(s) as certified by the root pinned at init, and name this agent and this hub. An
    already pinned CA is replaced only by a response that verifies the same way.

    Raises:
        HomeError: the response does not verify, is for another agent or hub, or its CA is
            not a PEM certificate (nothing is written then).
    """
    import ssl

    from signing.envelope import TYPE_ENROLLMENT_RESPONSE, verify_envelope
    from signing.errors import SigningError
    from signing.strictjson import loads_strict

    if len(data) > MAX_RESPONSE_BYTES:
        raise HomeError(f"{source}: larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        root = TrustedRoot.pin(config.root_path.read_bytes())
        role = root.document.role_keys("release", int(time.time()))
        verified = verify_envelope(data, payload_type=TYPE_ENROLLMENT_RESPONSE,
                                   trusted=role.keys, threshold=role.threshold,
                                   max_bytes=MAX_RESPONSE_BYTES)
        doc = loads_strict(verified.payload, MAX_RESPONSE_BYTES)
    except OSError as exc:
        raise HomeError(f"cannot read the pinned root {config.root_path}: {exc}") from exc
    except SigningError as exc:
        raise HomeError(f"{source} does not verify against the hub root pinned in "
                        f"{config.root_path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "tiangong/enrollment-response":
        raise HomeError(f"{source}: not a tiangong/enrollment-response")
    if doc.get("agent_id") != config.agent_id:
        raise HomeError(f"{source} is for agent {str(doc.get('agent_id'))[:64]!r}, "
                        f"this is {config.agent_id!r}")
    if doc.get("hub_id") != config.hub_id:
        raise HomeError(f"{source} is from hub {str(doc.get('hub_id'))[:64]!r}, this agent "
                        f"trusts {config.hub_id!r}")
    ca = doc.get("tls_ca")
    live_url = doc.get("live_url")
    if live_url is not None and not isinstance(live_url, str):
        raise HomeError(f"{source}: live_url must be a string")
    pinned = None
    if ca is not None:
        if not isinstance(ca, str) or len(ca) > MAX_CA_PEM_BYTES:
            raise HomeError(f"{source}: tls_ca must be a PEM certificate of at most "
                            f"{MAX_CA_PEM_BYTES} bytes")
        try:
            ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise HomeError(f"{source}: tls_ca is not a usable CA certificate: {exc}") from exc
        write_file_atomic(config.hub_ca_path, ca.encode("ascii"), mode=0o644, overwrite=True)
        pinned = config.hub_ca_path
    return EnrollmentInfo(str(doc["agent_id"]), str(doc.get("environment", "")),
                          str(doc["hub_id"]), pinned, live_url)
