"""A rollout whose canary fails and rolls back by itself, all real processes on 127.0.0.1
(docs/rollouts.md, "Automatic rollback"): ``tiangong hub serve`` with its live server, the
live agent ``site-01`` (``tiangong agent run``) as the canary, the media agent ``site-02`` in
the next batch, every other step the ``tiangong hub`` CLI.

The environment's root delegates approvals to bob's personal key (mode ``signed``): the site
runs only what bob signed. The release changes a ConfigMap and creates another on the test
kube-apiserver, replaces a file, creates a table on real PostgreSQL and one on real MariaDB
(each with a ``down`` script), then its last step fails. The live server imports the
failure, the rollout pauses (site-02's batch never starts), and in the same import the hub
creates the rollback release, records it approved by inheritance from the release bob signed
and queues it for site-01; the live server pushes it; the agent — which cannot get a new
signature from bob — accepts it because every step undoes a step of the bundle it ran and
bob's approval counts against the release digest it recorded then; it puts the ConfigMaps,
the file and both databases back; the rollback's result comes home. Nobody acted after the
rollout was started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import run, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site
from tests.e2e.test_live_processes import site as live_site  # noqa: F401 - a fixture
from tests.e2e.test_rollout_processes import fleet  # noqa: F401 - a fixture
from tests.fixtures.kube import KubeServer


def _pg_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(r[0]) for r in rows.fetchall()}


def _maria_tables(server: Any, dsn: str) -> set[str]:
    conn = server.connect(dsn.rsplit("/", 1)[1])
    try:
        cur = conn.cursor()
        cur.execute("SHOW TABLES")
        return {str(r[0]) for r in cur.fetchall()}
    finally:
        conn.close()


def _cm(name: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                       "data": data})


def _release(src: Path, ns: str, conf: Path, marker: Path) -> Path:
    """shop 1.0: k8s, file, sql postgres, sql mysql (each undoable), then a failing check."""
    src.mkdir()
    (src / "cm.yaml").write_text(_cm("settings", {"mode": "new"}) + "\n---\n"
                                 + _cm("created", {"k": "v"}) + "\n")
    (src / "app.conf").write_text("port=8080\n")
    (src / "up.sql").write_text("CREATE TABLE invoices (id INT);\n")
    (src / "down.sql").write_text("DROP TABLE invoices;\n")
    (src / "check.sh").write_text("echo 'port 8080 is taken' >&2\nexit 1\n")
    (src / "uncheck.sh").write_text(f'echo "check rolled back" >> "{marker}"\n')
    (src / "release.toml").write_text(f'''format = 1
[release]
product = "shop"
version = "1.0"

[[steps]]
name = "settings"
kind = "k8s"
connection = "kube"
manifests = ["cm.yaml"]
namespace = "{ns}"

[[steps]]
name = "config"
kind = "file"
source = "app.conf"
path = "{conf}"

[[steps]]
name = "pg schema"
kind = "sql"
engine = "postgres"
connection = "pg"
script = "up.sql"
down = "down.sql"

[[steps]]
name = "maria schema"
kind = "sql"
engine = "mysql"
connection = "maria"
script = "up.sql"
down = "down.sql"

[[steps]]
name = "check"
kind = "shell"
script = "check.sh"
rollback = "uncheck.sh"
''')
    return src


@pytest.fixture
def signed_site(fleet: Site, tmp_path: Path) -> Iterator[Site]:  # noqa: F811 - the fixture
    """The fleet of test_rollout_processes, and plant-a delegated to bob's personal key in
    root version 2 (the hub hands it to the site in the first bundle)."""
    site = fleet
    pw = tmp_path / "approver-pass"
    pw.write_text("approver passphrase\n")
    run("keys", "generate", "--role", "approver", "--label", "bob", "-o",
        str(tmp_path / "bob.key"), "--passphrase-file", str(pw), "--kdf-profile",
        "interactive")
    site.hub("users", "add-key", "bob", str(tmp_path / "bob.key.pub"), user="bob")
    (tmp_path / "approvals.json").write_text(json.dumps({"plant-a": {
        "mode": "signed", "threshold": 1, "min_groups": 1,
        "approvers": [{"name": "bob", "group": "ops", "key": "bob.key.pub"}]}}))
    run("keys", "root", "rotate", "--current", str(site.data / "root.json"), "--signing-key",
        str(site.data / "root-key.OFFLINE.json"), "--approvals",
        str(tmp_path / "approvals.json"), "-o", str(tmp_path / "root-v2.json"), env=site.env)
    site.hub("keys", "install-root", str(tmp_path / "root-v2.json"))
    site.hub("users", "grant", "carol", "developer")  # the starter makes the rollback release
    yield site


def _rollback_state(site: Site) -> str | None:
    rows = site.sql("SELECT d.state FROM deployments d JOIN releases r ON r.id = d.release_id"
                    " WHERE r.rollback_of_id IS NOT NULL")
    return str(rows[0][0]) if rows else None


def test_a_failing_canary_is_rolled_back_by_itself_in_a_signed_environment(
        signed_site: Site, tmp_path: Path, kube_server: KubeServer, kube_namespace: str,
        pg_db: str, mysql_db: str, mariadb_server: Any) -> None:
    site = signed_site
    ns = kube_namespace
    base = f"/api/v1/namespaces/{ns}/configmaps"
    kube_server.must("POST", base, json.loads(_cm("settings", {"mode": "old"})))
    conf, marker = tmp_path / "app.conf", tmp_path / "rolled-back.txt"
    conf.write_text("port=80\n")
    with (site.home / "agent.toml").open("a") as fh:
        fh.write(f'\n[connections.pg]\ntype = "postgres"\ndsn = "{pg_db}"\n'
                 f'\n[connections.maria]\ntype = "mysql"\ndsn = "{mysql_db}"\n'
                 f'\n[connections.kube]\ntype = "kubernetes"\n'
                 f'kubeconfig = "{kube_server.kubeconfig}"\n')

    site.hub("releases", "create", str(_release(tmp_path / "shop-1.0", ns, conf, marker)),
             "--create-product", user="alice")
    site.hub("releases", "submit", "shop", "1.0", user="alice")
    site.hub("releases", "approve", "shop", "1.0", "--key", str(tmp_path / "bob.key"),
             "--environment", "plant-a", "--passphrase-file", str(tmp_path / "approver-pass"),
             user="bob")
    site.start_hub("hub.log")
    site.start_agent()
    wait_for(site.seen, DEADLINE, "the live agent to come online")

    started = site.hub_json("rollouts", "start", "shop", "1.0", "--environment", "plant-a",
                            "--canary", "site-01", "--auto-rollback")
    rid = str(started["id"])
    wait_for(lambda: _rollback_state(site) in ("succeeded", "failed", "rejected"), DEADLINE * 2,
             "the canary to fail and its automatic rollback to be pushed, run and imported")
    assert _rollback_state(site) == "succeeded", site.log("agent.log")[-4000:]

    # Everything the release changed is back as it was.
    assert kube_server.must("GET", f"{base}/settings")["data"] == {"mode": "old"}
    assert kube_server.get(f"{base}/created") is None
    assert conf.read_text() == "port=80\n"
    assert "invoices" not in _pg_tables(pg_db)
    assert "invoices" not in _maria_tables(mariadb_server, mysql_db)
    assert marker.read_text() == "check rolled back\n"

    view = site.hub_json("rollouts", "show", rid)
    assert view["state"] == "paused" and view["rolled_back"]
    assert [a["state"] for b in view["batches"] for a in b["agents"]] == ["failed",
                                                                          "not queued"]
    (rollback,) = view["rollbacks"]
    assert rollback["inherited_from"] == "shop 1.0" and rollback["state"] == "approved"
    assert rollback["deployments"][0]["agent"] == "site-01"
    # Nobody approved the rollback: the hub recorded the inheritance, the site checked it.
    (event,) = site.audit("release.approve_inherited")
    details = json.loads(event["details"])
    assert event["actor"] == "system:rollout" and details["inherited_from"] == "shop 1.0"
    assert [a["approver"] for a in details["approvals"]] == ["bob"]
    assert "approvals inherited from it" in site.log("agent.log")
    status = json.loads(run("agent", "status", "--home", str(site.home), "--json").stdout)
    assert int(status["root_version"]) == 2
    # site-02's batch never started: an export for plant-a has nothing to write.
    out = site.hub("export", "--environment", "plant-a", "--out", str(tmp_path / "usb"),
                   user="carol")
    assert not list((tmp_path / "usb").glob("*.tgb")), out.stdout
    assert site.hub("audit", "verify").returncode == 0
