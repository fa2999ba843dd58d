"""A SQL step's attempt is in ``tiangong_schema_history`` before its first statement runs: a
real ``agent run`` is SIGKILLed while its script waits on a lock the test holds, on real
PostgreSQL and MariaDB; the history then shows the attempt as "did not finish" with what it
applied (PostgreSQL: nothing, its transaction died with the connection; MariaDB: the DDL
committed before the kill), and the restarted agent reports the bundle interrupted without
running the step again."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from agent.executors.sqlhistory import UNFINISHED
from tests.e2e.agent_site import drop, init_site, make_bundle, start_agent, write_release
from tests.e2e.conftest import HubKeys, run, wait_for

_BLOCK = {"postgres": "SELECT pg_advisory_lock(4242)",
          "mysql": "SELECT GET_LOCK('tg-sqlh', 600)"}
_BLOCKED = {
    "postgres": "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    "mysql": "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
             "AND INFO LIKE 'SELECT GET_LOCK%%' AND ID <> CONNECTION_ID()",
}
_OTHERS = {
    "postgres": "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()",
    "mysql": "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
             "AND ID <> CONNECTION_ID()",
}


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    cur.execute(sql)
    return list(cur.fetchall()) if cur.description else []


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_killed_sql_step_stays_in_the_history_as_did_not_finish(
    tmp_path: Path, hub_keys: HubKeys, engine: str, request: pytest.FixtureRequest
) -> None:
    server_fixture, db_fixture = (("postgres_server", "pg_db") if engine == "postgres"
                                  else ("mariadb_server", "mysql_db"))
    server = request.getfixturevalue(server_fixture)
    dsn: str = request.getfixturevalue(db_fixture)
    name = dsn.rsplit("/", 1)[1]
    home = init_site(tmp_path, hub_keys, {"site": {"type": engine, "dsn": dsn}})
    release = write_release(
        tmp_path / "rel", "sqlh", "1.0.0",
        [f'name = "migrate"\nkind = "sql"\nengine = "{engine}"\nconnection = "site"\n'
         'script = "001.sql"'],
        {"001.sql": f"CREATE TABLE t1 (x INT);\n{_BLOCK[engine]};\nCREATE TABLE t2 (x INT);\n"})
    bundle, bid = make_bundle(hub_keys, release, tmp_path / "sqlh-1.0.0.tgb", 1)
    holder = server.connect(name)  # holds the lock the script's second statement waits for
    try:
        _rows(holder, "SELECT pg_advisory_lock(4242)" if engine == "postgres"
              else "SELECT GET_LOCK('tg-sqlh', 0)")
        log = tmp_path / "agent.log"
        agent = start_agent(home, log)
        drop(bundle, home)
        wait_for(lambda: _rows(holder, _BLOCKED[engine])[0][0] > 0, 60,
                 "the script to wait on the test's lock")
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=60)
        # The killed agent's connections: end them as the server does once it notices.
        for (pid,) in _rows(holder, _OTHERS[engine]):
            _rows(holder, f"SELECT pg_terminate_backend({int(pid)})" if engine == "postgres"
                  else f"KILL {int(pid)}")
        wait_for(lambda: _rows(holder, _OTHERS[engine]) == [], 60,
                 "the killed agent's connections to end")
        history = _rows(holder, "SELECT version, bundle_id, success, statements_total, "
                                "statements_applied, error FROM tiangong_schema_history")
        tables = {r[0] for r in _rows(
            holder, "SELECT table_name FROM information_schema.tables "
                    "WHERE table_name IN ('t1', 't2') AND table_schema = "
                    + ("current_schema()" if engine == "postgres" else "DATABASE()"))}
    finally:
        holder.close()
    # PostgreSQL rolled the script back with its connection; MariaDB committed the DDL.
    applied = 0 if engine == "postgres" else 1
    assert history == [("1.0.0.1", bid, False, 3, applied, UNFINISHED)]
    assert tables == (set() if engine == "postgres" else {"t1"})

    out = run("agent", "run", "--once", "--home", str(home), "--json-logs")
    assert "interrupted" in out.stderr, out.stderr
    conn = server.connect(name)
    try:
        assert len(_rows(conn, "SELECT * FROM tiangong_schema_history")) == 1  # not re-run
    finally:
        conn.close()
