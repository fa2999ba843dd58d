"""Tests for agent.executors.sqlrun: deadlines, cancellation and what gets logged, with real
statements on real servers, plus the pure helpers."""

from __future__ import annotations

import threading

import pytest

from agent.executors.base import StepLog, StepOutcome
from agent.executors.sql import SqlExecutor
from agent.executors.sqlconn import ResultSet, StatementError
from agent.executors.sqlhistory import HISTORY_TABLE, LOCK_TABLE
from agent.executors.sqlrun import Failure, SqlLog, Watchdog, describe_results, excerpt
from agent.executors.sqlsplit import Statement
from tests.agent.executors.sqlcase import *  # noqa: F403  (fixtures db, pg, my, run, run_pg, run_my)
from tests.agent.executors.sqlcase import CONNECTION, Db, Runner
from tests.fixtures.databases import wait_for

# --- deadline and cancel ------------------------------------------------------------------


def test_postgres_statement_timeout_honours_the_deadline(run_pg: Runner, pg: Db) -> None:
    script = "CREATE TABLE before_sleep (a INT);\nSELECT pg_sleep(30);\nCREATE TABLE after (a INT);"
    outcome = run_pg.run(script, timeout_s=2)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"timed out at statement 2 of 3 (line 2) on postgres connection '{CONNECTION}' "
        "(step timeout 2 s)"
    )
    assert "nothing was applied" in outcome.summary
    assert outcome.details["failed_statement"]["reason"] == "timeout"
    assert pg.tables() == {HISTORY_TABLE, LOCK_TABLE}


def test_mysql_statement_timeout_honours_the_deadline(run_my: Runner, my: Db) -> None:
    script = "CREATE TABLE before_sleep (a INT);\nSELECT SLEEP(30);\nCREATE TABLE after (a INT);"
    outcome = run_my.run(script, timeout_s=2)

    assert outcome.status == "failed"
    assert outcome.summary.startswith("timed out at statement ")
    assert "statement 1 was applied and stays applied" in outcome.summary
    assert outcome.details["failed_statement"]["reason"] == "timeout"
    assert "before_sleep" in my.tables() and "after" not in my.tables()


def test_cancelled_before_start_runs_nothing(run: Runner, db: Db) -> None:
    cancel = threading.Event()
    cancel.set()
    outcome = run.run("CREATE TABLE t (a INT);", cancel=cancel)
    assert outcome.status == "failed"
    assert outcome.summary == "cancelled before connecting; nothing was run"
    assert "t" not in db.tables()


def test_cancel_interrupts_a_running_postgres_statement(run_pg: Runner, pg: Db) -> None:
    cancel = threading.Event()
    ctx = run_pg.ctx("CREATE TABLE t (a INT);\nSELECT pg_sleep(60);", cancel=cancel)
    outcomes: list[StepOutcome] = []
    worker = threading.Thread(target=lambda: outcomes.append(SqlExecutor().run(ctx)))
    worker.start()
    try:
        wait_for(
            lambda: bool(
                pg.query("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%%'")
            ),
            timeout_s=30,
            what="the pg_sleep statement to start",
        )
    finally:
        cancel.set()
        worker.join(timeout=60)
    [outcome] = outcomes
    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"cancelled at statement 2 of 2 (line 2) on postgres connection '{CONNECTION}'"
    )
    assert "nothing was applied" in outcome.summary
    assert "t" not in pg.tables()


def test_deadline_already_passed_runs_no_statement(run: Runner, db: Db) -> None:
    outcome = run.run("CREATE TABLE t (a INT);", deadline_s=0, timeout_s=30)
    assert outcome.status == "failed"
    assert outcome.summary == "timed out before connecting (step timeout 30 s); nothing was run"
    assert db.tables() == set()


# --- the watchdog (no database) -----------------------------------------------------------


class Recorder:
    def __init__(self, renew_ok: bool = True) -> None:
        self.interrupts = 0
        self.renewals = 0
        self.renew_ok = renew_ok

    def interrupt(self) -> None:
        self.interrupts += 1

    def renew(self) -> bool:
        self.renewals += 1
        return self.renew_ok


def watchdog(rec: Recorder, cancel: threading.Event, deadline: float, log: StepLog) -> Watchdog:
    return Watchdog(
        cancel=cancel,
        deadline=deadline,
        interrupt=rec.interrupt,
        renew=rec.renew,
        renew_every_s=0.0,
        log=SqlLog(log, lambda text: text),
        clock=lambda: 100.0,  # a frozen clock: only the deadline decides "timeout"
    )


@pytest.mark.parametrize(
    ("cancelled", "deadline", "renew_ok", "reason"),
    [
        (True, 1000.0, True, "cancelled"),
        (False, 50.0, True, "timeout"),
        (False, 1000.0, False, "lock lost"),
    ],
)
def test_watchdog_interrupts_with_its_reason(
    cancelled: bool, deadline: float, renew_ok: bool, reason: str
) -> None:
    rec = Recorder(renew_ok)
    cancel = threading.Event()
    if cancelled:
        cancel.set()
    log = StepLog()
    with watchdog(rec, cancel, deadline, log) as dog:
        wait_for(lambda: rec.interrupts > 0, timeout_s=10, what="the watchdog to interrupt")
    assert dog.reason == reason
    if reason == "lock lost":
        assert "taken over by another holder" in log.text()


def test_watchdog_renews_and_leaves_a_healthy_run_alone() -> None:
    rec = Recorder()
    with watchdog(rec, threading.Event(), 1000.0, StepLog()) as dog:
        wait_for(lambda: rec.renewals >= 3, timeout_s=10, what="three lock renewals")
    assert dog.reason is None and rec.interrupts == 0


# --- describing results and failures (no database) ----------------------------------------


def test_results_are_described_with_rows_capped() -> None:
    rows = tuple((i, f"name\n{i}" if i == 1 else None) for i in range(1, 21))
    lines = describe_results(
        [
            ResultSet(("id", "name"), rows, more_rows=5, rowcount=25),
            ResultSet(None, (), 0, 1, "UPDATE 1"),
            ResultSet(None, (), 0, -1, "CREATE TABLE"),
            ResultSet(("blob",), ((b"\x00\xff",),), 0, 1),
        ],
        elapsed_ms=7,
    )
    assert lines[:3] == ["  id | name", "  1 | name\\n1", "  2 | NULL"]
    assert lines[21:] == [
        "  ... 5 more rows",
        "  (25 rows)",
        "  1 row affected (UPDATE 1)",
        "  ok (CREATE TABLE)",
        "  blob",
        "  0x00ff",
        "  (1 row)",
        "  done in 7 ms",
    ]


def test_excerpt_flattens_and_cuts() -> None:
    assert excerpt("SELECT\n   1,\t2") == "SELECT 1, 2"
    long = excerpt("x" * 500)
    assert len(long) == 200 and long.endswith("…")


def test_failure_points_at_the_line_the_server_named() -> None:
    statement = Statement("INSERT INTO t\nVALUES\n(oops)", line=10)
    error = StatementError("42703", 'column "oops" does not exist', position=23)
    failure = Failure(3, statement, "error", error)
    assert failure.error_line() == 12
    assert failure.error_text() == '42703 column "oops" does not exist (at line 12)'
    assert failure.as_details() == {
        "index": 3,
        "line": 10,
        "excerpt": "INSERT INTO t VALUES (oops)",
        "error": '42703 column "oops" does not exist (at line 12)',
        "code": "42703",
        "reason": "error",
    }
