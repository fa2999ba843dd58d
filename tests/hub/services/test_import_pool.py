"""Result files verified in worker processes: a batch imported through the verification pool
has exactly the outcome of the same batch verified in the importing process — the same rows
(imported, duplicate, rejected with the same reasons), the same audit events, the same stored
files — on two copies of one hub database."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.runner import StepReport
from agent.service import Agent
from hub.db import Agent as AgentRow
from hub.db import AuditEvent, Deployment, make_engine
from hub.migrate import upgrade
from hub.services import audit, import_verify, result_import
from hub.services.deployments import queue_deployment
from hub.services.exchange import ImportRow, export_environment, import_directory
from hub.services.import_files import Rejected
from hub.services.users import bootstrap_admin
from signing.keys import SigningKey
from tests.fixtures.dbservers import wait_for
from tests.hub.conftest import PEOPLE, FakeClock, Keys, World, seed_people
from tests.hub.services.test_exchange import _agent, _approved_release, _deliver, _result


def _world(url: str, clock: FakeClock, keys: Keys, releases: Path) -> World:
    engine = make_engine(url)
    return World(Session(engine, expire_on_commit=False), clock, keys, releases)


def _close(world: World) -> None:
    bind = world.session.get_bind()
    world.session.close()
    bind.dispose()  # type: ignore[union-attr]


def _media(tmp: Path, clock: FakeClock, world: World) -> Path:
    """Sixteen result files: good ones, one twice, and every kind of bad one."""
    tmp.mkdir()
    site1 = _agent(world, tmp)
    site2 = _agent(world, tmp, "site-02")
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    usb = tmp / "usb"
    export_environment(world.ctx("op"), "test", usb)
    only = tmp / "usb1"
    only.mkdir()
    for f in usb.glob("*site-01*.tgb"):
        shutil.copy(f, only)
    _deliver(site1, only)  # result 1 of site-01: about its deployment
    rec = site1.journal.bundles()[0]
    media = tmp / "media"
    media.mkdir()
    files = sorted(site1.config.outbox.glob("*.tgr"))
    files += [_result(site1, "succeeded", f"report {i}") for i in range(8)]
    # A log over 1 MiB compressed: this result is staged to be verified, not checked in memory.
    big_log = StepReport(idx=0, attempt=1, name="dump", kind="shell", state="succeeded",
                         summary="ok", exit_code=0, log=os.urandom(1536 * 1024).hex())
    files.append(_result(site1, "succeeded", "a big log", steps=[big_log]))
    for i, f in enumerate(files):
        shutil.copyfile(f, media / f"a{i:02}.tgr")
    shutil.copyfile(files[3], media / "a03-again.tgr")  # the same result twice
    # Signed by a key that is not the agent's.
    forged = Agent(site1.config, keys=type(site1.keys)(SigningKey.generate(), site1.keys.box),
                   clock=lambda: clock().timestamp())
    shutil.move(_result(forged, "succeeded", "forged"), media / "b-forged.tgr")
    # One byte changed (refused by the verifier), one file cut short, one not a bundle at all.
    data = bytearray(files[4].read_bytes())
    data[len(data) - 1024 - 600] ^= 0x01
    (media / "b-tampered.tgr").write_bytes(bytes(data))
    (media / "b-truncated.tgr").write_bytes(files[5].read_bytes()[:-1000])
    (media / "b-garbage.tgr").write_bytes(b"not a bundle\n" * 50)
    # site-02 reports on site-01's bundle; site-02 reports on a bundle never exported.
    shutil.move(_result(site2, "succeeded", "not mine", rec.bundle_id, rec.envelope_sha256),
                media / "c-misaddressed.tgr")
    shutil.move(_result(site2, "succeeded", "unknown", "b-" + "0" * 26, "0" * 64),
                media / "c-unknown.tgr")
    for a in (site1, site2, forged):
        a.close()
    return media


def _outcome(world: World, results: Path) -> dict[str, Any]:
    """What an import left: the audit events it wrote, the agents, deployments, stored files."""
    events = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action.in_(
            ("result.import", "result.rejected", "result.flag", "deployment.result")))
        .order_by(AuditEvent.seq))
    agents = world.session.scalars(select(AgentRow).order_by(AgentRow.agent_id))
    deps = world.session.scalars(select(Deployment).order_by(Deployment.id))
    return {
        "events": [(e.seq, e.action, e.object_id, e.details) for e in events],
        "agents": [(a.agent_id, a.result_seq, a.last_result_digest) for a in agents],
        "deployments": [(d.id, d.state, d.finished_at, d.result_summary) for d in deps],
        "stored": sorted(p.name for p in results.iterdir()),
    }


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_batch_verified_in_worker_processes_imports_as_in_process(
    tmp_path: Path, clock: FakeClock, keys: Keys, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setattr(result_import, "start_method", lambda: method)
    monkeypatch.setattr(import_verify, "start_method", lambda: method)
    monkeypatch.setattr(result_import, "POOL_MIN_FILES", 8)
    # Spawned workers are not used by default (slow to start): allowed here.
    monkeypatch.setattr(result_import, "POOL_START_METHODS", frozenset({"fork", "spawn"}))
    monkeypatch.setattr(result_import, "cores_free", lambda cpus: True)  # however busy
    db = tmp_path / "hub.sqlite"
    world = _world(f"sqlite:///{db}", clock, keys, tmp_path / "releases")
    upgrade(world.session.get_bind())  # type: ignore[arg-type]
    bootstrap_admin(world.session, clock, "admin")
    seed_people(world.ctx("admin"), PEOPLE)
    world.session.commit()
    media = _media(tmp_path / "setup", clock, world)
    _close(world)
    shutil.copyfile(db, tmp_path / "copy.sqlite")  # the same hub, twice

    pool_calls: list[int] = []
    real_verify = import_verify.VerifyPool.verify

    def counted(self: import_verify.VerifyPool, jobs: list[import_verify.VerifyJob]) -> Any:
        pool_calls.append(len(jobs))
        return real_verify(self, jobs)

    monkeypatch.setattr(import_verify.VerifyPool, "verify", counted)
    staged: list[str] = []  # in this process: the results verified through staging
    real_stage = import_verify.verify_bundle

    def staging(source: Any, **kwargs: Any) -> Any:
        staged.append(kwargs["label"])
        return real_stage(source, **kwargs)

    monkeypatch.setattr(import_verify, "verify_bundle", staging)
    rows: dict[str, list[ImportRow]] = {}
    outcome: dict[str, dict[str, Any]] = {}
    for mode, url in (("pool", f"sqlite:///{db}"),
                      ("in-process", f"sqlite:///{tmp_path / 'copy.sqlite'}")):
        if mode == "in-process":
            monkeypatch.setattr(result_import, "POOL_MIN_FILES", 10_000)
        w = _world(url, clock, keys, tmp_path / "releases")
        results = tmp_path / f"results-{mode}"
        rows[mode] = import_directory(w.ctx("op"), media, results_dir=results).rows
        outcome[mode] = _outcome(w, results)
        assert audit.verify_database(w.session, keys.hub).ok
        _close(w)

    # 16 files reached verification (the garbage one is refused from its head): one pool call
    # in the first import, none in the second. Only the big one was staged.
    assert pool_calls == [16]
    assert staged == ["a09.tgr"]
    assert rows["pool"] == rows["in-process"]
    assert outcome["pool"] == outcome["in-process"]
    by_file = {r.file: r for r in rows["pool"]}
    # The copy named first ("a03-again" sorts before "a03.") imports, the other is a duplicate.
    assert [r.file for r in rows["pool"] if r.status == "imported"] == [
        "a00.tgr", "a01.tgr", "a02.tgr", "a03-again.tgr", *(f"a{i:02}.tgr" for i in range(4, 10))]
    assert by_file["a00.tgr"].deployment_id is not None
    assert by_file["a03.tgr"].status == "duplicate"
    rejected = {f: r.reason for f, r in by_file.items() if r.status == "rejected"}
    assert sorted(rejected) == ["b-forged.tgr", "b-garbage.tgr", "b-tampered.tgr",
                                "b-truncated.tgr", "c-misaddressed.tgr", "c-unknown.tgr"]
    assert "signature" in rejected["b-forged.tgr"]
    assert "signature" in rejected["b-tampered.tgr"]
    assert "truncated" in rejected["b-truncated.tgr"]
    assert "not a readable result file" in rejected["b-garbage.tgr"]
    assert "not addressed" in rejected["c-misaddressed.tgr"]
    assert "never exported" in rejected["c-unknown.tgr"]
    rejected_events = [e for e in outcome["pool"]["events"] if e[1] == "result.rejected"]
    assert sorted(e[2] for e in rejected_events) == sorted(rejected)
    # Ten results stored, nothing else left behind, and the bad files stay on the media.
    assert len(outcome["pool"]["stored"]) == 10
    assert all((media / f).exists() for f in rejected)


def test_a_rejection_crosses_the_process_boundary_whole() -> None:
    sent = pickle.dumps(Rejected("a.tgr: digest mismatch", "digest", "s-1"))
    rejected = pickle.loads(sent)  # noqa: S301 - our own bytes, as the pool sends them
    assert (rejected.reason, rejected.check, rejected.agent_id) == (
        "a.tgr: digest mismatch", "digest", "s-1")


@pytest.mark.parametrize(("load", "free"), [(0.5, True), (1.9, True), (2.0, False),
                                            (7.5, False), (None, True)])
def test_the_pool_is_left_out_while_the_cores_are_busy(
    monkeypatch: pytest.MonkeyPatch, load: float | None, free: bool
) -> None:
    """On two CPUs: the pool is used below a load average of 2 (or when it is unknown)."""

    def getloadavg() -> tuple[float, float, float]:
        if load is None:
            raise OSError("no load average here")
        return (load, 0.0, 0.0)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    assert import_verify.cores_free(2) is free


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_workers_leave_ctrl_c_to_the_importer(
        keys: Keys, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A terminal's Ctrl-C goes to the whole process group: every worker died of it with a
    KeyboardInterrupt traceback, in the middle of the importer's own clean-up. The workers
    ignore it; the importer stops them (tiangong hub import says it was interrupted)."""
    monkeypatch.setattr(import_verify, "start_method", lambda: method)
    pool = import_verify.VerifyPool(keys.hub.trusted_root)
    pool.start()
    try:
        assert pool._pool is not None
        answers = {pool._pool.submit(signal.getsignal, signal.SIGINT).result()
                   for _ in range(pool.workers * 2)}
        assert answers == {signal.SIG_IGN}
    finally:
        pool.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the importer's own


_IMPORTER = """
import sys, threading
from hub.services import import_verify
from tests.hub.conftest import make_keys
pool = import_verify.VerifyPool(make_keys().hub.trusted_root)
pool.start()
print(*pool._pool._processes, flush=True)
threading.Event().wait()  # importing, until killed
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


def test_the_workers_of_a_killed_importer_do_not_outlive_it(tmp_path: Path) -> None:
    """`kill -9` of the importing process alone (or the OOM killer) left its workers blocked
    on the pool's queue for ever, each holding the importer's memory and its output pipes
    (a caller reading them until the end never got it). They leave when it is gone."""
    importer = subprocess.Popen([sys.executable, "-c", _IMPORTER], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[3])
    workers: list[int] = []
    try:
        assert importer.stdout is not None
        workers = [int(p) for p in importer.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
        importer.kill()
        importer.wait(timeout=30)
        wait_for(lambda: not any(_alive(p) for p in workers), 30, "the workers to leave")
    finally:
        importer.kill()
        importer.communicate()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
