#!/usr/bin/env python3
"""Bundle throughput: ``tiangong bundle create`` / ``verify`` against tar | zstd | openssl.

Builds a deterministic mixed release payload (half incompressible "image layer" bytes in a
few large files, half SQL/YAML-like text in many small files), then times, in the same run:

* create:  ``tiangong bundle create``  vs  ``tar -cf - payload | zstd -3 -T0 | tee out.tar.zst
  | openssl dgst -sha256``
* verify:  ``tiangong bundle verify`` (signature, digests, decompress into staging)  vs
  ``openssl dgst -sha256 out.tar.zst && zstd -d -c out.tar.zst | tar -xf - -C dest``

and prints MB/s (content bytes / wall seconds, MB = 10^6 bytes), the ratios
baseline_time / tiangong_time (>= 0.8 means at least 0.8x as fast as the hand-made pipeline)
and the peak RSS of every measured command (``os.wait4`` per-child rusage; for a shell
pipeline that is the largest single process of the pipeline, not their sum).

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) before every timed
command when the kernel allows it; otherwise every command runs once untimed first so that
both sides start equally warm. The script says which it did.

Benchmarks print figures; they never fail on a threshold (STYLE.md §15). The exit status is
non-zero only when a command itself fails.

Usage::

    .venv/bin/python bench/bundle_throughput.py                 # 1 GiB, one repeat
    .venv/bin/python bench/bundle_throughput.py --size 4G --repeat 3
    .venv/bin/python bench/bundle_throughput.py --soak          # = --size 4G --repeat 3
    .venv/bin/python bench/bundle_throughput.py --create-only --repeat 5   # iterate on create
    .venv/bin/python bench/bundle_throughput.py --create-only --before /tmp/old  # A/B

``--before DIR`` also times ``bundle create`` from another source tree (``PYTHONPATH=DIR``
with this checkout's interpreter, e.g. ``git archive COMMIT | tar -x -C DIR``), in the same
alternation, and prints before/after.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB
TARGET_RATIO = 0.8  # baseline_time / tiangong_time, create (issue 15 §4)
TARGET_VERIFY_RATIO = 0.9  # the same for verify (issue 15 §4)
TARGET_SYNC_RATIO = 1.0  # against the pipelines followed by sync, both (issue 15 §4)
TARGET_RSS = 200 * MiB  # bytes, per tiangong process
N_LAYERS = 4  # large incompressible files ("image layers")
N_TEXT = 1536  # small text files; the release and bundle max_files limit is 2,000
CHUNK = 8 * MiB  # bytes written per call while generating
# Per text flavour; files are slices of it (reuse is beyond zstd -3's window).
CORPUS_BYTES = 8 * MiB  # bytes
PASSPHRASE = "bench-throughput-passphrase"  # noqa: S105 (throwaway keys of this bench)
SOAK_ARGS = ["--size", "4G", "--repeat", "3"]
QUICK_ARGS = ["--size", "256M"]  # a few minutes on the 2-core machine


def parse_size(text: str) -> int:
    """'1G', '512M', '4GiB', '1073741824' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" else t
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1G, 512M)") from None
    if value < 64 * MiB:
        raise argparse.ArgumentTypeError(f"size {text!r} is below the 64M this bench needs")
    return value


# --------------------------------------------------------------------------- payload


def _write_random(path: Path, size: int, key: bytes) -> None:
    """Incompressible, deterministic bytes: an AES-CTR keystream (fast, unlike randbytes)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = bytes(CHUNK)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(enc.update(zeros[:n]))
            left -= n


def _sql_corpus(rng: random.Random, size: int) -> bytes:
    tables = ["orders", "invoices", "customers", "line_items", "payments", "ledger"]
    words = ["alpha", "bravo", "delta", "omega", "paid", "open", "void", "EUR", "USD", "CNY"]
    out: list[str] = []
    n = 0
    while n < size:
        t = rng.choice(tables)
        if rng.random() < 0.02:
            line = (f"CREATE INDEX IF NOT EXISTS ix_{t}_{rng.randrange(999)} ON {t} "
                    f"(customer_id, created_at);\n")
        else:
            line = (f"INSERT INTO {t} (id, customer_id, amount, status, note, created_at) "  # noqa: S608
                    f"VALUES ({rng.randrange(10**9)}, {rng.randrange(10**6)}, "
                    f"{rng.randrange(10**7) / 100:.2f}, '{rng.choice(words)}', "
                    f"'{rng.choice(words)}-{rng.randrange(10**5):05d}', "
                    f"'2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
                    f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00');\n")
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _yaml_corpus(rng: random.Random, size: int) -> bytes:
    apps = ["billing", "ledger", "gateway", "scheduler", "reports", "auth"]
    out: list[str] = []
    n = 0
    while n < size:
        app = rng.choice(apps)
        doc = (
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
            f"  name: {app}-{rng.randrange(10**4)}\n  namespace: plant-{rng.randrange(40)}\n"
            f"  labels:\n    app: {app}\n    tier: {rng.choice(['web', 'worker', 'db'])}\n"
            f"spec:\n  replicas: {rng.randrange(1, 9)}\n  template:\n    spec:\n"
            f"      containers:\n        - name: {app}\n"
            f"          image: registry.local/{app}:{rng.randrange(10)}.{rng.randrange(40)}."
            f"{rng.randrange(100)}\n"
            f"          resources:\n            limits: {{cpu: {rng.randrange(100, 4000)}m, "
            f"memory: {rng.randrange(64, 4096)}Mi}}\n"
            f"          env:\n            - {{name: SEED, value: \"{rng.getrandbits(64):016x}\"}}\n"
        )
        out.append(doc)
        n += len(doc)
    return "".join(out).encode()[:size]


def build_release(root: Path, size: int) -> tuple[int, int]:
    """Write release.toml and the payload under ``root``; return (content bytes, file count)."""
    rng = random.Random(20261123)
    half = size // 2
    (root / "layers").mkdir(parents=True)
    (root / "sql").mkdir()
    (root / "k8s").mkdir()
    (root / "scripts").mkdir()
    script = b"#!/bin/sh\nset -eu\nls -l layers sql k8s | wc -l\n"
    (root / "scripts" / "apply.sh").write_bytes(script)
    total = len(script)
    count = 1

    # Half: a few large incompressible files.
    layer = half // N_LAYERS
    for i in range(N_LAYERS):
        n = layer if i < N_LAYERS - 1 else half - layer * (N_LAYERS - 1)
        _write_random(root / "layers" / f"layer-{i:02d}.tar", n, bytes([i + 1]) * 16)
        total += n
        count += 1

    # Half: many small text files with varied sizes, sliced from two generated corpora.
    text = size - half
    corpora = {"sql": _sql_corpus(rng, CORPUS_BYTES), "k8s": _yaml_corpus(rng, CORPUS_BYTES)}
    weights = [rng.uniform(0.25, 1.75) for _ in range(N_TEXT)]
    scale = text / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[-1] += text - sum(sizes)
    for i, n in enumerate(sizes):
        flavour = "sql" if i % 2 == 0 else "k8s"
        corpus = corpora[flavour]
        name = f"{i:04d}.sql" if flavour == "sql" else f"{i:04d}.yaml"
        with open(root / flavour / name, "wb") as f:
            left = n
            while left:
                take = min(left, len(corpus))
                off = rng.randrange(0, len(corpus) - take + 1)
                f.write(corpus[off:off + take])
                left -= take
        total += n
        count += 1

    (root / "release.toml").write_text(
        "# Generated by bench/bundle_throughput.py\nformat = 1\n\n[release]\n"
        'product = "bench"\nversion = "1.0.0"\n'
        'description = "Mixed payload: image layers and SQL/YAML text."\n\n'
        '[[steps]]\nname = "apply"\nkind = "shell"\nscript = "scripts/apply.sh"\n'
        'interpreter = "sh"\ntimeout = "10m"\n'
    )
    return total, count


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    seconds: float
    cpu: float  # user + system seconds of the command and its waited-for children
    rss: int  # bytes, peak of the largest single process
    stdout: str


class Runner:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.drop_caches = self._try_drop()

    @staticmethod
    def _try_drop() -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            return False
        return True

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Run:
        if self.drop_caches:
            self._try_drop()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # Read the (small) output before reaping; wait4 gives this child's own rusage.
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.stderr.write(err.decode(errors="replace"))
            raise SystemExit(f"command failed with exit {proc.returncode}: {' '.join(argv)}")
        return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024,
                   out.decode(errors="replace"))


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    mid = ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else None
    secs = statistics.median(r.seconds for r in runs)
    return Run(secs, statistics.median(r.cpu for r in runs), max(r.rss for r in runs),
               (mid or ordered[0]).stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=GiB, help="payload size (default 1G)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per command (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--workdir", type=Path, default=REPO.parent,
                    help="where to make the temporary directory (a disk, not tmpfs)")
    ap.add_argument("--soak", action="store_true", help=f"longer settings: {' '.join(SOAK_ARGS)}")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {' '.join(QUICK_ARGS)}")
    ap.add_argument("--create-only", action="store_true",
                    help="time only create and its baselines (half the time per repeat)")
    ap.add_argument("--before", type=Path, metavar="DIR",
                    help="also time bundle create from the source tree DIR (PYTHONPATH)")
    args = ap.parse_args(argv)
    if args.soak:
        args = ap.parse_args([*SOAK_ARGS, *(argv if argv is not None else sys.argv[1:])])
    elif args.quick:
        args = ap.parse_args([*QUICK_ARGS, *(argv if argv is not None else sys.argv[1:])])
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    tiangong = str(REPO / ".venv" / "bin" / "tiangong")
    for tool in ("tar", "zstd", "openssl", "tee"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bundle_throughput: {tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="tiangong-bench-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    if free < args.size * 4:
        shutil.rmtree(work)
        raise SystemExit(f"bundle_throughput: {work.parent} has {free / GiB:.1f} GiB free; "
                         f"this size needs about {args.size * 4 / GiB:.1f} GiB")
    (work / "tmp").mkdir()
    env = dict(os.environ, TIANGONG_KEY_PASSPHRASE=PASSPHRASE, TMPDIR=str(work / "tmp"),
               LC_ALL="C")
    try:
        return _bench(args, work, tiangong, env)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path, tiangong: str, env: dict[str, str]) -> int:
    def setup(*cmd: str) -> None:
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)

    t0 = time.perf_counter()
    content, nfiles = build_release(work / "payload", args.size)
    gen = time.perf_counter() - t0
    setup(tiangong, "keys", "generate", "--role", "root", "-o", "root.key",
          "--kdf-profile", "interactive")
    setup(tiangong, "keys", "generate", "--role", "release", "-o", "release.key",
          "--kdf-profile", "interactive")
    setup(tiangong, "keys", "generate", "--role", "audit", "-o", "audit.key",
          "--kdf-profile", "interactive")
    setup(tiangong, "keys", "root", "init", "--hub-id", "bench-hub", "--root-key", "root.key",
          "--threshold", "1", "--release-key", "release.key.pub", "--audit-key",
          "audit.key.pub", "--expires", "365d", "-o", "root.json")

    runner = Runner(env)
    create_tg = [tiangong, "bundle", "create", "payload", "--key", "release.key", "--root",
                 "root.json", "--agent", "site-01", "--environment", "plant-a", "--sequence",
                 "1", "-o", "out.tgb", "--no-progress"]
    create_base = ["sh", "-c", "tar -cf - payload | zstd -q -3 -T0 | tee out.tar.zst "
                   "| openssl dgst -sha256"]
    verify_tg = [tiangong, "bundle", "verify", "out.tgb", "--trust", "root.json",
                 "--agent-id", "site-01", "--environment", "plant-a", "--json", "--no-progress"]
    verify_base = ["sh", "-c", "openssl dgst -sha256 out.tar.zst && "
                   "zstd -q -d -c out.tar.zst | tar -xf - -C dest"]
    # Informational: the same pipelines made as durable as Tiangong (which fsyncs its output
    # and every staged file). The ratios above are against the plain pipelines.
    create_sync = ["sh", "-c", create_base[2] + " && sync"]
    before_env = None
    create_before: list[str] = []
    if args.before is not None:
        before_env = dict(env, PYTHONPATH=str(args.before.resolve()))
        create_before = [sys.executable, "-c", "import sys; from tiangong.cli import main; "
                         "sys.argv[0] = 'tiangong'; sys.exit(main())", *create_tg[1:]]
        create_before[create_before.index("out.tgb")] = "out-before.tgb"
    verify_sync = ["sh", "-c", verify_base[2] + " && sync"]

    print(f"payload: {content:,} bytes in {nfiles} files ({N_LAYERS} random layers, "
          f"{N_TEXT} SQL/YAML text files), generated in {gen:.1f} s")
    print(f"machine: {os.cpu_count()} CPUs; work dir {work}; load average at the start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if runner.drop_caches:
        print("page cache: dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every "
              "timed command")
    else:
        print("page cache: cannot drop here; every command runs once untimed first so both "
              "sides are equally warm")
        (work / "out.tgb").unlink(missing_ok=True)
        for argv in (create_tg, create_base):
            runner.run(argv, cwd=work)

    keys = ["create_tg", "create_base", "create_sync"]
    if create_before:
        keys.append("create_before")
    if not args.create_only:
        keys += ["verify_tg", "verify_base", "verify_sync"]
    results: dict[str, list[Run]] = {k: [] for k in keys}
    for i in range(args.repeat):
        # Alternate which side goes first so drift (thermal, other load) hits both.
        order = [("create_tg", create_tg), ("create_base", create_base),
                 ("create_sync", create_sync)]
        if create_before:
            order.insert(1, ("create_before", create_before))
        if i % 2:
            order.reverse()
        for key, argv in order:
            if key == "create_tg":
                (work / "out.tgb").unlink(missing_ok=True)
            (work / "out-before.tgb").unlink(missing_ok=True)
            results[key].append(runner.run(
                argv, cwd=work, env=before_env if key == "create_before" else None))
        order = [("verify_tg", verify_tg), ("verify_base", verify_base),
                 ("verify_sync", verify_sync)]
        if i % 2:
            order.reverse()
        for key, argv in order if not args.create_only else []:
            shutil.rmtree(work / "dest", ignore_errors=True)
            (work / "dest").mkdir()
            results[key].append(runner.run(argv, cwd=work))
        print(f"  run {i + 1}/{args.repeat}: " + ", ".join(
            f"{k} {v[-1].seconds:.2f} s" for k, v in results.items()), flush=True)
    leftovers = list((work / "tmp").iterdir())

    m = {k: median_run(v) for k, v in results.items()}
    verify = "verify_tg" in m
    tgb = (work / "out.tgb").stat().st_size
    tzst = (work / "out.tar.zst").stat().st_size
    print()
    print(f"{'command':<44} {'seconds':>8} {'MB/s':>8} {'CPU s':>7} {'peak RSS':>10}")
    labels = {
        "create_tg": "tiangong bundle create",
        "create_base": "tar | zstd -3 -T0 | tee | openssl dgst",
        "create_sync": "  same, then sync (informational)",
        "create_before": f"  bundle create from {args.before}",
        "verify_tg": "tiangong bundle verify (full, staged)",
        "verify_base": "openssl dgst && zstd -d | tar -x",
        "verify_sync": "  same, then sync (informational)",
    }
    for key, label in labels.items():
        if key not in m:
            continue
        r = m[key]
        print(f"{label:<44} {r.seconds:>8.2f} {content / r.seconds / 1e6:>8.0f} "
              f"{r.cpu:>7.1f} {r.rss / MiB:>6.0f} MiB")
    print(f"output size: out.tgb {tgb:,} bytes, out.tar.zst {tzst:,} bytes "
          f"(ratio {tgb / tzst:.3f})")
    if leftovers:
        print(f"WARNING: verify left {len(leftovers)} entries in its temp dir")
    print()

    def ratio(base: str, tg: str, best: bool = False) -> str:
        if tg not in results:
            return "-"
        if best:
            b, t = min(r.seconds for r in results[base]), min(r.seconds for r in results[tg])
            return f"{b / t:.2f} ({t:.2f} s vs {b:.2f} s)"
        return f"{m[base].seconds / m[tg].seconds:.2f}"

    rss = max(m[k].rss for k in ("create_tg", "verify_tg") if k in m)
    print(f"durable baselines (informational): create ratio "
          f"{ratio('create_sync', 'create_tg')}, verify ratio "
          f"{ratio('verify_sync', 'verify_tg')} (pipeline + sync)")
    if args.repeat > 1:
        # On a shared machine the median mixes in other jobs' load; the fastest run of each
        # command is the least disturbed one. Both are shown; the RESULT lines use the median.
        print(f"best of {args.repeat} (informational): create ratio "
              f"{ratio('create_base', 'create_tg', True)}, verify ratio "
              f"{ratio('verify_base', 'verify_tg', True)}")
    if create_before:
        print(f"before/after (informational): bundle create from {args.before} "
              f"{m['create_before'].seconds:.2f} s, this checkout {m['create_tg'].seconds:.2f} s "
              f"(x{m['create_before'].seconds / m['create_tg'].seconds:.2f}); against the "
              f"pipeline + sync: before {ratio('create_sync', 'create_before')}, after "
              f"{ratio('create_sync', 'create_tg')}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def verdict(value: float, target: float) -> str:
        return f"{'meets target' if value >= target else 'BELOW TARGET'} >= {target}"

    head = f"RESULT bundle_throughput size={args.size / GiB:g}GiB repeat={args.repeat}"
    rc = m["create_base"].seconds / m["create_tg"].seconds
    rcs = m["create_sync"].seconds / m["create_tg"].seconds
    print(f"{head} create_ratio={rc:.2f} ({verdict(rc, TARGET_RATIO)})")
    if verify:
        rv = m["verify_base"].seconds / m["verify_tg"].seconds
        rvs = m["verify_sync"].seconds / m["verify_tg"].seconds
        print(f"{head} verify_ratio={rv:.2f} ({verdict(rv, TARGET_VERIFY_RATIO)})")
        print(f"{head} create_sync_ratio={rcs:.2f} ({verdict(rcs, TARGET_SYNC_RATIO)}) "
              f"verify_sync_ratio={rvs:.2f} ({verdict(rvs, TARGET_SYNC_RATIO)})")
    else:
        print(f"{head} create_sync_ratio={rcs:.2f} ({verdict(rcs, TARGET_SYNC_RATIO)}) "
              "(verify not run: --create-only)")
    print(f"{head} tiangong_peak_rss={rss / MiB:.0f}MiB "
          f"({'meets target' if rss <= TARGET_RSS else 'ABOVE TARGET'} <= "
          f"{TARGET_RSS // MiB} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
