"""Personal approver keys at the hub: registered from a public key file (the id computed,
never trusted), one user per key for ever, self-service or by an admin, revocable with a
reason (audited); every refusal changes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from hub.db import ApproverKey, AuditEvent
from hub.errors import ConflictError, PermissionDeniedError, ValidationError
from hub.services.approvers import keys_of, register_key, revoke_key
from signing.keys import SigningKey
from tests.hub.conftest import World
from tests.hub.services.approval_helpers import private_file, public_file


def _state(world: World) -> tuple[int, int, list[tuple[str, bool]]]:
    events = world.session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    keys = [(k.key_id, k.revoked_at is not None)
            for k in world.session.scalars(select(ApproverKey).order_by(ApproverKey.id))]
    return events, len(keys), keys


def test_register_and_revoke_own_key(world: World) -> None:
    key = SigningKey.generate()
    row = register_key(world.ctx("appr1"), "appr1", public_file(key, label="laptop"))
    assert row.key_id == key.key_id and row.public == key.public.raw.hex()
    assert row.label == "laptop" and row.added_by == "appr1"
    with pytest.raises(ValidationError, match="needs a reason"):
        revoke_key(world.ctx("appr1"), key.key_id, reason=" ")
    revoke_key(world.ctx("appr1"), key.key_id[:12], reason="laptop stolen")
    assert row.revoked_at == world.clock.now and row.revoke_reason == "laptop stolen"
    actions = [e.action for e in world.session.scalars(select(AuditEvent))]
    assert actions[-2:] == ["approver_key.add", "approver_key.revoke"]
    with pytest.raises(ConflictError, match="revoked already"):
        revoke_key(world.ctx("admin"), key.key_id, reason="again")
    # a revoked key is never registered again, to anyone
    with pytest.raises(ConflictError, match="revoked; a revoked key is never registered"):
        register_key(world.ctx("appr1"), "appr1", public_file(key))


def _forged_id(key: SigningKey) -> bytes:
    doc = json.loads(public_file(key))
    doc["key_id"] = "00" * 32
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("who", "for_user", "data", "error", "message"),
    [
        ("appr2", "appr1", lambda k: public_file(k), PermissionDeniedError,
         "may not user.manage"),
        ("appr1", "appr1", lambda k: private_file(k), ValidationError,
         "is a private key file"),
        ("appr1", "appr1", lambda k: public_file(k, role="release"), ValidationError,
         "holds a release key; register an approver key"),
        ("appr1", "appr1", lambda k: b"{not json", ValidationError, "<upload>"),
        ("appr1", "appr1", lambda k: b" " * 20000, ValidationError, "at most 16384"),
        ("appr1", "appr1", _forged_id, ValidationError, "key_id"),
    ],
)
def test_refused_registrations_change_nothing(
    world: World, who: str, for_user: str, data: object, error: type[Exception], message: str
) -> None:
    before = _state(world)
    key = SigningKey.generate()
    with pytest.raises(error, match=message):
        register_key(world.ctx(who), for_user, data(key))  # type: ignore[operator]
    world.session.rollback()
    assert _state(world) == before


def test_a_key_belongs_to_one_user_and_admins_register_for_anyone(world: World) -> None:
    key = SigningKey.generate()
    register_key(world.ctx("admin"), "appr1", public_file(key))
    before = _state(world)
    with pytest.raises(ConflictError, match="registered already: another user's"):
        register_key(world.ctx("appr2"), "appr2", public_file(key))
    with pytest.raises(ConflictError, match="registered already: yours"):
        register_key(world.ctx("appr1"), "appr1", public_file(key))
    assert _state(world) == before
    assert [k.key_id for k in keys_of(world.ctx("view"), "appr1")] == [key.key_id]
    with pytest.raises(PermissionDeniedError):
        revoke_key(world.ctx("appr2"), key.key_id, reason="not mine")
    assert _state(world) == before
