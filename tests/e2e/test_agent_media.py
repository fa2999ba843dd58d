"""Real ``tiangong agent`` processes against awkward media: copy order, missing predecessors,
hostile file names, read-only media, oversized junk (docs/agent.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bundle.manifest import ChainInfo, ChainLink, Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.e2e.conftest import TIANGONG, HubKeys, run, set_fast_inbox, wait_for

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
DAY = 1_796_083_200  # 2026-12-01T00:00:00Z


def init_agent(tmp: Path, keys: HubKeys) -> Path:
    home = tmp / "agent"
    run("agent", "init", str(home), "--root", str(keys.root_json), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    return home


def chained(keys: HubKeys, out: Path, seq: int, previous: int | None,
            *, split_size: int | None = None) -> list[Path]:
    """A release bundle as the hub exports it: with its chain (§6.8)."""
    now = int(time.time())
    link = None if previous is None else ChainLink(
        root_version=1, sequence=previous, bundle_id=f"hello-{previous}", product="hello",
        version=f"1.0.{previous}", exported_at=DAY, exported_by="carol")
    manifest, files = release_manifest(
        load_release(HELLO), bundle_id=f"hello-{seq}", issuer=keys.kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1,
        sequence=seq, created=now - 60, expires=now + 86400, counter=1, author="alice",
        chain=ChainInfo(previous=link),
    )
    written = write_bundle(out, manifest, files, [keys.kit.release_key], split_size=split_size)
    return list(written.paths)


def copy_in(paths: list[Path], home: Path, names: list[str] | None = None,
            age: float = 120) -> list[Path]:
    """Copy into the inbox, dated ``age`` seconds ago (settled for a fresh process)."""
    out = []
    for i, p in enumerate(paths):
        dest = home / "inbox" / (names[i] if names else p.name)
        shutil.copyfile(p, dest)
        t = time.time() - age
        os.utime(dest, (t, t))
        out.append(dest)
    return out


def once(home: Path) -> list[str]:
    proc = run("agent", "run", "--home", str(home), "--once")
    return proc.stdout.splitlines()


def test_once_applies_in_sequence_order_and_status_names_what_is_missing(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    home = init_agent(tmp_path, hub_keys)
    src = tmp_path / "src"
    src.mkdir()
    b9 = chained(hub_keys, src / "x-1.0.9-site-01-000009.tgb", 9, None)
    b10 = chained(hub_keys, src / "x-1.0.10-site-01-000010.tgb", 10, 9)
    b12 = chained(hub_keys, src / "x-1.0.12-site-01-000012.tgb", 12, 11)
    copy_in(b10 + b9 + b12, home)
    lines = once(home)
    assert lines[:2] == ["x-1.0.9-site-01-000009.tgb: succeeded: 3 step(s) succeeded",
                         "x-1.0.10-site-01-000010.tgb: succeeded: 3 step(s) succeeded"]
    assert lines[2].startswith("x-1.0.12-site-01-000012.tgb: held: sequence 12 is waiting for "
                               "sequence 11, hello 1.0.11, exported 2026-12-01 by carol")
    assert (home / "inbox" / "x-1.0.12-site-01-000012.tgb").exists()
    assert not list((home / "quarantine").iterdir())
    status = run("agent", "status", "--home", str(home)).stdout
    assert "last sequence 10" in status
    assert ("x-1.0.12-site-01-000012.tgb: sequence 12 is waiting for sequence 11, hello "
            "1.0.11, exported 2026-12-01 by carol") in status


def _reason_files(home: Path) -> list[Path]:
    return sorted((home / "quarantine").glob("*.reason.txt"))


def test_hostile_file_names_are_escaped_and_never_crash(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_agent(tmp_path, hub_keys)
    src = tmp_path / "src"
    src.mkdir()
    (good,) = chained(hub_keys, src / "good.tgb", 1, None)
    inbox = home / "inbox"
    valid_name = os.fsdecode(b"hello-\xff\xfe.tgb")  # not UTF-8
    fake_lines = "junk\nreason: verified OK\ncheck: none.tgb"  # newlines in a file name
    bad_bytes = os.fsdecode(b"bad-\xc3\x28\x1b[31m.tgb")  # invalid UTF-8 and an ESC sequence
    dash = "--help -rf .tgb"  # a leading dash and spaces: never an option
    longest = "\u00e9" * 120 + "x" * 11 + ".tgb"  # 255 bytes: no room for ".reason.txt"
    copy_in([good], home, [valid_name])
    for name in (fake_lines, bad_bytes, dash, longest):
        (inbox / name).write_bytes(b"not a bundle at all\n" * 100)
        os.utime(inbox / name, (time.time() - 120, time.time() - 120))
    out = run("agent", "run", "--home", str(home), "--once")
    lines = out.stdout.splitlines()
    assert "hello-\\xff\\xfe.tgb: succeeded: 3 step(s) succeeded" in lines
    assert sum(": rejected: " in line for line in lines) == 4, out.stdout
    assert "Traceback" not in out.stderr and "cannot move" not in out.stderr
    assert (home / "archive" / valid_name).exists()
    assert len(list((home / "outbox").glob("*.tgr"))) == 5  # one signed result each
    assert (home / "quarantine" / dash).exists() and (home / "quarantine" / longest).exists()
    reasons = _reason_files(home)
    assert len(reasons) == 4
    for reason in reasons:
        text = reason.read_bytes().decode("utf-8")  # always valid UTF-8
        assert not any(line.startswith("reason: verified OK") for line in text.splitlines())
        assert [ln.split(":")[0] for ln in text.splitlines()[:2]] == ["bundle", "check"]
    texts = "".join(r.read_text() for r in reasons)
    assert "junk\\x0areason: verified OK\\x0acheck: none.tgb" in texts
    assert "bad-\\xc3(\\x1b[31m.tgb" in texts
    assert f"bundle: {dash}\n" in texts and f"bundle: {longest}\n" in texts
    assert not list(inbox.iterdir())


def test_read_only_media_are_read_never_changed_and_not_taken_twice(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    """A write-protected stick: the bundle runs once, junk is refused once (a sparse 512 MiB
    file is not copied: only its size and a bounded digest are recorded), nothing on the
    stick changes, and later runs neither crash nor copy anything again."""
    home = init_agent(tmp_path, hub_keys)
    src = tmp_path / "src"
    src.mkdir()
    (good,) = chained(hub_keys, src / "hello.tgb", 1, None)
    copy_in([good], home)
    junk = home / "inbox" / "junk.tgb"
    with junk.open("wb") as fh:
        fh.write(os.urandom(300 * 1024))
        fh.truncate(512 * 1024 * 1024)  # sparse: 300 KB of data, 512 MiB long
    os.utime(junk, (time.time() - 120, time.time() - 120))
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (home / "inbox").iterdir()}
    inbox = str(home / "inbox")
    subprocess.run(["mount", "--bind", inbox, inbox], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", inbox], check=True)
        first = run("agent", "run", "--home", str(home), "--once")
        assert "hello.tgb: succeeded: 3 step(s) succeeded" in first.stdout
        assert "junk.tgb: rejected:" in first.stdout
        assert "cannot remove hello.tgb" in first.stderr and "read-only" in first.stderr
        assert "junk.tgb is 536870912 bytes, over the copy cap" in first.stderr
        results = sorted((home / "outbox").glob("*.tgr"))
        assert len(results) == 2
        for _ in range(2):  # restarts: nothing taken twice, no crash, no copies
            again = run("agent", "run", "--home", str(home), "--once")
            assert again.stdout.strip() == "", again.stdout
            assert "already taken from this inbox" in again.stderr
        assert sorted((home / "outbox").glob("*.tgr")) == results
        assert not (home / "archive" / "duplicates").exists()
        now = {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
               for p in (home / "inbox").iterdir()}
        assert now == before  # the medium is unchanged
        status = run("agent", "status", "--home", str(home)).stdout
        assert "junk.tgb" not in status.split("quarantined:")[0]  # not "waiting" either
    finally:
        subprocess.run(["umount", inbox], check=True)
    assert (home / "archive" / "hello.tgb").stat().st_size == good.stat().st_size
    assert not (home / "quarantine" / "junk.tgb").exists()  # never copied: over the cap
    reason = (home / "quarantine" / "junk.tgb.reason.txt").read_text()
    assert "536870912  junk.tgb  (SHA-256 of the first 67108864 bytes only)" in reason
    assert "not copied" in reason


def test_the_daemon_holds_a_bundle_and_runs_it_when_its_predecessor_arrives(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    home = init_agent(tmp_path, hub_keys)
    src = tmp_path / "src"
    src.mkdir()
    b1 = chained(hub_keys, src / "a-first.tgb", 1, None)
    b2 = chained(hub_keys, src / "b-second.tgb", 2, 1)
    log = tmp_path / "agent.log"
    with log.open("wb") as fh:
        agent = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                                 stdout=fh, stderr=subprocess.STDOUT)
    try:
        copy_in(b2, home)
        wait_for(lambda: "holding b-second.tgb" in log.read_text(), 60, "the hold in the log")
        text = log.read_text()
        assert ("sequence 2 is waiting for sequence 1, hello 1.0.1, exported 2026-12-01 by "
                "carol") in text
        (line,) = [ln for ln in text.splitlines() if "holding b-second.tgb" in ln]
        assert "WARNING" in line  # through the agent's configured log: time and level
        copy_in(b1, home)
        wait_for(lambda: len(list((home / "outbox").glob("*.tgr"))) >= 2, 60, "two results")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert agent.returncode == 0, log.read_text()
    assert log.read_text().count("holding b-second.tgb") == 1  # said once, not every scan
    status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    assert [(b["sequence"], b["state"]) for b in status["bundles"]] == [
        (1, "succeeded"), (2, "succeeded")]
    assert status["inbox_held"] == []
