"""Tests for agent.executors.sqlplan: everything refused before a database is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.executors.base import Connection
from agent.executors.sql import SqlExecutor
from tests.agent.executors.sqlcase import CONNECTION, Db, Runner

# --- refused before touching the database -------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path) -> Runner:
    """A runner whose DSN points nowhere: these cases must fail before connecting."""
    return Runner(tmp_path, Db("postgres", "postgresql://u:pw@127.0.0.1:1/x", None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "script", "expected"),
    [
        (
            {"connection": None},
            "SELECT 1;",
            f"postgres connection '{CONNECTION}' is not configured on this agent",
        ),
        (
            {"connection": Connection(CONNECTION, "mysql", {"dsn": "mysql://u@h/db"})},
            "SELECT 1;",
            f"connection '{CONNECTION}' is a mysql connection but the step's engine is postgres",
        ),
        (
            {"params": {"dsn": "mysql://u@h/db"}},
            "SELECT 1;",
            "has a mysql:// DSN; a postgres step needs postgresql:// or postgres://",
        ),
        (
            {"params": {"dsn": "postgresql://u:pw@h:5432"}},
            "SELECT 1;",
            "DSN without a database name",
        ),
        ({}, "SELECT 'unterminated;\n", "cannot split script 'sql/001_schema.sql': line 1"),
        ({}, "BEGIN;\nCREATE TABLE t (a int);\nCOMMIT;", "line 1: BEGIN — PostgreSQL scripts"),
        ({"params": {"lock_ttl_s": "10"}}, "SELECT 1;", "lock_ttl_s must be a positive integer"),
    ],
)
def test_refused_before_connecting(
    offline: Runner, kwargs: dict[str, Any], script: str, expected: str
) -> None:
    outcome = offline.run(script, **kwargs)
    assert outcome.status == "failed"
    assert expected in outcome.summary
    assert outcome.summary.endswith("nothing was run")
    assert "connecting" not in offline.log


def test_missing_payload_and_non_utf8_script(offline: Runner, tmp_path: Path) -> None:
    ctx = offline.ctx("SELECT 1;")
    ctx.files["sql/001_schema.sql"].write_bytes(b"SELECT '\xff';")
    outcome = SqlExecutor().run(ctx)
    assert outcome.summary == "script 'sql/001_schema.sql' is not UTF-8 (line 1); nothing was run"
    ctx = offline.ctx("SELECT 1;", step={"script": "sql/other.sql"})
    outcome = SqlExecutor().run(ctx)
    assert "script 'sql/other.sql' is not among the staged payloads" in outcome.summary
