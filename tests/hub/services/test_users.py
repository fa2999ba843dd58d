"""Permission matrix per role, grants per environment, user management."""

from __future__ import annotations

import pytest

from hub.db import Environment, RoleGrant, User
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.services.environments import get_environment
from hub.services.users import (
    ACTIONS,
    can,
    create_user,
    grant_role,
    require,
    revoke_role,
    set_active,
)
from tests.hub.conftest import World

ROLE_ACTIONS = {
    "viewer": {"view"},
    "developer": {"view", "product.create", "release.create", "release.submit"},
    "operator": {
        "view",
        "agent.enroll",
        "agent.revoke",
        "deployment.queue",
        "deployment.update",
        "bundle.export",
        "result.import",
        "audit.checkpoint",
        "channel.promote",
        "channel.recall",
    },
    "approver": {"view", "release.approve", "channel.approve"},
    "auditor": {"view", "audit.read", "audit.verify", "audit.export", "audit.checkpoint"},
    "admin": set(ACTIONS),
}


@pytest.mark.parametrize("role", sorted(ROLE_ACTIONS))
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_permission_matrix_global_grant(role: str, action: str) -> None:
    # can() looks only at the user's grants: transient objects, no database needed.
    user = User(username="subject", is_active=True)
    user.grants.append(RoleGrant(role=role, environment_id=None))
    prod = Environment(id=7, name="prod")
    expected = action in ROLE_ACTIONS[role]
    assert can(user, action) is expected
    assert can(user, action, prod) is expected
    if not expected:
        with pytest.raises(PermissionDeniedError, match=f"subject may not {action}"):
            require(user, action)


def test_matrix_through_the_database(world: World) -> None:
    """Grants stored and loaded back give the same answers as the table."""
    admin = world.ctx("admin")
    for role, allowed in ROLE_ACTIONS.items():
        create_user(admin, f"u-{role}")
        grant_role(admin, f"u-{role}", role)
        user = world.user(f"u-{role}")
        assert {a for a in ACTIONS if can(user, a)} == allowed


@pytest.mark.parametrize("action", ["deployment.queue", "agent.enroll", "bundle.export"])
def test_environment_grant_applies_only_there(world: World, action: str) -> None:
    admin = world.ctx("admin")
    create_user(admin, "siteop")
    grant_role(admin, "siteop", "operator", "test")
    user = world.user("siteop")
    test_env = get_environment(world.session, "test")
    prod_env = get_environment(world.session, "prod")
    assert can(user, action, test_env)
    assert not can(user, action, prod_env)
    assert not can(user, action)  # environment-less actions need a global grant
    with pytest.raises(PermissionDeniedError, match=r"siteop may not .* in environment prod"):
        require(user, action, prod_env)


def test_deactivated_user_can_do_nothing(world: World) -> None:
    user = world.user("admin")
    user.is_active = False
    assert not can(user, "view")
    with pytest.raises(PermissionDeniedError, match="deactivated"):
        require(user, "view")


def test_only_admin_grants(world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        grant_role(world.ctx("op"), "dev", "admin")
    assert not can(world.user("dev"), "user.manage")


def test_grant_rules(world: World) -> None:
    admin = world.ctx("admin")
    with pytest.raises(ValidationError, match="unknown role"):
        grant_role(admin, "dev", "superuser")
    with pytest.raises(ConflictError, match="already has role developer globally"):
        grant_role(admin, "dev", "developer")
    with pytest.raises(NotFoundError):
        grant_role(admin, "nobody", "viewer")
    with pytest.raises(NotFoundError):
        grant_role(admin, "dev", "viewer", "nowhere")
    with pytest.raises(ConflictError, match="last global admin"):
        revoke_role(admin, "admin", "admin")
    revoke_role(admin, "dev", "developer")
    assert not can(world.user("dev"), "release.create")


def test_user_names_are_checked(world: World) -> None:
    admin = world.ctx("admin")
    with pytest.raises(ValidationError):
        create_user(admin, "Bad Name")
    with pytest.raises(ConflictError):
        create_user(admin, "dev")


def test_deactivate_and_reactivate(world: World) -> None:
    admin = world.ctx("admin")
    with pytest.raises(ConflictError, match="yourself"):
        set_active(admin, "admin", False)
    with pytest.raises(PermissionDeniedError):
        set_active(world.ctx("dev"), "op", False)
    set_active(admin, "op", False)
    assert not can(world.user("op"), "deployment.queue")
    set_active(admin, "op", True)
    assert can(world.user("op"), "deployment.queue")


def test_set_password_rules_and_sessions(world: World) -> None:
    """An admin sets anyone's password, a user their own, nobody else anyone's; the
    length is checked; the user's web sessions end; sign-out-everywhere is admin only."""
    from datetime import timedelta

    from hub.db import WebSession
    from hub.services.users import open_sessions, set_password, sign_out_everywhere

    dev = world.user("dev")
    now = world.clock()
    for sid in ("a" * 64, "b" * 64):
        world.session.add(WebSession(id=sid, user_id=dev.id, method="local", created_at=now,
                                     last_seen_at=now, expires_at=now + timedelta(hours=1)))
    world.session.flush()
    with pytest.raises(ValidationError, match="12 to 1024 characters, not 5"):
        set_password(world.ctx("admin"), "dev", "short")
    with pytest.raises(PermissionDeniedError):
        set_password(world.ctx("dev2"), "dev", "twelve chars or more")
    with pytest.raises(PermissionDeniedError):
        sign_out_everywhere(world.ctx("dev"), "dev")
    assert dev.password_hash is None and open_sessions(world.session, dev) == 2
    set_password(world.ctx("dev"), "dev", "twelve chars or more")
    assert dev.password_hash is not None and open_sessions(world.session, dev) == 0
    set_password(world.ctx("admin"), "dev2", "another long password")
    assert sign_out_everywhere(world.ctx("admin"), "dev") == 0


def test_a_global_refusal_names_the_environments_a_scoped_grant_covers(world: World) -> None:
    admin = world.ctx("admin")
    create_user(admin, "appr-test")
    grant_role(admin, "appr-test", "approver", "test")
    user = world.user("appr-test")
    with pytest.raises(PermissionDeniedError) as caught:
        require(user, "release.approve")
    assert str(caught.value) == (
        "appr-test may not release.approve: it needs one of the roles admin, approver "
        "(appr-test has approver only in environment test; this needs a global grant)")
    assert can(user, "release.approve", get_environment(world.session, "test"))
