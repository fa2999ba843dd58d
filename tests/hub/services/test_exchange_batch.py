"""Batched result import: one transaction per batch, a savepoint per file, the audit head held
in memory — and every failure mode that batching adds: a bad file in the middle of a batch, a
file that fails after it changed the database, a crash between storing and committing, the
same result twice in one batch, concurrent appenders while the head is held."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.service import Agent
from bundle.container import (
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
)
from hub.db import Agent as AgentRow
from hub.db import AuditEvent, AuditHead, make_engine
from hub.errors import AuditError
from hub.migrate import upgrade
from hub.services import audit, result_import
from hub.services.context import ServiceContext
from hub.services.exchange import ImportRow, import_directory
from hub.services.users import get_user
from tests.hub.conftest import FakeClock, Keys, World, world_on
from tests.hub.services.test_concurrency import _in_threads
from tests.hub.services.test_exchange import _agent, _result

NOW = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_world(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock,
              keys: Keys) -> Iterator[World]:
    """The ``world`` of tests/hub/conftest.py on a SQLite file or a real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    else:
        url = request.getfixturevalue("pg_db")
    with world_on(url, clock, keys, tmp_path) as w:
        yield w


def _results(agent: Agent, n: int) -> list[Path]:
    return [_result(agent, "succeeded", f"report {i}") for i in range(n)]


def _media(tmp: Path, name: str, files: dict[str, Path]) -> Path:
    media = tmp / name
    media.mkdir()
    for dest, src in files.items():
        shutil.copyfile(src, media / dest)
    return media


def _import(world: World, media: Path, results: Path, batch_size: int = 100) -> list[ImportRow]:
    ctx = world.ctx("op")
    return import_directory(ctx, media, results_dir=results, batch_size=batch_size).rows


def _events(world: World, action: str) -> list[AuditEvent]:
    return list(world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _assert_chain_ok(world: World) -> None:
    report = audit.verify_database(world.session, world.keys.hub)
    assert report.ok, report.summary()


def _stored(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir())


def test_bad_file_in_the_middle_of_a_batch_is_rejected_alone(
    any_world: World, tmp_path: Path
) -> None:
    world = any_world
    agent = _agent(world, tmp_path)
    r = _results(agent, 5)
    truncated = tmp_path / "truncated.tgr"
    truncated.write_bytes(r[2].read_bytes()[:-3000])
    media = _media(tmp_path, "usb", {"a1.tgr": r[0], "a2.tgr": r[1], "a3-bad.tgr": truncated,
                                     "a4.tgr": r[3], "a5.tgr": r[4]})
    (media / "a0-garbage.tgr").write_bytes(b"not a bundle at all\n" * 40)
    results = tmp_path / "results"
    rows = _import(world, media, results, 50)

    assert [(row.file, row.status) for row in rows] == [
        ("a0-garbage.tgr", "rejected"), ("a1.tgr", "imported"), ("a2.tgr", "imported"),
        ("a3-bad.tgr", "rejected"), ("a4.tgr", "imported"), ("a5.tgr", "imported")]
    assert "not a readable result file" in rows[0].reason
    assert "a3-bad.tgr" in rows[3].reason and "truncated" in rows[3].reason
    # Result 3 never arrived intact: result 4 is flagged, result 5 follows it.
    assert any("gap: results 3..3" in f for f in rows[4].flags) and rows[5].flags == ()
    # Bad files are kept where they were; nothing of them is stored.
    assert (media / "a3-bad.tgr").exists() and (media / "a0-garbage.tgr").exists()
    assert len(_stored(results)) == 4
    assert not any(name.startswith(".") for name in _stored(results))
    rejected = _events(world, "result.rejected")
    assert [e.object_id for e in rejected] == ["a0-garbage.tgr", "a3-bad.tgr"]
    assert "truncated" in rejected[1].details
    assert len(_events(world, "result.import")) == 4
    row = world.session.scalar(select(AgentRow).where(AgentRow.agent_id == "site-01"))
    assert row is not None and row.result_seq == 5
    _assert_chain_ok(world)

    # The intact copy of result 3 fills the gap later; everything else is a duplicate.
    shutil.copyfile(r[2], media / "a3-bad.tgr")
    rows = _import(world, media, results, 2)
    assert [row.status for row in rows] == [
        "rejected", "duplicate", "duplicate", "imported", "duplicate", "duplicate"]
    assert len(_events(world, "result.import")) == 5
    _assert_chain_ok(world)
    agent.close()


def test_a_file_failing_after_it_changed_the_database_rolls_back_alone(
    any_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure comes after the agent's result counter moved and a flag was recorded:
    the savepoint takes all of it back, the in-memory audit head too."""
    world = any_world
    agent = _agent(world, tmp_path)
    r = _results(agent, 4)
    media = _media(tmp_path, "usb", {"b1.tgr": r[0], "b2.tgr": r[2], "b3.tgr": r[3]})
    real_record_many = audit.record_many

    def record_many(ctx: Any, events: Any) -> list[int]:
        if any(action == "result.flag" for action, *_ in events):
            raise AuditError("simulated failure after the result was recorded")
        return real_record_many(ctx, events)

    monkeypatch.setattr(audit, "record_many", record_many)
    results = tmp_path / "results"
    rows = _import(world, media, results)
    # b2 (result 3) would carry a gap flag: it fails after its result.import event and the
    # agent update were written inside its savepoint.
    assert [row.status for row in rows] == ["imported", "rejected", "rejected"]
    assert "AuditError: simulated failure" in rows[1].reason
    # b3 (result 4) failed the same way: after b2 was undone it also has a gap.
    monkeypatch.undo()
    world.session.expire_all()
    row = world.session.scalar(select(AgentRow).where(AgentRow.agent_id == "site-01"))
    assert row is not None and row.result_seq == 1
    assert [e.object_id for e in _events(world, "result.rejected")] == ["b2.tgr", "b3.tgr"]
    assert len(_events(world, "result.import")) == 1 and _events(world, "result.flag") == []
    assert len(_stored(results)) == 1
    _assert_chain_ok(world)
    # Nothing was lost: both import once the failure is gone.
    rows = _import(world, media, results)
    assert [row.status for row in rows] == ["duplicate", "imported", "imported"]
    assert len(_events(world, "result.flag")) == 1
    _assert_chain_ok(world)
    agent.close()


def test_crash_between_storing_and_committing(
    any_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored files are written (and renamed) before the commit; a crash right before the
    commit leaves the database saying nothing was imported, and a re-import imports once."""
    world = any_world
    agent = _agent(world, tmp_path)
    r = _results(agent, 3)
    media = _media(tmp_path, "usb", {f"c{i}.tgr": p for i, p in enumerate(r)})
    results = tmp_path / "results"
    head_before = world.session.scalar(select(AuditHead.seq))

    def crash(directory: Any) -> None:
        raise OSError("simulated crash after the stored files were written")

    monkeypatch.setattr(result_import, "fsync_dir", crash)
    with pytest.raises(OSError, match="simulated crash"):
        import_directory(world.ctx("op"), media, results_dir=results)
    monkeypatch.undo()

    # The files were stored under their final names ...
    stored = _stored(results)
    assert len(stored) == 3 and all(n.endswith(".tgr") and not n.startswith(".") for n in stored)
    # ... but the database says nothing was imported (seen from a fresh session too).
    world.session.rollback()
    assert _events(world, "result.import") == []
    with Session(world.session.get_bind()) as fresh:
        assert fresh.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "result.import")) == 0
        agent_row = fresh.scalar(select(AgentRow).where(AgentRow.agent_id == "site-01"))
        assert agent_row is not None and agent_row.result_seq == 0
        assert fresh.scalar(select(AuditHead.seq)) == head_before
    _assert_chain_ok(world)

    rows = _import(world, media, results)
    assert [row.status for row in rows] == ["imported"] * 3
    assert _stored(results) == stored
    assert len(_events(world, "result.import")) == 3
    rows = _import(world, media, results)
    assert [row.status for row in rows] == ["duplicate"] * 3
    assert len(_events(world, "result.import")) == 3
    _assert_chain_ok(world)
    agent.close()


def test_a_failure_while_a_batch_is_recorded_drops_the_batches_read_ahead(
    any_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import is pipelined: while batch 2 is recorded, batch 3 is already copied and
    verified. A failure of the hub while batch 2 is recorded rolls batch 2 back, keeps
    batch 1 committed, and removes batch 3's private copies; the next run imports the rest
    once."""
    world = any_world
    agent = _agent(world, tmp_path)
    r = _results(agent, 6)
    media = _media(tmp_path, "usb", {f"p{i}.tgr": p for i, p in enumerate(r)})
    results = tmp_path / "results"
    real_fsync_dir = result_import.fsync_dir
    calls = []

    def fail_second(directory: Any) -> None:
        calls.append(directory)
        if len(calls) == 2:
            raise OSError("simulated disk failure while batch 2 is stored")
        real_fsync_dir(directory)

    monkeypatch.setattr(result_import, "fsync_dir", fail_second)
    with pytest.raises(OSError, match="simulated disk failure"):
        import_directory(world.ctx("op"), media, results_dir=results, batch_size=2)
    monkeypatch.undo()

    world.session.rollback()
    imported_files = sorted(
        f"p{i}.tgr" for i in range(6)
        if any(f'"file":"p{i}.tgr"' in e.details for e in _events(world, "result.import")))
    assert imported_files == ["p0.tgr", "p1.tgr"]
    # Batch 2's files were stored (renamed) before the failure; batch 3's copies are gone.
    assert not [n for n in _stored(results) if n.startswith(".")]
    assert len(_stored(results)) == 4
    _assert_chain_ok(world)

    rows = _import(world, media, results, 2)
    assert [row.status for row in rows] == ["duplicate"] * 2 + ["imported"] * 4
    assert len(_events(world, "result.import")) == 6
    assert len(_stored(results)) == 6
    row = world.session.scalar(select(AgentRow).where(AgentRow.agent_id == "site-01"))
    assert row is not None and row.result_seq == 6
    _assert_chain_ok(world)
    agent.close()


def test_the_same_result_in_two_pipelined_batches_is_imported_once(
    world: World, tmp_path: Path
) -> None:
    """Batch 2 is looked up before batch 1 is committed; the copy of a result batch 1
    records is still found, under the lock, and counted a duplicate."""
    agent = _agent(world, tmp_path)
    r = _results(agent, 2)
    media = _media(tmp_path, "usb", {"q1.tgr": r[0], "q2.tgr": r[1], "q3-copy.tgr": r[0]})
    rows = _import(world, media, tmp_path / "results", 2)
    assert [row.status for row in rows] == ["imported", "imported", "duplicate"]
    first = _events(world, "result.import")[0]
    assert rows[2].reason == f"already imported (audit event {first.seq})"
    assert len(_events(world, "result.import")) == 2
    assert len(_stored(tmp_path / "results")) == 2
    agent.close()


@pytest.mark.parametrize("files", [1, 5])
def test_every_stored_copy_is_flushed_before_it_is_renamed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int
) -> None:
    """One file (the live server's way, no pipeline) or pipelined batches: each stored
    result's copy was fsynced under its private name before its rename, and the directory
    after the renames, before the commit."""
    agent = _agent(world, tmp_path)
    media = _media(tmp_path, "usb", {f"s{i}.tgr": p for i, p in enumerate(_results(agent, files))})
    results = tmp_path / "results"
    log: list[tuple[str, str]] = []
    real_sync, real_fsync_dir = result_import.sync_copies, result_import.fsync_dir

    def sync(paths: list[Path]) -> None:
        log.extend(("fsync", p.name) for p in paths)
        real_sync(paths)

    def sync_dir(directory: Path) -> None:
        log.append(("fsync-dir", "") if directory == results else ("other", str(directory)))
        real_fsync_dir(directory)

    monkeypatch.setattr(result_import, "sync_copies", sync)
    monkeypatch.setattr(result_import, "fsync_dir", sync_dir)
    rows = _import(world, media, results, 2)
    assert [row.status for row in rows] == ["imported"] * files
    flushed = [name for what, name in log if what == "fsync"]
    assert len(flushed) == files and all(n.startswith(".incoming-") for n in flushed)
    assert ("fsync-dir", "") in log and log.index(("fsync-dir", "")) > 0
    assert len(_stored(results)) == files
    agent.close()


def test_the_same_result_twice_in_one_batch_is_imported_once(
    world: World, tmp_path: Path
) -> None:
    agent = _agent(world, tmp_path)
    (r,) = _results(agent, 1)
    media = _media(tmp_path, "usb", {"d1.tgr": r, "d2-copy.tgr": r})
    rows = _import(world, media, tmp_path / "results")
    assert [row.status for row in rows] == ["imported", "duplicate"]
    (event,) = _events(world, "result.import")
    assert rows[1].reason == f"already imported (audit event {event.seq})"
    assert len(_stored(tmp_path / "results")) == 1
    agent.close()


def test_a_missing_stored_copy_is_restored_from_a_verified_duplicate(
    world: World, tmp_path: Path
) -> None:
    agent = _agent(world, tmp_path)
    (r,) = _results(agent, 1)
    media = _media(tmp_path, "usb", {"e1.tgr": r})
    results = tmp_path / "results"
    import_directory(world.ctx("op"), media, results_dir=results)
    (stored,) = results.iterdir()
    stored.unlink()
    rows = _import(world, media, results)
    assert [row.status for row in rows] == ["duplicate"]
    assert stored.read_bytes() == r.read_bytes()
    assert len(_events(world, "result.import")) == 1
    agent.close()


def test_symlinks_are_refused_and_stale_copies_are_cleaned(world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    (r,) = _results(agent, 1)
    media = tmp_path / "usb"
    media.mkdir()
    (media / "f1-link.tgr").symlink_to(r)
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    old = results / ".incoming-crashed.tgr"
    old.write_bytes(b"left by a crash")
    two_days_ago = world.clock().timestamp() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    fresh = results / ".incoming-running.tgr"
    fresh.write_bytes(b"another import's copy")
    rows = _import(world, media, results)
    assert [row.status for row in rows] == ["rejected"]
    assert "symbolic link" in rows[0].reason
    assert not old.exists() and fresh.exists()
    agent.close()


def test_fifos_and_links_named_like_results_or_requests_are_refused_by_name(
        world: World, tmp_path: Path) -> None:
    """A FIFO (or device) named like a result or an enrollment request was skipped without a
    word, and an enrollment request was read whole, through a symbolic link: each is now a
    ``rejected`` row naming the file and the reason, audited; the FIFOs are never opened for
    a wait and stay where they are, and the sound result beside them is imported."""
    agent = _agent(world, tmp_path)
    (r,) = _results(agent, 1)
    media = _media(tmp_path, "usb", {"e1.tgr": r})
    os.mkfifo(media / "e0-fifo.tgr")
    os.mkfifo(media / "enrollment-fifo.json")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (media / "enrollment-link.json").symlink_to(secret)
    (media / "e2-dir.tgr").mkdir()  # a directory is nobody's file: left alone, no row
    before = len(_events(world, "result.rejected"))
    rows = {row.file: row for row in _import(world, media, tmp_path / "results")}
    assert sorted(rows) == ["e0-fifo.tgr", "e1.tgr", "enrollment-fifo.json",
                            "enrollment-link.json"]
    assert rows["e1.tgr"].status == "imported"
    assert rows["e0-fifo.tgr"].status == "rejected"
    assert rows["e0-fifo.tgr"].reason == "e0-fifo.tgr is not a regular file"
    assert rows["enrollment-fifo.json"].status == "rejected"
    assert "enrollment-fifo.json is not a regular file" in rows["enrollment-fifo.json"].reason
    assert rows["enrollment-link.json"].status == "rejected"
    assert "enrollment-link.json is a symbolic link" in rows["enrollment-link.json"].reason
    assert len(_events(world, "result.rejected")) == before + 3
    assert (media / "e0-fifo.tgr").is_fifo() and (media / "enrollment-fifo.json").is_fifo()
    assert (media / "enrollment-link.json").is_symlink()
    _assert_chain_ok(world)
    agent.close()


def test_what_is_not_a_regular_file_is_refused_by_its_name_without_being_opened(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening is already doing something to a FIFO, a socket or a device node (a stick
    mounted without ``nodev`` may hold one named ``x.tgr`` for a watchdog, which starts
    when opened, or a tape, which rewinds): each is refused by what ``lstat`` says, never
    opened, and stays; the sound result beside them is imported."""
    agent = _agent(world, tmp_path)
    (r,) = _results(agent, 1)
    media = _media(tmp_path, "usb", {"e1.tgr": r})
    odd = [media / "e0-fifo.tgr", media / "enrollment-fifo.json", media / "e2-sock.tgr",
           media / "enrollment-sock.json"]
    os.mkfifo(odd[0])
    os.mkfifo(odd[1])
    sockets = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    for sock, path in zip(sockets, odd[2:], strict=True):
        sock.bind(str(path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a link to a directory is a link (it was skipped without a word, as a directory)
    (media / "e3-link.tgr").symlink_to(elsewhere, target_is_directory=True)
    (media / "enrollment-link.json").symlink_to(elsewhere, target_is_directory=True)
    opened: list[Path] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(Path(os.fsdecode(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    before = len(_events(world, "result.rejected"))
    try:
        rows = {row.file: row for row in _import(world, media, tmp_path / "results")}
    finally:
        monkeypatch.undo()
        for sock in sockets:
            sock.close()
    assert rows["e1.tgr"].status == "imported"
    for path in odd:
        assert rows[path.name].status == "rejected"
        assert f"{path.name} is not a regular file" in rows[path.name].reason
        assert path not in opened
    for name in ("e3-link.tgr", "enrollment-link.json"):
        assert rows[name].status == "rejected"
        assert f"{name} is a symbolic link" in rows[name].reason
        assert (media / name).is_symlink()
    assert list(elsewhere.iterdir()) == []
    assert len(_events(world, "result.rejected")) == before + 6
    assert odd[0].is_fifo() and odd[1].is_fifo() and odd[2].is_socket() and odd[3].is_socket()
    _assert_chain_ok(world)
    agent.close()


def test_batch_size_is_checked(world: World, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch size 0"):
        import_directory(world.ctx("op"), tmp_path, results_dir=tmp_path / "r", batch_size=0)


# -- the held audit head -------------------------------------------------------------------


def test_held_head_refuses_use_after_its_transaction(world: World) -> None:
    session = world.session
    with audit.held_head(session) as head:
        audit.append_event(session, NOW, "t", "test", "n", "1", {})
        with pytest.raises(AuditError, match="already held"), audit.held_head(session):
            pass
    session.commit()
    with pytest.raises(AuditError, match="has ended"):
        head.check()
    session.begin_nested()
    with pytest.raises(AuditError, match="outside any savepoint"), audit.held_head(session):
        pass
    session.rollback()
    _assert_chain_ok(world)


def test_held_head_batches_and_plain_appenders_stay_gap_free(pg_db: str) -> None:
    """Batches holding the head (with a savepoint rolled back in each) race plain appends."""
    pg_engine = make_engine(pg_db)
    upgrade(pg_engine)

    def plain(i: int) -> None:
        for n in range(15):
            with Session(pg_engine) as session:
                audit.append_event(session, NOW, f"plain{i}", "test", "n", str(n), {"n": n})
                session.commit()

    def batched(i: int) -> None:
        for _n in range(5):
            with Session(pg_engine) as session:
                with audit.held_head(session) as head:
                    for k in range(4):
                        with contextlib.suppress(ValueError), head.savepoint():
                            audit.append_event(session, NOW, f"b{i}", "test", "k", str(k), {})
                            if k == 2:
                                raise ValueError("this one rolls back")
                session.commit()

    try:
        assert _in_threads(lambda i: plain(i) if i < 2 else batched(i), 4) == []
        with Session(pg_engine) as session:
            events = list(audit.iter_events(session))
            assert [e.seq for e in events] == list(range(1, 2 * 15 + 2 * 5 * 3 + 1))
            assert not any(e.actor.startswith("b") and e.object_id == "2" for e in events)
            report = audit.verify_database(session, None)
            assert report.ok, report.summary()
    finally:
        pg_engine.dispose()


def test_results_too_big_to_keep_in_memory_are_verified_from_the_copy(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(result_import, "KEEP_IN_MEMORY", 0)
    agent = _agent(world, tmp_path)
    r = _results(agent, 2)
    flipped = bytearray(r[1].read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    media = _media(tmp_path, "usb", {"g1.tgr": r[0]})
    (media / "g2-flipped.tgr").write_bytes(bytes(flipped))
    rows = _import(world, media, tmp_path / "results")
    assert [row.status for row in rows] == ["imported", "rejected"]
    assert "g2-flipped.tgr" in rows[1].reason
    (stored,) = (tmp_path / "results").iterdir()
    assert stored.read_bytes() == r[0].read_bytes()
    agent.close()


def test_held_head_on_mariadb(mysql_db: str) -> None:
    """MariaDB reports matched rows for the no-op UPDATE that locks the head."""
    engine = make_engine(mysql_db)
    upgrade(engine)
    try:
        with Session(engine) as session:
            with audit.held_head(session) as head:
                for k in range(3):
                    with contextlib.suppress(ValueError), head.savepoint():
                        audit.append_event(session, NOW, "m", "test", "k", str(k), {})
                        if k == 1:
                            raise ValueError("rolled back")
            session.commit()
            audit.append_event(session, NOW, "m", "test", "k", "plain", {})
            session.commit()
            assert [e.object_id for e in audit.iter_events(session)] == ["0", "2", "plain"]
            assert audit.verify_database(session, None).ok
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "envelope",
    [
        b"[" * 200_000 + b"]" * 200_000,  # nesting deeper than Python's recursion limit
        b'{"payloadType": "x", "payload": "%%%"}',
        b'"just a string"',
        b'{"payloadType": "application/vnd.tiangong.result.v1+json", "payload": "'
        + base64.b64encode(b"[" * 100_000 + b"]" * 100_000)
        + b'"}',
    ],
)
def test_unreadable_envelopes_are_rejected_not_fatal(
    world: World, tmp_path: Path, envelope: bytes
) -> None:
    media = tmp_path / "usb"
    media.mkdir()
    (media / "h1.tgr").write_bytes(
        encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
        + encode_member(ENVELOPE_NAME, envelope) + END_OF_ARCHIVE
    )
    rows = _import(world, media, tmp_path / "results")
    assert [row.status for row in rows] == ["rejected"]
    assert rows[0].reason.startswith("not a")
    assert _events(world, "result.rejected")[0].object_id == "h1.tgr"


def test_two_imports_of_the_same_media_at_once_record_each_result_once(
    any_world: World, tmp_path: Path
) -> None:
    """Both runs verify every file; the duplicate check under the audit head lock lets only
    one of them record each result."""
    world = any_world
    agent = _agent(world, tmp_path)
    media = _media(tmp_path, "usb", {f"k{i}.tgr": p for i, p in enumerate(_results(agent, 6))})
    engine = world.session.get_bind()
    results = tmp_path / "results"
    reports: dict[int, list[ImportRow]] = {}

    def run(i: int) -> None:
        with Session(engine, expire_on_commit=False) as session:
            ctx = ServiceContext(session, world.clock, get_user(session, "op"), world.keys.hub)
            reports[i] = import_directory(ctx, media, results_dir=results, batch_size=2).rows

    assert _in_threads(run, 2) == []
    for a, b in zip(reports[0], reports[1], strict=True):
        assert a.file == b.file and {a.status, b.status} == {"imported", "duplicate"}
    world.session.expire_all()
    assert len(_events(world, "result.import")) == 6
    assert len(_stored(results)) == 6
    _assert_chain_ok(world)
    agent.close()
