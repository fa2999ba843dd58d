"""The audit log in the database: appends, tampering behind the hub's back, checkpoints."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from hub.audit_chain import GENESIS_HASH, compute_hash, verify_export_lines
from hub.db import AuditCheckpoint, make_engine
from hub.errors import AuditError, ConfigError, PermissionDeniedError
from hub.migrate import upgrade
from hub.services import audit
from hub.services.context import HubKeys
from signing.roots import TrustedRoot
from tests.hub.conftest import World


def fill(world: World, n: int = 10) -> None:
    for i in range(n):
        world.clock.advance(1)
        audit.append_event(
            world.session, world.clock(), "tester", "test.act", "thing", str(i), {"i": i}
        )
    world.session.commit()


def problems(world: World) -> list[str]:
    return [p.message for p in audit.verify_database(world.session, world.keys.hub).problems]


def sql(world: World, statement: str, **params: object) -> None:
    world.session.execute(text(statement), params)
    world.session.commit()


def test_events_are_chained_and_gap_free(world: World) -> None:
    fill(world)
    events = list(audit.iter_events(world.session, batch=3))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    report = audit.verify_database(world.session, world.keys.hub)
    assert report.ok, report.summary()
    assert report.events == len(events)


def test_rolled_back_action_leaves_no_gap(world: World) -> None:
    fill(world, 2)
    audit.append_event(world.session, world.clock(), "x", "a", "t", "1", {})
    world.session.rollback()
    fill(world, 2)
    assert audit.verify_database(world.session, world.keys.hub).ok


def test_details_must_be_strict_json(world: World) -> None:
    with pytest.raises(AuditError, match="not strict JSON"):
        audit.append_event(world.session, world.clock(), "x", "a", "t", "1", {"f": 1.5})


def test_edited_row_is_named(world: World) -> None:
    fill(world)
    sql(world, "UPDATE audit_events SET details = :d WHERE seq = 15", d='{"i":999}')
    (msg,) = problems(world)
    assert msg.startswith("event 15 was edited: stored hash ")


def test_deleted_row_is_named(world: World) -> None:
    fill(world)
    sql(world, "DELETE FROM audit_events WHERE seq = 12")
    assert problems(world) == ["event 12 is missing"]


def test_reordered_rows_are_named(world: World) -> None:
    fill(world)
    sql(world, "UPDATE audit_events SET seq = -1 WHERE seq = 14")
    sql(world, "UPDATE audit_events SET seq = 14 WHERE seq = 15")
    sql(world, "UPDATE audit_events SET seq = 15 WHERE seq = -1")
    assert problems(world) == ["events 14 and 15 are out of order"]


def test_inserted_row_is_named(world: World) -> None:
    fill(world)
    prev = world.session.execute(text("SELECT hash FROM audit_events WHERE seq = 12")).scalar()
    sql(world, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 13")
    sql(world, "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000")
    at = "2026-11-23T09:00:00.000000Z"
    digest = compute_hash(13, at, "mallory", "release.approve", "release", "x", {}, str(prev))
    sql(
        world,
        "INSERT INTO audit_events (seq, at, actor, action, object_type, object_id, details, "
        "prev_hash, hash) VALUES (13, :at, 'mallory', 'release.approve', 'release', 'x', '{}', "
        ":prev, :hash)",
        at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC).replace(tzinfo=None),
        prev=prev,
        hash=digest,
    )
    assert problems(world) == [
        "event 13 was inserted: event 14 links past it to event 12",
        "the log goes on past its head (event 29) to event 30: rows were added without the hub",
    ]


def test_checkpoint_verified_and_tampered_checkpoint_refused(world: World) -> None:
    fill(world)
    cp = audit.write_checkpoint(world.ctx("aud"))
    world.session.commit()
    report = audit.verify_database(world.session, world.keys.hub)
    assert report.ok and report.checkpoints_checked == 1
    # Truncating the log below the checkpoint is found.
    sql(world, "DELETE FROM audit_events WHERE seq >= :s", s=cp.seq - 1)
    assert any("log truncated" in m for m in problems(world))
    # A checkpoint whose signature was tampered with is refused and named.
    env = bytearray(cp.envelope)
    env[-10] = ord("A") if env[-10] != ord("A") else ord("B")
    world.session.get(AuditCheckpoint, cp.id).envelope = bytes(env)  # type: ignore[union-attr]
    world.session.commit()
    msgs = problems(world)
    assert any(f"checkpoint {cp.id} at event {cp.seq}" in m for m in msgs)


def test_checkpoint_needs_role_and_key(world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        audit.write_checkpoint(world.ctx("dev"))
    ctx = world.ctx("aud")
    no_key = type(ctx)(
        ctx.session, ctx.clock, ctx.actor, HubKeys(world.keys.hub.root_envelope), None
    )
    with pytest.raises(ConfigError, match="audit key"):
        audit.write_checkpoint(no_key)


def test_export_verifies_offline(world: World) -> None:
    fill(world)
    audit.write_checkpoint(world.ctx("aud"))
    out = io.BytesIO()
    assert audit.export_audit(world.ctx("aud"), out) > 10
    lines = out.getvalue().splitlines(keepends=True)
    trusted = TrustedRoot.pin(world.keys.hub.root_envelope)
    assert verify_export_lines(lines, trusted).ok
    with pytest.raises(PermissionDeniedError):
        audit.export_audit(world.ctx("dev"), io.BytesIO())


@pytest.fixture
def pg_engine(pg_db: str) -> Iterator[Engine]:
    engine = make_engine(pg_db)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_postgresql_appends_from_two_sessions_stay_gap_free(pg_engine: Engine) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    first, second = Session(pg_engine), Session(pg_engine)
    try:
        audit.append_event(first, now, "a", "x", "t", "1", {})
        first.commit()
        audit.append_event(second, now, "b", "x", "t", "2", {})
        second.commit()
        audit.append_event(first, now, "a", "x", "t", "3", {})
        first.rollback()  # a rolled-back append leaves no gap
        audit.append_event(first, now, "a", "x", "t", "4", {})
        first.commit()
        events = list(audit.iter_events(first))
        assert [e.seq for e in events] == [1, 2, 3]
        assert audit.verify_database(first, None).ok
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("database", ["sqlite", "pg_db", "mysql_db"])
def test_verify_reads_driver_rows_on_every_database(
    database: str, request: pytest.FixtureRequest, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify_database reads plain driver rows (each driver's paramstyle and time type) in
    keyset pages: a clean log verifies, an edited row is named, on SQLite, PostgreSQL and
    MariaDB; the events read back are the events written."""
    from pathlib import Path

    url = (
        f"sqlite:///{Path(str(tmp_path)) / 'audit.sqlite'}"
        if database == "sqlite"
        else request.getfixturevalue(database)
    )
    engine = make_engine(url)
    upgrade(engine)
    monkeypatch.setattr(audit, "VERIFY_BATCH", 4)  # page boundaries inside the log
    try:
        with Session(engine) as session:
            base = audit.head_seq(session)
            for i in range(8):
                at = datetime(2026, 11, 23, 9, 0, i, 1000 * i, tzinfo=UTC)
                audit.append_event(session, at, "tester", "test.act", "thing", str(i), {"i": i})
            # The batched append (one executemany through each driver) continues the chain.
            at = datetime(2026, 11, 23, 9, 0, 10, 10000, tzinfo=UTC)
            assert audit.append_events(session, at, "tester", [
                ("test.act", "thing", str(i), {"i": i}) for i in range(8, 11)
            ]) == [base + 9, base + 10, base + 11]
            session.commit()
            written = list(audit.iter_events(session, batch=3))
            assert [e.seq for e in written] == list(range(1, base + 12))
            assert written[-1].at == "2026-11-23T09:00:10.010000Z"
            report = audit.verify_database(session, None)
            assert report.ok and report.events == base + 11, report.summary()
            # The next page read in a thread gives the same pages; a reader stopped early
            # leaves the session usable.
            plain = list(audit.iter_rows(session, batch=4))
            assert list(audit.iter_rows(session, batch=4, prefetch=True)) == plain
            early = audit.iter_rows(session, batch=4, prefetch=True)
            assert next(early) == plain[0]
            early.close()
            assert audit.head_seq(session) == base + 11
            monkeypatch.setattr(audit, "PREFETCH", True)
            assert audit.verify_database(session, None).ok
            monkeypatch.setattr(audit, "PREFETCH", False)
            session.execute(
                text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :s"), {"s": base + 6}
            )
            session.commit()
            after = audit.verify_database(session, None)
            assert [p.kind for p in after.problems] == ["edited"]
            assert after.problems[0].message.startswith(f"event {base + 6} was edited")
            assert after.events == base + 11 and after.head_hash == report.head_hash
    finally:
        engine.dispose()


def test_iter_rows_through_sqlalchemy_for_other_drivers(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver whose paramstyle the reader does not know is read through SQLAlchemy: the
    same rows, and verify finds the same."""
    fill(world, 7)
    direct = list(audit.iter_rows(world.session, batch=3))
    monkeypatch.setattr(audit, "_PARAM_MARK", {})
    assert list(audit.iter_rows(world.session, batch=3)) == direct
    assert audit.verify_database(world.session, world.keys.hub).ok
    sql(world, "UPDATE audit_events SET details = :d WHERE seq = 3", d='{"i":99}')
    assert [p.split(":")[0] for p in problems(world)] == ["event 3 was edited"]
