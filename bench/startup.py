#!/usr/bin/env python3
"""CPU of one short `tiangong` process per command: what every CLI call of the test suite
(and of an operator's script) pays before and around its work.

A hub (SQLite, no passphrase), an enrolled agent and one exported bundle are made in a work
directory with the real commands; then each measured command runs ``--repeat`` times and the
user + system CPU seconds of each process (``os.wait4``) are reported, min and median. With
``--tree LABEL=DIR`` (repeatable) the same commands run from other checkouts too
(``PYTHONPATH=DIR``, working directory DIR), alternating per repetition, so a branch and its
base are compared in the same run on the same data; ``--compile`` byte-compiles each tree
first (as ``make test`` does), otherwise a tree without ``__pycache__`` is measured as it is.

Figures only; nothing is judged. ``--quick``: 3 repetitions (about a minute on an idle
2-core machine).

Usage::

    .venv/bin/python bench/startup.py [--quick] [--repeat N] [--tree base=/path/to/main ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "releases" / "hello-1.0.0"
PACKAGES = ["agent", "bundle", "hub", "signing", "tiangong", "web"]


def _run(tree: Path, args: list[str]) -> None:
    """Run `tiangong ARGS` from ``tree`` (set-up steps); exit with its error if it fails."""
    proc = subprocess.run([sys.executable, "-m", "tiangong.cli", *args], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"tiangong {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")


def _cpu(tree: Path, args: list[str]) -> float:
    """CPU seconds (user + system) of one `tiangong ARGS` process run from ``tree`` (its
    working directory too: ``python -m`` puts that first on the import path)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tiangong.cli", *args], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=300, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"tiangong {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _setup(work: Path) -> dict[str, list[str]]:
    """A hub, an enrolled agent and one bundle in ``work``; the commands to measure."""
    hub_dir, home, usb, enroll = work / "hub", work / "agent", work / "usb", work / "enroll"

    def hub(user: str, *args: str) -> None:
        _run(REPO, ["hub", "--data-dir", str(hub_dir), "--local-admin", user, *args])

    hub("admin", "init", "--admin", "admin", "--hub-id", "bench-startup", "--sign-in", "none",
        "--insecure-no-passphrase")
    for user, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator")):
        hub("admin", "users", "create", user)
        hub("admin", "users", "grant", user, role)
    hub("admin", "environments", "create", "plant-a")
    _run(REPO, ["agent", "init", str(home), "--root", str(hub_dir / "root.json"), "--id",
                "plant-a-01", "--environment", "plant-a"])
    enroll.mkdir()
    for f in (home / "outbox").glob("enrollment-*.json"):
        shutil.copy(f, enroll)
    hub("carol", "import", str(enroll))
    hub("alice", "releases", "create", str(HELLO), "--create-product")
    hub("alice", "releases", "submit", "hello", "1.0.0")
    hub("admin", "environments", "subscribe", "plant-a", "--product", "hello", "--channel",
        "STABLE")
    hub("admin", "channels", "rule", "hello", "STABLE", "--approvals", "0")
    hub("bob", "releases", "approve", "hello", "1.0.0")
    hub("carol", "releases", "promote", "hello", "1.0.0")
    hub("carol", "releases", "promote", "hello", "1.0.0")
    hub("carol", "export", "--environment", "plant-a", "--out", str(usb))
    (bundle,) = usb.glob("*.tgb")
    at_hub = ["hub", "--data-dir", str(hub_dir), "--local-admin", "admin"]
    return {
        "version": ["--version"],
        "hub-help": ["hub", "--help"],
        "hub-users-list": [*at_hub, "users", "list"],
        "hub-deployments-list-json": [*at_hub, "deployments", "list", "--json"],
        "agent-status": ["agent", "status", "--home", str(home)],
        "bundle-verify": ["bundle", "verify", "--trust", str(hub_dir / "root.json"),
                          "--agent-id", "plant-a-01", "--environment", "plant-a", str(bundle),
                          "--no-progress"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs per command and tree")
    ap.add_argument("--quick", action="store_true", help="3 runs per command and tree")
    ap.add_argument("--soak", action="store_true", help="25 runs per command and tree")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="also measure the checkout in DIR (repeatable)")
    ap.add_argument("--compile", action="store_true",
                    help="byte-compile each tree's packages first (as make test does)")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the work directory")
    args = ap.parse_args(argv)
    repeat = 3 if args.quick else 25 if args.soak else args.repeat
    trees = [("this", REPO)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve())
                                for t in args.tree]
    if args.compile:
        for _, tree in trees:
            subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGES], cwd=tree,
                           check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="tiangong-bench-startup-", dir=args.workdir))
    try:
        commands = _setup(work)
        print(f"# {repeat} runs per command and tree; CPU = user + system seconds of the "
              f"process; load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        for name, command in commands.items():
            cpu: dict[str, list[float]] = {label: [] for label, _ in trees}
            for _ in range(repeat):
                for label, tree in trees:
                    cpu[label].append(_cpu(tree, command))
            for label, xs in cpu.items():
                print(f"RESULT startup tree={label} command={name} "
                      f"cpu_ms_min={min(xs) * 1000:.0f} "
                      f"cpu_ms_median={statistics.median(xs) * 1000:.0f} "
                      f"load={os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
