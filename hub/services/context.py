"""What every service call receives: session, clock, acting user, keys and paths."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from hub.audit_mac import AuditMacKey
from hub.db import User
from signing.keys import SigningKey
from signing.roots import RootDocument, TrustedRoot

__all__ = ["Clock", "HubKeys", "ServiceContext", "utc_now"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (tests inject their own)."""
    return datetime.now(UTC)


@functools.lru_cache(maxsize=8)
def _pinned(envelope: bytes) -> TrustedRoot:
    """:meth:`TrustedRoot.pin` of ``envelope``, verified once per process (an export asks
    for the root several times a batch; the same bytes verify the same way; an immutable
    result)."""
    return TrustedRoot.pin(envelope)


@dataclass(frozen=True)
class HubKeys:
    """The hub's trust material: its signed root document and its online keys (if loaded)."""

    root_envelope: bytes
    audit_key: SigningKey | None = None
    release_key: SigningKey | None = None
    tls_ca_pem: bytes | None = None  # the live channel's private CA; agents pin it
    audit_mac: AuditMacKey | None = None  # MACs every audit event (hub.audit_mac)
    approval_key: SigningKey | None = None  # signs hub-attested approvals (role approval)
    #: root envelopes of versions 2..current, carried in every release bundle's roots.json
    root_updates: tuple[bytes, ...] = ()
    #: the hub's data directory, where site secrets are kept (hub.services.site_secrets)
    data_dir: Path | None = None

    @property
    def trusted_root(self) -> TrustedRoot:
        return _pinned(self.root_envelope)

    @property
    def root(self) -> RootDocument:
        return self.trusted_root.document

    @property
    def hub_id(self) -> str:
        return self.root.hub_id


@dataclass(frozen=True)
class ServiceContext:
    """Injected into every service call.

    ``actor`` is the acting user (None only for the hub itself, e.g. bootstrap); ``keys``
    and ``releases_dir`` are needed only by services that sign or store files.

    ``system`` names a hub process acting on its own, without a person behind the call
    (``"live"``: the live server exporting deployments an operator already queued and
    importing results its authenticated agents upload). It is only ever set by that
    process's own code, never from a request; it allows exactly the actions listed for it
    in :data:`hub.services.users.SYSTEM_ACTIONS` (checked by
    :func:`hub.services.users.require_ctx`) and is audited as ``system:<name>``.

    ``via`` says how the actor reached the hub when it is not the web UI: ``"local-admin"``
    (``tiangong hub`` on the hub's machine, with the data directory; nobody checked who
    typed the name) or ``"api-token:<prefix>"`` (the HTTP API with a personal token).
    :func:`hub.services.audit.record` writes it into every event's details.
    """

    session: Session
    clock: Clock
    actor: User | None
    keys: HubKeys | None = None
    releases_dir: Path | None = None
    system: str | None = None
    via: str | None = None

    @property
    def actor_name(self) -> str:
        if self.actor is not None:
            return self.actor.username
        return f"system:{self.system}" if self.system is not None else "system"

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the injected clock must return aware datetimes")
        return now

    def as_user(self, user: User | None) -> ServiceContext:
        return ServiceContext(self.session, self.clock, user, self.keys, self.releases_dir,
                              via=self.via)
