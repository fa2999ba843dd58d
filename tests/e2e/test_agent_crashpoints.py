"""Power cuts at every crash point of a real agent process, for shell, SQL and k8s steps.

One agent home serves every case, one bundle (sequence) per case. Each bundle has four steps
— a shell step appending to a file, a SQL step inserting a row into the real PostgreSQL, one
inserting a row into the real MariaDB, a k8s step applying a ConfigMap to the real
kube-apiserver (through the recording proxy, which counts the applies) — so every step kind
meets every step crash point. A
case drops its bundle, starts ``tiangong agent run`` with ``TIANGONG_CRASH_AT=<point>:<nth>``,
waits for it to die by SIGKILL at that point, restarts it normally and waits for the
bundle's result. At the end, the invariants of docs/agent.md ("Crash points"):

* every step ran at most once (side effects counted in the file and the two databases), and
  exactly as the case expects (a step that was running is never re-run; a step that never
  started runs after the restart);
* every bundle that reached the agent has exactly one signed result, with the expected
  status;
* result sequences are 1..N, none used twice, each chained to the one before; the agent's
  bundle sequence floor is the last accepted bundle's (nothing consumed twice, a refused
  bundle consumes nothing).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from agent.executors import KINDS
from agent.faults import CRASH_POINTS
from tests.e2e.agent_site import (
    assert_chain,
    drop,
    init_site,
    make_bundle,
    results,
    settled,
    start_agent,
    stop_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, wait_for
from tests.e2e.test_agent_undo import UNDO_CRASH_POINTS
from tests.e2e.test_agent_windows import WINDOW_CRASH_POINTS
from tests.fixtures.databases import MariaDBServer, PostgresServer
from tests.fixtures.kube import KubeProxy

OK = "succeeded"
# (crash point, nth time it is reached, expected result status, expected runs of the shell,
# PostgreSQL, MariaDB and k8s steps). Steps are reached in order, so "step-ran", 2 is the
# PostgreSQL step having run.
CASES: list[tuple[str, int, str, tuple[int, int, int, int]]] = [
    ("staged", 1, OK, (1, 1, 1, 1)),
    ("accepted", 1, OK, (1, 1, 1, 1)),
    ("archived", 1, OK, (1, 1, 1, 1)),
    ("step-started", 1, "interrupted", (0, 0, 0, 0)),
    ("step-started", 2, "interrupted", (1, 0, 0, 0)),
    ("step-started", 3, "interrupted", (1, 1, 0, 0)),
    ("step-started", 4, "interrupted", (1, 1, 1, 0)),
    ("step-ran", 1, "interrupted", (1, 0, 0, 0)),
    ("step-ran", 2, "interrupted", (1, 1, 0, 0)),
    ("step-ran", 3, "interrupted", (1, 1, 1, 0)),
    ("step-ran", 4, "interrupted", (1, 1, 1, 1)),
    ("step-finished", 1, OK, (1, 1, 1, 1)),
    ("step-finished", 2, OK, (1, 1, 1, 1)),
    ("step-finished", 3, OK, (1, 1, 1, 1)),
    ("step-finished", 4, OK, (1, 1, 1, 1)),
    ("final", 1, OK, (1, 1, 1, 1)),
    ("result-built", 1, OK, (1, 1, 1, 1)),
    ("result-written", 1, OK, (1, 1, 1, 1)),
    ("result-recorded", 1, OK, (1, 1, 1, 1)),
    # A bundle naming a connection the site does not define is refused before acceptance.
    ("rejection-recorded", 1, "rejected", (0, 0, 0, 0)),
    ("quarantined", 1, "rejected", (0, 0, 0, 0)),
    # Killed while running step 1, then killed again on start-up right after recording the
    # interruption: the interrupted result is still written, once.
    ("interrupted-recorded", 1, "interrupted", (1, 0, 0, 0)),
]


def test_every_crash_point_is_covered() -> None:
    # The hold points need bundles with windows and freezes: tests/e2e/test_agent_windows.py.
    # undo-recorded needs a file step: tests/e2e/test_agent_undo.py.
    covered = {point for point, *_ in CASES} | set(WINDOW_CRASH_POINTS) | set(UNDO_CRASH_POINTS)
    assert covered == set(CRASH_POINTS)


def _release(tmp: Path, seq: int, effects: Path, namespace: str, *, refused: bool) -> Path:
    sql = ("CREATE TABLE IF NOT EXISTS effects (tag VARCHAR(20));\n"
           f"INSERT INTO effects (tag) VALUES ('b{seq}');\n")
    pg = "nowhere" if refused else "pg"
    return write_release(
        tmp / f"crash-1.0.{seq}", "crash", f"1.0.{seq}",
        ['name = "shell"\nkind = "shell"\nscript = "effect.sh"',
         f'name = "pg"\nkind = "sql"\nengine = "postgres"\nconnection = "{pg}"\n'
         'script = "effect.sql"',
         'name = "maria"\nkind = "sql"\nengine = "mysql"\nconnection = "maria"\n'
         'script = "effect.sql"',
         f'name = "kube"\nkind = "k8s"\nconnection = "kube"\nmanifests = ["cm.yaml"]\n'
         f'namespace = "{namespace}"'],
        {"effect.sh": f'echo "b{seq}" >> "{effects}"\n', "effect.sql": sql,
         "cm.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: effect-b{seq}\n"
                    f"data:\n  tag: b{seq}\n"})


def _sql(server: Any, db: str, statement: str, *args: str) -> int:
    conn = server.connect(db)
    try:
        cur = conn.cursor()
        cur.execute(statement, args or None)
        row = cur.fetchone() if cur.description else None
        return int(row[0]) if row else 0
    finally:
        conn.close()


def _count(server: Any, db: str, tag: str) -> int:
    return _sql(server, db, "SELECT COUNT(*) FROM effects WHERE tag = %s", tag)


def _applies(proxy: KubeProxy, tag: str) -> int:
    """Real (not dry-run) applies of the case's ConfigMap the API server received."""
    return sum(1 for r in proxy.patches(dry_run=False)
               if r.path.endswith(f"/configmaps/effect-{tag}"))


def _died_at(proc: subprocess.Popen[bytes], point: str, log: Path) -> None:
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"crash point {point} was never reached:\n"
                             f"{log.read_text()[-3000:]}") from None
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def test_power_cut_at_every_crash_point(
    tmp_path: Path, hub_keys: HubKeys, postgres_server: PostgresServer,
    mariadb_server: MariaDBServer, pg_db: str, mysql_db: str, kube_proxy: KubeProxy,
    kube_namespace: str,
) -> None:
    pg_name, my_name = pg_db.rsplit("/", 1)[1], mysql_db.rsplit("/", 1)[1]
    home = init_site(tmp_path, hub_keys, {
        "pg": {"type": "postgres", "dsn": pg_db},
        "maria": {"type": "mysql", "dsn": mysql_db},
        "kube": {"type": "kubernetes",
                 "kubeconfig": str(kube_proxy.write_kubeconfig(tmp_path / "kubeconfig"))},
    })
    for server, db in ((postgres_server, pg_name), (mariadb_server, my_name)):
        _sql(server, db, "CREATE TABLE effects (tag VARCHAR(20))")
    effects = tmp_path / "shell-effects.txt"
    effects.touch()
    log = tmp_path / "agent.log"
    expected: dict[str, tuple[str, str, tuple[int, int, int, int]]] = {}
    accepted_seq = 0
    for seq, (point, nth, status, runs) in enumerate(CASES, start=1):
        refused = status == "rejected"
        bundle, bid = make_bundle(hub_keys, _release(tmp_path, seq, effects, kube_namespace,
                                                  refused=refused),
                                  tmp_path / f"crash-{seq}.tgb", seq)
        expected[bid] = (bundle.name, status, runs)
        drop(bundle, home)
        with log.open("a") as fh:
            fh.write(f"\n=== case {seq}: {point}:{nth} ===\n")
        if point == "interrupted-recorded":
            _died_at(start_agent(home, log, {"TIANGONG_CRASH_AT": "step-ran:1"}), point, log)
        _died_at(start_agent(home, log, {"TIANGONG_CRASH_AT": f"{point}:{nth}"}), point, log)
        agent = start_agent(home, log)
        try:
            def done(bid: str = bid, name: str = bundle.name) -> bool:
                return settled(home) and any(
                    r["bundle_id"] == bid or r["body"].get("rejected_file") == name
                    for r in results(home))

            wait_for(done, 90, f"the result of case {seq} ({point}:{nth})")
        finally:
            stop_agent(agent, log, home)
        if not refused:
            accepted_seq = seq

    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    assert len(found) == len(CASES)
    for bid, (name, status, runs) in expected.items():
        tag = f"b{bid[1:].split('-')[0]}"
        mine = [r for r in found
                if r["bundle_id"] == bid or r["body"].get("rejected_file") == name]
        assert [r["status"] for r in mine] == [status], (bid, name, mine)
        shell_runs = effects.read_text().split().count(tag)
        got = (shell_runs, _count(postgres_server, pg_name, tag),
               _count(mariadb_server, my_name, tag), _applies(kube_proxy, tag))
        assert got == runs, (bid, status, got, runs)
    assert list((home / "inbox").iterdir()) == []
    left = [p for d in ("outbox", "archive", "quarantine", "staging")
            for p in (home / d).rglob(".*")]
    assert left == [], left  # no temporary survives a restart
    db = sqlite3.connect(home / "journal.sqlite")
    try:
        assert db.execute("SELECT sequence FROM trust").fetchone()[0] == accepted_seq
        assert db.execute("SELECT COUNT(*) FROM results WHERE state != 'written'"
                          ).fetchone()[0] == 0
    finally:
        db.close()


# A release with a step graph (docs/release-format.md §3.7), one step at a time: "left" and
# "right" need nothing, "join" runs after both; the agent runs left, right, join.
DAG_CASES: list[tuple[str, int, str, tuple[int, int, int]]] = [
    ("step-started", 2, "interrupted", (1, 0, 0)),   # right was starting: never run again
    ("step-ran", 2, "interrupted", (1, 1, 0)),
    ("step-finished", 2, OK, (1, 1, 1)),            # right done: join runs after restart
]


def test_power_cut_in_a_step_graph(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    effects = tmp_path / "dag-effects.txt"
    effects.touch()
    log = tmp_path / "agent.log"
    for seq, (point, nth, status, runs) in enumerate(DAG_CASES, start=1):
        release = write_release(
            tmp_path / f"dag-1.0.{seq}", "dag", f"1.0.{seq}",
            ['name = "left"\nkind = "shell"\nscript = "left.sh"\nafter = []',
             'name = "join"\nkind = "shell"\nscript = "join.sh"\nafter = ["left", "right"]',
             'name = "right"\nkind = "shell"\nscript = "right.sh"\nafter = []'],
            {f"{n}.sh": f'echo "{n}{seq}" >> "{effects}"\n' for n in ("left", "right", "join")})
        bundle, bid = make_bundle(hub_keys, release, tmp_path / f"dag-{seq}.tgb", seq)
        drop(bundle, home)
        _died_at(start_agent(home, log, {"TIANGONG_CRASH_AT": f"{point}:{nth}"}), point, log)
        agent = start_agent(home, log)
        try:
            wait_for(lambda bid=bid: settled(home) and any(  # type: ignore[misc]
                r["bundle_id"] == bid for r in results(home)), 90, f"DAG case {seq}")
        finally:
            stop_agent(agent, log, home)
        found = [r for r in results(home) if r["bundle_id"] == bid]
        assert [r["status"] for r in found] == [status]
        lines = effects.read_text().split()
        got = tuple(lines.count(f"{n}{seq}") for n in ("left", "right", "join"))
        assert got == runs, (point, nth, got)
        body = found[0]["body"]
        assert body["graph"] == [{"index": 1, "name": "left", "after": []},
                                 {"index": 2, "name": "join", "after": ["left", "right"]},
                                 {"index": 3, "name": "right", "after": []}]
        assert body["inventory"]["step_kinds"] == list(KINDS)
    assert_chain(verified_results(home, hub_keys, tmp_path))
