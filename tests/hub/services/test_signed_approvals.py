"""Signed approvals at the hub: an envelope made with the approver's personal key (CLI,
``keys approve`` file, or a browser signature over the bytes the hub serves) is stored only
when a key registered to that user signed it, for this release's content hash, current,
and in scopes the user may approve; everything else is refused and nothing changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import Approval, AuditEvent, Release
from hub.errors import (
    ConflictError,
    PermissionDeniedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services.approval_rules import check_rule
from hub.services.approvals import (
    approval_request,
    approve_release,
    approve_with_browser_signature,
    approve_with_signature,
    envelopes_for,
)
from hub.services.approvers import revoke_key
from hub.services.environments import get_environment
from hub.services.users import grant_role
from signing.approvals import ApprovalDocument, sign_approval, sign_attestation
from signing.envelope import TYPE_APPROVAL, Envelope, Signature, pae
from signing.keys import SigningKey
from tests.hub.conftest import World
from tests.hub.services.approval_helpers import register, submitted


def _state(world: World) -> tuple[int, int, str]:
    world.session.expire_all()
    events = world.session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    approvals = world.session.scalar(select(func.count()).select_from(Approval)) or 0
    state = world.session.scalar(select(Release.state)) or ""
    return events, approvals, state


def _doc(world: World, rel: Release, who: str = "appr1", **kw: object) -> ApprovalDocument:
    return replace(approval_request(world.ctx(who), rel, environment="prod").document, **kw)


def test_cli_signed_approval_is_stored_as_received(
    world: World, release_dir: Callable[..., Path]
) -> None:
    key = SigningKey.generate()
    register(world, "appr1", key)
    rel = submitted(world, release_dir)
    request = approval_request(world.ctx("appr1"), rel, environment="prod", comment="ok",
                               valid_for=timedelta(days=7))
    assert request.message == pae(TYPE_APPROVAL, request.payload)
    envelope = sign_approval(request.document, key)
    (row,) = approve_with_signature(world.ctx("appr1"), rel, envelope)
    assert row.envelope == envelope and row.key_id == key.key_id
    assert row.environment is not None and row.environment.name == "prod"
    assert row.expires_at == world.clock.now + timedelta(days=7)
    assert rel.state == "approved"
    prod = get_environment(world.session, "prod")
    assert envelopes_for(rel, prod) == [envelope]
    assert envelopes_for(rel, get_environment(world.session, "test")) == []
    event = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "release.approve").order_by(AuditEvent.seq.desc())).first()
    assert event is not None and event.action == "release.approve"
    assert key.key_id in event.details and '"environments":["prod"]' in event.details


def test_star_approval_is_global_and_upgrades_an_unsigned_one(
    world: World, release_dir: Callable[..., Path]
) -> None:
    key = SigningKey.generate()
    register(world, "appr2", key)
    rel = submitted(world, release_dir)
    approve_release(world.ctx("appr2"), rel, comment="looked at it")
    request = approval_request(world.ctx("appr2"), rel)  # no environment: "*"
    assert request.document.environments == ("*",)
    (row,) = approve_with_signature(world.ctx("appr2"), rel, sign_approval(request.document,
                                                                           key))
    assert row.environment is None and row.key_id == key.key_id
    assert world.session.scalar(select(func.count()).select_from(Approval)) == 1
    with pytest.raises(ConflictError, match="already gave a signed approval"):
        approve_with_signature(world.ctx("appr2"), rel, sign_approval(request.document, key))


def test_browser_signature_over_the_served_bytes(
    world: World, release_dir: Callable[..., Path]
) -> None:
    old, key = SigningKey.generate(), SigningKey.generate()
    register(world, "appr1", old)
    register(world, "appr1", key)
    rel = submitted(world, release_dir)
    request = approval_request(world.ctx("appr1"), rel, environment="prod")
    (row,) = approve_with_browser_signature(world.ctx("appr1"), rel, request.payload,
                                            key.sign(request.message))
    assert row.key_id == key.key_id  # the hub found which registered key signed


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unregistered key", "not an approver key registered to appr1"),
        ("another user's key", "not an approver key registered to appr1"),
        ("revoked key", "not an approver key registered to appr1 \\(or it was revoked\\)"),
        ("bad signature", "does not verify"),
        ("other content hash", "not release hello 1.0.0"),
        ("other approver named", "names approver 'appr2', not appr1"),
        ("expired", "expired at"),
        ("dated in the future", "in the future"),
        ("attestation", "hub attestation, not a personal approval"),
        ("not an envelope", "not an approval file"),
        ("two signatures", "exactly one signature"),
    ],
)
def test_refused_signed_approvals_change_nothing(
    world: World, release_dir: Callable[..., Path], case: str, message: str
) -> None:
    mine, theirs = SigningKey.generate(), SigningKey.generate()
    register(world, "appr1", mine)
    register(world, "appr2", theirs)
    rel = submitted(world, release_dir)
    doc = _doc(world, rel)
    now = int(world.clock.now.timestamp())
    envelope = {
        "unregistered key": lambda: sign_approval(doc, SigningKey.generate()),
        "another user's key": lambda: sign_approval(doc, theirs),
        "revoked key": lambda: sign_approval(doc, mine),
        "bad signature": lambda: Envelope(TYPE_APPROVAL, doc.to_bytes(),
                                          (Signature(mine.key_id, mine.sign(b"other")),)
                                          ).to_bytes(),
        "other content hash": lambda: sign_approval(replace(doc, content_hash="ab" * 32), mine),
        "other approver named": lambda: sign_approval(replace(doc, approver="appr2"), mine),
        "expired": lambda: sign_approval(replace(doc, at=now - 7200, expires=now - 1), mine),
        "dated in the future": lambda: sign_approval(
            replace(doc, at=now + 301, expires=now + 9000), mine),
        "attestation": lambda: sign_attestation(_attestation(doc), [mine]),
        "not an envelope": lambda: b"{}",
        "two signatures": lambda: _two_signatures(doc, mine),
    }[case]()
    if case == "revoked key":
        revoke_key(world.ctx("appr1"), mine.key_id, reason="lost")
        world.session.commit()
    before = _state(world)
    with pytest.raises(ValidationError, match=message):
        approve_with_signature(world.ctx("appr1"), rel, envelope)
    world.session.rollback()
    assert _state(world) == before


def _attestation(doc: ApprovalDocument):  # type: ignore[no-untyped-def]
    from signing.approvals import AttestationDocument, AttestedApprover

    return AttestationDocument(doc.product, doc.version, doc.content_hash, doc.environments,
                               (AttestedApprover(doc.approver, "dba", doc.at),), doc.at,
                               doc.expires)


def _two_signatures(doc: ApprovalDocument, key: SigningKey) -> bytes:
    from signing.envelope import sign_envelope

    return sign_envelope(TYPE_APPROVAL, doc.to_bytes(), [key, SigningKey.generate()])


def test_scope_rules_apply_to_signed_approvals(
    world: World, release_dir: Callable[..., Path]
) -> None:
    key, author_key = SigningKey.generate(), SigningKey.generate()
    register(world, "appr-prod", key)
    register(world, "dev", author_key)
    grant_role(world.ctx("admin"), "dev", "approver")
    rel = submitted(world, release_dir)
    before = _state(world)
    # approver only in prod: a "*" approval needs a global grant
    star = replace(approval_request(world.ctx("appr-prod"), rel, environment="prod").document,
                   environments=("*",))
    with pytest.raises(PermissionDeniedError):
        approve_with_signature(world.ctx("appr-prod"), rel, sign_approval(star, key))
    # prod and test in one file: refused as a whole (no approval for prod either)
    both = replace(star, environments=("prod", "test"))
    with pytest.raises(PermissionDeniedError, match="in environment test"):
        approve_with_signature(world.ctx("appr-prod"), rel, sign_approval(both, key))
    # the author never approves, signed or not
    own = replace(star, approver="dev")
    with pytest.raises(SeparationOfDutiesError):
        approve_with_signature(world.ctx("dev"), rel, sign_approval(own, author_key))
    with pytest.raises(ValidationError, match="does not verify with any approver key"):
        approve_with_browser_signature(world.ctx("appr-prod"), rel, star.to_bytes(),
                                       SigningKey.generate().sign(b"x"))
    world.session.rollback()
    assert _state(world) == before


def test_a_revoked_key_stops_counting_at_the_hub(
    world: World, release_dir: Callable[..., Path]
) -> None:
    key = SigningKey.generate()
    register(world, "appr1", key)
    rel = submitted(world, release_dir)
    request = approval_request(world.ctx("appr1"), rel, environment="test")
    approve_with_signature(world.ctx("appr1"), rel, sign_approval(request.document, key))
    test = get_environment(world.session, "test")
    assert check_rule(rel, test).met
    revoke_key(world.ctx("appr1"), key.key_id, reason="laptop stolen")
    check = check_rule(rel, test)
    assert not check.met
    assert f"appr1: signed by revoked key {key.key_id[:16]}" in check.summary()
