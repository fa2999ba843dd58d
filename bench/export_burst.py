#!/usr/bin/env python3
"""Export burst: CPU per export of a rollout to N agents, in one process, no network.

Prints figures; asserts nothing. Sets up a hub exactly as ``bench/live_agents.py`` does
(``tiangong hub init``: file-backed SQLite and real keys; environment ``bench``, the approved
release ``hello 1.0.0``, N agents enrolled), queues the release for the environment (one
deployment per agent, one commit), then exports every deployment the way the live server's
push loop does in a burst: :meth:`hub.live_hub.LiveHub._export_many` over
``LIVE_EXPORT_BATCH`` agents at a time (``--call-size N``: N; ``--live-sizes``: the live
server's burst, ``hub.live_hub._burst_sizes``: ``BURST_STEPS`` first, then 100 to 200),
into the live spool (``live-outbox/<agent>/``).
Nothing is sent: this isolates the export path (database, signing, writing, fsync).

Figures: CPU seconds of this process (``time.process_time``: user + system of every thread,
which holds better than wall time on a machine others load) per export, and wall seconds;
the load average before and after. ``--worker-gc`` sets up Python's collector as an export
worker process does (frozen start-up objects, a gen-0 threshold of 50,000); ``--made-dirs``
makes the agents' spool directories first, as the live server does when they connect: both
together measure the export worker as a live burst runs it. ``--profile FILE`` runs the
exports under cProfile (timed in CPU seconds) and writes the 40 most expensive functions
(cumulative and own time) to FILE (and the raw statistics to FILE.pstats); ``--sql`` counts
the SQL statements executed per export.

Usage::

    .venv/bin/python bench/export_burst.py --agents 1000
    .venv/bin/python bench/export_burst.py --agents 1000 --profile /tmp/export.prof.txt --sql
    .venv/bin/python bench/export_burst.py --quick           # N = 200, under a minute
    .venv/bin/python bench/export_burst.py --agents 1000 --worker-gc --made-dirs  # as live
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live_agents import init_bench_hub, make_agents, queue_release


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import event, func, select

    from hub.config import load_config
    from hub.db import Deployment, make_engine, make_session_factory
    from hub.keystore import load_hub_keys
    from hub.live_exports import WORKER_GC_THRESHOLD
    from hub.live_hub import LIVE_EXPORT_BATCH, LiveHub, _burst_sizes
    from hub.services.export import make_spool_dirs

    work = Path(tempfile.mkdtemp(prefix="tiangong-bench-export-", dir=args.workdir))
    try:
        data = work / "hub"
        specs, _ = make_agents(args.agents)
        t0 = time.perf_counter()
        init_bench_hub(data, specs)
        print(f"setup: {args.agents} agents enrolled in {time.perf_counter() - t0:.1f} s")
        _, queued = queue_release(data)
        config = load_config(data)
        keys = load_hub_keys(data)
        engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
        statements = 0
        if args.sql:
            @event.listens_for(engine, "before_cursor_execute")
            def count(*_: Any) -> None:
                nonlocal statements
                statements += 1

        hub = LiveHub(session_factory=make_session_factory(engine), keys=keys,
                      data_dir=config.data_dir, actor=None)
        ids = [s["id"] for s in specs]
        if args.made_dirs:  # as the live server makes them when an agent connects
            make_spool_dirs(hub.spool_root, ids)
        if args.worker_gc:  # as an export worker process sets it up (hub.live_exports)
            gc.freeze()
            gc.set_threshold(WORKER_GC_THRESHOLD, *gc.get_threshold()[1:])
        # CPU time, not wall time: what a function costs holds on a loaded machine
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        load_before = _load()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        written = failed = 0
        if args.live_sizes:  # the live server's calls: BURST_STEPS first, then the batch
            sizes = list(_burst_sizes(len(ids)))
        else:
            sizes = [args.call_size or LIVE_EXPORT_BATCH] * len(ids)
        start = calls = 0
        for size in sizes:
            if start >= len(ids):
                break
            counts = hub._export_many(ids[start:start + size])
            start += size
            calls += 1
            written += sum(w for w, _ in counts.values())
            failed += sum(f for _, f in counts.values())
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        user = usage.ru_utime - usage0.ru_utime  # Python and libraries
        system = usage.ru_stime - usage0.ru_stime  # the kernel: file creation, fsync, ...
        load_after = _load()
        with make_session_factory(engine)() as s:
            exported = s.scalar(select(func.count()).select_from(Deployment)
                                .where(Deployment.state == "exported"))
        engine.dispose()
        out = {"agents": args.agents, "queued": queued, "written": written, "failed": failed,
               "calls": calls,
               "exported_rows": exported, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
               "cpu_ms_per_export": round(1000 * cpu / max(1, written), 2),
               "wall_ms_per_export": round(1000 * wall / max(1, written), 2),
               "user_ms_per_export": round(1000 * user / max(1, written), 2),
               "sys_ms_per_export": round(1000 * system / max(1, written), 2),
               "load_before": load_before, "load_after": load_after}
        if args.sql:
            out["sql_per_export"] = round(statements / max(1, written), 1)
        print(f"export burst: {written} bundles for {args.agents} agents in {cpu:.2f} CPU s "
              f"({out['cpu_ms_per_export']} ms each: user {out['user_ms_per_export']}, "
              f"system {out['sys_ms_per_export']}), {wall:.2f} s wall "
              f"({out['wall_ms_per_export']} ms each)"
              + (f", {out['sql_per_export']} SQL statements each" if args.sql else "")
              + f"; load average {load_before} -> {load_after}")
        print(f"RESULT export_burst agents={args.agents} calls={calls} written={written} "
              f"failed={failed} "
              f"cpu_ms_per_export={out['cpu_ms_per_export']} "
              f"user_ms={out['user_ms_per_export']} sys_ms={out['sys_ms_per_export']} "
              f"wall_ms_per_export={out['wall_ms_per_export']}"
              + (f" sql_per_export={out['sql_per_export']}" if args.sql else "")
              + f" load={load_before.split()[0]}")
        if profiler is not None:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text)
            stats.sort_stats("cumulative").print_stats(60)
            stats.sort_stats("tottime").print_stats(40)
            Path(args.profile).write_text(text.getvalue())
            profiler.dump_stats(f"{args.profile}.pstats")  # for pstats' print_callees
            print(f"profile: {args.profile} (raw: {args.profile}.pstats)")
        return out
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="N = 200")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the exports into FILE")
    parser.add_argument("--sql", action="store_true", help="count SQL statements per export")
    parser.add_argument("--call-size", type=int, default=0, metavar="N",
                        help="agents per export call (default: LIVE_EXPORT_BATCH)")
    parser.add_argument("--live-sizes", action="store_true",
                        help="export calls sized as the live server's burst (BURST_STEPS, "
                             "then a quarter of those left, 100 to 200)")
    parser.add_argument("--workdir", default=str(Path(__file__).resolve().parents[2]),
                        help="where the temporary hub goes (a real disk, not tmpfs)")
    parser.add_argument("--made-dirs", action="store_true",
                        help="the agents' spool directories exist before the burst")
    parser.add_argument("--worker-gc", action="store_true",
                        help="Python's collector set up as in an export worker process "
                             "(gc.freeze, hub.live_exports.WORKER_GC_THRESHOLD)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents = 200
    run(args)


if __name__ == "__main__":
    main()
