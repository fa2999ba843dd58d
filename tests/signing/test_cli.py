"""signing.cli (``tiangong keys`` and its key-file commands) through click's CliRunner.

Key files are made through the API at the cheapest Argon2id cost (``kd`` fixture); one
``generate`` test pays for the real ``interactive`` profile.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import signing.cli
from signing.keyfile import (
    KDF_PROFILES,
    load_private_key,
    load_public_key,
    read_key_info,
)
from tests.signing.clitools import PASS, KeyDir, check, run
from tests.signing.helpers import FAST_KDF

# --- the command tree -----------------------------------------------------------------------------


def test_tiangong_loads_keys_lazily() -> None:
    proc = subprocess.run([sys.executable, "-m", "tiangong.cli", "keys", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for word in ("generate", "show", "export-public", "root", "Exit codes", "offline"):
        assert word in proc.stdout


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (["generate"], ["offline", "safe", "hub's data directory", "agent's home", "FILE.box",
                        "TIANGONG_KEY_PASSPHRASE"]),
        (["show"], ["Exit codes"]),
        (["export-public"], ["decrypted", "--passphrase-file"]),
        (["root"], ["offline", "Where keys live"]),
        (["root", "init"], ["removable media", "never copy", "hub's data directory"]),
        (["root", "rotate"], ["removable media", "threshold", "revoke"]),
        (["root", "show"], ["Exits with 3", "expired"]),
    ],
)
def test_help_explains_key_homes_and_exit_codes(path: list[str], words: list[str]) -> None:
    result = check(run([*path, "--help"]), 0)
    out = " ".join(result.output.split())
    assert "Exit codes" in out
    for word in words:
        assert word in out, word


# --- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["root", "release", "audit", "agent"])
def test_generate(
    tmp_path: Path, role: str, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = role == "release"  # one role pays for the real profile, the others use FAST_KDF
    if not real:
        monkeypatch.setattr(signing.cli, "KDF_PROFILES",
                            dict.fromkeys(KDF_PROFILES, FAST_KDF))
    out = tmp_path / f"{role}.key"
    result = check(run(["generate", "--role", role, "--label", f"{role} test", "-o", str(out),
                        "--kdf-profile", "interactive"]), 0)
    files = [out] + ([Path(f"{out}.box")] if role == "agent" else [])
    for private in files:
        public = Path(f"{private}.pub")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        loaded = load_private_key(private, passphrase=PASS)
        pub = load_public_key(public)
        assert loaded.encrypted and loaded.info.key_id == pub.key_id
        assert loaded.info.kdf == (KDF_PROFILES["interactive"] if real else FAST_KDF)
        assert pub.role == role and loaded.info.key_id in result.output
    if role == "agent":
        assert read_key_info(out).scheme == "ed25519"
        assert read_key_info(f"{out}.box").scheme == "x25519"
    assert "keep" in result.output


def test_generate_refuses_to_overwrite_any_output(tmp_path: Path, fast_profiles: None) -> None:
    out = tmp_path / "release.key"
    Path(f"{out}.pub").write_text("old")
    result = check(run(["generate", "--role", "release", "-o", str(out),
                        "--kdf-profile", "interactive"]), 1)
    assert f"{out}.pub" in result.output and "--force" in result.output
    assert not out.exists()
    assert Path(f"{out}.pub").read_text() == "old"


def test_generate_insecure_agent_key(tmp_path: Path, fast_profiles: None) -> None:
    out = tmp_path / "agent.key"
    result = check(run(["generate", "--role", "agent", "-o", str(out),
                        "--insecure-no-passphrase"], passphrase=None), 0)
    assert "NOT encrypted" in result.stderr
    assert not load_private_key(out, passphrase=None).encrypted
    shown = check(run(["show", str(out)]), 0)
    assert "NOT encrypted" in shown.output


def test_generate_insecure_root_is_refused(tmp_path: Path) -> None:
    result = check(run(["generate", "--role", "root", "-o", str(tmp_path / "r.key"),
                        "--insecure-no-passphrase"]), 2)
    assert "always encrypted" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("answers", "code", "fragment"),
    [("typed-pass\ntyped-pass\n", 0, "wrote"), ("typed-pass\nother-pass\n", 1, "differ"),
     ("", 1, "no passphrase")],
    ids=["confirmed", "mismatch", "no-input"],
)
def test_generate_prompts_with_confirmation(
    tmp_path: Path, answers: str, code: int, fragment: str, fast_profiles: None
) -> None:
    out = tmp_path / "audit.key"
    result = check(run(["generate", "--role", "audit", "-o", str(out),
                        "--kdf-profile", "interactive"], passphrase=None, input=answers), code)
    assert fragment in result.output
    assert "typed-pass" not in result.output and "other-pass" not in result.output
    if code == 0:
        assert load_private_key(out, passphrase="typed-pass").info.role == "audit"
    else:
        assert not out.exists()


def test_generate_passphrase_file(tmp_path: Path, fast_profiles: None) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    out = tmp_path / "release.key"
    check(run(["generate", "--role", "release", "-o", str(out), "--kdf-profile", "interactive",
               "--passphrase-file", str(pw)], passphrase="ignored"), 0)
    assert load_private_key(out, passphrase="from-file").info.role == "release"


# --- show and export-public -----------------------------------------------------------------------


def test_show_private_and_public(kd: KeyDir) -> None:
    text = check(run(["show", kd.key("release1")]), 0).output
    assert kd.ids["release1"] in text and "encrypted (argon2id" in text and "release" in text
    doc = json.loads(check(run(["show", kd.pub("release1"), "--json"]), 0).output)
    assert doc["key_id"] == kd.ids["release1"]
    assert (doc["kind"], doc["role"], doc["scheme"], doc["encrypted"]) == (
        "public", "release", "ed25519", None)
    doc = json.loads(check(run(["show", kd.key("release1"), "--json"]), 0).output)
    assert doc["encrypted"] is True and doc["kdf"]["memlimit"] == FAST_KDF.memlimit


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), (b"{}", "format is"), (b"\x00", "not strict JSON")],
    ids=["missing", "empty-object", "binary"],
)
def test_show_errors_name_the_file(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content)
    result = check(run(["show", str(path)]), 1)
    assert str(path) in result.output and fragment in result.output


def test_show_on_root_document_points_to_root_show(root_v1: Path) -> None:
    result = check(run(["show", str(root_v1)]), 1)
    assert "keys root show" in result.output


def test_export_public(kd: KeyDir) -> None:
    out = kd.path / "exported.pub"
    check(run(["export-public", kd.key("audit1"), "-o", str(out)]), 0)
    assert out.read_bytes() == Path(kd.pub("audit1")).read_bytes()
    check(run(["export-public", kd.key("audit1"), "-o", str(out)]), 1)
    check(run(["export-public", kd.key("audit1"), "-o", str(out), "--force"]), 0)


def test_export_public_wrong_passphrase(kd: KeyDir) -> None:
    out = kd.path / "exported.pub"
    result = check(run(["export-public", kd.key("audit1"), "-o", str(out)],
                       passphrase="not it"), 1)
    assert "wrong passphrase" in result.output and kd.key("audit1") in result.output
    assert "not it" not in result.output
    assert not out.exists()


def test_export_public_refuses_edited_header(kd: KeyDir) -> None:
    path = Path(kd.key("audit1"))
    doc = json.loads(path.read_bytes())
    other = load_public_key(kd.pub("release1"))
    doc.update(public=other.public.hex(), key_id=other.key_id)
    path.write_text(json.dumps(doc))
    result = check(run(["export-public", str(path), "-o", str(kd.path / "x.pub")]), 1)
    assert "encrypted copy" in result.output
    assert not (kd.path / "x.pub").exists()


def test_cli_never_reads_passphrase_from_argv() -> None:
    for path in (["generate"], ["export-public"], ["root", "init"], ["root", "rotate"]):
        out = check(run([*path, "--help"]), 0).output
        assert "--passphrase " not in out and "--passphrase=" not in out


def test_env_var_name_can_be_changed(kd: KeyDir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "CEREMONY_PASS", PASS)
    out = kd.path / "x.pub"
    check(run(["export-public", kd.key("audit1"), "-o", str(out),
               "--passphrase-env", "CEREMONY_PASS"], passphrase=None), 0)
    assert out.exists()


def test_generate_and_export_public_print_json(tmp_path: Path, fast_profiles: None,
                                               kd: KeyDir) -> None:
    out = tmp_path / "agent.key"
    result = check(run(["generate", "--role", "agent", "-o", str(out), "--json"]), 0)
    doc = json.loads(result.stdout)
    assert [k["file"] for k in doc["keys"]] == [str(out), f"{out}.box"]
    assert [k["key_id"] for k in doc["keys"]] == [read_key_info(out).key_id,
                                                  read_key_info(f"{out}.box").key_id]
    assert doc["encrypted"] is True and "agent's home" in doc["keep"]
    pub = kd.path / "exported.pub"
    shown = json.loads(check(run(["export-public", kd.key("audit1"), "-o", str(pub), "--json"]),
                             0).stdout)
    assert shown["file"] == str(pub) and shown["kind"] == "public"
    assert shown["key_id"] == kd.ids["audit1"] and shown["role"] == "audit"
