"""The hub's end of live connections: :class:`LiveHub`, the asyncio layer over
:class:`bundle.sync.HubSide` (docs/live-protocol.md §10). :mod:`hub.live` runs it.

See :mod:`hub.live` for what it does; this module holds the per-connection work
(authentication, presence, bundles out, results in, logs) and the **push loop**: a task on
the server's event loop, started by the first connection, that every ``poll_interval``
seconds asks the database (:func:`hub.services.presence.live_work`, one query for all
connected agents) whether a connected agent has queued deployments — they are exported and
offered at once, without anyone calling :meth:`LiveHub.push_pending` — or was revoked — its
connection is closed with ``revoked`` (4012) and a ``live.revoked`` audit event. Approval,
queueing and revocation happen in other processes (web workers, the CLI); the database is the
signal between them.

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
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from bundle.sync import (
    CANCEL_HAVE_IT,
    DEFAULT_HEARTBEAT_SECONDS,
    MAX_CHUNK_BYTES,
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
    TransferCancelled,
    TransferDone,
    TransferReceived,
    TransferReceiver,
)
from bundle.sync_errors import (
    AuthError,
    MalformedError,
    RevokedAgentError,
    SyncError,
    TransferError,
    UnknownAgentError,
)
from hub.db import Agent as AgentRow
from hub.db import Deployment
from hub.errors import HubError
from hub.live_files import LogStore, fsync_dir, open_partial, size_and_sha256
from hub.services import audit
from hub.services.agents import get_agent
from hub.services.context import HubKeys, ServiceContext, utc_now
from hub.services.deployments import transition
from hub.services.exchange import export_environment, import_result
from hub.services.presence import LiveWork, live_work
from hub.services.users import get_user
from signing.keys import PublicKey

__all__ = ["ACK_EVERY_BYTES", "EXPORT_RETRY_SECONDS", "POLL_SECONDS", "WINDOW_BYTES",
           "LiveHub"]

log = logging.getLogger("tiangong.hub.live")

WINDOW_BYTES = 32 * 1024 * 1024  # bytes sent and not yet acknowledged, per transfer
ACK_EVERY_BYTES = 8 * 1024 * 1024  # bytes received between two fsync + ACK
READ_BYTES = MAX_CHUNK_BYTES  # bytes per CHUNK sent
POLL_SECONDS = 0.25  # seconds between two looks at the database for queued work / revocations
SEEN_FLUSH_SECONDS = 1.0  # seconds between two writes of the heartbeats' last_seen
EXPORT_RETRY_SECONDS = 60.0  # seconds before an export that failed is tried again unchanged
SYSTEM_ACTOR = "live"  # ServiceContext.system of the live server (audited as system:live)
HAVE_IT = CANCEL_HAVE_IT  # the agent already holds this bundle (docs/live-protocol.md §4.2)
EXPORT_THREADS = 2  # threads exporting bundles at once (CPU-bound: more only contend for the GIL)
OFFER_THREADS = 2  # threads hashing spooled files for OFFERs, never behind an export

_T = TypeVar("_T")


@dataclass
class _Incoming:
    receiver: TransferReceiver
    path: Path
    fh: Any
    acked: int


@dataclass
class _Peer:
    """One connection: the protocol object, its socket, and the files moving over it."""

    ws: ServerConnection
    conn: HubSide
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    outgoing: dict[str, Path] = field(default_factory=dict)  # transfer -> spool file
    acked: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    incoming: dict[str, _Incoming] = field(default_factory=dict)

    async def flush(self) -> None:
        """Send what the protocol queued; once the agent has gone nothing more is sent (the
        receive loop sees the close and ends the connection)."""
        async with self.send_lock:
            messages = self.conn.data_to_send()
            with contextlib.suppress(ConnectionClosed):
                for message in messages:
                    await self.ws.send(message)

    @property
    def open(self) -> bool:
        return self.conn.is_open and self.ws.state is WsState.OPEN


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
                 poll_interval: float = POLL_SECONDS) -> None:
        self.session_factory = session_factory
        self.keys = keys
        self.hub_id = keys.hub_id
        self.data_dir = Path(data_dir)
        self.actor = actor
        self.clock = clock
        self.heartbeat = heartbeat
        self.binding = binding
        self.peers: dict[str, _Peer] = {}  # agent id -> its authenticated connection
        self.logs = LogStore(self.data_dir / "live-logs")
        self._push_locks: dict[str, asyncio.Lock] = {}  # one export + offer at a time per agent
        self.poll_interval = poll_interval
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # outlive a connection (database work)
        self._seen: dict[str, Any] = {}  # agent -> time of its last heartbeat, not yet written
        # agent -> (fingerprint of its queued work, monotonic time before which an export that
        # failed for that same work is not tried again)
        self._export_failed: dict[str, tuple[tuple[int, int | None], float]] = {}
        # Idle workers end when the LiveHub is garbage-collected (ThreadPoolExecutor's own
        # weak reference), so nobody has to shut these down.
        self._export_pool = ThreadPoolExecutor(EXPORT_THREADS, "tiangong-live-export")
        self._offer_pool = ThreadPoolExecutor(OFFER_THREADS, "tiangong-live-offer")

    async def _in_pool(self, pool: ThreadPoolExecutor, func: Callable[..., _T],
                       *args: Any) -> _T:
        """``func(*args)`` in one of this hub's own thread pools (see the module docstring)."""
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(func, *args))

    # -- paths

    @property
    def spool_root(self) -> Path:
        return self.data_dir / "live-outbox"

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
        session = self.session_factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextlib.contextmanager
    def _services(self) -> Iterator[ServiceContext]:
        with self._session() as session:
            if self.actor is not None:
                yield ServiceContext(session, self.clock, get_user(session, self.actor),
                                     self.keys)
            else:  # the hub's own process: only what users.SYSTEM_ACTIONS["live"] allows
                yield ServiceContext(session, self.clock, None, self.keys, system=SYSTEM_ACTOR)

    def _lookup_key(self, agent_id: str) -> PublicKey:
        """The enrolled key of ``agent_id``; refusals are audited here.

        Raises:
            UnknownAgentError, RevokedAgentError.
        """
        with self._services() as ctx:
            try:
                agent = get_agent(ctx.session, agent_id)
            except HubError:
                agent = None
            if agent is not None and agent.status == "enrolled":
                return PublicKey.from_hex(agent.ed25519_public)
        error: AuthError = (UnknownAgentError(f"live: no enrolled agent {agent_id!r}")
                            if agent is None else
                            RevokedAgentError(f"live: agent {agent_id} is {agent.status}"))
        self._audit_refusal(agent_id, error)
        raise error

    def _audit_refusal(self, agent_id: str, error: SyncError) -> None:
        with self._services() as ctx:
            audit.record(ctx, "live.refused", "agent", agent_id,
                         {"code": error.code, "reason": str(error)[:500]})

    def _touch(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)
        with self._services() as ctx:
            get_agent(ctx.session, agent_id).last_seen = ctx.now()

    def _flush_seen(self, seen: dict[str, Any]) -> None:
        """Write the heartbeats' ``last_seen`` of many agents in one transaction."""
        table = AgentRow.__table__
        with self._session() as session:
            session.execute(
                update(table).where(table.c.agent_id == bindparam("aid"))
                .values(last_seen=bindparam("at")),
                [{"aid": aid, "at": at} for aid, at in sorted(seen.items())])

    async def flush_seen(self) -> None:
        """Write the pending heartbeat times now (the push loop does this every
        :data:`SEEN_FLUSH_SECONDS`); on a database error they are kept for the next try."""
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        try:
            await asyncio.to_thread(self._flush_seen, seen)
        except BaseException:
            for aid, at in seen.items():
                self._seen.setdefault(aid, at)
            raise

    def _export(self, agent_id: str) -> tuple[int, int]:
        """Export ``agent_id``'s queued deployments into its spool; (written, failed)."""
        spool = self.spool_root / agent_id
        with self._services() as ctx:
            agent = get_agent(ctx.session, agent_id)
            before = live_work(ctx.session, [agent_id])
            fingerprint = (before[0].queued, before[0].newest) if before else None
            # Whoever asks (the push at connection or the push loop), the same work that
            # failed is left alone for EXPORT_RETRY_SECONDS: one audit event, not one a poll.
            failed = self._export_failed.get(agent_id)
            if (fingerprint is not None and failed is not None and failed[0] == fingerprint
                    and time.monotonic() < failed[1]):
                return 0, 0
            report = export_environment(ctx, agent.environment.name, spool, agent_id=agent_id)
        if not report.failed:
            self._export_failed.pop(agent_id, None)
        else:
            # What stays queued is what failed: the loop's (queued, newest) will equal this
            # (not ``before``: the export commits its checkpoint and may see newer work).
            ids = [dep_id for dep_id, _ in report.failed]
            self._export_failed[agent_id] = ((len(ids), max(ids)),
                                             time.monotonic() + EXPORT_RETRY_SECONDS)
        for dep_id, reason in report.failed:
            log.error("live: export of deployment %s for %s failed: %s", dep_id, agent_id,
                      reason)
        if report.index is not None:
            report.index.unlink(missing_ok=True)  # the index is for people reading media
        return len(report.written), len(report.failed)

    def _live_work(self, agent_ids: list[str]) -> list[LiveWork]:
        session = self.session_factory()
        try:
            return live_work(session, agent_ids)
        finally:
            session.rollback()
            session.close()

    def _audit_revoked(self, agent_id: str, status: str) -> None:
        with self._services() as ctx:
            audit.record(ctx, "live.revoked", "agent", agent_id,
                         {"code": "revoked", "status": status,
                          "reason": "connection closed: the agent is no longer enrolled"})

    def _mark_delivered(self, agent_id: str, name: str, how: str) -> None:
        """Record that ``agent_id`` holds the spooled bundle ``name``: its deployment moves
        ``exported → delivered`` (unless it is already further on, e.g. its result came by
        media first) and a ``live.delivered`` event says ``how`` (``received`` /
        ``have-it``)."""
        with self._services() as ctx:
            agent = get_agent(ctx.session, agent_id)
            candidates = ctx.session.scalars(select(Deployment).where(
                Deployment.agent_id == agent.id, Deployment.bundle_path.like(f"%{name}")))
            dep = next((d for d in candidates
                        if d.bundle_path is not None and Path(d.bundle_path).name == name), None)
            if dep is not None and dep.state == "exported":
                # Delivery is the last leg of export (the live server's own permission).
                transition(ctx, dep, "delivered", action="bundle.export")
            audit.record(ctx, "live.delivered", "deployment" if dep else "agent",
                         str(dep.id) if dep else agent_id,
                         {"agent_id": agent_id, "file": name, "how": how,
                          "state": dep.state if dep else None})

    def _import(self, path: Path) -> str:
        with self._services() as ctx:
            row = import_result(ctx, path, results_dir=self.results_dir)
        log.info("live: import of %s: %s %s", path.name, row.status, row.reason)
        return row.status

    # -- the connection

    async def handler(self, ws: ServerConnection) -> None:
        """One agent connection, from HELLO to close. The first one starts the push loop
        (so whoever serves :meth:`handler` needs nothing else)."""
        self._start_poller()
        peer = _Peer(ws, HubSide(self.hub_id, binding=self.binding, heartbeat=self.heartbeat))
        conn = peer.conn
        try:
            while not conn.is_closed:
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=3 * self.heartbeat)
                except TimeoutError:
                    log.warning("live: agent %s missed three heartbeats; closing",
                                conn.agent_id)
                    break
                if isinstance(message, str):
                    conn.fail(MalformedError("text WebSocket message",
                                             remote_text="binary messages only"))
                else:
                    try:
                        conn.receive_data(message)
                    except AuthError as exc:
                        log.warning("live: %s", exc)
                        await asyncio.to_thread(self._audit_refusal, conn.agent_id or "?", exc)
                    except SyncError as exc:
                        log.warning("live: agent %s: %s", conn.agent_id, exc)
                for event in conn.events_received():
                    await self._on_event(peer, event)
                await peer.flush()
            if conn.failure is not None and conn.close_code is not None:
                await ws.close(conn.close_code, conn.failure.code)
        except ConnectionClosed:
            pass
        finally:
            for task in peer.tasks:
                task.cancel()
            for inc in peer.incoming.values():
                inc.fh.close()
            if conn.agent_id is not None and self.peers.get(conn.agent_id) is peer:
                del self.peers[conn.agent_id]
                log.info("live: agent %s offline", conn.agent_id)

    async def _on_event(self, peer: _Peer, event: Any) -> None:
        conn = peer.conn
        if isinstance(event, HelloReceived):
            try:
                key = await asyncio.to_thread(self._lookup_key, event.agent_id)
            except AuthError as exc:
                log.warning("%s", exc)
                conn.fail(exc)
                return
            conn.challenge(key, os.urandom(NONCE_BYTES), int(time.time()))
        elif isinstance(event, Authenticated):
            old = self.peers.get(event.agent_id)
            if old is not None:
                await old.ws.close(1001, "replaced by a new connection")
            self.peers[event.agent_id] = peer
            log.info("live: agent %s online", event.agent_id)
            await asyncio.to_thread(self._touch, event.agent_id)
            await peer.flush()  # WELCOME before any offer
            task = asyncio.create_task(self._push(peer, event.agent_id))
            peer.tasks.add(task)
            task.add_done_callback(peer.tasks.discard)
        elif isinstance(event, HeartbeatReceived):
            if conn.agent_id is not None:
                # Written by the push loop, all agents in one transaction (SEEN_FLUSH_SECONDS):
                # one commit per heartbeat made 1,000 agents 33 commits a second.
                self._seen[conn.agent_id] = self.clock()
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
            self._open_incoming(peer, event.offer)
        elif isinstance(event, ChunkReceived):
            self._write_chunk(peer, event)
        elif isinstance(event, TransferDone):
            await self._finish_incoming(peer, event.transfer)
        elif isinstance(event, LogReceived):
            self.logs.add(event)

    # -- the push loop

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
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
        flushed = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self._seen and time.monotonic() - flushed >= SEEN_FLUSH_SECONDS:
                    flushed = time.monotonic()
                    await self.flush_seen()
                if not self.peers:
                    continue  # nobody to push to: no query at all
                await self.poll_once()
            except (SQLAlchemyError, HubError, OSError) as exc:
                # The database may be restarting; the next round tries again.
                log.error("live: push loop: %s: %s", type(exc).__name__, exc)

    async def poll_once(self) -> None:
        """One round of the push loop: for every connected agent, drop it if it is no longer
        enrolled, else start a push if it has queued deployments (one push per agent at a
        time; an export that failed is retried after :data:`EXPORT_RETRY_SECONDS` unless the
        queued work changed)."""
        for work in await asyncio.to_thread(self._live_work, sorted(self.peers)):
            peer = self.peers.get(work.agent_id)
            if peer is None or not peer.open:
                continue
            if work.status != "enrolled":
                await self._drop_revoked(peer, work.agent_id, work.status)
                continue
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
            self._spawn(self._push_queued(work.agent_id, fingerprint))

    async def _push_queued(self, agent_id: str, fingerprint: tuple[int, int | None]) -> None:
        try:
            written, _ = await self._push_pending(agent_id)  # _export records failures
        except (HubError, OSError, SQLAlchemyError) as exc:
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
        peer.conn.fail(error)
        await peer.flush()
        await asyncio.to_thread(self._audit_revoked, agent_id, status)
        await peer.ws.close(error.close_code, error.code)

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
        lock = self._push_locks.setdefault(agent_id, asyncio.Lock())
        async with lock:
            try:
                await self._in_pool(self._export_pool, self._export, agent_id)
            except (HubError, OSError) as exc:
                log.error("live: cannot export for %s: %s", agent_id, exc)
            await self._offer_spool(peer, agent_id)

    async def _offer_spool(self, peer: _Peer, agent_id: str) -> None:
        spool = self.spool_root / agent_id
        if not peer.conn.is_open or not spool.is_dir():
            return
        for path in sorted(spool.glob("*.tgb")):
            transfer = path.name[: -len(".tgb")]
            if transfer in peer.outgoing or len(peer.outgoing) >= 4:
                continue
            size, digest = await self._in_pool(self._offer_pool, size_and_sha256, path)
            peer.conn.send_offer(Offer(transfer, path.name, size, digest))
            peer.outgoing[transfer] = path
            peer.acked[transfer] = asyncio.Event()
        await peer.flush()

    def read_chunk(self, path: Path, offset: int, size: int) -> bytes:
        """The bytes of a spooled file to send (a seam for tests that corrupt the wire)."""
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    async def _send_file(self, peer: _Peer, transfer: str, offset: int) -> None:
        path = peer.outgoing.get(transfer)
        if path is None:
            return
        conn = peer.conn
        size = path.stat().st_size
        acked = peer.acked[transfer]
        # The offset the agent asked for: > 0 after a resume (nothing it holds is sent again).
        log.info("live: sending %s to %s from byte %d of %d", path.name, conn.agent_id, offset,
                 size)
        while offset < size and peer.open and transfer in peer.outgoing:
            if conn.in_flight(transfer) >= WINDOW_BYTES:
                acked.clear()
                await acked.wait()
                continue
            data = self.read_chunk(path, offset, min(READ_BYTES, size - offset))
            conn.send_chunk(transfer, offset, data)
            offset += len(data)
            await peer.flush()
        if offset == size and peer.open and transfer in peer.outgoing:
            conn.send_done(transfer)
            await peer.flush()

    def _sent(self, peer: _Peer, transfer: str, how: str = "received") -> None:
        """The agent holds ``transfer`` (RECEIVED, or CANCEL ``have-it``): out of the spool
        into ``sent/`` — never offered again — and recorded as delivered."""
        path = peer.outgoing.pop(transfer, None)
        peer.acked.pop(transfer, None)
        agent_id = peer.conn.agent_id
        if path is None or agent_id is None:
            return
        sent = path.parent / "sent"
        sent.mkdir(exist_ok=True)
        os.replace(path, sent / path.name)
        fsync_dir(path.parent)
        log.info("live: %s holds %s (%s)", agent_id, path.name, how)
        # In the export pool, behind the exports already queued: bookkeeping must not delay
        # other agents' bundles (a burst's last bundle waited for the first ones' commits).
        self._spawn(self._in_pool(self._export_pool, self._mark_delivered, agent_id, path.name,
                                  how))
        self._spawn(self._offer_more(peer, agent_id))

    async def _offer_more(self, peer: _Peer, agent_id: str) -> None:
        """A transfer slot came free: offer what else waits in the spool."""
        async with self._push_locks.setdefault(agent_id, asyncio.Lock()):
            await self._offer_spool(peer, agent_id)

    def _cancelled(self, peer: _Peer, event: TransferCancelled) -> None:
        if event.offered_by == "hub" and event.code == HAVE_IT:
            self._sent(peer, event.transfer, HAVE_IT)
        elif event.offered_by == "hub":
            peer.outgoing.pop(event.transfer, None)
            peer.acked.pop(event.transfer, None)
            # The file stays in the spool: offered again on the next connection.
            log.warning("live: agent %s cancelled %s: %s (%s)", peer.conn.agent_id,
                        event.transfer, event.code, event.text)
        else:
            inc = peer.incoming.pop(event.transfer, None)
            if inc is not None:
                inc.fh.close()

    # -- results in

    def _open_incoming(self, peer: _Peer, offer: Offer) -> None:
        partial_dir = self.inbox / ".partial"
        partial_dir.mkdir(parents=True, exist_ok=True)
        path = partial_dir / f"{peer.conn.agent_id}--{offer.transfer}.part"
        receiver, fh = open_partial(path, offer)
        peer.incoming[offer.transfer] = _Incoming(receiver, path, fh, receiver.offset)
        peer.conn.send_resume(offer.transfer, receiver.offset)

    def _write_chunk(self, peer: _Peer, event: ChunkReceived) -> None:
        inc = peer.incoming.get(event.transfer)
        if inc is None:
            return
        try:
            inc.receiver.write(event.offset, event.data)
        except SyncError as exc:
            self._drop_incoming(peer, event.transfer, exc)
            return
        if inc.receiver.offset - inc.acked >= ACK_EVERY_BYTES:
            inc.fh.flush()
            os.fsync(inc.fh.fileno())
            inc.acked = inc.receiver.offset
            peer.conn.send_ack(event.transfer, inc.acked)

    def _drop_incoming(self, peer: _Peer, transfer: str, exc: SyncError) -> None:
        inc = peer.incoming.pop(transfer)
        inc.fh.close()
        inc.path.unlink(missing_ok=True)
        log.warning("live: result from %s rejected: %s", peer.conn.agent_id, exc)
        peer.conn.send_cancel(transfer, "agent", "corrupt", exc.remote_text)

    async def _finish_incoming(self, peer: _Peer, transfer: str) -> None:
        inc = peer.incoming.get(transfer)
        if inc is None:
            return
        try:
            inc.receiver.finish()
        except TransferError as exc:
            self._drop_incoming(peer, transfer, exc)
            return
        del peer.incoming[transfer]
        inc.fh.flush()
        os.fsync(inc.fh.fileno())
        inc.fh.close()
        if inc.acked < inc.receiver.offset:
            peer.conn.send_ack(transfer, inc.receiver.offset)
        dest = self.inbox / f"{peer.conn.agent_id}--{inc.receiver.offer.name}"
        os.replace(inc.path, dest)
        fsync_dir(self.inbox)
        await asyncio.to_thread(self._import, dest)
        peer.conn.send_received(transfer)
