"""CLI for the hub's approval rules and approver groups: ``hub users groups``, ``hub
environments approval-rule`` (set, list, per channel, refused values change nothing)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.hub.test_cli import EXAMPLES, hub_dir, run
from tiangong.cli import root

__all__ = ["hub_dir"]


def test_groups_and_rules_from_the_cli(hub_dir: Path) -> None:
    run(hub_dir, "environments", "create", "prod")
    run(hub_dir, "users", "groups", "add", "alice", "dba")
    run(hub_dir, "users", "groups", "add", "bob", "ops")
    groups = json.loads(run(hub_dir, "users", "groups", "list", "--json").output)
    assert {g["username"]: g["groups"] for g in groups}["alice"] == ["dba"]
    out = run(hub_dir, "environments", "approval-rule", "prod", "--required", "2",
              "--min-groups", "2", "--group", "dba", "--group", "ops")
    assert out.output.strip() == (
        "environment prod: 2 approvals from 2 groups (dba, ops)"
    )
    run(hub_dir, "environments", "approval-rule", "prod", "--channel", "stable",
        "--required", "1", "--min-groups", "1")
    rules = json.loads(run(hub_dir, "environments", "approval-rule", "prod", "--json").output)
    assert rules == [
        {"environment": "prod", "channel": None, "required": 2, "groups": ["dba", "ops"],
         "min_groups": 2},
        {"environment": "prod", "channel": "stable", "required": 1, "groups": ["dba", "ops"],
         "min_groups": 1},
    ]
    # a rule that cannot be met is refused and nothing changes
    bad = run(hub_dir, "environments", "approval-rule", "prod", "--min-groups", "3", ok=False)
    assert bad.exit_code != 0 and "min groups must be 1..2" in bad.output
    again = json.loads(run(hub_dir, "environments", "approval-rule", "prod", "--json").output)
    assert again == rules
    # only admins change groups
    denied = run(hub_dir, "users", "groups", "add", "bob", "dba", actor="bob", ok=False)
    assert denied.exit_code != 0 and "may not user.manage" in denied.output
    run(hub_dir, "environments", "approval-rule", "prod", "--channel", "stable", "--clear")
    assert len(json.loads(run(hub_dir, "environments", "approval-rule", "prod",
                              "--json").output)) == 1


def _key(tmp: Path, name: str, pw: Path) -> Path:
    """A passphrase-protected approver key made by `tiangong keys generate`."""
    out = CliRunner().invoke(root, ["keys", "generate", "--role", "approver", "--label", name,
                                    "-o", str(tmp / f"{name}.key"), "--passphrase-file",
                                    str(pw), "--kdf-profile", "interactive"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return tmp / f"{name}.key"


def _approvals(hub: Path) -> list[dict[str, object]]:
    shown = json.loads(run(hub, "releases", "show", "hello", "1.0.0", "--json").output)
    return shown["approvals"]  # type: ignore[no-any-return]


def test_signed_approvals_from_the_cli(hub_dir: Path, tmp_path: Path) -> None:
    assert (hub_dir / "keys" / "approval.key").is_file()  # hub init made it
    assert (hub_dir / "keys" / "approval.key").stat().st_mode & 0o077 == 0
    pw = tmp_path / "pw"
    pw.write_text("approver passphrase\n")
    alice, bob = _key(tmp_path, "alice", pw), _key(tmp_path, "bob", pw)
    run(hub_dir, "environments", "create", "prod")
    run(hub_dir, "users", "add-key", "alice", f"{alice}.pub")  # by the admin
    run(hub_dir, "users", "add-key", "bob", f"{bob}.pub", actor="bob")  # self-service
    run(hub_dir, "releases", "create", str(EXAMPLES / "hello-1.0.0"), "--create-product",
        actor="dev")
    run(hub_dir, "releases", "submit", "hello", "1.0.0", actor="dev")
    # bob's key is not alice's: refused, nothing stored
    wrong = run(hub_dir, "releases", "approve", "hello", "1.0.0", "--key", str(bob),
                "--passphrase-file", str(pw), actor="alice", ok=False)
    assert wrong.exit_code == 1 and "not an approver key registered to alice" in wrong.output
    assert _approvals(hub_dir) == []
    out = run(hub_dir, "releases", "approve", "hello", "1.0.0", "--key", str(alice),
              "--passphrase-file", str(pw), "--environment", "prod", "--comment", "db ok",
              "--json", actor="alice")
    done = json.loads(out.output)
    keys = json.loads(run(hub_dir, "users", "keys", "alice", "--json").output)
    assert done["signed_by"] == keys[0]["key_id"] and done["environments"] == ["prod"]
    # bob signs with `tiangong keys approve` and uploads the file
    content_hash = json.loads(run(hub_dir, "releases", "show", "hello", "1.0.0",
                                  "--json").output)["content_hash"]
    made = CliRunner().invoke(root, [
        "keys", "approve", "--key", str(bob), "--approver", "bob", "--product", "hello",
        "--version", "1.0.0", "--content-hash", content_hash, "--environment", "*",
        "-o", str(tmp_path / "bob-approval.json"), "--passphrase-file", str(pw)],
        catch_exceptions=False)
    assert made.exit_code == 0, made.output
    run(hub_dir, "releases", "approve", "hello", "1.0.0", "--signature",
        str(tmp_path / "bob-approval.json"), actor="bob")
    rows = {a["by"]: a for a in _approvals(hub_dir)}
    assert rows["alice"]["environment"] == "prod" and rows["alice"]["comment"] == "db ok"
    assert rows["bob"]["environment"] is None and rows["bob"]["signed_by"]
    # revoking is audited and the key stays listed
    run(hub_dir, "users", "revoke-key", keys[0]["key_id"][:12], "--reason", "left", actor="alice")
    keys = json.loads(run(hub_dir, "users", "keys", "alice", "--json").output)
    assert keys[0]["revoked_by"] == "alice" and keys[0]["revoke_reason"] == "left"


def _rotate(hub: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(root, [
        "keys", "root", "rotate", "--current", str(hub / "root.json"), "--signing-key",
        str(hub / "root-key.OFFLINE.json"), "-o", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_approval_key_and_root_install(hub_dir: Path, tmp_path: Path) -> None:
    # a hub from before approval keys gets one by a command, once
    for name in ("approval.key", "approval.pub"):
        (hub_dir / "keys" / name).unlink()
    made = json.loads(run(hub_dir, "keys", "approval-key", "--json").output)
    again = run(hub_dir, "keys", "approval-key", ok=False)
    assert again.exit_code != 0 and "exists already" in again.output
    # the root ceremony lists it; the hub installs version 2
    (tmp_path / "approvals.json").write_text(
        '{"*": {"mode": "hub", "threshold": 1, "min_groups": 1}}')
    _rotate(hub_dir, tmp_path / "root-v2.json", "--approval-key",
            str(hub_dir / "keys" / "approval.pub"), "--approvals", str(tmp_path / "approvals.json"))
    v1 = (hub_dir / "root.json").read_bytes()
    denied = run(hub_dir, "keys", "install-root", str(tmp_path / "root-v2.json"), actor="bob",
                 ok=False)
    assert denied.exit_code != 0 and (hub_dir / "root.json").read_bytes() == v1
    out = json.loads(run(hub_dir, "keys", "install-root", str(tmp_path / "root-v2.json"),
                         "--json").output)
    assert out["version"] == 2 and out["approval_role"] and out["delegations"] == ["*"]
    assert (hub_dir / "roots" / "root-v1.json").read_bytes() == v1
    assert (hub_dir / "root.json").read_bytes() == (tmp_path / "root-v2.json").read_bytes()
    roots = json.loads(run(hub_dir, "keys", "roots", "--json").output)
    assert [r["version"] for r in roots] == [2] and roots[0]["delegations"] == ["*"]
    assert made["key_id"]
    # the same version again, and a version that skips one, are refused: nothing changes
    _rotate(hub_dir, tmp_path / "root-v3.json")
    v2 = (hub_dir / "root.json").read_bytes()
    same = run(hub_dir, "keys", "install-root", str(tmp_path / "root-v2.json"), ok=False)
    assert same.exit_code != 0 and "root version 2 is installed already" in same.output
    (tmp_path / "v3-copy.json").write_bytes((tmp_path / "root-v3.json").read_bytes())
    _rotate_from = tmp_path / "root-v4.json"
    result = CliRunner().invoke(root, [
        "keys", "root", "rotate", "--current", str(tmp_path / "root-v3.json"), "--signing-key",
        str(hub_dir / "root-key.OFFLINE.json"), "-o", str(_rotate_from)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    skip = run(hub_dir, "keys", "install-root", str(_rotate_from), ok=False)
    assert skip.exit_code != 0 and "expected 3" in skip.output
    assert (hub_dir / "root.json").read_bytes() == v2
    assert sorted(p.name for p in (hub_dir / "roots").iterdir()) == ["root-v1.json",
                                                                     "root-v2.json"]


def test_a_missing_signature_file_is_an_error_not_a_traceback(hub_dir: Path,
                                                             tmp_path: Path) -> None:
    run(hub_dir, "releases", "create", str(EXAMPLES / "hello-1.0.0"), "--create-product",
        actor="dev")
    run(hub_dir, "releases", "submit", "hello", "1.0.0", actor="dev")
    missing = tmp_path / "nowhere.json"
    out = CliRunner().invoke(root, ["hub", "--data-dir", str(hub_dir), "--local-admin", "alice",
                                    "releases", "approve", "hello", "1.0.0", "--signature",
                                    str(missing)])
    assert out.exit_code == 1, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert f"error: --signature: {missing} does not exist" in out.output
    assert "Traceback" not in out.output
    assert _approvals(hub_dir) == []
