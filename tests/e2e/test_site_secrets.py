"""Site secrets with real processes: an admin stores a PostgreSQL password and an API token
on the hub (`hub secrets set`), the export seals both to the agent's box key, a real agent
process opens them just in time — the password for the connection of a SQL step on a real
PostgreSQL, the token as the header of an http step to a local server — and neither value
is in any file of the hub (database, audit), the media, the agent's home (logs, journal,
results) nor any command's output."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path
from typing import Any, ClassVar

from bundle.inspect import read_manifest_unverified
from tests.e2e.agent_site import write_release
from tests.e2e.conftest import carry_home, media_site, run_agent_until
from tests.fixtures.dbservers import PostgresServer


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records the Authorization header of each request; answers 201."""

    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("Authorization"))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_sealed_password_connects_a_sql_step_and_is_never_shown(
        tmp_path: Path, postgres_server: PostgresServer, pg_db: str) -> None:
    password = postgres_server.password
    token = "Bearer tok-" + password[::-1]  # a second secret, for an http step's header
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dbname = pg_db.rsplit("/", 1)[1]
    site_hub, data, home = media_site(tmp_path, hub_id="hub-secrets", connections=(
        "[connections.billing-db]\ntype = \"postgres\"\n"
        f"dsn = \"postgresql://{postgres_server.user}@127.0.0.1:{postgres_server.port}/"
        f"{dbname}\"\npassword = {{ secret = \"billing-db-password\" }}\n"))
    outputs: list[str] = []  # every command's output from here on (secrets are set below)

    def hub(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        proc = site_hub(*args, **kwargs)
        outputs.extend((proc.stdout, proc.stderr))
        return proc

    # Write-only: an operator may not set it; the admin can; nobody reads it back.
    denied = hub("secrets", "set", "plant-a", "billing-db-password", "--from-env", "PW",
                 user="carol", check=False, extra={"PW": password})
    assert denied.returncode != 0 and "carol" in denied.stderr
    assert not (data / "secrets").exists()
    hub("secrets", "set", "plant-a", "billing-db-password", "--from-env", "PW",
        extra={"PW": password})
    hub("secrets", "set", "plant-a", "api-token", "--from-env", "PW", extra={"PW": token})
    listed = json.loads(hub("secrets", "list", "plant-a", "--json", user="carol").stdout)
    assert [(s["name"], s["set_by"]) for s in listed] == [("api-token", "admin"),
                                                          ("billing-db-password", "admin")]

    release = write_release(
        tmp_path / "rel", "billing", "1.0.0",
        ['name = "schema"\nkind = "sql"\nengine = "postgres"\nconnection = "billing-db"\n'
         'script = "001.sql"\nsecrets = ["billing-db-password"]',
         f'name = "notify"\nkind = "http"\nmethod = "POST"\nbody = "note.json"\n'
         f'url = "http://127.0.0.1:{server.server_address[1]}/deployed"\n'
         'secret_headers = { Authorization = "api-token" }\nsecrets = ["api-token"]'],
        {"001.sql": "CREATE TABLE invoices (id int primary key);\n"
                    "INSERT INTO invoices VALUES (42);\n", "note.json": '{"v": 1}'})
    hub("releases", "create", str(release), "--create-product", user="dev")
    hub("releases", "submit", "billing", "1.0.0", user="dev")
    hub("releases", "approve", "billing", "1.0.0", user="bob")
    hub("deployments", "queue", "billing", "1.0.0", "--environment", "plant-a", user="carol")
    usb = tmp_path / "usb"
    hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    (bundle,) = usb.glob("*.tgb")
    sealed = read_manifest_unverified(bundle)["secrets"]
    assert sorted((e["name"], e["agent_id"]) for e in sealed) == [
        ("api-token", "site-01"), ("billing-db-password", "site-01")]

    log = tmp_path / "agent.log"
    run_agent_until(home, [bundle], "the result file", log=log)
    back = carry_home(home, tmp_path / "stick-back")
    hub("import", str(back), user="carol")
    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert [d["state"] for d in deps] == ["succeeded"], (deps, log.read_text())
    with postgres_server.connect(dbname) as conn:
        assert conn.execute("SELECT id FROM invoices").fetchall() == [(42,)]
    server.shutdown()
    server.server_close()
    assert _Recorder.seen == [token]  # the http step sent the sealed token as its header

    audit = tmp_path / "audit.jsonl"
    hub("audit", "export", "--out", str(audit))
    events = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    assert any(e.get("action") == "secret.set" for e in events)
    for needle in (password.encode(), token.encode()):
        for root in (data, usb, home, back, tmp_path / "audit.jsonl", log):
            found = [root] if root.is_file() and needle in root.read_bytes() else (
                _files_containing(root, needle) if root.is_dir() else [])
            assert found == [], f"a secret value is in {found}"
    assert all(password not in text and token not in text for text in outputs)
