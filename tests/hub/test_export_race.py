"""Concurrent exports export every deployment once (issue 9 §1: 24 bundles for 6
deployments with four ``hub export`` processes started together).

N real ``tiangong hub export`` processes race each other and the live server's export path
(:meth:`hub.live_hub.LiveHub._export`, in this process), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text

from hub.db import AuditEvent, Deployment, make_session_factory
from hub.live_hub import LiveHub
from hub.services.audit import verify_database
from tests.e2e.conftest import wait_for
from tests.hub.realhub import ENV, RealHub

AGENTS = 6
EXPORTERS = 4


def _sleeping_in_sqlite(pid: int) -> bool:
    """The process has the database open and sleeps (SQLite's busy handler waiting)."""
    try:
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        with open(f"/proc/{pid}/wchan") as fh:
            wchan = fh.read()
    except OSError:
        return False
    return any(f.endswith("hub.db") for f in fds) and "nanosleep" in wchan


@contextmanager
def _start_line(hub: RealHub, procs: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Hold the database's write lock (SQLite) or the audit head row (PostgreSQL) until
    every exporter has read the queued list and waits for its first write: then they all
    go at once (they are released when the block ends)."""
    assert hub.engine is not None
    with hub.engine.connect() as conn:
        if hub.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield
            wait_for(lambda: all(_sleeping_in_sqlite(p.pid) for p in procs), 120,
                     "every exporter waiting for the write lock")
        else:
            conn.execute(text("SELECT seq FROM audit_head FOR UPDATE"))
            yield
            # pg_locks is live (pg_stat_activity is a snapshot kept for the transaction).
            waiting = text("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")

            def all_waiting() -> bool:
                return bool(conn.execute(waiting).scalar_one() >= len(procs))

            wait_for(all_waiting, 120, "every exporter waiting for the audit head")
        conn.rollback()


def _race(hub: RealHub, tmp_path: Path) -> None:
    hub.init()
    hub.seed(AGENTS)
    assert hub.engine is not None and hub.keys is not None
    live = LiveHub(session_factory=make_session_factory(hub.engine), keys=hub.keys,
                   data_dir=hub.data, actor=None)
    live_written: list[int] = []

    def push() -> None:
        for agent_id in hub.agents:
            written, failed = live._export(agent_id)
            assert failed == 0
            live_written.append(written)

    procs: list[subprocess.Popen[str]] = []
    pusher = threading.Thread(target=push)
    with _start_line(hub, procs):
        procs += [hub.popen("export", "--environment", ENV, "--out",
                            str(tmp_path / f"usb-{i}")) for i in range(EXPORTERS)]
    pusher.start()
    outputs = [p.communicate(timeout=300) for p in procs]
    pusher.join(timeout=300)
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, (out, err)
        assert "FAILED" not in err

    bundles = [f for i in range(EXPORTERS) for f in (tmp_path / f"usb-{i}").glob("*.tgb")]
    bundles += list((hub.data / "live-outbox").glob("*/*.tgb"))
    names = Counter(f.name for f in bundles)
    assert len(bundles) == AGENTS, sorted(names)
    assert all(n == 1 for n in names.values())
    wrote = sum(out.count("wrote ") for out, _ in outputs) + sum(live_written)
    assert wrote == AGENTS
    # The exports that found the work taken say so.
    said = "".join(out for out, _ in outputs)
    assert "exported by another process" in said or "nothing to export" in said
    with hub.ctx() as ctx:
        deps = list(ctx.session.scalars(select(Deployment)))
        assert {d.state for d in deps} == {"exported"}
        assert sorted(d.sequence for d in deps) == [1] * AGENTS  # one bundle per agent
        written = ctx.session.scalars(
            select(AuditEvent.object_id).where(AuditEvent.action == "bundle.written")).all()
        assert sorted(written) == sorted(str(d.id) for d in deps)
        assert all(not (tmp_path / f"usb-{i}" / n).exists() for i in range(EXPORTERS)
                   for n in (".tiangong-spool", ".tmp"))
        assert verify_database(ctx.session, hub.keys).ok


def test_exports_race_on_sqlite(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    try:
        _race(hub, tmp_path)
    finally:
        hub.close()


@pytest.mark.usefixtures("postgres_server")
def test_exports_race_on_postgresql(tmp_path: Path, pg_db: str) -> None:
    hub = RealHub(tmp_path / "hub", pg_db)
    try:
        _race(hub, tmp_path)
    finally:
        hub.close()
