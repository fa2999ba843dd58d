"""Inbox: nothing is picked up before it is complete (watchdog #586); moves never lose a file.

Real files in ``tmp_path``; time is passed to ``scan(now)`` so no test sleeps.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import agent.inbox as inbox_mod
from agent.inbox import (
    Inbox,
    InboxWatcher,
    ReadyItem,
    WaitingItem,
    move_to,
    write_reason,
)
from bundle.printable import printable

SETTLING = "settling (size still changing)"
EVENT_WAIT = 10.0  # seconds: an upper bound for a condition wait, not a timing assertion


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _names(items: list[ReadyItem]) -> list[str]:
    return [i.name for i in items]


@pytest.fixture
def box(tmp_path: Path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


# -- settling ----------------------------------------------------------------------------------


def test_growing_file_is_not_picked_up_until_its_size_settles(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5)
    f = _write(box / "billing-2.4.0.tgb", b"a" * 100)
    assert inbox.scan(0) == []
    assert inbox.waiting() == [WaitingItem("billing-2.4.0.tgb", SETTLING)]
    _append(f, b"b" * 100)  # the copy is still running
    assert inbox.scan(4) == []
    assert inbox.scan(8.9) == []  # unchanged for 4.9 s only: the change at t=4 restarted it
    assert inbox.waiting() == [WaitingItem("billing-2.4.0.tgb", SETTLING)]
    ready = inbox.scan(9)
    assert ready == [ReadyItem("billing-2.4.0.tgb", (f,), 200, "single", 0)]
    assert ready[0].first_seen == 0
    assert inbox.waiting() == []


def test_a_fresh_file_waits_a_full_interval_from_first_sight(box: Path) -> None:
    _write(box / "a.tgb", b"x")  # modified just now
    inbox = Inbox(box, settle_seconds=5, wall_clock=lambda: os.stat(box / "a.tgb").st_mtime)
    assert inbox.scan(1000) == []
    assert inbox.scan(1004.99) == []
    assert _names(inbox.scan(1005)) == ["a.tgb"]


def test_an_old_unchanged_file_is_ready_at_first_sight(box: Path) -> None:
    """A fresh process (``agent run --once`` from a timer) settles by the file's age."""
    f = _write(box / "a.tgb", b"x")
    os.utime(f, (1_000_000, 1_000_000))
    inbox = Inbox(box, settle_seconds=5, wall_clock=lambda: 1_000_005.0)
    assert _names(inbox.scan(0)) == ["a.tgb"]
    young = Inbox(box, settle_seconds=5, wall_clock=lambda: 1_000_004.9)
    assert young.scan(0) == []
    assert young.waiting() == [WaitingItem("a.tgb", SETTLING)]


def test_a_file_dated_in_the_future_settles_by_observation(box: Path) -> None:
    f = _write(box / "a.tgb", b"x")
    os.utime(f, (2_000_000, 2_000_000))  # another machine's clock, ahead of ours
    inbox = Inbox(box, settle_seconds=5, wall_clock=lambda: 1_000_000.0)
    assert inbox.scan(0) == []
    assert _names(inbox.scan(5)) == ["a.tgb"]


def test_a_future_dated_file_says_so_warns_once_and_tells_when_it_can_settle(
    box: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = _write(box / "a.tgb", b"x")
    os.utime(f, (1_003_600, 1_003_600))  # written where the clock is an hour ahead
    inbox = Inbox(box, settle_seconds=5, wall_clock=lambda: 1_000_000.0)
    with caplog.at_level(logging.WARNING, logger="tiangong.agent.inbox"):
        assert inbox.scan(100) == []
        assert inbox.age_unknown_until() == 105
        (waiting,) = inbox.waiting()
        assert waiting.reason == ("a.tgb is dated 3600 s in the future by this machine's "
                                  "clock: age unknown, taken once seen unchanged for 5 s "
                                  "(unchanged for 0 s so far)")
        assert inbox.scan(103) == []
        assert inbox.waiting()[0].reason.endswith("(unchanged for 3 s so far)")
        _append(f, b"y")  # still being written: the watch starts again
        os.utime(f, (1_003_601, 1_003_601))
        assert inbox.scan(104) == []
        assert inbox.age_unknown_until() == 109
        assert inbox.scan(108.9) == []
        assert _names(inbox.scan(109)) == ["a.tgb"]
        assert inbox.age_unknown_until() is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per modification time, not per scan
    assert "a.tgb: modification time is 3600 s ahead of this machine's clock" in warnings[0]
    assert "3601 s ahead" in warnings[1]


def test_a_file_a_moment_in_the_future_is_just_settling(box: Path) -> None:
    f = _write(box / "a.tgb", b"x")
    os.utime(f, (1_000_001, 1_000_001))  # time stamp granularity, a share's clock drift
    inbox = Inbox(box, settle_seconds=5, wall_clock=lambda: 1_000_000.0)
    assert inbox.scan(0) == []
    assert inbox.waiting() == [WaitingItem("a.tgb", SETTLING)]
    assert inbox.age_unknown_until() is None


def test_mtime_change_with_same_size_restarts_the_clock(box: Path) -> None:
    f = _write(box / "a.tgb", b"x" * 10)
    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # preallocated, rewritten
    assert inbox.scan(4) == []
    assert inbox.scan(8) == []
    assert _names(inbox.scan(9)) == ["a.tgb"]


@pytest.mark.parametrize(
    "name",
    [
        "x.tgb.part",
        "x.tgb.tmp",
        "x.tgb.partial",
        "x.tgb.crdownload",
        "X.TGB.PART",
        ".x.tgb",
        "~x.tgb",
        ".x.tgb.part000",
        "x.tgb.part001.tmp",
    ],
)
def test_temp_names_are_ignored_and_left_alone(box: Path, name: str) -> None:
    f = _write(box / name, b"data")
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 0)
    assert inbox.scan(0) == []
    assert inbox.scan(100) == []
    assert inbox.waiting() == []
    assert f.read_bytes() == b"data"


def test_directories_and_other_files_are_ignored_logged_once_and_kept(
    box: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (box / "dir.tgb").mkdir()
    (box / "subdir").mkdir()
    notes = _write(box / "notes.txt", b"hello")
    (box / "link.tgb").symlink_to(notes)
    os.mkfifo(box / "pipe.tgb")
    _write(box / "x-000003.tgr", b"result")
    inbox = Inbox(box, settle_seconds=5)
    with caplog.at_level(logging.INFO, logger="tiangong.agent.inbox"):
        for t in (0, 10, 20):
            assert inbox.scan(t) == []
    assert inbox.waiting() == []
    messages = [r.getMessage() for r in caplog.records]
    for name, why in [("notes.txt", "not a bundle (NAME.tgb or NAME.tgb.partNNN): ignored"),
                      ("link.tgb", "a symbolic link: ignored"),
                      ("pipe.tgb", "a FIFO (named pipe): ignored"),
                      ("x-000003.tgr", "a result file (.tgr): ignored — results go to the hub"),
                      ("dir.tgb", "a directory: ignored")]:
        assert sum(f"{name}: {why}" in m for m in messages) == 1, (name, messages)
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert not any("subdir" in m for m in messages)
    assert notes.read_bytes() == b"hello" and (box / "dir.tgb").is_dir()


def test_a_file_renamed_from_temp_name_then_settles(box: Path) -> None:
    tmp = _write(box / "x.tgb.part", b"a" * 50)
    inbox = Inbox(box, settle_seconds=5)
    assert inbox.scan(0) == []
    _append(tmp, b"b" * 50)
    assert inbox.scan(10) == []
    tmp.rename(box / "x.tgb")  # the copy tool's final rename
    assert inbox.scan(11) == []
    assert inbox.waiting() == [WaitingItem("x.tgb", SETTLING)]
    assert inbox.scan(15.9) == []
    assert inbox.scan(16) == [ReadyItem("x.tgb", (box / "x.tgb",), 100, "single", 11)]


# -- split bundles -----------------------------------------------------------------------------


def _part(box: Path, base: str, index: int, data: bytes = b"p") -> Path:
    return _write(box / f"{base}.part{index:03d}", data)


def test_split_group_waits_for_missing_parts_then_becomes_ready(box: Path) -> None:
    calls: list[Path] = []

    def parts_needed(part0: Path) -> int:
        calls.append(part0)
        return 7

    inbox = Inbox(box, settle_seconds=5, parts_needed=parts_needed)
    for i in (0, 1, 2, 4, 6, 7):
        _part(box, "b.tgb", i, bytes([i]) * 10)
    assert inbox.scan(0) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", SETTLING)]
    assert calls == []  # part 0 is not read before it has settled
    assert inbox.scan(10) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", "waiting for parts 3, 5 of 7")]
    assert calls == [box / "b.tgb.part000"]

    _part(box, "b.tgb", 3, b"\3" * 10)
    assert inbox.scan(20) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", "waiting for parts 5 of 7")]
    _part(box, "b.tgb", 5, b"\5" * 5)
    assert inbox.scan(30) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", SETTLING)]  # the last part just arrived
    assert inbox.scan(34) == []
    ready = inbox.scan(35)
    assert ready == [
        ReadyItem("b.tgb", tuple(box / f"b.tgb.part{i:03d}" for i in range(8)), 75, "split", 0)
    ]
    assert inbox.waiting() == []
    assert calls == [box / "b.tgb.part000"]  # read once, cached while part 0 is unchanged


def test_split_group_without_part0_waits_for_the_header(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 2)
    _part(box, "b.tgb", 1)
    _part(box, "b.tgb", 2)
    assert inbox.scan(0) == [] and inbox.scan(100) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", "waiting for part 0 (the header)")]
    _part(box, "b.tgb", 0)
    assert inbox.scan(101) == []
    assert _names(inbox.scan(106)) == ["b.tgb"]


def test_split_group_with_unknown_count_keeps_waiting(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: None)
    _part(box, "b.tgb", 0)
    _part(box, "b.tgb", 1)
    inbox.scan(0)
    assert inbox.scan(100) == []
    assert "cannot tell the number of parts" in inbox.waiting()[0].reason


def test_parts_needed_that_raises_is_reported_not_fatal(box: Path) -> None:
    def boom(part0: Path) -> int:
        raise ValueError("garbled header")

    inbox = Inbox(box, settle_seconds=5, parts_needed=boom)
    _part(box, "b.tgb", 0)
    _write(box / "a.tgb", b"x")
    inbox.scan(0)
    assert _names(inbox.scan(10)) == ["a.tgb"]
    assert [w.name for w in inbox.waiting()] == ["b.tgb"]


def test_rewritten_part0_is_asked_again(box: Path) -> None:
    counts = iter([3, 1])
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: next(counts))
    p0 = _part(box, "b.tgb", 0, b"old")
    _part(box, "b.tgb", 1)
    inbox.scan(0)
    assert inbox.scan(10) == []
    assert inbox.waiting() == [WaitingItem("b.tgb", "waiting for parts 2, 3 of 3")]
    _write(p0, b"newer header")
    inbox.scan(11)
    assert _names(inbox.scan(20)) == ["b.tgb"]


def test_single_and_split_each_wait_on_their_own(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 1)
    _part(box, "s.tgb", 0)
    _write(box / "a.tgb", b"x")
    inbox.scan(0)
    _part(box, "s.tgb", 1)
    ready = inbox.scan(5)
    assert _names(ready) == ["a.tgb"]
    assert inbox.waiting() == [WaitingItem("s.tgb", SETTLING)]


def test_ready_items_are_ordered_by_first_sight_then_name(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 0)
    _write(box / "z.tgb", b"1")
    inbox.scan(0)
    _write(box / "b.tgb", b"2")
    _part(box, "a.tgb", 0)
    inbox.scan(1)
    assert _names(inbox.scan(10)) == ["z.tgb", "a.tgb", "b.tgb"]


def test_forget_stops_offering_until_the_file_changes(box: Path) -> None:
    f = _write(box / "a.tgb", b"one")
    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    [item] = inbox.scan(5)
    inbox.forget(item)  # say the move failed and the file is still there
    assert inbox.scan(20) == [] and inbox.waiting() == []
    _write(f, b"a new copy")  # the operator drops a new file of the same name
    assert inbox.scan(21) == []
    assert _names(inbox.scan(26)) == ["a.tgb"]


# -- robustness --------------------------------------------------------------------------------


def test_file_vanishing_between_listing_and_stat(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = _write(box / "gone.tgb", b"x")
    _write(box / "stays.tgb", b"y")
    real_lstat = inbox_mod._lstat

    def pull_the_stick(path: Path) -> os.stat_result:
        if path.name == "gone.tgb":
            gone.unlink(missing_ok=True)
        return real_lstat(path)

    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    monkeypatch.setattr(inbox_mod, "_lstat", pull_the_stick)
    assert _names(inbox.scan(10)) == ["stays.tgb"]
    assert inbox.waiting() == []


def test_listed_name_that_never_existed(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_mod, "_listdir", lambda d: ["ghost.tgb", "ghost.tgb.part000"])
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 0)
    assert inbox.scan(0) == [] and inbox.scan(10) == []
    assert inbox.waiting() == []


def test_permission_error_on_one_file_is_reported_not_fatal(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(box / "locked.tgb", b"x")
    _write(box / "fine.tgb", b"y")
    _part(box, "s.tgb", 0)
    _part(box, "s.tgb", 1)
    real_lstat = inbox_mod._lstat

    def lstat(path: Path) -> os.stat_result:
        if path.name in ("locked.tgb", "s.tgb.part001"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_lstat(path)

    monkeypatch.setattr(inbox_mod, "_lstat", lstat)
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 1)
    inbox.scan(0)
    assert _names(inbox.scan(10)) == ["fine.tgb"]
    assert inbox.waiting() == [
        WaitingItem("locked.tgb", "cannot read locked.tgb: permission denied"),
        WaitingItem("s.tgb", "cannot read s.tgb.part001: permission denied"),
    ]
    # Fixed by the operator: the clocks start again from there.
    monkeypatch.setattr(inbox_mod, "_lstat", real_lstat)
    assert _names(inbox.scan(11)) == ["fine.tgb"]
    assert _names(inbox.scan(16)) == ["fine.tgb", "s.tgb", "locked.tgb"]  # s: part 0 seen at 0


def test_unreadable_content_is_not_offered(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(box / "a.tgb", b"x")
    monkeypatch.setattr(inbox_mod, "_readable", lambda p: False)
    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    assert inbox.scan(10) == []
    assert inbox.waiting() == [WaitingItem("a.tgb", "cannot read a.tgb: permission denied")]


def test_inbox_unmounted_and_back(box: Path) -> None:
    f = _write(box / "a.tgb", b"x")
    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    f.unlink()
    box.rmdir()  # the stick was unmounted
    assert inbox.scan(3) == []
    assert inbox.problem is not None and inbox.problem.startswith("inbox unavailable")
    assert inbox.waiting() == [WaitingItem(str(box), inbox.problem)]
    assert inbox.scan(4) == []  # still fine to scan
    box.mkdir()
    _write(box / "a.tgb", b"x")  # mounted again
    assert inbox.scan(5) == []  # the clock restarted at the remount
    assert inbox.problem is None
    assert inbox.scan(9) == []
    assert _names(inbox.scan(10)) == ["a.tgb"]


def test_default_clock_is_used_without_now(box: Path) -> None:
    now = [0.0]
    inbox = Inbox(box, settle_seconds=5, clock=lambda: now[0])
    _write(box / "a.tgb", b"x")
    assert inbox.scan() == []
    now[0] = 5.0
    assert _names(inbox.scan()) == ["a.tgb"]


def test_default_parts_needed_says_unknown_without_the_bundle_reader(box: Path) -> None:
    p0 = _part(box, "b.tgb", 0, b"not a bundle")
    assert inbox_mod.default_parts_needed(p0) is None


# -- moving files out --------------------------------------------------------------------------


def _ready(box: Path, parts_needed: Any = lambda p: 2) -> ReadyItem:
    inbox = Inbox(box, settle_seconds=5, parts_needed=parts_needed)
    inbox.scan(0)
    [item] = inbox.scan(5)
    return item


def _split(box: Path) -> dict[str, bytes]:
    content = {f"b.tgb.part{i:03d}": os.urandom(3000 + i) for i in range(3)}
    for name, data in content.items():
        _write(box / name, data)
    return content


def test_move_to_same_filesystem(box: Path, tmp_path: Path) -> None:
    content = _split(box)
    item = _ready(box)
    new = move_to(item, tmp_path / "archive")
    assert [p.name for p in new] == list(content)
    assert {p.name: p.read_bytes() for p in new} == content
    assert list(box.iterdir()) == []


@pytest.mark.parametrize("crossing", [False, True])
def test_move_to_avoids_name_clashes_for_the_whole_group(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crossing: bool
) -> None:
    if crossing:
        monkeypatch.setattr(inbox_mod, "_same_filesystem", lambda src, dest: False)
    dest = tmp_path / "quarantine"
    dest.mkdir()
    _write(dest / "b.tgb.part001", b"older")  # only one part clashes
    _write(dest / "b-1.tgb.part000", b"older still")
    content = _split(box)
    new = move_to(_ready(box), dest)
    assert [p.name for p in new] == ["b-2.tgb.part000", "b-2.tgb.part001", "b-2.tgb.part002"]
    assert [p.read_bytes() for p in new] == list(content.values())
    assert (dest / "b.tgb.part001").read_bytes() == b"older"
    assert (dest / "b-1.tgb.part000").read_bytes() == b"older still"
    assert list(box.iterdir()) == []
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp left


def test_move_to_single_clash(box: Path, tmp_path: Path) -> None:
    dest = tmp_path / "archive"
    dest.mkdir()
    _write(dest / "billing-2.4.0.tgb", b"old")
    _write(box / "billing-2.4.0.tgb", b"new")
    [new] = move_to(_ready(box), dest)
    assert new == dest / "billing-2.4.0-1.tgb" and new.read_bytes() == b"new"


@pytest.mark.parametrize("fail_on", ["b.tgb.part000", "b.tgb.part002"])
def test_move_across_filesystems_failing_midway_loses_nothing(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: str
) -> None:
    content = _split(box)
    item = _ready(box)
    monkeypatch.setattr(inbox_mod, "_same_filesystem", lambda src, dest: False)
    real_copy = inbox_mod._copy_chunks

    def copy_then_fail(src: Any, dst: Any) -> None:
        if Path(src.name).name == fail_on:
            dst.write(src.read(1000))  # half written when the stick is pulled
            raise OSError(errno.EIO, "Input/output error")
        real_copy(src, dst)

    monkeypatch.setattr(inbox_mod, "_copy_chunks", copy_then_fail)
    dest = tmp_path / "archive"
    with pytest.raises(OSError, match="Input/output"):
        move_to(item, dest)
    assert {p.name: p.read_bytes() for p in box.iterdir()} == content  # every source intact
    assert list(dest.iterdir()) == []  # no partial copy, no temp file


def test_move_across_filesystems_failing_at_rename_loses_nothing(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = _split(box)
    item = _ready(box)
    dest = tmp_path / "archive"
    monkeypatch.setattr(inbox_mod, "_same_filesystem", lambda src, dest: False)
    real_replace = os.replace
    renamed: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        if len(renamed) == 1:
            raise OSError(errno.EIO, "Input/output error")
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        move_to(item, dest)
    monkeypatch.setattr(os, "replace", real_replace)
    # Every file is in the inbox, in dest, or both; no temp file is left in dest.
    for name, data in content.items():
        copies = [p.read_bytes() for p in (box / name, dest / name) if p.exists()]
        assert copies and all(c == data for c in copies)
    assert sorted(p.name for p in dest.iterdir()) == ["b.tgb.part000"]
    assert sorted(p.name for p in box.iterdir()) == list(content)  # no source removed yet


def test_move_falls_back_to_copy_on_exdev(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(box / "a.tgb", b"payload")
    item = _ready(box)
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(src).parent == box:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    [new] = move_to(item, tmp_path / "archive")
    assert new.read_bytes() == b"payload"
    assert not (box / "a.tgb").exists()


def test_write_reason(box: Path, tmp_path: Path) -> None:
    content = _split(box)
    dest = tmp_path / "quarantine"
    new = move_to(_ready(box), dest)
    _write(dest / "other.tgb", b"not ours")
    when = datetime(2026, 11, 23, 11, 30, 0, tzinfo=UTC)
    path = write_reason(
        dest, "b.tgb", "signature", "bad signature by key abc\nsecond line", now=when
    )
    assert path == dest / "b.tgb.reason.txt"
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[:5] == [
        "bundle: b.tgb",
        "check: signature",
        "reason: bad signature by key abc",
        "  second line",
        "time: 2026-11-23T11:30:00Z",
    ]
    for p in new:
        digest = hashlib.sha256(content[p.name]).hexdigest()
        assert f"sha256:{digest}  {len(content[p.name])}  {p.name}" in text
    assert "other.tgb" not in text
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("across", [False, True], ids=["same-fs", "across-fs"])
def test_a_name_of_the_longest_length_is_quarantined_with_its_reason(
        box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, across: bool) -> None:
    """A file name of 255 bytes (the most a file system takes) still moves — across file
    systems (a stick) through a temp copy whose name cannot be longer than the limit — and
    gets a reason file, twice (the second under a clash suffix). Such a bundle used to stay
    on the stick for ever, logged "File name too long" on every pass, or lie in quarantine/
    without its reason."""
    if across:
        monkeypatch.setattr(inbox_mod, "_same_filesystem", lambda src, dest: False)
    name = "\u00e9" * 120 + "x" * 11 + ".tgb"  # 255 bytes in UTF-8
    assert len(os.fsencode(name)) == 255
    dest = tmp_path / "quarantine"
    for n in range(2):
        _write(box / name, b"bundle %d" % n)
        inbox = Inbox(box, settle_seconds=5)
        inbox.scan(0)
        [item] = inbox.scan(5)
        [moved] = move_to(item, dest)
        assert moved.read_bytes() == b"bundle %d" % n and not (box / name).exists()
        assert len(os.fsencode(moved.name)) <= 255
        reason = write_reason(dest, moved.name, "signature", "bad signature", files=[moved])
        assert len(os.fsencode(reason.name)) <= 255 and reason.name.endswith(".reason.txt")
        text = reason.read_text(encoding="utf-8")
        assert text.startswith(f"bundle: {printable(moved.name)}\n")
        assert f"  {printable(moved.name)}" in text  # the file line names it in full
    assert len(list(dest.glob("*.reason.txt"))) == 2
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp left


def test_write_reason_with_explicit_files_and_overwrite(tmp_path: Path) -> None:
    f = _write(tmp_path / "x-1.tgb", b"abc")
    write_reason(tmp_path, "x-1.tgb", "parts", "first")
    path = write_reason(tmp_path, "x-1.tgb", "digest", "second", files=[f])
    text = path.read_text(encoding="utf-8")
    assert "check: digest" in text and "first" not in text
    assert hashlib.sha256(b"abc").hexdigest() in text


def test_write_reason_with_a_hostile_name_writes_one_valid_utf8_line_each(
    tmp_path: Path,
) -> None:
    name = os.fsdecode(b"junk\xff\nreason: verified OK\ncheck: none.tgb")
    f = _write(tmp_path / name, b"junk")
    reason = f"bundle {printable(name)}: not a bundle"  # the agent's messages escape names
    path = write_reason(tmp_path, name, "format", reason, files=[f])
    lines = path.read_bytes().decode("utf-8").splitlines()
    assert [ln.split(":")[0] for ln in lines[:4]] == ["bundle", "check", "reason", "time"]
    assert lines[0] == "bundle: junk\\xff\\x0areason: verified OK\\x0acheck: none.tgb"
    assert not any(ln.startswith(("reason: verified", "check: none")) for ln in lines)
    # The reason names the file as escaped once, exactly as the bundle line does.
    assert lines[2] == ("reason: bundle junk\\xff\\x0areason: verified OK\\x0acheck: "
                        "none.tgb: not a bundle")


def test_write_reason_escapes_what_a_reason_could_fake_but_keeps_its_escapes(
    tmp_path: Path,
) -> None:
    f = _write(tmp_path / "x.tgb", b"junk")
    reason = "bad \\x0a in name\x1b[31m\u2028second\nthird"  # an ESC, U+2028, a newline
    lines = write_reason(tmp_path, "x.tgb", "format", reason, files=[f]).read_text(
        encoding="utf-8").splitlines()
    assert lines[2] == "reason: bad \\x0a in name\\x1b[31m\\u2028second"
    assert lines[3] == "  third"  # a reason's own lines are indented under it


def test_reason_file_hashes_a_huge_file_only_up_to_its_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_mod, "REASON_HASH_CAP", 1024)
    f = tmp_path / "big.tgb"
    with f.open("wb") as fh:
        fh.write(b"a" * 1024)
        fh.truncate(10 * 1024 * 1024)
    text = write_reason(tmp_path, "big.tgb", "format", "x", files=[f]).read_text()
    digest = hashlib.sha256(b"a" * 1024).hexdigest()
    assert f"sha256:{digest}  10485760  big.tgb  (SHA-256 of the first 1024 bytes only)" in text


# -- the watcher -------------------------------------------------------------------------------


@pytest.mark.parametrize("polling", [False, True])
def test_watcher_wakes_on_a_new_file(box: Path, polling: bool) -> None:
    woken = threading.Event()
    watcher = InboxWatcher(box, woken.set, rescan_seconds=3600, polling=polling)
    with watcher:
        _write(box / "new.tgb", b"x")
        assert woken.wait(EVENT_WAIT)
    assert not watcher._timer.is_alive()  # type: ignore[union-attr]


def test_watcher_periodic_rescan_fires_without_events(box: Path) -> None:
    woken = threading.Event()
    with InboxWatcher(box, woken.set, rescan_seconds=0.01):
        assert woken.wait(EVENT_WAIT)


def test_watcher_survives_a_missing_inbox_and_watches_it_when_it_appears(tmp_path: Path) -> None:
    box = tmp_path / "mnt"
    woken = threading.Event()
    watcher = InboxWatcher(box, woken.set, rescan_seconds=3600)
    with watcher:
        box.mkdir()  # mounted
        watcher._rewatch()  # what the periodic tick does
        woken.clear()
        _write(box / "new.tgb", b"x")
        assert woken.wait(EVENT_WAIT)


def test_watcher_on_change_errors_do_not_stop_it(box: Path) -> None:
    calls = threading.Semaphore(0)

    def flaky() -> None:
        calls.release()
        raise RuntimeError("agent loop hiccup")

    with InboxWatcher(box, flaky, rescan_seconds=0.01):
        assert calls.acquire(timeout=EVENT_WAIT)
        assert calls.acquire(timeout=EVENT_WAIT)  # still ticking after the error


def test_stale_parts_beyond_the_count_travel_with_the_group(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 1)
    for i in (0, 1, 9):
        _part(box, "b.tgb", i)
    inbox.scan(0)
    [item] = inbox.scan(5)
    assert [p.name for p in item.paths] == ["b.tgb.part000", "b.tgb.part001", "b.tgb.part009"]


def test_conflicting_spellings_of_one_part_wait(box: Path) -> None:
    inbox = Inbox(box, settle_seconds=5, parts_needed=lambda p: 1)
    _part(box, "b.tgb", 0)
    _part(box, "b.tgb", 1)
    _write(box / "b.tgb.part0001", b"p")
    inbox.scan(0)
    assert inbox.scan(10) == []
    assert inbox.waiting() == [
        WaitingItem("b.tgb", "conflicting files for part 1: b.tgb.part0001, b.tgb.part001")
    ]


def test_too_many_entries_are_bounded_and_reported(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_mod, "MAX_INBOX_ENTRIES", 2)
    for name in ("a.tgb", "b.tgb", "c.tgb"):
        _write(box / name, b"x")
    inbox = Inbox(box, settle_seconds=5)
    inbox.scan(0)
    assert _names(inbox.scan(5)) == ["a.tgb", "b.tgb"]
    assert inbox.waiting() == [
        WaitingItem(str(box), "inbox holds 3 entries; only the first 2 by name are considered")
    ]


def test_short_copy_across_filesystems_is_refused(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(box / "a.tgb", b"x" * 5000)
    item = _ready(box)
    monkeypatch.setattr(inbox_mod, "_same_filesystem", lambda src, dest: False)
    monkeypatch.setattr(inbox_mod, "_copy_chunks", lambda src, dst: dst.write(src.read(10)))
    dest = tmp_path / "archive"
    with pytest.raises(OSError, match="incomplete: 10 of 5000 bytes"):
        move_to(item, dest)
    assert (box / "a.tgb").read_bytes() == b"x" * 5000
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["", "..", "../x.tgb", "a/b.tgb"])
def test_write_reason_refuses_paths_as_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a file name"):
        write_reason(tmp_path, name, "format", "x", files=[])
    assert list(tmp_path.iterdir()) == []


def test_watcher_falls_back_to_polling_when_native_watch_fails(
    box: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from watchdog.observers import Observer

    def no_watches(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "schedule", no_watches)
    woken = threading.Event()
    watcher = InboxWatcher(box, woken.set, rescan_seconds=3600)
    with caplog.at_level(logging.WARNING, logger="tiangong.agent.inbox"), watcher:
        assert watcher.polling
        _write(box / "new.tgb", b"x")
        assert woken.wait(EVENT_WAIT)
    assert "polling" in caplog.text
