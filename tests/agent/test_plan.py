"""Plan (preflight) bundles at the agent (agent/plan.py, agent/plancheck.py), in-process,
against real PostgreSQL, MariaDB and kube-apiserver: every check runs, a failing one is
reported with its reason, and NOTHING changes — not a row or table of either database, not
an object on the API server, not the agent's release sequence, trust or journal."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from agent.config import load_config
from agent.plan import PLAN_STATE_FILE
from agent.service import Agent
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import plan_manifest, release_manifest, write_bundle
from tests.agent.conftest import Clock, drop, verified_result
from tests.fixtures.kubeserver import KubeServer
from tests.fixtures.trust import NOW, TrustKit

CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: plan-probe
  namespace: {ns}
data:
  a: "1"
"""
BAD_DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: plan-bad
  namespace: {ns}
spec:
  replicas: "three"
  selector: {{matchLabels: {{app: x}}}}
  template:
    metadata: {{labels: {{app: x}}}}
    spec: {{containers: [{{name: x, image: x}}]}}
"""


def _release(tmp: Path, ns: str, *, extra_steps: str = "", bad_manifest: bool = True,
             pg_check: str = "select count(*) = 1 from t;\n",
             my_check: str = "select 1;\n") -> Path:
    d = tmp / f"rel-{uuid.uuid4().hex[:6]}"
    files = {
        "sql/pg.sql": "create table never (i int);\n",
        "sql/pg_check.sql": pg_check,
        "sql/my.sql": "create table never (i int);\n",
        "sql/my_check.sql": my_check,
        "k8s/cm.yaml": CONFIGMAP.format(ns=ns),
        "k8s/bad.yaml": BAD_DEPLOYMENT.format(ns=ns),
        "sh/run.sh": "touch ran\n",
        "sh/check.sh": 'test "$TIANGONG_PLAN" = 1\n',
    }
    for name, body in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(body)
    manifests = '["k8s/cm.yaml", "k8s/bad.yaml"]' if bad_manifest else '["k8s/cm.yaml"]'
    (d / "release.toml").write_text(f'''format = 1
[release]
product = "billing"
version = "2.4.0"

[[steps]]
name = "pg schema"
kind = "sql"
engine = "postgres"
connection = "pg"
script = "sql/pg.sql"
check = "sql/pg_check.sql"
server_version = ">= 9.6"

[[steps]]
name = "my schema"
kind = "sql"
engine = "mysql"
connection = "my"
script = "sql/my.sql"
check = "sql/my_check.sql"
server_version = ">= 99"

[[steps]]
name = "deploy"
kind = "k8s"
connection = "kube"
manifests = {manifests}

[[steps]]
name = "smoke"
kind = "shell"
script = "sh/run.sh"
check = "sh/check.sh"
{extra_steps}''')
    return d


def _plan(kit: TrustKit, release: Path, out: Path, seq: int) -> Path:
    manifest, files = plan_manifest(
        load_release(release), bundle_id=f"plan-{seq}-{uuid.uuid4().hex[:6]}",
        issuer=kit.release_key.key_id, target=Target(agents=("site-01",)), root_version=1,
        sequence=seq, created=NOW - 60, expires=NOW + 3600, counter=1, author="alice")
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


def _deployment(kit: TrustKit, release: Path, out: Path, seq: int) -> Path:
    manifest, files = release_manifest(
        load_release(release), bundle_id=f"dep-{seq}", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",)), root_version=1, sequence=seq, created=NOW - 60,
        expires=NOW + 3600, counter=1, author="alice")
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


@pytest.fixture
def wired(site: tuple[Agent, TrustKit, Clock], pg_db: str, mysql_db: str,
          kube_server: KubeServer) -> tuple[Agent, TrustKit]:
    """The site agent with connections pg, my (real servers) and kube (the API server)."""
    agent, kit, _ = site
    cfg = agent.config.home / "agent.toml"
    text = cfg.read_text().replace("[connections]\n", "")
    text += (f'\n[connections.pg]\ntype = "postgres"\ndsn = "{pg_db}"\n'
             f'\n[connections.my]\ntype = "mysql"\ndsn = "{mysql_db}"\n'
             f'\n[connections.kube]\ntype = "kubernetes"\n'
             f'kubeconfig = "{kube_server.kubeconfig}"\n')
    cfg.write_text(text)
    agent.close()
    fresh = Agent(load_config(agent.config.home), clock=agent.clock)
    return fresh, kit


def _pg_state(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute("select table_name from information_schema.tables where "
                              "table_schema = 'public' order by 1").fetchall()
        rows = conn.execute("select i from t order by i").fetchall()
    return [*tables, *rows]


def _my_state(dsn: str) -> list[tuple[Any, ...]]:
    from urllib.parse import urlsplit
    p = urlsplit(dsn)
    conn = pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username,
                           password=p.password or "", database=p.path.lstrip("/"))
    try:
        with conn.cursor() as cur:
            cur.execute("show tables")
            tables = list(cur.fetchall())
            cur.execute("select i from t order by i")
            return tables + list(cur.fetchall())
    finally:
        conn.close()


def _seed(pg_db: str, mysql_db: str) -> None:
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute("create table t (i int)")
        conn.execute("insert into t values (1)")
    from urllib.parse import urlsplit
    p = urlsplit(mysql_db)
    conn2 = pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username,
                            password=p.password or "", database=p.path.lstrip("/"),
                            autocommit=True)
    try:
        with conn2.cursor() as cur:
            cur.execute("create table t (i int)")
            cur.execute("insert into t values (1)")
    finally:
        conn2.close()


def _checks(result: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(c["check"], c["step"]): c for c in result["body"]["plan"]["checks"]}


def test_plan_runs_every_check_and_changes_nothing(
        wired: tuple[Agent, TrustKit], tmp_path: Path, pg_db: str, mysql_db: str,
        kube_server: KubeServer, kube_namespace: str) -> None:
    agent, kit = wired
    _seed(pg_db, mysql_db)
    pg_before, my_before = _pg_state(pg_db), _my_state(mysql_db)
    release = _release(tmp_path, kube_namespace,
                       extra_steps='\n[[steps]]\nname = "billing"\nkind = "sql"\n'
                                   'engine = "postgres"\nconnection = "billing-db"\n'
                                   'script = "sql/pg.sql"\n')
    out = agent.process(drop(agent, _plan(kit, release, tmp_path / "p1.tgp", 1)))

    assert out.status == "plan-failed", out.summary
    result = verified_result(agent, kit, out.result, tmp_path)  # type: ignore[arg-type]
    assert result["status"] == "plan-failed" and result["bundle_id"] == out.bundle_id
    checks = _checks(result)
    assert checks[("connection", "pg schema")]["status"] == "passed"
    assert "server version" in checks[("connection", "pg schema")]["summary"]
    assert checks[("server-version", "pg schema")]["status"] == "passed"
    assert checks[("check-script", "pg schema")]["status"] == "passed"
    assert checks[("connection", "my schema")]["status"] == "passed"
    assert checks[("server-version", "my schema")]["status"] == "failed"
    assert "does not meet '>= 99'" in checks[("server-version", "my schema")]["summary"]
    assert checks[("check-script", "my schema")]["status"] == "passed"
    dry = checks[("k8s-dry-run", "deploy")]
    assert dry["status"] == "failed" and "server dry run rejected 1 of 2 objects" in \
        dry["summary"] and "plan-bad" in dry["summary"]
    assert checks[("check-script", "smoke")]["status"] == "passed"
    missing = checks[("connection", "billing")]
    assert missing["status"] == "failed"
    assert "connection 'billing-db' is not defined in the agent config" in missing["summary"]
    assert checks[("steps", None)]["status"] == "failed"
    assert [c for c in result["body"]["plan"]["checks"] if c["check"] == "free-space"]
    assert all(c["status"] == "passed" for c in result["body"]["plan"]["checks"]
               if c["check"] == "free-space")

    # Nothing changed: databases, API server, release state, journal.
    assert _pg_state(pg_db) == pg_before and _my_state(mysql_db) == my_before
    assert kube_server.get(f"/api/v1/namespaces/{kube_namespace}/configmaps/plan-probe") \
        is None
    assert kube_server.get(f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/"
                           "plan-bad") is None
    trust = agent.journal.trust(kit.hub_id)
    assert trust is not None and (trust.root_version, trust.sequence) == (1, 0)
    assert agent.journal.bundles() == []
    assert not (agent.config.home / "runs" / (out.bundle_id or "")).exists()
    assert not list(agent.config.inbox.iterdir())
    assert json.loads((agent.config.home / PLAN_STATE_FILE).read_text())["sequence"] == 1

    # The real deployment is neither a replay of the plan nor blocked by it: sequence 1.
    fixed = _release(tmp_path, kube_namespace, bad_manifest=False)
    dep = agent.process(drop(agent, _deployment(kit, fixed, tmp_path / "d1.tgb", 1)))
    assert dep.status != "rejected", dep.summary
    assert agent.journal.trust(kit.hub_id).sequence == 1  # type: ignore[union-attr]
    agent.close()


@pytest.mark.parametrize(("engine", "check", "words"), [
    ("pg", "insert into t values (2);\n", "read-only transaction"),
    ("pg", "select 1;\ncommit;\ninsert into t values (2);\n", "may not control transactions"),
    ("pg", "create table sneaky (i int);\n", "read-only transaction"),
    ("pg", "select false;\n", "the first row says False"),
    ("my", "insert into t values (2);\n", "READ ONLY transaction"),
    ("my", "create table sneaky (i int);\n", "READ ONLY transaction"),
    ("my", "set session transaction read write;\ninsert into t values (2);\n",
     "may not control transactions"),
    ("my", "set @@session.transaction_read_only = 0;\ncreate table sneaky (i int);\n",
     "may not control transactions"),
    ("my", "/*!40101 SET autocommit = 1 */;\ninsert into t values (2);\n",
     "may not control transactions"),
    ("pg", "-- looks harmless\ncommit;\ninsert into t values (2);\n",
     "may not control transactions"),
    ("pg", "select 1 from (select set_config('default_transaction_read_only', 'off', "
     "false)) s;\ncreate table sneaky (i int);\n", "read-only transaction"),
])
def test_a_check_script_cannot_write(wired: tuple[Agent, TrustKit], tmp_path: Path,
                                     pg_db: str, mysql_db: str, kube_namespace: str,
                                     engine: str, check: str, words: str) -> None:
    agent, kit = wired
    _seed(pg_db, mysql_db)
    pg_before, my_before = _pg_state(pg_db), _my_state(mysql_db)
    changes = {"pg_check": check} if engine == "pg" else {"my_check": check}
    release = _release(tmp_path, kube_namespace, bad_manifest=False, **changes)
    out = agent.process(drop(agent, _plan(kit, release, tmp_path / "p.tgp", 1)))
    result = verified_result(agent, kit, out.result, tmp_path)  # type: ignore[arg-type]
    step = "pg schema" if engine == "pg" else "my schema"
    found = _checks(result)[("check-script", step)]
    assert found["status"] == "failed" and words in found["summary"], found
    assert _pg_state(pg_db) == pg_before and _my_state(mysql_db) == my_before
    agent.close()


def test_plan_sequence_is_its_own(wired: tuple[Agent, TrustKit], tmp_path: Path,
                                  pg_db: str, mysql_db: str, kube_namespace: str) -> None:
    """Plans and deployments never refuse or hold each other; a plan runs once, and an
    older plan than the newest run is refused (signed result, nothing else changed)."""
    agent, kit = wired
    _seed(pg_db, mysql_db)
    release = _release(tmp_path, kube_namespace, bad_manifest=False)
    dep = agent.process(drop(agent, _deployment(kit, release, tmp_path / "d1.tgb", 1)))
    assert dep.status != "rejected", dep.summary
    plan5 = _plan(kit, release, tmp_path / "p5.tgp", 5)
    plan3 = _plan(kit, release, tmp_path / "p3.tgp", 3)
    first = agent.process(drop(agent, plan5))
    assert first.status in ("plan-passed", "plan-failed"), first.summary  # not a replay
    for again, seen in ((plan5, 5), (plan3, 5)):
        refused = agent.process(drop(agent, again))
        assert refused.status == "rejected" and f"is not newer than {seen}" in \
            refused.summary, refused.summary
        assert verified_result(agent, kit, refused.result, tmp_path)["status"] == "rejected"  # type: ignore[arg-type]
    assert json.loads((agent.config.home / PLAN_STATE_FILE).read_text())["sequence"] == 5
    dep2 = agent.process(drop(agent, _deployment(kit, release, tmp_path / "d2.tgb", 2)))
    assert dep2.status != "rejected", dep2.summary
    assert agent.journal.trust(kit.hub_id).sequence == 2  # type: ignore[union-attr]
    agent.close()


def test_a_plan_for_another_agent_is_refused(site: tuple[Agent, TrustKit, Clock],
                                             tmp_path: Path) -> None:
    agent, kit, _ = site
    release = _release(tmp_path, "default", bad_manifest=False)
    manifest, files = plan_manifest(
        load_release(release), bundle_id="plan-x", issuer=kit.release_key.key_id,
        target=Target(agents=("site-02",)), root_version=1, sequence=1, created=NOW - 60,
        expires=NOW + 3600, counter=1, author="alice")
    path = write_bundle(tmp_path / "px.tgp", manifest, files, [kit.release_key]).paths[0]
    out = agent.process(drop(agent, path))
    assert out.status == "rejected" and "not to agent 'site-01'" in out.summary
    assert not (agent.config.home / PLAN_STATE_FILE).exists()
    assert agent.journal.trust(kit.hub_id).sequence == 0  # type: ignore[union-attr]
    assert (agent.config.quarantine / "px.tgp").exists()


def test_check_scripts_run_only_where_the_release_approvals_are_met(tmp_path: Path) -> None:
    """Where the trusted root requires signed approvals for the agent's environment, a
    plan runs the release's own check scripts, and sends the HEAD of its http steps' URLs,
    only with approvals that meet it (a plan never runs code or contacts a URL a deployment
    of the release could not); everything else is checked anyway."""
    from agent.home import init_home
    from signing.approvals import ApprovalDocument, sign_approval
    from signing.delegations import Approver, Delegation
    from signing.keys import SigningKey
    from signing.roots import KeyEntry
    from tests.fixtures.trust import make_trust

    alice = SigningKey.generate()
    kit = make_trust(approvals={"plant-a": Delegation(
        "signed", 1, 1, {alice.key_id: Approver("alice", "dba")})},
        approver_keys=[KeyEntry(alice.public)])
    init_home(tmp_path / "home", root_file=kit.write_root(tmp_path), agent_id="site-01",
              environment="plant-a", now=NOW)
    agent = Agent(load_config(tmp_path / "home"), clock=Clock())
    server = contextlib.ExitStack()
    port, seen = server.enter_context(_http_server())
    marker = tmp_path / "checked.txt"
    rel = tmp_path / "rel"
    (rel / "sh").mkdir(parents=True)
    (rel / "sh" / "run.sh").write_text("exit 0\n")
    (rel / "sh" / "check.sh").write_text(f'echo "$TIANGONG_PLAN" >> "{marker}"\n')
    (rel / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "billing"\nversion = "2.4.0"\n\n[[steps]]\n'
        'name = "smoke"\nkind = "shell"\nscript = "sh/run.sh"\ncheck = "sh/check.sh"\n\n'
        f'[[steps]]\nname = "tell"\nkind = "http"\nurl = "http://127.0.0.1:{port}/t"\n')
    source = load_release(rel)

    def plan(seq: int, approvals: tuple[bytes, ...]) -> Path:
        manifest, files = plan_manifest(
            source, bundle_id=f"plan-{seq}", issuer=kit.release_key.key_id,
            target=Target(agents=("site-01",)), root_version=1, sequence=seq,
            created=NOW - 60, expires=NOW + 3600, counter=1, author="zoe",
            approval_envelopes=approvals)
        return write_bundle(tmp_path / f"p{seq}.tgp", manifest, files,
                            [kit.release_key]).paths[0]

    try:
        bare = agent.process(drop(agent, plan(1, ())))
        assert bare.status == "plan-passed", bare.summary
        found = _checks(verified_result(agent, kit, bare.result, tmp_path))  # type: ignore[arg-type]
        skipped = found[("check-script", "smoke")]
        assert skipped["status"] == "skipped"
        assert "not run: this site runs a release's scripts only when its approvals are met" \
            in skipped["summary"] and "needs 1 approval" in skipped["summary"]
        assert not marker.exists()
        assert found[("http", "tell")]["status"] == "skipped" and seen == []
        assert "not sent: this site contacts a release's URLs only when its approvals are " \
            "met" in found[("http", "tell")]["summary"]

        signed = sign_approval(ApprovalDocument(
            product="billing", version="2.4.0", content_hash=source.content_hash,
            environments=("plant-a",), approver="alice", at=NOW - 3600,
            expires=NOW + 86400), alice)
        approved = agent.process(drop(agent, plan(2, (signed,))))
        found = _checks(verified_result(agent, kit, approved.result, tmp_path))  # type: ignore[arg-type]
        assert found[("check-script", "smoke")]["status"] == "passed"
        assert marker.read_text() == "1\n"
        assert found[("http", "tell")]["status"] == "passed" and seen == ["HEAD /t"]
    finally:
        agent.close()
        server.close()


@contextlib.contextmanager
def _http_server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server answering 404 to everything: its port and the requests seen."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_POST = do_GET = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_http_steps_are_probed_with_head_only(site: tuple[Agent, TrustKit, Clock],
                                              tmp_path: Path) -> None:
    """An http step's server must answer (any status); the plan sends one HEAD of the URL,
    never the step's own request; a server that does not answer fails the check."""
    from tests.fixtures.dbservers import free_port

    agent, kit, _ = site
    closed = free_port()
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "body.json").write_text("{}")
    with _http_server() as (port, seen):
        rel.joinpath("release.toml").write_text(
            'format = 1\n[release]\nproduct = "billing"\nversion = "2.4.0"\n\n'
            f'[[steps]]\nname = "notify"\nkind = "http"\nmethod = "POST"\n'
            f'url = "http://127.0.0.1:{port}/hooks/deploy"\nbody = "body.json"\n\n'
            f'[[steps]]\nname = "gone"\nkind = "http"\nurl = "http://127.0.0.1:{closed}/x"\n')
        out = agent.process(drop(agent, _plan(kit, rel, tmp_path / "p.tgp", 1)))
        found = _checks(verified_result(agent, kit, out.result, tmp_path))  # type: ignore[arg-type]
        assert found[("http", "notify")]["status"] == "passed"
        assert "answered 404" in found[("http", "notify")]["summary"]
        assert found[("http", "gone")]["status"] == "failed"
        assert "no answer: connection refused" in found[("http", "gone")]["summary"]
        assert out.status == "plan-failed"
        assert seen == ["HEAD /hooks/deploy"]  # never the step's POST
