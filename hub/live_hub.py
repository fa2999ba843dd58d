"""The hub's end of live connections: :class:`LiveHub`, the asyncio layer over
:class:`bundle.sync.HubSide` (docs/live-protocol.md §10). :mod:`hub.live` runs it.

See :mod:`hub.live` for what it does; this module holds the per-connection work
(authentication, presence, bundles out, results in, logs) and the **push loop**: a task on
the server's event loop, started by the first connection, that — every ``poll_interval``
seconds, or at once when woken (PostgreSQL NOTIFY: :mod:`hub.live_notify`; SQLite: a
datagram from the committing process, :mod:`hub.live_wake`) — asks the database
(:func:`hub.services.presence.live_work`, one query for all connected agents) whether a
connected agent has queued deployments — they are exported and offered at once, without
anyone calling :meth:`LiveHub.push_pending` — or was revoked — its connection is closed with
``revoked`` (4012) and a ``live.revoked`` audit event. Approval, queueing and revocation
happen in other processes (web workers, the CLI); the database is the signal between them.

A bundle the agent confirms (RECEIVED) or already holds (CANCEL ``have-it``, e.g. it came by
media first) leaves the spool for ``sent/``, its deployment moves ``exported → delivered``
and a ``live.delivered`` audit event says how; it is never offered again.

No listening sockets here. Blocking work runs in threads: exports (sign, compress, fsync,
commit; mostly Python, so CPU under the GIL) and the ``delivered`` bookkeeping after them in
a pool of :data:`EXPORT_THREADS`, the SHA-256 of a spooled file before its OFFER in a pool of
:data:`OFFER_THREADS`, other database calls in asyncio's default pool. Separate pools because
one FIFO pool made a bundle's offer wait behind every export queued before it: 1,000
deployments queued at once got their first bundle only after the last export
(docs/benchmarks.md, Live agents).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from bundle.live_file import FileReceiver
from bundle.sync import (
    CANCEL_HAVE_IT,
    DEFAULT_HEARTBEAT_SECONDS,
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    NONCE_BYTES,
    AckReceived,
    Authenticated,
    ChunkReceived,
    HeartbeatReceived,
    HelloReceived,
    HubSide,
    LogReceived,
    Offer,
    OfferReceived,
    ResumeRequested,
    StateReceived,
    TransferCancelled,
    TransferDone,
    TransferReceived,
)
from bundle.sync.errors import (
    AuthError,
    BackoffError,
    BusyError,
    ForbiddenError,
    HandshakeTimeoutError,
    ProtocolError,
    RevokedAgentError,
    SyncError,
    UnknownAgentError,
)
from hub import live_send
from hub.db import Agent as AgentRow
from hub.db import Deployment, Environment
from hub.errors import HubError
from hub.faults import crash_point
from hub.live_exports import ExportWorkers, WorkerFailed, WorkerLost
from hub.live_files import (
    LogQuotaError,
    LogStore,
    SpoolDigests,
    partial_path,
    sweep_partials,
)
from hub.live_guard import WAKE_GAP_SECONDS, Admission, LiveLimits, LoginGuard, RefusalCount
from hub.live_notify import NOTIFY_FALLBACK_POLL_S, Listener
from hub.live_wake import WakeSocket
from hub.metrics import LiveMetrics
from hub.services import audit
from hub.services.agents import get_agent
from hub.services.context import HubKeys, ServiceContext, utc_now
from hub.services.deployments import mark_delivered_many
from hub.services.exchange import export_environment, import_result
from hub.services.export import (
    EXPORT_BATCH,
    SENT,
    ExportedBundle,
    export_agents,
    make_spool_dirs,
)
from hub.services.export_claims import my_token, release_dead_claims
from hub.services.preflight import state_values
from hub.services.presence import LiveWork, live_work, live_work_of, presence_until
from hub.services.users import get_user
from signing.fileio import SYNCFS_FROM, fsync_dir, syncfs_each
from signing.keys import PublicKey

__all__ = ["ACK_EVERY_BYTES", "EXPORT_RETRY_SECONDS", "POLL_SECONDS", "WINDOW_BYTES",
           "LiveHub"]

log = logging.getLogger("tiangong.hub.live")

WINDOW_BYTES = 32 * 1024 * 1024  # bytes sent and not yet acknowledged, per transfer
ACK_EVERY_BYTES = 8 * 1024 * 1024  # bytes received between two fsync + ACK
READ_BYTES = MAX_CHUNK_BYTES  # bytes per CHUNK sent (at most [live] send_buffer_bytes)
SPARE_CHUNKS = 2  # sent CHUNK messages kept per connection to be filled again
#: seconds between two rounds of the push loop's presence work, and the default of
#: ``[live] poll_s`` (LiveLimits), the seconds between two looks at the database that
#: nothing woke
POLL_SECONDS = LiveLimits.poll_s
SEEN_FLUSH_SECONDS = 1.0  # seconds between two writes of the heartbeats' last_seen
EXPORT_RETRY_SECONDS = 60.0  # seconds before an export that failed is tried again unchanged
SYSTEM_ACTOR = "live"  # ServiceContext.system of the live server (audited as system:live)
HAVE_IT = CANCEL_HAVE_IT  # the agent already holds this bundle (docs/live-protocol.md §4.2)
EXPORT_THREADS = 3  # threads exporting bundles (a burst's two calls at once, one for the rest)
BURST_CALLS = 2  # export calls of one burst at once: one's fsyncs and commits overlap the other
LIVE_EXPORT_BATCH = 100  # agents whose queued deployments one export call takes at least
#: a burst's first export calls take this many agents each, then LIVE_EXPORT_BATCH or more: the
#: first bundles leave after a few exports, the rest in calls that cost little per bundle
BURST_STEPS = (5, 20, 50)
#: after BURST_STEPS, an export call takes this fraction (1/BURST_SHARE) of the burst's agents
#: not yet in a call, between LIVE_EXPORT_BATCH and EXPORT_BATCH (one claim and one record
#: transaction): a call's fixed cost (the checkpoint, its gates and chains, ~10-16 ms of CPU)
#: is paid half as often in a large burst, while its last calls, whose agents make its p99,
#: stay at LIVE_EXPORT_BATCH
BURST_SHARE = 4
DELIVERED_QUERY_ITEMS = 500  # confirmed bundles looked up per query (bound parameters)
#: seconds confirmations gather before their batch is recorded (unless DELIVERED_QUERY_ITEMS
#: wait already): a batch costs 3-9 ms of CPU whatever its size, and a burst to 1,000 agents
#: made 27 batches of 37 on average without waiting (docs/benchmarks.md, "Session 9")
DELIVERED_GATHER_SECONDS = POLL_SECONDS
OFFER_THREADS = 2  # threads hashing spooled files for OFFERs, never behind an export
#: connected agents from which the export worker processes are started (hub.live_exports):
#: a burst to fewer is a fraction of a second in threads, less than a process costs to start
#: (about a second of CPU), which a hub serving a handful of agents never pays
EXPORT_WORKERS_FROM = 64
INLINE_HASH_BYTES = 1024 * 1024  # spooled files up to this size are hashed on the event loop
MAX_PARTIALS = 4  # partial uploads kept per agent (MAX_TRANSFERS of the protocol)
HANDSHAKE_MESSAGE_BYTES = 3 + MAX_HEADER_BYTES  # bytes of one message before authentication
CLOSE_SECONDS = 5.0  # seconds a closing handshake may take before the socket is cut
SILENT_HEARTBEATS = 3  # heartbeat intervals without a message before a peer is closed (§6.2)
DIRECT_WRITE_BYTES = 4096  # messages up to this size may skip the writer task (_Peer.flush)
#: a spooled file up to this size goes out whole — its CHUNK and DONE in one write, past the
#: writer task when nothing waits (_Peer.flush): the usual bundle (~12 KiB) cost two
#: writer-task rounds, two TLS records and two send() calls
DIRECT_FILE_BYTES = 64 * 1024
#: seconds between two polls of the database (not woken by a NOTIFY) while a burst of this
#: process runs, as PostgreSQL's safety net: each poll reads every deployment still queued in
#: it (a poll took ~20 ms during a burst to 10,000 agents on SQLite, four times a second)
BURST_POLL_SECONDS = NOTIFY_FALLBACK_POLL_S
#: seconds at most between two polls that read every deployment still queued, bursts or not:
#: a poll during a burst asks only for newer deployments, which leaves out an older one whose
#: hold ended, one a failed or lost export left queued, one re-queued with its old id, or one
#: committed late with a smaller id (PostgreSQL); back-to-back bursts would starve them
FULL_POLL_SECONDS = 30.0
#: Python's youngest-generation GC threshold while bursts run (the default is 700): a burst
#: allocates per agent (offers, messages, tasks, TLS buffers) far more than dies between two
#: collections, and each collection walked the survivors again — 394 young and 35 middle
#: collections, 0.43 s of the event loop's CPU in a burst to 10,000 agents; 50,000 made the
#: collections of a 3,000-agent burst 0.01 s instead of 0.08 s (docs/benchmarks.md,
#: "Session 11: live burst")
BURST_GC_YOUNG = 50_000
#: the oldest generation's threshold while bursts run (middle collections between two full
#: ones; Python's default is 10): so many that no full collection runs during a burst (two
#: ran in a burst to 10,000 agents before, 0.28 s; none in three runs since). What it does
#: not remove: the first full collection after the burst (``gc.unfreeze`` gives it every
#: object back) walks all of the heap — 0.9 s at 10,000 agents, inside the delivery window
#: in two of those three runs (docs/benchmarks.md, "Session 11: live burst").
BURST_GC_FULL = 1_000_000
#: seconds after the last burst's end before the collector gets its thresholds and the
#: frozen heap back (:meth:`LiveHub._release_gc`): the first full collection after that walks
#: all of the heap (0.9 s at 10,000 agents), and right at the end of the last export call it
#: fell among the burst's last transfers; a burst starting meanwhile keeps it frozen
GC_SETTLE_SECONDS = 3.0
SWEEP_SECONDS = 60.0  # seconds between two sweeps of abandoned partial uploads (at most)
#: seconds between two tries of the start-up take-over (:meth:`LiveHub._take_over`) that failed
TAKE_OVER_RETRY_SECONDS = 5.0
TOO_LARGE = "too-large"  # CANCEL code: a result over [live] max_result_bytes (§4.1)
REJECTED = "rejected"  # CANCEL code: the importer refused the received result (§4.3)
RETRY = "retry"  # CANCEL code: the hub could not import it now; offer it again later
IO_ERROR = "io-error"  # CANCEL code: the hub cannot write the upload (disk); offered again later
RESULT_PENDING_BYTES = ACK_EVERY_BYTES  # bytes of one upload waiting for the disk before
# that connection's reading pauses (TCP then holds the agent back)

_T = TypeVar("_T")


@dataclass
class _Incoming:
    file: FileReceiver  # checks, hashes, writes and fsyncs in its own thread (big uploads)
    path: Path
    acked: int  # bytes an ACK was sent for
    syncing: int  # bytes an fsync was asked for (its ACK follows when it is done)


@dataclass
class _Peer:
    """One connection: the protocol object, its socket, the files moving over it, and the
    queue its writer task sends from.

    Reading never waits for writing (docs/live-protocol.md §10.1): :meth:`flush` only
    queues; :meth:`LiveHub._write_loop` sends. File chunks wait for :attr:`room` (the queue
    under ``send_buffer_bytes``); a queue over ``send_buffer_max_bytes`` or a write that
    makes no progress for ``send_timeout_s`` closes the connection.
    """

    ws: ServerConnection
    conn: HubSide
    source: str
    limits: LiveLimits
    outgoing: dict[str, Path] = field(default_factory=dict)  # transfer -> spool file
    acked: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    incoming: dict[str, _Incoming] = field(default_factory=dict)
    bundles: set[str] = field(default_factory=set)  # bundle ids addressed to this agent
    queue: deque[bytes | bytearray] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    # This connection, as agents.live_conn names it: presence writes of an ended connection
    # never touch an agent that a newer one holds (here or in another live process).
    conn_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(12)}")
    ending: bool = False  # no more messages will be queued: the writer ends when empty
    on_error: Callable[[str], None] | None = None  # counts errors by kind (LiveMetrics)
    # CHUNK messages already sent, reused for the next ones (no fresh 1 MiB, page faults
    # and zeroing included, per chunk); at most SPARE_CHUNKS, and only while a file is
    # being sent on this connection (sending): kept after, every connection that ever got
    # a bundle would hold 2 MiB for its lifetime — 20 GiB for 10,000 agents
    spare: list[bytearray] = field(default_factory=list)
    sending: int = 0  # LiveHub._send_file running for this connection
    heard: float = 0.0  # event-loop time of the last message received
    # the last look at the spool left bundles out for want of a transfer slot (or none was
    # taken yet): a slot coming free looks again (LiveHub._sent)
    spool_more: bool = True
    silence: asyncio.TimerHandle | None = None  # closes it after SILENT_HEARTBEATS intervals
    # the reading loop is handling a message (it may wait there: an upload waiting for the
    # disk pauses reading), so what the agent sends meanwhile is not read: not silence
    handling: bool = False

    def __post_init__(self) -> None:
        self.room.set()

    def flush(self, direct: int = DIRECT_WRITE_BYTES) -> None:
        """Queue what the protocol has to send; never waits. A queue over
        ``send_buffer_max_bytes`` means the peer does not read: the socket is cut.

        Small messages (a heartbeat's ACK; with ``direct``, up to that many bytes: a small
        file's CHUNK and DONE) go to the socket at once when nothing waits to be sent — the
        writer idle, the transport's buffer empty, so writing cannot block — instead of
        waking the writer task: a task switch, a timeout and a future less per heartbeat
        (10,000 agents send 333 a second)."""
        messages = self.conn.data_to_send()
        if messages and not self.queue and self._write_now(messages, direct):
            return
        for message in messages:
            self.queue.append(message)
            self.queued_bytes += len(message)
        if self.queue:
            self.wakeup.set()
        if self.queued_bytes >= self.limits.send_buffer_bytes:
            self.room.clear()
        if self.queued_bytes > self.limits.send_buffer_max_bytes and not self.ending:
            log.warning("live: agent %s: %d bytes wait to be sent, over [live] "
                        "send_buffer_max_bytes = %d; closing", self.conn.agent_id,
                        self.queued_bytes, self.limits.send_buffer_max_bytes)
            if self.on_error is not None:
                self.on_error("send_buffer")
            self.abort()

    def _write_now(self, messages: list[bytes | bytearray], most: int) -> bool:
        """Write ``messages`` to the socket now if that cannot wait (see :meth:`flush`):
        at most ``most`` bytes together, the connection open, nothing buffered. False:
        nothing was written. All in one write (over TLS: one record, one send())."""
        ws = self.ws
        if (self.ending or ws.protocol.state is not WsState.OPEN
                or ws.transport.get_write_buffer_size()
                or sum(len(m) for m in messages) > most):
            return False
        for message in messages:
            ws.protocol.send_binary(message)
        ws.transport.writelines(ws.protocol.data_to_send())
        return True

    def abort(self) -> None:
        """Cut the connection now (no closing handshake: the peer does not read)."""
        self.ending = True
        self.queue.clear()
        self.queued_bytes = 0
        self.wakeup.set()
        self.ws.transport.abort()

    @property
    def open(self) -> bool:
        return self.conn.is_open and self.ws.state is WsState.OPEN and not self.ending


class LiveHub:
    """The hub's side of every live connection (one event loop).

    ``session_factory`` opens database sessions (called in worker threads), ``actor`` is the
    hub user whose permissions export bundles (it needs ``bundle.export``), ``binding`` the
    TLS channel binding of §5.2 (``b""`` without TLS), ``poll_interval`` the seconds between
    two looks of the push loop at the database.
    """

    def __init__(self, *, session_factory: Callable[[], Session], keys: HubKeys,
                 data_dir: Path, actor: str | None, clock: Callable[[], Any] = utc_now,
                 heartbeat: int = DEFAULT_HEARTBEAT_SECONDS, binding: bytes = b"",
                 poll_interval: float = POLL_SECONDS,
                 limits: LiveLimits | None = None, notify_dsn: str | None = None,
                 keys_source: Callable[[], HubKeys] | None = None,
                 export_workers: ExportWorkers | None = None,
                 export_workers_from: int = EXPORT_WORKERS_FROM,
                 wake_dir: Path | None = None) -> None:
        self.session_factory = session_factory
        # a burst's exports in worker processes (hub.live_exports), started once
        # ``export_workers_from`` agents are connected; None: in threads here
        self.export_workers = export_workers
        self.export_workers_from = export_workers_from
        self.keys = keys
        # where exports take the keys from (``KeysReloader.current``: a root installed while
        # the server runs is used at once); default: ``keys`` as given
        self._keys_source = keys_source
        self.hub_id = keys.hub_id
        self.data_dir = Path(data_dir)
        self._spool_root = self.data_dir / "live-outbox"  # a Path made once: asked per agent
        self.actor = actor
        self.clock = clock
        self.heartbeat = heartbeat
        self.binding = binding
        self.peers: dict[str, _Peer] = {}  # agent id -> its authenticated connection
        self.limits = limits or LiveLimits()
        self.logs = LogStore(self.data_dir / "live-logs",
                             agent_quota=self.limits.log_quota_agent_bytes,
                             total_quota=self.limits.log_quota_total_bytes)
        self.admission = Admission(self.limits)
        self.metrics = LiveMetrics(lambda: len(self.peers), lambda: self.admission.total)
        self.guard = LoginGuard(self.limits)
        self._swept = float("-inf")  # monotonic time of the last sweep of partial uploads
        self._push_locks: dict[str, asyncio.Lock] = {}  # one export + offer at a time per agent
        self.poll_interval = poll_interval
        self._poller: asyncio.Task[None] | None = None
        # PostgreSQL: LISTEN for wake-ups (hub.live_notify); None: poll every round
        self._listener = Listener(notify_dsn, self._wake_up) if notify_dsn else None
        self._listening: asyncio.Task[None] | None = None
        # SQLite: a datagram socket in ``wake_dir`` that committing processes wake
        # (hub.live_wake); opened with the push loop
        self._waker = (WakeSocket(wake_dir, functools.partial(self._wake_up, "local"))
                       if wake_dir is not None else None)
        self._woken = ""  # what woke the loop since the last poll started ("": nothing)
        # set with _woken: ends the push loop's wait between two rounds (a new one each start,
        # made by :meth:`_poll_loop`, on its event loop)
        self._wake: asyncio.Event | None = None
        self._bursts = 0  # _push_burst calls under way
        # Python's GC thresholds before the first of the bursts under way (_push_burst)
        self._gc_thresholds: tuple[int, int, int] = gc.get_threshold()
        self._gc_held = False  # frozen and thresholds raised by a burst, not given back yet
        self._gc_release: asyncio.Handle | None = None  # the pending _release_gc
        # the newest deployment id a poll saw queued: while bursts run, polls look only for
        # newer ones (poll_once)
        self._seen_work = 0
        # time.monotonic() of the last poll that read all queued work (none yet: not 0.0,
        # which is only seconds before a machine booted just now)
        self._full_polled = float("-inf")
        # agents whose export failed on a database error after claiming (see _export);
        # added to by export threads, read by the push loop: under its lock
        self._unclaim: set[str] = set()
        self._unclaim_lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # outlive a connection (database work)
        # (agent id, spooled file name, how, when the agent confirmed it) of bundles agents
        # confirmed, not recorded yet: recorded in one transaction per batch
        # (_record_delivered), not one per bundle; the push-latency metric counts to the
        # confirmation, not to the batch's commit
        self._delivered: list[tuple[str, str, str, Any]] = []
        # recover_delivered and release_dead_claims ran in this process (_take_over); a
        # failed try is made again from this time.monotonic() on
        self._recovered = False
        self._take_over_after = 0.0
        self._recording: asyncio.Task[None] | None = None
        # agent -> (time of its last heartbeat, its connection), not written yet
        self._seen: dict[str, tuple[Any, str]] = {}
        # agent -> (time it disconnected, the connection that ended), not written yet
        self._gone: dict[str, tuple[Any, str]] = {}
        # agent -> (time of its last STATE, its connection, the agents columns it sets), not
        # written yet (docs/live-protocol.md §3.1; written with the heartbeats)
        self._states: dict[str, tuple[Any, str, dict[str, Any]]] = {}
        # agent -> (fingerprint of its queued work, monotonic time before which an export that
        # failed for that same work is not tried again)
        self._export_failed: dict[str, tuple[tuple[int, int | None], float]] = {}
        # agents authenticated, not yet asked whether work is queued (_queued_at_connect)
        self._connected_unchecked: list[tuple[str, asyncio.Future[bool]]] = []
        self._connect_checks: asyncio.Task[None] | None = None
        #: agent -> the newest preflight plan whose spool was offered to it (poll_once)
        self._plans_offered: dict[str, int] = {}
        # Idle workers end when the LiveHub is garbage-collected (ThreadPoolExecutor's own
        # weak reference), so nobody has to shut these down.
        self._export_pool = ThreadPoolExecutor(EXPORT_THREADS, "tiangong-live-export")
        self._offer_pool = ThreadPoolExecutor(OFFER_THREADS, "tiangong-live-offer")
        self._digests = SpoolDigests()  # each spooled bundle hashed once for its OFFERs

    async def _in_pool(self, pool: ThreadPoolExecutor, func: Callable[..., _T],
                       *args: Any) -> _T:
        """``func(*args)`` in one of this hub's own thread pools (see the module docstring)."""
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(func, *args))

    # -- paths

    @property
    def spool_root(self) -> Path:
        return self._spool_root

    @property
    def inbox(self) -> Path:
        return self.data_dir / "live-inbox"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def online(self) -> frozenset[str]:
        """Agents with an authenticated connection now."""
        return frozenset(self.peers)

    # -- database work (runs in a worker thread, one session per call)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session committed at the end of the block, rolled back on any exception."""
        with committed(self.session_factory) as session:
            yield session

    @contextlib.contextmanager
    def _services(self) -> Iterator[ServiceContext]:
        if self._keys_source is not None:
            self.keys = self._keys_source()
        with live_services(self.session_factory, self.clock, self.actor, self.keys,
                           self.data_dir) as ctx:
            yield ctx

    def _lookup_key(self, agent_id: str) -> PublicKey:
        """The enrolled key of ``agent_id`` (the caller counts and audits refusals).

        Raises:
            UnknownAgentError, RevokedAgentError.
        """
        with self._session() as session:  # a read: no actor to load
            try:
                agent = get_agent(session, agent_id)
            except HubError:
                agent = None
            if agent is not None and agent.status == "enrolled":
                return PublicKey.from_hex(agent.ed25519_public)
        raise (UnknownAgentError(f"live: no enrolled agent {agent_id!r}")
               if agent is None else
               RevokedAgentError(f"live: agent {agent_id} is {agent.status}"))

    def _audit_refusals(self, counts: list[RefusalCount]) -> None:
        """One ``live.refused`` event per ``(source, agent id, code)`` and interval, with
        the number of refusals it stands for (never one event per attempt)."""
        with self._services() as ctx:
            for rc in counts:
                audit.record(ctx, "live.refused", "agent", rc.agent_id,
                             rc.details(self.limits.refused_audit_interval_s))

    async def _refused(self, peer: _Peer, agent_id: str, error: SyncError) -> None:
        """A login was refused: count it against the source (back-off) and audit it in
        aggregate (:class:`hub.live_guard.LoginGuard`)."""
        log.warning("live: %s (from %s)", error, peer.source)
        self.metrics.error(error.code)
        if not isinstance(error, BackoffError | BusyError):
            self.guard.failed(peer.source)
        first = self.guard.count_refusal(peer.source, agent_id, error.code, str(error))
        if first is not None:
            await asyncio.to_thread(self._audit_refusals, [first])

    async def flush_refusals(self, *, force: bool = False) -> None:
        """Audit the refusals counted in the interval that ended (``force``: now)."""
        due = self.guard.due(force=force)
        if due:
            await asyncio.to_thread(self._audit_refusals, due)

    def _addressed_to(self, agent_id: str, bundle_id: str) -> bool:
        """Whether the hub exported bundle ``bundle_id`` for ``agent_id`` (live or media)."""
        with self._session() as session:
            found = session.scalar(
                select(Deployment.id).join(AgentRow, Deployment.agent_id == AgentRow.id)
                .where(AgentRow.agent_id == agent_id, Deployment.bundle_id == bundle_id))
        return found is not None

    def _touch(self, agent_id: str, conn_id: str) -> None:
        """``agent_id`` authenticated on connection ``conn_id``: seen now, online for one
        heartbeat interval (and the grace), held by that connection. (Runs in a worker
        thread; the caller dropped the agent's pending heartbeat and disconnect first, on the
        event loop, which alone touches those dicts.) One UPDATE: no actor or agent row to
        load for it (10,000 agents connecting after a restart)."""
        table = AgentRow.__table__
        now = self.clock()
        with self._session() as session:
            session.execute(update(table).where(table.c.agent_id == agent_id).values(
                last_seen=now, online_until=presence_until(now, self.heartbeat),
                live_conn=conn_id))

    def _flush_presence(self, seen: dict[str, tuple[Any, str]],
                        gone: dict[str, tuple[Any, str]],
                        states: dict[str, tuple[Any, str, dict[str, Any]]] | None = None
                        ) -> None:
        """Write heartbeats (``last_seen``, ``online_until``), STATE reports (inventory,
        holds, agent version) and disconnects (``online_until`` = the moment, no
        ``live_conn``) of many agents in one transaction. Each row only while the same
        connection still holds the agent: a late write of a connection that another live
        process (or a reconnect here) replaced changes nothing, and an agent's STATE only
        ever reaches that agent's row.
        """
        table = AgentRow.__table__
        held = and_(table.c.agent_id == bindparam("aid"), table.c.live_conn == bindparam("conn"))
        with self._session() as session:
            if states:
                session.execute(
                    update(table).where(held)
                    .values(inventory=bindparam("inv"), holds=bindparam("holds"),
                            inventory_at=bindparam("at"),
                            agent_version=func.coalesce(bindparam("ver"),
                                                        table.c.agent_version)),
                    [{"aid": aid, "conn": conn, "at": at, "inv": v["inventory"],
                      "holds": v["holds"], "ver": v["agent_version"]}
                     for aid, (at, conn, v) in sorted(states.items())])
            if seen:
                # presence_until is the time heard plus a fixed span: taken once, not per row
                # (10,000 agents heartbeat 333 times a second)
                some = next(iter(seen.values()))[0]
                ahead = presence_until(some, self.heartbeat) - some
                session.execute(
                    update(table).where(held)
                    .values(last_seen=bindparam("at"), online_until=bindparam("until")),
                    [{"aid": aid, "conn": conn, "at": at, "until": at + ahead}
                     for aid, (at, conn) in sorted(seen.items())])
            if gone:
                session.execute(
                    update(table).where(held)
                    .values(online_until=bindparam("at"), live_conn=None),
                    [{"aid": aid, "conn": conn, "at": at}
                     for aid, (at, conn) in sorted(gone.items())])

    async def flush_seen(self) -> None:
        """Write the pending heartbeats and disconnects now (the push loop does this at once
        for disconnects, every :data:`SEEN_FLUSH_SECONDS` for heartbeats); on a database error
        they are kept for the next try."""
        if not self._seen and not self._gone and not self._states:
            return
        seen, self._seen = self._seen, {}
        gone, self._gone = self._gone, {}
        states, self._states = self._states, {}
        try:
            await asyncio.to_thread(self._flush_presence, seen, gone, states)
        except BaseException:
            for aid, entry in seen.items():
                self._seen.setdefault(aid, entry)
            for aid, report in states.items():
                self._states.setdefault(aid, report)
            for aid, entry in gone.items():
                self._gone.setdefault(aid, entry)
            raise

    def _export(self, agent_id: str) -> tuple[int, int]:
        """Export ``agent_id``'s queued deployments into its spool; (written, failed).

        A database error may come after the export claimed a deployment (``exporting``,
        claimed by this process): such a claim is never taken over while this process lives,
        so the agent is noted for :meth:`_release_claims` (the push loop releases them, then
        the next export resumes them)."""
        try:
            return self._export_once(agent_id)
        except Exception:  # a database error, or a bug: the claims would stay till restart
            with self._unclaim_lock:
                self._unclaim.add(agent_id)
            raise

    def _export_once(self, agent_id: str) -> tuple[int, int]:
        spool = self.spool_root / agent_id
        with self._services() as ctx:
            agent = get_agent(ctx.session, agent_id)
            if not any(w.queued for w in live_work(ctx.session, [agent_id])):
                # Nothing waits, held by a window or not (every connection asks: 10,000
                # agents reconnecting would otherwise run 10,000 empty exports; one with
                # held work still runs, which refreshes the holds).
                self._export_failed.pop(agent_id, None)
                return 0, 0
            before = live_work(ctx.session, [agent_id], now=ctx.now())
            fingerprint = (before[0].queued, before[0].newest) if before else None
            # Whoever asks (the push at connection or the push loop), the same work that
            # failed is left alone for EXPORT_RETRY_SECONDS: one audit event, not one a poll.
            failed = self._export_failed.get(agent_id)
            if (fingerprint is not None and failed is not None and failed[0] == fingerprint
                    and time.monotonic() < failed[1]):
                return 0, 0
            report = export_environment(ctx, agent.environment.name, spool, agent_id=agent_id,
                                        live=True)
        if not report.failed:
            self._export_failed.pop(agent_id, None)
        else:
            # What stays queued is what failed: the loop's (queued, newest) will equal this
            # (not ``before``: the export commits its checkpoint and may see newer work).
            ids = [dep_id for dep_id, _ in report.failed]
            self._export_failed[agent_id] = ((len(ids), max(ids)),
                                             time.monotonic() + EXPORT_RETRY_SECONDS)
        self.metrics.exports.inc(len(report.written))
        for path, size, digest in _digests(report.written):
            self._digests.remember(Path(path), size, digest)
        for dep_id, reason in report.failed:
            self.metrics.error("export_failed")
            log.error("live: export of deployment %s for %s failed: %s", dep_id, agent_id,
                      reason)
        if report.index is not None:
            report.index.unlink(missing_ok=True)  # the index is for people reading media
        return len(report.written), len(report.failed)

    def _export_many(self, agent_ids: list[str]) -> dict[str, tuple[int, int]]:
        """:meth:`_export` for many agents in one call, in this process
        (:func:`export_many`); agent id -> (written, failed). On a database error every one
        of them is noted for :meth:`_release_claims`."""
        try:
            outcome = export_many(self._services, self.spool_root, agent_ids)
        except Exception:  # a database error, or a bug: the claims would stay till restart
            with self._unclaim_lock:
                self._unclaim.update(agent_ids)
            raise
        return self._took(outcome)

    def _took(self, outcome: ExportOutcome) -> dict[str, tuple[int, int]]:
        """Count and log what an export call did (here or in a worker process); note the
        agents whose export failed for :data:`EXPORT_RETRY_SECONDS`. Returns its counts."""
        failed_ids: dict[str, list[int]] = {}
        for dep_id, agent_id, reason in outcome.failed:
            failed_ids.setdefault(agent_id, []).append(dep_id)
            self.metrics.error("export_failed")
            log.error("live: export of deployment %s for %s failed: %s", dep_id,
                      agent_id or "?", reason)
        counts = dict(outcome.counts)
        for agent_id, dep_ids in failed_ids.items():
            if agent_id in counts:
                counts[agent_id] = (counts[agent_id][0], len(dep_ids))
                self._export_failed[agent_id] = ((len(dep_ids), max(dep_ids)),
                                                 time.monotonic() + EXPORT_RETRY_SECONDS)
        self.metrics.exports.inc(outcome.written)
        for path, size, digest in outcome.digests:
            self._digests.remember(Path(path), size, digest)
        for agent_id, (_, failed) in counts.items():
            if not failed:
                self._export_failed.pop(agent_id, None)
        return counts

    def _claim_tokens(self) -> set[str]:
        """The claim tokens of this process and of its export workers (hub.live_exports)."""
        workers = self.export_workers.tokens if self.export_workers is not None else set()
        return {my_token(), *workers}

    def _unclaim_agent(self, agent_id: str) -> None:
        """Release the claims of this process (and its export workers) on ``agent_id``'s
        ``exporting`` deployments."""
        agent_pk = select(AgentRow.id).where(AgentRow.agent_id == agent_id).scalar_subquery()
        with self._session() as session:
            session.execute(
                update(Deployment)
                .where(Deployment.agent_id == agent_pk, Deployment.state == "exporting",
                       Deployment.claimed_by.in_(sorted(self._claim_tokens())))
                .values(claimed_by=None)
                .execution_options(synchronize_session=False))

    async def _release_claims(self) -> None:
        """For every agent whose export failed on a database error or in an export worker
        that died: release its claims — under the agent's push lock, so no export of it runs
        meanwhile. On a database error the agent stays noted for the next round."""
        with self._unclaim_lock:
            noted = sorted(self._unclaim)
        for agent_id in noted:
            lock = self._push_locks.setdefault(agent_id, asyncio.Lock())
            if lock.locked():
                continue  # an export of it runs: next round
            async with lock:
                await asyncio.to_thread(self._unclaim_agent, agent_id)
                with self._unclaim_lock:
                    self._unclaim.discard(agent_id)
                log.info("live: released the export claims of %s after a database error or "
                         "a lost export worker; the next round exports them again", agent_id)

    def _live_work(self, agent_ids: Collection[str], busy: set[str],
                   after: int | None = None) -> list[LiveWork]:
        session = self.session_factory()
        try:
            return live_work_of(session, agent_ids, now=self.clock(), busy=busy, after=after)
        finally:
            session.rollback()
            session.close()

    def _audit_revoked(self, agent_id: str, status: str) -> None:
        with self._services() as ctx:
            audit.record(ctx, "live.revoked", "agent", agent_id,
                         {"code": "revoked", "status": status,
                          "reason": "connection closed: the agent is no longer enrolled"})

    def _mark_delivered(self, items: list[tuple[str, str, str]],
                        confirmed_at: dict[tuple[str, str], Any] | None = None) -> None:
        """Record, in one transaction, that each agent of ``items`` (agent id, file name,
        how) holds the spooled bundle of that name: its deployment moves ``exported →
        delivered`` (unless it is already further on, e.g. its result came by media first)
        and a ``live.delivered`` event says ``how`` (``received`` / ``have-it``). The push
        latency observed for each runs to its time in ``confirmed_at`` (agent id, file
        name), else to now.

        One commit for a batch (a burst to 10,000 agents made 10,000 commits, behind the
        exports), and a batch's SQL does not grow per item beyond its rows: with the audit
        head held (:func:`hub.services.audit.held_head`), the agents and their deployments
        in two queries of plain rows, the deployments' updates in one executemany statement
        (:func:`hub.services.deployments.mark_delivered_many`), the events in one insert.
        Per bundle this was 2.3 ms of the live process's CPU in a 1,000-agent burst, then
        0.3 ms with ORM objects (docs/benchmarks.md, "Session 7: live burst", "Session 8:
        live burst"). The spool directories the bundles left (for ``sent/``) are made
        durable first (:meth:`_sync_spools`)."""
        self._sync_spools(sorted({self.spool_root / agent_id for agent_id, _, _ in items}))
        crash_point("hub.live-delivering")
        with self._services() as ctx, audit.held_head(ctx.session):
            found = _delivered_deployments(ctx.session, items)
            environments = {env_id: ctx.session.get(Environment, env_id) for env_id in
                            {row.environment_id for row in found.values()} - {None}}
            moved: list[tuple[int, Environment | None]] = []
            # per item: its deployment row (None: a plan's file), its state after the batch,
            # whether this batch moves it (its deployment.delivered event comes first)
            told: list[tuple[Any, str | None, bool]] = []
            done: set[int] = set()
            for agent_id, name, _ in items:
                row = found.get((agent_id, name))
                if row is None:
                    told.append((None, None, False))
                elif row.state == "exported" and row.id not in done:
                    # Delivery is the last leg of export (the live server's own permission).
                    done.add(row.id)
                    moved.append((row.id, environments.get(row.environment_id)))
                    told.append((row, "delivered", True))
                    at = (confirmed_at or {}).get((agent_id, name)) or ctx.now()
                    waited = (at - row.queued_at).total_seconds()
                    self.metrics.push_latency.observe(max(0.0, waited))
                else:
                    told.append((row, "delivered" if row.id in done else row.state, False))
            transitions = iter(mark_delivered_many(ctx, moved))
            events: list[audit.NewEvent] = []
            for (agent_id, name, how), (row, state, moves) in zip(items, told, strict=True):
                if moves:
                    events.append(next(transitions))
                events.append(("live.delivered", "deployment" if row else "agent",
                               str(row.id) if row else agent_id,
                               {"agent_id": agent_id, "file": name, "how": how,
                                "state": state}))
            audit.record_many(ctx, events)

    @staticmethod
    def _sync_spools(directories: list[Path]) -> None:
        """Make the entries of ``directories`` durable (the bundles moved into ``sent/``):
        from :data:`~signing.fileio.SYNCFS_FROM` of them, one ``syncfs`` per file system they are
        on (:func:`~signing.fileio.syncfs_each`); else, or where ``syncfs`` is unavailable
        or fails (or a directory is gone), an fsync of each. A burst's
        batch of 400 paid 400 directory fsyncs — 55 µs of CPU and ~1 ms of waiting each
        on the test machine, in the thread that records them — where one syncfs took
        2 ms of CPU and 3-9 ms (docs/benchmarks.md, "Session 11: live burst").

        Raises:
            OSError: naming the directory whose fsync failed (the batch waits for the next
                round, :meth:`_record_delivered`).
        """
        if len(directories) >= SYNCFS_FROM and syncfs_each(directories):
            return
        for directory in directories:
            try:
                fsync_dir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(directory)) from exc

    def _import(self, path: Path) -> tuple[str, str]:
        """Import one received result; (status, reason) as the importer says."""
        with self._services() as ctx:
            row = import_result(ctx, path, results_dir=self.results_dir)
        log.info("live: import of %s: %s %s", path.name, row.status, row.reason)
        return row.status, row.reason

    # -- the connection

    async def handler(self, ws: ServerConnection) -> None:
        """One agent connection, from HELLO to close. The first one starts the push loop
        (so whoever serves :meth:`handler` needs nothing else).

        Before authentication (§5.3): a source address in back-off is refused ``backoff``,
        one over the caps of unauthenticated connections ``busy``, both before anything is
        read; a message may be at most :data:`HANDSHAKE_MESSAGE_BYTES`; AUTH must verify
        within ``handshake_timeout_s`` of connecting (else ``timeout``)."""
        self._start_poller()
        source = _source(ws)
        peer = _Peer(ws, HubSide(self.hub_id, binding=self.binding, heartbeat=self.heartbeat),
                     source, self.limits, on_error=self.metrics.error)
        peer.writer = asyncio.create_task(self._write_loop(peer))
        conn = peer.conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.handshake_timeout_s
        admitted = False
        try:
            blocked = self.guard.blocked(source)
            if blocked:
                error: SyncError = BackoffError(
                    f"live: {source} is in back-off for {blocked:.0f} s more after failed "
                    "logins", remote_text=f"too many failed logins; retry in {blocked:.0f} s")
                conn.fail(error)
                await self._refused(peer, "-", error)
                return
            if not self.admission.admit(source):
                error = BusyError(
                    f"live: refusing a connection from {source}: over [live] "
                    f"max_unauthenticated_per_address = "
                    f"{self.limits.max_unauthenticated_per_address} or max_unauthenticated = "
                    f"{self.limits.max_unauthenticated}")
                conn.fail(error)
                await self._refused(peer, "-", error)
                return
            admitted = True
            ws.protocol.max_message_size = HANDSHAKE_MESSAGE_BYTES
            while not conn.is_closed:
                if conn.is_open:
                    # Silence is watched by one timer per connection (_silent), not by a
                    # timeout around every message: a timer, a Timeout and their garbage
                    # less per heartbeat.
                    message = await ws.recv()
                else:
                    try:
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            raise TimeoutError
                        # Not wait_for: on Python 3.11 it runs recv() in a task of its own.
                        async with asyncio.timeout(timeout):
                            message = await ws.recv()
                    except TimeoutError:
                        self.metrics.error("timeout")
                        conn.fail(HandshakeTimeoutError(
                            f"live: no authentication from {source} within [live] "
                            f"handshake_timeout_s = {self.limits.handshake_timeout_s:g} s"))
                        log.warning("%s", conn.failure)
                        break
                peer.heard = loop.time()
                if isinstance(message, str):
                    # §2.1: a text message is a protocol error, close code 4000.
                    conn.fail(ProtocolError("text WebSocket message",
                                            remote_text="binary messages only"))
                else:
                    try:
                        conn.receive_data(message)
                    except AuthError as exc:
                        await self._refused(peer, conn.agent_id or "?", exc)
                    except SyncError as exc:
                        log.warning("live: agent %s: %s", conn.agent_id, exc)
                peer.handling = True
                for event in conn.events_received():
                    if conn.is_closed:
                        break
                    await self._on_event(peer, event)
                peer.handling = False
                if conn.is_open and admitted:
                    self.admission.release(source)
                    admitted = False
                peer.flush()
        except ConnectionClosed:
            pass
        finally:
            if admitted:
                self.admission.release(source)
            if peer.silence is not None:
                peer.silence.cancel()
            for task in peer.tasks:
                task.cancel()
            for inc in peer.incoming.values():
                inc.file.close()  # what was fsynced stays for a resume
            if conn.agent_id is not None and self.peers.get(conn.agent_id) is peer:
                del self.peers[conn.agent_id]
                self.logs.forget(conn.agent_id)
                # Offline at once (the push loop writes it within POLL_SECONDS).
                self._seen.pop(conn.agent_id, None)
                self._gone[conn.agent_id] = (self.clock(), peer.conn_id)
                self._start_poller()
                log.info("live: agent %s offline", conn.agent_id)
            peer.flush()
            code = conn.close_code if conn.failure is not None else 1000
            await self._close(peer, code or 1000,
                              conn.failure.code if conn.failure is not None else "")

    def _silent(self, peer: _Peer) -> None:
        """The timer of an authenticated connection: closed (code 1000, error
        ``heartbeat_missed``) once nothing came for :data:`SILENT_HEARTBEATS` heartbeat
        intervals, else armed again for that long after its last message."""
        peer.silence = None
        if peer.ending or peer.conn.is_closed:
            return
        loop = asyncio.get_running_loop()
        due = peer.heard + SILENT_HEARTBEATS * self.heartbeat
        if peer.handling:
            # Reading is paused in a message's handling (an upload waiting for the disk):
            # the agent's messages wait unread, so its silence is not measured meanwhile.
            peer.heard = loop.time()
            due = peer.heard + SILENT_HEARTBEATS * self.heartbeat
        if loop.time() < due:
            peer.silence = loop.call_at(due, self._silent, peer)
            return
        self.metrics.error("heartbeat_missed")
        log.warning("live: agent %s missed %d heartbeats; closing", peer.conn.agent_id,
                    SILENT_HEARTBEATS)
        self._spawn(self._close(peer, 1000, ""))

    async def _write_loop(self, peer: _Peer) -> None:
        """Send what :meth:`_Peer.flush` queued, in order. A write that makes no progress
        for ``send_timeout_s`` (the peer stopped reading) cuts the connection: the reading
        side sees it closed and ends."""
        ws = peer.ws
        try:
            while True:
                if not peer.queue:
                    if peer.ending:
                        return
                    peer.wakeup.clear()
                    await peer.wakeup.wait()
                    continue
                message = peer.queue[0]
                try:
                    async with asyncio.timeout(self.limits.send_timeout_s):
                        await live_send.send(ws, message)  # a CHUNK: its bytes not copied
                except TimeoutError:
                    self.metrics.error("send_timeout")
                    log.warning("live: agent %s (%s) has not read for [live] send_timeout_s = "
                                "%g s; closing", peer.conn.agent_id, peer.source,
                                self.limits.send_timeout_s)
                    peer.abort()
                    return
                if peer.queue and peer.queue[0] is message:
                    peer.queue.popleft()
                    peer.queued_bytes -= len(message)
                    # Sent: a CHUNK's buffer (the only bytearrays queued) can take the next
                    # chunk's bytes once nothing else holds it (_send_chunks).
                    if (type(message) is bytearray and peer.sending
                            and len(peer.spare) < SPARE_CHUNKS):
                        peer.spare.append(message)
                del message  # the spare list and a transport are a buffer's only holders
                if peer.queued_bytes < self.limits.send_buffer_bytes:
                    peer.room.set()
        except ConnectionClosed:
            peer.ending = True
            peer.room.set()

    async def _close(self, peer: _Peer, code: int, reason: str) -> None:
        """Send what is queued, then the closing handshake — within :data:`CLOSE_SECONDS`
        (bounded by ``send_timeout_s``); a peer that does not read is cut off."""
        peer.ending = True
        peer.wakeup.set()
        try:
            async with asyncio.timeout(min(CLOSE_SECONDS, self.limits.send_timeout_s)):
                if peer.writer is not None:
                    await asyncio.wait([peer.writer])  # never raises, even if cancelled
                await peer.ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            peer.room.set()
            if peer.writer is not None:
                peer.writer.cancel()
            if peer.ws.state is not WsState.CLOSED:
                peer.ws.transport.abort()

    async def _replace(self, old: _Peer) -> None:
        """The same agent connected again: its old connection ends at once, whether or not
        it still reads (§10.1)."""
        for task in old.tasks:
            task.cancel()
        await self._close(old, 1001, "replaced by a new connection")

    async def _on_event(self, peer: _Peer, event: Any) -> None:
        conn = peer.conn
        if isinstance(event, HelloReceived):
            try:
                key = await asyncio.to_thread(self._lookup_key, event.agent_id)
            except AuthError as exc:
                conn.fail(exc)
                await self._refused(peer, event.agent_id, exc)
                return
            conn.challenge(key, os.urandom(NONCE_BYTES), int(time.time()))
        elif isinstance(event, Authenticated):
            peer.ws.protocol.max_message_size = MAX_MESSAGE_BYTES
            self.guard.succeeded(peer.source)
            old = self.peers.get(event.agent_id)
            self.peers[event.agent_id] = peer
            self._start_workers()
            if old is not None and old is not peer:
                log.info("live: agent %s connected again; closing its old connection",
                         event.agent_id)
                self._spawn(self._replace(old))
            log.info("live: agent %s online", event.agent_id)
            loop = asyncio.get_running_loop()
            peer.silence = loop.call_at(loop.time() + SILENT_HEARTBEATS * self.heartbeat,
                                        self._silent, peer)
            self._seen.pop(event.agent_id, None)
            self._gone.pop(event.agent_id, None)
            await asyncio.to_thread(self._touch, event.agent_id, peer.conn_id)
            peer.flush()  # WELCOME before any offer
            task = asyncio.create_task(self._push(peer, event.agent_id))
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)
        elif isinstance(event, HeartbeatReceived):
            if conn.agent_id is not None:
                # Written by the push loop, all agents in one transaction (SEEN_FLUSH_SECONDS):
                # one commit per heartbeat made 1,000 agents 33 commits a second.
                self._seen[conn.agent_id] = (self.clock(), peer.conn_id)
        elif isinstance(event, StateReceived):
            # The authenticated agent's own row only (its connection, §3.1); the newest
            # report wins over any result made before it (hub.services.preflight).
            values = state_values(event.state)
            if conn.agent_id is not None and values is not None:
                self._states[conn.agent_id] = (self.clock(), peer.conn_id, values)
        elif isinstance(event, ResumeRequested):
            task = asyncio.create_task(self._send_file(peer, event.transfer, event.offset))
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)
        elif isinstance(event, AckReceived):
            if event.transfer in peer.acked:
                peer.acked[event.transfer].set()
        elif isinstance(event, TransferReceived):
            self._sent(peer, event.transfer)
        elif isinstance(event, TransferCancelled):
            self._cancelled(peer, event)
        elif isinstance(event, OfferReceived):
            await self._open_incoming(peer, event.offer)
        elif isinstance(event, ChunkReceived):
            await self._write_chunk(peer, event)
        elif isinstance(event, TransferDone):
            await self._finish_incoming(peer, event.transfer)
        elif isinstance(event, LogReceived):
            await self._on_log(peer, event)

    async def _on_log(self, peer: _Peer, event: LogReceived) -> None:
        """Store a LOG line under (this agent, its bundle) — only for a bundle the hub
        addressed to this agent; any other closes the connection (``forbidden``)."""
        agent_id = peer.conn.agent_id
        assert agent_id is not None
        if event.bundle_id not in peer.bundles:
            if not await asyncio.to_thread(self._addressed_to, agent_id, event.bundle_id):
                error = ForbiddenError(
                    f"live: agent {agent_id} sent LOG for bundle {event.bundle_id!r}, which "
                    "the hub did not address to it; closing",
                    remote_text="LOG for a bundle not addressed to this agent")
                log.warning("%s", error)
                self.metrics.error(error.code)
                peer.conn.fail(error)
                return
            peer.bundles.add(event.bundle_id)
        stored = self.logs.add(agent_id, event)
        if isinstance(stored, LogQuotaError):
            self.metrics.error("log_quota")
            log.warning("%s (bundle %s)", stored, event.bundle_id)

    # -- the push loop

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake_up(self, by: str = "notify") -> None:
        """Start a round of the push loop now (on the event loop's thread; a wake-up during a
        poll starts one more round after it, any number of them one round); ``by``: what
        woke it, for the metric (``notify``: PostgreSQL, ``local``: a datagram)."""
        self._woken = by
        if self._wake is not None:
            self._wake.set()

    def _start_poller(self) -> None:
        if self._listener is not None and (self._listening is None or self._listening.done()):
            self._listening = asyncio.get_running_loop().create_task(
                self._listener.run(), name="tiangong-live-listen")
        if self._poller is None or self._poller.done():
            if self._waker is not None and not self._waker.listening:
                self._waker.open()  # on failure logged: the loop polls as before
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(), name="tiangong-live-push")
            self._poller.add_done_callback(self._poller_ended)

    @staticmethod
    def _poller_ended(task: asyncio.Task[None]) -> None:
        """Say why the push loop stopped (the next connection starts it again)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("live: the push loop stopped; the next connection restarts it",
                      exc_info=task.exception())

    async def _poll_loop(self) -> None:
        """Every :data:`POLL_SECONDS` (or a shorter ``poll_interval``): write presence, audit
        refusals, sweep partial uploads; every ``poll_interval`` — while listening for
        NOTIFY, every :data:`NOTIFY_FALLBACK_POLL_S` as a safety net; while a burst runs, at
        most every :data:`BURST_POLL_SECONDS` — ask the database for work
        (:meth:`poll_once`). A wake-up (a NOTIFY, :mod:`hub.live_notify`; a local
        datagram, :mod:`hub.live_wake`) starts a poll at once, without waiting for the
        interval — at most one every :data:`WAKE_GAP_SECONDS`, one poll at a time; the
        presence work stays at its own pace. First, once a process, what a killed live
        server left in ``sent/`` unrecorded is recorded (:meth:`recover_delivered`)."""
        flushed = time.monotonic()
        # time.monotonic() of the last poll's start: none yet, so the first round with an
        # agent connected polls at once (0.0 made it wait until the machine had been up
        # for a whole poll interval: an hour-long one on a machine booted minutes ago)
        polled = float("-inf")
        woke = float("-inf")  # ... of the last poll a wake-up started
        # A wake-up before this point is in self._woken, which the loop reads first.
        self._wake = wake = asyncio.Event()
        await self._take_over()
        # Presence, refusals, sweeps every round of POLL_SECONDS (or a shorter poll interval);
        # the database asked for work every poll_interval, or at once when woken.
        round_s = min(self.poll_interval, POLL_SECONDS)
        tick = time.monotonic() + round_s  # when the next timed round is due
        while True:
            if not self._woken:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, tick - time.monotonic()))
            try:
                if time.monotonic() >= tick:
                    tick = time.monotonic() + round_s
                    if self._waker is not None:
                        self._waker.check()
                    await self._take_over()
                    if self._gone or ((self._seen or self._states)
                                      and time.monotonic() - flushed >= SEEN_FLUSH_SECONDS):
                        flushed = time.monotonic()
                        await self.flush_seen()
                    await self.flush_refusals()
                    self._record_delivered_soon()
                    await self._sweep()
                    if self._unclaim:
                        await self._release_claims()
                elif not self._woken:
                    continue  # the wait's timer fired a hair before the tick
                if not self.peers:
                    self._woken = ""  # nobody to push to: no query at all (a connecting
                    wake.clear()      # agent's queued work is asked for at once)
                    continue
                every = self.poll_interval
                if self._listener is not None and self._listener.listening:
                    every = max(every, NOTIFY_FALLBACK_POLL_S)
                if self._bursts:
                    every = max(every, BURST_POLL_SECONDS)
                since = time.monotonic() - polled
                # (half a round early counts: the rounds' own jitter must not skip a poll)
                if not self._woken and since < every - round_s / 2:
                    continue
                if self._woken and time.monotonic() - woke < WAKE_GAP_SECONDS:
                    # later wake-ups join in (a timed poll just before does not count: the
                    # waking commit may have missed it)
                    await asyncio.sleep(WAKE_GAP_SECONDS - (time.monotonic() - woke))
                # what was committed before this point is in the poll's answer
                woken, self._woken = self._woken, ""
                wake.clear()
                polled = time.monotonic()
                if woken:
                    woke = polled
                self.metrics.wakeups.labels(woken or "poll").inc()
                await self.poll_once()
            except (SQLAlchemyError, HubError, OSError) as exc:
                # The database may be restarting; the next round tries again.
                self.metrics.error("push_loop")
                log.error("live: push loop: %s: %s", type(exc).__name__, exc)

    async def _take_over(self) -> None:
        """Once a process, before its first poll: record what a killed live server left in
        ``sent/`` unrecorded (:meth:`recover_delivered`) and release the export claims of
        processes that are gone (:meth:`release_dead_claims`). A try that failed (the
        database restarting) is made again from the push loop's rounds, every
        :data:`TAKE_OVER_RETRY_SECONDS`: it waited for the next start of the live server."""
        if self._recovered or time.monotonic() < self._take_over_after:
            return
        try:
            await self._in_pool(self._export_pool, self.recover_delivered)
            await self._in_pool(self._export_pool, self.release_dead_claims)
            self._recovered = True
        except (SQLAlchemyError, HubError, OSError) as exc:
            self._take_over_after = time.monotonic() + TAKE_OVER_RETRY_SECONDS
            log.error("live: cannot take over what a killed live server left (its "
                      "unrecorded deliveries, its export claims): %s: %s; tried again in "
                      "%g s", type(exc).__name__, exc, TAKE_OVER_RETRY_SECONDS)

    async def _sweep(self) -> None:
        """Delete partial uploads abandoned for ``partial_max_age_s`` (at most every
        :data:`SWEEP_SECONDS`, sooner for a short maximum age)."""
        every = min(SWEEP_SECONDS, self.limits.partial_max_age_s / 2)
        if time.monotonic() - self._swept < every:
            return
        self._swept = time.monotonic()
        keep = {inc.path for p in self.peers.values() for inc in p.incoming.values()}
        removed = await asyncio.to_thread(sweep_partials, self.inbox,
                                          self.limits.partial_max_age_s, time.time(), keep)
        for path in removed:
            log.info("live: removed abandoned partial upload %s", path)

    async def shutdown(self) -> None:
        """Before the event loop ends: audit the refusals still counted, write the
        disconnects (every agent of this process is offline now) and the deliveries not
        recorded yet, stop listening (NOTIFY, local wake-ups), give the collector back what a
        burst held (:meth:`_release_gc`)."""
        self._release_gc(force=True)
        if self._listening is not None:
            self._listening.cancel()
        if self._waker is not None:
            self._waker.close()
        await self.flush_refusals(force=True)
        await self.flush_seen()
        if self._recording is not None:
            await asyncio.wait([self._recording])
        await self._record_delivered()
        if self.export_workers is not None:
            self.export_workers.shutdown()

    async def poll_once(self) -> None:
        """One round of the push loop: for every connected agent, drop it if it is no longer
        enrolled, else start a push if it has queued deployments (one push per agent at a
        time; an export that failed is retried after :data:`EXPORT_RETRY_SECONDS` unless the
        queued work changed).

        Meanwhile Python's collector runs with a burst's thresholds (:meth:`_hold_gc`): the
        poll that finds a rollout allocates a few objects per queued agent, which could tip
        the oldest generation over its threshold — a full collection of the whole heap, 0.5
        to 0.9 s at 10,000 connected agents, between the queue's commit and the burst's
        first export (docs/benchmarks.md, "Session 11 (later): a burst's first export"). A
        burst this poll starts takes them over at its first step (:meth:`_push_burst`), which
        runs before the release scheduled here and cancels it; else they are given back at
        once."""
        raised = self._hold_gc()
        try:
            await self._poll_once()
        finally:
            if raised:  # cancelled by a burst this poll started (its first step runs first)
                self._gc_release = asyncio.get_running_loop().call_soon(self._release_gc)

    async def _poll_once(self) -> None:
        due: list[tuple[str, tuple[int, int | None]]] = []
        # During a burst most queued agents are in it already: left out in the thread, not
        # made into LiveWork objects to be skipped here (their locks are held).
        busy = ({a for a, lock in self._push_locks.items() if lock.locked()}
                if self._bursts else set())
        # While a burst runs only deployments newer than any a poll saw count: the older ones
        # are in it, under way, or waiting for a failed export's retry — which the first
        # poll after the last burst, or one every FULL_POLL_SECONDS while bursts follow each
        # other, reads again (a hold ended, a lost export, a late commit, a re-queue).
        after = None
        if self._bursts and time.monotonic() - self._full_polled < FULL_POLL_SECONDS:
            after = self._seen_work
        else:
            self._full_polled = time.monotonic()
        # The connected agents as a live view, not a copy of 10,000 ids four times a second:
        # the query only asks whether an agent it found is connected, and each result is
        # checked against self.peers again below.
        found = await asyncio.to_thread(self._live_work, self.peers.keys(), busy, after)
        self._seen_work = max([self._seen_work,
                               *(w.newest for w in found if w.newest is not None)])
        if after is None:
            # Agents without work are not in ``found``: their failed exports are forgotten.
            for agent_id in set(self._export_failed) - {w.agent_id for w in found if w.queued}:
                self._export_failed.pop(agent_id, None)
        for work in found:
            peer = self.peers.get(work.agent_id)
            if peer is None or not peer.open:
                continue
            if work.status != "enrolled":
                await self._drop_revoked(peer, work.agent_id, work.status)
                continue
            if work.plan is not None and work.plan != self._plans_offered.get(work.agent_id):
                # A preflight plan was written into its spool (hub.services.plans).
                self._plans_offered[work.agent_id] = work.plan
                await self._offer_spool(peer, work.agent_id)
            if not work.queued:
                self._export_failed.pop(work.agent_id, None)
                continue
            lock = self._push_locks.setdefault(work.agent_id, asyncio.Lock())
            if lock.locked():
                continue  # a push is under way; it exports what is queued
            fingerprint = (work.queued, work.newest)
            failed = self._export_failed.get(work.agent_id)
            if (failed is not None and failed[0] == fingerprint
                    and time.monotonic() < failed[1]):
                continue
            due.append((work.agent_id, fingerprint))
        if not due:
            # No burst for nothing: each froze and unfroze the GC (_push_burst), which moved
            # every young object into the oldest generation four times a second and left
            # cyclic garbage uncollected on a hub with little traffic.
            return
        if len(due) == 1:
            self._spawn(self._push_queued(*due[0]))
            return
        # A burst (a rollout, a release queued for an environment): one pipeline for all of
        # them (_push_burst).
        self._spawn(self._push_burst(due))

    async def _push_burst(self, due: list[tuple[str, tuple[int, int | None]]]) -> None:
        """Export the queued deployments of the agents in ``due`` and offer each its spool,
        as a pipeline: export calls in order (:data:`BURST_STEPS` agents for the first
        calls, then :data:`LIVE_EXPORT_BATCH` to ``EXPORT_BATCH``: :func:`_burst_sizes`),
        :data:`BURST_CALLS` at a time (one's disk waits — fsyncs, commits — overlap the
        other's work), each call's agents offered as soon as it is done, while later calls
        export. The first bundles leave after the
        export of a few, not of a hundred; one export thread stays free for single pushes
        and the ``delivered`` bookkeeping. Each agent's push lock is held from the start
        until its offer (agents whose push is already under way are left to it), so the next
        rounds of the push loop leave them alone.

        While bursts run, what was alive when the first began — every connection's objects,
        most of this process's memory — is left out of Python's cyclic garbage collection
        (``gc.freeze``; back in at the last burst's end): each full collection walked all of
        it, about 0.3 s at 3,000 connected agents, three times during a burst to them
        (docs/benchmarks.md, "Session 9: live burst"). Garbage in cycles among those
        objects waits for the next full collection after the burst. Meanwhile the youngest
        generation is collected every :data:`BURST_GC_YOUNG` allocations, not every 700,
        and no full collection runs (:data:`BURST_GC_FULL`); the thresholds and the frozen
        heap are given back :data:`GC_SETTLE_SECONDS` after the last burst's end
        (:meth:`_release_gc`), once its last transfers are through."""
        self._bursts += 1
        if self._bursts == 1:
            if self._gc_release is not None:
                self._gc_release.cancel()
                self._gc_release = None
            gc.freeze()
            self._hold_gc()
        try:
            await self._push_burst_held(due)
        finally:
            self._bursts -= 1
            if not self._bursts:
                self._gc_release = asyncio.get_running_loop().call_later(
                    GC_SETTLE_SECONDS, self._release_gc)

    def _hold_gc(self) -> bool:
        """Raise Python's collector thresholds to a burst's (:data:`BURST_GC_YOUNG`,
        :data:`BURST_GC_FULL`), remembering the process's own for :meth:`_release_gc`;
        False if they are held already (a burst runs, or ended less than
        :data:`GC_SETTLE_SECONDS` ago)."""
        if self._gc_held:
            return False
        self._gc_held = True
        self._gc_thresholds = gc.get_threshold()
        young, middle, full = self._gc_thresholds
        gc.set_threshold(max(BURST_GC_YOUNG, young), middle, max(BURST_GC_FULL, full))
        return True

    def _release_gc(self, *, force: bool = False) -> None:
        """Give Python's collector its thresholds and the heap frozen by :meth:`_push_burst`
        back, unless a burst runs (then its end does); ``force``: now, whatever runs
        (:meth:`shutdown`: the bursts still running are cancelled with the loop)."""
        if self._gc_release is not None:
            self._gc_release.cancel()
            self._gc_release = None
        if (self._bursts and not force) or not self._gc_held:
            return
        self._gc_held = False
        gc.set_threshold(*self._gc_thresholds)
        gc.unfreeze()

    async def _push_burst_held(self, due: list[tuple[str, tuple[int, int | None]]]) -> None:
        held: list[tuple[str, tuple[int, int | None], asyncio.Lock]] = []
        for agent_id, fingerprint in due:
            lock = self._push_locks.setdefault(agent_id, asyncio.Lock())
            if lock.locked():
                continue
            await lock.acquire()
            held.append((agent_id, fingerprint, lock))
        calls = asyncio.Semaphore(BURST_CALLS)  # FIFO: the calls start in order
        chunks = []
        start = 0
        for size in _burst_sizes(len(held)):
            chunks.append(held[start:start + size])
            start += size
        await asyncio.gather(*(self._burst_call(calls, chunk) for chunk in chunks))

    async def _burst_call(self, calls: asyncio.Semaphore,
                          chunk: list[tuple[str, tuple[int, int | None], asyncio.Lock]]) -> None:
        """One export call of :meth:`_push_burst` (when ``calls`` lets it), then the offers
        to its agents; their push locks are released in every case."""
        ids = [agent_id for agent_id, _, _ in chunk]
        counts: dict[str, tuple[int, int]] = {}
        try:
            async with calls:
                counts = await self._export_call(ids)
        except WorkerLost as exc:
            # Its claims are stale (the process is gone): the next round exports them again.
            self.metrics.error("export_failed")
            log.error("live: cannot export for %d agents now: %s", len(ids), exc)
        except (HubError, OSError, SQLAlchemyError) as exc:
            self.metrics.error("export_failed")
            log.error("live: cannot export for %d agents: %s", len(ids), exc)
            for agent_id, fingerprint, _ in chunk:
                self._export_failed[agent_id] = (fingerprint,
                                                 time.monotonic() + EXPORT_RETRY_SECONDS)
        except Exception:
            # A bug: said with its traceback; the claims are released by the push loop and
            # the agents' push locks below, so the next round exports them again.
            self.metrics.error("export_failed")
            log.exception("live: export for %d agents failed unexpectedly", len(ids))
        except BaseException:
            for _, _, lock in chunk:  # cancelled before the offers: nothing to offer
                lock.release()
            raise
        await self._offer_exported([(agent_id, lock) for agent_id, _, lock in chunk], counts)

    def _start_workers(self) -> None:
        """Start the export worker processes (:mod:`hub.live_exports`) if there are any to
        start and :attr:`export_workers_from` agents are connected (a no-op while they run
        or wait to start again after a failed start)."""
        if self.export_workers is not None and len(self.peers) >= self.export_workers_from:
            self.export_workers.start()

    async def _export_call(self, ids: list[str]) -> dict[str, tuple[int, int]]:
        """One export call of a burst: in an export worker process (:mod:`hub.live_exports`)
        when they run, else in this process's export threads (a call while they start, or
        after one died, starts them and does not wait for them)."""
        workers = self.export_workers
        if workers is None or not workers.ready:
            self._start_workers()
            return await self._in_pool(self._export_pool, self._export_many, ids)
        try:
            outcome = await workers.export_many(self.spool_root, ids)
        except WorkerFailed as exc:
            if exc.database:  # it may have claimed some: released by the push loop
                with self._unclaim_lock:
                    self._unclaim.update(ids)
            raise
        except WorkerLost:
            # Its claims name a dead process, which the push loop's query does not count as
            # work (only unclaimed 'exporting' rows): released, the next round exports them.
            with self._unclaim_lock:
                self._unclaim.update(ids)
            raise
        except Exception:  # a bug in the worker: it may have claimed some
            with self._unclaim_lock:
                self._unclaim.update(ids)
            raise
        return self._took(outcome)

    async def _offer_exported(self, agents: list[tuple[str, asyncio.Lock]],
                              counts: dict[str, tuple[int, int]]) -> None:
        """Offer each agent of an export call of :meth:`_push_burst` its spool, then release
        its push lock (all of them, even if this is cancelled midway)."""
        pending = deque(agents)
        try:
            while pending:
                agent_id, _ = pending[0]
                peer = self.peers.get(agent_id)
                if peer is not None:
                    await self._offer_spool(peer, agent_id)
                pending.popleft()[1].release()
        finally:
            for _, lock in pending:
                lock.release()
        # One line per export call, not per agent (each agent's bundle is named at INFO
        # when it confirms it: "live: AGENT holds FILE").
        written = [n for n, _ in counts.values() if n]
        if written:
            log.info("live: pushed %d queued bundle(s) to %d agent(s)", sum(written),
                     len(written))

    async def _push_queued(self, agent_id: str, fingerprint: tuple[int, int | None]) -> None:
        try:
            written, _ = await self._push_pending(agent_id)  # _export records failures
        except (HubError, OSError, SQLAlchemyError) as exc:
            self.metrics.error("export_failed")
            log.error("live: cannot export for %s: %s", agent_id, exc)
            self._export_failed[agent_id] = (fingerprint,
                                             time.monotonic() + EXPORT_RETRY_SECONDS)
        else:
            if written:
                log.info("live: pushed %d queued bundle(s) to %s", written, agent_id)

    async def _drop_revoked(self, peer: _Peer, agent_id: str, status: str) -> None:
        """Close a connected agent that was revoked meanwhile: REFUSE ``revoked``, close
        code 4012, audit event ``live.revoked``."""
        error = RevokedAgentError(f"live: agent {agent_id} is {status}; closing its connection")
        log.warning("%s", error)
        self.metrics.error("revoked")
        peer.conn.fail(error)
        peer.flush()
        await asyncio.to_thread(self._audit_revoked, agent_id, status)
        self._spawn(self._close(peer, error.close_code, error.code))

    # -- bundles out

    async def push_pending(self, agent_id: str) -> int:
        """Export ``agent_id``'s queued deployments into its spool and, if it is online,
        offer every spooled bundle not on the wire yet. Returns the number exported.

        Raises:
            HubError: the export failed as a whole (e.g. the actor may not export).
        """
        written, _ = await self._push_pending(agent_id)
        return written

    async def _push_pending(self, agent_id: str) -> tuple[int, int]:
        lock = self._push_locks.setdefault(agent_id, asyncio.Lock())
        async with lock:  # two exports at once would export one deployment twice
            written, failed = await self._in_pool(self._export_pool, self._export, agent_id)
            peer = self.peers.get(agent_id)
            if peer is not None:
                await self._offer_spool(peer, agent_id)
        return written, failed

    async def _push(self, peer: _Peer, agent_id: str) -> None:
        """At authentication: export what is queued for the agent (held or not: an export
        with held work refreshes the holds), then offer its spool."""
        lock = self._push_locks.setdefault(agent_id, asyncio.Lock())
        async with lock:
            if await self._queued_at_connect(agent_id):
                try:
                    await self._in_pool(self._export_pool, self._export, agent_id)
                except (HubError, OSError, SQLAlchemyError) as exc:
                    self.metrics.error("export_failed")
                    log.error("live: cannot export for %s: %s", agent_id, exc)
            else:
                self._export_failed.pop(agent_id, None)
            await self._offer_spool(peer, agent_id)

    async def _queued_at_connect(self, agent_id: str) -> bool:
        """Whether ``agent_id`` has deployments queued, held or not (as :meth:`_export`
        asks), asked in one query for every agent that authenticated while the previous
        one ran: 10,000 agents connecting after a restart ran 10,000 empty exports, each
        a transaction of its own. True also when the query failed (the export then runs
        and reports the error as before)."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._connected_unchecked.append((agent_id, answer))
        if self._connect_checks is None or self._connect_checks.done():
            self._connect_checks = asyncio.get_running_loop().create_task(
                self._check_connected())
        return await answer

    async def _check_connected(self) -> None:
        while self._connected_unchecked:
            waiting, self._connected_unchecked = self._connected_unchecked, []
            queued: set[str] | None = None
            try:
                queued = await asyncio.to_thread(self._connected_work,
                                                 [a for a, _ in waiting])
            except (HubError, OSError, SQLAlchemyError):
                pass
            except Exception:  # a bug: said, and the exports run as after a failed query
                log.exception("live: cannot ask whether %d connecting agents have work "
                              "queued", len(waiting))
            finally:
                # Every push waiting is answered, even after a bug or a cancellation: an
                # unanswered one held its agent's push lock, and polls skip a locked agent.
                for agent_id, answer in waiting:
                    if not answer.done():
                        answer.set_result(queued is None or agent_id in queued)

    def _connected_work(self, agent_ids: list[str]) -> set[str]:
        """For agents that authenticated together: make their spool directories where
        missing (:func:`~hub.services.export.make_spool_dirs`: a rollout's exports then find
        them, two directory creations per agent fewer on its path), and ask which have work
        queued (:meth:`_queued_of`). Their push locks are held meanwhile (:meth:`_push`): no
        export of this process writes into a directory before it is synced."""
        try:
            make_spool_dirs(self.spool_root, agent_ids)
        except OSError as exc:  # the export makes them with the first bundle, as before
            log.warning("live: cannot make the spool directories of %d connecting agent(s) "
                        "in %s now (their first export makes them): %s", len(agent_ids),
                        self.spool_root, exc)
        return self._queued_of(agent_ids)

    def _queued_of(self, agent_ids: list[str]) -> set[str]:
        with self._session() as session:
            return {w.agent_id for w in live_work(session, agent_ids) if w.queued}

    async def _offer_spool(self, peer: _Peer, agent_id: str) -> None:
        if not peer.conn.is_open:
            return
        spool = self.spool_root / agent_id
        try:  # os.scandir, not Path.glob: one listing, no Path per entry (twice per agent)
            with os.scandir(spool) as entries:
                names = sorted(e.name for e in entries if e.name.endswith(".tgb"))
        except (FileNotFoundError, NotADirectoryError):
            return
        peer.spool_more = False
        for name in names:
            transfer = name[: -len(".tgb")]
            if transfer in peer.outgoing:
                continue
            if len(peer.outgoing) >= 4:
                peer.spool_more = True
                continue
            path = spool / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # delivered meanwhile (moved to sent/)
            # A small bundle (the usual one: payload frames are compressed once per release)
            # is hashed here: a thread's round trip costs more, and under a burst's exports it
            # waits for the GIL.
            size, digest = (self._digests.get(path, st) if st.st_size <= INLINE_HASH_BYTES
                            else await self._in_pool(self._offer_pool, self._digests.get, path))
            peer.conn.send_offer(Offer(transfer, name, size, digest))
            peer.outgoing[transfer] = path
            peer.acked[transfer] = asyncio.Event()
        peer.flush()

    def read_chunk(self, fd: int, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes of a spooled file from ``offset``: read straight into
        the CHUNK message (a seam for tests that corrupt the wire).

        Raises:
            OSError: the read failed, or the file ends before ``view`` is full.
        """
        while view:
            got = os.preadv(fd, [view], offset)
            if not got:
                raise OSError(f"the spooled file ends at byte {offset}, before its offered size")
            view, offset = view[got:], offset + got

    async def _send_file(self, peer: _Peer, transfer: str, offset: int) -> None:
        path = peer.outgoing.get(transfer)
        if path is None:
            return
        peer.sending += 1
        try:
            await self._send_chunks(peer, transfer, offset, path)
        finally:
            peer.sending -= 1
            if not peer.sending:  # the buffers go with the last file (see _Peer.spare)
                peer.spare.clear()

    async def _send_chunks(self, peer: _Peer, transfer: str, offset: int, path: Path) -> None:
        conn = peer.conn
        acked = peer.acked[transfer]
        # One chunk never outgrows the queue file chunks wait for (§10.1).
        most = min(READ_BYTES, peer.limits.send_buffer_bytes)
        # Open once: renamed into sent/ meanwhile, the file is still read to its end. A bare
        # descriptor: no file object, the chunks are read into the messages (read_chunk).
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            # A small file whole at once: its CHUNK and DONE in one write (DIRECT_FILE_BYTES).
            whole = DIRECT_FILE_BYTES if size - offset <= DIRECT_FILE_BYTES else 0
            # The offset the agent asked for: > 0 after a resume (nothing it holds is sent
            # again). A small file sent whole is a DEBUG line: every bundle has its INFO line
            # when the agent confirms it ("... holds ..."), and a rollout to 10,000 agents
            # wrote 10,000 of these too.
            log.log(logging.DEBUG if whole and not offset else logging.INFO,
                    "live: sending %s to %s from byte %d of %d", path.name, conn.agent_id,
                    offset, size)
            while offset < size and peer.open and transfer in peer.outgoing:
                if conn.in_flight(transfer) >= WINDOW_BYTES:
                    acked.clear()
                    await acked.wait()
                    continue
                if not peer.room.is_set():  # the writer is behind: wait, never buffer more
                    await peer.room.wait()
                    continue
                n = min(most, size - offset)
                conn.send_chunk_from(transfer, offset, n,
                                     functools.partial(self.read_chunk, fd, offset),
                                     buffer=live_send.take_unheld(peer.spare))
                offset += n
                self.metrics.transfer_bytes.labels("out").inc(n)
                if whole and offset == size:
                    conn.send_done(transfer)  # with its last chunk: one write
                    peer.flush(whole)
                    return
                peer.flush()
        finally:
            os.close(fd)
        if offset == size and peer.open and transfer in peer.outgoing:
            conn.send_done(transfer)
            peer.flush()

    def _sent(self, peer: _Peer, transfer: str, how: str = "received") -> None:
        """The agent holds ``transfer`` (RECEIVED, or CANCEL ``have-it``): out of the spool
        into ``sent/`` — never offered again — and recorded as delivered."""
        path = peer.outgoing.pop(transfer, None)
        peer.acked.pop(transfer, None)
        agent_id = peer.conn.agent_id
        if path is None or agent_id is None:
            return
        # plain strings, not Paths: this runs once per bundle on the event loop
        directory, name = os.path.split(path)
        sent = os.path.join(directory, SENT)
        try:  # made durable with its record (_mark_delivered)
            os.replace(path, os.path.join(sent, name))
        except FileNotFoundError:  # a spool made before export_agents made sent/ with it
            os.makedirs(sent, exist_ok=True)
            os.replace(path, os.path.join(sent, name))
        self._digests.forget(path)
        log.info("live: %s holds %s (%s)", agent_id, name, how)
        self.metrics.delivered.labels(how).inc()
        # In the export pool, behind the exports already queued: bookkeeping must not delay
        # other agents' bundles (a burst's last bundle waited for the first ones' commits);
        # what arrives meanwhile is recorded in the next batch.
        self._delivered.append((agent_id, name, how, self.clock()))
        self._record_delivered_soon()
        if peer.spool_more:
            # Only then: every bundle this process writes into a spool is offered after its
            # export, and a plan after the poll that sees it; looking again after each
            # RECEIVED listed every agent's spool twice in a burst.
            self._spawn(self._offer_more(peer, agent_id))

    def release_dead_claims(self) -> int:
        """Release the claims of exports that are gone (a killed live server's, a killed
        ``hub export``'s): the push loop counts only unclaimed ``exporting`` deployments as
        work, so those waited for other work for their agent or for a ``hub export``. Once
        a process, at the push loop's start; returns how many."""
        with self._session() as session:
            released = release_dead_claims(session, self.clock())
        if released:
            log.info("live: released %d export claim(s) of processes that are gone; the "
                     "push loop exports them again", released)
        return released

    def recover_delivered(self) -> int:
        """Record the bundles a killed live server moved into ``sent/`` (their agents
        confirmed them) without committing their ``delivered`` record (crash point
        ``hub.live-delivering``): each ``exported`` deployment whose spooled file is in its
        agent's ``sent/`` and no longer in the spool is recorded delivered now, as
        ``received``. One query, and one ``stat`` per exported live deployment; returns how
        many were recorded."""
        with self._session() as session:  # a read: no actor to load
            rows = session.execute(
                select(AgentRow.agent_id, Deployment.bundle_path)
                .join(AgentRow, Deployment.agent_id == AgentRow.id)
                .where(Deployment.state == "exported", Deployment.bundle_path.is_not(None))
            ).all()
        items: list[tuple[str, str, str]] = []
        for agent_id, bundle_path in rows:
            if not bundle_path:
                continue
            spooled = Path(os.path.abspath(bundle_path))
            if spooled.parent != Path(os.path.abspath(self.spool_root / agent_id)) \
                    or spooled.exists():
                continue  # on media, or still offered from the spool
            if (spooled.parent / SENT / spooled.name).exists():
                items.append((agent_id, spooled.name, "received"))
        if items:
            log.info("live: recording %d bundle(s) delivered that a killed live server moved "
                     "to sent/ without recording them", len(items))
            self._mark_delivered(items)
        return len(items)

    def _record_delivered_soon(self) -> None:
        if self._delivered and (self._recording is None or self._recording.done()):
            self._recording = asyncio.get_running_loop().create_task(
                self._record_delivered(gather=DELIVERED_GATHER_SECONDS))

    async def _record_delivered(self, gather: float = 0.0) -> None:
        """Record the confirmed bundles, a batch per transaction, until none are left; with
        ``gather``, each batch first waits that many seconds for more confirmations (unless
        :data:`DELIVERED_QUERY_ITEMS` wait already). On a database error, or a spool
        directory that cannot be fsynced, the batch waits for the push loop's next round."""
        while self._delivered:
            if gather and len(self._delivered) < DELIVERED_QUERY_ITEMS:
                await asyncio.sleep(gather)
            batch, self._delivered = self._delivered, []
            items = [(agent_id, name, how) for agent_id, name, how, _ in batch]
            at = {(agent_id, name): when for agent_id, name, _, when in batch}
            try:
                await self._in_pool(self._export_pool, self._mark_delivered, items, at)
            except (SQLAlchemyError, HubError, OSError) as exc:
                self._delivered[:0] = batch
                self.metrics.error("push_loop")
                log.error("live: cannot record %d delivered bundle(s) now: %s", len(batch), exc)
                return

    async def _offer_more(self, peer: _Peer, agent_id: str) -> None:
        """A transfer slot came free: offer what else waits in the spool."""
        async with self._push_locks.setdefault(agent_id, asyncio.Lock()):
            await self._offer_spool(peer, agent_id)

    def _cancelled(self, peer: _Peer, event: TransferCancelled) -> None:
        if event.offered_by == "hub" and event.code == HAVE_IT:
            self._sent(peer, event.transfer, HAVE_IT)
        elif event.offered_by == "hub":
            path = peer.outgoing.pop(event.transfer, None)
            peer.acked.pop(event.transfer, None)
            if path is not None and event.code == "corrupt":
                # Hashed again before its next offer: a digest remembered from the export
                # for bytes that changed since would be refused as corrupt forever.
                self._digests.forget(path)
            # The file stays in the spool: offered again on the next connection.
            log.warning("live: agent %s cancelled %s: %s (%s)", peer.conn.agent_id,
                        event.transfer, event.code, event.text)
        else:
            inc = peer.incoming.pop(event.transfer, None)
            if inc is not None:  # the agent gave up this upload: nothing to resume
                inc.file.close()
                inc.path.unlink(missing_ok=True)
                log.info("live: agent %s cancelled its upload %s: %s", peer.conn.agent_id,
                         event.transfer, event.code)

    # -- results in

    async def _open_incoming(self, peer: _Peer, offer: Offer) -> None:
        agent_id = peer.conn.agent_id
        assert agent_id is not None
        if offer.size > self.limits.max_result_bytes:
            log.warning("live: agent %s offered result %s of %d bytes, over [live] "
                        "max_result_bytes = %d; refused", agent_id, offer.name, offer.size,
                        self.limits.max_result_bytes)
            peer.conn.send_cancel(offer.transfer, "agent", TOO_LARGE,
                                  f"results over {self.limits.max_result_bytes} bytes are "
                                  "refused")
            return
        path = partial_path(self.inbox, agent_id, offer.transfer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_stale_partials(peer, path.parent, keep=path)
            if path.exists() and path.stat().st_size > 0:
                # Bytes a dropped connection left (up to max_result_bytes) are fsynced and
                # hashed again: in a thread, not on the loop every agent's connection uses.
                file = await asyncio.to_thread(FileReceiver.open, path, offer,
                                               max_pending=RESULT_PENDING_BYTES)
            else:  # a new, empty file: opened at once (one per result offered)
                file = FileReceiver.open(path, offer, max_pending=RESULT_PENDING_BYTES)
        except OSError as exc:  # the hub's disk (full, read-only): offered again later
            self.metrics.error("result_io")
            log.error("live: cannot write result %s from %s into %s: %s", offer.name,
                      agent_id, path, exc)
            peer.conn.send_cancel(offer.transfer, "agent", IO_ERROR,
                                  "the hub cannot write the file now")
            return
        if not peer.conn.is_open:  # the connection ended meanwhile
            file.close()
            return
        peer.incoming[offer.transfer] = _Incoming(file, path, file.offset, file.offset)
        peer.conn.send_resume(offer.transfer, file.offset)

    async def _write_chunk(self, peer: _Peer, event: ChunkReceived) -> None:
        """Hand the chunk to the upload's worker (checked, hashed, written there; inline for
        a small result); every :data:`ACK_EVERY_BYTES` an fsync is queued and its ACK sent
        when done. Only this connection's reading waits while its disk is behind — the
        event loop, and every other agent, never waits for an fsync."""
        inc = peer.incoming.get(event.transfer)
        if inc is None:
            return
        try:
            inc.file.write(event.offset, event.data)
        except (SyncError, OSError) as exc:
            self._drop_incoming(peer, event.transfer, exc)
            return
        self.metrics.transfer_bytes.labels("in").inc(len(event.data))
        if inc.file.offset - inc.syncing >= ACK_EVERY_BYTES:
            inc.syncing = inc.file.offset
            task = asyncio.create_task(self._ack_when_durable(peer, event.transfer, inc,
                                                              inc.file.sync()))
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)
        await inc.file.room()

    async def _ack_when_durable(self, peer: _Peer, transfer: str, inc: _Incoming,
                                synced: Future[int]) -> None:
        try:
            durable = await inc.file.wait(synced)
        except (SyncError, OSError) as exc:
            if peer.incoming.get(transfer) is inc:
                self._drop_incoming(peer, transfer, exc)
                peer.flush()
            return
        if peer.incoming.get(transfer) is inc and durable > inc.acked and peer.open:
            inc.acked = durable
            peer.conn.send_ack(transfer, durable)
            peer.flush()

    def _drop_stale_partials(self, peer: _Peer, directory: Path, keep: Path) -> None:
        """At most MAX_TRANSFERS partial uploads per agent: the oldest not running now go
        (an agent that keeps offering new ids never fills the disk)."""
        running = {inc.path for inc in peer.incoming.values()} | {keep}
        others = sorted((p for p in directory.glob("*.part") if p not in running),
                        key=lambda p: p.stat().st_mtime)
        for stale in others[: max(0, len(others) + len(running) - MAX_PARTIALS)]:
            stale.unlink(missing_ok=True)

    def _drop_incoming(self, peer: _Peer, transfer: str, exc: SyncError | OSError) -> None:
        inc = peer.incoming.pop(transfer)
        inc.file.close()
        inc.path.unlink(missing_ok=True)
        if isinstance(exc, SyncError):
            self.metrics.error("result_corrupt")
            log.warning("live: result from %s rejected: %s", peer.conn.agent_id, exc)
            peer.conn.send_cancel(transfer, "agent", "corrupt", exc.remote_text)
        else:  # the hub's disk: the agent offers it again on its next connection
            self.metrics.error("result_io")
            log.error("live: cannot write result %s from %s: %s", inc.file.offer.name,
                      peer.conn.agent_id, exc)
            peer.conn.send_cancel(transfer, "agent", IO_ERROR,
                                  "the hub cannot write the file now")

    async def _finish_incoming(self, peer: _Peer, transfer: str) -> None:
        inc = peer.incoming.get(transfer)
        if inc is None:
            return
        try:
            # Every byte written, the size and the whole SHA-256 compared, fsynced, closed.
            await inc.file.wait(inc.file.finish())
        except (SyncError, OSError) as exc:
            if peer.incoming.get(transfer) is inc:
                self._drop_incoming(peer, transfer, exc)
            return
        del peer.incoming[transfer]
        inc.file.close()
        if inc.acked < inc.file.durable:
            inc.acked = inc.file.durable
            peer.conn.send_ack(transfer, inc.acked)
        agent_id = peer.conn.agent_id
        assert agent_id is not None
        dest = self.inbox / agent_id / inc.file.offer.name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(inc.path, dest)
            fsync_dir(dest.parent)
        except OSError as exc:  # the hub's disk: the agent offers it again later
            for path in (inc.path, dest):
                path.unlink(missing_ok=True)
            self.metrics.error("result_io")
            log.error("live: cannot move result %s from %s into %s: %s", dest.name,
                      agent_id, dest.parent, exc)
            peer.conn.send_cancel(transfer, "agent", IO_ERROR,
                                  "the hub cannot write the file now")
            return
        try:
            status, reason = await asyncio.to_thread(self._import, dest)
        except (HubError, SQLAlchemyError, OSError) as exc:
            self.metrics.error("import_failed")
            log.error("live: cannot import %s from %s now: %s", dest.name, agent_id, exc)
            status, reason = RETRY, "the hub could not import it now; offer it again later"
        finally:
            # Imported results are stored verbatim in results/; a rejected one is recorded
            # in the audit log (result.rejected): nothing stays in live-inbox/.
            dest.unlink(missing_ok=True)
        self.metrics.imports.labels(status).inc()
        if not peer.conn.is_open:
            return
        if status in ("imported", "duplicate", "enrolled"):
            peer.conn.send_received(transfer)
        else:  # §4.3: the agent learns that its result was not imported, and why
            code = RETRY if status == RETRY else REJECTED
            # The importer's reason names the file and the rule; paths of the hub's own
            # disk stay out of what the peer is told (the hub log has them).
            remote = reason.replace(str(self.data_dir), "<hub data dir>")
            peer.conn.send_cancel(transfer, "agent", code, remote)


@contextlib.contextmanager
def committed(session_factory: Callable[[], Session]) -> Iterator[Session]:
    """A session committed at the end of the block, rolled back on any exception."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextlib.contextmanager
def live_services(session_factory: Callable[[], Session], clock: Callable[[], Any],
                  actor: str | None, keys: HubKeys, data_dir: Path
                  ) -> Iterator[ServiceContext]:
    """The live server's service context in a session committed at the end of the block:
    as hub user ``actor``, or as the hub itself (``system:live``, only what
    users.SYSTEM_ACTIONS["live"] allows) when None. Exports keep each release's compressed
    frames in the release store (``<data_dir>/releases``)."""
    with committed(session_factory) as session:
        releases = data_dir / "releases"
        if actor is not None:
            yield ServiceContext(session, clock, get_user(session, actor), keys, releases)
        else:
            yield ServiceContext(session, clock, None, keys, releases, system=SYSTEM_ACTOR)


@dataclass(frozen=True)
class ExportOutcome:
    """What one export call for many agents did (:func:`export_many`); plain data, so that
    it crosses from an export worker process (:mod:`hub.live_exports`)."""

    counts: dict[str, tuple[int, int]]  # agent id -> (bundles written, deployments failed)
    failed: list[tuple[int, str, str]]  # (deployment id, agent id or "", reason)
    written: int  # bundles written
    #: (file, size, SHA-256) of each bundle written in one file whose digest the writer
    #: computed: its OFFER does not read it again (SpoolDigests.remember)
    digests: list[tuple[str, int, str]] = field(default_factory=list)


def export_many(services: Callable[[], contextlib.AbstractContextManager[ServiceContext]],
                spool_root: Path, agent_ids: list[str]) -> ExportOutcome:
    """Export the queued deployments of ``agent_ids`` into their spools under
    ``spool_root`` in one call (:func:`hub.services.export.export_agents`, one per
    environment: their deployments claimed, written and recorded in batches, two commits a
    batch), in the context ``services()`` opens.

    Raises:
        HubError, OSError, SQLAlchemyError: the call failed as a whole.
    """
    counts = {agent_id: (0, 0) for agent_id in agent_ids}
    with services() as ctx:
        envs: dict[str, list[str]] = {}  # environment name -> its agents among agent_ids
        for agent_id, env_name in ctx.session.execute(_ENVIRONMENTS_OF,
                                                      {"agent_ids": agent_ids}):
            envs.setdefault(env_name, []).append(agent_id)
        reports = [export_agents(ctx, env_name, spool_root, ids, live=True)
                   for env_name, ids in envs.items()]
    failed: list[tuple[int, str, str]] = []
    written = 0
    digests: list[tuple[str, int, str]] = []
    for report in reports:
        for bundle in report.written:
            if bundle.agent_id in counts:
                done, not_done = counts[bundle.agent_id]
                counts[bundle.agent_id] = (done + 1, not_done)
        written += len(report.written)
        digests.extend(_digests(report.written))
        failed.extend((dep_id, report.failed_agents.get(dep_id, ""), reason)
                      for dep_id, reason in report.failed)
    return ExportOutcome(counts, failed, written, digests)


#: export_many: the environment (its name) of each of the agents ``agent_ids`` (made once:
#: the live server makes an export call per 5 to 200 agents, _burst_sizes)
_ENVIRONMENTS_OF = (select(AgentRow.agent_id, Environment.name)
                    .join(Environment, AgentRow.environment_id == Environment.id)
                    .where(AgentRow.agent_id.in_(bindparam("agent_ids", expanding=True))))


def _digests(bundles: list[ExportedBundle]) -> Iterator[tuple[str, int, str]]:
    """(file, size, SHA-256) of the bundles written whole in one file (ExportOutcome)."""
    for bundle in bundles:
        if bundle.sha256 is not None and len(bundle.paths) == 1:
            yield str(bundle.paths[0]), bundle.size, bundle.sha256


def _delivered_deployments(session: Session, items: list[tuple[str, str, str]]
                           ) -> dict[tuple[str, str], Any]:
    """(agent id, spooled file name) -> the deployment exported into that file (a row of
    its ``id``, ``agent_id``, ``bundle_path``, ``state``, ``queued_at`` and
    ``environment_id``, no ORM object), for the
    items of :meth:`LiveHub._mark_delivered` that have one (a preflight plan's file has
    none). Two queries per :data:`DELIVERED_QUERY_ITEMS` items: their agents, then those
    agents' deployments of the sequences the names end in (``…-000042.tgb``,
    :func:`hub.services.export._bundle_name`), each matched on its file's exact name; a
    name without a sequence is looked up alone."""
    found: dict[tuple[str, str], Any] = {}  # the rows of `columns`
    columns = select(Deployment.id, Deployment.agent_id, Deployment.bundle_path,
                     Deployment.state, Deployment.queued_at, Deployment.environment_id)
    for start in range(0, len(items), DELIVERED_QUERY_ITEMS):
        chunk = items[start:start + DELIVERED_QUERY_ITEMS]
        pks: dict[str, int] = {row.agent_id: row.id for row in session.execute(
            select(AgentRow.agent_id, AgentRow.id)
            .where(AgentRow.agent_id.in_(sorted({agent_id for agent_id, _, _ in chunk}))))}
        wanted: dict[tuple[int, str], str] = {}  # (agent pk, file name) -> agent id
        sequences: set[int] = set()
        odd: list[tuple[int, str]] = []
        for agent_id, name, _ in chunk:
            pk = pks.get(agent_id)
            if pk is None:
                continue
            wanted[(pk, name)] = agent_id
            digits = name.removesuffix(".tgb").rpartition("-")[2]
            if name.endswith(".tgb") and digits.isdigit():
                sequences.add(int(digits))
            else:
                odd.append((pk, name))
        candidates = list(session.execute(
            columns.where(Deployment.agent_id.in_(sorted({pk for pk, _ in wanted})),
                          Deployment.sequence.in_(sorted(sequences)),
                          Deployment.bundle_path.is_not(None)))) if sequences else []
        for pk, name in odd:
            candidates.extend(session.execute(
                columns.where(Deployment.agent_id == pk,
                              Deployment.bundle_path.like(f"%{name}"))))
        for dep in candidates:
            if dep.agent_id is None or dep.bundle_path is None:
                continue
            key = (dep.agent_id, Path(dep.bundle_path).name)
            if key in wanted:
                found[(wanted[key], key[1])] = dep
    return found


def _burst_sizes(count: int) -> Iterator[int]:
    """The agents per export call of a burst of ``count`` (:data:`BURST_STEPS`, then
    :data:`BURST_SHARE`'s share of those left, from :data:`LIVE_EXPORT_BATCH` to
    :data:`~hub.services.export.EXPORT_BATCH`); they add up to ``count``."""
    left = count
    for step in BURST_STEPS:
        if left <= 0:
            return
        yield min(step, left)
        left -= step
    while left > 0:
        size = min(left, max(LIVE_EXPORT_BATCH, min(EXPORT_BATCH, left // BURST_SHARE)))
        yield size
        left -= size


def _source(ws: ServerConnection) -> str:
    """The peer's IP address (what the per-address caps and back-off count)."""
    address = ws.remote_address
    return str(address[0]) if address else "?"
