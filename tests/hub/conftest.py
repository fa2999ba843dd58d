"""Fixtures for the hub's tests: a migrated in-memory SQLite database, an injected clock,
the hub's keys, users with roles, and release directories."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from hub.db import RoleGrant, User, make_engine
from hub.migrate import upgrade
from hub.services.context import HubKeys, ServiceContext
from hub.services.environments import create_environment
from hub.services.users import bootstrap_admin, create_user, get_user, grant_role
from signing.keys import SigningKey
from signing.roots import KeyEntry, RootDocument, sign_root


class FakeClock:
    """An injected clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Keys:
    root: SigningKey
    release: SigningKey
    audit: SigningKey
    hub: HubKeys


def make_keys(hub_id: str = "hub-test") -> Keys:
    root, release, audit_key = (SigningKey.generate() for _ in range(3))
    issued = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    doc = RootDocument(
        hub_id=hub_id,
        version=1,
        issued=issued,
        expires=issued + 10 * 365 * 86400,
        keys={k.key_id: KeyEntry(k.public) for k in (root, release, audit_key)},
        roles={
            "root": ((root.key_id,), 1),
            "release": ((release.key_id,), 1),
            "audit": ((audit_key.key_id,), 1),
        },
    )
    envelope = sign_root(doc, [root])
    return Keys(root, release, audit_key, HubKeys(envelope, audit_key, release))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> Keys:
    return make_keys()


_MIGRATED: sqlite3.Connection | None = None  # see migrated_template()


def migrated_template() -> sqlite3.Connection:
    """An in-memory database that :func:`hub.migrate.upgrade` brought to head, made once per
    test process: running every Alembic revision costs about 0.1 s of CPU, which the
    ``engine`` fixture would pay for each of several hundred tests."""
    global _MIGRATED
    if _MIGRATED is None:
        eng = make_engine("sqlite://")
        try:
            upgrade(eng)
            template = sqlite3.connect(":memory:", check_same_thread=False)
            raw = eng.raw_connection()
            try:
                raw.driver_connection.backup(template)  # type: ignore[union-attr]
            finally:
                raw.close()
        finally:
            eng.dispose()
        _MIGRATED = template
    return _MIGRATED


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A fresh in-memory hub database at head: :func:`migrated_template` copied (SQLite's
    backup API) into the engine's one connection (``StaticPool``), so it is the same
    database ``upgrade`` makes (tests/hub/test_migrations.py runs the migrations themselves)."""
    eng = make_engine("sqlite://")
    raw = eng.raw_connection()
    try:
        migrated_template().backup(raw.driver_connection)  # type: ignore[arg-type]
    finally:
        raw.close()
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


#: user name -> global roles (``role@env`` for an environment grant)
PEOPLE: dict[str, tuple[str, ...]] = {
    "dev": ("developer",),
    "dev2": ("developer",),
    "appr1": ("approver",),
    "appr2": ("approver",),
    "appr-prod": ("approver@prod",),
    "op": ("operator",),
    "aud": ("auditor",),
    "view": ("viewer",),
}


@dataclass
class World:
    session: Session
    clock: FakeClock
    keys: Keys
    releases_dir: Path | None

    def ctx(self, username: str | None = "admin") -> ServiceContext:
        user = get_user(self.session, username) if username is not None else None
        return ServiceContext(self.session, self.clock, user, self.keys.hub, self.releases_dir)

    def user(self, username: str) -> User:
        return get_user(self.session, username)


@pytest.fixture
def world(session: Session, clock: FakeClock, keys: Keys, tmp_path: Path) -> World:
    """admin + the :data:`PEOPLE`, environments ``test`` (1 approval) and ``prod`` (2)."""
    bootstrap_admin(session, clock, "admin")
    w = World(session, clock, keys, tmp_path / "releases")
    seed_people(w.ctx("admin"), PEOPLE)
    session.commit()
    return w


@contextlib.contextmanager
def world_on(url: str, clock: FakeClock, keys: Keys, tmp_path: Path) -> Iterator[World]:
    """The ``world`` fixture's World on the database at ``url`` (migrated here; its engine
    disposed of at the end): for tests that run on every database the hub supports."""
    engine = make_engine(url)
    upgrade(engine)
    try:
        with Session(engine, expire_on_commit=False) as session:
            bootstrap_admin(session, clock, "admin")
            w = World(session, clock, keys, tmp_path / "releases")
            seed_people(w.ctx("admin"), PEOPLE)
            session.commit()
            yield w
    finally:
        engine.dispose()


def seed_people(admin: ServiceContext, people: Mapping[str, tuple[str, ...]]) -> None:
    """Environments ``test`` (1 approval) and ``prod`` (2), then ``people`` with their
    grants (``role`` global, ``role@env`` for one environment). The caller commits."""
    create_environment(admin, "test")
    create_environment(admin, "prod", required_approvals=2)
    for name, grants in people.items():
        create_user(admin, name)
        for grant in grants:
            role, _, env = grant.partition("@")
            grant_role(admin, name, role, env or None)


RELEASE_TOML = """format = 1

[release]
product = "{product}"
version = "{version}"
description = "{description}"
{steps}
"""

STEP = """
[[steps]]
name = "{name}"
kind = "shell"
script = "{script}"
"""


def write_release(
    base: Path,
    product: str = "hello",
    version: str = "1.0.0",
    steps: dict[str, str] | None = None,
    description: str = "says hello",
) -> Path:
    """A release directory with shell steps ``{step name: script content}``."""
    steps = steps or {"greet": "echo hello\n"}
    root = base / f"{product}-{version}"
    root.mkdir(parents=True)
    text = ""
    for i, (name, content) in enumerate(steps.items()):
        script = f"step{i}.sh"
        (root / script).write_text(content)
        text += STEP.format(name=name, script=script)
    (root / "release.toml").write_text(
        RELEASE_TOML.format(product=product, version=version, description=description, steps=text)
    )
    return root


@pytest.fixture
def release_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: object) -> Path:
        return write_release(tmp_path / "src", **kwargs)  # type: ignore[arg-type]

    return make


__all__ = ["PEOPLE", "FakeClock", "Keys", "RoleGrant", "World", "make_keys", "seed_people",
           "write_release"]


def write_undoable_release(base: Path, product: str = "hello", version: str = "2.0.0") -> Path:
    """A release directory with one shell step that has a rollback script (so a rollback
    release can be made of its deployments)."""
    src = base / f"undoable-{product}-{version}"
    src.mkdir(parents=True)
    (src / "up.sh").write_text("echo up\n")
    (src / "down.sh").write_text("echo down\n")
    (src / "release.toml").write_text(
        f'format = 1\n\n[release]\nproduct = "{product}"\nversion = "{version}"\n'
        'description = "undoable"\n\n[[steps]]\nname = "up"\nkind = "shell"\n'
        'script = "up.sh"\nrollback = "down.sh"\n')
    return src
