"""Journal: acceptance is atomic with the replay state; steps are recorded before they run."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.journal import Journal, JournalError


class Clock:
    def __init__(self, t: int = 1_800_000_000) -> None:
        self.t = t

    def __call__(self) -> float:
        return float(self.t)


def _accept(j: Journal, seq: int, bundle_id: str, root_version: int = 1, **kw: object) -> None:
    j.accept_bundle(
        issuer="hub-1", root_envelope=b"root", root_version=root_version, sequence=seq,
        time_floor=kw.pop("time_floor", 100), bundle_id=bundle_id,  # type: ignore[arg-type]
        envelope_sha256=f"sha-{bundle_id}", source=f"{bundle_id}.tgb",
        manifest={"release": {"product": "p", "version": "1"}}, staged_dir="/x",
        not_before=None, steps=[("one", "shell"), ("two", "sql")],
    )


def test_accept_persists_sequence_and_steps(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    j.pin_root("hub-1", b"root", 1)
    _accept(j, 5, "b1")
    t = j.trust("hub-1")
    assert t is not None and (t.root_version, t.sequence, t.time_floor) == (1, 5, 100)
    assert [s.state for s in j.steps("b1")] == ["pending", "pending"]
    # Reopening sees the same (it is on disk, not in memory).
    j.close()
    j2 = Journal(tmp_path / "j.sqlite", clock=Clock())
    assert j2.trust("hub-1").sequence == 5  # type: ignore[union-attr]


@pytest.mark.parametrize(("root_version", "seq"), [(1, 5), (1, 4), (0, 99)])
def test_not_newer_is_refused_and_changes_nothing(
    tmp_path: Path, root_version: int, seq: int
) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    _accept(j, 5, "b1")
    with pytest.raises(JournalError, match="not newer"):
        _accept(j, seq, "b2", root_version=root_version)
    assert j.bundle("b2") is None
    assert j.trust("hub-1").sequence == 5  # type: ignore[union-attr]


def test_new_root_epoch_restarts_sequence(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    _accept(j, 2**40, "stolen")
    _accept(j, 1, "after-rotation", root_version=2)
    t = j.trust("hub-1")
    assert t is not None and (t.root_version, t.sequence) == (2, 1)


def test_time_floor_never_goes_back(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    _accept(j, 1, "b1", time_floor=500)
    _accept(j, 2, "b2", time_floor=300)
    assert j.trust("hub-1").time_floor == 500  # type: ignore[union-attr]


def test_running_step_becomes_interrupted_on_recovery(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    _accept(j, 1, "b1")
    j.set_bundle_state("b1", "running")
    j.step_running("b1", 0, 1, "/log")
    assert j.recover_interrupted() == ["b1"]
    states = [s.state for s in j.steps("b1")]
    assert states == ["interrupted", "skipped"]
    assert j.bundle("b1").state == "interrupted"  # type: ignore[union-attr]
    # A second recovery finds nothing: nothing is re-run automatically.
    assert j.recover_interrupted() == []


def test_retry_adds_attempts_from_step(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    _accept(j, 1, "b1")
    j.step_running("b1", 0, 1, "/log")
    j.step_finished("b1", 0, 1, "failed", "exit 1", exit_code=1)
    attempt = j.add_attempts("b1", 0)
    assert attempt == 2
    latest = j.steps("b1", latest_only=True)
    assert [(s.idx, s.attempt, s.state) for s in latest] == [(0, 2, "pending"), (1, 2, "pending")]
    with pytest.raises(JournalError):
        j.step_running("b1", 0, 1, "/log")  # an old attempt cannot be started again


def test_result_chain(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", clock=Clock())
    assert j.last_result() == (0, None)
    j.record_result(1, "b1", "succeeded", "r1.tgr", "aa")
    j.record_result(2, None, "rejected", "r2.tgr", "bb")
    assert j.last_result() == (2, "bb")


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "no tables"])
def test_a_damaged_journal_is_refused_with_the_recovery_command(tmp_path: Path,
                                                                damage: str) -> None:
    from agent.journal import JournalDamagedError

    path = tmp_path / "journal.sqlite"
    j = Journal(path, clock=Clock())
    _accept(j, 1, "b1")
    j.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        data = bytearray(path.read_bytes())
        data[100:2000] = b"\x00\xff" * 950
        path.write_bytes(bytes(data))
    else:
        path.unlink()
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.commit()
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(JournalDamagedError) as err:
        Journal(path, clock=Clock(), create=False)
    assert str(path) in str(err.value)
    assert f"tiangong agent journal recover --home {tmp_path}" in str(err.value)
    assert (path.read_bytes() if path.exists() else None) == before


@pytest.mark.parametrize("damaged", [False, True])
def test_a_sound_journal_in_a_directory_that_refuses_writes_is_not_called_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damaged: bool) -> None:
    """On a read-only file system SQLite cannot make a WAL journal's -shm file and says
    "unable to open database file" (seen on a real read-only tmpfs mount): 'agent status'
    and 'agent run' called the journal damaged and told the operator to run 'agent journal
    recover'. Now a journal that reads back sound without those files is reported as a
    write problem naming its directory; a damaged one is still called damaged. Nothing is
    changed either way."""
    import sqlite3

    import agent.journal as journal_mod
    from agent.journal import JournalDamagedError, JournalWriteError

    path = tmp_path / "journal.sqlite"
    j = Journal(path, clock=Clock())
    _accept(j, 1, "b1")
    j.close()
    if damaged:
        data = bytearray(path.read_bytes())
        data[100:2000] = b"\x00\xff" * 950
        path.write_bytes(bytes(data))
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    real = sqlite3.connect

    def read_only_fs(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if not kwargs.get("uri"):  # the read-write open: its -shm file cannot be made
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(journal_mod.sqlite3, "connect", read_only_fs)
    with pytest.raises(JournalDamagedError if damaged else JournalWriteError) as err:
        Journal(path, clock=Clock(), create=False)
    if not damaged:
        assert str(err.value).startswith(
            f"cannot open the journal {path} for writing (unable to open database file), "
            f"although the file reads back sound: its directory {tmp_path} refuses writes")
        assert "recover --home" not in str(err.value)
    else:
        assert "recover --home" in str(err.value)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_journal_file_is_private(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        Journal(tmp_path / "j.sqlite").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "j.sqlite").stat().st_mode) == 0o600


def test_a_schema_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    """Agents in the field have journals of schema 1 (before pending results): opening one
    keeps its results and sequence, and numbering continues."""
    import sqlite3

    from agent.journal import ResultIntent

    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript((Path(__file__).parent / "data" / "journal-v1.sql").read_text())
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO trust VALUES ('hub-1', x'00', 1, 7, 100, 0)")
    db.execute("INSERT INTO bundles(bundle_id, envelope_sha256, source, issuer, root_version,"
               " sequence, manifest, state, received_at) VALUES ('b7', 'e7', 'b7.tgb', 'hub-1',"
               " 1, 7, '{}', 'succeeded', 0)")
    db.execute("INSERT INTO results VALUES (4, 'b7', 'succeeded', 'r4.tgr', 'aa', 0)")
    db.commit()
    db.close()
    j = Journal(path, clock=Clock(), create=False)
    assert j.trust("hub-1").sequence == 7  # type: ignore[union-attr]
    assert j.bundle("b7").archived  # type: ignore[union-attr]
    assert j.pending_results() == [] and j.last_result() == (4, "aa")
    seq = j.add_result(ResultIntent("succeeded", None, {"agent_id": "a1"}, {}))
    assert seq == 5 and j.previous_digest(5) == "aa"
    j.close()
