"""Signed approvals in the web UI, and each user's "My keys" page.

* **My keys** (``/me/keys``): the signed-in user uploads the public half (``.pub``) of a
  personal approver key made with ``tiangong keys generate --role approver``, sees their
  keys, and revokes one with a reason.
* **Approving with a signature** on a release page, two ways:

  - upload an approval file made with ``tiangong keys approve``;
  - let the browser sign: the page (``static/approve-sign.js``) reads a key file the user
    picks, imports it as a non-extractable WebCrypto Ed25519 key kept only in the page,
    fetches from :func:`payload` the exact bytes to sign (the hub builds the canonical
    payload and its envelope encoding; the script never builds JSON), signs them and posts
    the payload and the signature — never the key.

Views translate, services decide: registering and revoking keys is
:mod:`hub.services.approvers`, checking and storing approvals
:mod:`hub.services.approvals`. A refused upload or signature is a message on the page it
came from; nothing is stored.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from hub.db import Release, db
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.services.approvals import (
    DEFAULT_VALIDITY,
    approval_request,
    approve_with_browser_signature,
    approve_with_signature,
)
from hub.services.approvers import keys_of, register_key, revoke_key
from hub.services.environments import visible_environments
from hub.services.releases import can_read, get_release
from hub.services.users import can
from signing.approvals import MAX_APPROVAL_BYTES
from signing.keyfile import MAX_KEY_FILE_BYTES
from web.views import ctx, in_scope, login_required, signed_in_user, visible_environment

__all__ = ["bp"]

_REFUSED = (ConflictError, NotFoundError, ValidationError)
MAX_PAYLOAD_FIELD = 2 * MAX_APPROVAL_BYTES  # characters of the base64 payload field

bp = Blueprint("approvals", __name__)


def _read_upload(field: str, limit: int) -> tuple[bytes, str]:
    upload = request.files.get(field)
    if upload is None or not upload.filename:
        raise ValidationError("choose a file to upload")
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise ValidationError(f"{upload.filename} is over {limit} bytes")
    return data, upload.filename


# --- My keys ----------------------------------------------------------------------------


@bp.get("/me/keys")
@login_required
def my_keys() -> Any:
    user = signed_in_user()
    return render_template("approvals/keys.html", keys=keys_of(ctx(), user.username),
                           groups=user.group_names)


@bp.post("/me/keys")
@login_required
def add_key() -> Any:
    user = signed_in_user()
    try:
        data, name = _read_upload("public_key", MAX_KEY_FILE_BYTES)
        key = register_key(ctx(), user.username, data, source=name,
                           label=(request.form.get("label") or "").strip())
    except _REFUSED as exc:
        db.session.rollback()
        flash(f"Key not registered: {exc}", "error")
        return redirect(url_for("approvals.my_keys"))
    key_id = key.key_id
    db.session.commit()
    flash(f"Approver key {key_id} registered to you.", "info")
    return redirect(url_for("approvals.my_keys"))


@bp.post("/me/keys/<key_id>/revoke")
@login_required
def revoke(key_id: str) -> Any:
    user = signed_in_user()
    if key_id not in {k.key_id for k in keys_of(ctx(), user.username)}:
        raise NotFoundError(f"you have no approver key {key_id[:64]}")
    try:
        revoke_key(ctx(), key_id, reason=(request.form.get("reason") or "").strip())
    except _REFUSED as exc:
        db.session.rollback()
        flash(f"Key not revoked: {exc}", "error")
        return redirect(url_for("approvals.my_keys"))
    db.session.commit()
    flash(f"Approver key {key_id[:16]} revoked.", "info")
    return redirect(url_for("approvals.my_keys"))


# --- signed approvals -------------------------------------------------------------------


def _release(product: str, version: str) -> Release:
    user = signed_in_user()
    return in_scope(f"release {product[:64]} {version[:64]} does not exist",
                    lambda: get_release(ctx().session, product, version),
                    lambda _r: can_read(user))


def _may_approve(rel: Release) -> None:
    """403 before reading a form for someone who may approve nowhere (the services decide
    everything else)."""
    user = signed_in_user()
    envs = visible_environments(ctx().session, user)
    if not (can(user, "release.approve") or any(can(user, "release.approve", e) for e in envs)):
        raise PermissionDeniedError(
            f"{user.username} may not release.approve: it needs one of the roles admin, approver"
        )


def _back(rel: Release) -> Any:
    return redirect(url_for("releases.release", product=rel.product.name, version=rel.version))


def _environment(value: str | None) -> str | None:
    name = (value or "").strip() or None
    if name is not None:
        visible_environment(name)
    return name


@bp.get("/releases/<product>/<version>/approval-payload")
@login_required
def payload(product: str, version: str) -> Any:
    """The bytes the browser signs for the signed-in user's approval: JSON with the
    base64 payload and the base64 message (the envelope's pre-authentication encoding).
    Nothing is stored."""
    rel = _release(product, version)
    request_ = approval_request(
        ctx(), rel, environment=_environment(request.args.get("environment")),
        comment=request.args.get("comment", ""), valid_for=DEFAULT_VALIDITY,
    )
    db.session.rollback()
    return jsonify({
        "payload": base64.b64encode(request_.payload).decode("ascii"),
        "message": base64.b64encode(request_.message).decode("ascii"),
        "payload_type": request_.payload_type,
        "expires": request_.document.expires,
    })


def _b64_field(name: str, limit: int) -> bytes:
    text = request.form.get(name) or ""
    if not text or len(text) > limit:
        raise ValidationError(f"the form's {name} is missing or too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"the form's {name} is not base64") from exc


@bp.post("/releases/<product>/<version>/approve-signed")
@login_required
def approve_signed(product: str, version: str) -> Any:
    """Store the signature the browser made over :func:`payload`'s bytes."""
    rel = _release(product, version)
    _may_approve(rel)

    def store() -> list[Any]:
        signed = _b64_field("payload", MAX_PAYLOAD_FIELD)
        signature = _b64_field("signature", 128)
        return approve_with_browser_signature(ctx(), rel, signed, signature)

    return _store(rel, store)


@bp.post("/releases/<product>/<version>/approve-upload")
@login_required
def approve_upload(product: str, version: str) -> Any:
    """Store an approval file made with ``tiangong keys approve``."""
    rel = _release(product, version)
    _may_approve(rel)

    def store() -> list[Any]:
        data, _name = _read_upload("approval", MAX_APPROVAL_BYTES)
        return approve_with_signature(ctx(), rel, data)

    return _store(rel, store)


def _store(rel: Release, store: Callable[[], list[Any]]) -> Any:
    """Run ``store`` (one service call), commit and say what was stored, or roll back and
    say why not; back to the release page either way."""
    try:
        rows = store()
        where = ", ".join(r.environment.name if r.environment else "every environment"
                          for r in rows)
        message = (f"You approved release {rel.label} for {where}, signed by key "
                   f"{rows[0].key_id[:16]}.")
    except _REFUSED as exc:
        db.session.rollback()
        flash(f"Approval not stored: {exc}", "error")
        return _back(rel)
    db.session.commit()
    flash(message, "info")
    return _back(rel)
