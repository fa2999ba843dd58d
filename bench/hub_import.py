"""Hub import throughput (result bundles/s into SQLite and PostgreSQL) and ``audit verify``
time for a large audit log.

Prints figures; asserts nothing. Baselines are measured in the same run, on the same files:

1. *Import*: one agent is enrolled from a real ``init_home`` request, one real release is
   approved, exported, run by the agent (``agent.service.Agent``), and then the agent writes
   ``--count - 1`` more signed results directly (``agent.results.write_result``, three steps
   with small logs, no bundle id). ``import_directory`` is timed over all of them on a file
   SQLite database (WAL, the hub's own pragmas) and on a throwaway PostgreSQL
   (``tests/fixtures/dbservers.py``; that server runs with ``fsync=off`` and
   ``synchronous_commit=off``, so its commits cost no disk flush). ``--batch-size`` result
   files are recorded per transaction (``--batch-size 1``: one commit per file). The time is
   split by wrapping the phases of ``hub.services.exchange`` with timers. Baselines: the
   verifier floor, ``bundle.reader.verify_path`` alone on the same files (fresh staging
   directory each) with ``durable=False`` as the import verifies now, and with durable
   staging as it did before batching; plus a plain copy + fsync of each file.
2. *Audit verify*: ``--events`` events are bulk-inserted with the chain computed by
   ``hub.audit_chain.compute_hash_raw`` (the exact inputs ``hub.services.audit.append_event``
   hashes), then ``hub.services.audit.verify_database`` runs in a child process (wall time,
   peak RSS from ``os.wait4``). Baselines in the same child: streaming the same rows with a
   plain SELECT, and a plain ``hashlib.sha256`` over the same canonical event bytes.

Usage: python bench/hub_import.py [--count 1000] [--batch-size 100] [--events 1000000] [--quick]
       [--no-postgres] [--audit-postgres] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, insert, text, update
from sqlalchemy.orm import Session

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.results import write_result
from agent.runner import StepReport
from agent.service import Agent
from bundle import staging as bundle_staging
from bundle.reader import ExpectResult, VerifierState, check_bundle, verify_path
from hub.audit_chain import GENESIS_HASH, compute_hash_raw, format_at
from hub.audit_mac import AuditMacKey
from hub.db import AuditEvent, AuditHead, make_engine
from hub.migrate import upgrade
from hub.services import audit as audit_service
from hub.services import exchange, import_files, import_verify, result_import
from hub.services.approvals import approve_release
from hub.services.context import HubKeys, ServiceContext, utc_now
from hub.services.deployments import queue_deployment
from hub.services.environments import create_environment
from hub.services.releases import create_release, submit_release
from hub.services.users import bootstrap_admin, create_user, get_user, grant_role
from signing.keys import PublicKey
from signing.strictjson import dumps_canonical
from tests.hub.conftest import make_keys

HELLO = Path(__file__).resolve().parents[1] / "examples" / "releases" / "hello-1.0.0"
GOAL_IMPORTS_PER_S = 200
INSERT_BATCH = 10_000  # audit events per bulk INSERT
PROFILE = False  # --profile: cProfile the import (its figures then include the profiler)
#: The throwaway PostgreSQL's data directory, when the bench runs one: its server processes'
#: CPU is counted too (they share the machine's cores with the import).
PG_DATA: Path | None = None


# -- the hub and its agent ----------------------------------------------------------------------


class Hub:
    """A migrated hub database with admin, op, dev, appr1 and environment ``test``."""

    def __init__(self, url: str, work: Path, *, fresh: bool = True) -> None:
        self.engine: Engine = make_engine(url)
        self.session = Session(self.engine, expire_on_commit=False)
        self.keys = make_keys("hub-bench").hub
        self.work = work
        if not fresh:  # a copy of a hub set up already (--repeat)
            return
        upgrade(self.engine)
        bootstrap_admin(self.session, utc_now, "admin")
        admin = self.ctx("admin")
        create_environment(admin, "test")
        for name, role in (("op", "operator"), ("dev", "developer"), ("appr1", "approver")):
            create_user(admin, name)
            grant_role(admin, name, role)
        self.session.commit()

    def ctx(self, username: str) -> ServiceContext:
        user = get_user(self.session, username)
        return ServiceContext(self.session, utc_now, user, self.keys, self.work / "releases")

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()


def _steps(i: int) -> list[StepReport]:
    now = int(time.time())
    return [
        StepReport(
            idx=k,
            attempt=1,
            name=f"step {k + 1}",
            kind="shell",
            state="succeeded",
            summary=f"exit 0 after {0.1 * (k + 1):.1f} s",
            exit_code=0,
            started_at=now,
            finished_at=now,
            log="".join(
                f"result {i} step {k + 1}: line {n} of the log, all fine\n" for n in range(20)
            ),
        )
        for k in range(3)
    ]


def make_results(hub: Hub, work: Path, count: int) -> tuple[Path, str, PublicKey]:
    """Enroll one agent, run one real deployment, then write ``count - 1`` more results.

    Returns the directory holding the ``.tgr`` files, the agent id and its public key.
    """
    agent_id = "site-01"
    root = work / "root.json"
    root.write_bytes(hub.keys.root_envelope)
    _, request = init_home(
        work / agent_id, root_file=root, agent_id=agent_id, environment="test", now=int(time.time())
    )
    media = work / "enroll"
    media.mkdir()
    shutil.copy(request, media)
    rows = exchange.import_directory(hub.ctx("op"), media, results_dir=work / "enroll-results")
    assert [r.status for r in rows.rows] == ["enrolled"], rows.rows
    agent = Agent(load_config(work / agent_id), clock=time.time)
    try:
        release = create_release(hub.ctx("dev"), HELLO, create_missing_product=True)
        submit_release(hub.ctx("dev"), release)
        approve_release(hub.ctx("appr1"), release)
        hub.session.commit()
        queue_deployment(hub.ctx("op"), release, "test")
        hub.session.commit()
        usb = work / "usb"
        report = exchange.export_environment(hub.ctx("op"), "test", usb)
        assert len(report.written) == 1 and not report.failed, report
        for f in sorted(usb.glob("*.tgb")):
            dest = agent.config.inbox / f.name
            shutil.copyfile(f, dest)
            out = agent.process(ReadyItem(f.name, (dest,), dest.stat().st_size, "single", 0.0))
            assert out.status == "succeeded", out.summary
        for i in range(count - 1):
            write_result(
                agent.config,
                agent.journal,
                agent.keys.identity,
                status="succeeded",
                summary=f"bench result {i}",
                bundle_id=None,
                steps=_steps(i),
                now=int(time.time()),
            )
        public = agent.keys.identity.public
    finally:
        agent.close()
    back = work / "usb-back"
    back.mkdir()
    for f in agent.config.outbox.glob("*.tgr"):
        shutil.move(str(f), back / f.name)
    return back, agent_id, public


# -- phase timers ---------------------------------------------------------------------------


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)  # CPU of the calling thread
        self.calls: dict[str, int] = defaultdict(int)
        self.local = threading.local()  # per thread: is a phase being timed?
        self.lock = threading.Lock()

    def wrap(
        self, name: str, fn: Callable[..., Any], *, nested: bool = False
    ) -> Callable[..., Any]:
        """Time ``fn`` under ``name``. Phases are exclusive: a call made inside another
        timed phase counts for the outer one only, unless ``nested`` (a side counter)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(self.local, "active", False)
            if outer and not nested:
                return fn(*args, **kwargs)
            if not nested:
                self.local.active = True
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - t, time.thread_time() - c
                with self.lock:
                    self.seconds[name] += wall
                    self.cpu[name] += cpu
                    self.calls[name] += 1
                self.local.active = outer

        return timed


def server_cpu() -> float:
    """CPU seconds used so far by the bench's PostgreSQL: the postmaster, the children it
    reaped (backends of closed connections) and its live children (0.0 without a server)."""
    if PG_DATA is None:
        return 0.0
    try:
        postmaster = int((PG_DATA / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # from the state field on
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:  # utime stime cutime cstime
            total += sum(int(f) for f in fields[11:15])
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def import_fn(name: str) -> Callable[..., Any]:
    """A function ``hub.services.result_import`` imported from elsewhere (patched where it is
    used)."""
    fn: Callable[..., Any] = getattr(result_import, name)
    return fn


def timed_import(
    hub: Hub, src: Path, work: Path, batch_size: int, results: str = "results"
) -> tuple[float, dict[str, int], Timers]:
    """``import_directory`` over ``src`` with every phase timed."""
    t = Timers()
    ctx = hub.ctx("op")
    session = hub.session
    results_dir = work / results
    results_dir.mkdir()
    run = result_import._ImportRun
    ri = result_import
    with (
        patched(run, "_receive", t.wrap("receive (read once: copy+inspect)", run._receive)),
        patched(run, "_lookup", t.wrap("lookups (2 queries per batch)", run._lookup)),
        # Only the files verified in this process (batches of at most POOL_MIN_FILES files,
        # or --no-pool); the pool's workers are timed as "CPU of the verification workers".
        patched(run, "_verify", t.wrap("verify a batch", run._verify)),
        patched(import_verify, "check_bundle",
                t.wrap("verify_bundle", vars(import_verify)["check_bundle"], nested=True)),
        patched(import_verify, "verify_bundle",
                t.wrap("verify_bundle", vars(import_verify)["verify_bundle"], nested=True)),
        patched(import_verify, "remove_staged",
                t.wrap("staging rmtree", import_verify.remove_staged, nested=True)),
        patched(result_import, "sync_copies", t.wrap("fsync copies", import_files.sync_copies)),
        patched(run, "_record", t.wrap("record (SQL, savepoints)", run._record)),
        patched(session, "commit", t.wrap("commit", session.commit)),
        patched(audit_service, "record", t.wrap("audit.record", audit_service.record, nested=True)),
        patched(audit_service, "record_many",
                t.wrap("audit.record_many", audit_service.record_many, nested=True)),
        patched(ri, "fsync_dir", t.wrap("fsync_dir", import_fn("fsync_dir"), nested=True)),
        patched(os, "fsync", t.wrap("os.fsync (inside the phases)", os.fsync, nested=True)),
        patched(bundle_staging, "syncfs", t.wrap("syncfs", bundle_staging.syncfs, nested=True)),
    ):
        profiler = cProfile.Profile() if PROFILE else None
        start, cpu = time.perf_counter(), time.process_time()
        children = os.times()
        server = server_cpu()
        if profiler is not None:
            profiler.enable()
        report = exchange.import_directory(
            ctx, src, results_dir=results_dir, batch_size=batch_size
        )
        wall = time.perf_counter() - start
        t.seconds["server_cpu"] = server_cpu() - server
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        t.seconds["cpu"] = time.process_time() - cpu
        # The pool's workers have exited (the import shut the pool down): their CPU is here.
        after = os.times()
        t.seconds["workers_cpu"] = (after.children_user - children.children_user
                                    + after.children_system - children.children_system)
    counts: dict[str, int] = defaultdict(int)
    for row in report.rows:
        counts[row.status] += 1
    return wall, dict(counts), t


def verifier_floor(
    hub: Hub, src: Path, work: Path, agent_id: str, public: PublicKey
) -> tuple[float, float, int, float, float, float]:
    """Seconds for ``verify_path`` alone over every file (fresh staging each, durable as
    before this import's batching), seconds for copy + fsync of every file, the fsync calls
    and seconds inside ``verify_path``, seconds for ``verify_path(durable=False)`` staged
    in ``result_import.MEMORY_STAGING`` (session 6's verification: every check and digest,
    staging not flushed), and seconds for ``check_bundle`` on each file's bytes (read, then
    checked in memory, nothing staged: the import's verification now)."""
    expect = ExpectResult(hub_id=hub.keys.hub_id, agent_id=agent_id, agent_key=public)
    trusted = hub.keys.trusted_root
    files = sorted(src.glob("*.tgr"))
    fsyncs = Timers()

    def verify_all(durable: bool) -> float:
        # Staged where the import stages now (tmpfs) when not durable, else on the data disk.
        memory = result_import.MEMORY_STAGING
        where = memory if not durable and memory.is_dir() else work
        seconds = 0.0
        for f in files:
            staging = Path(tempfile.mkdtemp(prefix="floor-", dir=where))
            t = time.perf_counter()
            verify_path(
                f,
                trusted_root=trusted,
                state=VerifierState(),
                expect=expect,
                staging_dir=staging,
                durable=durable,
            )
            seconds += time.perf_counter() - t
            shutil.rmtree(staging)
        return seconds

    with (
        patched(os, "fsync", fsyncs.wrap("fsync", os.fsync, nested=True)),
        patched(
            bundle_staging, "syncfs", fsyncs.wrap("syncfs", bundle_staging.syncfs, nested=True)
        ),
    ):
        verify_s = verify_all(True)
    nosync_s = verify_all(False)
    check_s = 0.0
    for f in files:
        t = time.perf_counter()
        data = f.read_bytes()
        check_bundle(io.BytesIO(data), label=f.name, size=len(data), trusted_root=trusted,
                     state=VerifierState(), expect=expect)
        check_s += time.perf_counter() - t
    copies = work / "copies"
    copies.mkdir()
    t = time.perf_counter()
    for f in files:
        dest = copies / f.name
        shutil.copyfile(f, dest)
        with dest.open("rb") as fh:
            os.fsync(fh.fileno())
    copy_s = time.perf_counter() - t
    flushes = fsyncs.calls["fsync"] + fsyncs.calls["syncfs"]
    return (verify_s, copy_s, flushes, fsyncs.seconds["fsync"] + fsyncs.seconds["syncfs"],
            nosync_s, check_s)


def repeat_imports(
    copy_db: Callable[[str], str], work: Path, src: Path, batch_size: int, repeat: int
) -> None:
    """``repeat`` imports of the same files, each into a fresh copy of the hub database
    (``copy_db(name)`` makes one and returns its URL), alternately with the verification
    pool and without it (``--no-pool``): the two ways compared on the same files, minutes
    apart at most. Prints a line per import and the median of each way."""
    n = len(list(src.glob("*.tgr")))
    walls: dict[str, list[float]] = defaultdict(list)
    for k in range(repeat):
        mode = "pool" if k % 2 == 0 else "no-pool"
        vars(result_import)["POOL_MIN_FILES"] = 8 if mode == "pool" else 1000
        hub = Hub(copy_db(f"bench_import_{k}"), work, fresh=False)
        load = os.getloadavg()[0]
        try:
            # The pool whatever the load (the import leaves it out on busy cores).
            with patched(result_import, "cores_free", lambda cpus: True):
                wall, counts, t = timed_import(hub, src, work, batch_size, f"results-{k}")
        finally:
            hub.close()
        walls[mode].append(wall)
        print(f"  repeat {k + 1}/{repeat} ({mode:7}): {n / wall:5.0f} imports/s, "
              f"{1000 * wall / n:.2f} ms/file; CPU {1000 * t.seconds['cpu'] / n:.2f} ms/file "
              f"+ workers {1000 * t.seconds['workers_cpu'] / n:.2f} "
              f"+ PostgreSQL {1000 * t.seconds['server_cpu'] / n:.2f}; load {load:.1f}; {counts}")
    for mode, w in walls.items():
        med = sorted(w)[len(w) // 2]
        print(f"RESULT hub_import repeat mode={mode} runs={len(w)} "
              f"median_imports_per_s={n / med:.0f} best={n / min(w):.0f}")


def bench_import(
    label: str, url: str, work: Path, count: int, batch_size: int,
    copy_db: Callable[[str], str] | None = None, repeat: int = 0,
) -> dict[str, Any]:
    work.mkdir(parents=True)
    hub = Hub(url, work)
    try:
        t = time.perf_counter()
        src, agent_id, public = make_results(hub, work, count)
        gen_s = time.perf_counter() - t
        files = sorted(src.glob("*.tgr"))
        total_bytes = sum(f.stat().st_size for f in files)
        if copy_db is not None and repeat:
            hub.close()  # a database with connections cannot be copied
            pool_setting = vars(result_import)["POOL_MIN_FILES"]
            repeat_imports(copy_db, work, src, batch_size, repeat)
            vars(result_import)["POOL_MIN_FILES"] = pool_setting
            hub = Hub(url, work, fresh=False)
        wall, counts, timers = timed_import(hub, src, work, batch_size)
        verify_s, copy_s, floor_fsyncs, floor_fsync_s, nosync_s, check_s = verifier_floor(
            hub, src, work, agent_id, public
        )
    finally:
        hub.close()
    return {
        "label": label,
        "batch_size": batch_size,
        "files": len(files),
        "bytes": total_bytes,
        "gen_s": gen_s,
        "wall": wall,
        "counts": counts,
        "timers": timers,
        "floor_verify_s": verify_s,
        "floor_copy_s": copy_s,
        "floor_fsyncs": floor_fsyncs,
        "floor_fsync_s": floor_fsync_s,
        "floor_nosync_s": nosync_s,
        "floor_check_s": check_s,
    }


def print_import(r: dict[str, Any]) -> None:
    n = r["files"]
    wall = r["wall"]
    t: Timers = r["timers"]
    print(
        f"\n[{r['label']}] {n} result files, {r['bytes'] / n / 1024:.1f} KiB each on average "
        f"(generated in {r['gen_s']:.1f} s); batch size {r['batch_size']}; rows: {r['counts']}"
    )
    print(
        f"  import_directory: {wall:.2f} s = {n / wall:.0f} imports/s "
        f"(goal >= {GOAL_IMPORTS_PER_S}/s), {1000 * wall / n:.2f} ms/file"
    )
    cpu = t.seconds["cpu"]
    print(
        f"  CPU time of this process: {cpu:.2f} s = {1000 * cpu / n:.2f} ms/file "
        f"(wall/CPU {wall / cpu:.2f}: waiting for the disk, the database or a busy CPU)"
    )
    wcpu = t.seconds.get("workers_cpu", 0.0)
    print(
        f"  CPU of the verification workers (processes): {wcpu:.2f} s = "
        f"{1000 * wcpu / n:.2f} ms/file; pool "
        f"{'used' if wcpu > 0 else 'not used (--no-pool, one CPU, batches of 8 or less, or '}"
        f"{'' if wcpu > 0 else 'a load average of 1 per CPU or more)'}"
    )
    scpu = t.seconds.get("server_cpu", 0.0)
    if scpu:
        print(f"  CPU of the PostgreSQL server (all its processes): {scpu:.2f} s = "
              f"{1000 * scpu / n:.2f} ms/file; all three: {1000 * (cpu + wcpu + scpu) / n:.2f} "
              "ms/file")
    # The import is pipelined (hub/services/result_import.py): the phases run on different
    # threads at the same time, so their wall seconds overlap and may add up to more than
    # the import's wall time. "busy" is the time each phase's calls took on their threads.
    print(f"  {'phase (thread)':<44} {'busy s':>8} {'ms/file':>9} {'% wall':>7} "
          f"{'CPU ms/file':>12}")
    order = [
        ("receive (read once: copy+inspect)", "reading threads, 4, summed"),
        ("lookups (2 queries per batch)", "main"),
        ("verify a batch", "verifier thread: here or waiting for the workers"),
        ("verify_bundle", "check_bundle/verify_bundle, when not in workers"),
        ("staging rmtree", "verifier thread"),
        ("fsync copies", "flushing thread"),
        ("record (SQL, savepoints)", "main"),
        ("commit", "main"),
    ]
    main_busy = 0.0
    for name, where in order:
        s = t.seconds.get(name, 0.0)
        if where == "main":
            main_busy += s
        c = t.cpu.get(name, 0.0)
        label = f"{name} ({where})"
        print(
            f"  {label:<44} {s:8.2f} {1000 * s / n:9.2f} {100 * s / wall:6.1f}% "
            f"{1000 * c / n:12.2f}"
        )
    rest = wall - main_busy
    fs = t.seconds.get("os.fsync (inside the phases)", 0.0)
    fc_ = t.calls.get("os.fsync (inside the phases)", 0)
    print(
        f"  main thread outside lookups/record/commit (waiting for the pipeline, Python): "
        f"{rest:.2f} s = {1000 * rest / n:.2f} ms/file ({100 * rest / wall:.1f}% of wall)"
    )
    ar, ac = t.seconds.get("audit.record", 0.0), t.calls.get("audit.record", 0)
    mr, mc = t.seconds.get("audit.record_many", 0.0), t.calls.get("audit.record_many", 0)
    print(f"  of which audit.record: {ac} calls, {ar:.2f} s ({1000 * ar / n:.2f} ms/file); "
          f"audit.record_many: {mc} calls, {mr:.2f} s ({1000 * mr / n:.2f} ms/file)")
    ds, dc = t.seconds.get("fsync_dir", 0.0), t.calls.get("fsync_dir", 0)
    print(f"  of which fsync of the results directory: {dc} calls, {ds:.2f} s")
    ss, sc = t.seconds.get("syncfs", 0.0), t.calls.get("syncfs", 0)
    print(
        f"  of which syncfs (bundle/staging.py): {sc} calls, {ss:.2f} s "
        f"({1000 * ss / n:.2f} ms/file, {100 * ss / wall:.1f}%)"
    )
    print(
        f"  os.fsync calls (durations summed; the parallel ones overlap): {fc_} calls "
        f"({fc_ / n:.1f}/file), {fs:.2f} s "
        f"({1000 * fs / n:.2f} ms/file, {100 * fs / wall:.1f}%)"
    )
    fv, fc = r["floor_verify_s"], r["floor_copy_s"]
    print(
        f"  baseline verify_path alone (durable staging, the old import's way): {fv:.2f} s = "
        f"{n / fv:.0f} files/s ({1000 * fv / n:.2f} ms/file)"
    )
    print(
        f"    of which fsync + syncfs: {r['floor_fsyncs']} calls, {r['floor_fsync_s']:.2f} s "
        f"({100 * r['floor_fsync_s'] / fv:.0f}% of the floor)"
    )
    ss_ = r["floor_nosync_s"]
    print(
        f"  baseline verify_path(durable=False) alone, staged in memory (session 6's way): "
        f"{ss_:.2f} s = {n / ss_:.0f} files/s ({1000 * ss_ / n:.2f} ms/file)"
    )
    ns = r["floor_check_s"]
    print(
        f"  baseline read + check_bundle alone (the import's verification now, nothing "
        f"staged): {ns:.2f} s = {n / ns:.0f} files/s ({1000 * ns / n:.2f} ms/file); import "
        f"is {wall / ns:.2f}x this floor"
    )
    print(f"  baseline copy+fsync alone:       {fc:.2f} s ({1000 * fc / n:.2f} ms/file)")
    print(
        f"RESULT hub_import {r['label']} batch={r['batch_size']} imports_per_s={n / wall:.0f} "
        f"verify_floor_per_s={n / ns:.0f} ratio={ns / wall:.2f}"
    )


# -- audit log ------------------------------------------------------------------------------


ACTIONS = (
    ("result.import", "result"),
    ("deployment.transition", "deployment"),
    ("bundle.written", "deployment"),
    ("release.approve", "release"),
    ("user.login", "user"),
)


def _event(i: int, base: datetime) -> tuple[datetime, str, str, str, str, str]:
    action, otype = ACTIONS[i % len(ACTIONS)]
    at = base + timedelta(microseconds=1000 * i + (i * 7919) % 1000)
    details = {
        "agent_id": f"site-{i % 50:02d}",
        "result_seq": i,
        "status": "succeeded" if i % 10 else "failed",
        "file": f"site-{i % 50:02d}-{i:06d}-succeeded.tgr",
        "file_sha256": f"{i:064x}",
        "flags": [],
    }
    text_ = dumps_canonical(details).decode("utf-8")
    return at, f"user{i % 20}", action, otype, f"{i:064x}"[:64], text_


#: The audit MAC key of the bench's log (a real hub MACs every event: hub.audit_mac).
BENCH_MAC = AuditMacKey(bytes(range(32)))


def fill_audit(url: str, events: int, mac: AuditMacKey | None = BENCH_MAC) -> tuple[float, int]:
    """Bulk-insert ``events`` chained events, each MACed with ``mac`` as the hub writes
    them; returns (seconds, bytes of details)."""
    engine = make_engine(url)
    upgrade(engine)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    table = AuditEvent.__table__
    prev = GENESIS_HASH
    details_bytes = 0
    t = time.perf_counter()
    with engine.begin() as conn:
        # Migrations may have written events already: continue the chain from the head.
        head_seq, head_hash = conn.execute(
            text("SELECT seq, hash FROM audit_head WHERE id = 1")
        ).one()
        prev = head_hash
        seq = head_seq
    batch: list[dict[str, Any]] = []
    for i in range(events):
        seq += 1
        at, actor, action, otype, oid, details = _event(i, base)
        digest = compute_hash_raw(seq, format_at(at), actor, action, otype, oid, details, prev)
        details_bytes += len(details)
        batch.append(
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "object_type": otype,
                "object_id": oid,
                "details": details,
                "prev_hash": prev,
                "hash": digest,
                "mac": mac.mac(seq, digest) if mac is not None else None,
            }
        )
        prev = digest
        if len(batch) == INSERT_BATCH:
            with engine.begin() as conn:
                conn.execute(insert(table), batch)
            batch = []
    with engine.begin() as conn:
        if batch:
            conn.execute(insert(table), batch)
        conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=prev))
    seconds = time.perf_counter() - t
    engine.dispose()
    return seconds, details_bytes


def _child_verify(url: str, root_b64: str, mode: str) -> None:
    """Child process: run one of the measurements, print JSON."""
    engine = make_engine(url)
    out: dict[str, Any] = {}
    t = time.perf_counter()
    cpu = time.process_time()
    if mode in ("verify", "verify-nomac", "verify-prefetch"):
        # "verify-nomac": as a hub without its audit MAC key (chain and checkpoints only);
        # "verify-prefetch": the next page is read in a thread (audit.PREFETCH).
        mac = None if mode == "verify-nomac" else BENCH_MAC
        audit_service.PREFETCH = mode == "verify-prefetch"
        keys = HubKeys(base64.b64decode(root_b64), audit_mac=mac)
        with Session(engine) as session:
            report = audit_service.verify_database(session, keys)
        out = {"ok": report.ok, "events": report.events, "macs": report.macs_checked}
    elif mode == "select-driver":
        # The same keyset query straight on the driver's cursor: what the verifier reads.
        n = 0
        with engine.connect() as conn:
            cursor = conn.connection.cursor()
            mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
            last = 0
            while True:
                cursor.execute(
                    "SELECT seq, at, actor, action, object_type, object_id, details, "  # noqa: S608
                    f"prev_hash, hash, mac FROM audit_events WHERE seq > {mark} ORDER BY seq "
                    f"LIMIT {audit_service.VERIFY_BATCH}",
                    (last,),
                )
                rows = cursor.fetchall()
                if not rows:
                    break
                n += len(rows)
                last = rows[-1][0]
        out = {"events": n}
    elif mode == "select":
        n = 0
        with engine.connect() as conn:
            last = 0
            while True:
                rows = conn.execute(
                    text(
                        "SELECT seq, at, actor, action, object_type, object_id, details, "
                        "prev_hash, hash FROM audit_events WHERE seq > :last ORDER BY seq "
                        "LIMIT :n"
                    ),
                    {"last": last, "n": audit_service.BATCH},
                ).all()
                if not rows:
                    break
                n += len(rows)
                last = rows[-1][0]
        out = {"events": n}
    elif mode == "sha256":
        import hashlib

        # The same canonical bytes compute_hash_raw hashes (built untimed), then one
        # hashlib.sha256 each, chained through the previous hex digest.
        base = datetime(2026, 1, 1, tzinfo=UTC)
        events = int(root_b64)
        bodies = []
        for i in range(events):
            at, actor, action, otype, oid, details = _event(i, base)
            head = json.dumps(
                {"action": action, "actor": actor, "at": format_at(at)},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            )
            bodies.append(
                (
                    head[:-1]
                    + ',"details":'
                    + details
                    + ',"object_id":'
                    + json.dumps(oid)
                    + ',"object_type":'
                    + json.dumps(otype)
                    + ',"prev_hash":"'
                ).encode()
            )
        seq_tail = [f'","seq":{i + 1}}}'.encode() for i in range(events)]
        t, cpu = time.perf_counter(), time.process_time()
        prev = GENESIS_HASH.encode()
        for body, tail in zip(bodies, seq_tail, strict=True):
            prev = hashlib.sha256(body + prev + tail).hexdigest().encode()
        out = {"events": events}
    out["seconds"] = time.perf_counter() - t
    out["cpu"] = time.process_time() - cpu
    engine.dispose()
    print(json.dumps(out))


def run_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script as a child; returns its JSON and its peak RSS in MiB."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    data = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[-1]} exited with {proc.returncode}")
    return json.loads(data.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def bench_audit(label: str, url: str, events: int, root_envelope: bytes) -> None:
    fill_s, details_bytes = fill_audit(url, events)
    root_b64 = base64.b64encode(root_envelope).decode()
    print(f"\n[audit {label}] load average before: {os.getloadavg()}")
    verify, verify_rss = run_child([url, root_b64, "verify"])
    nomac, nomac_rss = run_child([url, root_b64, "verify-nomac"])
    pre, pre_rss = run_child([url, root_b64, "verify-prefetch"])
    select_, select_rss = run_child([url, root_b64, "select"])
    driver, driver_rss = run_child([url, root_b64, "select-driver"])
    sha, sha_rss = run_child([url, str(events), "sha256"])
    n = verify["events"]
    print(
        f"\n[audit {label}] {events} events bulk-inserted in {fill_s:.1f} s "
        f"({events / fill_s:.0f}/s), details {details_bytes / events:.0f} bytes/event"
    )
    print(f"  {'what':<44} {'s':>8} {'events/s':>10} {'peak RSS MiB':>13} {'CPU s':>7}")
    what = f"verify_database, MACs too (ok={verify['ok']}, {n} events)"
    print(
        f"  {what:<44} "
        f"{verify['seconds']:8.2f} {n / verify['seconds']:10.0f} {verify_rss:13.0f} "
        f"{verify['cpu']:7.2f}"
    )
    print(
        f"  {'verify_database without the MAC key':<44} "
        f"{nomac['seconds']:8.2f} {n / nomac['seconds']:10.0f} {nomac_rss:13.0f} "
        f"{nomac['cpu']:7.2f}"
    )
    print(
        f"  {'verify_database, MACs, next page prefetched':<44} "
        f"{pre['seconds']:8.2f} {n / pre['seconds']:10.0f} {pre_rss:13.0f} {pre['cpu']:7.2f}"
    )
    print(
        f"  {'baseline: plain keyset SELECT of the rows':<44} {select_['seconds']:8.2f} "
        f"{select_['events'] / select_['seconds']:10.0f} {select_rss:13.0f} "
        f"{select_['cpu']:7.2f}"
    )
    print(
        f"  {'baseline: same SELECT on the driver cursor':<44} {driver['seconds']:8.2f} "
        f"{driver['events'] / driver['seconds']:10.0f} {driver_rss:13.0f} "
        f"{driver['cpu']:7.2f}"
    )
    print(
        f"  {'baseline: hashlib.sha256 chain, same bytes':<44} {sha['seconds']:8.2f} "
        f"{sha['events'] / sha['seconds']:10.0f} {sha_rss:13.0f} {sha['cpu']:7.2f}"
    )
    print(
        f"RESULT hub_audit_verify {label} events={n} seconds={verify['seconds']:.2f} "
        f"peak_rss_mib={verify_rss:.0f} nomac_s={nomac['seconds']:.2f} "
        f"prefetch_s={pre['seconds']:.2f} cpu_s={verify['cpu']:.2f} "
        f"select_s={select_['seconds']:.2f} driver_select_s={driver['seconds']:.2f} "
        f"sha256_s={sha['seconds']:.2f} baseline_s={select_['seconds'] + sha['seconds']:.2f} "
        f"load={os.getloadavg()[0]:.2f}"
    )


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_verify(*sys.argv[2:5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1000, help="result files to import")
    p.add_argument(
        "--batch-size",
        type=int,
        default=exchange.DEFAULT_IMPORT_BATCH,
        help="result files per import transaction",
    )
    p.add_argument("--events", type=int, default=1_000_000, help="audit events to verify")
    p.add_argument("--quick", action="store_true", help="100,000 audit events")
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    p.add_argument("--no-sqlite", action="store_true", help="import into PostgreSQL only")
    p.add_argument(
        "--profile", action="store_true", help="print a cProfile of each import (slows it)"
    )
    p.add_argument(
        "--audit-postgres",
        action="store_true",
        help="also fill and verify the audit log on PostgreSQL",
    )
    p.add_argument(
        "--no-pool",
        action="store_true",
        help="verify on the importing process's thread, never in worker processes (the "
        "default uses them for batches of more than 8 files on a machine with 2+ CPUs)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="PostgreSQL: before the detailed import, import the same files N more times "
        "into fresh copies of the hub database, alternately with and without the pool",
    )
    p.add_argument("--skip-import", action="store_true")
    p.add_argument("--skip-audit", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parents[2])
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    events = 100_000 if a.quick else a.events
    pg = None
    if not a.no_postgres:
        from tests.fixtures.dbservers import start_postgres

        # Started before TMPDIR moves into the (root-only) work directory: the server runs
        # as the postgres user in its own private directory.
        pg = start_postgres()
        global PG_DATA
        PG_DATA = pg.data_dir
        print(
            "PostgreSQL: throwaway server from tests/fixtures/dbservers.py "
            "(fsync=off, synchronous_commit=off)"
        )
    work = Path(tempfile.mkdtemp(prefix="tiangong-hub-bench-", dir=a.workdir))
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = str(work)
    print(f"work directory {work} (same disk as the data); python {sys.version.split()[0]}")
    try:
        if not a.skip_import:
            global PROFILE
            PROFILE = a.profile
            if a.no_pool:
                vars(result_import)["POOL_MIN_FILES"] = 1000  # no batch is larger
            runs = []
            if not a.no_sqlite:
                runs.append(("SQLite", f"sqlite:///{work / 'import.sqlite'}", work / "sqlite"))
            if pg is not None:
                pg.create_database("bench_import")
                runs.append(("PostgreSQL", pg.sqlalchemy_url("bench_import"), work / "pg"))
            def copy_db(name: str) -> str:
                assert pg is not None
                with pg.connect() as conn:
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE bench_import'.encode())
                return pg.sqlalchemy_url(name)

            for label, url, wdir in runs:
                pg_copies = copy_db if label == "PostgreSQL" else None
                print_import(bench_import(label, url, wdir, a.count, a.batch_size,
                                          pg_copies, a.repeat))
        if not a.skip_audit:
            root = make_keys("hub-bench").hub.root_envelope
            bench_audit("SQLite", f"sqlite:///{work / 'audit.sqlite'}", events, root)
            if pg is not None and a.audit_postgres:
                pg.create_database("bench_audit")
                bench_audit("PostgreSQL", pg.sqlalchemy_url("bench_audit"), events, root)
    finally:
        if pg is not None:
            from tests.fixtures.dbservers import stop_postgres

            stop_postgres(pg)
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
