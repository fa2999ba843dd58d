"""``agent sql unlock``: clears a schema lock left by a killed SQL step on real PostgreSQL and
MariaDB; names the holder; asks for --force when the holder may be alive; recorded in the
journal and reported in the next signed result."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.executors.sqlunlock import UnlockError, unlock
from agent.home import init_home
from agent.service import Agent
from bundle.inspect import inspect
from tests.agent.conftest import Clock
from tests.fixtures.trust import NOW, make_trust

ENGINES = ["postgres", "mysql"]


@pytest.fixture
def db(request: pytest.FixtureRequest) -> tuple[str, str, Any, str]:
    """(engine, dsn, server, database name) on the real server of that engine."""
    engine = request.param
    if engine == "postgres":
        dsn = request.getfixturevalue("pg_db")
        server = request.getfixturevalue("postgres_server")
    else:
        dsn = request.getfixturevalue("mysql_db")
        server = request.getfixturevalue("mariadb_server")
    return engine, dsn, server, dsn.rsplit("/", 1)[1]


@pytest.fixture
def site(tmp_path: Path, db: tuple[str, str, Any, str]) -> Any:
    engine, dsn, _, _ = db
    kit = make_trust()
    home = tmp_path / "home"
    init_home(home, root_file=kit.write_root(tmp_path), agent_id="site-01",
              environment="plant-a", now=NOW)
    with (home / "agent.toml").open("a") as fh:
        fh.write(f'\n[connections.db]\ntype = "{engine}"\ndsn = "{dsn}"\n')
    agent = Agent(load_config(home), clock=Clock())
    yield agent
    agent.close()


def _lock_row(db: tuple[str, str, Any, str]) -> tuple[Any, ...]:
    _, _, server, name = db
    conn = server.connect(name)
    try:
        cur = conn.cursor()
        cur.execute("SELECT holder, token FROM tiangong_schema_lock WHERE lock_id = 1")
        row = cur.fetchone()
        return (row[0], row[1].strip() if row[1] else row[1])
    finally:
        conn.close()


def _hold(db: tuple[str, str, Any, str], holder: str) -> None:
    engine, _, server, name = db
    later = ("clock_timestamp() + interval '10 minutes'" if engine == "postgres"
             else "CURRENT_TIMESTAMP(6) + INTERVAL 10 MINUTE")
    conn = server.connect(name)
    try:
        conn.cursor().execute(
            f"UPDATE tiangong_schema_lock SET holder = %s, token = 'abc', "
            f"acquired_at = {later}, expires_at = {later} WHERE lock_id = 1", (holder,))
    finally:
        conn.close()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("db", ENGINES, indirect=True)
def test_a_lock_left_by_a_dead_agent_here_is_cleared_and_reported(
    site: Any, db: tuple[str, str, Any, str]
) -> None:
    agent = site
    assert unlock(agent.config, agent.journal, "db").holder is None  # creates the tables
    holder = f"{socket.gethostname()} pid {_dead_pid()} bundle b1 step 2 (migrate)"
    _hold(db, holder)
    report = unlock(agent.config, agent.journal, "db")
    assert report.cleared and report.holder is not None and report.holder.holder == holder
    assert _lock_row(db) == (None, None)
    (action,) = agent.journal.actions()
    assert holder in action["detail"]
    # Reported in the next signed result.
    from tests.agent.test_results import _intent

    agent.journal.add_result(_intent(agent))
    (path,) = agent.flush()
    body = inspect(path).manifest.result.body  # type: ignore[union-attr]
    assert [a["action"] for a in body["operator_actions"]] == ["sql unlock"]
    assert holder in body["operator_actions"][0]["detail"]


@pytest.mark.parametrize("db", ENGINES, indirect=True)
def test_a_holder_that_may_be_alive_needs_force(site: Any,
                                                db: tuple[str, str, Any, str]) -> None:
    agent = site
    unlock(agent.config, agent.journal, "db")
    holder = "plant-b-02 pid 4242 bundle b7 step 1 (schema)"
    _hold(db, holder)
    with pytest.raises(UnlockError, match=r"held by plant-b-02 pid 4242 .*--force"):
        unlock(agent.config, agent.journal, "db")
    assert _lock_row(db) == (holder, "abc")  # nothing changed
    assert agent.journal.actions() == []
    report = unlock(agent.config, agent.journal, "db", force=True)
    assert report.cleared and _lock_row(db) == (None, None)
    assert "--force" in agent.journal.actions()[0]["detail"]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_the_command_names_the_holder_and_asks_for_force(
    site: Any, db: tuple[str, str, Any, str]
) -> None:
    from click.testing import CliRunner

    from agent.cli import agent as agent_cli

    home = str(site.config.home)
    runner = CliRunner()
    free = runner.invoke(agent_cli, ["sql", "unlock", "db", "--home", home])
    assert free.exit_code == 0 and "not held; nothing to do" in free.output, free.output
    _hold(db, "plant-b-02 pid 4242 bundle b7 step 1 (schema)")
    refused = runner.invoke(agent_cli, ["sql", "unlock", "db", "--home", home])
    assert refused.exit_code == 1
    assert "plant-b-02 pid 4242" in refused.output and "--force" in refused.output
    forced = runner.invoke(agent_cli, ["sql", "unlock", "db", "--home", home, "--force"])
    assert forced.exit_code == 0 and "cleared the schema lock" in forced.output, forced.output
    assert _lock_row(db) == (None, None)
    _hold(db, "plant-b-03 pid 4343 bundle b8 step 2 (schema)")
    as_json = runner.invoke(agent_cli, ["sql", "unlock", "db", "--home", home, "--force",
                                        "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["cleared"] is True and report["holder"]["holder"].startswith("plant-b-03")
    assert _lock_row(db) == (None, None)
