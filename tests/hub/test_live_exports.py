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
import hashlib
import logging
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from bench.live_agents import init_bench_hub, make_agents, queue_release
from hub.config import load_config
from hub.db import AuditEvent, Deployment, make_engine, make_session_factory
from hub.keystore import load_hub_keys
from hub.live_exports import ExportWorkers, WorkerFailed
from hub.live_hub import LiveHub
from hub.services.export_claims import my_token
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
        pids = list(workers._pool._processes) if workers._pool is not None else []
        assert len(pids) == 1
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
    hub = LiveHub(session_factory=make_session_factory(engine), keys=keys, data_dir=data,
                  actor=None, export_workers=workers)
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
        monkeypatch.delenv("TIANGONG_CRASH_AT")
        asyncio.run(burst())  # the next round: in this process's threads, workers starting
        assert _deployments(data) == [("exported", None)] * len(AGENTS)
        for agent_id in AGENTS:
            assert [p.name for p in (hub.spool_root / agent_id).iterdir()] == [
                f"hello-1.0.0-{agent_id}-000001.tgb"]
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
