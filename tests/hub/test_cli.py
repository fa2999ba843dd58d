"""CLI smoke tests: init → users → release from examples/ → submit → approve as another
user → queue; audit verify/export; tables and --json."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tiangong.cli import root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "releases"


def run(data_dir: Path, *args: str, actor: str | None = "admin", ok: bool = True) -> Result:
    argv = ["hub", "--data-dir", str(data_dir)]
    if actor is not None:
        argv += ["--local-admin", actor]
    result = CliRunner().invoke(root, [*argv, *args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    out = run(data, "init", "--admin", "admin", "--insecure-no-passphrase", actor=None)
    assert "ROOT KEY (NOT encrypted)" in out.output
    assert "Move it off this machine" in out.output
    for name, role in (
        ("dev", "developer"),
        ("alice", "approver"),
        ("bob", "approver"),
        ("ops", "operator"),
        ("aud", "auditor"),
    ):
        run(data, "users", "create", name)
        run(data, "users", "grant", name, role)
    return data


def test_init_creates_everything(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    run(data, "init", "--admin", "root-admin", "--insecure-no-passphrase", actor=None)
    for name in (
        "hub.toml",
        "hub.db",
        "root.json",
        "root-key.OFFLINE.json",
        "keys/release.key",
        "keys/audit.key",
        "keys/release.pub",
        "keys/audit.pub",
    ):
        assert (data / name).is_file(), name
    assert (data / "hub.toml").stat().st_mode & 0o077 == 0
    assert (data / "keys" / "audit.key").stat().st_mode & 0o077 == 0
    again = run(data, "init", "--admin", "x", "--insecure-no-passphrase", actor=None, ok=False)
    assert again.exit_code == 2 and "already initialised" in again.output
    users = json.loads(run(data, "users", "list", "--json", actor="root-admin").output)
    assert users[0]["username"] == "root-admin" and users[0]["roles"] == ["admin"]


def test_init_with_encrypted_root_key(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    data = tmp_path / "hub"
    out = run(data, "init", "--admin", "admin", "--passphrase-file", str(pw), actor=None)
    assert "ROOT KEY (passphrase-encrypted)" in out.output
    doc = json.loads((data / "root-key.OFFLINE.json").read_text())
    assert doc["protection"] == "passphrase" and "secret" not in doc


def test_init_refuses_without_passphrase_choice(tmp_path: Path) -> None:
    result = CliRunner(env={"TIANGONG_KEY_PASSPHRASE": None}).invoke(
        root, ["hub", "--data-dir", str(tmp_path / "h"), "init", "--admin", "a"]
    )
    assert result.exit_code == 2 and "--insecure-no-passphrase" in result.output


def test_release_to_queue_flow(hub_dir: Path) -> None:
    run(hub_dir, "environments", "create", "plant-a", "--required-approvals", "2")
    run(hub_dir, "products", "create", "hello", actor="dev")
    created = json.loads(
        run(
            hub_dir, "releases", "create", str(EXAMPLES / "hello-1.0.0"), "--json", actor="dev"
        ).output
    )
    assert created["state"] == "draft" and len(created["content_hash"]) == 64
    run(hub_dir, "releases", "submit", "hello", "1.0.0", actor="dev")
    own = run(hub_dir, "releases", "approve", "hello", "1.0.0", actor="dev", ok=False)
    assert own.exit_code == 1
    assert "dev" in own.output and ("author" in own.output or "may not" in own.output)
    run(hub_dir, "releases", "approve", "hello", "1.0.0", "--comment", "ok", actor="alice")
    few = run(
        hub_dir,
        "deployments",
        "queue",
        "hello",
        "1.0.0",
        "--environment",
        "plant-a",
        actor="ops",
        ok=False,
    )
    assert few.exit_code == 1 and "requires 2" in few.output
    run(hub_dir, "releases", "approve", "hello", "1.0.0", actor="bob")
    queued = run(
        hub_dir,
        "deployments",
        "queue",
        "hello",
        "1.0.0",
        "--environment",
        "plant-a",
        "--json",
        actor="ops",
    )
    (dep,) = json.loads(queued.output)
    assert dep["state"] == "queued" and dep["agent"] is None
    table = run(hub_dir, "deployments", "list", actor="ops").output
    assert table.splitlines()[0].split()[:5] == ["ID", "RELEASE", "ENVIRONMENT", "AGENT", "STATE"]
    assert "hello 1.0.0" in table
    shown = json.loads(
        run(hub_dir, "releases", "show", "hello", "1.0.0", "--json", actor="aud").output
    )
    assert [a["by"] for a in shown["approvals"]] == ["alice", "bob"]
    report = json.loads(run(hub_dir, "audit", "verify", "--json", actor="aud").output)
    assert report["ok"] and report["events"] > 10


def test_unknown_acting_user_and_permissions(hub_dir: Path) -> None:
    nobody = run(hub_dir, "products", "create", "x", actor="mallory", ok=False)
    assert nobody.exit_code == 1 and "user 'mallory' does not exist" in nobody.output
    denied = run(hub_dir, "environments", "create", "x", actor="dev", ok=False)
    assert denied.exit_code == 1 and "may not environment.create" in denied.output
    assert "an admin grants one with `tiangong hub users grant dev ROLE`" in denied.output
    run(hub_dir, "environments", "create", "plant-a")
    run(hub_dir, "users", "deactivate", "ops")
    off = run(hub_dir, "agents", "list", "--environment", "plant-a", actor="ops", ok=False)
    assert "an admin reactivates it with `tiangong hub users activate ops`" in off.output


def test_enroll_list_revoke_agent(hub_dir: Path, tmp_path: Path) -> None:
    from signing.keys import BoxKeyPair, SigningKey

    run(hub_dir, "environments", "create", "plant-a")
    request = tmp_path / "enroll.json"
    request.write_text(
        json.dumps(
            {
                "agent_id": "plant-a-01",
                "hostname": "plant-a-01",
                "labels": ["line-1"],
                "ed25519_public": SigningKey.generate().public.raw.hex(),
                "x25519_public": BoxKeyPair.generate().public.raw.hex(),
                "agent_version": "0.1.0",
            }
        )
    )
    response = tmp_path / "response.json"
    run(
        hub_dir,
        "agents",
        "enroll",
        str(request),
        "--environment",
        "plant-a",
        "--out",
        str(response),
        actor="ops",
    )
    from signing.envelope import TYPE_ENROLLMENT_RESPONSE, verify_envelope
    from signing.roots import TrustedRoot

    role = TrustedRoot.pin((hub_dir / "root.json").read_bytes()).document.role_keys("release")
    payload = verify_envelope(
        response.read_bytes(),
        payload_type=TYPE_ENROLLMENT_RESPONSE,
        trusted=role.keys,
        threshold=role.threshold,
    ).payload
    data = json.loads(payload)
    assert data["agent_id"] == "plant-a-01" and data["root"]
    listed = json.loads(run(hub_dir, "agents", "list", "--json", actor="ops").output)
    assert listed[0]["status"] == "enrolled"
    run(hub_dir, "agents", "revoke", "plant-a-01", "--reason", "stolen", actor="ops")
    listed = json.loads(run(hub_dir, "agents", "list", "--json", actor="ops").output)
    assert listed[0]["status"] == "revoked"


def test_audit_export_verifies_offline_and_tampering_is_named(
    hub_dir: Path, tmp_path: Path
) -> None:
    run(hub_dir, "environments", "create", "plant-a")
    export = tmp_path / "audit.jsonl"
    run(hub_dir, "audit", "export", "--out", str(export), actor="aud")
    trust = str(hub_dir / "root.json")
    runner = CliRunner()
    ok = runner.invoke(root, ["audit", "verify-export", str(export), "--trust", trust])
    assert ok.exit_code == 0, ok.output
    assert "audit log verified" in ok.output and "1 checkpoint(s) match" in ok.output

    lines = export.read_bytes().splitlines(keepends=True)
    events = [i for i, line in enumerate(lines) if b'"type":"event"' in line]
    edited = list(lines)
    edited[events[3]] = edited[events[3]].replace(b'"actor":"admin"', b'"actor":"mallory"')
    (tmp_path / "edited.jsonl").write_bytes(b"".join(edited))
    bad = runner.invoke(
        root, ["audit", "verify-export", str(tmp_path / "edited.jsonl"), "--trust", trust]
    )
    assert bad.exit_code == 1 and "event 4 was edited" in bad.output

    deleted = [line for i, line in enumerate(lines) if i != events[2]]
    (tmp_path / "deleted.jsonl").write_bytes(b"".join(deleted))
    bad = runner.invoke(
        root, ["audit", "verify-export", str(tmp_path / "deleted.jsonl"), "--trust", trust]
    )
    assert bad.exit_code == 1 and "event 3 is missing" in bad.output

    truncated = lines[: events[-2]]
    (tmp_path / "short.jsonl").write_bytes(b"".join(truncated))
    bad = runner.invoke(
        root, ["audit", "verify-export", str(tmp_path / "short.jsonl"), "--trust", trust]
    )
    assert bad.exit_code == 1 and "log truncated" in bad.output

    other = tmp_path / "other"
    run(other, "init", "--admin", "admin", "--insecure-no-passphrase", actor=None)
    wrong = runner.invoke(
        root, ["audit", "verify-export", str(export), "--trust", str(other / "root.json")]
    )
    assert wrong.exit_code == 2 and "trusted root is for hub" in wrong.output


def test_audit_cli_imports_no_web_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hub.audit_cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'sqlalchemy', 'flask_sqlalchemy', 'alembic')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_release_from_archive_with_product_creation(hub_dir: Path, tmp_path: Path) -> None:
    import shutil

    archive = shutil.make_archive(
        str(tmp_path / "billing-2.4.0"), "gztar", EXAMPLES, "billing-2.4.0"
    )
    missing = run(hub_dir, "releases", "create", archive, actor="dev", ok=False)
    assert missing.exit_code == 1 and "product 'billing' does not exist" in missing.output
    run(hub_dir, "releases", "create", archive, "--create-product", actor="dev")
    rows = json.loads(run(hub_dir, "releases", "list", "--json", actor="dev").output)
    assert [(r["product"], r["version"], r["state"]) for r in rows] == [
        ("billing", "2.4.0", "draft")
    ]


def test_audit_verify_names_tampering_in_the_database(hub_dir: Path) -> None:
    import sqlite3

    run(hub_dir, "environments", "create", "plant-a")
    with sqlite3.connect(hub_dir / "hub.db") as conn:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    result = run(hub_dir, "audit", "verify", actor="aud", ok=False)
    assert result.exit_code == 3
    assert "event 2 was edited: stored hash" in result.output


def test_enroll_signed_request_from_agent_init(hub_dir: Path, tmp_path: Path) -> None:
    from agent.home import init_home

    run(hub_dir, "environments", "create", "plant-b")
    _config, req = init_home(
        tmp_path / "agent",
        root_file=hub_dir / "root.json",
        agent_id="plant-b-01",
        environment="plant-b",
    )
    out = json.loads(run(hub_dir, "agents", "enroll", str(req), "--json", actor="ops").output)
    assert out["agent_id"] == "plant-b-01" and out["environment"] == "plant-b"


def test_read_lines_stops_at_an_overlong_line() -> None:
    import io

    from hub.audit_cli import read_lines

    data = b"short\n" + b"x" * 100 + b"\nnever read\n"
    lines = list(read_lines(io.BytesIO(data), max_bytes=10))
    assert lines == [b"short\n", b"x" * 12]


def _requests_on_media(hub_dir: Path, tmp_path: Path, environment: str,
                       *agent_ids: str) -> tuple[Path, list[Path]]:
    """Environment ``environment`` created, and the enrollment request of each agent (made
    by ``agent init``) on a stick ``tmp_path/media``: the stick and the requests on it."""
    from agent.home import init_home

    run(hub_dir, "environments", "create", environment)
    media = tmp_path / "media"
    media.mkdir()
    on_media = []
    for agent_id in agent_ids:
        _config, req = init_home(tmp_path / agent_id, root_file=hub_dir / "root.json",
                                 agent_id=agent_id, environment=environment)
        on_media.append(media / req.name)
        on_media[-1].write_bytes(req.read_bytes())
    return media, on_media


def test_import_batch_size_is_checked_and_used(hub_dir: Path, tmp_path: Path) -> None:
    media, _ = _requests_on_media(hub_dir, tmp_path, "plant-c", "plant-c-01")
    bad = run(hub_dir, "import", str(media), "--batch-size", "0", actor="ops", ok=False)
    assert bad.exit_code == 2 and "--batch-size" in bad.output
    out = json.loads(run(hub_dir, "import", str(media), "--batch-size", "1", "--json",
                         actor="ops").output)
    assert [r["status"] for r in out] == ["enrolled"]


def test_an_enrollment_request_imported_again_is_a_duplicate(hub_dir: Path,
                                                             tmp_path: Path) -> None:
    """The stick still holds the request when the results come back: the second import
    reports it as a duplicate, changes nothing and exits 0; the same key revoked is refused."""
    media, _ = _requests_on_media(hub_dir, tmp_path, "plant-d", "plant-d-01")
    first = json.loads(run(hub_dir, "import", str(media), "--json", actor="ops").output)
    assert [r["status"] for r in first] == ["enrolled"]
    before = _table_counts(hub_dir)
    again = json.loads(run(hub_dir, "import", str(media), "--json", actor="ops").output)
    assert [r["status"] for r in again] == ["duplicate"]
    assert "plant-d-01 is already enrolled" in again[0]["reason"]
    assert _table_counts(hub_dir) == before
    run(hub_dir, "agents", "revoke", "plant-d-01", "--reason", "lost", actor="ops")
    refused = run(hub_dir, "import", str(media), "--json", actor="ops", ok=False)
    assert json.loads(refused.output)[0]["status"] == "rejected"
    assert "already enrolled as agent plant-d-01 (revoked)" in refused.output


def _table_counts(data: Path) -> dict[str, int]:
    """Rows per table of the hub's SQLite database (to show that nothing changed)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(data / "hub.db")) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


@pytest.mark.parametrize(
    ("actor", "args", "expected"),
    [
        ("carol", ("releases", "list"),
         "user 'carol' does not exist (the user this command acts as): create it with "
         "`tiangong hub users add carol --role ROLE`"),
        (None, ("releases", "list"),
         "--local-admin was not given, so the hub user is your login name; give "
         "--local-admin NAME or create it with `tiangong hub users add"),
        ("admin", ("users", "grant", "zed", "operator"),
         "user 'zed' does not exist: create it with `tiangong hub users add zed --role ROLE`"),
        ("admin", ("users", "grant", "ops", "operator", "--environment", "plant-b"),
         "environment 'plant-b' does not exist: create it with "
         "`tiangong hub environments create plant-b`"),
        ("ops", ("deployments", "queue", "nope", "9.9", "--environment", "plant-b"),
         "release nope 9.9 does not exist: create it with `tiangong hub releases create DIR`"),
        ("admin", ("agents", "revoke", "ghost-01"),
         "agent 'ghost-01' does not exist: `tiangong hub agents list` shows the enrolled agents"),
    ],
)
def test_a_missing_object_is_named_with_the_command_that_creates_it(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch, actor: str | None, args: tuple[str, ...],
    expected: str,
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "login-name-not-a-hub-user")
    before = _table_counts(hub_dir)
    result = run(hub_dir, *args, actor=actor, ok=False)
    assert result.exit_code == 1
    assert expected in " ".join(result.output.split())
    assert _table_counts(hub_dir) == before  # nothing changed


def test_users_add_creates_and_grants_in_one_step(hub_dir: Path) -> None:
    run(hub_dir, "environments", "create", "plant-a")
    row = json.loads(run(hub_dir, "users", "add", "carol", "--role", "operator", "--role",
                         "approver", "--environment", "plant-a", "--json").output)
    assert row["username"] == "carol"
    assert row["roles"] == ["approver@plant-a", "operator@plant-a"]
    before = run(hub_dir, "users", "list", "--json").output
    bad = run(hub_dir, "users", "add", "eve", "--role", "operator", "--role", "bogus", ok=False)
    assert bad.exit_code == 1 and "unknown role 'bogus'" in bad.output
    assert run(hub_dir, "users", "list", "--json").output == before  # no half-made user


def test_global_options_before_or_after_the_command(hub_dir: Path) -> None:
    before = CliRunner().invoke(root, ["hub", "--data-dir", str(hub_dir), "--local-admin",
                                       "aud", "users", "list", "--json"])
    after = CliRunner().invoke(root, ["hub", "users", "list", "--json", "--data-dir",
                                      str(hub_dir), "--local-admin", "aud"])
    assert before.exit_code == 0 and after.exit_code == 0, after.output
    assert before.output == after.output
    # after the command wins over before it
    wins = CliRunner().invoke(root, ["hub", "--data-dir", str(hub_dir), "--local-admin",
                                     "mallory", "users", "list", "--local-admin", "aud"])
    assert wins.exit_code == 0, wins.output
    helped = CliRunner().invoke(root, ["hub", "--help"]).output
    assert "go before the command or after it" in " ".join(helped.split())
    assert "local-admin mode" in " ".join(helped.split())


def _last_event(hub_dir: Path) -> tuple[str, str, dict[str, object]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(hub_dir / "hub.db")) as db:
        actor, action, details = db.execute(
            "SELECT actor, action, details FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return actor, action, json.loads(details)


@pytest.mark.parametrize("how", [
    ("--local-admin", "ops"), ("--as", "ops"), ("env:TIANGONG_HUB_LOCAL_ADMIN", "ops"),
    ("env:TIANGONG_HUB_AS", "ops"), ("after:--as", "ops"),
])
def test_local_admin_mode_is_audited_and_as_is_a_deprecated_alias(
    hub_dir: Path, how: tuple[str, str]
) -> None:
    option, name = how
    argv, env = ["hub", "--data-dir", str(hub_dir)], {}
    tail: list[str] = []
    if option.startswith("env:"):
        env[option[4:]] = name
    elif option.startswith("after:"):
        tail = [option[6:], name]
    else:
        argv += [option, name]
    result = CliRunner().invoke(
        root, [*argv, "environments", "create", "plant-z", *tail], env=env)
    assert result.exit_code == 1, result.output  # ops may not create environments…
    result = CliRunner().invoke(
        root, [*argv, "audit", "checkpoint", "--json", *tail], env=env)
    assert result.exit_code == 0, result.output  # …but may sign a checkpoint
    actor, action, details = _last_event(hub_dir)
    assert (actor, action) == ("ops", "audit.checkpoint")
    assert details["via"] == "local-admin"
    deprecated = "--as (and TIANGONG_HUB_AS) is deprecated: use --local-admin NAME"
    assert (deprecated in result.stderr) == ("AS" in option or "--as" in option)
    json.loads(result.stdout)  # the warning never spoils --json output
    assert "--data-dir" in CliRunner().invoke(root, ["hub", "users", "grant", "--help"]).output


def test_init_makes_the_first_environment_and_saml_sign_in(tmp_path: Path) -> None:
    from hub.config import load_config
    from web.config import load_web_config

    metadata = tmp_path / "idp.xml"
    metadata.write_text("<EntityDescriptor/>")
    data = tmp_path / "hub"
    out = run(data, "init", "--admin", "root-admin", "--environment", "plant-a",
              "--sign-in", "saml", "--idp-metadata", str(metadata), "--public-url",
              "https://hub.example.org/", "--insecure-no-passphrase", actor=None).output
    assert "environment    plant-a" in out and "web sign-in    SAML" in out
    envs = json.loads(run(data, "environments", "list", "--json", actor="root-admin").output)
    assert [e["name"] for e in envs] == ["plant-a"]
    web = load_web_config(load_config(data))
    assert web.saml is not None and web.saml.sp_base_url == "https://hub.example.org"
    assert web.saml.idp_metadata_file == data / "idp-metadata.xml"
    assert (data / "idp-metadata.xml").read_text() == "<EntityDescriptor/>"


def test_init_refuses_saml_without_its_settings_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    result = run(data, "init", "--sign-in", "saml", "--insecure-no-passphrase", actor=None,
                 ok=False)
    assert result.exit_code == 2
    assert "--sign-in saml needs --idp-metadata FILE and --public-url URL" in result.output
    assert not data.exists()


def test_json_of_submit_approve_reject_and_audit_export(hub_dir: Path, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.0.1"):
        release = tmp_path / f"hello-{version}"
        shutil.copytree(EXAMPLES / "hello-1.0.0", release)
        toml = release / "release.toml"
        toml.write_text(toml.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
        run(hub_dir, "releases", "create", str(release), "--create-product", actor="dev")
        sub = json.loads(run(hub_dir, "releases", "submit", "hello", version, "--json",
                             actor="dev").output)
        assert sub["state"] == "submitted" and len(sub["content_hash"]) == 64
    ok = json.loads(run(hub_dir, "releases", "approve", "hello", "1.0.0", "--json",
                        actor="alice").output)
    assert ok["approved_by"] == "alice" and ok["state"] == "approved"
    no = json.loads(run(hub_dir, "releases", "reject", "hello", "1.0.1", "--comment", "no",
                        "--json", actor="bob").output)
    assert no["rejected_by"] == "bob" and no["state"] == "rejected"
    out = tmp_path / "audit.jsonl"
    exported = json.loads(run(hub_dir, "audit", "export", "--out", str(out), "--json",
                              actor="aud").output)
    assert exported["file"] == str(out) and exported["events"] > 10
    verified = CliRunner().invoke(root, ["audit", "verify-export", str(out), "--trust",
                                         str(hub_dir / "root.json"), "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["ok"] is True and report["events"] == exported["events"]


def _queued_hello(hub_dir: Path) -> dict[str, Any]:
    """hello 1.0.0 approved and queued for environment plant-a: its deployment (JSON)."""
    run(hub_dir, "environments", "create", "plant-a")
    run(hub_dir, "products", "create", "hello", actor="dev")
    run(hub_dir, "releases", "create", str(EXAMPLES / "hello-1.0.0"), actor="dev")
    run(hub_dir, "releases", "submit", "hello", "1.0.0", actor="dev")
    run(hub_dir, "releases", "approve", "hello", "1.0.0", actor="alice")
    (dep,) = json.loads(run(hub_dir, "deployments", "queue", "hello", "1.0.0",
                            "--environment", "plant-a", "--json", actor="ops").output)
    return dep  # type: ignore[no-any-return]


def test_export_to_media_it_cannot_write_says_so_without_a_traceback(
        hub_dir: Path, tmp_path: Path) -> None:
    """'hub export' to a read-only stick (seen on a real read-only mount) ended in a
    traceback from the index's lock file, after the report of each deployment was lost
    with it; an --out it cannot create did too. Now an --out that cannot be made is one
    error naming it (nothing claimed), and an index that cannot be written is a warning
    naming it, after the bundles written and recorded (a directory in the index's place
    stands in for the read-only media: a real OSError, root or not)."""
    dep = _queued_hello(hub_dir)
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    refused = run(hub_dir, "export", "--environment", "plant-a", "--out",
                  str(blocked / "usb"), actor="ops", ok=False)
    assert refused.exit_code == 1 and refused.output == (
        f"Error: cannot export to {blocked / 'usb'}: [Errno 20] Not a directory: "
        f"'{blocked / 'usb'}'\n")
    shown = json.loads(run(hub_dir, "deployments", "show", str(dep["id"]), "--json",
                           actor="ops").output)
    assert shown["state"] == "queued" and shown["sequence"] is None
    usb = tmp_path / "usb"
    (usb / "INDEX-plant-a.txt").mkdir(parents=True)
    # The bundle cannot be written either (a directory where it goes): that deployment
    # fails, named; the next export writes it and says the earlier one failed or was cut
    # short (it said "interrupted" only, after a failure nobody interrupted).
    taken = usb / "hello-1.0.0-plant-a-000001.tgb"
    taken.mkdir()
    failed = run(hub_dir, "export", "--environment", "plant-a", "--out", str(usb),
                 actor="ops", ok=False)
    assert failed.exit_code == 1
    assert f"FAILED deployment {dep['id']}: FileExistsError: [Errno 17] {taken} exists and is " \
        "not a regular file" in failed.output
    taken.rmdir()
    result = run(hub_dir, "export", "--environment", "plant-a", "--out", str(usb),
                 actor="ops")
    assert result.output.splitlines()[0] == (
        f"deployment {dep['id']}: completing an export that was interrupted or failed (same "
        "sequence and bundle id)")
    assert result.output.splitlines()[-1] == (
        f"warning: cannot write the index INDEX-plant-a.txt in {usb}: [Errno 21] Is a "
        f"directory: '{usb / 'INDEX-plant-a.txt'}'; the bundles above are written and "
        "recorded")
    assert [p.name for p in usb.glob("*.tgb")] == ["hello-1.0.0-plant-a-000001.tgb"]
    shown = json.loads(run(hub_dir, "deployments", "show", str(dep["id"]), "--json",
                           actor="ops").output)
    assert shown["state"] == "exported"


def test_declare_lost_from_the_cli(hub_dir: Path, tmp_path: Path) -> None:
    dep = _queued_hello(hub_dir)
    early = run(hub_dir, "deployments", "declare-lost", str(dep["id"]), "--reason", "x",
                actor="ops", ok=False)
    assert early.exit_code == 1 and "only the bundle of an exported deployment" in early.output
    run(hub_dir, "export", "--environment", "plant-a", "--out", str(tmp_path / "usb"),
        actor="ops")
    out = json.loads(run(hub_dir, "deployments", "declare-lost", str(dep["id"]), "--reason",
                         "stick lost in transit", "--requeue", "--json", actor="ops").output)
    assert out["state"] == "lost" and out["requeued_as"] == dep["id"] + 1
    text = run(hub_dir, "deployments", "show", str(out["requeued_as"]), "--json", actor="ops")
    assert json.loads(text.output)["state"] == "queued"
    report = json.loads(run(hub_dir, "audit", "verify", "--json", actor="aud").output)
    assert report["ok"]


@pytest.mark.parametrize(("given", "bind"), [
    ("0.0.0.0", "0.0.0.0:8401"),  # noqa: S104 - a bind address under test
    ("127.0.0.1:9000", "127.0.0.1:9000"),
    ("::1", "[::1]:8401"),
    ("[::1]", "[::1]:8401"),
    ("[::1]:9000", "[::1]:9000"),
    ("hub.example.org", "hub.example.org:8401"),
])
def test_the_live_port_defaults_to_8401(given: str, bind: str) -> None:
    from hub.cli.serve import DEFAULT_LIVE_PORT, with_live_port

    assert DEFAULT_LIVE_PORT == 8401
    assert with_live_port(given) == bind


def test_init_on_a_terminal_asks_for_admin_environment_sign_in_and_passphrase(
    tmp_path: Path,
) -> None:
    """A real `tiangong hub init` on a pseudo-terminal, answered as a person would."""
    import os
    import pty
    import select
    import sys
    import time

    data = tmp_path / "hub"
    answers = [("First admin", "boss"), ("First environment", "plant-a"),
               ("Web UI sign-in", "none"), ("assphrase", "correct horse battery"),
               ("assphrase", "correct horse battery")]
    tiangong = str(Path(sys.executable).parent / "tiangong")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIANGONG_")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: `tiangong hub init` with the pty as its controlling terminal
        os.execve(tiangong, [tiangong, "hub", "--data-dir", str(data), "init"], env)  # noqa: S606
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if answers and answers[0][0].encode() in seen.rsplit(b"\n", 1)[-1]:
                os.write(fd, answers.pop(0)[1].encode() + b"\r")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert answers == [], text
    assert "first admin    boss" in text and "environment    plant-a" in text
    assert "ROOT KEY (passphrase-encrypted)" in text
    envs = json.loads(run(data, "environments", "list", "--json", actor="boss").output)
    assert [e["name"] for e in envs] == ["plant-a"]


def test_users_set_password_from_stdin(hub_dir: Path) -> None:
    """`hub users set-password` stores a hash (never the password) for the web UI's local
    sign-in; a short password is refused and changes nothing."""
    from sqlalchemy import select
    from werkzeug.security import check_password_hash

    from hub.db import User, make_engine, make_session_factory

    def stored() -> str | None:
        engine = make_engine(f"sqlite:///{hub_dir / 'hub.db'}")
        with make_session_factory(engine)() as s:
            value = s.scalar(select(User.password_hash).where(User.username == "dev"))
        engine.dispose()
        return value

    short = CliRunner().invoke(root, ["hub", "--data-dir", str(hub_dir), "--local-admin", "admin",
                                      "users", "set-password", "dev", "--password-stdin"],
                               input="too short\n")
    assert short.exit_code == 1 and "12 to 1024 characters, not 9" in short.output
    assert stored() is None
    ok = CliRunner().invoke(root, ["hub", "--data-dir", str(hub_dir), "--local-admin", "admin",
                                   "users", "set-password", "dev", "--password-stdin",
                                   "--json"], input="a long enough password\n")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output) == {"username": "dev", "password_set": True}
    value = stored()
    assert value is not None and value.startswith("scrypt:")
    assert check_password_hash(value, "a long enough password")


def test_an_enrollment_for_a_missing_environment_names_the_fix(hub_dir: Path,
                                                               tmp_path: Path) -> None:
    home = tmp_path / "agent"
    made = CliRunner().invoke(root, ["agent", "init", str(home), "--root",
                                     str(hub_dir / "root.json"), "--id", "site-09",
                                     "--environment", "plant-z"])
    assert made.exit_code == 0, made.output
    stick = tmp_path / "usb"
    stick.mkdir()
    for request in (home / "outbox").glob("enrollment-*.json"):
        request.rename(stick / request.name)
    before = _table_counts(hub_dir)["agents"]
    result = run(hub_dir, "import", str(stick), "--json", actor="ops", ok=False)
    assert result.exit_code == 1
    (row,) = json.loads(result.output)
    assert row["status"] == "rejected"
    assert row["reason"].endswith("environment 'plant-z' does not exist: create it with "
                                  "`tiangong hub environments create plant-z` (as an admin)")
    assert _table_counts(hub_dir)["agents"] == before  # nobody enrolled


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (("--sign-in", "local", "--admin-password-stdin"), "short\n",
     "a password has 12 to 1024 characters, not 5"),
    (("--sign-in", "none", "--admin-password-stdin"), "a long trial password\n",
     "--admin-password-stdin goes with --sign-in local"),
    (("--sign-in", "local", "--idp-metadata", __file__), "",
     "--idp-metadata goes with --sign-in saml"),
])
def test_init_refuses_a_bad_local_sign_in_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...], stdin: str, message: str,
) -> None:
    data = tmp_path / "hub"
    result = CliRunner().invoke(root, ["hub", "--data-dir", str(data), "init",
                                       "--insecure-no-passphrase", *args], input=stdin)
    assert result.exit_code == 2 and message in result.output
    assert not data.exists()


def test_a_hub_command_after_an_upgrade_brings_the_database_to_the_new_schema_first(
        hub_dir: Path) -> None:
    """The operator installs a newer hub whose code needs a migration the database has not
    had yet, then runs a console command (the Helm chart's init container runs
    `hub environments list` for exactly this). It used to die with a raw
    `sqlalchemy.exc.OperationalError: no such column …` traceback (and the pod never
    started); it migrates first, says so, and works."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from hub.config import load_config
    from hub.db import make_engine
    from hub.migrate import alembic_config

    engine = make_engine(load_config(hub_dir).database_url)
    try:
        command.downgrade(alembic_config(engine), "-1")  # as the hub before the upgrade left it
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert before != head
        out = run(hub_dir, "environments", "create", "prod")
        assert f"migrated the hub database from revision {before} to {head}" in out.stderr
        listed = run(hub_dir, "environments", "list", "--json")
        assert "prod" in [e["name"] for e in json.loads(listed.stdout)]
        assert "migrated" not in listed.stderr  # once only
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head
    finally:
        engine.dispose()


def test_names_from_the_media_are_printed_escaped_on_one_line(hub_dir: Path,
                                                              tmp_path: Path) -> None:
    """A file on a stick named to fake table lines (a new line, an escape sequence, a bidi
    override) is shown escaped on its own row of `hub import`'s table, as the agent shows
    such names: it used to print raw, so it could write lines of its own — "imported" for a
    refused file — or drive the operator's terminal."""
    usb = tmp_path / "usb"
    usb.mkdir()
    hostile = "x.tgr  imported\nreal.tgr\x1b[2J\u202egpj.tgr"
    (usb / hostile).write_bytes(b"not a result at all\n")
    out = run(hub_dir, "import", str(usb), actor="ops", ok=False)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout  # the header, one row, the totals
    assert "x.tgr  imported\\x0areal.tgr\\x1b[2J\\u202egpj.tgr" in lines[1]
    assert "rejected" in lines[1]
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout


def test_a_hub_older_than_its_database_refuses_with_a_message_and_changes_nothing(
        hub_dir: Path) -> None:
    """An upgrade rolled back: the older hub is installed again over a database a newer hub
    migrated. Every console command (and `hub serve`) used to die with a raw alembic
    'CommandError: Can't locate revision identified by ...' traceback; now it says what
    happened and what to do, exit 2, and the database stays at its revision."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    from hub.config import load_config
    from hub.db import make_engine
    from hub.errors import ConfigError
    from hub.migrate import upgrade

    engine = make_engine(load_config(hub_dir).database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        out = run(hub_dir, "environments", "list", ok=False)
        assert out.exit_code == 2
        assert "is at schema revision 9999, which this hub" in out.output
        assert "Traceback" not in out.output
        with pytest.raises(ConfigError, match="revision 9999"):  # hub serve's create_app
            upgrade(engine)
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "9999"
    finally:
        engine.dispose()


def test_an_import_stopped_by_ctrl_c_says_so_and_the_next_run_does_the_rest(
        hub_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during `hub import` printed click's bare "Aborted!" (and, with the worker pool,
    a traceback from every worker): it says what became of the files and what to do, exits
    130, and the next run imports the rest, the first file once."""
    from hub.services.enrollment_import import import_enrollment as real

    media, _ = _requests_on_media(hub_dir, tmp_path, "plant-e", "plant-e-01", "plant-e-02")
    calls: list[Path] = []

    def interrupted(ctx: Any, path: Path) -> Any:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C, at the second file
        return real(ctx, path)

    monkeypatch.setattr("hub.services.result_import.import_enrollment", interrupted)
    stopped = run(hub_dir, "import", str(media), actor="ops", ok=False)
    assert stopped.exit_code == 130, stopped.output
    assert "Aborted!" not in stopped.output and "Traceback" not in stopped.output
    assert (f"tiangong hub import: interrupted (Ctrl-C): the files recorded before stay "
            f"imported, once; the others in {media} were not touched: run the same command "
            "again to import them") in stopped.output
    monkeypatch.setattr("hub.services.result_import.import_enrollment", real)
    again = json.loads(run(hub_dir, "import", str(media), "--json", actor="ops").output)
    assert [r["status"] for r in again] == ["duplicate", "enrolled"]


def test_an_enrollment_whose_response_cannot_be_written_enrolls_nothing(
        hub_dir: Path, tmp_path: Path) -> None:
    """Imported from read-only media, the agent was enrolled and committed, then writing its
    response raised (a raw traceback, the files after it not imported) and the response was
    lost for good: imported again, the request was a duplicate that wrote nothing, and
    enrolled, the key could not be enrolled again. Now the request is refused with the
    reason, nothing enrolled; from a writable place it is enrolled with its response."""
    media, (req,) = _requests_on_media(hub_dir, tmp_path, "plant-f", "plant-f-01")
    blocked = media / "enrollment-response-plant-f-01.json"
    blocked.mkdir()  # what the response cannot be written over (as root, mode bits do not)
    before = _table_counts(hub_dir)
    refused = run(hub_dir, "import", str(media), "--json", actor="ops", ok=False)
    assert refused.exit_code == 1, refused.output
    (row,) = json.loads(refused.stdout)
    assert row["status"] == "rejected" and row["file"] == req.name
    assert row["reason"].startswith(f"enrollment request refused: its response cannot be "
                                    f"written (cannot write {blocked}: "), row
    assert row["reason"].endswith("nothing enrolled; import it from a directory the hub can "
                                  "write to"), row
    after = _table_counts(hub_dir)
    assert after["agents"] == before["agents"] and list(media.iterdir()) != []
    blocked.rmdir()
    again = json.loads(run(hub_dir, "import", str(media), "--json", actor="ops").output)
    assert [r["status"] for r in again] == ["enrolled"]
    assert blocked.is_file()


def test_a_database_on_a_full_disk_is_not_called_a_schema_problem(
        hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's disk full (seen on a real full tmpfs): SQLite answers the first query, the
    schema's revision, with "disk I/O error", and every hub command said "the hub database
    ... cannot be migrated to this hub's schema". Now it says the database cannot be opened
    and asks about the disk (exit 2, as before); nothing is written."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import hub.migrate

    def full(engine: object) -> None:
        raise OperationalError("SELECT version_num FROM alembic_version", {},
                               sqlite3.OperationalError("disk I/O error"))

    before = (hub_dir / "hub.db").read_bytes()
    monkeypatch.setattr(hub.migrate, "ensure_current", full)
    result = run(hub_dir, "users", "list", ok=False)
    assert result.exit_code == 2
    assert result.output == (
        f"error: the hub database sqlite:///{hub_dir / 'hub.db'} cannot be opened: "
        "OperationalError: (sqlite3.OperationalError) disk I/O error (is its disk full or "
        "read-only? free space or remount it read-write)\n")
    assert (hub_dir / "hub.db").read_bytes() == before
