"""Approvals: approve or reject a submitted release, with the four-eyes rule.

* The author never approves (or rejects) their own release (:class:`SeparationOfDutiesError`).
* An approval is global (environment NULL) or for one environment; an approver granted only
  for environment E may approve only for E.
* A release becomes ``approved`` at its first approval; an environment that requires N
  approvals accepts a deployment only when N *distinct* approvers (never the author)
  approved globally or for it — :func:`distinct_approvers`, checked when queueing.
* Any rejection makes the release ``rejected`` (final; make a new release).

Approvals travel inside the bundle manifest: :func:`approvals_for_manifest`.

**Signed approvals** (docs/governance.md "Approvals"): an approval may be a signature by the
approver's personal key (``signing.approvals``), which a site can verify offline.
:func:`approve_with_signature` stores an approval envelope after checking that it verifies
with an unrevoked key registered to the acting user (``hub.services.approvers``), that it is
that user's, for this release's product, version and content hash, current, and for
environments the user may approve in; the envelope is stored byte for byte. One envelope
covering several environments gives one approval per environment ("*": one global).
:func:`approval_request` builds the payload a browser signs with WebCrypto (the page
fetches the exact bytes, it never builds JSON itself); :func:`approve_with_browser_signature`
puts that signature into an envelope and stores it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hub.audit_chain import format_at
from hub.db import Approval, ApproverKey, Environment, Release, User
from hub.errors import (
    ConflictError,
    InvalidStateError,
    PermissionDeniedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services import audit
from hub.services.approval_rules import counted_approvals
from hub.services.approvers import active_key, list_keys
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import can, require
from signing.approvals import (
    CLOCK_SKEW_SECONDS,
    MAX_APPROVAL_BYTES,
    ApprovalDocument,
    peek_approval,
)
from signing.delegations import ANY_ENVIRONMENT
from signing.envelope import TYPE_APPROVAL, Envelope, Signature, count_valid, pae
from signing.errors import SigningError
from signing.keys import PublicKey

__all__ = [
    "DEFAULT_VALIDITY",
    "MAX_COMMENT_CHARS",
    "SigningRequest",
    "approval_request",
    "approval_scopes",
    "approvals_for_manifest",
    "approve_release",
    "approve_with_browser_signature",
    "approve_with_signature",
    "distinct_approvers",
    "envelopes_for",
    "reject_release",
    "visible_approvals",
]

MAX_COMMENT_CHARS = 4096  # characters
DEFAULT_VALIDITY = timedelta(days=30)  # how long a signed approval made here stays valid
MAX_VALIDITY = timedelta(days=366)


def _common(
    ctx: ServiceContext, release: Release, environment: str | None, comment: str, verb: str
) -> Environment | None:
    env = get_environment(ctx.session, environment) if environment is not None else None
    require(ctx.actor, "release.approve", env)
    assert ctx.actor is not None
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValidationError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    if release.author_id == ctx.actor.id:
        raise SeparationOfDutiesError(
            f"release {release.label}: {ctx.actor.username} is its author and cannot {verb} it"
        )
    if release.state not in ("submitted", "approved"):
        raise InvalidStateError(
            f"release {release.label} is {release.state}; only a submitted or approved "
            f"release can be {verb}d"
        )
    return env


def approve_release(
    ctx: ServiceContext, release: Release, *, comment: str = "", environment: str | None = None
) -> Approval:
    """Record the actor's approval (globally, or for ``environment``).

    Raises:
        PermissionDeniedError, SeparationOfDutiesError (own release), InvalidStateError
        (draft or rejected), ConflictError (the actor already approved in this scope),
        NotFoundError (environment), ValidationError (comment too long).
    """
    env = _common(ctx, release, environment, comment, "approve")
    assert ctx.actor is not None
    env_id = env.id if env is not None else None
    for a in release.approvals:
        if a.approver_id == ctx.actor.id and a.environment_id == env_id:
            raise ConflictError(
                f"{ctx.actor.username} already approved release {release.label} "
                + (f"for {env.name}" if env else "globally")
            )
    now = ctx.now()
    approval = Approval(
        release=release,
        approver=ctx.actor,
        environment=env,
        decision="approve",
        comment=comment,
        at=now,
    )
    ctx.session.add(approval)
    _approved(ctx, release, {"environment": environment, "comment": comment})
    return approval


def _approved(ctx: ServiceContext, release: Release, details: dict[str, Any]) -> None:
    """The release is approved (from its first approval on), with a ``release.approve``
    event carrying ``details`` and the content hash approved; then what follows an approval
    (:func:`_after_approval`)."""
    release.state = "approved"
    release.decided_at = release.decided_at or ctx.now()
    ctx.session.flush()
    audit.record(ctx, "release.approve", "release", release.label,
                 {**details, "content_hash": release.content_hash})
    _after_approval(ctx, release)


def _after_approval(ctx: ServiceContext, release: Release) -> None:
    """An approved release enters its product's first channel; deployments planned for it
    that waited for this approval are queued (:mod:`hub.services.promotion`)."""
    from hub.services import promotion  # promotion builds on this module

    promotion.enter_first_channel(ctx, release)
    promotion.advance_release(ctx, release)


def reject_release(
    ctx: ServiceContext, release: Release, *, comment: str, environment: str | None = None
) -> Approval:
    """Reject the release (final). A comment saying why is required.

    Raises:
        ValidationError (no comment), and the errors of :func:`approve_release`.
    """
    if not comment.strip():
        raise ValidationError(f"rejecting release {release.label} needs a comment saying why")
    env = _common(ctx, release, environment, comment, "reject")
    now = ctx.now()
    approval = Approval(
        release=release,
        approver=ctx.actor,
        environment=env,
        decision="reject",
        comment=comment,
        at=now,
    )
    ctx.session.add(approval)
    release.state = "rejected"
    release.decided_at = now
    ctx.session.flush()
    audit.record(
        ctx,
        "release.reject",
        "release",
        release.label,
        {"environment": environment, "comment": comment, "content_hash": release.content_hash},
    )
    return approval


def _counting(release: Release, environment: Environment | None) -> list[Approval]:
    return counted_approvals(release, environment)


def distinct_approvers(release: Release, environment: Environment | None) -> set[str]:
    """User names of distinct non-author approvers valid for ``environment`` (global
    approvals count everywhere)."""
    return {a.approver.username for a in _counting(release, environment)}


def approvals_for_manifest(
    release: Release, environment: Environment | None = None
) -> list[dict[str, Any]]:
    """The approvals a bundle for ``environment`` carries: ``[{by, at, comment}]`` in the
    order they were given (``at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), strict-JSON ready."""
    return [
        {"by": a.approver.username, "at": format_at(a.at), "comment": a.comment}
        for a in _counting(release, environment)
    ]


# --- read-only queries for the web UI ---------------------------------------------------


def approval_scopes(
    user: User | None, release: Release, environments: Iterable[Environment]
) -> list[Environment | None]:
    """Where ``user`` could approve (or reject) ``release`` now: None (globally) when a
    global grant allows it, then each of ``environments`` a grant allows, leaving out the
    scopes the user already decided in (all of them once the user decided globally).

    Empty for the release's author (four eyes), for a release that is not submitted or
    approved, and for a user without the approver right. This only decides which buttons a
    page offers; :func:`approve_release` and :func:`reject_release` check for themselves.
    """
    if (
        user is None
        or release.author_id == user.id
        or release.state not in ("submitted", "approved")
    ):
        return []
    decided = {a.environment_id for a in release.approvals if a.approver_id == user.id}
    if None in decided:  # a global decision already counts everywhere
        return []
    scopes: list[Environment | None] = []
    if can(user, "release.approve"):
        scopes.append(None)
    scopes.extend(
        env
        for env in environments
        if can(user, "release.approve", env) and env.id not in decided
    )
    return scopes


def visible_approvals(user: User | None, release: Release) -> list[Approval]:
    """The approvals and rejections of ``release`` that ``user`` may see: global ones, and
    those for environments the user may view (an approval for another environment is that
    environment's data)."""
    return [
        a
        for a in release.approvals
        if a.environment is None or can(user, "view", a.environment)
    ]


# --- signed approvals ------------------------------------------------------------------


@dataclass(frozen=True)
class SigningRequest:
    """What an approver signs: the approval payload and the exact message (the envelope's
    pre-authentication encoding) a key signs for it."""

    document: ApprovalDocument
    payload_type: str
    payload: bytes
    message: bytes


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def approval_request(
    ctx: ServiceContext,
    release: Release,
    *,
    environment: str | None = None,
    comment: str = "",
    valid_for: timedelta = DEFAULT_VALIDITY,
) -> SigningRequest:
    """The approval document for the acting user to sign (for ``environment``, or ``"*"``
    when None), dated now and valid for ``valid_for``.

    Raises:
        the errors of :func:`approve_release` (permission, author, state, comment), and
        ValidationError (``valid_for`` not within 1 minute .. 366 days).
    """
    _common(ctx, release, environment, comment, "approve")
    assert ctx.actor is not None
    if not timedelta(minutes=1) <= valid_for <= MAX_VALIDITY:
        raise ValidationError(f"an approval is valid for 1 minute to {MAX_VALIDITY.days} days")
    at = _unix(ctx.now())
    try:
        doc = ApprovalDocument(
            product=release.product.name,
            version=release.version,
            content_hash=release.content_hash,
            environments=(environment or ANY_ENVIRONMENT,),
            approver=ctx.actor.username,
            at=at,
            expires=at + int(valid_for.total_seconds()),
            comment=comment,
        )
        payload = doc.to_bytes()
    except SigningError as exc:
        raise ValidationError(f"release {release.label}: {exc}") from exc
    return SigningRequest(doc, TYPE_APPROVAL, payload, pae(TYPE_APPROVAL, payload))


def approve_with_browser_signature(
    ctx: ServiceContext, release: Release, payload: bytes, signature: bytes
) -> list[Approval]:
    """Store the approval whose ``payload`` (from :func:`approval_request`) the browser
    signed with one of the acting user's registered keys (``signature``: 64 bytes).

    Raises:
        ValidationError (no registered key of the user verifies the signature; and the
        errors of :func:`approve_with_signature`).
    """
    if len(signature) != 64:
        raise ValidationError(f"an Ed25519 signature is 64 bytes, not {len(signature)}")
    if ctx.actor is None:
        raise PermissionDeniedError("signing an approval needs a signed-in user")
    message = pae(TYPE_APPROVAL, payload)
    for key in list_keys(ctx.session, ctx.actor):
        if key.revoked_at is None and PublicKey.from_hex(key.public).is_valid_signature(
            message, signature
        ):
            envelope = Envelope(TYPE_APPROVAL, payload, (Signature(key.key_id, signature),))
            return approve_with_signature(ctx, release, envelope.to_bytes())
    raise ValidationError(
        f"the signature does not verify with any approver key registered to "
        f"{ctx.actor.username}; register the key's .pub file first (My keys)"
    )


def _signed_document(
    ctx: ServiceContext, release: Release, envelope: bytes
) -> tuple[ApprovalDocument, ApproverKey]:
    """Check ``envelope`` as the acting user's approval of ``release``; the document and
    the key that signed it."""
    assert ctx.actor is not None
    who = ctx.actor.username
    if len(envelope) > MAX_APPROVAL_BYTES:
        raise ValidationError(
            f"the approval is {len(envelope)} bytes, over the limit of {MAX_APPROVAL_BYTES}"
        )
    try:
        parsed, doc = peek_approval(envelope)
    except SigningError as exc:
        raise ValidationError(f"not an approval file: {exc}") from exc
    if not isinstance(doc, ApprovalDocument):
        raise ValidationError(
            "this is a hub attestation, not a personal approval (tiangong keys approve)"
        )
    if len(parsed.signatures) != 1:
        raise ValidationError(
            f"an approval carries exactly one signature, this one {len(parsed.signatures)}"
        )
    key_id = parsed.signatures[0].keyid
    key = active_key(ctx, key_id)
    if key is None or key.user_id != ctx.actor.id:
        raise ValidationError(
            f"the approval is signed by key {key_id[:16]}, which is not an approver key "
            f"registered to {who} (or it was revoked)"
        )
    if not count_valid(parsed, [PublicKey.from_hex(key.public)]):
        raise ValidationError(f"the signature of key {key_id[:16]} does not verify")
    if doc.approver != who:
        raise ValidationError(f"the approval names approver {doc.approver!r}, not {who}")
    mine = (release.product.name, release.version, release.content_hash)
    theirs = (doc.product, doc.version, doc.content_hash)
    if theirs != mine:
        raise ValidationError(
            f"the approval is for {doc.product} {doc.version} (content hash "
            f"{doc.content_hash[:16]}), not release {release.label} (content hash "
            f"{release.content_hash[:16]})"
        )
    now = _unix(ctx.now())
    if doc.at > now + CLOCK_SKEW_SECONDS:
        raise ValidationError(
            f"the approval is dated {doc.at - now} s in the future (more than "
            f"{CLOCK_SKEW_SECONDS} s); check the signing machine's clock"
        )
    if doc.expires <= now:
        raise ValidationError(f"the approval expired at {_iso(doc.expires)}")
    if len(doc.comment) > MAX_COMMENT_CHARS:
        raise ValidationError(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    return doc, key


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def approve_with_signature(
    ctx: ServiceContext, release: Release, envelope: bytes
) -> list[Approval]:
    """Store the signed approval ``envelope`` (``tiangong keys approve``, or
    ``hub releases approve --key``) as the acting user's approval of ``release``: one
    approval per environment it names (one global approval for ``"*"``). An unsigned
    approval the user gave earlier in the same scope gets the signature.

    Raises:
        PermissionDeniedError (approver in each environment), SeparationOfDutiesError,
        InvalidStateError, NotFoundError (an environment), ConflictError (a signed
        approval of this user exists in a scope already), ValidationError (not an
        approval, not signed by an unrevoked key registered to the user, another user's
        or another release's approval, dated in the future, expired, comment too long).
        Nothing is stored when it raises.
    """
    if ctx.actor is None:
        raise PermissionDeniedError("storing an approval needs a user")
    doc, key = _signed_document(ctx, release, envelope)
    scopes = [None if e == ANY_ENVIRONMENT else e for e in doc.environments]
    envs = [_common(ctx, release, name, doc.comment, "approve") for name in scopes]
    at = datetime.fromtimestamp(doc.at, UTC)
    expires = datetime.fromtimestamp(doc.expires, UTC)
    plan: list[tuple[Environment | None, Approval | None]] = []
    for env in envs:  # every check before anything is written
        env_id = env.id if env is not None else None
        mine = [a for a in release.approvals
                if a.approver_id == ctx.actor.id and a.environment_id == env_id]
        if any(a.envelope is not None for a in mine):
            raise ConflictError(
                f"{ctx.actor.username} already gave a signed approval of release "
                f"{release.label} " + (f"for {env.name}" if env else "globally")
            )
        plan.append((env, mine[0] if mine else None))
    stored: list[Approval] = []
    for env, row in plan:
        if row is None:
            row = Approval(release=release, approver=ctx.actor, environment=env,
                           decision="approve", comment=doc.comment, at=ctx.now())
            ctx.session.add(row)
        row.envelope, row.key_id, row.expires_at = envelope, key.key_id, expires
        stored.append(row)
    _approved(ctx, release, {"environments": list(doc.environments), "comment": doc.comment,
                             "signed_by": key.key_id, "at": format_at(at),
                             "expires": format_at(expires)})
    return stored


def envelopes_for(release: Release, environment: Environment) -> list[bytes]:
    """The stored approval envelopes of ``release`` that cover ``environment`` (given for
    it or for every environment), each once, oldest first: what a bundle carries."""
    seen: dict[bytes, None] = {}
    for a in release.approvals:
        if a.decision != "approve" or a.envelope is None:
            continue
        if a.environment_id is None or a.environment_id == environment.id:
            seen.setdefault(bytes(a.envelope))
    return list(seen)
