"""Preflight plans (issue 14 §3) with real processes: ``hub releases plan`` writes a plan to
the media, ``agent run --once`` checks the site with it — real PostgreSQL, the real
kube-apiserver — changing nothing, its signed answer is imported, and a rollout gated on
"preflight passed within 24 h" waits until a plan passes, then deploys with sequence 1:
the plans used no deployment sequence.

The site first lacks connection 'billing-db' and the Kubernetes namespace the manifest names
(the API server rejects it in the dry run); both are fixed at the site, and the next plan
passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.agent_site import write_release
from tests.e2e.conftest import add_people, drop_settled, run, set_fast_inbox
from tests.fixtures.kubeserver import KubeServer


def _tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'public' "
            "order by 1")]


def test_plan_catches_what_is_missing_then_gates_the_rollout(
        tmp_path: Path, pg_db: str, kube_server: KubeServer) -> None:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}

    def hub(*args: str, user: str = "carol",
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=env, check=check)

    def hub_json(*args: str, user: str = "carol") -> Any:
        return json.loads(hub(*args, "--json", user=user).stdout)

    hub("init", "--admin", "admin", "--hub-id", "hub-e2e", user="admin")
    add_people(env, (("alice", "developer"), ("bob", "approver"), ("carol", "operator")))

    home = tmp_path / "agent"
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    cfg = home / "agent.toml"
    cfg.write_text(cfg.read_text().replace("[connections]\n", "") +
                   f'\n[connections.kube]\ntype = "kubernetes"\n'
                   f'kubeconfig = "{kube_server.kubeconfig}"\n')
    stick = tmp_path / "stick"
    stick.mkdir()
    shutil.copy(next((home / "outbox").glob("enrollment-*.json")), stick)
    hub("import", str(stick))

    ns = f"billing-{uuid.uuid4().hex[:8]}"  # not on the API server yet
    billing = write_release(
        tmp_path / "billing-2.4.0", "billing", "2.4.0",
        ['name = "create billing schema"\nkind = "sql"\nengine = "postgres"\n'
         'connection = "billing-db"\nscript = "schema.sql"\ncheck = "no-invoices-yet.sql"\n'
         'server_version = ">= 12"',
         'name = "billing config"\nkind = "k8s"\nconnection = "kube"\n'
         'manifests = ["billing.yaml"]'],
        {"schema.sql": "CREATE TABLE invoices (id INT);\n",
         "no-invoices-yet.sql": "SELECT count(*) = 0 FROM information_schema.tables "
                                "WHERE table_name = 'invoices';\n",
         "billing.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: billing\n"
                         f"  namespace: {ns}\ndata:\n  currency: EUR\n"})
    hub("releases", "create", str(billing), "--create-product", user="alice")
    hub("releases", "submit", "billing", "2.4.0", user="alice")

    def plan_round(n: int) -> dict[str, Any]:
        """Plan for the environment, carry it to the site and back; the plan's row."""
        usb = tmp_path / f"usb-{n}"
        made = hub_json("releases", "plan", "billing", "2.4.0", "--environment", "plant-a",
                        "--out", str(usb))
        assert made["agents"] == ["site-01"] and len(made["files"]) == 1
        drop_settled(Path(made["files"][0]), home)
        run("agent", "run", "--home", str(home), "--once")
        back = tmp_path / f"back-{n}"
        back.mkdir()
        for f in (home / "outbox").glob("*.tgr"):
            shutil.copy(f, back)
        assert "imported" in hub("import", str(back)).stdout
        plans = hub_json("releases", "plans", "billing", "2.4.0")
        [row] = [p for p in plans if p["plan"] == made["sequence"]]
        return row  # type: ignore[no-any-return]

    # 1. The plan catches the missing connection and the manifest the server rejects.
    first = plan_round(1)
    [outcome] = first["outcomes"]
    assert outcome["agent"] == "site-01" and outcome["status"] == "failed"
    failed = {(c["check"], c["step"]): c["summary"] for c in outcome["checks"]
              if c["status"] == "failed"}
    assert "connection 'billing-db' is not defined in the agent config" in \
        failed[("connection", "create billing schema")]
    dry = failed[("k8s-dry-run", "billing config")]
    assert "server dry run rejected 1 of 1 object" in dry and ns in dry
    # ... and changed nothing at the site.
    assert "invoices" not in _tables(pg_db)
    assert kube_server.get(f"/api/v1/namespaces/{ns}/configmaps/billing") is None

    # 2. The gate: a rollout that needs a passed preflight within 24 h waits.
    hub("releases", "approve", "billing", "2.4.0", user="bob")
    started = hub_json("rollouts", "start", "billing", "2.4.0", "--environment", "plant-a",
                       "--preflight-within", "24")
    rid = str(started["id"])
    assert hub_json("deployments", "list") == []
    waits = hub_json("rollouts", "show", rid)["batches"][0]["waiting_for"]
    assert any(w.startswith(f"preflight: site-01: preflight plan {first['plan']} failed")
               for w in waits), waits

    # 3. The site is fixed: the connection is defined, the namespace exists.
    cfg.write_text(cfg.read_text() + f'\n[connections.billing-db]\ntype = "postgres"\n'
                                     f'dsn = "{pg_db}"\n')
    kube_server.create_namespace(ns)
    try:
        second = plan_round(2)
        [outcome] = second["outcomes"]
        assert outcome["status"] == "passed", outcome
        passed = {c["check"] for c in outcome["checks"]}
        assert {"connection", "server-version", "check-script", "k8s-dry-run",
                "free-space", "steps"} <= passed
        assert "invoices" not in _tables(pg_db)  # still nothing changed
        assert kube_server.get(f"/api/v1/namespaces/{ns}/configmaps/billing") is None

        # The plan's answer advanced the rollout: the deployment is queued now.
        [dep] = hub_json("deployments", "list")
        assert dep["state"] == "queued" and dep["agent"] == "site-01"
        # 4. The real deployment takes sequence 1: the two plans used none.
        usb = tmp_path / "usb-deploy"
        exported = hub("export", "--environment", "plant-a", "--out", str(usb))
        assert "sequence 1" in exported.stdout
        for f in usb.glob("*.tgb"):
            drop_settled(f, home)
        run("agent", "run", "--home", str(home), "--once")
        assert "invoices" in _tables(pg_db)
        cm = kube_server.get(f"/api/v1/namespaces/{ns}/configmaps/billing")
        assert cm is not None and cm["data"] == {"currency": "EUR"}
        status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
        assert [(b["sequence"], b["state"]) for b in status["bundles"]] == [(1, "succeeded")]
    finally:
        kube_server.delete_namespace(ns)
