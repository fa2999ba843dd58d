"""First-login creation and group -> role sync (no IdP needed: plain SQLite session)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, RoleGrant, make_engine, make_session_factory
from hub.errors import ConflictError, PermissionDeniedError, ValidationError
from hub.migrate import upgrade
from hub.services.users import bootstrap_admin, get_user
from web.config import AttributeNames
from web.provisioning import SamlIdentity, identity_from_attributes, sync_saml_user

GROUP_ROLES = {"developers": ("developer",), "approvers": ("approver",), "ops": ("operator",)}


def clock() -> datetime:
    return datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = make_engine("sqlite://")
    upgrade(engine)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def ident(name: str = "alice", *groups: str) -> SamlIdentity:
    return SamlIdentity(name, f"{name}@example.org", name.title(), tuple(groups))


def saml_roles(session: Session, name: str) -> set[str]:
    return {g.role for g in get_user(session, name).grants if g.granted_by == "saml"}


def test_identity_from_attributes_maps_and_normalises() -> None:
    attrs = {
        "uid": ["Alice"],
        "mail": ["a@example.org"],
        "cn": ["Alice A"],
        "memberOf": ["ops", " ops", "developers", ""],
    }
    names = AttributeNames(username="uid", email="mail", display_name="cn", groups="memberOf")
    assert identity_from_attributes(attrs, "ignored", names) == SamlIdentity(
        "alice", "a@example.org", "Alice A", ("developers", "ops")
    )


def test_identity_falls_back_to_nameid_and_needs_a_name() -> None:
    assert identity_from_attributes({}, "Bob", AttributeNames()).username == "bob"
    with pytest.raises(ValidationError, match="no 'uid' attribute"):
        identity_from_attributes({}, None, AttributeNames())


def test_roles_follow_groups_and_manual_grants_stay(session: Session) -> None:
    sync_saml_user(session, clock, ident("alice", "developers", "ops"), GROUP_ROLES)
    assert saml_roles(session, "alice") == {"developer", "operator"}
    user = get_user(session, "alice")
    session.add(RoleGrant(user=user, role="auditor", granted_at=clock(), granted_by="root"))
    session.flush()
    sync_saml_user(session, clock, ident("alice", "approvers"), GROUP_ROLES)
    assert saml_roles(session, "alice") == {"approver"}
    assert {g.role for g in get_user(session, "alice").grants} == {"approver", "auditor"}
    actions = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert actions == [
        "user.create",
        "user.grant",
        "user.grant",
        "user.revoke",
        "user.revoke",
        "user.grant",
    ]


def test_profile_changes_are_applied_and_audited(session: Session) -> None:
    sync_saml_user(session, clock, ident("alice"), GROUP_ROLES)
    sync_saml_user(session, clock, SamlIdentity("alice", "new@example.org", "A", ()), GROUP_ROLES)
    user = get_user(session, "alice")
    assert (user.email, user.display_name) == ("new@example.org", "A")
    assert session.scalars(select(AuditEvent.action)).all()[-1] == "user.update"


def test_saml_login_cannot_take_over_a_local_user(session: Session) -> None:
    bootstrap_admin(session, clock, "root")
    with pytest.raises(ConflictError, match="local user"):
        sync_saml_user(session, clock, ident("root", "developers"), GROUP_ROLES)
    assert {g.role for g in get_user(session, "root").grants} == {"admin"}


def test_deactivated_user_is_refused(session: Session) -> None:
    sync_saml_user(session, clock, ident("alice", "developers"), GROUP_ROLES)
    get_user(session, "alice").is_active = False
    with pytest.raises(PermissionDeniedError, match="deactivated"):
        sync_saml_user(session, clock, ident("alice", "developers"), GROUP_ROLES)


def test_bad_user_name_is_refused(session: Session) -> None:
    with pytest.raises(ValidationError):
        sync_saml_user(session, clock, ident("alice smith"), GROUP_ROLES)
