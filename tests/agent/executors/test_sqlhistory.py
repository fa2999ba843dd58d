"""Tests for agent.executors.sqlhistory: the schema lock's holder, expiry, takeover and loss,
through the executor, on real PostgreSQL and MariaDB."""

from __future__ import annotations

import threading

from agent.executors.base import StepOutcome
from agent.executors.sql import SqlExecutor
from agent.executors.sqlhistory import LOCK_TABLE
from tests.agent.executors.sqlcase import *  # noqa: F403  (fixtures db, pg, my, run, run_pg, run_my)
from tests.agent.executors.sqlcase import CONNECTION, Db, Runner
from tests.fixtures.databases import wait_for

# --- the schema lock ----------------------------------------------------------------------


def test_expired_lock_is_taken_over_and_named(run: Runner, db: Db) -> None:
    assert run.run("CREATE TABLE first (a INT);", step={"version": "1"}).status == "succeeded"
    db.set_lock("plant-b-07 pid 4242 bundle b-0099 step 3 (schema)", seconds_from_now=-60)

    outcome = run.run("CREATE TABLE second (a INT);", step={"version": "2"})

    assert outcome.status == "succeeded", outcome.summary
    assert "took over the expired schema lock" in run.log
    assert "held by plant-b-07 pid 4242 bundle b-0099 step 3 (schema)" in run.log
    assert "second" in db.tables()
    assert db.query(f"SELECT holder, token FROM {LOCK_TABLE}") == [(None, None)]


def test_live_lock_held_by_another_fails_naming_the_holder(run: Runner, db: Db) -> None:
    assert run.run("CREATE TABLE first (a INT);", step={"version": "1"}).status == "succeeded"
    holder = "plant-b-07 pid 4242 bundle b-0099 step 3 (schema)"
    db.set_lock(holder, seconds_from_now=3600)

    outcome = run.run("CREATE TABLE second (a INT);", step={"version": "2"}, deadline_s=1)

    assert outcome.status == "failed"
    assert f"the schema lock on {db.engine} connection '{CONNECTION}' is held by {holder}" in (
        outcome.summary
    )
    assert "nothing was run" in outcome.summary
    assert outcome.details["lock_holder"] == holder
    assert "second" not in db.tables()
    assert [r["version"] for r in db.history()] == ["1"]
    assert db.query(f"SELECT holder FROM {LOCK_TABLE}") == [(holder,)]  # not ours to release


def test_lock_taken_over_mid_run_stops_the_step(run: Runner, db: Db) -> None:
    """If the agent stalls past its lock's expiry and another holder takes over, the
    watchdog's renewal notices and the running statement is interrupted."""
    assert run.run("CREATE TABLE first (a INT);", step={"version": "1"}).status == "succeeded"
    sleep = "SELECT pg_sleep(60)" if db.engine == "postgres" else "SELECT SLEEP(60)"
    ctx = run.ctx(
        f"CREATE TABLE second (a INT);\n{sleep};\nCREATE TABLE third (a INT);",
        step={"version": "2"},
        params={"lock_ttl_s": 1},  # renewed every 1/3 s
    )
    outcomes: list[StepOutcome] = []
    worker = threading.Thread(target=lambda: outcomes.append(SqlExecutor().run(ctx)))
    worker.start()
    intruder = "plant-c-01 pid 77 bundle b-0100 step 1 (schema)"
    try:
        wait_for(lambda: db.running(sleep), timeout_s=30, what="the sleep statement to start")
        db.set_lock(intruder, seconds_from_now=3600)
    finally:
        worker.join(timeout=60)
    [outcome] = outcomes
    assert outcome.status == "failed"
    assert f"lost the schema lock on {db.engine} connection '{CONNECTION}'" in outcome.summary
    assert "at statement 2 of 3 (line 2)" in outcome.summary
    assert outcome.details["failed_statement"]["reason"] == "lock lost"
    assert "third" not in db.tables()
    assert db.query(f"SELECT holder FROM {LOCK_TABLE}") == [(intruder,)]
