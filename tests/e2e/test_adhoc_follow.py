"""Ad-hoc SQL runs followed live (issue 16 "Done when"), with real processes: a real `hub
serve` with its live server, a real `agent run` connected to it, real PostgreSQL and real
MariaDB. Environment ``plant-a``'s ad-hoc policy says "no second person" (set by the admin,
audited), so `tiangong run sql --follow` creates the one-off release, the policy approves
it, the hub's push loop delivers it to the online agent, and the command prints the live log
and then the result — nobody exports, nobody imports. The normal path keeps its rule: the
same release cannot be queued for the environment without an approval. Then a job template:
a value out of its range is refused before anything is created (no release, no deployment,
no sequence, nothing written, nothing at the agent); a good one runs live, its string value
reaching PostgreSQL as a literal however it is quoted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.conftest import run, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site, _journal
from tests.e2e.test_live_processes import site as site  # the fixture
from tests.fixtures.dbservers import MariaDBServer


def _pg_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute("SELECT id, note FROM followed ORDER BY id").fetchall())


def _maria_rows(server: MariaDBServer, dsn: str) -> list[tuple[Any, ...]]:
    conn = server.connect(dsn.rsplit("/", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, note FROM followed ORDER BY id")
            return list(cur.fetchall())
    finally:
        conn.close()


def _run_sql(site: Site, script: Path, connection: str, engine: str,
             *extra: str) -> Any:
    return run("run", "sql", "--file", str(script), "--agent", "site-01",
               "--connection", connection, "--engine", engine, "--follow",
               "--follow-timeout", f"{int(DEADLINE)}s", *extra,
               "--data-dir", str(site.data), "--local-admin", "carol", env=site.env,
               check=False, timeout=DEADLINE + 30)


def test_adhoc_sql_followed_live_on_postgresql_and_mariadb(
        site: Site, pg_db: str, mysql_db: str, mariadb_server: MariaDBServer,
        tmp_path: Path) -> None:
    site.hub("users", "grant", "carol", "developer")
    with (site.home / "agent.toml").open("a") as fh:
        fh.write(f'\n[connections.app-pg]\ntype = "postgres"\ndsn = "{pg_db}"\n'
                 f'\n[connections.app-maria]\ntype = "mysql"\ndsn = "{mysql_db}"\n')
    set_policy = site.hub("environments", "adhoc-policy", "plant-a", "--required", "0")
    assert "environment plant-a: ad-hoc runs need no approval" in set_policy.stdout
    site.start_hub("hub.log")
    site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to connect to the live server")

    script = tmp_path / "followed.sql"
    script.write_text("CREATE TABLE followed (id INT PRIMARY KEY, note VARCHAR(40));\n"
                      "INSERT INTO followed VALUES (1, 'followed live');\n")

    # PostgreSQL, as a person reads it.
    text = _run_sql(site, script, "app-pg", "postgres")
    assert text.returncode == 0, text.stdout + text.stderr
    created = re.search(r"release adhoc (\S+) created and submitted", text.stdout)
    assert created is not None, text.stdout
    assert re.search(r"^\[step 1 \w+\] ", text.stdout, re.M), text.stdout  # live lines
    assert re.search(r"^deployment \d+: succeeded", text.stdout, re.M), text.stdout
    assert re.search(r"^  step 1 run followed\.sql: succeeded.* — applied 2 statements",
                     text.stdout, re.M), text.stdout
    assert _pg_rows(pg_db) == [(1, "followed live")]

    # MariaDB, as a script reads it.
    doc = json.loads(_run_sql(site, script, "app-maria", "mysql", "--json").stdout)
    assert (doc["state"], doc["done"], doc["agent"]) == ("succeeded", True, "site-01")
    assert doc["lines"] and {line["step"] for line in doc["lines"]} == {0}
    assert doc["result"]["status"] == "succeeded"
    assert [s["status"] for s in doc["result"]["steps"]] == ["succeeded"]
    assert _maria_rows(mariadb_server, mysql_db) == [(1, "followed live")]

    # Audited like any release; approved by the policy, not by a person.
    for action in ("release.create", "release.submit", "release.policy_approve",
                   "deployment.queue"):
        assert len(site.audit(action)) == 2, action
    [policy] = site.audit("environment.adhoc_policy")
    assert policy["actor"] == "admin"
    # The normal path keeps plant-a's own rule (1 approval): refused, nothing queued.
    version = created.group(1)
    before = site.hub_json("deployments", "list")
    refused = site.hub("deployments", "queue", "adhoc", version, "--environment", "plant-a",
                       user="carol", check=False)
    assert refused.returncode == 1 and "requires 1 approval" in refused.stderr
    assert site.hub_json("deployments", "list") == before

    _templates_part(site, pg_db, tmp_path)


TEMPLATE = """name = "add-note"
kind = "sql"
file = "note.sql"
description = "one more row"
[step]
engine = "postgres"
connection = "app-pg"
[[params]]
name = "id"
type = "int"
min = 2
[[params]]
name = "note"
type = "string"
max_length = 40
"""


def _template_run(site: Site, *args: str) -> Any:
    return run("hub", "--local-admin", "carol", "templates", "run", "add-note", "--agent",
               "site-01", *args, env=site.env, check=False, timeout=DEADLINE + 30)


def _templates_part(site: Site, pg_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "note.sql").write_text("INSERT INTO followed VALUES ({{id}}, {{note}});\n")
    (folder / "add-note.toml").write_text(TEMPLATE)
    added = site.hub_json("templates", "add", str(folder / "add-note.toml"))
    assert (added["name"], added["version"]) == ("add-note", 1)

    def state() -> Any:
        return (site.hub_json("releases", "list", "--product", "adhoc"),
                site.hub_json("deployments", "list"),
                site.sql("SELECT target, next_sequence FROM sequence_counters ORDER BY target"),
                _journal(site))

    before = state()
    usb = tmp_path / "usb"
    bad = _template_run(site, "--param", "id=1", "--param", "note=x", "--out", str(usb))
    assert bad.returncode == 1
    assert "error: template add-note v1: parameter id: 1 is below the minimum 2" in bad.stderr
    assert state() == before and not usb.exists()
    assert site.audit("template.run") == []

    good = _template_run(site, "--param", "id=2", "--param", "note=it's $tg$ live",
                         "--follow", "--follow-timeout", f"{int(DEADLINE)}s", "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    doc = json.loads(good.stdout)
    assert (doc["state"], doc["template"]) == ("succeeded", "template add-note v1")
    assert _pg_rows(pg_db)[1:] == [(2, "it's $tg$ live")]
    [event] = site.audit("template.run")
    assert json.loads(event["details"])["values"] == {"id": 2, "note": "it's $tg$ live"}
