"""Agents: enrollment from an enrollment request, listing, revocation.

The request's transport (file, one-time token, signed envelope) is the agent issue's
business; :func:`enroll_agent` takes the already-parsed fields
(:class:`EnrollmentRequest`, buildable from a JSON object with :meth:`from_json`) and
returns the data of the enrollment response the agent imports: its agent id, environment,
the hub id and the hub's signed root document. Writing and signing that response file is
left to the export side.

Enrollment also creates the agent's bundle sequence counter (target ``agent:<id>``).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Agent, SequenceCounter
from hub.errors import ConflictError, InvalidStateError, NotFoundError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require
from signing.envelope import (
    TYPE_ENROLLMENT,
    TYPE_ENROLLMENT_RESPONSE,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from signing.errors import SigningError
from signing.keys import PublicKey, SigningKey
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "EnrollmentRequest",
    "EnrollmentResponse",
    "agent_target",
    "enroll_agent",
    "get_agent",
    "list_agents",
    "revoke_agent",
]

_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Ids that name pages of the web UI (``/agents/enroll``), so no agent may take them.
RESERVED_AGENT_IDS = frozenset({"enroll"})
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_LABELS = 32  # labels per agent
MAX_LABEL_CHARS = 64  # characters per label name or value
MAX_REQUEST_BYTES = 64 * 1024  # bytes of an enrollment request file
_REQUEST_FIELDS = {
    "agent_id",
    "hostname",
    "labels",
    "ed25519_public",
    "x25519_public",
    "agent_version",
    # written by `tiangong agent init` (agent/home.py) inside its signed request:
    "type",
    "environment",
    "platform",
    "hub_id",
    "created",
}


def agent_target(agent_id: str) -> str:
    """The sequence-counter target of an agent."""
    return f"agent:{agent_id}"


@dataclass(frozen=True)
class EnrollmentRequest:
    """What an agent asks to be enrolled with (keys as 64 lowercase hex characters).

    ``labels`` are (name, value) pairs; ``environment`` and ``hub_id`` are what the agent
    asked for, checked by :func:`enroll_agent` when present.
    """

    hostname: str
    ed25519_public: str
    x25519_public: str
    agent_id: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    agent_version: str = ""
    environment: str | None = None
    hub_id: str | None = None

    def __post_init__(self) -> None:
        if self.agent_id is not None and not _AGENT_ID.match(self.agent_id):
            raise ValidationError(
                f"agent id {self.agent_id!r} must be 1-64 lowercase letters, digits, . _ -"
            )
        if self.agent_id in RESERVED_AGENT_IDS:
            raise ValidationError(
                f"agent id {self.agent_id!r} is reserved by the hub; run `tiangong agent "
                "init` again with another --id"
            )
        if not _HOST.match(self.hostname):
            raise ValidationError(f"hostname {self.hostname[:80]!r} is not a valid host name")
        for name in ("ed25519_public", "x25519_public"):
            if not _HEX64.match(getattr(self, name)):
                raise ValidationError(f"{name} must be 64 lowercase hex characters")
        if len(self.labels) > MAX_LABELS or any(
            not (isinstance(k, str) and isinstance(v, str))
            or not 0 < len(k) <= MAX_LABEL_CHARS
            or len(v) > MAX_LABEL_CHARS
            for k, v in self.labels
        ):
            raise ValidationError(
                f"labels: at most {MAX_LABELS}, names of 1-{MAX_LABEL_CHARS} characters, "
                f"values of at most {MAX_LABEL_CHARS}"
            )
        if len(self.agent_version) > 64:
            raise ValidationError("agent_version is longer than 64 characters")
        try:
            PublicKey.from_hex(self.ed25519_public)
        except ValueError as exc:
            raise ValidationError(f"ed25519_public: {exc}") from exc

    @classmethod
    def from_json(cls, doc: object) -> EnrollmentRequest:
        """Build from a parsed JSON object (unknown fields refused). ``labels`` may be an
        object of strings or a list of names.

        Raises:
            ValidationError.
        """
        if not isinstance(doc, dict):
            raise ValidationError("an enrollment request must be a JSON object")
        unknown = set(doc) - _REQUEST_FIELDS
        if unknown:
            raise ValidationError(f"enrollment request: unknown field(s) {sorted(unknown)}")
        if doc.get("type", "tiangong/enrollment-request") != "tiangong/enrollment-request":
            raise ValidationError("enrollment request: type is not tiangong/enrollment-request")
        for name in ("hostname", "ed25519_public", "x25519_public"):
            if not isinstance(doc.get(name), str):
                raise ValidationError(f"enrollment request: {name} must be a string")
        raw_labels = doc.get("labels", {})
        labels: list[tuple[str, str]]
        if isinstance(raw_labels, dict):
            labels = sorted((k, v) for k, v in raw_labels.items())
        elif isinstance(raw_labels, list):
            labels = [(k, "") for k in raw_labels]
        else:
            raise ValidationError("enrollment request: labels must be an object or a list")
        for name in ("agent_id", "environment", "hub_id"):
            value = doc.get(name)
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"enrollment request: {name} must be a string")
        version = doc.get("agent_version", "")
        if not isinstance(version, str):
            raise ValidationError("enrollment request: agent_version must be a string")
        return cls(
            hostname=doc["hostname"],
            ed25519_public=doc["ed25519_public"],
            x25519_public=doc["x25519_public"],
            agent_id=doc.get("agent_id"),
            labels=tuple(labels),
            agent_version=version,
            environment=doc.get("environment"),
            hub_id=doc.get("hub_id"),
        )

    @classmethod
    def from_envelope(cls, data: bytes) -> EnrollmentRequest:
        """Verify a signed enrollment request (``tiangong agent init`` writes one): it must
        be signed by the Ed25519 key it asks to enroll (proof of possession).

        Raises:
            ValidationError: not an enrollment envelope, bad signature, bad fields.
        """
        try:
            env = parse_envelope(data, MAX_REQUEST_BYTES)
            if env.payload_type != TYPE_ENROLLMENT:
                raise ValidationError(
                    f"payload type is {env.payload_type[:80]!r}, not an enrollment request"
                )
            claimed = loads_strict(env.payload, MAX_REQUEST_BYTES)
            if not isinstance(claimed, dict) or not isinstance(claimed.get("ed25519_public"), str):
                raise ValidationError("enrollment request has no ed25519_public")
            key = PublicKey.from_hex(claimed["ed25519_public"])
            verified = verify_envelope(
                data,
                payload_type=TYPE_ENROLLMENT,
                trusted=[key],
                threshold=1,
                max_bytes=MAX_REQUEST_BYTES,
            )
            doc = loads_strict(verified.payload, MAX_REQUEST_BYTES)
        except (SigningError, ValueError) as exc:
            raise ValidationError(f"enrollment request does not verify: {exc}") from exc
        return cls.from_json(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> EnrollmentRequest:
        """A signed request envelope, or (for tests and manual enrollment) a plain JSON
        object.

        Raises:
            ValidationError.
        """
        try:
            doc = loads_strict(data, MAX_REQUEST_BYTES)
        except SigningError as exc:
            raise ValidationError(f"enrollment request is not strict JSON: {exc}") from exc
        if isinstance(doc, dict) and "payloadType" in doc:
            return cls.from_envelope(data)
        return cls.from_json(doc)


@dataclass(frozen=True)
class EnrollmentResponse:
    """What the agent gets back: data, and an envelope signed with the release key."""

    agent_id: str
    environment: str
    hub_id: str
    root_envelope: bytes | None
    enrolled_at: int  # Unix seconds
    extra: dict[str, Any] = field(default_factory=dict)
    tls_ca_pem: bytes | None = None  # the live channel's CA (PEM): the agent pins it
    live_url: str | None = None  # wss://…/live, when the hub knows its public address

    def to_json(self) -> dict[str, Any]:
        """The signed payload. ``tls_ca`` (PEM text) and ``live_url`` appear only when
        known; the agent's ``tiangong agent enroll-response`` pins the CA."""
        doc: dict[str, Any] = {
            "type": "tiangong/enrollment-response",
            "agent_id": self.agent_id,
            "environment": self.environment,
            "hub_id": self.hub_id,
            "root": base64.b64encode(self.root_envelope).decode("ascii")
            if self.root_envelope is not None
            else None,
            "enrolled_at": self.enrolled_at,
        }
        if self.tls_ca_pem is not None:
            doc["tls_ca"] = self.tls_ca_pem.decode("ascii")
        if self.live_url is not None:
            doc["live_url"] = self.live_url
        return doc

    def to_envelope(self, release_key: SigningKey) -> bytes:
        """The response signed by the hub's release key (payload type
        ``TYPE_ENROLLMENT_RESPONSE``); the agent checks it against its pinned root."""
        return sign_envelope(
            TYPE_ENROLLMENT_RESPONSE, dumps_canonical(self.to_json()), [release_key]
        )


def get_agent(session: Session, agent_id: str) -> Agent:
    """Raises NotFoundError."""
    agent: Agent | None = session.scalar(select(Agent).where(Agent.agent_id == agent_id))
    if agent is None:
        raise NotFoundError(f"agent {agent_id!r} does not exist")
    return agent


def list_agents(session: Session, environment: str | None = None) -> list[Agent]:
    query = select(Agent).order_by(Agent.agent_id)
    if environment is not None:
        query = query.where(Agent.environment_id == get_environment(session, environment).id)
    return list(session.scalars(query))


def _slug(hostname: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", hostname.lower()).strip("-")[:40]
    return slug or "agent"


def enroll_agent(
    ctx: ServiceContext, environment: str, request: EnrollmentRequest, *, label: str = ""
) -> EnrollmentResponse:
    """Register an agent in ``environment`` with the keys of its enrollment request.

    Raises:
        PermissionDeniedError (operator or admin of the environment), NotFoundError,
        ConflictError (agent id or Ed25519 key already enrolled; a revoked key never
        comes back — the agent must make a new key), ValidationError.
    """
    session = ctx.session
    env = get_environment(session, environment)
    require(ctx.actor, "agent.enroll", env)
    if request.environment is not None and request.environment != environment:
        raise ValidationError(
            f"the agent asked to join environment {request.environment!r}, not {environment!r}"
        )
    if request.hub_id is not None and ctx.keys is not None and request.hub_id != ctx.keys.hub_id:
        raise ValidationError(
            f"the enrollment request is for hub {request.hub_id!r}, this is {ctx.keys.hub_id!r}"
        )
    existing = session.scalar(select(Agent).where(Agent.ed25519_public == request.ed25519_public))
    if existing is not None:
        raise ConflictError(
            f"this Ed25519 key is already enrolled as agent {existing.agent_id} ({existing.status})"
        )
    agent_id = request.agent_id or f"{_slug(request.hostname)}-{secrets.token_hex(3)}"
    if session.scalar(select(Agent.id).where(Agent.agent_id == agent_id)) is not None:
        raise ConflictError(f"agent id {agent_id!r} is already taken")
    now = ctx.now()
    agent = Agent(
        agent_id=agent_id,
        environment=env,
        label=label or request.hostname,
        labels=dict(request.labels),
        hostname=request.hostname,
        agent_version=request.agent_version,
        ed25519_public=request.ed25519_public,
        x25519_public=request.x25519_public,
        status="enrolled",
        enrolled_at=now,
        result_seq=0,
    )
    session.add(agent)
    session.flush()
    root_version = ctx.keys.root.version if ctx.keys is not None else 1
    session.add(
        SequenceCounter(
            target=agent_target(agent_id),
            agent_id=agent.id,
            next_sequence=1,
            root_version=root_version,
        )
    )
    session.flush()
    audit.record(
        ctx,
        "agent.enroll",
        "agent",
        agent_id,
        {
            "environment": environment,
            "hostname": request.hostname,
            "ed25519_public": request.ed25519_public,
            "x25519_public": request.x25519_public,
            "labels": dict(request.labels),
            "agent_version": request.agent_version,
        },
    )
    return EnrollmentResponse(
        agent_id=agent_id,
        environment=environment,
        hub_id=ctx.keys.hub_id if ctx.keys is not None else "",
        root_envelope=ctx.keys.root_envelope if ctx.keys is not None else None,
        enrolled_at=int(now.timestamp()),
        tls_ca_pem=ctx.keys.tls_ca_pem if ctx.keys is not None else None,
    )


def revoke_agent(ctx: ServiceContext, agent_id: str, *, reason: str = "") -> Agent:
    """Revoke an agent: no bundle is addressed to it again, its results are refused.

    Raises:
        PermissionDeniedError, NotFoundError, InvalidStateError (already revoked).
    """
    agent = get_agent(ctx.session, agent_id)
    require(ctx.actor, "agent.revoke", agent.environment)
    if agent.status == "revoked":
        raise InvalidStateError(f"agent {agent_id} is already revoked")
    agent.status = "revoked"
    agent.revoked_at = ctx.now()
    ctx.session.flush()
    audit.record(ctx, "agent.revoke", "agent", agent_id, {"reason": reason})
    return agent
