#!/usr/bin/env python3
"""Run every benchmark script in bench/ and print a combined summary.

Each ``bench/*.py`` script (except this one and files starting with ``_``) is run with its
default arguments, one after the other (never in parallel: they would measure each other).
With ``--soak`` a script gets ``--soak`` (bundle_throughput maps it to ``--size 4G --repeat
3``), unless :data:`ARGS` lists its own arguments for the normal and the soak run
(live_agents: ``--quick`` normally, its full sizes with ``--soak``; agent_overhead and
hub_import: larger sizes with ``--soak``).

A script's full output is passed through as it runs; the summary at the end repeats the lines
that start with ``RESULT`` (the figures each script wants compared) and the exit status and
wall time of each script. Benchmarks print figures, they do not judge: the exit status is
non-zero only when a script failed to run.

Usage::

    .venv/bin/python bench/run_all.py [--soak] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: script stem -> (arguments in the normal run, arguments with --soak); others: ([], [--soak])
ARGS: dict[str, tuple[list[str], list[str]]] = {
    "live_agents": (["--quick"], ["--soak"]),  # full N=100/1000 takes ~15 min; soak adds 5000
    "agent_overhead": ([], ["--size", "1024", "--steps", "200"]),
    "hub_import": (["--quick"], ["--count", "5000"]),  # soak: 1,000,000 audit events too
    "live_wire": ([], ["--mib", "1024"]),
    "export_burst": (["--quick"], ["--agents", "5000"]),
}


def scripts() -> list[Path]:
    me = Path(__file__).resolve()
    return sorted(p for p in BENCH.glob("*.py")
                  if p.resolve() != me and not p.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", action="store_true", help="pass --soak (longer settings) to each")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this script (file name with or without .py; repeatable)")
    args = ap.parse_args(argv)

    chosen = scripts()
    if args.only:
        wanted = {n.removesuffix(".py") for n in args.only}
        chosen = [p for p in chosen if p.stem in wanted]
        missing = wanted - {p.stem for p in chosen}
        if missing:
            ap.error(f"no bench script named {', '.join(sorted(missing))}")
    summary: list[str] = []
    failed = 0
    for script in chosen:
        normal, soak = ARGS.get(script.stem, ([], ["--soak"]))
        cmd = [sys.executable, str(script), *(soak if args.soak else normal)]
        print(f"=== {script.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        results: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("RESULT "):
                results.append(line.rstrip("\n"))
        rc = proc.wait()
        seconds = time.perf_counter() - t0
        failed += rc != 0
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        summary.append(f"{script.name}: {status} in {seconds:.0f} s")
        summary.extend(f"  {r}" for r in results)
    print()
    print("=== summary" + (" (soak)" if args.soak else ""))
    for line in summary:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
