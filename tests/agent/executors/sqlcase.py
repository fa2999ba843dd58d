"""Shared pieces of the sql executor tests: a fresh database per test, plain driver access
to it, and a runner that builds the :class:`StepContext` the agent would.

Test modules pull the fixtures in with ``from tests.agent.executors.sqlcase import *``:
``db`` (parametrised over PostgreSQL and MariaDB), ``pg``, ``my``, and the matching runners
``run``, ``run_pg``, ``run_my``. The servers come from ``tests/fixtures/databases.py``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from agent.executors.base import Connection, StepContext, StepLog, StepOutcome
from agent.executors.sql import SqlExecutor
from agent.executors.sqlhistory import HISTORY_TABLE, LOCK_TABLE
from tests.fixtures.databases import MariaDBServer, PostgresServer

__all__ = [
    "CONNECTION",
    "Db",
    "Runner",
    "db",
    "my",
    "pg",
    "run",
    "run_my",
    "run_pg",
    "sha256",
]

CONNECTION = "billing-db"


@dataclass
class Db:
    """A fresh test database and plain driver access to it (not through the executor)."""

    engine: str
    dsn: str
    server: PostgresServer | MariaDBServer

    @property
    def name(self) -> str:
        return unquote(urlsplit(self.dsn).path.lstrip("/"))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.engine == "postgres":
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                cur = conn.execute(sql.encode(), params or None)
                return list(cur.fetchall()) if cur.description else []
        conn = self.server.connect(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def tables(self) -> set[str]:
        if self.engine == "postgres":
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
        return {str(r[0]) for r in self.query(sql)}

    def history(self) -> list[dict[str, Any]]:
        cols = [
            "version", "description", "script", "checksum", "bundle_id", "step_name",
            "installed_by", "success", "statements_total", "statements_applied", "error",
            "execution_ms", "installed_on",
        ]  # fmt: skip
        rows = self.query(f"SELECT {', '.join(cols)} FROM {HISTORY_TABLE} ORDER BY installed_rank")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def running(self, statement: str) -> bool:
        """Whether another session is running ``statement`` right now."""
        if self.engine == "postgres":
            sql = "SELECT 1 FROM pg_stat_activity WHERE query = %s"
        else:
            sql = "SELECT 1 FROM information_schema.processlist WHERE info = %s"
        return bool(self.query(sql, (statement,)))

    def set_lock(self, holder: str, seconds_from_now: int) -> None:
        """Make the lock row look held by someone else (another agent, maybe dead)."""
        if self.engine == "postgres":
            expiry = "clock_timestamp() + %s * interval '1 second'"
        else:
            expiry = "CURRENT_TIMESTAMP(6) + INTERVAL %s SECOND"
        self.query(
            f"UPDATE {LOCK_TABLE} SET holder = %s, token = %s, acquired_at = {expiry}, "
            f"expires_at = {expiry} WHERE lock_id = 1",
            (holder, "f" * 32, -3600, seconds_from_now),
        )


@pytest.fixture(params=["postgres", "mysql"])
def db(request: pytest.FixtureRequest) -> Db:
    if request.param == "postgres":
        return Db(
            "postgres", request.getfixturevalue("pg_db"), request.getfixturevalue("postgres_server")
        )
    return Db(
        "mysql", request.getfixturevalue("mysql_db"), request.getfixturevalue("mariadb_server")
    )


@pytest.fixture
def pg(pg_db: str, postgres_server: PostgresServer) -> Db:
    return Db("postgres", pg_db, postgres_server)


@pytest.fixture
def my(mysql_db: str, mariadb_server: MariaDBServer) -> Db:
    return Db("mysql", mysql_db, mariadb_server)


@dataclass
class Runner:
    """Builds a StepContext per run, as the agent's runner would, and runs the executor."""

    tmp_path: Path
    db: Db
    logs: list[StepLog] = field(default_factory=list)

    def ctx(
        self,
        script: str,
        *,
        timeout_s: int = 60,
        deadline_s: float | None = None,
        bundle_id: str = "b-0001",
        index: int = 0,
        step: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        connection: Connection | str | None = "default",
        cancel: threading.Event | None = None,
        secrets: dict[str, str] | None = None,
    ) -> StepContext:
        payload = self.tmp_path / "staging" / f"sql-{len(self.logs)}.sql"
        payload.parent.mkdir(exist_ok=True)
        payload.write_text(script, encoding="utf-8")
        spec = {
            "name": "schema",
            "kind": "sql",
            "timeout_s": timeout_s,
            "on_failure": "stop",
            "engine": self.db.engine,
            "connection": CONNECTION,
            "script": "sql/001_schema.sql",
            **(step or {}),
        }
        SqlExecutor().validate(spec)
        if connection == "default":
            connection = Connection(
                CONNECTION, self.db.engine, {"dsn": self.db.dsn, **(params or {})}
            )
        log = StepLog(secrets=list((secrets or {}).values()))
        self.logs.append(log)
        workdir = self.tmp_path / f"work-{len(self.logs)}"
        workdir.mkdir()
        return StepContext(
            bundle_id=bundle_id,
            release={"product": "billing", "version": "2.4.0"},
            index=index,
            step=spec,
            files={"sql/001_schema.sql": payload},
            workdir=workdir,
            connection=connection if isinstance(connection, Connection) else None,
            secrets=secrets or {},
            log=log,
            deadline=time.monotonic() + (deadline_s if deadline_s is not None else timeout_s),
            cancel=cancel or threading.Event(),
        )

    def run(self, script: str, **kwargs: Any) -> StepOutcome:
        return SqlExecutor().run(self.ctx(script, **kwargs))

    @property
    def log(self) -> str:
        return self.logs[-1].text()


@pytest.fixture
def run(tmp_path: Path, db: Db) -> Runner:
    return Runner(tmp_path, db)


@pytest.fixture
def run_pg(tmp_path: Path, pg: Db) -> Runner:
    return Runner(tmp_path, pg)


@pytest.fixture
def run_my(tmp_path: Path, my: Db) -> Runner:
    return Runner(tmp_path, my)


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` as UTF-8 (the checksum the executor records)."""
    return hashlib.sha256(text.encode()).hexdigest()
