"""The hub's root of trust after ``hub init``: installing a new root version, and the hub's
approval key for existing hubs.

:func:`install_root` takes root version N+1 made at a root ceremony (``tiangong keys root
rotate``) and makes it the hub's current root, after the same checks an agent makes
(``TrustedRoot.update``: signed by a threshold of root N's root keys and of its own, the
next version, the same hub) and only when it has not expired. The old and the new version
are kept under ``roots/``; every version after 1 travels in the ``roots.json`` of each
release bundle exported from then on, so agents catch up with the next bundle they verify.

This module writes files in the data directory and one audit event; it never holds a root
key (the root ceremony happens offline).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from hub.db import AuditEvent
from hub.errors import ConfigError, ConflictError, ValidationError
from hub.faults import crash_point
from hub.keystore import root_history_path
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.users import require
from signing.errors import SigningError
from signing.fileio import read_bounded, write_file_atomic
from signing.roots import MAX_ROOT_BYTES, TrustedRoot

__all__ = ["InstalledRoot", "install_root"]


@dataclass(frozen=True)
class InstalledRoot:
    previous_version: int
    version: int
    sha256: str
    approval_role: bool  # the new root lists the hub's approval key(s) in role approval
    delegations: tuple[str, ...]  # environments it delegates approvals for


def install_root(ctx: ServiceContext, data_dir: Path, envelope: bytes, *,
                 source: str = "<root>") -> InstalledRoot:
    """Verify ``envelope`` as the next version of the hub's root and make it current.

    Raises:
        PermissionDeniedError (admin), ValidationError (not the next version, not signed
        by the threshold of the current root or of its own, another hub, expired, an
        approval role without this hub's approval key — the message names ``source`` and
        the rule), ConflictError (it is the current root, its install recorded),
        ConfigError (the data directory). Nothing changes when it raises.

    Crash points ``hub.root-installing`` and ``hub.root-installed``: running the same
    command again completes a killed install (one ``root.install`` event).
    """
    require(ctx.actor, "user.manage")
    if len(envelope) > MAX_ROOT_BYTES:
        raise ValidationError(f"{source} is {len(envelope)} bytes, over {MAX_ROOT_BYTES}")
    root_json = data_dir / "root.json"
    try:
        current_bytes = read_bounded(root_json, MAX_ROOT_BYTES)
        current = TrustedRoot.pin(current_bytes)
    except (OSError, SigningError) as exc:
        raise ConfigError(f"{root_json}: {exc}") from exc
    now = int(ctx.now().timestamp())
    digest = hashlib.sha256(envelope).hexdigest()
    if envelope == current_bytes:
        # Installed by a run killed before its event was committed: record it now, once.
        if current.version == 1 or _install_recorded(ctx, current.version, digest):
            raise ConflictError(f"{source}: root version {current.version} is installed "
                                "already")
        return _record(ctx, current, digest, previous=current.version - 1)
    try:
        new = current.update(envelope)
        new.check_current(now)
    except SigningError as exc:
        raise ValidationError(
            f"{source} cannot follow root version {current.version} of this hub: {exc}"
        ) from exc
    doc = new.document
    if doc.has_role("approval") and ctx.keys is not None and ctx.keys.approval_key is not None:
        listed = doc.roles["approval"][0]
        if ctx.keys.approval_key.key_id not in listed:
            raise ValidationError(
                f"{source}: role approval lists key(s) {', '.join(k[:16] for k in listed)} "
                f"but this hub's approval key is {ctx.keys.approval_key.key_id[:16]} "
                "(keys/approval.pub); hub-attested approvals would not verify"
            )
    release_key = ctx.keys.release_key if ctx.keys is not None else None
    if release_key is not None and (
            not doc.has_role("release")
            or release_key.key_id not in doc.role_keys("release", now).keys):
        raise ValidationError(
            f"{source}: root version {new.version} does not certify this hub's release key "
            f"{release_key.key_id[:16]} (keys/release.key): it is revoked, expired or not in "
            "role release, so sites that take this root would refuse every bundle the hub "
            "signs. Put the new release key in keys/release.key (and keys/release.pub) first, "
            "then install the root (docs/keys-and-trust.md, 'Replacing the hub's release key')"
        )
    # Audited first (committed by the caller after the files): a failure writing them rolls
    # the event back; a kill after root.json is replaced is completed by running it again.
    installed = _record(ctx, new, digest, previous=current.version)
    try:
        old_path = root_history_path(data_dir, current.version)
        old_path.parent.mkdir(mode=0o755, exist_ok=True)
        if not old_path.exists():
            write_file_atomic(old_path, current_bytes, mode=0o644)
        write_file_atomic(root_history_path(data_dir, new.version), envelope, mode=0o644,
                          overwrite=True)
        crash_point("hub.root-installing")
        write_file_atomic(root_json, envelope, mode=0o644, overwrite=True)
        crash_point("hub.root-installed")
    except (OSError, SigningError) as exc:
        raise ConfigError(f"cannot install {source} in {data_dir}: {exc}") from exc
    return installed


def _install_recorded(ctx: ServiceContext, version: int, digest: str) -> bool:
    rows = ctx.session.scalars(select(AuditEvent.details).where(
        AuditEvent.action == "root.install", AuditEvent.object_id == str(version)))
    return any(json.loads(d).get("sha256") == digest for d in rows)


def _record(ctx: ServiceContext, new: TrustedRoot, digest: str, *,
            previous: int) -> InstalledRoot:
    """The ``root.install`` event of root ``new`` (in the caller's transaction)."""
    doc = new.document
    approval_role = doc.has_role("approval")
    delegations = tuple(sorted(doc.approvals))
    audit.record(
        ctx, "root.install", "root", str(new.version),
        {"from": previous, "sha256": digest, "approval_role": approval_role,
         "delegations": list(delegations)},
    )
    return InstalledRoot(previous, new.version, digest, approval_role, delegations)
