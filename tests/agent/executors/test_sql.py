"""Tests for agent.executors.sql: applying scripts on real, throwaway PostgreSQL and MariaDB.

Each test gets a fresh database and builds a StepContext by hand (``sqlcase.py``). Lock,
connection, deadline and preparation cases live in the test modules of those modules.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.executors import get_executor
from agent.executors.errors import StepSpecError
from agent.executors.sql import SqlExecutor
from agent.executors.sqlhistory import HISTORY_TABLE, LOCK_TABLE
from tests.agent.executors.sqlcase import *  # noqa: F403  (fixtures db, pg, my, run, run_pg, run_my)
from tests.agent.executors.sqlcase import CONNECTION, Db, Runner, sha256

# --- applying scripts ---------------------------------------------------------------------

SCHEMA = """\
-- billing schema, version 1
CREATE TABLE invoices (
    id INTEGER PRIMARY KEY,
    customer VARCHAR(100) NOT NULL, -- who pays; a ';' here is fine
    note VARCHAR(100)
);
INSERT INTO invoices (id, customer, note) VALUES
    (1, 'acme', 'it''s paid; thanks'),
    (2, 'globex', NULL),
    (3, 'initech', '/* not a comment */');
UPDATE invoices SET note = 'due' WHERE note IS NULL;
SELECT id, customer FROM invoices ORDER BY id;
"""


def test_registered_under_kind_sql() -> None:
    assert isinstance(get_executor("sql"), SqlExecutor)


def test_ddl_and_dml_applied_and_recorded(run: Runner, db: Db) -> None:
    outcome = run.run(SCHEMA)

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.startswith(
        "applied 4 statements of sql/001_schema.sql as version 2.4.0.1"
    )
    assert f"{db.engine} connection '{CONNECTION}'" in outcome.summary
    assert db.query("SELECT id, customer, note FROM invoices ORDER BY id") == [
        (1, "acme", "it's paid; thanks"),
        (2, "globex", "due"),
        (3, "initech", "/* not a comment */"),
    ]
    assert outcome.details["statements_total"] == outcome.details["statements_applied"] == 4
    assert "3 rows affected" in run.log  # the INSERT
    assert "1 row affected" in run.log  # the UPDATE
    assert "  3 | initech" in run.log  # the SELECT's rows
    [row] = db.history()
    assert row["version"] == "2.4.0.1"
    assert row["description"] == "schema"
    assert row["checksum"] == sha256(SCHEMA)
    assert row["bundle_id"] == "b-0001"
    assert row["step_name"] == "schema"
    assert "pid" in row["installed_by"] and "bundle b-0001" in row["installed_by"]
    assert bool(row["success"]) is True
    assert (row["statements_total"], row["statements_applied"], row["error"]) == (4, 4, None)
    # the lock was released
    assert db.query(f"SELECT holder FROM {LOCK_TABLE}") == [(None,)]


def test_explicit_version_and_description(run: Runner, db: Db) -> None:
    outcome = run.run("CREATE TABLE t (a INT);", step={"version": "7.1", "description": "add t"})
    assert outcome.status == "succeeded", outcome.summary
    [row] = db.history()
    assert (row["version"], row["description"]) == ("7.1", "add t")


def test_result_sets_are_logged_capped(run: Runner, db: Db) -> None:
    if db.engine == "postgres":
        script = "SELECT g AS n FROM generate_series(1, 25) AS g;"
    else:
        script = "SELECT seq AS n FROM seq_1_to_25;"  # MariaDB's sequence engine
    outcome = run.run(script)
    assert outcome.status == "succeeded", outcome.summary
    assert "  20\n" in run.log and "  21\n" not in run.log
    assert "... 5 more rows" in run.log
    assert "(25 rows)" in run.log


# --- failures midway ----------------------------------------------------------------------

FAILING = """\
CREATE TABLE a (id INTEGER PRIMARY KEY);
INSERT INTO a VALUES (1);
CREATE TABLE b (id INTEGER PRIMARY KEY);

INSERT INTO missing_table VALUES (1);
CREATE TABLE c (id INTEGER PRIMARY KEY);
"""


def test_postgres_failure_midway_applies_nothing(run_pg: Runner, pg: Db) -> None:
    outcome = run_pg.run(FAILING)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"statement 4 of 5 (line 5) failed on postgres connection '{CONNECTION}': 42P01"
    )
    assert 'relation "missing_table" does not exist' in outcome.summary
    assert "`INSERT INTO missing_table VALUES (1)`" in outcome.summary
    assert "the transaction was rolled back, nothing was applied" in outcome.summary
    failed_statement = outcome.details["failed_statement"]
    assert failed_statement["index"] == 4 and failed_statement["line"] == 5
    assert failed_statement["excerpt"] == "INSERT INTO missing_table VALUES (1)"
    assert failed_statement["code"] == "42P01"
    assert outcome.details["statements_applied"] == 0
    # nothing changed but the record of the attempt
    assert pg.tables() == {HISTORY_TABLE, LOCK_TABLE}
    [row] = pg.history()
    assert row["success"] is False and row["statements_applied"] == 0
    assert "statement 4 (line 5)" in row["error"]


def test_mysql_failure_midway_says_exactly_what_was_applied(run_my: Runner, my: Db) -> None:
    outcome = run_my.run(FAILING)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(
        f"statement 4 of 5 (line 5) failed on mysql connection '{CONNECTION}': 1146 "
    )
    assert "statements 1–3 were applied and stay applied" in outcome.summary
    assert "statement 5 was not run" in outcome.summary
    assert "recorded as a failed attempt at version 2.4.0.1" in outcome.summary
    assert outcome.details["statements_total"] == 5
    assert outcome.details["statements_applied"] == 3
    failed_statement = outcome.details["failed_statement"]
    assert (failed_statement["index"], failed_statement["line"]) == (4, 5)
    assert failed_statement["code"] == "1146"
    assert "missing_table" in failed_statement["error"]
    # the database agrees
    assert my.tables() == {"a", "b", HISTORY_TABLE, LOCK_TABLE}
    assert my.query("SELECT id FROM a") == [(1,)]
    [row] = my.history()
    assert (bool(row["success"]), row["statements_applied"], row["statements_total"]) == (
        False,
        3,
        5,
    )
    assert "1146" in row["error"]

    # fixed and re-run: allowed, because the version has only a failed attempt
    fixed = (
        FAILING.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")
        .replace("INSERT INTO a VALUES (1)", "INSERT IGNORE INTO a VALUES (1)")
        .replace("missing_table", "b")
    )
    again = run_my.run(fixed, bundle_id="b-0002")
    assert again.status == "succeeded", again.summary
    assert "has 1 failed attempt(s)" in run_my.log
    assert [bool(r["success"]) for r in my.history()] == [False, True]
    assert "c" in my.tables()


def test_mysql_statements_in_a_scripts_transaction_are_rolled_back(run_my: Runner, my: Db) -> None:
    script = (
        "CREATE TABLE t (a INT) ENGINE=InnoDB;\n"
        "START TRANSACTION;\n"
        "INSERT INTO t VALUES (1);\n"
        "INSERT INTO t VALUES (2);\n"
        "INSERT INTO nope VALUES (3);\n"
    )
    outcome = run_my.run(script)
    assert outcome.status == "failed"
    assert "statement 1 was applied and stays applied" in outcome.summary
    assert "statements 2–4 ran inside a transaction the script opened and were rolled back" in (
        outcome.summary
    )
    assert outcome.details["statements_applied"] == 1
    assert outcome.details["statements_rolled_back"] == [2, 3, 4]
    assert my.query("SELECT COUNT(*) FROM t") == [(0,)]


# --- history: skip, refuse ----------------------------------------------------------------


def test_applied_version_is_skipped(run: Runner, db: Db) -> None:
    assert run.run(SCHEMA).status == "succeeded"

    outcome = run.run(SCHEMA, bundle_id="b-0002")

    assert outcome.status == "skipped"
    assert "version 2.4.0.1 (sql/001_schema.sql) was already applied" in outcome.summary
    assert "by bundle b-0001" in outcome.summary
    assert outcome.details["applied_by_bundle"] == "b-0001"
    assert "INSERT" not in run.log  # nothing ran
    assert len(db.history()) == 1
    assert db.query("SELECT COUNT(*) FROM invoices") == [(3,)]


def test_changed_script_for_applied_version_is_refused(run: Runner, db: Db) -> None:
    assert run.run(SCHEMA).status == "succeeded"
    changed = SCHEMA + "CREATE TABLE sneaky (a INT);\n"

    outcome = run.run(changed, bundle_id="b-0002")

    assert outcome.status == "failed"
    assert sha256(SCHEMA) in outcome.summary and sha256(changed) in outcome.summary
    assert "refusing to run a changed script" in outcome.summary
    assert "sneaky" not in db.tables()
    assert len(db.history()) == 1


# --- procedures and functions -------------------------------------------------------------


def test_mysql_procedure_with_delimiter_is_created_and_callable(run_my: Runner, my: Db) -> None:
    script = """\
CREATE TABLE counters (name VARCHAR(20) PRIMARY KEY, n INT NOT NULL);
DELIMITER //
CREATE PROCEDURE bump(IN which VARCHAR(20))
BEGIN
    INSERT INTO counters VALUES (which, 1) ON DUPLICATE KEY UPDATE n = n + 1;
    SELECT n FROM counters WHERE name = which;
END //
CREATE TRIGGER no_negatives BEFORE UPDATE ON counters FOR EACH ROW
BEGIN
    IF NEW.n < 0 THEN SET NEW.n = 0; END IF;
END//
DELIMITER ;
CALL bump('a');
CALL bump('a');
"""
    outcome = run_my.run(script)
    assert outcome.status == "succeeded", outcome.summary
    assert outcome.details["statements_total"] == 5
    conn = my.server.connect(my.name)
    try:
        with conn.cursor() as cur:
            cur.execute("CALL bump('a')")
            assert cur.fetchall() == ((3,),)
            while cur.nextset():
                pass
            cur.execute("UPDATE counters SET n = -5")
            cur.execute("SELECT n FROM counters")
            assert cur.fetchall() == ((0,),)  # the trigger exists
    finally:
        conn.close()


def test_postgres_dollar_quoted_function_is_created_and_callable(run_pg: Runner, pg: Db) -> None:
    script = """\
CREATE FUNCTION add_vat(net numeric) RETURNS numeric AS $body$
DECLARE
    rate numeric := 0.2; -- a comment; with a semicolon
BEGIN
    RAISE NOTICE 'it''s $$ fine; really';
    RETURN round(net * (1 + rate), 2);
END;
$body$ LANGUAGE plpgsql;

DO $$ BEGIN PERFORM add_vat(1); END $$;
SELECT add_vat(100) AS gross;
"""
    outcome = run_pg.run(script)
    assert outcome.status == "succeeded", outcome.summary
    assert outcome.details["statements_total"] == 3
    assert "120.00" in run_pg.log
    assert pg.query("SELECT add_vat(10)")[0][0] == pytest.approx(12)


# --- validate -----------------------------------------------------------------------------

GOOD_STEP: dict[str, Any] = {
    "name": "schema",
    "kind": "sql",
    "timeout_s": 300,
    "on_failure": "stop",
    "secrets": ["db-password"],
    "engine": "postgres",
    "connection": "billing-db",
    "script": "sql/001.sql",
    "version": "2.4.0_1-a",
    "description": "initial schema",
}


def test_validate_accepts_a_good_step() -> None:
    SqlExecutor().validate(GOOD_STEP)
    SqlExecutor().validate({k: v for k, v in GOOD_STEP.items() if k not in ("version", "secrets")})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": ""}, "name"),
        ({"kind": "shell"}, "kind"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"timeout_s": "60"}, "timeout_s"),
        ({"on_failure": "retry"}, "on_failure"),
        ({"secrets": "db-password"}, "secrets"),
        ({"engine": "oracle"}, "engine"),
        ({"connection": None}, "connection"),
        ({"script": ""}, "script"),
        ({"version": "1 2"}, "version"),
        ({"version": ".1"}, "version"),
        ({"version": 3}, "version"),
        ({"description": ""}, "description"),
        ({"scirpt": "x.sql"}, "scirpt"),
    ],
)
def test_validate_names_the_bad_field(change: dict[str, Any], field: str) -> None:
    step = {**GOOD_STEP, **change}
    with pytest.raises(StepSpecError, match=f"field '{field}'"):
        SqlExecutor().validate(step)
