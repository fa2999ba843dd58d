"""The live server's export worker process (hub.live_exports): a real ``tiangong hub init``
data directory, one spawned worker, the LiveHub's burst export call routed to it.

* The worker exports what the live server would: every agent's bundle in its spool, each
  deployment ``exported`` and claimed under the *worker's* token (which the live server
  learns, to release its claims after a database error), and the whole file's SHA-256 comes
  back, so the OFFER reads nothing.
* A call the worker cannot do (its spool root is a file) fails as a whole with the reason,
  and changes nothing: every deployment still queued, no file written.
* Shut down, the worker process ends.

Nothing is timed: waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import subprocess
import sys
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.live_agents import init_bench_hub, make_agents, queue_release
from hub.config import load_config
from hub.db import AuditEvent, Deployment, make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.live_exports import (
    RESTART_PAUSE_S,
    WORKER_GC_THRESHOLD,
    ExportWorkers,
    WorkerFailed,
    WorkerLost,
)
from hub.live_hub import LiveHub
from hub.services.export_claims import my_token
from hub.services.presence import live_work_of
from tests.e2e.conftest import wait_for

DEADLINE = 120.0  # seconds for a spawned process on a shared machine
AGENTS = [f"w-{i:05d}" for i in range(3)]  # the names make_agents gives


def _hub(tmp_path: Path) -> Path:
    """An initialised hub (bench/live_agents.py's setup: ``tiangong hub init``, environment
    ``bench``, approved releases) with the agents of :data:`AGENTS` enrolled and a release
    queued for them."""
    data = tmp_path / "hub"
    specs, _ = make_agents(len(AGENTS), prefix="w-")
    init_bench_hub(data, specs)
    queue_release(data)
    return data


def _deployments(data: Path) -> list[tuple[str, str | None]]:
    engine = make_engine(load_config(data).database_url)
    try:
        with make_session_factory(engine)() as s:
            return [(d.state, d.claimed_by) for d in s.scalars(select(Deployment))]
    finally:
        engine.dispose()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_burst_export_call_runs_in_the_worker_process(tmp_path: Path) -> None:
    data = _hub(tmp_path)
    config, keys = load_config(data), load_hub_keys(data)
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)

    workers = ExportWorkers(config, None, 1)  # system:live, as `hub live` runs
    hub = LiveHub(session_factory=make_session_factory(engine), keys=keys, data_dir=data,
                  actor=None, export_workers=workers)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    try:
        workers.start()
        wait_for(lambda: workers.ready, DEADLINE, "the export worker to start")
        with pytest.raises(WorkerFailed, match="not-a-directory") as refused:
            asyncio.run(workers.export_many(blocked, AGENTS))
        assert not refused.value.database
        assert _deployments(data) == [("queued", None)] * len(AGENTS)
        assert not list(tmp_path.rglob("*.tgb"))


        assert asyncio.run(hub._export_call(AGENTS)) == {a: (1, 0) for a in AGENTS}
        (token,) = workers.tokens
        assert token != my_token() and hub._claim_tokens() == {token, my_token()}
        states = _deployments(data)
        assert [state for state, _ in states] == ["exported"] * len(AGENTS)
        for agent_id in AGENTS:
            (path,) = (hub.spool_root / agent_id).glob("*.tgb")
            # The worker's digest is what the OFFER carries: the file is not read here.
            assert hub._digests._known[path][1:] == (
                path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            # sent/, which the bundle moves into once confirmed, made by the worker too
            assert (hub.spool_root / agent_id / "sent").is_dir()
        pids = list(workers._pool._processes) if workers._pool is not None else []
        assert len(pids) == 1
        # What the worker loaded at its start is out of the collector's walks, and calls
        # collect rarely (docs/benchmarks.md, "Session 9: export CPU").
        assert workers._pool is not None
        assert workers._pool.submit(gc.get_freeze_count).result() > 0
        assert workers._pool.submit(gc.get_threshold).result()[0] == WORKER_GC_THRESHOLD
    finally:
        workers.shutdown()
        engine.dispose()
    wait_for(lambda: _gone(pids[0]), DEADLINE, "the export worker to end")



def test_a_worker_killed_mid_export_loses_nothing_and_doubles_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker killed with its bundles renamed into the spools, not yet recorded: the
    deployments stay claimed by the dead worker (nothing offered); the live server says the
    worker died and what it does now, the next round takes the claims over in its own
    threads and completes each bundle once (same sequence, one file), and new workers are
    started."""
    data = _hub(tmp_path)
    config, keys = load_config(data), load_hub_keys(data)
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
    workers = ExportWorkers(config, None, 1)
    # no agent connected: the workers start again at the next burst call, whatever the number
    hub = LiveHub(session_factory=make_session_factory(engine), keys=keys, data_dir=data,
                  actor=None, export_workers=workers, export_workers_from=0)
    monkeypatch.setenv("TIANGONG_CRASH_AT", "hub.export-renamed")  # read by the worker only
    caplog.set_level(logging.INFO, "tiangong.hub.live")

    async def burst() -> None:
        locks = [asyncio.Lock() for _ in AGENTS]
        for lock in locks:
            await lock.acquire()
        await hub._burst_call(asyncio.Semaphore(1),
                              [(a, (0, None), lock) for a, lock in zip(AGENTS, locks, strict=True)])

    try:
        workers.start()
        wait_for(lambda: workers.ready, DEADLINE, "the export worker to start")
        (dead,) = workers.tokens
        asyncio.run(burst())
        assert _deployments(data) == [("exporting", dead)] * len(AGENTS)
        assert "live: cannot export for 3 agents now: an export worker died (" in caplog.text
        assert ("the next round exports them again, in the live server's threads until new "
                "export workers are ready") in caplog.text
        # The push loop's query counts only unclaimed 'exporting' rows as work: the dead
        # worker's claims are released, so the next round finds them (they waited for
        # other work or a reconnect otherwise).
        assert hub._unclaim == set(AGENTS)
        with make_session_factory(engine)() as s:
            assert live_work_of(s, AGENTS) == []
        asyncio.run(hub._release_claims())
        assert _deployments(data) == [("exporting", None)] * len(AGENTS)
        with make_session_factory(engine)() as s:
            assert [(w.agent_id, w.queued) for w in live_work_of(s, AGENTS)] == [
                (a, 1) for a in AGENTS]
        monkeypatch.delenv("TIANGONG_CRASH_AT")
        asyncio.run(burst())  # the next round: in this process's threads, workers starting
        assert _deployments(data) == [("exported", None)] * len(AGENTS)
        for agent_id in AGENTS:
            assert sorted(p.name for p in (hub.spool_root / agent_id).iterdir()) == [
                f"hello-1.0.0-{agent_id}-000001.tgb", "sent"]
        with make_session_factory(engine)() as s:
            written = s.scalars(select(AuditEvent.object_id).where(
                AuditEvent.action == "bundle.written")).all()
        assert len(written) == len(set(written)) == len(AGENTS)
        assert "live: starting 1 export worker(s)" in caplog.text
        wait_for(lambda: workers.ready, DEADLINE, "the new export worker to start")
        assert len(workers.tokens - {dead}) == 1
    finally:
        workers.shutdown()
        engine.dispose()


class _Keys:
    hub_id = "hub-test"  # all a LiveHub reads of its keys before exporting


class _Pool:
    """Stands in for ProcessPoolExecutor: counts the pools made, runs nothing."""

    made = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        type(self).made += 1

    def submit(self, fn: object, *args: object) -> Future[str]:
        return Future()  # never answered: the workers stay "starting"

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def test_workers_start_once_enough_agents_are_connected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub serving a handful of agents never starts a worker process; the one where
    ``export_workers_from`` agents are connected starts them once (later connections and
    bursts do not start a second pool while the first one starts)."""
    monkeypatch.setattr("hub.live_exports.ProcessPoolExecutor", _Pool)
    _Pool.made = 0
    workers = ExportWorkers(load_config(tmp_path), None, 1)
    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=_Keys(),  # type: ignore[arg-type]
                  data_dir=tmp_path, actor=None, export_workers=workers, export_workers_from=3)
    for n in range(2):
        hub.peers[f"a{n}"] = None  # type: ignore[assignment]
        hub._start_workers()
    assert _Pool.made == 0 and workers._pool is None
    for n in range(2, 5):
        hub.peers[f"a{n}"] = None  # type: ignore[assignment]
        hub._start_workers()
    assert _Pool.made == 1 and not workers.ready


def test_a_worker_that_did_not_start_is_tried_again_only_after_a_pause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its start failing (the spawned process died before answering), the live server says
    so and keeps exporting in its threads; the next start is tried RESTART_PAUSE_S later,
    not at every connection."""
    monkeypatch.setattr("hub.live_exports.ProcessPoolExecutor", _Pool)
    _Pool.made = 0
    now = [1000.0]
    monkeypatch.setattr("hub.live_exports.time.monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, "tiangong.hub.live")
    workers = ExportWorkers(load_config(tmp_path), None, 1)
    workers.start()
    pool = workers._pool
    assert pool is not None and _Pool.made == 1
    died: Future[str] = Future()
    died.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    workers._started(pool, died)
    assert workers._pool is None and not workers.ready and not workers.tokens
    assert ("live: an export worker did not start (a child process terminated abruptly); "
            "exports stay in the live server's threads, the next start is tried in 60 s or "
            "later") in caplog.text
    workers.start()
    now[0] += RESTART_PAUSE_S - 1
    workers.start()
    assert _Pool.made == 1 and workers._pool is None
    now[0] += 1
    workers.start()
    assert _Pool.made == 2 and workers._pool is not None


_PARENT = """
import sys, threading
from hub.config import load_config
from hub.live_exports import ExportWorkers
from tests.e2e.conftest import wait_for
workers = ExportWorkers(load_config(sys.argv[1]), None, 1)
workers.start()
wait_for(lambda: workers.ready, float(sys.argv[2]), "the export worker to start")
print(*workers._pool._processes, flush=True)
threading.Event().wait()
"""


def _ended(pid: int) -> bool:
    """``pid`` exited (gone, or a zombie left for init to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_worker_ends_when_the_live_server_is_killed(tmp_path: Path) -> None:
    """The live server's process killed (SIGKILL: no shutdown ran), its export worker sees
    its parent gone and ends by itself: no orphan process is left after ``hub serve`` or
    ``hub live`` is killed."""
    data = _hub(tmp_path)
    with subprocess.Popen([sys.executable, "-c", _PARENT, str(data), str(DEADLINE)],
                          stdout=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parents[2]) as parent:
        try:
            assert parent.stdout is not None
            worker = int(parent.stdout.readline())
            assert not _ended(worker)
        finally:
            parent.kill()
            parent.wait(DEADLINE)
    wait_for(lambda: _ended(worker), DEADLINE, "the orphaned export worker to end")


def test_a_call_to_a_pool_shut_down_meanwhile_is_a_lost_worker_not_a_bug(
        tmp_path: Path) -> None:
    """The pool shut down between the check and the call (another call dropped it after
    a worker died, or ``hub live`` stops): the call is lost as after a worker's death
    (WorkerLost: claims released, the next round exports them), not a RuntimeError logged
    as a bug with its traceback."""

    class _Stopped(_Pool):
        def submit(self, fn: object, *args: object) -> Future[str]:
            raise RuntimeError("cannot schedule new futures after shutdown")

    workers = ExportWorkers(load_config(tmp_path), None, 1)
    workers._pool = _Stopped()  # type: ignore[assignment]
    with pytest.raises(WorkerLost, match="the export workers stopped"):
        asyncio.run(workers.export_many(tmp_path, AGENTS))
