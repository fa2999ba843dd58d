"""`tiangong hub backup` / `hub restore`, with real CLI processes: a hub on SQLite and one on
PostgreSQL are backed up, restored into a new data directory (and a new database), and the
restored audit log verifies; the root key never enters a backup; a damaged backup or a
used data directory is refused with nothing written."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.e2e.conftest import run
from tests.fixtures.dbservers import PostgresServer

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "releases" / "hello-1.0.0"

Hub = Callable[..., CompletedProcess[str]]


def _make_hub(data: Path, *init: str) -> Hub:
    env = {"TIANGONG_KEY_PASSPHRASE": "backup-test-pass"}

    def hub(*args: str, check: bool = True, data_dir: Path = data) -> CompletedProcess[str]:
        return run("hub", "--local-admin", "admin", "--data-dir", str(data_dir), *args, env=env,
                   check=check)

    hub("init", "--admin", "admin", "--hub-id", "hub-backup", "--sign-in", "none",
        "--environment", "plant-a", *init)
    hub("users", "grant", "admin", "developer")
    hub("releases", "create", str(HELLO), "--create-product")
    hub("audit", "checkpoint")
    return hub


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _events(verify: CompletedProcess[str]) -> object:
    return json.loads(verify.stdout)


def test_sqlite_hub_backs_up_and_restores_with_a_verifying_audit_log(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    hub = _make_hub(data)
    out = tmp_path / "backup"
    # A running hub keeps its gunicorn control socket in the data directory.
    with socket.socket(socket.AF_UNIX) as ctl:
        ctl.bind(str(data / "gunicorn.ctl"))
        done = json.loads(hub("backup", str(out), "--json").stdout)
    assert done["database"] == "sqlite" and done["left_out"] == ["root-key.OFFLINE.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hub_id"] == "hub-backup"
    assert manifest["tiangong_version"] == version("tiangong")
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    backed = _files(out / "files")
    assert "root-key.OFFLINE.json" not in backed and "hub.db" not in backed
    assert "gunicorn.ctl" not in backed
    # Keys are copied byte for byte as they are on disk (encrypted where they are encrypted).
    for name in ("keys/release.key", "keys/audit.key", "keys/audit-mac.key", "tls/ca.key"):
        assert backed[name] == (data / name).read_bytes()
        assert oct((out / "files" / name).stat().st_mode & 0o777) == \
            oct((data / name).stat().st_mode & 0o777)
    assert any(name.startswith("releases/") for name in backed)

    new = tmp_path / "restored"
    restored = hub("restore", str(out), "--json", data_dir=new)
    assert json.loads(restored.stdout) == {"hub_id": "hub-backup", "data_dir": str(new)}
    verify = hub("audit", "verify", "--json", data_dir=new)
    original = hub("audit", "verify", "--json")
    assert _events(verify) == _events(original)
    listing = hub("releases", "list", "--json", data_dir=new)
    assert json.loads(listing.stdout) == json.loads(hub("releases", "list", "--json").stdout)
    # The restored hub uses its own database file, not the old one.
    assert f'database_url = "sqlite:///{new}/hub.db"' in (new / "hub.toml").read_text()
    with sqlite3.connect(new / "hub.db") as db:
        assert db.execute("SELECT count(*) FROM audit_events").fetchone()[0] > 0
    for name, content in backed.items():
        if name != "hub.toml":
            assert (new / name).read_bytes() == content, name


def test_postgresql_hub_backs_up_with_pg_dump_and_restores_into_a_new_database(
        tmp_path: Path, pg_db: str, postgres_server: PostgresServer) -> None:
    data = tmp_path / "hub"
    hub = _make_hub(data, "--database-url", pg_db)
    out = tmp_path / "backup"
    assert json.loads(hub("backup", str(out), "--json").stdout)["database"] == "postgresql"
    assert (out / "database.pgdump").stat().st_size > 0
    target = postgres_server.create_database("t_restore_" + os.urandom(6).hex())
    try:
        new = tmp_path / "restored"
        missing = hub("restore", str(out), data_dir=new, check=False)
        assert missing.returncode == 2 and "give --database-url" in missing.stderr
        wrong = hub("restore", str(out), "--database-url", f"sqlite:///{tmp_path}/x.db",
                    data_dir=new, check=False)
        assert wrong.returncode == 2
        assert "holds a postgresql database; --database-url names sqlite" in wrong.stderr
        assert not new.exists() and not (tmp_path / "x.db").exists()
        hub("restore", str(out), "--database-url", target, data_dir=new)
        verify = hub("audit", "verify", "--json", data_dir=new)
        assert _events(verify) == _events(hub("audit", "verify", "--json"))
        assert target in (new / "hub.toml").read_text()
    finally:
        postgres_server.drop_database(target.rsplit("/", 1)[1])


def test_a_damaged_backup_or_a_used_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    hub = _make_hub(data)
    out = tmp_path / "backup"
    hub("backup", str(out))

    again = hub("backup", str(out), check=False)
    assert again.returncode == 2 and f"backup directory {out} exists and is not empty" in \
        again.stderr

    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    refused = hub("restore", str(out), data_dir=used, check=False)
    assert refused.returncode == 2 and f"data directory {used} exists and is not empty" in \
        refused.stderr
    assert _files(used) == {"keep.txt": b"mine"}

    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    no_dir = hub("restore", str(out), data_dir=blocked / "new", check=False)
    assert no_dir.returncode == 2 and "Traceback" not in no_dir.stderr
    assert f"error: restore into {blocked}/new: {blocked}/new.partial: Not a directory" in \
        no_dir.stderr
    assert blocked.read_text() == "not a directory"

    key = out / "files" / "keys" / "release.key"
    key.write_bytes(key.read_bytes().replace(b"a", b"b", 1))
    new = tmp_path / "restored"
    damaged = hub("restore", str(out), data_dir=new, check=False)
    assert damaged.returncode == 2
    assert "files/keys/release.key does not match its SHA-256 in manifest.json" in damaged.stderr
    assert not new.exists() and not new.with_name("restored.partial").exists()


@pytest.mark.parametrize("doc", ["install.md"])
def test_docs_say_what_to_keep_offline(doc: str) -> None:
    text = (REPO / "docs" / doc).read_text()
    assert "tiangong hub backup" in text and "tiangong hub restore" in text
    assert "root key" in text and "offline" in text
