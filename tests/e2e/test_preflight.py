"""Preflight (issue 14 §3) with real processes: the agent's inventory travels back with its
result, and the hub refuses to export a release naming a connection the site lacks —
without using a sequence — unless --force.

The issue's case: the billing release needs connection 'billing-db'; site-01 has only
'app-db' and 'reports-db'.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.agent_site import write_release
from tests.e2e.conftest import carry_home, drop_settled, media_site, run

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def test_export_refuses_a_release_the_site_cannot_run(tmp_path: Path) -> None:
    hub, _data, home = media_site(tmp_path, connections=(
        '[connections.app-db]\ntype = "postgres"\ndsn = "postgresql:///app"\n'
        '\n[connections.reports-db]\ntype = "postgres"\ndsn = "postgresql:///reports"\n'))

    # Before any result: the inventory is unknown (shown, and a warning at export).
    shown = json.loads(hub("agents", "show", "site-01", "--json").stdout)
    assert shown["inventory"] is None

    def release(directory: Path, product: str, version: str) -> list[dict[str, str]]:
        hub("releases", "create", str(directory), "--create-product", user="dev")
        hub("releases", "submit", product, version, user="dev")
        hub("releases", "approve", product, version, user="bob")
        [queued] = json.loads(hub("deployments", "queue", product, version, "--environment",
                                  "plant-a", "--json", user="carol").stdout)
        return list(queued["preflight"])

    [warning] = release(HELLO, "hello", "1.0.0")
    assert warning["severity"] == "warning" and "no inventory yet" in warning["message"]
    usb = tmp_path / "usb"
    first = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "sequence 1" in first.stdout
    assert "agent site-01 has sent no inventory yet" in first.stderr
    for f in usb.glob("*.tgb"):
        drop_settled(f, home)
    run("agent", "run", "--home", str(home), "--once")
    back = carry_home(home, tmp_path / "back")
    assert "1 imported" in hub("import", str(back), user="carol").stdout

    shown = json.loads(hub("agents", "show", "site-01", "--json").stdout)
    inv = shown["inventory"]
    assert inv["connections"] == {"app-db": "postgres", "reports-db": "postgres"}
    assert "sql" in inv["step_kinds"] and inv["cpus"] >= 1 and inv["free_disk_bytes"] > 0
    assert "dsn" not in json.dumps(inv) and "postgresql://" not in json.dumps(inv)
    text = hub("agents", "show", "site-01").stdout
    assert "app-db (postgres), reports-db (postgres)" in text

    billing = write_release(
        tmp_path / "billing-2.4.0", "billing", "2.4.0",
        ['name = "create billing schema"\nkind = "sql"\nengine = "postgres"\n'
         'connection = "billing-db"\nscript = "schema.sql"'],
        {"schema.sql": "CREATE TABLE invoices (id INT);\n"})
    # Queueing already says what is missing.
    assert release(billing, "billing", "2.4.0") == [{
        "agent": "site-01", "severity": "problem",
        "message": "agent site-01 has no connection 'billing-db' (it has: app-db, reports-db); "
                   "step 1 ('create billing schema') needs it"}]
    before = sorted(p.name for p in usb.iterdir())
    refused = hub("export", "--environment", "plant-a", "--out", str(usb), "--json",
                  user="carol", check=False)
    assert refused.returncode == 1
    report = json.loads(refused.stdout)
    assert report["written"] == []
    [failed] = report["failed"]
    assert ("agent site-01 has no connection 'billing-db' (it has: app-db, reports-db); "
            "step 1 ('create billing schema') needs it") in failed["reason"]
    assert "no sequence used" in failed["reason"]
    # Nothing changed: still queued, no sequence, nothing new on the media.
    deps = {d["release"]: d for d in
            json.loads(hub("deployments", "list", "--json", user="carol").stdout)}
    billing_dep = next(d for k, d in deps.items() if k.startswith("billing"))
    assert billing_dep["state"] == "queued" and billing_dep["sequence"] is None
    assert sorted(p.name for p in usb.iterdir()) == before

    # --force exports it anyway (recorded), with the next sequence: 2, none was used.
    forced = hub("export", "--environment", "plant-a", "--out", str(usb), "--force",
                 user="carol")
    assert "sequence 2" in forced.stdout
    assert "no connection 'billing-db'" in forced.stderr
    events = json.loads(hub("audit", "show", "--last", "50", "--json").stdout)
    details = [json.loads(e["details"]) if isinstance(e["details"], str) else e["details"]
               for e in events if e["action"] == "bundle.claimed"]
    [claimed] = [d for d in details if d["sequence"] == 2]
    assert claimed["preflight_forced"] == [
        "agent site-01 has no connection 'billing-db' (it has: app-db, reports-db); step 1 "
        "('create billing schema') needs it"]
