"""A rollback by media with real processes: hub CLI → USB → agent → hub, twice.

A release creates a table on real PostgreSQL (with a down script), places a file (replacing
one), runs a shell step with a rollback script and one without. It is deployed by media and
run by a real agent; then ``hub deployments rollback`` builds the rollback release (naming
the step it cannot undo), it is approved, queued and exported like any release, the same
agent runs it, and its result comes back: the table is gone, the file is the one from
before, the shell rollback ran, the step without a rollback script is named in the
rollback's result as not undone, the audit log holds the rollback and verifies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.conftest import SITE_PEOPLE, carry, media_site, run_agent_until


def _tables(pg_db: str) -> set[str]:
    with psycopg.connect(pg_db, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(r[0]) for r in rows.fetchall()}


def test_a_deployment_is_rolled_back_by_media(tmp_path: Path, pg_db: str) -> None:
    hub, _data, home = media_site(
        tmp_path, hub_id="hub-rb", people=(*SITE_PEOPLE, ("aud", "auditor")),
        connections=f'[connections.billing-db]\ntype = "postgres"\ndsn = "{pg_db}"\n')

    def hub_json(*args: str, user: str = "carol") -> Any:
        return json.loads(hub(*args, "--json", user=user).stdout)

    site = tmp_path / "site"
    site.mkdir()
    conf, marker, log = site / "app.conf", site / "marker", site / "log"
    conf.write_text("port=80\n")
    rel = tmp_path / "app-1.0"
    (rel / "scripts").mkdir(parents=True)
    (rel / "app.conf").write_text("port=${port}\n")
    (rel / "scripts" / "make.sh").write_text(f'echo made > "{marker}"\n')
    (rel / "scripts" / "unmake.sh").write_text(f'rm "{marker}"\n')
    (rel / "scripts" / "note.sh").write_text(f'echo noted >> "{log}"\n')
    (rel / "up.sql").write_text("CREATE TABLE invoices (id INT);\n")
    (rel / "down.sql").write_text("DROP TABLE invoices;\n")
    (rel / "release.toml").write_text(f'''format = 1
[release]
product = "app"
version = "1.0"

[[steps]]
name = "schema"
kind = "sql"
engine = "postgres"
connection = "billing-db"
script = "up.sql"
down = "down.sql"

[[steps]]
name = "config"
kind = "file"
source = "app.conf"
path = "{conf}"
render = true
params = {{ port = "8080" }}

[[steps]]
name = "marker"
kind = "shell"
script = "scripts/make.sh"
rollback = "scripts/unmake.sh"

[[steps]]
name = "note"
kind = "shell"
script = "scripts/note.sh"
''')
    hub("releases", "create", str(rel), "--create-product", user="dev")
    shown = hub_json("releases", "show", "app", "1.0")
    assert shown["undo"] == [
        "1 (schema): undo: yes (its down script down.sql is run)",
        "2 (config): undo: yes (the previous file (or its absence) is recorded and restored)",
        "3 (marker): undo: yes (its rollback script scripts/unmake.sh is run)",
        "4 (note): undo: no (a shell step without a rollback script cannot be undone)"]

    def deliver(product: str, version: str, n: int) -> None:
        hub("releases", "approve", product, version, user="bob")
        hub("deployments", "queue", product, version, "--environment", "plant-a", user="carol")
        usb = tmp_path / f"usb-{n}"
        hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
        new = run_agent_until(home, usb.glob("*.tgb"), f"the result of {product} {version}")
        back = carry(new, tmp_path / f"back-{n}")
        assert "1 imported" in hub("import", str(back), user="carol").stdout

    hub("releases", "submit", "app", "1.0", user="dev")
    deliver("app", "1.0", 1)
    (first,) = hub_json("deployments", "list")
    assert first["state"] == "succeeded", first
    assert conf.read_text() == "port=8080\n" and marker.exists()
    assert "invoices" in _tables(pg_db)

    made = hub_json("deployments", "rollback", str(first["id"]), "--reason",
                    "port 8080 is taken at plant A", user="dev")

    assert made["version"] == f"1.0-rollback-{first['id']}" and made["state"] == "submitted"
    assert made["undo_steps"] == ["undo 4: note", "undo 3: marker", "undo 2: config",
                                  "undo 1: schema"]
    assert made["not_undone"] == [{"step": 4, "name": "note", "ran": True, "why":
                                   "a shell step without a rollback script cannot be undone"}]
    deliver("app", made["version"], 2)
    second = [d for d in hub_json("deployments", "list") if d["id"] != first["id"]]
    assert [d["state"] for d in second] == ["failed"], second  # not everything undone
    steps = second[0]["result_summary"]["steps"]
    assert [s["status"] for s in steps] == ["failed", "succeeded", "succeeded", "succeeded"]
    assert "step 4 of bundle" in steps[0]["summary"]
    assert "ran here and cannot be undone" in steps[0]["summary"]
    assert conf.read_text() == "port=80\n" and not marker.exists()
    assert "invoices" not in _tables(pg_db)  # the down script ran on real PostgreSQL
    assert log.read_text() == "noted\n"  # what cannot be undone was not touched

    events = hub_json("audit", "show", "--last", "50", user="aud")
    (event,) = [e for e in events if e["action"] == "deployment.rollback"]
    details = json.loads(event["details"])  # audit show gives details as JSON text
    assert details["reason"] == "port 8080 is taken at plant A"
    assert details["rollback_release"] == f"app {made['version']}"
    assert hub("audit", "verify", user="aud").returncode == 0
