"""Approvers: the groups a user belongs to, and the personal keys a user approves with.

* **Groups** (``user_groups``) are plain names (``dba``, ``ops``); approval rules count
  approvers from groups (:mod:`hub.services.approval_rules`). Only admins change them.
* **Personal approver keys** (``approver_keys``): the public half of a key made with
  ``tiangong keys generate --role approver``. The key id is computed from the public key
  (never taken from the input), a key belongs to one user for ever (registering it to a
  second user, or again after revocation, is refused), and a revoked key stays listed so
  its history is readable. An admin registers a key for anyone; a user registers their own
  (the web "My keys" page). Revoking is audited and needs a reason.

This module does not verify signatures (``hub.services.approvals`` does, with
``signing.approvals``) and never sees a private key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import ApproverKey, User, UserGroup
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.users import get_user, require
from signing.errors import SigningError
from signing.keyfile import MAX_KEY_FILE_BYTES, KeyInfo, parse_public_key
from signing.keys import PublicKey

__all__ = [
    "GROUP_NAME",
    "MAX_GROUPS_PER_USER",
    "MAX_KEYS_PER_USER",
    "active_key",
    "add_group",
    "keys_of",
    "list_keys",
    "parse_group_names",
    "register_key",
    "remove_group",
    "revoke_key",
    "set_groups",
]

GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_GROUPS_PER_USER = 32  # groups
MAX_KEYS_PER_USER = 16  # approver keys (revoked ones included)
MAX_REASON_CHARS = 1000  # characters


# --- groups ---------------------------------------------------------------------------


def parse_group_names(names: Sequence[str]) -> list[str]:
    """Check and de-duplicate group names (sorted).

    Raises:
        ValidationError: a name is not 1-64 lowercase letters, digits, ``. _ -``.
    """
    out = set()
    for name in names:
        name = name.strip()
        if not GROUP_NAME.match(name):
            raise ValidationError(
                f"group name {name!r} must be 1-64 lowercase letters, digits, . _ - "
                "(starting with a letter or digit)"
            )
        out.add(name)
    return sorted(out)


def add_group(ctx: ServiceContext, username: str, group: str) -> UserGroup:
    """Make ``username`` a member of ``group`` (admin only).

    Raises:
        PermissionDeniedError, NotFoundError (user), ValidationError (name; more than
        :data:`MAX_GROUPS_PER_USER`), ConflictError (already a member).
    """
    require(ctx.actor, "user.manage")
    (name,) = parse_group_names([group])
    user = get_user(ctx.session, username)
    if name in user.group_names:
        raise ConflictError(f"{username} is already in group {name}")
    if len(user.groups) >= MAX_GROUPS_PER_USER:
        raise ValidationError(
            f"{username} is in {len(user.groups)} groups already, the most is "
            f"{MAX_GROUPS_PER_USER}"
        )
    row = UserGroup(user=user, name=name, added_at=ctx.now(), added_by=ctx.actor_name)
    ctx.session.add(row)
    ctx.session.flush()
    audit.record(ctx, "user.group_add", "user", username, {"group": name})
    return row


def remove_group(ctx: ServiceContext, username: str, group: str) -> None:
    """Remove ``username`` from ``group`` (admin only).

    Raises:
        PermissionDeniedError, NotFoundError (user, or not a member).
    """
    require(ctx.actor, "user.manage")
    user = get_user(ctx.session, username)
    match = [g for g in user.groups if g.name == group]
    if not match:
        raise NotFoundError(f"{username} is not in group {group!r}")
    for g in match:
        user.groups.remove(g)
        ctx.session.delete(g)
    ctx.session.flush()
    audit.record(ctx, "user.group_remove", "user", username, {"group": group})


def set_groups(ctx: ServiceContext, username: str, groups: Sequence[str]) -> list[str]:
    """Make ``groups`` exactly the groups of ``username`` (the web admin form): one
    audited add or remove per change. Returns the new group names.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (a name; too many).
    """
    require(ctx.actor, "user.manage")
    wanted = parse_group_names(groups)
    if len(wanted) > MAX_GROUPS_PER_USER:
        raise ValidationError(f"at most {MAX_GROUPS_PER_USER} groups per user, not {len(wanted)}")
    user = get_user(ctx.session, username)
    have = set(user.group_names)
    for name in sorted(have - set(wanted)):
        remove_group(ctx, username, name)
    for name in wanted:
        if name not in have:
            add_group(ctx, username, name)
    ctx.session.refresh(user)
    return user.group_names


# --- personal approver keys -----------------------------------------------------------


def _may_manage_keys_of(ctx: ServiceContext, user: User) -> None:
    actor = ctx.actor
    if actor is not None and actor.is_active and actor.id == user.id:
        return
    require(actor, "user.manage")


def _public_key(data: bytes, source: str) -> KeyInfo:
    """The Ed25519 public key in the key file ``data`` (public file of an approver key).

    Raises:
        ValidationError: too big, malformed, a private key file, not Ed25519, not an
        approver key.
    """
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValidationError(
            f"{source} is {len(data)} bytes; a public key file is at most {MAX_KEY_FILE_BYTES}"
        )
    try:
        info = parse_public_key(data, source=source)
        info.ed25519_public()
    except SigningError as exc:
        raise ValidationError(str(exc)) from exc
    if info.role != "approver":
        raise ValidationError(
            f"{source} holds a {info.role} key; register an approver key "
            "(tiangong keys generate --role approver)"
        )
    return info


def register_key(
    ctx: ServiceContext, username: str, public_key_file: bytes, *, source: str = "<upload>",
    label: str = "",
) -> ApproverKey:
    """Register the approver public key in ``public_key_file`` (the bytes of a ``.pub``
    file) to ``username``: the user themselves, or an admin for anyone. The key id is
    computed from the public key.

    Raises:
        PermissionDeniedError, NotFoundError (user), ValidationError (not an approver
        public key file; too many keys), ConflictError (the key is registered already —
        to this user, to another, or revoked).
    """
    user = get_user(ctx.session, username)
    _may_manage_keys_of(ctx, user)
    info = _public_key(public_key_file, source)
    public = PublicKey(info.public)
    key_id = public.key_id  # computed here: the file's own key_id is not trusted
    existing = ctx.session.scalar(select(ApproverKey).where(ApproverKey.key_id == key_id))
    if existing is not None:
        whose = "yours" if existing.user_id == user.id else "another user's"
        state = " (revoked; a revoked key is never registered again)" if existing.revoked_at else ""
        raise ConflictError(f"approver key {key_id[:16]} is registered already: {whose}{state}")
    count = len(list_keys(ctx.session, user))
    if count >= MAX_KEYS_PER_USER:
        raise ValidationError(
            f"{username} has {count} approver keys, the most is {MAX_KEYS_PER_USER}"
        )
    row = ApproverKey(
        key_id=key_id,
        user=user,
        public=info.public.hex(),
        label=(label or info.label)[:200],
        added_at=ctx.now(),
        added_by=ctx.actor_name,
        revoke_reason="",
    )
    ctx.session.add(row)
    ctx.session.flush()
    audit.record(ctx, "approver_key.add", "user", username, {"key_id": key_id, "label": row.label})
    return row


def _key_of(ctx: ServiceContext, key_id: str) -> ApproverKey:
    """The key whose id is ``key_id`` or starts with it (≥ 8 hex characters)."""
    key_id = key_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", key_id):
        raise ValidationError(f"key id {key_id!r}: give at least 8 hex characters of it")
    rows = list(
        ctx.session.scalars(select(ApproverKey).where(ApproverKey.key_id.startswith(key_id)))
    )
    if not rows:
        raise NotFoundError(f"no approver key {key_id} is registered")
    if len(rows) > 1:
        raise ValidationError(f"key id prefix {key_id} matches {len(rows)} keys; give more of it")
    return rows[0]


def revoke_key(ctx: ServiceContext, key_id: str, *, reason: str) -> ApproverKey:
    """Revoke an approver key (its owner, or an admin). Approvals it signed stop counting
    at the hub; a site stops counting them when its root revokes the key.

    Raises:
        PermissionDeniedError, NotFoundError, ValidationError (no reason, or a key id prefix
        that is ambiguous), ConflictError (revoked already).
    """
    if not reason.strip():
        raise ValidationError("revoking an approver key needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is longer than {MAX_REASON_CHARS} characters")
    row = _key_of(ctx, key_id)
    _may_manage_keys_of(ctx, row.user)
    if row.revoked_at is not None:
        raise ConflictError(f"approver key {row.key_id[:16]} was revoked already")
    row.revoked_at = ctx.now()
    row.revoked_by = ctx.actor_name
    row.revoke_reason = reason
    ctx.session.flush()
    audit.record(
        ctx, "approver_key.revoke", "user", row.user.username,
        {"key_id": row.key_id, "reason": reason},
    )
    return row


def list_keys(session: Session, user: User) -> list[ApproverKey]:
    """Every approver key of ``user`` (revoked ones too), oldest first."""
    return list(
        session.scalars(
            select(ApproverKey).where(ApproverKey.user_id == user.id).order_by(ApproverKey.id)
        )
    )


def keys_of(ctx: ServiceContext, username: str) -> list[ApproverKey]:
    """The approver keys of ``username`` for the user themselves or an admin.

    Raises:
        PermissionDeniedError, NotFoundError.
    """
    user = get_user(ctx.session, username)
    try:
        _may_manage_keys_of(ctx, user)
    except PermissionDeniedError:
        require(ctx.actor, "view")  # anyone who may view may see who holds which key
    return list_keys(ctx.session, user)


def active_key(ctx: ServiceContext, key_id: str) -> ApproverKey | None:
    """The registered, unrevoked approver key with exactly ``key_id``, or None."""
    row: ApproverKey | None = ctx.session.scalar(
        select(ApproverKey).where(ApproverKey.key_id == key_id)
    )
    if row is None or row.revoked_at is not None:
        return None
    return row
