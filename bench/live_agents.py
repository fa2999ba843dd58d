#!/usr/bin/env python3
"""Live agents: N simulated agents on loopback against a hub live server in its own process.

Prints figures; asserts nothing. The hub runs in a **child process** started from this file
(``--hub-child``): it initialises a data directory with ``tiangong hub init`` (file-backed
SQLite, real keys), creates an environment, users and an approved release with the hub's
services, enrolls the N agents (their Ed25519 public keys, generated here) with
``enroll_agent``, and then execs ``tiangong hub live --bind 127.0.0.1:PORT
--insecure-loopback`` (``--tls``: ``wss://`` with the certificate ``hub init`` issued) — the
operator's own command, same pid, real 30 s heartbeat interval, real push loop. The N agents
live in ``--agent-processes`` worker processes of their own (default one per 2,500 agents, at
least two; ``--agent-worker``), each under its own open-files limit, so the hub's limit only
has to hold the hub's N sockets: N = 10,000 fits the 20,000 of the test machine. Each agent
has its own Ed25519 key, speaks through the real ``websockets`` client (no WebSocket pings:
heartbeats are the keepalive, as in ``agent/live.py``) and the real
:class:`bundle.sync.AgentSide`, and authenticates for real (HELLO, CHALLENGE, signed AUTH,
WELCOME); with ``--tls`` it pins the hub's CA, verifies the
certificate and the host name and signs the channel binding as ``agent/live.py`` does.
What the simulated agents skip: nothing of the handshake; of a delivery, the bundle
verification and the run (bytes are checked against the offer's SHA-256 and dropped, or
written and fsynced in the transfer phase), the journal, and the result upload.
``--profile-hub FILE`` samples the Python stacks of the hub's threads that are on a CPU,
during the burst only — with ``--idle-only`` (connect, then the idle window alone) during the
idle window (py-spy is not installed).

For each N (default 100 and 1,000; ``--soak`` adds 5,000) it reports:

1. *connect*: seconds until all N are authenticated (at most ``--connect-concurrency``
   handshakes at a time, as after a hub restart), hub CPU seconds spent on it, and when the
   hub is quiet again (each connection starts an export of that agent's queued work);
2. *idle*: hub CPU (user+sys seconds per minute of wall time, from ``/proc/<pid>/stat``) and
   RSS while the agents heartbeat every 30 s (the interval WELCOME announces), phases spread
   uniformly, over a window of ``--idle-seconds`` (shorter than an hour, the real interval:
   the window sees N × window / 30 heartbeats);
3. *steady, queued → received*: what an operator sees. With all N agents connected and
   idle, this process queues ONE deployment (release ``hello 1.0.1``) for one random agent
   and commits (t0); the hub's push loop finds it, exports and offers; the agent stamps the
   moment the whole bundle passed the SHA-256 check (t1). The next sample starts after t1
   and a random gap of up to ``--steady-gap`` seconds; ``--steady-samples`` distinct agents.
   p50/p99/max of t1 − t0;
4. *burst, queued → received*: this process queues the approved release ``hello 1.0.0`` for
   the environment at once (one deployment per agent, committed: t0), the worst case: N
   exports queued in one push-loop round. min/p50/p99/max of t1 − t0;
5. *logs*: ``--log-agents`` agents each send ``--log-messages`` LOG messages of
   ``--log-bytes`` bytes within the protocol's rate (200/s per agent), then a HEARTBEAT whose
   ACK proves the hub handled everything before it; aggregate MB/s of lines stored in
   ``live-logs/`` (goal ≥ 10 MB/s).

Once per run, *transfer* (``--transfer-mib``, ``--transfer-repeat`` rounds): one hub with two
agents and one bare ``websockets`` echo server (its own process) serve six transfers a
round, the order reversed every other round, each received by a **fresh process** of its
own (``--transfer-receiver``: an earlier transfer's heap in the same process changed the
next one's page faults threefold). Tiangong: the hub offers a file dropped into an agent's
live spool; the agent (the real AgentSide and :class:`bundle.live_file.FileReceiver`, as
``agent/live.py``, reading its socket in 2 MiB pieces, each frame's payload copied once
(:mod:`agent.live_frames`), at most 4 messages queued in ``websockets`` and 4 MiB waiting
for its worker as that does; ``--agent-reads-default``: asyncio's 256 KiB, 16 messages and
32 MiB, ``--agent-frames-default``: websockets' own reader, three copies of each payload,
for a before/after) checks offsets, hashes
every byte, and either writes it and fsyncs every 8 MiB before its ACK (*disk*) or drops it
(*memory*). Bare: the echo server sends the same file in 1 MiB messages, the client puts
them into *disk* (written and fsynced every 8 MiB in its event loop, no hash: the issue's
baseline), *memory* (dropped, no hash), or the agent's own sink, *agent_disk* / *agent_memory* (a
``FileReceiver`` for an offer of the same size and SHA-256, fed as the agent feeds it: the
like-for-like figure, only the protocol missing).
Window: from the OFFER (Tiangong; the hub has hashed the spooled file by then, reported as
``offer``: an export hands the hub its digest, so a real delivery skips it) or the open
connection (bare) to the last byte checked and, to disk, fsynced. Per transfer: MB/s, the
receiver's CPU (all threads; its event loop apart), the sender's CPU (the whole process, its
CPU-time clock read from the receiver at both ends of the window), the receiver's page
faults; and the window itself (``window``: start and end on ``CLOCK_MONOTONIC``, the
receiver's pid) to pick its samples out of a ``perf record -k mono``. Reported: medians and
min–max per variant, ratios per round (a pair ran next to each
other) and their median and spread, and the CPU ratio (bare CPU per MiB, both ends, over
Tiangong's): on two shared cores the wall clock of a 100 ms transfer is noise, the CPU
spent per MiB is not.

Usage::

    .venv/bin/python bench/live_agents.py                 # N = 100, 1000; 60 s idle; 256 MiB
    .venv/bin/python bench/live_agents.py --soak          # N = 100, 1000, 5000; 120 s idle
    .venv/bin/python bench/live_agents.py --quick         # N = 20; smoke run
    .venv/bin/python bench/live_agents.py --agents 3 --quick --json out.json
    .venv/bin/python -u bench/live_agents.py --agents 1000 --tls --burst-only   # ~40 s
    .venv/bin/python -u bench/live_agents.py --transfer-only --transfer-mib 64 \
        --transfer-repeat 9                   # the transfer against bare websockets, ~40 s
    chrt -r 1 .venv/bin/python -u bench/live_agents.py --transfer-only --transfer-mib 64 \
        --transfer-repeat 9     # as root on a machine other work keeps busy: the bench's
                                # processes ahead of it (docs/benchmarks.md, session 11)
    .venv/bin/python -u bench/live_agents.py --agents 1000 --tls --burst-only \
        --profile-hub profile.txt       # where the burst's hub CPU goes, by function
    .venv/bin/python -u bench/live_agents.py --agents 10000 --tls --idle-only \
        --profile-hub idle.txt          # connect, then only the idle window (~4 min)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent import heap
from agent.live import (
    QUEUE_MESSAGES,
    _give_back_heap,
    _peer_binding,
    pinned_context,
    read_in_large_pieces,
)
from agent.live_frames import read_frames_in_one_copy
from bundle.live_file import FileReceiver
from bundle.sync import (
    MAX_MESSAGE_BYTES,
    AgentSide,
    ChunkReceived,
    HeartbeatAcked,
    Offer,
    OfferReceived,
    PeerError,
    Refused,
    TransferDone,
    Welcomed,
)
from signing.keys import BoxKeyPair, SigningKey

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "releases" / "hello-1.0.0"
MiB = 1024 * 1024
ACK_EVERY_BYTES = 8 * MiB  # as agent/live.py: fsync + ACK every 8 MiB and at the end
TAG = "@@live_agents "  # prefix of the child's machine-readable stdout lines
TICK = os.sysconf("SC_CLK_TCK")
STEADY_VERSION = "1.0.1"  # the release the steady phase queues, one agent at a time
AGENTS_PER_PROCESS = 2500  # simulated agents per worker process (default --agent-processes)
CONNECT_ATTEMPTS = 6  # connection attempts of a simulated agent (then it counts as failed)


# --------------------------------------------------------------------------- measuring


def _raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one: N agents need N sockets here and N
    in the hub (children inherit the raised limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def proc_faults(pid: int) -> int:
    """Minor page faults of process ``pid`` (all its threads), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[7])  # minflt (field 10)


def proc_children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the live server's export workers), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.extend([int(child), *proc_children(int(child))])
    return found


def proc_runqueue_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` spent runnable but waiting for a CPU (all threads,
    /proc/<pid>/task/*/schedstat): on a machine shared with other work, a hub that waits
    much is starved and its figures say more about the machine than about the hub."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def proc_rss(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) of ``pid`` in MiB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def sqlite_commits_per_s(directory: Path, count: int = 200) -> float:
    """Baseline for everything the hub writes per message: single-row UPDATE + COMMIT on a
    WAL SQLite file in ``directory`` (the hub's pragmas; an fsync per commit), per second."""
    import sqlite3

    path = directory / "commit-rate.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v REAL)")
        db.execute("INSERT INTO t VALUES (1, 0)")
        t0 = time.perf_counter()
        for i in range(count):
            db.execute("BEGIN")
            db.execute("UPDATE t SET v = ? WHERE id = 1", (i,))
            db.execute("COMMIT")
        return count / (time.perf_counter() - t0)
    finally:
        db.close()
        for p in directory.glob("commit-rate.db*"):
            p.unlink()


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- the hub child


def _emit(event: str, **fields: Any) -> None:
    print(TAG + json.dumps({"event": event, **fields}), flush=True)


def _hub_child(data_dir: Path, agents_file: Path, port: int, tls: bool = False,
               profile: Path | None = None) -> None:
    """Initialise a hub in ``data_dir`` and enroll the agents of ``agents_file``, then
    become ``tiangong hub live`` on 127.0.0.1:``port`` (exec: the same pid, so the parent's
    /proc figures are the live server's)."""
    agents = json.loads(agents_file.read_text())
    init_bench_hub(data_dir, agents)
    _raise_fd_limit()
    # Every simulated agent connects from 127.0.0.1: the per-address cap of unauthenticated
    # connections (meant for one site's address) must not throttle the connect phase.
    for name in ("MAX_UNAUTHENTICATED_PER_ADDRESS", "MAX_UNAUTHENTICATED"):
        os.environ.setdefault(f"TIANGONG_HUB_LIVE_{name}", str(max(256, 2 * len(agents))))
    # --tls: wss:// with the certificate `hub init` issued (its CA is what agents pin).
    plain = [] if tls else ["--insecure-loopback"]
    tiangong = str(Path(sys.executable).with_name("tiangong"))
    argv = ["hub", "--data-dir", str(data_dir), "live", "--bind", f"127.0.0.1:{port}", *plain]
    if profile is not None:
        _run_sampled(argv, profile, data_dir.parent / PROFILE_WINDOW)
        return
    os.execv(tiangong, [tiangong, *argv])  # noqa: S606


def init_bench_hub(data_dir: Path, agents: list[dict[str, str]]) -> None:
    """``tiangong hub init`` in ``data_dir`` (SQLite file, real keys), then with the hub's
    services: environment ``bench``, users ``op``/``dev``/``appr``, the approved releases
    ``hello 1.0.0`` and ``1.0.1``, and ``agents`` enrolled in ``bench``."""
    from hub.config import load_config
    from hub.db import make_engine, make_session_factory
    from hub.keystore import load_hub_keys
    from hub.services.agents import EnrollmentRequest, enroll_agent
    from hub.services.approvals import approve_release
    from hub.services.context import ServiceContext, utc_now
    from hub.services.environments import create_environment
    from hub.services.releases import create_release, submit_release
    from hub.services.users import create_user, get_user, grant_role

    tiangong = str(Path(sys.executable).with_name("tiangong"))
    subprocess.run([tiangong, "hub", "--data-dir", str(data_dir), "init", "--admin", "admin",
                    "--hub-id", "hub-bench", "--insecure-no-passphrase"],
                   check=True, stdout=subprocess.DEVNULL)
    config = load_config(data_dir)
    keys = load_hub_keys(data_dir)
    # The audit MAC key (hub.audit_mac): an event written without it breaks the chain, and
    # the live server then refuses to sign the checkpoint an export needs.
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
    t_setup = time.perf_counter()
    with make_session_factory(engine)() as s:
        def ctx(user: str) -> ServiceContext:
            return ServiceContext(s, utc_now, get_user(s, user), keys, config.releases_dir)

        create_environment(ctx("admin"), "bench")
        for user, role in (("op", "operator"), ("dev", "developer"), ("appr", "approver")):
            create_user(ctx("admin"), user)
            grant_role(ctx("admin"), user, role)
        s.commit()
        for source in (HELLO, _steady_release(data_dir.parent)):
            release = create_release(ctx("dev"), source, create_missing_product=True)
            submit_release(ctx("dev"), release)
            approve_release(ctx("appr"), release)
            s.commit()
        op = ctx("op")
        for i, a in enumerate(agents):
            enroll_agent(op, "bench", EnrollmentRequest(
                hostname=a["id"], ed25519_public=a["public"], x25519_public=a["box"],
                agent_id=a["id"], environment="bench", hub_id=keys.hub_id))
            if i % 500 == 499:
                s.commit()
        s.commit()
    engine.dispose()
    _emit("setup", hub_id=keys.hub_id, setup_seconds=round(time.perf_counter() - t_setup, 2))


SAMPLE_SECONDS = 0.005  # --profile-hub: seconds between two samples of every thread's stack
PROFILE_WINDOW = "profile-window"  # --profile-hub: samples count while this file exists


def _thread_cpu(ident: int) -> float:
    """CPU seconds the thread ``ident`` (``threading.get_ident()``) has used, or -1."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, ValueError):
        return -1.0


def _run_sampled(argv: list[str], out: Path, window: Path | None = None) -> None:
    """Run ``tiangong ARGV`` in this process (the same pid) while a thread samples the Python
    stack of every other thread every :data:`SAMPLE_SECONDS` (py-spy is not installed),
    each sample weighed by the CPU time the thread used since its previous sample (its own
    CPU clock): a CPU profile of all threads, the event loop and the pools together (a
    thread waiting for a lock, a socket or the disk weighs nothing). With ``window``, only
    while that file exists (the bench creates it for the burst and removes it after). At
    exit, write to ``out`` the CPU milliseconds per thread, per function — *self* (the
    innermost Python frame: C code it calls included) and *total* (anywhere on the stack)
    — and per collapsed stack, most first."""
    import collections
    import threading

    from tiangong.cli import root

    stacks: collections.Counter[str] = collections.Counter()  # stack -> CPU microseconds
    threads: collections.Counter[str] = collections.Counter()
    last: dict[int, float] = {}
    wall = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal wall
        me = threading.get_ident()
        while not stop.wait(SAMPLE_SECONDS):
            if window is not None and not window.exists():
                last.clear()
                continue
            t0 = time.perf_counter()
            named = {t.ident: t for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                thread = named.get(tid)
                if tid == me or thread is None:
                    continue
                cpu = _thread_cpu(tid)
                used = cpu - last.get(tid, cpu)
                last[tid] = cpu
                if used <= 0:
                    continue
                names = []
                f: Any = frame
                while f is not None:
                    names.append(f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}")
                    f = f.f_back
                micros = round(used * 1e6)
                threads[thread.name.rstrip("0123456789_").removesuffix("-")] += micros
                stacks[";".join(reversed(names))] += micros
            wall += SAMPLE_SECONDS + time.perf_counter() - t0

    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    try:
        root(args=argv, prog_name="tiangong", standalone_mode=False)
    finally:
        stop.set()
        sampler.join()
        busy = sum(stacks.values())
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        for stack, count in stacks.items():
            frames = stack.split(";")
            own[frames[-1]] += count
            for name in set(frames):
                total[name] += count
        with out.open("w") as fh:
            fh.write(f"# {busy / 1000:.0f} ms of CPU in the sampled threads over about "
                     f"{wall:.1f} s of wall time\n# by thread (ms, %)\n")
            for name, count in threads.most_common():
                fh.write(f"{count // 1000:8d} {100 * count / max(1, busy):5.1f}% {name}\n")
            fh.write("# self (ms, %)\n")
            for name, count in own.most_common(50):
                fh.write(f"{count // 1000:8d} {100 * count / max(1, busy):5.1f}% {name}\n")
            fh.write("# total (ms, %)\n")
            for name, count in total.most_common(80):
                fh.write(f"{count // 1000:8d} {100 * count / max(1, busy):5.1f}% {name}\n")
            fh.write("# stacks (ms)\n")
            for stack, count in stacks.most_common(200):
                fh.write(f"{count // 1000} {stack}\n")


def _steady_release(work: Path) -> Path:
    """``hello 1.0.1``: the example release under another version, for the steady phase
    (a release can be in flight only once per agent, and the burst queues ``hello 1.0.0``)."""
    dest = work / f"hello-{STEADY_VERSION}"
    if not dest.exists():
        shutil.copytree(HELLO, dest)
        manifest = dest / "release.toml"
        text = manifest.read_text()
        manifest.write_text(text.replace('version = "1.0.0"', f'version = "{STEADY_VERSION}"', 1))
    return dest


class OneQueuer:
    """Queues one deployment of ``hello 1.0.1`` for one agent, as an operator's process
    would, with one engine kept open for all samples.

    ``queue_deployment`` queues a release for every agent of an environment; this writes the
    same row and the same ``deployment.queue`` audit event for a single agent."""

    def __init__(self, data_dir: Path) -> None:
        from hub.config import load_config
        from hub.db import make_engine, make_session_factory
        from hub.keystore import load_hub_keys

        self.config = load_config(data_dir)
        self.keys = load_hub_keys(data_dir)
        self.engine = make_engine(self.config.database_url, audit_mac=self.keys.audit_mac)
        self.sessions = make_session_factory(self.engine)

    def queue(self, agent_id: str) -> float:
        """Queue and commit; returns the time of the commit."""
        from hub.db import Deployment
        from hub.services import audit
        from hub.services.agents import get_agent
        from hub.services.context import ServiceContext, utc_now
        from hub.services.releases import get_release
        from hub.services.users import get_user

        with self.sessions() as s:
            op = ServiceContext(s, utc_now, get_user(s, "op"), self.keys,
                                self.config.releases_dir)
            agent = get_agent(s, agent_id)
            release = get_release(s, "hello", STEADY_VERSION)
            now = op.now()
            dep = Deployment(release=release, environment=agent.environment, agent=agent,
                             state="queued", queued_by=op.actor_name, queued_at=now,
                             updated_at=now)
            s.add(dep)
            s.flush()
            audit.record(op, "deployment.queue", "deployment", str(dep.id),
                         {"release": release.label, "content_hash": release.content_hash,
                          "environment": agent.environment.name, "agent": agent_id})
            s.commit()
            return time.time()

    def close(self) -> None:
        self.engine.dispose()


def queue_release(data_dir: Path) -> tuple[float, int]:
    """As an operator in another process would (web UI, CLI): queue the approved release for
    the environment, one deployment per enrolled agent, and commit. Returns (the time of the
    commit, deployments queued)."""
    from hub.config import load_config
    from hub.db import make_engine, make_session_factory
    from hub.keystore import load_hub_keys
    from hub.services.context import ServiceContext, utc_now
    from hub.services.deployments import queue_deployment
    from hub.services.releases import get_release
    from hub.services.users import get_user

    config = load_config(data_dir)
    keys = load_hub_keys(data_dir)
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
    try:
        with make_session_factory(engine)() as s:
            op = ServiceContext(s, utc_now, get_user(s, "op"), keys, config.releases_dir)
            deps = queue_deployment(op, get_release(s, "hello", "1.0.0"), "bench")
            s.commit()
            return time.time(), len(deps)
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- baseline child


def _echo_child(path: Path) -> None:
    """Serve ``path`` to every client in 1 MiB binary messages, then close that connection
    (the baseline's sender); runs until terminated, one process for the whole series, as
    the hub's live server is."""

    async def send_file(ws: ServerConnection) -> None:
        with path.open("rb") as fh:
            while block := fh.read(MiB):
                await ws.send(block)
        await ws.close()

    async def main() -> None:
        async with serve(send_file, "127.0.0.1", 0, compression=None,
                         max_size=MAX_MESSAGE_BYTES) as server:
            _emit("ready", port=next(iter(server.sockets)).getsockname()[1], pid=os.getpid())
            await asyncio.Future()  # until terminated

    asyncio.run(main())


# --------------------------------------------------------------------------- baseline sinks


class _FileSink:
    """The bare sink (the issue's baseline): append to a file and fsync every 8 MiB and at
    the end, in the event loop; no hash, no check."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("wb")

    def write(self, offset: int, data: bytes) -> None:
        self.fh.write(data)

    def sync(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    async def room(self) -> None:
        pass

    async def finish(self) -> None:
        self.fh.close()


class _NullSink(_FileSink):
    """The bare sink without a disk: bytes are dropped, nothing hashed."""

    def __init__(self) -> None:
        pass

    def write(self, offset: int, data: bytes) -> None:
        pass

    def sync(self) -> None:
        pass

    async def finish(self) -> None:
        pass


class _AgentSink(_FileSink):
    """The agent's own sink for the like-for-like baseline: a
    :class:`bundle.live_file.FileReceiver` for an offer of the payload's size and SHA-256,
    fed as agent/live.py feeds it (offsets checked, every byte hashed, written in its worker
    thread, an fsync every 8 MiB in its syncer, reading paused while 4 MiB wait, the size
    and SHA-256 compared and a last fsync at the end). ``path`` None: checked, hashed and
    dropped, as the bench's memory agent. Only the protocol is missing: no RESUME, ACK,
    DONE or RECEIVED, no framing."""

    def __init__(self, path: Path | None, size: int, sha256: str) -> None:
        self.file = FileReceiver.open(path, Offer("bench", "bench.tgb", size, sha256))

    def write(self, offset: int, data: bytes) -> None:
        self.file.write(offset, data)

    def sync(self) -> None:
        self.file.sync()  # nobody waits for it: no ACK to send (finish() waits for it)

    async def room(self) -> None:
        await self.file.room()

    async def finish(self) -> None:
        try:
            await self.file.wait(self.file.finish())
        finally:
            self.file.close()


# --------------------------------------------------------------------------- simulated agents


@dataclass
class _Incoming:
    """A bundle coming in through :class:`bundle.live_file.FileReceiver`, as in
    agent/live.py: checked, hashed, written and fsynced in its worker thread, an ACK when
    each fsync is done. Without a sink directory the bytes are checked and dropped: N
    agents on one disk would measure that disk, not the hub (each real agent has its own)."""

    file: FileReceiver
    acked: int = 0
    syncing: int = 0


def _log_text(size: int) -> str:
    """``size`` bytes of 80-column output lines."""
    return ("x" * 79 + "\n") * (size // 80) + "x" * (size % 80)


@dataclass
class SimAgent:
    """One agent: its own key, the real AgentSide, the real websockets client."""

    agent_id: str
    key: SigningKey
    hub_id: str
    sink_dir: Path | None = None  # None: received bytes are hashed and dropped
    # called with (agent id, transfer, time.time()) when a bundle passed its SHA-256 check
    on_received: Any = None
    on_offered: Any = None  # called with the transfer id when its OFFER arrives
    # as agent/live.py in its own process: the heap's free memory back to the kernel after
    # the last incoming transfer (agent.heap); not for many agents sharing one process
    give_back_heap: bool = False
    # as agent/live.py: the socket read in pieces of 2 MiB, not asyncio's 256 KiB
    # (read_in_large_pieces); the transfer phase's agent (the fleet's keep the default)
    large_reads: bool = False
    # as agent/live.py: each frame's payload copied once (agent.live_frames), unless
    # --agent-frames-default (the stock reader, for a before/after)
    one_copy_frames: bool = False
    # the agent's buffers before session 11 (--agent-reads-default): websockets' queue of
    # 16 messages and 32 MiB waiting for the FileReceiver's worker, not QUEUE_MESSAGES and
    # bundle.live_file.MAX_PENDING_BYTES
    old_buffers: bool = False
    gave_back: Any = None  # the future of the last give-back (agent/live.py's, in a thread)
    last_chunk: float = 0.0  # time.perf_counter() when the last CHUNK was handed over
    conn: AgentSide = field(init=False)
    ws: ClientConnection | None = None
    heartbeat: int = 0
    offered: dict[str, float] = field(default_factory=dict)  # transfer -> time.time()
    received: dict[str, float] = field(default_factory=dict)
    heartbeats_acked: int = 0
    heartbeats_sent: int = 0
    heartbeat_rtts: list[float] = field(default_factory=list)  # seconds, HEARTBEAT -> ACK
    error: str | None = None
    _incoming: dict[str, _Incoming] = field(default_factory=dict)
    _pings: dict[int, asyncio.Future[float]] = field(default_factory=dict)
    _ping_id: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _acks: set[asyncio.Task[None]] = field(default_factory=set)
    _got: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.conn = AgentSide(self.agent_id, self.hub_id, self.key)

    async def flush(self) -> None:
        """Send what AgentSide queued, in order (one sender at a time, as agent/live.py)."""
        assert self.ws is not None
        async with self._lock:
            for message in self.conn.data_to_send():
                await self.ws.send(message)

    async def connect(self, url: str, rng: random.Random | None = None,
                      ssl: Any = None) -> None:
        """Connect and authenticate; returns once WELCOME arrived, then reads in a task and,
        given ``rng``, heartbeats from now on (as agent/live.py does after WELCOME).

        ``ssl``: a context pinning the hub's CA (``wss://``), as agent/live.py's
        ``pinned_context``; the AUTH signature then covers the certificate's
        tls-server-end-point, as the real agent's does."""
        self.error = None
        self.ws = await connect(url, compression=None, max_size=MAX_MESSAGE_BYTES,
                                max_queue=16 if self.old_buffers else QUEUE_MESSAGES,
                                open_timeout=120, ssl=ssl,
                                ping_interval=None)  # as agent/live.py: heartbeats only
        if self.large_reads:
            read_in_large_pieces(self.ws)
        if self.one_copy_frames:
            read_frames_in_one_copy(self.ws)
        # A fresh protocol object for each connection (a retry starts from HELLO again).
        self.conn = AgentSide(self.agent_id, self.hub_id, self.key,
                              binding=_peer_binding(self.ws) if ssl is not None else b"")
        self.conn.send_hello()
        await self.flush()
        while not self.conn.is_open:
            message = await self.ws.recv()
            assert isinstance(message, bytes)
            self.conn.receive_data(message)
            for event in self.conn.events_received():
                if isinstance(event, Welcomed):
                    self.heartbeat = event.heartbeat
                elif isinstance(event, Refused | PeerError):
                    raise RuntimeError(f"{self.agent_id}: hub refused: {event.code} "
                                       f"{event.text}")
            await self.flush()
        self._tasks.append(asyncio.create_task(self._read()))
        if rng is not None:
            self.start_heartbeats(rng)

    @property
    def connected(self) -> bool:
        return self.ws is not None and self.ws.close_code is None

    def start_heartbeats(self, rng: random.Random) -> None:
        """Heartbeat every WELCOME interval; the first after a random phase, so N agents
        spread their heartbeats evenly as agents that connected at different times do."""
        self._tasks.append(asyncio.create_task(self._heartbeats(rng.uniform(0, self.heartbeat))))

    async def _heartbeats(self, phase: float) -> None:
        await asyncio.sleep(phase)
        while True:
            sent = time.time()
            self.heartbeats_sent += 1
            self.heartbeat_rtts.append(await self.ping() - sent)
            await asyncio.sleep(self.heartbeat)

    async def ping(self) -> float:
        """Send a HEARTBEAT and wait for its ACK: the hub handles an agent's messages in
        order, so the ACK means everything sent before it was handled."""
        self._ping_id += 1
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[self._ping_id] = waiter
        self.conn.send_heartbeat(self._ping_id)
        await self.flush()
        return await waiter

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                self.conn.receive_data(message)
                for event in self.conn.events_received():
                    await self._on_event(event)
                await self.flush()
        except (ConnectionClosed, Exception) as exc:  # recorded, reported by the caller
            self.error = f"{type(exc).__name__}: {exc}"
        if self.error is None and self.ws.close_code not in (None, 1000, 1001):
            self.error = f"closed {self.ws.close_code} {self.ws.close_reason}"

    async def _ack_when_durable(self, transfer: str, inc: _Incoming, synced: Any) -> None:
        durable = await inc.file.wait(synced)
        if self._incoming.get(transfer) is inc and durable > inc.acked:
            inc.acked = durable
            self.conn.send_ack(transfer, durable)
            await self.flush()

    async def _on_event(self, event: Any) -> None:
        if isinstance(event, HeartbeatAcked):
            self.heartbeats_acked += 1
            waiter = self._pings.pop(event.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(time.time())
        elif isinstance(event, OfferReceived):
            if self.on_offered is not None:
                self.on_offered(event.offer.transfer)
            self.offered[event.offer.transfer] = time.time()
            path = (None if self.sink_dir is None
                    else self.sink_dir / f"{self.agent_id}-{event.offer.name}.part")
            file = (FileReceiver.open(path, event.offer, max_pending=32 * MiB) if self.old_buffers
                    else FileReceiver.open(path, event.offer))
            self._incoming[event.offer.transfer] = _Incoming(file)
            self.conn.send_resume(event.offer.transfer, 0)
        elif isinstance(event, ChunkReceived):
            inc = self._incoming[event.transfer]
            inc.file.write(event.offset, event.data)
            self.last_chunk = time.perf_counter()
            end = inc.file.offset
            if end - inc.syncing >= ACK_EVERY_BYTES or end == inc.file.offer.size:
                inc.syncing = end
                task = asyncio.create_task(
                    self._ack_when_durable(event.transfer, inc, inc.file.sync()))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)
            await inc.file.room()
        elif isinstance(event, TransferDone):
            inc = self._incoming.pop(event.transfer)
            await inc.file.wait(inc.file.finish())  # size and SHA-256 of the whole file
            inc.file.close()
            self.received[event.transfer] = time.time()
            self.conn.send_received(event.transfer)
            if self.give_back_heap and not self._incoming:
                self.gave_back = _give_back_heap()
            self._got.set()
            if self.on_received is not None:
                self.on_received(self.agent_id, event.transfer, self.received[event.transfer])
        elif isinstance(event, Refused | PeerError):
            self.error = f"{event.code}: {event.text}"

    async def wait_received(self) -> None:
        await self._got.wait()

    async def wait_new(self, known: int) -> None:
        """Return once more than ``known`` bundles were received."""
        while len(self.received) <= known:
            self._got.clear()
            await self._got.wait()

    async def send_logs(self, count: int, size: int, bundle_id: str) -> int:
        """Send ``count`` LOG messages of ``size`` bytes for ``bundle_id`` (a bundle the hub
        exported for this agent: others close the connection) as fast as the protocol's
        rate allows, then ping; returns the body bytes sent."""
        text = _log_text(size)
        seq = 0
        while seq < count:
            wait = self.conn.log_wait()
            if wait > 0:
                await asyncio.sleep(wait)
            batch = 0
            while seq < count and batch < 64 and self.conn.log_wait() == 0:
                self.conn.send_log(bundle_id, 0, seq, "stdout", text)
                seq += 1
                batch += 1
            await self.flush()
        await self.ping()
        return count * len(text.encode())


    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(1001, "going away"), 10)


# --------------------------------------------------------------------------- agent workers


def _worker_reply(event: str, **fields: Any) -> None:
    print(TAG + json.dumps({"event": event, **fields}), flush=True)


def _agent_worker(spec_file: Path) -> None:
    """A child holding a share of the simulated agents (``--agent-worker``): commands as JSON
    lines on stdin, answers and one ``received`` line per bundle on stdout. Each worker
    stays within its own open-files limit (raised to the hard limit)."""
    _raise_fd_limit()
    asyncio.run(_worker_main(json.loads(spec_file.read_text())))


async def _worker_main(spec: dict[str, Any]) -> None:
    def received(agent_id: str, transfer: str, at: float) -> None:
        _worker_reply("received", agent=agent_id, transfer=transfer, t=at,
                      offered=agents[agent_id].offered.get(transfer))

    agents = {a["id"]: SimAgent(a["id"], SigningKey(bytes.fromhex(a["seed"])), spec["hub_id"],
                                on_received=received) for a in spec["agents"]}
    ssl = pinned_context(Path(spec["ca"])) if spec.get("ca") else None
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    rtt_marks = {aid: 0 for aid in agents}
    _worker_reply("ready", pid=os.getpid(), agents=len(agents))
    while line := await stdin.readline():
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "connect":
            rng = random.Random(cmd["seed"])
            t0 = self_cpu()
            todo = list(agents.values())
            retries = 0
            first: list[str] = []
            for attempt in range(CONNECT_ATTEMPTS):
                # As real agents: one that was refused or timed out (a hub too busy for the
                # handshake deadline) tries again after a backoff.
                if attempt:
                    await asyncio.sleep(rng.uniform(1, 2 ** attempt))
                    retries += len(todo)
                results = await _gather_bounded([a.connect(cmd["url"], rng, ssl) for a in todo],
                                                cmd["concurrency"])
                errors = _errors(todo, results)
                first = first or errors[:3]
                todo = [a for a, r in zip(todo, results, strict=True)
                        if a.error or isinstance(r, BaseException)]
                if not todo:
                    break
            _worker_reply("connected", failed=len(todo), errors=first, retries=retries,
                          cpu=self_cpu() - t0, heartbeat=next(iter(agents.values())).heartbeat)
        elif what == "stats":
            rtts: list[float] = []
            for aid, agent in agents.items():
                rtts += agent.heartbeat_rtts[rtt_marks[aid]:]
                rtt_marks[aid] = len(agent.heartbeat_rtts)
            _worker_reply("stats", cpu=self_cpu(),
                          acked=sum(a.heartbeats_acked for a in agents.values()),
                          unanswered=sum(a.heartbeats_sent - len(a.heartbeat_rtts)
                                         for a in agents.values()),
                          connected=sum(a.connected for a in agents.values()),
                          rtts=[round(r, 4) for r in rtts])
        elif what == "logs":
            senders = [agents[aid] for aid in cmd["bundles"]]
            sent = await asyncio.gather(*(a.send_logs(cmd["count"], cmd["size"],
                                                      cmd["bundles"][a.agent_id])
                                          for a in senders), return_exceptions=True)
            _worker_reply("logs", errors=_errors(senders, sent))
        elif what == "close":
            await asyncio.gather(*(a.close() for a in agents.values()))
            _worker_reply("closed")
            return


class AgentWorkers:
    """N simulated agents in ``processes`` child processes (``--agent-worker``), so that
    each process stays within the open-files limit and the agents' own CPU (handshakes,
    heartbeats, hashing) is spread over processes apart from the hub's."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.pids: list[int] = []
        self.replies: list[asyncio.Queue[dict[str, Any]]] = []
        self.received: dict[str, dict[str, float]] = {}  # agent -> transfer -> time
        self.offered: dict[str, dict[str, float]] = {}  # agent -> transfer -> its OFFER's time
        self.arrived = asyncio.Event()  # set when wait_new's last agent received its bundle
        # wait_new's agents still waiting -> the bundles each held before (None: no wait)
        self._waiting: dict[str, int] | None = None
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, work: Path, specs: list[dict[str, str]], keys: list[SigningKey],
                    hub_id: str, processes: int, ca: Path | None) -> AgentWorkers:
        self = cls()
        share = -(-len(specs) // processes)
        for w in range(processes):
            part = [{"id": s["id"], "seed": k.seed.hex()}
                    for s, k in zip(specs[w * share:(w + 1) * share],
                                    keys[w * share:(w + 1) * share], strict=True)]
            if not part:
                break
            spec_file = work / f"agents-worker{w}.json"
            spec_file.write_text(json.dumps({"hub_id": hub_id, "agents": part,
                                             "ca": str(ca) if ca else ""}))
            spec_file.chmod(0o600)  # the agents' private keys
            err = (work / f"agents-worker{w}-stderr.log").open("ab")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--agent-worker", str(spec_file),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=1 << 24)
            err.close()
            for s in part:
                self.received[s["id"]] = {}
            self.procs.append(proc)
            self.replies.append(asyncio.Queue())
            self._readers.append(asyncio.create_task(self._read(proc, self.replies[-1])))
        for ready in await self.ask_all({"cmd": "noop"}, expect="ready", send=False):
            self.pids.append(ready["pid"])
        return self

    async def _read(self, proc: asyncio.subprocess.Process,
                    replies: asyncio.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace")
            if not text.startswith(TAG):
                continue
            doc = json.loads(text[len(TAG):])
            if doc["event"] == "received":
                held = self.received[doc["agent"]]
                held[doc["transfer"]] = doc["t"]
                waiting = self._waiting
                if waiting is not None and len(held) > waiting.get(doc["agent"], len(held)):
                    del waiting[doc["agent"]]
                    if not waiting:
                        self.arrived.set()
                if doc.get("offered") is not None:
                    self.offered.setdefault(doc["agent"], {})[doc["transfer"]] = doc["offered"]
            else:
                replies.put_nowait(doc)
        replies.put_nowait({"event": "exited", "code": await proc.wait()})

    async def ask_all(self, cmd: dict[str, Any], *, expect: str, send: bool = True,
                      timeout: float = 3600.0) -> list[dict[str, Any]]:
        """Send ``cmd`` to every worker; their answers (each must be ``expect``)."""
        if send:
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write((json.dumps(cmd) + "\n").encode())
                await proc.stdin.drain()
        answers = []
        for queue in self.replies:
            doc = await asyncio.wait_for(queue.get(), timeout)
            if doc["event"] != expect:
                raise RuntimeError(f"agent worker said {doc}, expected {expect!r}")
            answers.append(doc)
        return answers

    async def ask(self, worker: int, cmd: dict[str, Any], expect: str) -> dict[str, Any]:
        proc = self.procs[worker]
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await proc.stdin.drain()
        doc = await self.replies[worker].get()
        if doc["event"] != expect:
            raise RuntimeError(f"agent worker said {doc}, expected {expect!r}")
        return doc

    async def wait_new(self, agent_ids: list[str], known: dict[str, int],
                       timeout: float) -> None:
        """Until every agent of ``agent_ids`` holds more bundles than ``known`` says (or
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        # Each arrival takes its agent out of ``waiting`` as it is read (_read), which wakes
        # this once, after the last: rescanning the agents still waiting at every arrival
        # cost this process O(N²) — CPU taken from the hub and the agents on the same cores
        # during a burst.
        self._waiting = waiting = {a: known[a] for a in agent_ids
                                   if len(self.received[a]) <= known[a]}
        self.arrived.clear()
        try:
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), deadline - time.monotonic())
        finally:
            self._waiting = None

    async def cpu(self) -> float:
        return float(sum(s["cpu"] for s in await self.ask_all({"cmd": "stats"},
                                                                expect="stats")))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ask_all({"cmd": "close"}, expect="closed", timeout=120)
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for task in self._readers:
            task.cancel()


# --------------------------------------------------------------------------- the parent


class HubProcess:
    """A child process: its tagged stdout lines, its log, its /proc figures."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.pid = proc.pid
        self.data_dir = Path()
        self.port = 0

    @classmethod
    async def start(cls, work: Path, agents: list[dict[str, str]], *, tls: bool = False,
                    profile: Path | None = None) -> tuple[HubProcess, dict[str, Any]]:
        """Set a hub up and run ``tiangong hub live`` in a child (``tls``: wss://, else
        plain ws:// on loopback); returns once it listens."""
        agents_file = work / "agents.json"
        agents_file.write_text(json.dumps(agents))
        stderr_path = work / "hub-stderr.log"
        port = _free_port()
        with stderr_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--hub-child", str(work / "hub"), str(agents_file),
                "--port", str(port), *(["--tls"] if tls else []),
                *(["--profile-hub", str(profile)] if profile else []),
                stdout=asyncio.subprocess.PIPE, stderr=err, limit=1 << 20)
        hub = cls(proc, stderr_path)
        hub.data_dir, hub.port = work / "hub", port
        setup = await hub.expect("setup", 1800)
        deadline = time.monotonic() + 120
        while "live server for hub" not in stderr_path.read_text(errors="replace"):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tiangong hub live did not start; its log "
                                   f"({stderr_path}):\n"
                                   f"{stderr_path.read_text(errors='replace')[-3000:]}")
            await asyncio.sleep(0.1)
        return hub, setup

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next tagged line of the child, which must be ``event``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"child: no {event!r} within {timeout:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                tail = self.stderr_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"child exited ({await self.proc.wait()}) before "
                                   f"{event!r}; its stderr ({self.stderr_path}):\n{tail}")
            text = line.decode(errors="replace")
            if text.startswith(TAG):
                doc: dict[str, Any] = json.loads(text[len(TAG):])
                if doc["event"] != event:
                    raise RuntimeError(f"child said {doc}, expected {event!r}")
                return doc

    def cpu(self) -> float:
        """CPU seconds of the live server and its export worker processes."""
        return self.own_cpu() + self.workers_cpu()

    def own_cpu(self) -> float:
        return proc_cpu(self.pid)

    def workers_cpu(self) -> float:
        total = 0.0
        for child in proc_children(self.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += proc_cpu(child)
        return total

    def rss(self) -> tuple[float, float]:
        return proc_rss(self.pid)

    async def stop(self) -> None:
        """SIGTERM (``tiangong hub live`` closes every connection with 1001 and exits)."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def make_agents(n: int, prefix: str = "a") -> tuple[list[dict[str, str]], list[SigningKey]]:
    """N agent ids with fresh Ed25519 (identity) and X25519 (box) keys; the hub gets only
    the public halves, as from an enrollment request."""
    keys = [SigningKey.generate() for _ in range(n)]
    specs = [{"id": f"{prefix}{i:05d}", "public": k.public.raw.hex(),
              "box": BoxKeyPair.generate().public.raw.hex()} for i, k in enumerate(keys)]
    return specs, keys


async def _gather_bounded(coros: list[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def _errors(agents: list[SimAgent], results: list[Any] | None = None) -> list[str]:
    """One line per agent that failed: its own connection error, else its task's exception
    (``results`` in the order of ``agents``)."""
    results = results or [None] * len(agents)
    found = []
    for agent, result in zip(agents, results, strict=True):
        if agent.error:
            found.append(f"{agent.agent_id}: {agent.error}")
        elif isinstance(result, BaseException):
            found.append(f"{agent.agent_id}: {type(result).__name__}: {result}")
    return found


def _bundle_ids(db: Path) -> dict[str, str]:
    """agent id -> the id of the newest bundle the hub exported for it (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT a.agent_id, d.bundle_id FROM deployments d JOIN agents a "
                            "ON a.id = d.agent_id WHERE d.bundle_id IS NOT NULL "
                            "ORDER BY d.id").fetchall()
    finally:
        conn.close()
    return {agent_id: bundle_id for agent_id, bundle_id in rows}


def _audit_head(db: Path) -> int:
    """The highest audit sequence number in the hub's SQLite file (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0])
    finally:
        conn.close()


def _burst_rows(db: Path) -> list[tuple[str, float | None, float | None, float | None]]:
    """(agent id, claimed, exported, delivered) of the burst's deployments (release ``hello
    1.0.0``) as Unix times from the hub's rows (None: not yet), read-only."""
    import sqlite3
    from datetime import UTC, datetime

    def unix(text: str | None) -> float | None:
        return (None if text is None
                else datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT a.agent_id, d.claimed_at, d.exported_at, d.delivered_at FROM deployments d "
            "JOIN agents a ON a.id = d.agent_id JOIN releases r ON r.id = d.release_id "
            "WHERE r.version = '1.0.0'").fetchall()
    finally:
        conn.close()
    return [(agent, unix(c), unix(e), unix(d)) for agent, c, e, d in rows]


async def _burst_timeline(db: Path, t_queued: float, received: dict[str, float],
                          offered: dict[str, float], wait: float = 30.0) -> dict[str, Any]:
    """Where a burst's agents were when (issue 15 §4: what the tail waits on): for the
    agents ranked by the time their bundle passed its check, the seconds after the queue's
    commit at which the hub claimed and exported their deployment (its rows:
    ``claimed_at``, ``exported_at``, one time per export call), the agent got the OFFER
    and received it, and the hub recorded it delivered (``delivered_at``, one per batch).
    Waits up to ``wait`` seconds for the delivered records of the last ones."""
    deadline = time.monotonic() + wait
    while True:
        rows = await asyncio.to_thread(_burst_rows, db)
        if all(d is not None for _, _, _, d in rows) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    hub_times = {agent: (c, e, d) for agent, c, e, d in rows}
    ranked = sorted(received, key=received.__getitem__)
    out: dict[str, Any] = {}
    stages = ("claimed", "exported", "offered", "received", "delivered")

    def at(agent: str) -> tuple[float | None, ...]:
        claimed, exported, delivered = hub_times.get(agent, (None, None, None))
        return (claimed, exported, offered.get(agent), received[agent], delivered)

    rel = {stage: [] for stage in stages}  # type: dict[str, list[float]]
    for agent in ranked:
        for stage, t in zip(stages, at(agent), strict=True):
            if t is not None:
                rel[stage].append(t - t_queued)
    for stage in stages:
        if rel[stage]:
            out[f"timeline_{stage}_first_ms"] = round(min(rel[stage]) * 1000)
            out[f"timeline_{stage}_last_ms"] = round(max(rel[stage]) * 1000)
    out["timeline_export_calls"] = len({e for _, e, _ in hub_times.values() if e is not None})
    out["timeline_delivered_batches"] = len({d for _, _, d in hub_times.values()
                                             if d is not None})
    # the agent at each rank: "claimed/exported/offered/received/delivered", ms ("-": none)
    for p in (1, 10, 50, 90, 99, 100):
        agent = ranked[min(len(ranked) - 1, max(0, round(p / 100 * len(ranked)) - 1))]
        out[f"timeline_p{p}_ms"] = "/".join(
            "-" if t is None else str(round((t - t_queued) * 1000)) for t in at(agent))
    # per agent, the time between two stages: "p50/p99/max" ms over the burst
    gaps = {"export_to_offer": (1, 2), "offer_to_received": (2, 3),
            "received_to_delivered": (3, 4), "claim_to_export": (0, 1)}
    for name, (a, b) in gaps.items():
        spans = [end - begin for begin, end in ((t[a], t[b]) for t in map(at, ranked))
                 if begin is not None and end is not None]
        if spans:
            out[f"timeline_{name}_ms"] = "/".join(
                str(round(v * 1000)) for v in (percentile(spans, 50), percentile(spans, 99),
                                               max(spans)))
    return out


async def _settle(hub: HubProcess, since: float, steady: int = 3,
                  limit: float = 900.0) -> bool:
    """Wait until the hub's audit log has not grown for ``steady`` seconds (or ``limit``
    seconds since ``since``); True when it became steady. Each connection starts an export
    of the agent's queued work (an audit checkpoint only when it wrote a bundle); heartbeats
    do not write to the audit log."""
    last, same = -1, 0
    while time.perf_counter() - since < limit:
        head = await asyncio.to_thread(_audit_head, hub.data_dir / "hub.db")
        same = same + 1 if head == last else 0
        if same >= steady:
            return True
        last = head
        await asyncio.sleep(1.0)
    return False


def _latency_figures(prefix: str, latencies: list[float]) -> dict[str, int]:
    """``<prefix>_min_ms``, ``_p50_ms``, ``_p99_ms``, ``_max_ms`` of ``latencies`` (seconds);
    none when nothing arrived."""
    if not latencies:
        return {}
    return {f"{prefix}_min_ms": round(min(latencies) * 1000),
            f"{prefix}_p50_ms": round(percentile(latencies, 50) * 1000),
            f"{prefix}_p99_ms": round(percentile(latencies, 99) * 1000),
            f"{prefix}_max_ms": round(max(latencies) * 1000)}


async def _steady(hub: HubProcess, fleet: AgentWorkers, args: argparse.Namespace,
                  rng: random.Random, out: dict[str, Any]) -> None:
    """Phase 3: one deployment at a time to one random idle agent (distinct agents), the
    next after the previous was received and a random gap; figures into ``out``."""
    samples = min(args.steady_samples, len(fleet.received))
    if samples <= 0:
        return
    queuer = await asyncio.to_thread(OneQueuer, hub.data_dir)
    latencies: list[float] = []
    cpu0, t_phase = hub.cpu(), time.perf_counter()
    try:
        for agent_id in rng.sample(sorted(fleet.received), samples):
            await asyncio.sleep(rng.uniform(0, args.steady_gap))
            known = {agent_id: len(fleet.received[agent_id])}
            t0 = await asyncio.to_thread(queuer.queue, agent_id)
            await fleet.wait_new([agent_id], known, args.deliver_timeout)
            if len(fleet.received[agent_id]) <= known[agent_id]:
                break  # reported as fewer received than queued
            latencies.append(max(fleet.received[agent_id].values()) - t0)
    finally:
        await asyncio.to_thread(queuer.close)
    wall = time.perf_counter() - t_phase
    out["deliver1_samples"] = samples
    out["deliver1_received"] = len(latencies)
    out.update(_latency_figures("deliver1", latencies))
    out["deliver1_hub_cpu_s_per_bundle"] = round((hub.cpu() - cpu0) / max(1, len(latencies)), 3)
    print(f"  steady, queued -> received (one deployment at a time to a random idle agent, "
          f"{samples} samples over {wall:.1f} s, gaps up to {args.steady_gap} s): "
          f"{len(latencies)}/{samples} received; min {out.get('deliver1_min_ms')} ms, p50 "
          f"{out.get('deliver1_p50_ms')} ms, p99 {out.get('deliver1_p99_ms')} ms, max "
          f"{out.get('deliver1_max_ms')} ms; hub CPU {out['deliver1_hub_cpu_s_per_bundle']} s "
          "per sample (idle heartbeats included)", flush=True)


async def fleet_run(n: int, args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    """Phases 1-5 for N agents against a fresh hub child, the agents in
    ``--agent-processes`` worker processes; the figures go into ``out`` as they are measured
    (so a later phase that fails keeps the earlier ones)."""
    specs, keys = make_agents(n)
    t_start = time.perf_counter()
    hub, ready = await HubProcess.start(work, specs, tls=args.tls, profile=args.profile_hub)
    out["hub_setup_s"] = round(time.perf_counter() - t_start, 1)
    out["enroll_s"] = ready["setup_seconds"]
    scheme, ca = ("wss", hub.data_dir / "tls" / "ca.crt") if args.tls else ("ws", None)
    url = f"{scheme}://127.0.0.1:{hub.port}/live"
    out["tls"] = bool(args.tls)
    processes = args.agent_processes or max(2, -(-n // AGENTS_PER_PROCESS))
    fleet = await AgentWorkers.start(work, specs, keys, ready["hub_id"], min(processes, n), ca)
    out["agent_processes"] = len(fleet.pids)
    out["agent_pids"] = fleet.pids
    rng = random.Random(n)
    try:
        # 1. connect + authenticate
        cpu0, mine0, t0 = hub.cpu(), await fleet.cpu(), time.perf_counter()
        share = max(1, -(-args.connect_concurrency // len(fleet.pids)))
        answers = await fleet.ask_all({"cmd": "connect", "url": url, "concurrency": share,
                                       "seed": n}, expect="connected")
        failed = sum(a["failed"] for a in answers)
        out["connect_retries"] = sum(a["retries"] for a in answers)
        out["connect_first_errors"] = [e for a in answers for e in a["errors"]][:3]
        if failed:
            first = next(e for a in answers for e in a["errors"])
            raise RuntimeError(f"{failed} of {n} agents failed to connect; first: {first}")
        out["connect_s"] = round(time.perf_counter() - t0, 2)
        out["connect_hub_cpu_s"] = round(hub.cpu() - cpu0, 2)
        out["connect_client_cpu_s"] = round(await fleet.cpu() - mine0, 2)
        out["heartbeat_s"] = answers[0]["heartbeat"]
        # Each connection starts an export of that agent's queued deployments (none here),
        # after WELCOME: wait until that is done, so the idle window measures idling.
        settle = await _settle(hub, t0)
        out["connect_settled_s"] = round(time.perf_counter() - t0, 2)
        out["connect_settle_hub_cpu_s"] = round(hub.cpu() - cpu0, 2)
        print(f"  connect+auth ({'wss:// with the pinned CA' if args.tls else 'plain ws://'}, "
              f"agents in {len(fleet.pids)} processes): {n} agents in {out['connect_s']} s (at "
              f"most {args.connect_concurrency} handshakes at once; {out['connect_retries']} "
              f"retries after a refusal or a timeout), hub CPU "
              f"{out['connect_hub_cpu_s']} s, agent processes {out['connect_client_cpu_s']} s; "
              f"the audit log stopped growing {'' if settle else 'NOT '}after "
              f"{out['connect_settled_s']} s (hub CPU by then {out['connect_settle_hub_cpu_s']} "
              "s: each connection asks for queued work, agents connecting together in one "
              "query, and none is queued)", flush=True)

        # 2. idle with heartbeats at the real interval (running since each WELCOME)
        before = await fleet.ask_all({"cmd": "stats"}, expect="stats")
        window = work / PROFILE_WINDOW  # --profile-hub with --idle-only samples the idle window
        if args.idle_only:
            window.touch()
        cpu0, t0, waited0 = hub.cpu(), time.perf_counter(), proc_runqueue_wait(hub.pid)
        load0 = os.getloadavg()[0]
        await asyncio.sleep(args.idle_seconds)
        wall = time.perf_counter() - t0
        window.unlink(missing_ok=True)
        hub_cpu = hub.cpu() - cpu0
        after = await fleet.ask_all({"cmd": "stats"}, expect="stats")
        out["idle_window_s"] = round(wall, 1)
        out["idle_hub_cpu_s_per_min"] = round(hub_cpu / wall * 60, 2)
        out["idle_hub_cpu_percent"] = round(hub_cpu / wall * 100, 1)
        out["idle_hub_runqueue_wait_percent"] = round(
            (proc_runqueue_wait(hub.pid) - waited0) / wall * 100, 1)
        out["idle_client_cpu_s_per_min"] = round(
            (sum(a["cpu"] for a in after) - sum(b["cpu"] for b in before)) / wall * 60, 2)
        out["idle_heartbeats"] = (sum(a["acked"] for a in after)
                                  - sum(b["acked"] for b in before))
        out["idle_heartbeats_unanswered"] = sum(a["unanswered"] for a in after)
        out["idle_load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        rtts = [r for a in after for r in a["rtts"]]
        if rtts:
            out["idle_heartbeat_rtt_p50_ms"] = round(percentile(rtts, 50) * 1000)
            out["idle_heartbeat_rtt_p99_ms"] = round(percentile(rtts, 99) * 1000)
        rss, hwm = hub.rss()
        out["hub_rss_mib"], out["hub_peak_rss_mib"] = round(rss, 1), round(hwm, 1)
        out["idle_still_connected"] = sum(a["connected"] for a in after)
        print(f"  idle, heartbeat every {out['heartbeat_s']} s: hub CPU "
              f"{out['idle_hub_cpu_s_per_min']} s/min = {out['idle_hub_cpu_percent']} % of a "
              f"core over {out['idle_window_s']} s "
              f"({out['idle_heartbeats']} heartbeats acked, round trip p50 "
              f"{out.get('idle_heartbeat_rtt_p50_ms')} ms p99 "
              f"{out.get('idle_heartbeat_rtt_p99_ms')} ms; "
              f"{out['idle_heartbeats_unanswered']} awaiting an answer at the end), RSS "
              f"{out['hub_rss_mib']} MiB "
              f"(peak {out['hub_peak_rss_mib']} MiB); {out['idle_still_connected']}/{n} "
              f"still connected; load average {out['idle_load_average']}; the hub's threads "
              f"waited for a CPU {out['idle_hub_runqueue_wait_percent']} % of the window",
              flush=True)

        if args.idle_only:
            return
        # 3. steady: one deployment at a time, to one random agent
        await _steady(hub, fleet, args, rng, out)

        # 4. burst: queue (approved release) -> bundle received by every agent
        window.touch()  # --profile-hub samples the burst only (without --idle-only)
        cpu0, workers0, agents0 = hub.cpu(), hub.workers_cpu(), await fleet.cpu()
        load0 = os.getloadavg()[0]
        known = {a: len(r) for a, r in fleet.received.items()}
        before_sets = {a: set(r) for a, r in fleet.received.items()}
        t_queue = time.time()
        t_queued, count = await asyncio.to_thread(queue_release, hub.data_dir)
        bench0 = self_cpu()  # from the commit (the queueing itself is not the burst's)
        # the operator's queueing itself (not in the latencies, which start at its commit)
        out["deliver_queue_s"] = round(t_queued - t_queue, 2)
        try:
            await fleet.wait_new(list(fleet.received), known, args.deliver_timeout)
        finally:
            window.unlink(missing_ok=True)
        latencies = [min(t for k, t in r.items() if k not in before_sets[a]) - t_queued
                     for a, r in fleet.received.items() if set(r) - before_sets[a]]
        out["deliver_queued"] = count
        out["deliver_received"] = len(latencies)
        out.update(_latency_figures("deliver", latencies))
        out["deliver_hub_cpu_s"] = round(hub.cpu() - cpu0, 2)
        out["deliver_workers_cpu_s"] = round(hub.workers_cpu() - workers0, 2)
        out["deliver_hub_cpu_ms_per_agent"] = round(
            1000 * out["deliver_hub_cpu_s"] / max(1, count), 2)
        # the simulated agents' processes share the 2 cores with the hub
        out["deliver_client_cpu_s"] = round(await fleet.cpu() - agents0, 2)
        # this process (reading the agent workers' replies): it shares the cores too
        out["deliver_bench_cpu_s"] = round(self_cpu() - bench0, 2)
        out["deliver_load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        new_received = {a: min(t for k, t in r.items() if k not in before_sets[a])
                        for a, r in fleet.received.items() if set(r) - before_sets[a]}
        new_offered = {a: min((t for k, t in fleet.offered.get(a, {}).items()
                               if k not in before_sets[a]), default=None)
                       for a in new_received}
        timeline = await _burst_timeline(hub.data_dir / "hub.db", t_queued, new_received,
                                         {a: t for a, t in new_offered.items() if t is not None})
        out.update(timeline)
        print(f"  burst, queued -> received ({count} deployments queued at once by this "
              f"process, one per agent, found by the hub's push loop): {len(latencies)}/{n} "
              f"received; first "
              f"{out.get('deliver_min_ms')} ms, p50 {out.get('deliver_p50_ms')} ms, p99 "
              f"{out.get('deliver_p99_ms')} ms, max {out.get('deliver_max_ms')} ms; hub CPU "
              f"{out['deliver_hub_cpu_s']} s ({out['deliver_hub_cpu_ms_per_agent']} ms per "
              f"agent; export worker processes {out['deliver_workers_cpu_s']} s of it); agent "
              f"processes {out['deliver_client_cpu_s']} s; this process "
              f"{out['deliver_bench_cpu_s']} s; queueing took "
              f"{out['deliver_queue_s']} s; load average "
              f"{out['deliver_load_average']}",
              flush=True)
        print("  burst timeline, ms after the queue's commit (hub rows: claimed, exported — "
              "one time per export call —, delivered — one per batch; the agents: OFFER "
              "arrived, received), agents ranked by received: "
              + "; ".join(f"{k.split('_')[1]} {v}" for k, v in timeline.items()
                          if k.startswith("timeline_p"))
              + f"; {timeline.get('timeline_export_calls')} export calls, the last exported "
              f"at {timeline.get('timeline_exported_last_ms')}, offered at "
              f"{timeline.get('timeline_offered_last_ms')}, delivered records "
              f"({timeline.get('timeline_delivered_batches')} batches) until "
              f"{timeline.get('timeline_delivered_last_ms')}; per agent p50/p99/max: claim → "
              f"export {timeline.get('timeline_claim_to_export_ms')}, export → offer "
              f"{timeline.get('timeline_export_to_offer_ms')}, offer → received "
              f"{timeline.get('timeline_offer_to_received_ms')}, received → delivered "
              f"{timeline.get('timeline_received_to_delivered_ms')}", flush=True)

        # 5. logs
        # LOG must name a bundle the hub exported for the agent (the burst's).
        bundles = await asyncio.to_thread(_bundle_ids, hub.data_dir / "hub.db")
        senders = [a for a in sorted(fleet.received) if a in bundles][: min(n, args.log_agents)]
        by_worker: dict[int, dict[str, str]] = {}
        share = -(-n // len(fleet.pids))
        for a in senders:
            by_worker.setdefault(int(a[1:]) // share, {})[a] = bundles[a]
        cpu0, t0 = hub.cpu(), time.perf_counter()
        answers = await asyncio.gather(*(
            fleet.ask(w, {"cmd": "logs", "bundles": b, "count": args.log_messages,
                          "size": args.log_bytes}, "logs") for w, b in by_worker.items()))
        wall = time.perf_counter() - t0
        errors = [e for a in answers for e in a["errors"]]
        logs = work / "hub" / "live-logs"
        stored = sum(len(p.read_bytes().splitlines()) for p in (
            logs / a / f"{bundles[a]}.log" for a in senders) if p.exists())
        out["log_agents"] = len(senders)
        out["log_messages"] = len(senders) * args.log_messages
        out["log_stored_lines"] = stored
        out["log_failed_agents"] = len(errors)
        body = len(_log_text(args.log_bytes).encode())
        out["log_mb_s"] = round(stored * body / wall / 1e6, 1)
        out["log_msgs_s"] = round(stored / wall)
        out["log_hub_cpu_s_per_s"] = round((hub.cpu() - cpu0) / wall, 2)
        floor = max(0.0, (args.log_messages - 400) / 200)  # the protocol's own rate limit
        print(f"  logs: {len(senders)} agents x {args.log_messages} x {args.log_bytes} B, "
              f"{stored} lines stored in {wall:.1f} s (rate limit alone: >= {floor:.1f} s) = "
              f"{out['log_mb_s']} MB/s, {out['log_msgs_s']} msg/s (goal >= 10 MB/s); hub CPU "
              f"{out['log_hub_cpu_s_per_s']} s/s", flush=True)
        if errors:
            out["log_first_error"] = errors[0][:300]
            print(f"  logs: {len(errors)} agents lost their connection; first: {errors[0]}",
                  flush=True)
        rss, hwm = hub.rss()
        out["hub_peak_rss_mib"] = round(hwm, 1)
    finally:
        await fleet.close()
        await hub.stop()


# --------------------------------------------------------------------------- transfer phase

# What the series compares, run after run in this order (reversed every other round, so
# neither side always runs first or after the other): (sender, sink).
TRANSFER_VARIANTS = (("tiangong", "disk"), ("bare", "disk"), ("bare", "agent_disk"),
                     ("tiangong", "memory"), ("bare", "memory"), ("bare", "agent_memory"))
# The Tiangong transfer each bare one is compared with.
TRANSFER_PAIRS = {"disk": "disk", "agent_disk": "disk", "memory": "memory",
                  "agent_memory": "memory"}


def cpu_of(pid: int) -> float:
    """CPU seconds process ``pid`` has used, all its threads, from its CPU-time clock
    (nanoseconds, as ``clock_getcpuclockid`` gives it); /proc/<pid>/stat counts 10 ms ticks,
    too coarse for a transfer that takes 20–100 ms of CPU."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:  # gone, or the clock refused: the coarse figure
        return proc_cpu(pid)


@dataclass
class _Marks:
    """One moment of a transfer, as the receiving process sees it."""

    t: float  # time.perf_counter()
    cpu: float  # this process, all threads
    loop: float  # this thread (the event loop's)
    sender: float  # the sending process, all threads
    faults: int  # this process's minor page faults
    sender_faults: int  # the sending process's

    @classmethod
    def now(cls, sender_pid: int) -> _Marks:
        return cls(time.perf_counter(), time.process_time(), time.thread_time(),
                   cpu_of(sender_pid), resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                   proc_faults(sender_pid))

    def since(self, start: _Marks) -> dict[str, float]:
        return {"seconds": self.t - start.t, "recv_cpu_s": self.cpu - start.cpu,
                "recv_loop_cpu_s": self.loop - start.loop,
                "send_cpu_s": self.sender - start.sender,
                "recv_faults": self.faults - start.faults,
                "send_faults": self.sender_faults - start.sender_faults}


def _transfer_receiver(spec_file: Path) -> None:
    """A child receiving one transfer (``--transfer-receiver``), so that every receiver
    starts from the same fresh process (the heap of an earlier transfer in the same process
    changed the page faults of the next by 3×, docs/benchmarks.md "Session 8: live
    transfer"); prints its figures as a tagged ``done`` line."""
    spec = json.loads(spec_file.read_text())
    main = _receive_tiangong if spec["sender"] == "tiangong" else _receive_bare
    _emit("done", **asyncio.run(main(spec)))


async def _receive_tiangong(spec: dict[str, Any]) -> dict[str, Any]:
    """The bench's agent (the real AgentSide and FileReceiver, as agent/live.py) connects,
    takes the one spooled bundle offered and receives it. The window runs from the OFFER
    (the hub has hashed the spooled file by then: reported apart, as ``offer_*``) to the
    whole file checked and, to disk, fsynced."""
    sender = spec["sender_pid"]
    sink_dir = Path(spec["sink_dir"]) if spec["sink"] == "disk" else None
    if not spec["agent_heap_default"]:
        heap.keep_freed_blocks()  # as agent/live.py before an incoming transfer (its window)
    agent = SimAgent(spec["agent_id"], SigningKey(bytes.fromhex(spec["seed"])),
                     spec["hub_id"], sink_dir, give_back_heap=not spec["agent_heap_default"],
                     large_reads=not spec["agent_reads_default"],
                     one_copy_frames=not spec["agent_frames_default"],
                     old_buffers=spec["agent_reads_default"])
    marks: dict[str, _Marks] = {}
    agent.on_offered = lambda transfer: marks.setdefault("offer", _Marks.now(sender))
    agent.on_received = lambda *_: marks.setdefault("end", _Marks.now(sender))
    marks["connect"] = _Marks.now(sender)
    await agent.connect(spec["url"])
    try:
        await asyncio.wait_for(agent.wait_received(), 600)
    finally:
        await agent.close()
    if agent.error is not None or list(agent.received) != [spec["transfer"]]:
        raise RuntimeError(f"the agent received {list(agent.received)} ({agent.error}), "
                           f"expected {spec['transfer']}")
    out: dict[str, Any] = marks["end"].since(marks["offer"])
    out["window"] = [marks["offer"].t, marks["end"].t, os.getpid()]
    if agent.gave_back is not None:  # its CPU counts too, though RECEIVED did not wait
        await agent.gave_back
        after = _Marks.now(sender).since(marks["offer"])
        out.update((k, after[k]) for k in ("recv_cpu_s", "recv_loop_cpu_s", "recv_faults"))
    out["tail_seconds"] = marks["end"].t - agent.last_chunk
    offer = marks["offer"].since(marks["connect"])
    out["offer_seconds"], out["offer_send_cpu_s"] = offer["seconds"], offer["send_cpu_s"]
    return out


async def _receive_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """A bare websockets client reads the echo child's 1 MiB messages into ``spec['sink']``;
    the window runs from before the connection to the last byte in the sink (to disk,
    fsynced; for the agent's sink, checked against the SHA-256 too)."""
    size, sink_path = spec["size"], Path(spec["sink_dir"]) / "baseline.part"
    if spec["tuned_heap"]:  # --bare-heap-tuned: the agent's heap settings here too
        heap.keep_freed_blocks()
    sink: _FileSink = (_FileSink(sink_path) if spec["sink"] == "disk"
                       else _NullSink() if spec["sink"] == "memory"
                       else _AgentSink(sink_path if spec["sink"] == "agent_disk" else None,
                                       size, spec["sha256"]))
    before = _Marks.now(spec["sender_pid"])
    received = synced = 0
    async with connect(spec["url"], compression=None, max_size=MAX_MESSAGE_BYTES,
                       ping_interval=None) as ws:
        # The window starts when the connection is open, as the Tiangong one starts when
        # the agent can ask for the bytes (the OFFER): the server sends from then on.
        start = _Marks.now(spec["sender_pid"])
        async for message in ws:
            assert isinstance(message, bytes)
            sink.write(received, message)
            last = time.perf_counter()
            received += len(message)
            if received - synced >= ACK_EVERY_BYTES or received == size:
                sink.sync()
                synced = received
            await sink.room()
    await sink.finish()
    if spec["tuned_heap"]:
        heap.give_back()
    out: dict[str, Any] = _Marks.now(spec["sender_pid"]).since(start)
    out["window"] = [start.t, start.t + out["seconds"], os.getpid()]
    out["open_seconds"] = start.t - before.t
    out["tail_seconds"] = _Marks.now(spec["sender_pid"]).t - last
    if received != size:
        raise RuntimeError(f"baseline received {received} of {size} bytes")
    return out


async def _receive_in_child(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    spec_file = work / "receiver.json"
    spec_file.write_text(json.dumps(spec))
    err_path = work / "receiver-stderr.log"
    with err_path.open("ab") as err:
        name = f"{spec['sender']}-{spec['sink']}-{spec['round']}"
        wrap = [w.replace("{name}", name) for w in spec["wrap"].split()]
        proc = await asyncio.create_subprocess_exec(
            *wrap, sys.executable, __file__, "--transfer-receiver", str(spec_file),
            stdout=asyncio.subprocess.PIPE, stderr=err)
    child = HubProcess(proc, err_path)
    try:
        done = await child.expect("done", 600)
    finally:
        await child.stop()
    return {k: v for k, v in done.items() if k != "event"}


async def _wait_gone(path: Path, what: str) -> None:
    """Poll until ``path`` is gone (the hub moved a delivered bundle to sent/)."""
    deadline = time.monotonic() + 60
    while path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {path} still in the spool after 60 s")
        await asyncio.sleep(0.05)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def transfer_series(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--transfer-repeat`` rounds of the six transfers of :data:`TRANSFER_VARIANTS`, one
    hub and one bare echo server for all of them, each receiver a fresh process; per
    variant the medians and spreads of MB/s and of CPU per MiB on each side."""
    payload = work / "payload.bin"
    digest = hashlib.sha256()
    with payload.open("wb") as fh:
        for _ in range(args.transfer_mib):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    size = payload.stat().st_size
    sink_dir = work / "agent-staging"
    sink_dir.mkdir()
    specs, keys = make_agents(2, "big")
    agents = {"disk": (specs[0]["id"], keys[0]), "memory": (specs[1]["id"], keys[1])}
    hub, _ = await HubProcess.start(work, specs)
    err_path = work / "echo-stderr.log"
    with err_path.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--echo-child", str(payload),
            stdout=asyncio.subprocess.PIPE, stderr=err)
    echo = HubProcess(proc, err_path)
    runs: list[dict[str, Any]] = []
    try:
        echo_port = (await echo.expect("ready", 60))["port"]
        # What the hub spends with no transfer (its push loop polls the database every
        # 0.25 s): part of every Tiangong window's sender CPU.
        idle0, t0 = cpu_of(hub.pid), time.perf_counter()
        await asyncio.sleep(2)
        hub_idle = (cpu_of(hub.pid) - idle0) / (time.perf_counter() - t0)
        print(f"  hub pid {hub.pid}, bare server pid {echo.pid} (for a profiler)", flush=True)
        for i in range(args.transfer_repeat):
            order = TRANSFER_VARIANTS if i % 2 == 0 else TRANSFER_VARIANTS[::-1]
            for sender, sink in order:
                spec: dict[str, Any] = {"sender": sender, "sink": sink, "size": size,
                                        "tuned_heap": args.bare_heap_tuned, "round": i,
                                        "wrap": args.wrap_receiver,
                                        "agent_heap_default": args.agent_heap_default,
                                        "agent_reads_default": args.agent_reads_default,
                                        "agent_frames_default": args.agent_frames_default,
                                        "sha256": digest.hexdigest(),
                                        "sink_dir": str(sink_dir)}
                spooled = None
                if sender == "tiangong":
                    agent_id, key = agents[sink]
                    # The hub offers every spooled bundle when the agent connects.
                    spool = hub.data_dir / "live-outbox" / agent_id
                    spool.mkdir(parents=True, exist_ok=True)
                    spooled = spool / f"big-bench-{i}.tgb"
                    shutil.copyfile(payload, spooled)
                    spec.update(url=f"ws://127.0.0.1:{hub.port}/live", sender_pid=hub.pid,
                                agent_id=agent_id, seed=key.seed.hex(), hub_id="hub-bench",
                                transfer=spooled.stem)
                else:
                    spec.update(url=f"ws://127.0.0.1:{echo_port}/", sender_pid=echo.pid)
                # Written back before the clock starts: the fsyncs must not wait for the
                # kernel to flush the copy above (or the previous run's file).
                os.sync()
                run = {"sender": sender, "sink": sink, "round": i,
                       **await _receive_in_child(work, spec),
                       "load": os.getloadavg()[0]}
                run["mb_s"] = size / run["seconds"] / 1e6
                runs.append(run)
                if spooled is not None:
                    await _wait_gone(spooled, "RECEIVED")
                for p in sink_dir.iterdir():
                    p.unlink()
            print(f"  round {i + 1} of {args.transfer_repeat}: " + ", ".join(
                f"{r['sender']} {r['sink']} {r['mb_s']:.0f} MB/s"
                for r in runs if r["round"] == i), flush=True)
        peak_rss = hub.rss()[1]
    finally:
        await echo.stop()
        await hub.stop()
    out = _transfer_figures(runs, args.transfer_mib, peak_rss)
    out["hub_idle_cpu_ms_per_s"] = round(hub_idle * 1000, 2)
    return out


def _transfer_figures(runs: list[dict[str, Any]], mib: int, peak_rss: float
                      ) -> dict[str, Any]:
    """Medians and spreads per variant; ratios per round (the two runs of a pair ran next
    to each other), then their median and spread."""
    out: dict[str, Any] = {"transfer_mib": mib, "rounds": 1 + max(r["round"] for r in runs)}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(f"{'tiangong' if r['sender'] == 'tiangong' else 'baseline'}_{r['sink']}",
                      []).append(r)
    for name, rs in by.items():
        mb_s = _spread([r["mb_s"] for r in rs])
        out[f"{name}_mb_s"] = round(mb_s["median"])
        out[f"{name}_mb_s_range"] = [round(mb_s["min"]), round(mb_s["max"])]
        for what in ("recv_cpu", "recv_loop_cpu", "send_cpu"):
            ms = _spread([r[f"{what}_s"] * 1000 / mib for r in rs])
            out[f"{name}_{what}_ms_per_mib"] = round(ms["median"], 3)
            out[f"{name}_{what}_ms_per_mib_range"] = [round(ms["min"], 3), round(ms["max"], 3)]
        total = _spread([(r["recv_cpu_s"] + r["send_cpu_s"]) * 1000 / mib for r in rs])
        out[f"{name}_cpu_ms_per_mib"] = round(total["median"], 3)
        out[f"{name}_cpu_ms_per_mib_range"] = [round(total["min"], 3), round(total["max"], 3)]
        out[f"{name}_recv_faults"] = round(statistics.median(r["recv_faults"] for r in rs))
        # from the last byte read to the file checked (and fsynced): what waited for the
        # worker, the syncer, the closing handshake
        out[f"{name}_tail_ms"] = round(statistics.median(r["tail_seconds"] for r in rs) * 1e3, 1)
        out[f"{name}_send_faults"] = round(statistics.median(r["send_faults"] for r in rs))
        if name.startswith("tiangong"):
            offer = [r["offer_send_cpu_s"] * 1000 / mib for r in rs]
            out[f"{name}_offer_send_cpu_ms_per_mib"] = round(statistics.median(offer), 3)
    for bare, mine in TRANSFER_PAIRS.items():
        ratios, cpu_ratios = [], []
        for i in range(out["rounds"]):
            (t,) = [r for r in by[f"tiangong_{mine}"] if r["round"] == i]
            (b,) = [r for r in by[f"baseline_{bare}"] if r["round"] == i]
            ratios.append(t["mb_s"] / b["mb_s"])
            cpu_ratios.append((b["recv_cpu_s"] + b["send_cpu_s"])
                              / (t["recv_cpu_s"] + t["send_cpu_s"]))
        out[f"ratio_{bare}"] = round(statistics.median(ratios), 2)
        out[f"ratio_{bare}_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
        out[f"cpu_ratio_{bare}"] = round(statistics.median(cpu_ratios), 2)
        out[f"cpu_ratio_{bare}_range"] = [round(min(cpu_ratios), 2), round(max(cpu_ratios), 2)]
    loads = [r["load"] for r in runs]
    out["load_average"] = [round(min(loads), 2), round(max(loads), 2)]
    out["hub_peak_rss_mib"] = round(peak_rss, 1)
    out["runs"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                   for r in runs]
    return out


_SINKS = {"disk": "written, fsynced every 8 MiB (bare: in the event loop, no hash)",
          "memory": "dropped (Tiangong: checked and hashed first; bare: nothing)",
          "agent_disk": "the agent's FileReceiver to disk (check, SHA-256, write, fsync)",
          "agent_memory": "the agent's FileReceiver, no file (check, SHA-256)"}


def _print_transfer(t: dict[str, Any]) -> None:
    mib = t["transfer_mib"]
    print(f"  {mib} MiB, {t['rounds']} rounds, medians (min-max); CPU in ms per MiB, "
          f"receiver (its event loop) + sender; load average {t['load_average'][0]}-"
          f"{t['load_average'][1]}", flush=True)
    for name in sorted(k.removesuffix("_mb_s") for k in t if k.endswith("_mb_s")):
        lo, hi = t[f"{name}_mb_s_range"]
        c_lo, c_hi = t[f"{name}_cpu_ms_per_mib_range"]
        offer = (f"; the hub hashing the spooled file for its OFFER: "
                 f"{t[f'{name}_offer_send_cpu_ms_per_mib']:.3f}"
                 if f"{name}_offer_send_cpu_ms_per_mib" in t else "")
        loop = t[f"{name}_recv_loop_cpu_ms_per_mib"]
        print(f"  {name:22} {t[f'{name}_mb_s']:5} MB/s ({lo}-{hi}); CPU "
              f"{t[f'{name}_recv_cpu_ms_per_mib']:.3f} ({loop:.3f})"
              f" + {t[f'{name}_send_cpu_ms_per_mib']:.3f} = {t[f'{name}_cpu_ms_per_mib']:.3f} "
              f"({c_lo:.3f}-{c_hi:.3f}); page faults {t[f'{name}_recv_faults']} + "
              f"{t[f'{name}_send_faults']}; last byte -> done {t[f'{name}_tail_ms']} ms{offer}",
              flush=True)
    for bare, mine in TRANSFER_PAIRS.items():
        lo, hi = t[f"ratio_{bare}_range"]
        c_lo, c_hi = t[f"cpu_ratio_{bare}_range"]
        print(f"  tiangong {mine} vs bare into {_SINKS[bare]}: ratio {t[f'ratio_{bare}']} "
              f"({lo}-{hi}); CPU ratio (bare / Tiangong, both sides) {t[f'cpu_ratio_{bare}']} "
              f"({c_lo}-{c_hi})", flush=True)
    print(f"  hub peak RSS {t['hub_peak_rss_mib']} MiB; the idle hub spends "
          f"{t['hub_idle_cpu_ms_per_s']} ms of CPU per second (in every Tiangong window)",
          flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tiangong-bench-live-", dir=args.workdir))
    report: dict[str, Any] = {"fleet": [], "transfer": None,
                              "fd_limit": _raise_fd_limit(), "cpus": os.cpu_count()}
    try:
        print(f"live_agents: hub in a child process, agents in this one (pid {os.getpid()}); "
              f"{os.cpu_count()} CPUs shared with everything else on the box; load average "
              f"{os.getloadavg()[0]:.2f}; open files limit {report['fd_limit']}", flush=True)
        report["sqlite_commits_per_s"] = round(sqlite_commits_per_s(work))
        print(f"baseline: this disk takes {report['sqlite_commits_per_s']} single-row SQLite "
              "commits per second (WAL, the hub's pragmas); the hub writes heartbeats' "
              "last_seen in one commit per second at most; an export that writes a bundle "
              "commits a signed audit checkpoint and then the deployment", flush=True)
        print(f"RESULT live_agents_disk sqlite_commits_per_s={report['sqlite_commits_per_s']}",
              flush=True)
        for n in args.agents:
            # The hub holds N sockets (and its files) under one limit; the agents are split
            # over worker processes, each under its own.
            if n + 200 > report["fd_limit"]:
                print(f"N={n}: skipped, the hub needs {n + 200} open files, the limit is "
                      f"{report['fd_limit']}")
                continue
            print(f"N={n}", flush=True)
            d = work / f"n{n}"
            d.mkdir()
            fig: dict[str, Any] = {"agents": n}
            try:
                await fleet_run(n, args, d, fig)
            except Exception as exc:  # report what failed, carry on with the next N
                print(f"  N={n} did not complete: {type(exc).__name__}: {exc}", flush=True)
                fig["failed"] = f"{type(exc).__name__}: {exc}"[:500]
            report["fleet"].append(fig)
            print("RESULT live_agents " + " ".join(f"{k}={v}" for k, v in fig.items()),
                  flush=True)
        if args.transfer_mib:
            print(f"single agent, {args.transfer_mib} MiB bundle, {args.transfer_repeat} "
                  "rounds of Tiangong and bare websockets, interleaved", flush=True)
            d = work / "transfer"
            d.mkdir()
            t = await transfer_series(args, d)
            _print_transfer(t)
            report["transfer"] = t
            print("RESULT live_agents_transfer " + " ".join(
                f"{k}={v}" for k, v in t.items() if not isinstance(v, list)), flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _agents_list(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=_agents_list, default=None,
                    help="comma-separated N values (default 100,1000; --soak 100,1000,5000; "
                         "--quick 20)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, short windows")
    ap.add_argument("--soak", action="store_true", help="adds N=5000, 120 s idle window")
    ap.add_argument("--burst-only", action="store_true",
                    help="connect, then the burst: no idle window, steady samples, logs or "
                         "transfer (unless given)")
    ap.add_argument("--idle-only", action="store_true",
                    help="connect, then the idle window only: no steady samples, burst, logs "
                         "or transfer (unless given); --profile-hub then samples the idle "
                         "window")
    ap.add_argument("--transfer-only", action="store_true",
                    help="only the single-agent transfer phase (no fleet: the same as "
                         "--agents ''); with --transfer-mib 64 --transfer-repeat 5 about "
                         "a minute")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="idle window with heartbeats (default 60; --quick 5; --soak 120)")
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--deliver-timeout", type=float, default=1800.0)
    ap.add_argument("--steady-samples", type=int, default=None,
                    help="steady phase: deployments queued one at a time (default 50; "
                         "--quick 5; 0: skip)")
    ap.add_argument("--steady-gap", type=float, default=0.5,
                    help="steady phase: longest random pause before each sample (seconds)")
    ap.add_argument("--log-agents", type=int, default=None, help="default 10 (--quick 3)")
    ap.add_argument("--log-messages", type=int, default=None,
                    help="LOG messages per agent (default 1000; --quick 100)")
    ap.add_argument("--log-bytes", type=int, default=16 * 1024,
                    help="bytes per LOG message (max 16 KiB)")
    ap.add_argument("--transfer-mib", type=int, default=None,
                    help="single-agent bundle size (default 256; --quick 16; 0: skip)")
    ap.add_argument("--transfer-repeat", type=int, default=1,
                    help="transfer phase runs (Tiangong and baselines each time); more than "
                         "one prints the median ratios")
    ap.add_argument("--workdir", default=str(REPO.parent),
                    help="where the temporary hub data goes (a real disk, not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--tls", action="store_true",
                    help="fleet phases over wss:// (the hub's certificate, agents pin its CA "
                         "and sign the channel binding, as real agents); default plain ws://")
    ap.add_argument("--agent-processes", type=int, default=0,
                    help="worker processes holding the simulated agents (default: one per "
                         f"{AGENTS_PER_PROCESS} agents, at least 2)")
    ap.add_argument("--hub-child", nargs=2, metavar=("DATA_DIR", "AGENTS_JSON"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--agent-worker", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--profile-hub", type=Path, default=None, metavar="FILE",
                    help="during the burst (--idle-only: the idle window), sample the Python "
                         "stacks of the hub's threads that are on a CPU (every 5 ms) and "
                         "write them to FILE when it stops (costs the hub some CPU)")
    ap.add_argument("--echo-child", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--transfer-receiver", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--wrap-receiver", default="", metavar="COMMAND",
                    help="transfer: run each receiver under this command prefix ({name}: "
                         "sender-sink-round), e.g. 'perf record -g -o /tmp/{name}.data --'")
    ap.add_argument("--agent-heap-default", action="store_true",
                    help="transfer: the Tiangong agent leaves the C heap at its defaults (as "
                         "before agent.heap), for a before/after")
    ap.add_argument("--agent-reads-default", action="store_true",
                    help="transfer: the Tiangong agent reads as before session 11, for a "
                         "before/after: its socket in asyncio's 256 KiB pieces (not "
                         "agent.live.read_in_large_pieces), websockets' queue of 16 messages "
                         "and 32 MiB waiting for its FileReceiver's worker (not 4 and 4 MiB)")
    ap.add_argument("--agent-frames-default", action="store_true",
                    help="transfer: the Tiangong agent reads its frames with websockets' "
                         "own reader (three copies of each payload), not "
                         "agent.live_frames' (one), for a before/after")
    ap.add_argument("--bare-heap-tuned", action="store_true",
                    help="transfer: the bare receivers set the C heap as the agent does "
                         "(agent.heap: keep freed message buffers, give them back at the end) "
                         "for a like-for-like figure of that too")
    args = ap.parse_args(argv)
    if args.hub_child:
        _hub_child(Path(args.hub_child[0]), Path(args.hub_child[1]), args.port, args.tls,
                   args.profile_hub)
        return
    if args.agent_worker:
        _agent_worker(Path(args.agent_worker))
        return
    if args.echo_child:
        _echo_child(Path(args.echo_child))
        return
    if args.transfer_receiver:
        _transfer_receiver(Path(args.transfer_receiver))
        return

    def pick(value: Any, quick: Any, normal: Any, soak: Any) -> Any:
        if value is not None:
            return value
        return quick if args.quick else soak if args.soak else normal

    args.agents = [] if args.transfer_only else pick(args.agents, [20], [100, 1000],
                                                      [100, 1000, 5000])
    if args.burst_only or args.idle_only:
        for name in ("steady_samples", "log_agents", "log_messages", "transfer_mib",
                     *(() if args.idle_only else ("idle_seconds",))):
            if getattr(args, name) is None:
                setattr(args, name, 0)
    args.idle_seconds = pick(args.idle_seconds, 5.0, 60.0, 120.0)
    args.log_agents = pick(args.log_agents, 3, 10, 10)
    args.steady_samples = pick(args.steady_samples, 5, 50, 50)
    args.log_messages = pick(args.log_messages, 100, 1000, 1000)
    args.transfer_mib = pick(args.transfer_mib, 16, 256, 256)
    report = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
