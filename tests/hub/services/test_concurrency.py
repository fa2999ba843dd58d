"""Concurrent writers on PostgreSQL: audit appends stay gap-free and linear, sequence
allocation never hands out a number twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from hub.db import make_engine
from hub.migrate import upgrade
from hub.services import audit
from hub.services.deployments import allocate_sequence

WRITERS = 6
PER_WRITER = 25
NOW = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture
def pg_engine(pg_db: str) -> Iterator[Engine]:
    engine = make_engine(pg_db)
    upgrade(engine)
    yield engine
    engine.dispose()


def _in_threads(target: object, count: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait()
            target(i)  # type: ignore[operator]
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_parallel_audit_appends_are_gap_free(pg_engine: Engine) -> None:
    def writer(i: int) -> None:
        for n in range(PER_WRITER):
            with Session(pg_engine) as session:
                audit.append_event(session, NOW, f"w{i}", "test", "n", str(n), {"n": n})
                session.commit()

    assert _in_threads(writer, WRITERS) == []
    with Session(pg_engine) as session:
        events = list(audit.iter_events(session))
        assert [e.seq for e in events] == list(range(1, WRITERS * PER_WRITER + 1))
        report = audit.verify_database(session, None)
        assert report.ok, report.summary()


def test_parallel_sequence_allocation_never_reuses(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        allocate_sequence(session, "agent:a")  # the counter exists before the race
        session.commit()
    got: list[int] = []
    lock = threading.Lock()

    def exporter(_: int) -> None:
        for _n in range(PER_WRITER):
            with Session(pg_engine) as session:
                _root, seq = allocate_sequence(session, "agent:a")
                session.commit()
            with lock:
                got.append(seq)

    assert _in_threads(exporter, WRITERS) == []
    assert sorted(got) == list(range(2, WRITERS * PER_WRITER + 2))


def test_parallel_read_then_append_on_sqlite_file(tmp_path: object) -> None:
    """Several writers on one SQLite file (WAL + busy timeout): nobody fails, no gap."""
    from pathlib import Path

    from sqlalchemy import func, select

    from hub.db import AuditEvent

    engine = make_engine(f"sqlite:///{Path(str(tmp_path)) / 'hub.db'}")
    upgrade(engine)

    def writer(i: int) -> None:
        for n in range(PER_WRITER):
            with Session(engine) as session:
                session.scalar(select(func.count()).select_from(AuditEvent))
                audit.append_event(session, NOW, f"w{i}", "test", "n", str(n), {})
                session.commit()

    try:
        assert _in_threads(writer, 4) == []
        with Session(engine) as session:
            report = audit.verify_database(session, None)
            assert report.ok and report.events == 4 * PER_WRITER
    finally:
        engine.dispose()


def test_parallel_audit_appends_on_mariadb(mysql_db: str) -> None:
    """MariaDB is supported too: microsecond times survive, appends stay gap-free."""
    engine = make_engine(mysql_db)
    upgrade(engine)
    at = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)

    def writer(i: int) -> None:
        for n in range(10):
            with Session(engine) as session:
                audit.append_event(session, at, f"w{i}", "test", "n", str(n), {"n": n})
                session.commit()

    try:
        assert _in_threads(writer, 3) == []
        with Session(engine) as session:
            report = audit.verify_database(session, None)
            assert report.ok and report.events == 30, report.summary()
    finally:
        engine.dispose()
