"""The agent home as operators meet it with real processes: one instance at a time, a damaged
journal refused with a recovery command that works and never re-runs anything, one log
format, private files."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.e2e.agent_site import (
    assert_chain,
    drop,
    holds_lock,
    init_site,
    make_bundle,
    results,
    settled,
    start_agent,
    stop_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, run, wait_for


def _release(tmp: Path, seq: int, effects: Path) -> Path:
    return write_release(tmp / f"home-1.0.{seq}", "home", f"1.0.{seq}",
                         ['name = "effect"\nkind = "shell"\nscript = "effect.sh"'],
                         {"effect.sh": f'echo "b{seq}" >> "{effects}"\n'})


def _run_bundles(tmp: Path, keys: HubKeys, home: Path, effects: Path, seqs: list[int]) -> None:
    log = tmp / "agent.log"
    agent = start_agent(home, log)
    try:
        for seq in seqs:
            bundle, bid = make_bundle(keys, _release(tmp, seq, effects), tmp / f"h-{seq}.tgb",
                                      seq)
            drop(bundle, home)
            # Wait for this bundle's own result: a count of results is satisfied early by the
            # refusal of another file, and the three looks below are not one snapshot.
            wait_for(lambda b=bid: any(r["bundle_id"] == b for r in results(home))
                     and settled(home) and not any((home / "inbox").iterdir()), 60,
                     f"bundle {seq} to run")
    finally:
        stop_agent(agent, log, home)


def test_a_second_instance_is_refused_naming_the_first(tmp_path: Path,
                                                       hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    log = tmp_path / "agent.log"
    first = start_agent(home, log)
    try:
        wait_for(lambda: holds_lock(home, first) and "watching" in log.read_text(), 60,
                 "the first agent to start")
        before = sorted(p.name for p in home.rglob("*") if p.name != "agent.log")
        for args in (["run"], ["run", "--once"], ["retry", "b1", "--from-step", "1"],
                     ["journal", "recover"]):
            out = run("agent", *args, "--home", str(home), check=False)
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert f"in use by another process (pid {first.pid}: agent run" in out.stderr, \
                out.stderr
        assert sorted(p.name for p in home.rglob("*") if p.name != "agent.log") == before
        assert first.poll() is None
    finally:
        stop_agent(first, log, home)
    # Once the first one is gone, the lock is free again.
    assert run("agent", "run", "--once", "--home", str(home)).returncode == 0


@pytest.mark.parametrize("damage", ["corrupt", "emptied", "deleted"])
def test_damaged_journal_is_refused_and_recovered_without_rerunning(
    tmp_path: Path, hub_keys: HubKeys, damage: str
) -> None:
    home = init_site(tmp_path, hub_keys)
    effects = tmp_path / "effects.txt"
    effects.touch()
    _run_bundles(tmp_path, hub_keys, home, effects, [1, 2])
    journal = home / "journal.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    if damage == "corrupt":
        data = bytearray(journal.read_bytes())
        data[100:4096] = b"\xff" * (4096 - 100)
        journal.write_bytes(bytes(data))
    elif damage == "emptied":
        journal.write_bytes(b"")
    else:
        journal.unlink()
    damaged_bytes = journal.read_bytes() if journal.exists() else None

    out = run("agent", "run", "--once", "--home", str(home), check=False)
    assert out.returncode == 1
    assert str(journal) in out.stderr and "Traceback" not in out.stderr, out.stderr
    advice = f"tiangong agent journal recover --home {home}"
    assert advice in out.stderr, out.stderr
    assert effects.read_text().split() == ["b1", "b2"]  # nothing ran
    if damaged_bytes is not None:
        assert journal.read_bytes() == damaged_bytes  # nothing changed

    rec = run(*advice.split()[1:])
    assert "journal rebuilt: 2 result(s) found in the outbox, 2 bundle(s)" in rec.stdout, \
        rec.stdout
    if damaged_bytes is not None:
        kept = list(home.glob("journal.sqlite.damaged-*"))
        assert [p.read_bytes() for p in kept] == [damaged_bytes]
    # The archived bundles do not run again, even when dropped again; sequences continue.
    again, _ = make_bundle(hub_keys, _release(tmp_path, 22, effects), tmp_path / "again.tgb", 2)
    drop(again, home)
    _run_bundles(tmp_path, hub_keys, home, effects, [3])
    assert effects.read_text().split() == ["b1", "b2", "b3"]
    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    assert [r["status"] for r in found] == ["succeeded", "succeeded", "rejected", "succeeded"]
    status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    assert status["sequence"] == 3


def test_logs_are_one_format_and_files_are_private(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    (home / "inbox" / "notes.txt").write_text("not a bundle")
    effects = tmp_path / "effects.txt"
    bundle, _ = make_bundle(hub_keys, _release(tmp_path, 1, effects), tmp_path / "p.tgb", 1)
    drop(bundle, home)
    log = tmp_path / "agent.log"
    agent = start_agent(home, log, None, "--json-logs")
    try:
        wait_for(lambda: settled(home) and len(results(home)) == 1, 60, "the result")
    finally:
        stop_agent(agent, log, home)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    # The inbox's own messages reach the same log.
    assert any(line["logger"] == "tiangong.agent.inbox" and "notes.txt" in line["msg"]
               for line in lines), lines
    private = [home / "journal.sqlite", home / "archive" / bundle.name,
               *(home / "outbox").glob("*.tgr")]
    assert len(private) == 3
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    db = sqlite3.connect(home / "journal.sqlite")
    db.close()


def test_recovery_reports_a_bundle_without_result_as_interrupted(tmp_path: Path,
                                                                 hub_keys: HubKeys) -> None:
    """The journal is lost and so is the last result (taken to the hub): the bundle is
    recorded interrupted with a new signed result numbered after --result-floor."""
    home = init_site(tmp_path, hub_keys)
    effects = tmp_path / "effects.txt"
    effects.touch()
    _run_bundles(tmp_path, hub_keys, home, effects, [1, 2])
    taken = sorted((home / "outbox").glob("*.tgr"))[-1]
    taken.unlink()
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (home / name).unlink(missing_ok=True)
    rec = json.loads(run("agent", "journal", "recover", "--home", str(home),
                         "--result-floor", "2", "--json").stdout)
    assert [(b["sequence"], b["state"]) for b in rec["bundles"]] == [(1, "succeeded"),
                                                                     (2, "interrupted")]
    assert rec["result_floor"] == 2 and len(rec["new_results"]) == 1
    found = verified_results(home, hub_keys, tmp_path)
    assert [(r["result_seq"], r["status"]) for r in found] == [(1, "succeeded"),
                                                               (3, "interrupted")]
    assert "whether its steps ran is unknown" in found[1]["body"]["summary"]
    assert effects.read_text().split() == ["b1", "b2"]  # nothing ran again
    status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    assert [b["state"] for b in status["bundles"]] == ["succeeded", "interrupted"]
