"""The hub's trust material on disk: created by ``hub init``, loaded by the CLI and the app.

Layout of the data directory::

    root.json                 the signed root document (agents and auditors pin it)
    keys/release.key          online release signing key  (0600, no passphrase: unattended)
    keys/audit.key            online audit checkpoint key (0600, no passphrase: unattended)
    keys/audit-mac.key        the audit MAC key: every audit event is MACed with it, and
                              the database does not hold it (hub.audit_mac)
    keys/approval.key         online approval key: signs hub-attested approvals, once a
                              root lists it in role ``approval`` (``hub keys approval-key``
                              makes it on a hub initialised before it existed)
    roots/root-v<N>.json      every root version the hub has had (``hub keys install-root``);
                              versions after 1 travel in each release bundle's roots.json
    keys/*.pub                their public key files
    root-key.OFFLINE.json     the root key — move it OFF this machine after init
    tls/                      the live channel's private CA and server certificate (hub.tls)

The root key signs only root documents (initial, rotations); the hub runs without it. It is
written with ``signing.keyfile``: passphrase-encrypted when a passphrase is available,
otherwise only when the operator explicitly says ``--insecure-no-passphrase``. The online
keys are protected by the data directory's permissions (like an agent key in a container
volume) — anyone who can read the data directory can sign as the hub.

This module does not rotate roots (``tiangong keys root rotate`` does).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from hub import audit_mac
from hub.errors import ConfigError
from hub.services.context import HubKeys
from signing.errors import SigningError
from signing.keyfile import (
    KeyInfo,
    load_private_key,
    save_private_key,
    write_file_atomic,
    write_public_key,
)
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, TrustedRoot, sign_root

log = logging.getLogger("tiangong.hub")

__all__ = [
    "APPROVAL_KEY_FILE",
    "ONLINE_KEY_VALIDITY_S",
    "ROOTS_DIR",
    "ROOT_KEY_FILE",
    "ROOT_VALIDITY_S",
    "KeysReloader",
    "TrustFiles",
    "create_approval_key",
    "create_trust",
    "load_hub_keys",
    "load_root_updates",
    "root_history_path",
]

ROOT_VALIDITY_S = 5 * 365 * 86400  # seconds a root document stays valid
ONLINE_KEY_VALIDITY_S = 365 * 86400  # seconds the release and audit keys are certified for
ROOT_KEY_FILE = "root-key.OFFLINE.json"
APPROVAL_KEY_FILE = "approval.key"
ROOTS_DIR = "roots"
MAX_CA_PEM_BYTES = 16 * 1024  # bytes of the TLS CA certificate file


@dataclass(frozen=True)
class TrustFiles:
    hub_id: str
    root_json: Path
    root_key: Path
    release_key: Path
    audit_key: Path
    root_key_encrypted: bool


def create_trust(
    data_dir: Path,
    now: int,
    *,
    hub_id: str | None = None,
    root_key_path: Path | None = None,
    root_passphrase: str | None = None,
    insecure_no_passphrase: bool = False,
) -> TrustFiles:
    """Generate the root, release and audit keys and the signed root document.

    Raises:
        ConfigError: files exist already, or no passphrase and no explicit insecure choice.
    """
    if root_passphrase is None and not insecure_no_passphrase:
        raise ConfigError(
            "the root key needs a passphrase (--passphrase-file or TIANGONG_KEY_PASSPHRASE), "
            "or say --insecure-no-passphrase explicitly"
        )
    hub_id = hub_id or f"hub-{uuid.uuid4().hex[:12]}"
    keys_dir = data_dir / "keys"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_json = data_dir / "root.json"
    root_key_file = root_key_path or data_dir / ROOT_KEY_FILE
    if root_json.exists():
        raise ConfigError(f"{root_json} exists: this data directory is already initialised")
    root, release, audit = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    doc = RootDocument(
        hub_id=hub_id,
        version=1,
        issued=now,
        expires=now + ROOT_VALIDITY_S,
        keys={
            root.key_id: KeyEntry(root.public),
            release.key_id: KeyEntry(release.public, now + ONLINE_KEY_VALIDITY_S),
            audit.key_id: KeyEntry(audit.public, now + ONLINE_KEY_VALIDITY_S),
        },
        roles={
            "root": ((root.key_id,), 1),
            "release": ((release.key_id,), 1),
            "audit": ((audit.key_id,), 1),
        },
    )
    try:
        save_private_key(
            root_key_file,
            root,
            role="root",
            label=f"{hub_id} root (keep offline)",
            passphrase=root_passphrase,
            insecure_no_passphrase=root_passphrase is None,
        )
        for name, key in (("release", release), ("audit", audit)):
            info = save_private_key(
                keys_dir / f"{name}.key",
                key,
                role=name,
                label=f"{hub_id} {name}",
                passphrase=None,
                insecure_no_passphrase=True,
            )
            write_public_key(keys_dir / f"{name}.pub", info)
        audit_mac.create(keys_dir, from_seq=1)
        create_approval_key(data_dir, hub_id)
        write_file_atomic(root_json, sign_root(doc, [root]), mode=0o644)
    except (SigningError, OSError) as exc:
        raise ConfigError(f"cannot write the hub's keys in {data_dir}: {exc}") from exc
    return TrustFiles(
        hub_id,
        root_json,
        root_key_file,
        keys_dir / "release.key",
        keys_dir / "audit.key",
        root_passphrase is not None,
    )


def create_approval_key(data_dir: Path, hub_id: str) -> KeyInfo:
    """Write ``keys/approval.key`` (no passphrase: the hub signs attestations unattended)
    and ``keys/approval.pub``; the public file is what the root ceremony lists in role
    ``approval`` (docs/keys-and-trust.md).

    Raises:
        ConfigError: the key exists already, or cannot be written.
    """
    keys_dir = data_dir / "keys"
    path = keys_dir / APPROVAL_KEY_FILE
    if path.exists():
        raise ConfigError(f"{path} exists already; the hub has its approval key")
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = save_private_key(
            path,
            SigningKey.generate(),
            role="approval",
            label=f"{hub_id} approval",
            passphrase=None,
            insecure_no_passphrase=True,
        )
        write_public_key(keys_dir / "approval.pub", info, force=True)
    except (SigningError, OSError) as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    return info


def root_history_path(data_dir: Path, version: int) -> Path:
    """Where root version ``version`` is kept (``roots/root-v<N>.json``)."""
    return data_dir / ROOTS_DIR / f"root-v{version}.json"


def load_root_updates(data_dir: Path, current: bytes) -> tuple[bytes, ...]:
    """The root envelopes of versions 2..N (N the current root, ``current``) that release
    bundles carry so an agent holding any older root can catch up (bundle-format §5.2).

    Versions are read from ``roots/``; the run stops at the first missing version going
    down (a hub rotated by hand before ``install-root`` existed carries what it has).

    Raises:
        ConfigError: a history file cannot be read.
    """
    version = TrustedRoot.pin(current).version
    out = [current] if version > 1 else []
    for v in range(version - 1, 1, -1):
        path = root_history_path(data_dir, v)
        try:
            out.append(path.read_bytes())
        except FileNotFoundError:
            break
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
    return tuple(reversed(out))


def load_hub_keys(data_dir: Path, *, with_private: bool = True) -> HubKeys:
    """Load root.json (and the online keys when present and ``with_private``).

    Raises:
        ConfigError: root.json missing or not a valid self-signed root; a key file bad.
    """
    root_json = data_dir / "root.json"
    try:
        envelope = root_json.read_bytes()
        TrustedRoot.pin(envelope)
    except OSError as exc:
        raise ConfigError(f"{root_json}: {exc.strerror}; run `tiangong hub init`") from exc
    except SigningError as exc:
        raise ConfigError(f"{root_json} is not a valid root document: {exc}") from exc
    loaded: dict[str, SigningKey | None] = {"audit": None, "release": None, "approval": None}
    if with_private:
        for name in loaded:
            path = data_dir / "keys" / f"{name}.key"
            if not path.exists():
                continue
            try:
                loaded[name] = load_private_key(path, passphrase=None).signing_key()
            except SigningError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
    mac = audit_mac.load(data_dir / "keys") if with_private else None
    return HubKeys(
        envelope,
        loaded["audit"],
        loaded["release"],
        _tls_ca(data_dir),
        mac,
        approval_key=loaded["approval"],
        root_updates=load_root_updates(data_dir, envelope),
        data_dir=data_dir if with_private else None,
    )


class KeysReloader:
    """The hub's keys for a long-running process (``hub serve``'s workers, the live server),
    loaded again when ``root.json`` changes — ``tiangong hub keys install-root`` replaces it
    by a rename — so a new root reaches the next export without a restart.

    :meth:`current` costs one ``stat`` of root.json per call; it reloads when the file's
    inode, size or modification time differ from the loaded one. A reload that fails (a
    file being replaced by hand, say) keeps the keys loaded before and is logged; the next
    call tries again.
    """

    def __init__(self, data_dir: Path, *, with_private: bool = True) -> None:
        self.data_dir = data_dir
        self._with_private = with_private
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._keys = load_hub_keys(data_dir, with_private=with_private)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = (self.data_dir / "root.json").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> HubKeys:
        """The keys, reloaded first if root.json changed since they were loaded."""
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return self._keys
        with self._lock:
            if stamp != self._stamp:
                try:
                    keys = load_hub_keys(self.data_dir, with_private=self._with_private)
                except ConfigError as exc:
                    log.error("keeping the hub's keys loaded before: %s", exc)
                    return self._keys
                old = TrustedRoot.pin(self._keys.root_envelope).version
                new = TrustedRoot.pin(keys.root_envelope).version
                if new != old:
                    log.warning("root.json changed: root version %d is current now "
                                "(was %d)", new, old)
                self._keys, self._stamp = keys, stamp
        return self._keys


def _tls_ca(data_dir: Path) -> bytes | None:
    """The live channel's CA certificate (PEM) if ``hub init`` made one; enrollment
    responses carry it so agents can pin it.

    Raises:
        ConfigError: the file exists but cannot be read or holds no certificate.
    """
    path = data_dir / "tls" / "ca.crt"
    try:
        with path.open("rb") as fh:
            pem = fh.read(MAX_CA_PEM_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    if len(pem) > MAX_CA_PEM_BYTES or b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(f"{path} is not a PEM certificate of at most {MAX_CA_PEM_BYTES} bytes")
    return pem
