"""The hub's tables: typed SQLAlchemy 2.0 models on :class:`Base`, which the web app's
Flask-SQLAlchemy extension :data:`db` uses as its model class.

The models work with a plain :class:`sqlalchemy.orm.Session` too (services, CLI and tests
use :func:`make_engine` + :func:`make_session_factory` without a Flask app): ``db`` and Flask
are imported when something first asks for ``hub.db.db`` (the web app), not by a console
command. The schema is
owned by Alembic (``hub/migrations``); :func:`hub.migrate.upgrade` creates it, never
``create_all``.

SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON`` and a busy timeout on
connect. Times are stored as naive UTC and returned as aware UTC datetimes.

This module holds no rules: the services in ``hub/services`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from hub.audit_mac import AuditMacKey
from hub.audit_mac import attach as attach_audit_mac

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

__all__ = [
    "AGENT_STATUSES",
    "API_TOKEN_SCOPES",
    "DEPLOYMENT_STATES",
    "POLICY_KINDS",
    "RELEASE_STATES",
    "ROLES",
    "Agent",
    "ApiToken",
    "Approval",
    "ApprovalRule",
    "ApproverKey",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Channel",
    "ChannelEntry",
    "ChannelSubscription",
    "Deployment",
    "DeploymentAttempt",
    "DeploymentOverride",
    "Environment",
    "LoginThrottle",
    "PolicyRule",
    "Product",
    "PromotionApproval",
    "Release",
    "RoleGrant",
    "SamlReplay",
    "SequenceCounter",
    "User",
    "UserGroup",
    "WebSession",
    "db",
    "make_engine",
    "make_session_factory",
    "normalize_url",
]

ROLES = ("viewer", "developer", "operator", "approver", "auditor", "admin")
RELEASE_STATES = ("draft", "submitted", "approved", "rejected")
DEPLOYMENT_STATES = (
    "planned",
    "queued",
    "exporting",
    "exported",
    "delivered",
    "running",
    "succeeded",
    "failed",
    "rejected",
    "interrupted",
    "retried",
    "lost",
    "cancelled",
)
AGENT_STATUSES = ("enrolled", "revoked")
#: What a personal API token may be used for (:mod:`hub.services.tokens`, docs/api.md).
API_TOKEN_SCOPES = ("read", "releases:write", "approve", "deploy", "admin")
POLICY_KINDS = ("window", "freeze")  # PolicyRule.kind (hub.services.windows)
SQLITE_BUSY_TIMEOUT_MS = 10_000  # milliseconds a writer waits for the lock

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python (SQLite keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        # Microseconds on MySQL/MariaDB too: audit event times are hashed with them.
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql  # loaded with the dialect's engine anyway

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the hub stores aware datetimes only (use the injected clock)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)

    def __repr__(self) -> str:
        # As Flask-SQLAlchemy's models print themselves (the models were db.Model before).
        state = inspect(self)
        if state.transient:
            key = f"(transient {id(self)})"
        elif state.pending:
            key = f"(pending {id(self)})"
        else:
            key = ", ".join(map(str, state.identity or ()))
        return f"<{type(self).__name__} {key}>"


if TYPE_CHECKING:
    db: SQLAlchemy  # made by __getattr__ on first use
    _Model: Any  # the models' base is untyped to mypy, as db.Model was; their columns are typed
else:
    _Model = Base


def __getattr__(name: str) -> Any:
    """``db``: the Flask-SQLAlchemy extension over :class:`Base`, made (and Flask imported)
    when first asked for (PEP 562).

    Raises:
        AttributeError: any other name.
    """
    if name != "db":
        raise AttributeError(f"module 'hub.db' has no attribute {name!r}")
    from flask_sqlalchemy import SQLAlchemy

    extension = SQLAlchemy(model_class=Base)
    globals()["db"] = extension
    return extension


class User(_Model):  # type: ignore[misc]
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(16), default="local")  # saml | local
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: werkzeug scrypt hash for the web UI's local-password sign-in (``[web] local_login``);
    #: None: this user cannot sign in with a password.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)

    grants: Mapped[list[RoleGrant]] = relationship(
        back_populates="user", foreign_keys="RoleGrant.user_id"
    )
    groups: Mapped[list[UserGroup]] = relationship(
        back_populates="user", order_by="UserGroup.name"
    )

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]


class UserGroup(_Model):  # type: ignore[misc]
    """A user's membership of an approver group (approval rules count groups)."""

    __tablename__ = "user_groups"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str] = mapped_column(String(140), default="")

    user: Mapped[User] = relationship(back_populates="groups")


class ApproverKey(_Model):  # type: ignore[misc]
    """The public half of a user's personal approver key. ``key_id`` is computed from
    ``public`` (never taken from input) and belongs to one user for ever: a revoked key
    stays here, so it can never be registered again."""

    __tablename__ = "approver_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    public: Mapped[str] = mapped_column(String(64))  # hex
    label: Mapped[str] = mapped_column(String(200), default="")
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str] = mapped_column(String(140), default="")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by: Mapped[str | None] = mapped_column(String(140))
    revoke_reason: Mapped[str] = mapped_column(Text, default="")

    user: Mapped[User] = relationship()


class Environment(_Model):  # type: ignore[misc]
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    #: only approvers in one of these groups count (empty: any approver)
    approval_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: distinct groups the counted approvers must come from (2: "two different groups")
    approval_min_groups: Mapped[int] = mapped_column(Integer, default=1)
    #: approvals an ad-hoc run (``tiangong run``) needs here; NULL: the rule above applies
    #: (hub.services.adhoc_policy)
    adhoc_required_approvals: Mapped[int | None] = mapped_column(Integer)
    #: every deployment queued here needs a preflight plan of its release passed on each
    #: target agent within this many hours; NULL: no such policy (hub.services.plans)
    preflight_within_h: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApprovalRule(_Model):  # type: ignore[misc]
    """An environment's approval rule for releases reaching it through one channel; it
    replaces the environment's own rule (``required_approvals``, ``approval_groups``,
    ``approval_min_groups``) for that channel."""

    __tablename__ = "approval_rules"
    __table_args__ = (UniqueConstraint("environment_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    channel: Mapped[str] = mapped_column(String(64))
    required: Mapped[int] = mapped_column(Integer)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    min_groups: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(140), default="")

    environment: Mapped[Environment] = relationship()


class RoleGrant(_Model):  # type: ignore[misc]
    __tablename__ = "role_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    granted_by: Mapped[str] = mapped_column(String(64), default="")

    user: Mapped[User] = relationship(back_populates="grants", foreign_keys=[user_id])
    environment: Mapped[Environment | None] = relationship()


class Product(_Model):  # type: ignore[misc]
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Release(_Model):  # type: ignore[misc]
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("product_id", "version"),
                      UniqueConstraint("rollback_of_id", name="uq_releases_rollback_of"))

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(16), default="draft")
    content_hash: Mapped[str] = mapped_column(String(64))
    steps: Mapped[list[Any]] = mapped_column(JSON)
    files: Mapped[list[Any]] = mapped_column(JSON)
    stored_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: a rollback release (hub.services.rollback): the deployment it rolls back (one each)
    rollback_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", use_alter=True, name="fk_releases_rollback_of"))
    #: approved by inheritance (a rollout's automatic rollback): the release whose approvals
    #: count for it, at the hub and at the sites (docs/rollouts.md, "Automatic rollback")
    approvals_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("releases.id", name="fk_releases_approvals_from"))

    product: Mapped[Product] = relationship()
    author: Mapped[User] = relationship()
    rollback_of: Mapped[Deployment | None] = relationship(foreign_keys=[rollback_of_id])
    approvals_from: Mapped[Release | None] = relationship(remote_side=[id],
                                                          foreign_keys=[approvals_from_id])
    approvals: Mapped[list[Approval]] = relationship(
        back_populates="release", order_by="Approval.id"
    )

    @property
    def label(self) -> str:
        return f"{self.product.name} {self.version}"


class Approval(_Model):  # type: ignore[misc]
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: a signed approval (docs/governance.md "Approvals"): the envelope bytes as received,
    #: the approver key that signed it and the approval's own expiry; NULL when unsigned
    envelope: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    release: Mapped[Release] = relationship(back_populates="approvals")
    approver: Mapped[User] = relationship()
    environment: Mapped[Environment | None] = relationship()


class Agent(_Model):  # type: ignore[misc]
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), unique=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    ed25519_public: Mapped[str] = mapped_column(String(64), unique=True)
    x25519_public: Mapped[str] = mapped_column(String(64))
    # indexed: the live servers' push loops look for agents no longer enrolled 4x a second
    status: Mapped[str] = mapped_column(String(16), default="enrolled", index=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Presence kept by the live servers (hub.services.presence): online until this time;
    # the live connection holding the agent now (None: none).
    online_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    live_conn: Mapped[str | None] = mapped_column(String(64))
    result_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_result_digest: Mapped[str | None] = mapped_column(String(64))
    # Last known inventory (docs/agent.md, "Inventory"; hub.services.preflight) and the holds
    # the agent enforces (bundles held for a window, a freeze, an earlier held bundle), from
    # its newest live STATE or result; when that report was made. None: not known yet.
    inventory: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    inventory_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    holds: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    environment: Mapped[Environment] = relationship()


class Deployment(_Model):  # type: ignore[misc]
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"), index=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    sequence: Mapped[int | None] = mapped_column(Integer)
    root_version: Mapped[int | None] = mapped_column(Integer)
    bundle_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    bundle_path: Mapped[str | None] = mapped_column(Text)
    queued_by: Mapped[str] = mapped_column(String(64), default="")
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    result_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The export that claimed it (``host:pid:start``) and when; the bundle it is writing
    # (sequence, bundle id, times, file names), recorded before the file appears.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    export_intent: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Queued but held by a window or freeze (hub.services.windows): the live server does not
    # export it before this time. NULL: not held. A cache the scheduler and exports refresh.
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    release: Mapped[Release] = relationship(foreign_keys=[release_id])
    environment: Mapped[Environment] = relationship()
    agent: Mapped[Agent | None] = relationship()
    attempts: Mapped[list[DeploymentAttempt]] = relationship(
        back_populates="deployment", order_by="DeploymentAttempt.attempt"
    )


class DeploymentAttempt(_Model):  # type: ignore[misc]
    """One run of a deployment's bundle at the site, as a result reported it (the first run
    is attempt 1; each ``tiangong agent retry`` adds one)."""

    __tablename__ = "deployment_attempts"
    __table_args__ = (UniqueConstraint("deployment_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    result_seq: Mapped[int] = mapped_column(Integer)
    result_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime())

    deployment: Mapped[Deployment] = relationship(back_populates="attempts")


class Channel(_Model):  # type: ignore[misc]
    """One of a product's ordered release channels (RELEASE → CANARY → STABLE by default)
    and the rule for promoting a release into it from the channel before it
    (:mod:`hub.services.channels`, :mod:`hub.services.promotion`)."""

    __tablename__ = "channels"
    __table_args__ = (UniqueConstraint("product_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)  # 0 = first; releases enter it on approval
    # The promotion rule (into this channel): distinct non-author approvers of the promotion,
    # and health gates measured in the environments subscribed to the previous channel.
    required_approvals: Mapped[int] = mapped_column(Integer, default=0)
    min_successes: Mapped[int] = mapped_column(Integer, default=0)  # agents that succeeded
    no_failures: Mapped[bool] = mapped_column(Boolean, default=False)
    soak_seconds: Mapped[int] = mapped_column(Integer, default=0)  # since the last success
    # Preflight gate: a plan of the release passed on every agent subscribed to this channel
    # within this many hours (hub.services.plans); None: off.
    preflight_within_h: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    product: Mapped[Product] = relationship()


class ChannelEntry(_Model):  # type: ignore[misc]
    """A release in a channel: when it entered and who put it there; a recall keeps the row
    (``recalled_*`` set), so a recalled release never silently re-enters the channel."""

    __tablename__ = "channel_entries"
    __table_args__ = (UniqueConstraint("channel_id", "release_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    entered_by: Mapped[str] = mapped_column(String(140))
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recalled_by: Mapped[str | None] = mapped_column(String(140))
    recall_reason: Mapped[str | None] = mapped_column(Text)

    channel: Mapped[Channel] = relationship()
    release: Mapped[Release] = relationship()


class ChannelSubscription(_Model):  # type: ignore[misc]
    """An environment follows one channel of a product."""

    __tablename__ = "channel_subscriptions"
    __table_args__ = (UniqueConstraint("environment_id", "product_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(140))

    environment: Mapped[Environment] = relationship()
    product: Mapped[Product] = relationship()
    channel: Mapped[Channel] = relationship()


class PromotionApproval(_Model):  # type: ignore[misc]
    """One person's approval of promoting a release into a channel."""

    __tablename__ = "promotion_approvals"
    __table_args__ = (UniqueConstraint("channel_id", "release_id", "approver_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime())

    channel: Mapped[Channel] = relationship()
    approver: Mapped[User] = relationship()


class SequenceCounter(_Model):  # type: ignore[misc]
    """Next bundle sequence per target (``agent:<agent_id>`` or ``env:<name>``)."""

    __tablename__ = "sequence_counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(140), unique=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    next_sequence: Mapped[int] = mapped_column(Integer, default=1)
    root_version: Mapped[int] = mapped_column(Integer, default=1)


class AuditHead(_Model):  # type: ignore[misc]
    """The single row every audit append locks: last sequence and hash."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class JobTemplate(_Model):  # type: ignore[misc]
    """One version of a script or job template (hub.services.templates): a step with typed
    parameters and its file, instantiated into ad-hoc runs or releases."""

    __tablename__ = "job_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    #: the step's fixed fields (release-format.md §3), without name, kind and its file
    step: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the parameters (hub.services.template_params.ParamSpec.to_json), in order
    params: Mapped[list[Any]] = mapped_column(JSON)
    file_name: Mapped[str] = mapped_column(String(128))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(140))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEvent(_Model):  # type: ignore[misc]
    __tablename__ = "audit_events"
    # The importer looks results up by (action, object_id) (a result's SHA-256), the
    # deployment page by action: without it, every import batch scanned the whole log.
    __table_args__ = (Index("ix_audit_events_action_object_id", "action", "object_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(140))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 of (seq, hash) with the hub's audit MAC key, which the database does not
    # hold (hub.audit_mac); NULL for events written before the key existed.
    mac: Mapped[str | None] = mapped_column(String(64))


class AuditCheckpoint(_Model):  # type: ignore[misc]
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


# --- engines ------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """Pick the drivers we ship: ``postgresql://`` → psycopg 3, ``mysql://`` → PyMySQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def install_sqlite_pragmas(engine: Engine) -> None:
    """Set WAL, foreign keys and the busy timeout on every new SQLite connection."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", _sqlite_pragmas):
        event.listen(engine, "connect", _sqlite_pragmas)


def engine_options(url: str) -> dict[str, Any]:
    """Engine keyword arguments for ``url`` (in-memory SQLite shares one connection)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    return {"pool_pre_ping": True}


def make_engine(url: str, *, audit_mac: AuditMacKey | None = None) -> Engine:
    """An engine for ``url`` with the hub's connection settings; with ``audit_mac``, its
    connections carry the audit MAC key (:func:`hub.audit_mac.attach`)."""
    url = normalize_url(url)
    engine = create_engine(url, **engine_options(url))
    install_sqlite_pragmas(engine)
    attach_audit_mac(engine, audit_mac)
    return engine


def make_session_factory(engine: Engine) -> Callable[[], Session]:
    """Sessions that do not expire objects on commit (CLI prints after committing), whose
    commits that queue a deployment or revoke an agent wake the live servers of a SQLite
    database at once (:mod:`hub.live_wake`)."""
    from hub.live_wake import wake_on_commit  # it imports the models from here

    factory = sessionmaker(engine, expire_on_commit=False)
    wake_on_commit(factory, engine.url.render_as_string(hide_password=False))
    return factory


class SamlReplay(_Model):  # type: ignore[misc]
    """IDs of processed SAML responses and assertions, each until its ``NotOnOrAfter``
    (:mod:`web.replay`): in the hub database so every hub host behind the IdP shares them."""

    __tablename__ = "saml_replay"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class WebSession(_Model):  # type: ignore[misc]
    """A signed-in browser (:mod:`web.sessions`). The cookie carries a random token; the hub
    keeps only its SHA-256 (``id``), so every hub process shares sessions and ending one
    (sign-out, deactivation, "sign out everywhere", a timeout) deletes the row at once."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    method: Mapped[str] = mapped_column(String(16))  # saml | local | break_glass
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # absolute end


class LoginThrottle(_Model):  # type: ignore[misc]
    """Failed password sign-ins per user name or per source address within a window
    (:mod:`web.throttle`), shared by every hub process."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # user:<name> | addr:<ip>
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ApiToken(_Model):  # type: ignore[misc]
    """A personal API token (:mod:`hub.services.tokens`): the hub keeps the token's public
    ``prefix`` (to name it) and the SHA-256 of the whole token, never the token itself."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole token
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship()


class PolicyRule(_Model):  # type: ignore[misc]
    """A maintenance window or a change freeze (:mod:`hub.services.windows`) for an
    environment and/or a product (NULL: every one). ``spec`` is the design's JSON object
    (docs/bundle-format.md, ``policy``), exactly as it goes into bundles."""

    __tablename__ = "policy_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # window | freeze
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("environments.id"),
                                                       index=True)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: a freeze ended early (``freezes end``) or a one-off freeze the scheduler expired
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_by: Mapped[str] = mapped_column(String(64), default="")

    environment: Mapped[Environment | None] = relationship()
    product: Mapped[Product | None] = relationship()


class DeploymentOverride(_Model):  # type: ignore[misc]
    """A request to deploy despite freezes and windows (:mod:`hub.services.windows`): a
    reason and the requester, then a second person's confirmation (never the requester)."""

    __tablename__ = "deployment_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="requested")  # confirmed, expired
    confirmed_by: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    deployment: Mapped[Deployment] = relationship()


class Rollout(_Model):  # type: ignore[misc]
    """A release rolled over a set of agents in batches (:mod:`hub.services.rollouts`).
    ``selector``: ``{"environment": name}`` or ``{"labels": {k: v}}``; ``strategy``: the
    :class:`hub.services.rollouts.Strategy` as JSON; ``current_batch`` 0 before the first."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")
    current_batch: Mapped[int] = mapped_column(Integer, default=0)
    failures_accepted: Mapped[int] = mapped_column(Integer, default=0)
    rolled_back: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    release: Mapped[Release] = relationship()


class RolloutBatch(_Model):  # type: ignore[misc]
    """One batch of a rollout and its gate (done, soak, manual confirmation)."""

    __tablename__ = "rollout_batches"
    __table_args__ = (UniqueConstraint("rollout_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    confirmed_by: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RolloutTarget(_Model):  # type: ignore[misc]
    """An agent of a rollout: its batch and, once its batch started, its deployment."""

    __tablename__ = "rollout_targets"
    __table_args__ = (UniqueConstraint("rollout_id", "agent_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    batch: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)

    agent: Mapped[Agent] = relationship()
    deployment: Mapped[Deployment | None] = relationship()


class NotificationWebhook(_Model):  # type: ignore[misc]
    """A notification target of an environment (hub.services.notifications): a webhook
    (``kind`` "webhook": ``url``, and the file holding its HMAC secret — the secret itself is
    not in the database) or an e-mail target (``kind`` "email": ``url`` holds the
    comma-separated recipients); the events it receives."""

    __tablename__ = "notification_webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    kind: Mapped[str] = mapped_column(String(16), default="webhook", server_default="webhook")
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret_file: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    environment: Mapped[Environment] = relationship()


class NotificationOutbox(_Model):  # type: ignore[misc]
    """One notification to deliver to one webhook, written in the transaction of the event
    that caused it; ``state`` pending → delivered, or failed after the last retry."""

    __tablename__ = "notification_outbox"
    __table_args__ = (Index("ix_notification_outbox_state_next", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("notification_webhooks.id"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    webhook: Mapped[NotificationWebhook] = relationship()


class NotificationThresholds(_Model):  # type: ignore[misc]
    """An environment's thresholds for the events the scheduler computes
    (hub.services.incidents): an agent offline longer than ``agent_offline_s``, an exported
    bundle with no result after ``result_overdue_s``; None: that event is off."""

    __tablename__ = "notification_thresholds"

    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"),
                                                primary_key=True)
    agent_offline_s: Mapped[int | None] = mapped_column(Integer)
    result_overdue_s: Mapped[int | None] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    environment: Mapped[Environment] = relationship()


class NotificationIncident(_Model):  # type: ignore[misc]
    """One incident the scheduler opened (hub.services.incidents): ``kind`` agent.offline
    (``subject``: the agent id) or result.overdue (``subject``: the deployment id); notified
    when opened and when cleared, never in between."""

    __tablename__ = "notification_incidents"
    __table_args__ = (Index("ix_notification_incidents_kind_subject", "kind", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    subject: Mapped[str] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    environment: Mapped[Environment] = relationship()


class PlanBundle(_Model):  # type: ignore[misc]
    """A preflight plan made for a release and a target (hub.services.plans; docs/rollouts.md,
    "Preflight bundles"). ``id`` is the plan's sequence (bundle-format §6.11: one counter for
    the whole hub); ``agent_id`` None: every agent of the environment."""

    __tablename__ = "plan_bundles"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    bundle_id: Mapped[str] = mapped_column(String(128), unique=True)
    files: Mapped[list[str]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    release: Mapped[Release] = relationship()
    environment: Mapped[Environment] = relationship()
    agent: Mapped[Agent | None] = relationship()


class PlanOutcome(_Model):  # type: ignore[misc]
    """One agent's signed answer to a plan: ``passed`` or ``failed`` and every check, or
    ``refused`` (the agent refused the plan after its signature verified: expired, a
    replay; the reason is the summary)."""

    __tablename__ = "plan_outcomes"
    __table_args__ = (UniqueConstraint("plan_id", "agent_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plan_bundles.id"), index=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    result_seq: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    plan: Mapped[PlanBundle] = relationship()
    agent: Mapped[Agent] = relationship()


class HubSchedule(_Model):  # type: ignore[misc]
    """The hub's own timed work (hub.services.hub_schedules): ``kind`` "export" writes what
    is queued for ``environment`` into ``target_dir`` at each fire time of ``cron`` (in
    ``timezone``); ``last_fire_at`` is the fire time last run (claimed before it runs)."""

    __tablename__ = "hub_schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    target_dir: Mapped[str] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    environment: Mapped[Environment] = relationship()
