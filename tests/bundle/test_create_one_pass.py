"""``tiangong bundle create`` reads each payload file once (docs/bundle-format.md §12.1): the
release is scanned without hashing, the writer hashes the plain bytes while compressing and
the frame as it is written, and the content hash is computed from those digests before the
manifest is signed — the same content hash the release loader computes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import bundle.release as release_mod
import bundle.writer as writer_mod
from bundle.cli import EXIT_INVALID, bundle
from bundle.inspect import inspect
from bundle.release import load_release
from signing.keyfile import DEFAULT_PASSPHRASE_ENV
from tests.signing.clitools import PASS, KeyDir, check, init_args, run

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def _keys_and_release(tmp_path: Path) -> tuple[KeyDir, Path]:
    """Root, release and audit keys, root.json, and a copy of hello with a data file."""
    kd = KeyDir(tmp_path)
    for name, role in (("root1", "root"), ("release1", "release"), ("audit1", "audit")):
        kd.make(name, role)
    check(run(init_args(kd), now=int(time.time())), 0)
    release = tmp_path / "hello"
    shutil.copytree(HELLO, release)
    (release / "data.bin").write_bytes(b"row of data\n" * 200_000)
    return kd, release


def _create(kd: KeyDir, release: Path, out: Path) -> Result:
    return CliRunner().invoke(bundle, [
        "create", str(release), "--key", kd.key("release1"), "--root",
        str(kd.path / "root.json"), "--agent", "site-01", "--sequence", "1",
        "-o", str(out), "--json", "--no-progress"],
        env={DEFAULT_PASSPHRASE_ENV: PASS})


def test_bundle_create_reads_each_file_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kd, release = _keys_and_release(tmp_path)
    loaded = load_release(release)

    def no_second_pass(name: str, path: Path) -> object:
        raise AssertionError(f"{name} hashed by the release loader before compressing")

    monkeypatch.setattr(release_mod, "_hash_file", no_second_pass)
    result = _create(kd, release, tmp_path / "out.tgb")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    manifest = inspect(tmp_path / "out.tgb").manifest
    assert manifest is not None and manifest.release is not None
    assert manifest.release.content_hash == loaded.content_hash
    assert [(f.name, f.size, f.sha256) for f in manifest.files] == [
        (f.name, f.size, f.sha256) for f in loaded.files]
    # The unchanged verifier accepts it.
    verified = CliRunner().invoke(bundle, [
        "verify", str(tmp_path / "out.tgb"), "--trust", str(tmp_path / "root.json"),
        "--agent-id", "site-01", "--json", "--no-progress"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["envelope_sha256"] == summary["envelope_sha256"]


def test_bundle_create_says_a_bundle_its_directory_cannot_sync_was_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output directory cannot be fsynced after the rename (EIO): 'cannot write
    out.tgb: [Errno 5] Input/output error', exit 3, and out.tgb whole on the disk. Now the
    message says it was written and verified, which directory failed and why, and that
    the file was removed (exit 3, no traceback); the same command then writes it."""
    kd, release = _keys_and_release(tmp_path)
    out = tmp_path / "media" / "out.tgb"
    out.parent.mkdir()
    real = writer_mod.fsync_dir

    def eio(directory: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod, "fsync_dir", eio)
    result = _create(kd, release, out)
    assert result.exit_code == 3 and isinstance(result.exception, SystemExit)
    assert result.output == (
        f"Error: cannot write {out}: [Errno 5] out.tgb written and verified, but its "
        f"directory {out.parent} cannot be synced (Input/output error): removed, as it "
        "might not survive a power cut; write it again once the disk is sound\n")
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(writer_mod, "fsync_dir", real)
    result = _create(kd, release, out)
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.parent.iterdir()] == ["out.tgb"]


def test_bundle_verify_and_inspect_print_a_hostile_file_name_on_one_line(
        tmp_path: Path) -> None:
    """A file name may hold a newline, bytes that are not UTF-8 or a bidi override. 'bundle
    verify' of a damaged bundle named "t.tgb<newline>VERIFIED t.tgb: ..." printed that
    forged VERIFIED line of its own under the REFUSED one (seen by hand); 'bundle inspect'
    too. Now every name is printed escaped as the agent escapes it, once, and each verdict
    is one line."""
    import os

    kd, release = _keys_and_release(tmp_path)
    good = tmp_path / "good.tgb"
    assert _create(kd, release, good).exit_code == 0
    media = tmp_path / "media"
    media.mkdir()
    forged = "t.tgb\nVERIFIED t.tgb: hello 1.0.0, sequence 1"
    damaged = bytearray(good.read_bytes())
    damaged[-1500] ^= 1
    (media / forged).write_bytes(bytes(damaged))
    odd = os.fsdecode(b"bad\xff\xe2\x80\xae.tgb")
    (media / odd).write_bytes(good.read_bytes())

    def verify(name: str) -> Result:
        return CliRunner().invoke(bundle, [
            "verify", str(media / name), "--trust", str(tmp_path / "root.json"),
            "--agent-id", "site-01", "--no-progress"])

    refused = verify(forged)
    assert refused.exit_code == EXIT_INVALID
    (line,) = refused.output.splitlines()
    assert line.startswith("REFUSED t.tgb\\x0aVERIFIED t.tgb: hello 1.0.0, sequence 1: bundle "
                           "t.tgb\\x0aVERIFIED t.tgb: hello 1.0.0, sequence 1: ")
    verified = verify(odd)
    assert verified.exit_code == 0
    (line,) = verified.output.splitlines()
    assert line.startswith("VERIFIED bad\\xff\\u202e.tgb: hello 1.0.0, sequence 1, ")
    shown = CliRunner().invoke(bundle, ["inspect", str(media / forged)])
    assert shown.output.splitlines()[0] == (
        "UNVERIFIED — t.tgb\\x0aVERIFIED t.tgb: hello 1.0.0, sequence 1 has not been "
        "verified; nothing below is trusted.")


def test_bundle_create_error_names_a_hostile_output_on_one_line(tmp_path: Path) -> None:
    """-o names a FIFO whose name holds a new line and a forged verdict: refused (it is
    not a regular file), in one error line with the name escaped, exit 3, and the FIFO
    left as it was."""
    kd, release = _keys_and_release(tmp_path)
    out = tmp_path / "x.tgb\nVERIFIED x.tgb"
    os.mkfifo(out)
    result = _create(kd, release, out)
    assert result.exit_code == 3 and isinstance(result.exception, SystemExit)
    assert result.output.count("\n") == 1, result.output
    shown = str(out).replace("\n", "\\x0a")
    assert result.output.startswith(f"Error: cannot write {shown}: ")
    assert f"{shown} exists and is not a regular file" in result.output
    assert stat.S_ISFIFO(os.lstat(out).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_bundle_verify_names_a_split_bundle_by_its_name_and_parts(tmp_path: Path) -> None:
    """Parts may be given in any order: the verdict named whichever came first
    ("VERIFIED out.tgb.part002: ..."), as if that one file were the bundle. Now it names
    the bundle and its part count, in the text and the JSON alike."""
    kd, release = _keys_and_release(tmp_path)
    out = tmp_path / "media" / "out.tgb"
    out.parent.mkdir()
    created = CliRunner().invoke(bundle, [
        "create", str(release), "--key", kd.key("release1"), "--root",
        str(kd.path / "root.json"), "--agent", "site-01", "--sequence", "1",
        "-o", str(out), "--split", "1K", "--json", "--no-progress"],
        env={DEFAULT_PASSPHRASE_ENV: PASS})
    assert created.exit_code == 0, created.output
    parts = sorted(out.parent.iterdir(), reverse=True)
    assert len(parts) > 2 and parts[-1].name == "out.tgb.part000"

    def verify(*extra: str) -> Result:
        return CliRunner().invoke(bundle, [
            "verify", *map(str, parts), "--trust", str(tmp_path / "root.json"),
            "--agent-id", "site-01", "--no-progress", *extra])

    text = verify()
    assert text.exit_code == 0, text.output
    assert text.output.startswith(f"VERIFIED out.tgb ({len(parts)} parts): hello 1.0.0, ")
    as_json = verify("--json")
    assert json.loads(as_json.output)["file"] == f"out.tgb ({len(parts)} parts)"
