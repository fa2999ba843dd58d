"""Personal API tokens: issued hashed with a prefix, scoped, expiring, revocable; every
refusal names the rule and changes nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from hub.db import ApiToken, AuditEvent, make_engine
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.migrate import upgrade
from hub.services.tokens import (
    MAX_ACTIVE_TOKENS,
    TokenRefusedError,
    authenticate,
    issue_token,
    own_tokens,
    require_scope,
    revoke_token,
    token_state,
)
from hub.services.users import bootstrap_admin, set_active
from tests.hub.conftest import FakeClock, World, make_keys, seed_people

MAX_DAYS = 90


def _events(world: World, action: str) -> list[AuditEvent]:
    return list(world.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _count(world: World) -> tuple[int, int]:
    s = world.session
    return (s.scalar(select(func.count()).select_from(ApiToken)) or 0,
            s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_issue_stores_prefix_and_hash_never_the_secret(world: World) -> None:
    issued = issue_token(world.ctx("dev"), "ci-billing", ["releases:write", "read"], 30,
                         max_days=MAX_DAYS)
    world.session.commit()
    token = issued.token
    assert issued.secret.startswith(token.prefix + "_")
    assert token.prefix.startswith("tgp_") and len(token.prefix) == 14
    assert token.scopes == ["read", "releases:write"]  # canonical order
    assert token.expires_at == world.clock() + timedelta(days=30)
    assert token.token_hash != issued.secret and len(token.token_hash) == 64
    # The secret part is nowhere in the database (every text column of every table).
    secret_part = issued.secret.split("_", 2)[2]
    dump = "\n".join(str(row) for table in ("api_tokens", "audit_events")
                     for row in world.session.execute(text(f"SELECT * FROM {table}")))
    assert secret_part not in dump
    (event,) = _events(world, "token.issue")
    assert event.actor == "dev" and event.object_id == token.prefix
    assert json.loads(event.details)["scopes"] == ["read", "releases:write"]


@pytest.mark.parametrize(("name", "scopes", "days", "rule"), [
    ("", ["read"], 30, "name must be 1-100"),
    ("x" * 101, ["read"], 30, "name must be 1-100"),
    ("tab\there", ["read"], 30, "printable"),
    ("ci", [], 30, "at least one scope"),
    ("ci", ["read", "root"], 30, "unknown scope 'root'"),
    ("ci", ["read"], 0, "expiry must be 1-90 days (hub.toml [web] api_token_max_days), not 0"),
    ("ci", ["read"], 91, "expiry must be 1-90 days (hub.toml [web] api_token_max_days), not 91"),
])
def test_issue_refusals_name_the_rule_and_change_nothing(
    world: World, name: str, scopes: list[str], days: int, rule: str
) -> None:
    before = _count(world)
    with pytest.raises(ValidationError, match=rule.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        issue_token(world.ctx("dev"), name, scopes, days, max_days=MAX_DAYS)
    world.session.rollback()
    assert _count(world) == before


def test_issue_needs_an_active_person_and_bounds_active_tokens(world: World) -> None:
    with pytest.raises(PermissionDeniedError, match="signed-in, active person"):
        issue_token(world.ctx(None), "x", ["read"], 1, max_days=MAX_DAYS)
    issue_token(world.ctx("dev"), "ci", ["read"], 1, max_days=MAX_DAYS)
    with pytest.raises(ConflictError, match="already has an active API token named 'ci'"):
        issue_token(world.ctx("dev"), "ci", ["read"], 1, max_days=MAX_DAYS)
    for i in range(MAX_ACTIVE_TOKENS - 1):
        issue_token(world.ctx("dev"), f"t{i}", ["read"], 1, max_days=MAX_DAYS)
    before = _count(world)
    with pytest.raises(ConflictError, match=f"the most allowed \\({MAX_ACTIVE_TOKENS}\\)"):
        issue_token(world.ctx("dev"), "one-more", ["read"], 1, max_days=MAX_DAYS)
    assert _count(world) == before


def test_authenticate_accepts_the_token_and_records_last_use(world: World) -> None:
    issued = issue_token(world.ctx("dev"), "ci", ["read"], 1, max_days=MAX_DAYS)
    world.clock.advance(60)
    token, user = authenticate(world.session, world.clock(), issued.secret)
    assert user.username == "dev" and token.id == issued.token.id
    assert token.last_used_at == world.clock()


def _tamper(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(("case", "message", "known"), [
    ("malformed", "malformed", False),
    ("unknown", "is unknown", False),
    ("wrong-secret", "the secret does not match", True),
    ("revoked", "was revoked at", True),
    ("expired", "expired at", True),
    ("owner-deactivated", "its owner dev is deactivated", True),
])
def test_authenticate_refuses(world: World, case: str, message: str, known: bool) -> None:
    issued = issue_token(world.ctx("dev"), "ci", ["read"], 1, max_days=MAX_DAYS)
    presented = issued.secret
    if case == "malformed":
        presented = "Bearer nonsense"
    elif case == "unknown":
        presented = "tgp_0000000000_" + "a" * 43
    elif case == "wrong-secret":
        presented = _tamper(issued.secret)
    elif case == "revoked":
        revoke_token(world.ctx("dev"), issued.token.id)
    elif case == "expired":
        world.clock.advance(86400)
    elif case == "owner-deactivated":
        set_active(world.ctx("admin"), "dev", False)
    world.session.commit()
    with pytest.raises(TokenRefusedError, match=message) as caught:
        authenticate(world.session, world.clock(), presented)
    assert (caught.value.token is not None) == known
    assert issued.secret.split("_", 2)[2] not in str(caught.value)
    world.session.refresh(issued.token)
    assert issued.token.last_used_at is None


def test_scopes_limit_and_admin_allows_all(world: World) -> None:
    reader = issue_token(world.ctx("dev"), "r", ["read"], 1, max_days=MAX_DAYS).token
    admin = issue_token(world.ctx("dev"), "a", ["admin"], 1, max_days=MAX_DAYS).token
    require_scope(reader, "read")
    with pytest.raises(PermissionDeniedError, match="lacks the scope 'approve'; it has read"):
        require_scope(reader, "approve")
    for scope in ("read", "releases:write", "approve", "deploy"):
        require_scope(admin, scope)


def test_revoke_by_owner_or_admin_only(world: World) -> None:
    issued = issue_token(world.ctx("dev"), "ci", ["read"], 1, max_days=MAX_DAYS)
    world.session.commit()
    before = _count(world)
    with pytest.raises(NotFoundError, match=f"API token {issued.token.id} does not exist"):
        revoke_token(world.ctx("dev2"), issued.token.id)  # someone else's: like none at all
    world.session.rollback()
    assert _count(world) == before and issued.token.revoked_at is None
    revoke_token(world.ctx("admin"), issued.token.id)
    assert token_state(issued.token, world.clock()) == "revoked"
    assert issued.token.revoked_by == "admin"
    with pytest.raises(ConflictError, match="already revoked"):
        revoke_token(world.ctx("dev"), issued.token.id)
    (event,) = _events(world, "token.revoke")
    assert event.actor == "admin" and json.loads(event.details)["owner"] == "dev"
    assert [t.name for t in own_tokens(world.ctx("dev"))] == ["ci"]
    assert own_tokens(world.ctx("dev2")) == []


@pytest.mark.parametrize("server", ["pg_db", "mysql_db"])
def test_tokens_on_postgresql_and_mariadb(request: pytest.FixtureRequest, server: str,
                                          tmp_path: Path) -> None:
    """Issue, authenticate (last use written), expire and revoke on the real servers."""
    engine = make_engine(request.getfixturevalue(server))
    try:
        upgrade(engine)
        with Session(engine, expire_on_commit=False) as session:
            clock = FakeClock()
            bootstrap_admin(session, clock, "admin")
            world = World(session, clock, make_keys(), tmp_path / "releases")
            seed_people(world.ctx("admin"), {"dev": ("developer",)})
            issued = issue_token(world.ctx("dev"), "ci", ["releases:write", "read"], 2,
                                 max_days=MAX_DAYS)
            session.commit()
            clock.advance(3600)
            token, user = authenticate(session, clock(), issued.secret)
            session.commit()
            session.expire_all()
            assert (user.username, token.scopes) == ("dev", ["read", "releases:write"])
            assert token.last_used_at == clock()
            clock.advance(2 * 86400)
            with pytest.raises(TokenRefusedError, match="expired at"):
                authenticate(session, clock(), issued.secret)
            revoke_token(world.ctx("admin"), issued.token.id)
            session.commit()
            with pytest.raises(TokenRefusedError, match="was revoked at"):
                authenticate(session, clock(), issued.secret)
    finally:
        engine.dispose()
