"""The hub's audit MAC key: authenticates every audit event with a secret the database does
not hold (threat 16: whoever can write the database must not be able to extend the log).

The key is ``<data_dir>/keys/audit-mac.key`` (mode 0600), beside the release and audit keys::

    {"type": "tiangong/audit-mac-key", "version": 1, "key": "<64 hex>", "from_seq": 1}

``from_seq`` is the first event that must carry a MAC (1 for a hub initialised with the
key; the next event for an older hub given one by ``tiangong hub audit mac-key``). It lives
in the key file, not the database, so clearing the database's MACs cannot make events
"older than the key".

Each event's MAC is HMAC-SHA256 over ``"tiangong-audit-event-v1\\0<seq>:<hash>"`` — the
event hash already covers every field and the previous hash. The hub writes it with the
event (:func:`hub.services.audit.append_event`), ``hub audit verify`` checks every one,
and a checkpoint is signed only over events whose MACs verify. An exported log carries no
MACs: offline verification relies on the signed checkpoints, as before.

This module does no database work; :func:`attach` hands the key to every connection of an
engine, where the audit service finds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from hub.errors import ConfigError

__all__ = ["CONNECTION_KEY", "MAC_KEY_FILE", "AuditMacKey", "attach", "create", "load"]

MAC_KEY_FILE = "audit-mac.key"  # in <data_dir>/keys/
CONNECTION_KEY = "tiangong.audit_mac"  # where a connection's info holds the key
MAX_KEY_FILE_BYTES = 4096  # bytes
_TYPE = "tiangong/audit-mac-key"
_DOMAIN = b"tiangong-audit-event-v1\0"
_BLOCK = 64  # bytes: SHA-256's block, HMAC's pad length


@dataclass(frozen=True)
class AuditMacKey:
    """The secret and the first event sequence it must cover."""

    key: bytes
    from_seq: int = 1

    def __repr__(self) -> str:  # never print the secret
        return f"AuditMacKey(from_seq={self.from_seq})"

    def mac(self, seq: int, event_hash: str) -> str:
        """Hex HMAC-SHA256 of one event (its sequence and hash)."""
        msg = _DOMAIN + f"{seq}:{event_hash}".encode("ascii")
        return hmac.digest(self.key, msg, "sha256").hex()  # one C call; same bytes as hmac.new

    def check(self, seq: int, event_hash: str, mac: str | None) -> str | None:
        """None when the event's MAC is as it must be, else what is wrong (for a report)."""
        if seq < self.from_seq:
            return None
        if mac is None:
            return (
                f"event {seq} carries no MAC: it was written without the hub's audit key "
                "(directly into the database?)"
            )
        try:
            same = hmac.compare_digest(mac, self.mac(seq, event_hash))
        except (TypeError, UnicodeEncodeError):  # a hash or MAC that is not ASCII text
            same = False
        if not same:
            return f"event {seq}'s MAC does not match: it was written or changed without the "\
                "hub's audit key"
        return None


    def _pads(self) -> tuple[Any, Any]:
        """SHA-256 states after the HMAC key's inner pad (and the domain) and outer pad."""
        key = self.key if len(self.key) <= _BLOCK else hashlib.sha256(self.key).digest()
        key = key.ljust(_BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        inner.update(_DOMAIN)
        return inner, hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def check_rows(self, rows: Sequence[Sequence[Any]]) -> Iterator[tuple[int, str]]:
        """:meth:`check` for stored rows ``(seq, …, hash at index 8, mac at index 9)``
        (:data:`hub.audit_chain.EventRow`): yields ``(seq, what is wrong)`` per bad MAC.
        The common case costs one HMAC and one comparison per row."""
        # HMAC (RFC 2104) with the key's padded inner and outer SHA-256 states computed
        # once, the domain already absorbed: per row two state copies and two updates, the
        # same MAC as :meth:`mac` (a test holds them equal) at well under half its cost.
        inner, outer = self._pads()
        from_seq, same = self.from_seq, hmac.compare_digest
        for row in rows:
            seq, event_hash, mac = row[0], row[8], row[9]
            if seq < from_seq:
                continue
            try:
                ih = inner.copy()
                ih.update(f"{seq}:{event_hash}".encode("ascii"))
                oh = outer.copy()
                oh.update(ih.digest())
                if mac is not None and same(mac, oh.hexdigest()):
                    continue
            except (TypeError, UnicodeEncodeError):
                pass
            wrong = self.check(seq, event_hash, mac)
            if wrong is not None:
                yield seq, wrong


def load(keys_dir: Path) -> AuditMacKey | None:
    """The key in ``keys_dir`` (None when the file does not exist).

    Raises:
        ConfigError: the file exists but cannot be read or is not an audit MAC key.
    """
    path = keys_dir / MAC_KEY_FILE
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        doc: Any = json.loads(data)
        if not isinstance(doc, dict) or doc.get("type") != _TYPE or doc.get("version") != 1:
            raise ValueError("not a tiangong audit MAC key")
        key = bytes.fromhex(doc["key"])
        from_seq = doc["from_seq"]
        if len(key) != 32 or not isinstance(from_seq, int) or from_seq < 1:
            raise ValueError("key must be 32 bytes and from_seq a positive integer")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid audit MAC key: {exc}") from exc
    return AuditMacKey(key, from_seq)


def create(keys_dir: Path, from_seq: int = 1) -> AuditMacKey:
    """Write a new key file (0600); refuses to replace one.

    Raises:
        ConfigError: the file exists or cannot be written.
    """
    path = keys_dir / MAC_KEY_FILE
    mac = AuditMacKey(secrets.token_bytes(32), from_seq)
    doc = {"type": _TYPE, "version": 1, "key": mac.key.hex(), "from_seq": from_seq}
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(json.dumps(doc) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already: the hub has an audit MAC key") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    return mac


def attach(engine: Engine, mac: AuditMacKey | None) -> None:
    """Give every connection of ``engine`` the key (``connection.info``), where
    :func:`hub.services.audit.append_event` finds it. ``None`` does nothing."""
    if mac is None:
        return

    def on_checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        record.info[CONNECTION_KEY] = mac

    event.listen(engine, "checkout", on_checkout)
