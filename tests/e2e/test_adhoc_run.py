"""Ad-hoc runs (issue 16 §1) with real processes: `tiangong run sql` builds a one-off release
through the hub's services; while the environment's rule wants an approval it stops (nothing
queued, nothing exported, no sequence used); once approved, `tiangong run ship` exports it for
media, and a real `tiangong agent run --once` runs the SQL on real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.e2e.conftest import carry_home, drop_settled, media_site, run


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def test_an_adhoc_sql_run_reaches_postgresql_by_media_after_its_approval(
        tmp_path: Path, pg_db: str) -> None:
    hub, data, home = media_site(
        tmp_path, people=(("carol", "developer"), ("carol", "operator"), ("bob", "approver")),
        connections=f'[connections.app-db]\ntype = "postgres"\ndsn = "{pg_db}"\n')
    env = {"TIANGONG_HUB_DATA_DIR": str(data)}

    demo = tmp_path / "demo.sql"
    demo.write_text("CREATE TABLE adhoc_demo (id INT PRIMARY KEY);\n"
                    "INSERT INTO adhoc_demo VALUES (1);\n")
    usb = tmp_path / "usb"
    refused = run("run", "sql", "--file", str(demo), "--agent", "site-01",
                  "--connection", "app-db", "--out", str(usb), "--data-dir", str(data),
                  "--local-admin", "carol", env=env, check=False)
    assert refused.returncode == 1, refused.stderr
    [release] = json.loads(hub("releases", "list", "--product", "adhoc", "--json").stdout)
    version = release["version"]
    assert release["state"] == "submitted" and release["author"] == "carol"
    assert f"release adhoc {version} created and submitted" in refused.stdout
    assert ("environment plant-a requires 1 approval, it has 0; waiting for 1 approval: "
            f"`tiangong hub releases approve adhoc {version}`") in refused.stderr
    # Nothing queued, nothing exported, no sequence used.
    assert json.loads(hub("deployments", "list", "--json").stdout) == []
    assert not usb.exists() or list(usb.iterdir()) == []
    events = json.loads(hub("audit", "show", "--last", "50", "--json").stdout)
    mine = [e["action"] for e in events if version in str(e["object"])]
    assert "release.create" in mine and "release.submit" in mine
    assert not any(e["action"] in ("deployment.queue", "bundle.claimed") for e in events)
    shown = json.loads(hub("releases", "show", "adhoc", version, "--json").stdout)
    assert shown["steps"] == ["run demo.sql"]

    hub("releases", "approve", "adhoc", version, user="bob")
    shipped = json.loads(run("run", "ship", version, "--agent", "site-01", "--out", str(usb),
                             "--json", "--data-dir", str(data), "--local-admin", "carol",
                             env=env).stdout)
    assert shipped["shipped"] is True and shipped["failed"] == []
    [written] = shipped["written"]
    assert written["sequence"] == 1

    for f in usb.glob("*.tgb"):
        drop_settled(f, home)
    assert "adhoc_demo" not in _tables(pg_db)
    run("agent", "run", "--home", str(home), "--once")
    assert "adhoc_demo" in _tables(pg_db)  # the SQL ran on real PostgreSQL

    back = carry_home(home, tmp_path / "back")
    assert "1 imported" in hub("import", str(back), user="carol").stdout
    [dep] = json.loads(hub("deployments", "list", "--json").stdout)
    assert dep["release"] == f"adhoc {version}"
    assert dep["agent"] == "site-01" and dep["state"] == "succeeded"
