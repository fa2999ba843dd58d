"""hub.live_files: the log store per (agent, bundle) with its quotas, and where partial
uploads live (the same paths against a real `hub live`: tests/e2e/test_live_hostile.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bundle.sync import LogReceived
from hub.live_files import LogQuotaError, LogStore, SpoolDigests, partial_path, sweep_partials


def _line(bundle: str, seq: int, text: str = "x") -> LogReceived:
    return LogReceived(bundle, 0, seq, "stdout", text)


def test_lines_are_stored_per_agent_and_bundle_once_per_seq(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    assert store.add("site-01", _line("b-1", 0, "one")) is True
    assert store.add("site-01", _line("b-1", 0, "again")) is False  # never rewritten
    assert store.add("site-02", _line("b-1", 0, "other agent")) is True  # its own file
    one = [json.loads(x) for x in (tmp_path / "site-01" / "b-1.log").read_text().splitlines()]
    assert [r["text"] for r in one] == ["one"]
    assert (tmp_path / "site-02" / "b-1.log").exists()
    # a new store (a restarted hub), or one that forgot a disconnected agent, knows what
    # is stored
    assert LogStore(tmp_path).add("site-01", _line("b-1", 0, "after restart")) is False
    store.forget("site-01")
    assert store.add("site-01", _line("b-1", 0, "after reconnect")) is False
    assert store.add("site-01", _line("b-1", 1, "two")) is True


@pytest.mark.parametrize(("agent_quota", "total_quota", "which"), [
    (300, 10_000, "agent"),
    (10_000, 300, "total"),
])
def test_a_quota_stops_storing_with_one_note(tmp_path: Path, agent_quota: int,
                                             total_quota: int, which: str) -> None:
    store = LogStore(tmp_path, agent_quota=agent_quota, total_quota=total_quota)
    results = [store.add("site-01", _line("b-1", seq, "y" * 50)) for seq in range(20)]
    over = [r for r in results if isinstance(r, LogQuotaError)]
    assert len(over) == 1 and over[0].which == which
    assert results[-1] is False  # told once; later lines are dropped quietly
    path = tmp_path / "site-01" / "b-1.log"
    assert path.stat().st_size <= max(agent_quota, total_quota) + 400  # the note fits
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["stream"] == "info" and f"log_quota_{which}_bytes" in last["text"]


def test_usage_of_earlier_runs_counts_towards_the_quota(tmp_path: Path) -> None:
    LogStore(tmp_path).add("site-01", _line("b-1", 0, "z" * 500))
    store = LogStore(tmp_path, agent_quota=520)
    assert isinstance(store.add("site-01", _line("b-2", 0, "z" * 50)), LogQuotaError)


@pytest.mark.parametrize("bad", ["../x", ".hidden", "a/b", ""])
def test_ids_that_are_not_ids_never_become_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        LogStore(tmp_path).path(bad, "b-1")
    with pytest.raises(ValueError):
        partial_path(tmp_path, "site-01", bad)


def test_partial_paths_of_ids_with_separators_never_collide(tmp_path: Path) -> None:
    assert partial_path(tmp_path, "agent-a--x", "r1") != partial_path(tmp_path, "agent-a",
                                                                       "x--r1")
    assert partial_path(tmp_path, "agent-a", "x--r1").parent.name == "agent-a"


def test_sweep_removes_old_partials_except_running_ones(tmp_path: Path) -> None:
    old, running, fresh = (partial_path(tmp_path, "site-01", t) for t in ("old", "run", "new"))
    old.parent.mkdir(parents=True)
    for p in (old, running, fresh):
        p.write_bytes(b"x")
    past = time.time() - 100
    for p in (old, running):
        os.utime(p, (past, past))
    removed = sweep_partials(tmp_path, 50, time.time(), keep={running})
    assert removed == [old]
    assert running.exists() and fresh.exists()


def test_a_spooled_bundle_is_hashed_once_for_its_offers(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that reconnects before RECEIVED is offered the bundle again without the hub
    reading the whole file again; a file replaced under the same name is hashed afresh."""
    import hashlib

    import hub.live_files as live_files

    hashed: list[Path] = []
    real = live_files.size_and_sha256

    def counted(p: Path) -> tuple[int, str]:
        hashed.append(p)
        return real(p)

    monkeypatch.setattr(live_files, "size_and_sha256", counted)
    path = tmp_path / "b-1.tgb"
    path.write_bytes(b"one" * 1000)
    digests = SpoolDigests(limit=2)
    first = digests.get(path)
    assert first == (3000, hashlib.sha256(b"one" * 1000).hexdigest())
    assert digests.get(path) == first and hashed == [path]
    replacement = tmp_path / "new.tgb"
    replacement.write_bytes(b"two" * 1000)
    os.replace(replacement, path)  # another inode
    assert digests.get(path) == (3000, hashlib.sha256(b"two" * 1000).hexdigest())
    assert hashed == [path, path]
    for name in ("c.tgb", "d.tgb"):  # over the limit: the oldest is forgotten
        (tmp_path / name).write_bytes(b"x")
        digests.get(tmp_path / name)
    digests.get(path)
    assert hashed.count(path) == 3
    digests.forget(path)
    digests.get(path)
    assert hashed.count(path) == 4
    # The export's own digest (ExportedBundle.sha256): the OFFER reads nothing; a size
    # that is not the file's is not remembered, and a file replaced later is hashed again.
    fresh = tmp_path / "e.tgb"
    fresh.write_bytes(b"three" * 100)
    told = hashlib.sha256(b"three" * 100).hexdigest()
    digests.remember(tmp_path / "missing.tgb", 1, told)
    digests.remember(fresh, 499, told)
    digests.get(fresh)
    assert hashed.count(fresh) == 1
    digests.remember(fresh, 500, told)
    assert digests.get(fresh) == (500, told) and hashed.count(fresh) == 1
    (tmp_path / "f.tgb").write_bytes(b"four" * 125)
    os.replace(tmp_path / "f.tgb", fresh)
    assert digests.get(fresh) == (500, hashlib.sha256(b"four" * 125).hexdigest())
    assert hashed.count(fresh) == 2
