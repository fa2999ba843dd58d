"""The agent's live client: an asyncio layer over :class:`bundle.sync.AgentSide`.

While the hub is reachable the agent keeps one WebSocket open to ``hub_url``
(docs/live-protocol.md §10):

* **Bundles in.** An offered ``*.tgb`` is written to ``<home>/staging/live-<transfer>.part``
  through a :class:`bundle.live_file.FileReceiver`: its worker thread checks, hashes (each
  byte once per digest it is part of) and writes, and a second thread fsyncs, while the
  event loop reads on; an ACK goes out once its fsync is done (every 8 MiB and at the end)
  and claims only the bytes written before that fsync began. After a reconnect the
  partial file is fsynced, fed to ``absorb_existing`` and the transfer resumes from its
  length. On DONE the whole file is checked, fsynced and renamed into the inbox:
  the usual inbox → verify → run path takes over (nothing is verified or run here). A file
  whose bytes do not match the offer is deleted and the transfer cancelled (``corrupt``).
* **Results out.** Every ``*.tgr`` in the outbox not yet listed in ``<home>/live-sent.json``
  is offered (RESULT_OFFER) and sent from the offset the hub asks for. The hub answers once
  its importer has decided (docs/live-protocol.md §4.3): RECEIVED — imported (or imported
  before) — or CANCEL ``rejected`` with the importer's reason, logged as an error. Either way
  the name is added to that list (written atomically) and the result is not offered again.
  CANCEL ``too-large`` (over the hub's size limit) and ``retry`` (the hub could not import it
  now) leave it for the next connection.
* **Step logs.** :meth:`LiveClient.live_log` is the runner's ``live_log`` hook: lines are
  queued (bounded) and sent as LOG within the protocol's rate, ``seq`` counting per bundle.
* **Heartbeats** at the interval of WELCOME; **reconnects** with jittered exponential
  backoff, bounded by ``max_backoff``.
* **State.** When :attr:`LiveClient.state_source` is set (``agent run`` sets
  ``Agent.site_state``), the agent's inventory and the holds it enforces go to the hub as
  STATE (docs/live-protocol.md §3.1): right after WELCOME, then with a heartbeat only when
  they changed (:func:`state_changed`: free disk counts when it moved by more than 1/16).
  A hub that speaks only protocol version 1 refuses HELLO version 2 (``bad-version``): the
  client then speaks version 1, without STATE, until it is restarted.

* **TLS.** ``wss://`` only, verified against the hub's CA pinned from the enrollment
  response (``<home>/trust/hub-ca.pem``) and nothing else — no system CAs — with the host
  name checked. The signed challenge is bound to the TLS channel: the binding is the SHA-256
  of the hub certificate this connection presented (tls-server-end-point,
  docs/live-protocol.md §5.2). Plain ``ws://`` is refused unless ``allow_insecure_loopback``
  is set and the hub address is a loopback address (tests).

Deliberately not here (yet): log ``seq`` numbers restart at 0 per bundle when the agent
process restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import sqlite3
import ssl as ssl_module
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.protocol import State as WsState

from agent import heap
from agent.config import AgentConfig
from agent.home import AgentKeys, load_keys
from agent.journal import JournalError
from agent.live_frames import read_frames_in_one_copy
from bundle.live_file import FileReceiver
from bundle.sync import (
    CANCEL_HAVE_IT,
    MAX_CHUNK_BYTES,
    MAX_LOG_LINE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_TRANSFERS,
    PROTOCOL_VERSION,
    AckReceived,
    AgentSide,
    ChunkReceived,
    Offer,
    OfferReceived,
    PeerError,
    Refused,
    ResumeRequested,
    TransferCancelled,
    TransferDone,
    TransferReceived,
    Welcomed,
    is_loopback,
)
from bundle.sync.errors import SyncError, UsageError
from signing.fileio import fsync_dir

__all__ = ["QUEUE_MESSAGES", "SOCKET_READ_BYTES", "LiveClient", "LiveTLSError", "check_hub_url",
           "pinned_context", "read_in_large_pieces", "run_live_client", "state_changed"]

log = logging.getLogger("tiangong.agent.live")

ACK_EVERY_BYTES = 8 * 1024 * 1024  # bytes received between two fsync + ACK
WINDOW_BYTES = 32 * 1024 * 1024  # bytes of a result sent and not yet acknowledged
SENT_STATE = "live-sent.json"  # in the agent home: names of results the hub received
CANCEL_REJECTED = "rejected"  # CANCEL code: the hub's importer refused the result (§4.3)
CANCEL_IO_ERROR = "io-error"  # CANCEL code: this side cannot write the file (disk full ...)
MAX_QUEUED_LOGS = 10_000  # LOG messages waiting for the connection; more are dropped (counted)
# Heartbeat intervals without a single message from the hub (it answers every HEARTBEAT)
# before the agent gives the connection up and reconnects. The protocol's heartbeats are the
# keepalive: WebSocket pings every 20 s (the library's default) cost a hub of 10,000 agents
# 500 pongs a second, and their 20 s timeout dropped every agent of a hub busy for 20 s.
HUB_SILENT_HEARTBEATS = 3
_LOG_STREAMS = ("stdout", "stderr", "info")  # what LOG carries; other streams go as "info"
DISK_CHANGE_FRACTION = 16  # free disk "changed" when it moved by more than 1/16 of it
#: bytes the live connection asks of its socket per read (asyncio's own: 256 KiB), under
#: agent.heap's 4 MiB mmap threshold (each read's buffer comes from the heap)
SOCKET_READ_BYTES = 2 * 1024 * 1024
#: messages ``websockets`` reads ahead of the client (its ``max_queue``; its default: 16)
#: before it stops reading the socket — with FileReceiver's 4 MiB waiting for the worker
#: (bundle.live_file.MAX_PENDING_BYTES), a bundle coming in holds about 8 MiB in the agent,
#: not 48: less heap to fault in, and the SHA-256 never far behind (docs/benchmarks.md
#: "Session 11: live transfer to memory")
QUEUE_MESSAGES = 4


def state_changed(sent: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether the state ``now`` is worth a STATE after ``sent`` (None: nothing sent on this
    connection yet). Free disk moves all the time: it counts only when it moved by more
    than 1/:data:`DISK_CHANGE_FRACTION` of the value sent."""
    if sent is None:
        return True
    old_inv, new_inv = dict(sent["inventory"]), dict(now["inventory"])
    old_free, new_free = old_inv.pop("free_disk_bytes"), new_inv.pop("free_disk_bytes")
    if old_inv != new_inv or sent["holds"] != now["holds"]:
        return True
    if old_free is None or new_free is None:
        return bool(old_free != new_free)
    return bool(abs(new_free - old_free) * DISK_CHANGE_FRACTION > old_free)


def read_in_large_pieces(ws: ClientConnection) -> int | None:
    """Let ``ws`` read up to :data:`SOCKET_READ_BYTES` from its socket at a time; returns
    that size, or None where the transport does not read through a ``max_size`` (it then
    keeps its own; nothing else changes).

    With asyncio's 256 KiB a 1 MiB CHUNK arrives in four or five reads, and ``websockets``
    appends each to its read buffer, which grows by reallocation and copies what it holds
    at every step; in two-MiB reads it mostly arrives whole (0.01–0.07 ms of the event
    loop's CPU per MiB less, docs/benchmarks.md "Session 11: live transfer"). ``ws://``:
    asyncio's socket transport reads ``max_size`` bytes (an instance attribute over its
    class's); ``wss://``: CPython's TLS layer (``asyncio.sslproto``) reads ciphertext into
    a buffer of its protocol's ``max_size`` and plaintext in pieces of that size (that
    buffer, one per connection, then holds 2 MiB instead of 256 KiB; the bench measures
    ``ws://`` only)."""
    transport: Any = ws.transport
    # The TLS layer's protocol is not public: found where CPython keeps it, else left alone.
    reader = getattr(transport, "_ssl_protocol", transport)
    if not isinstance(getattr(reader, "max_size", None), int):
        return None
    reader.max_size = SOCKET_READ_BYTES
    return SOCKET_READ_BYTES


class LiveTLSError(ValueError):
    """The live connection cannot be secured as required: plain ws:// where it is not
    allowed, no pinned hub CA, or an unusable CA file. The message says what to do."""


def check_hub_url(url: str, *, allow_insecure_loopback: bool) -> str:
    """The URL's scheme (``wss`` or ``ws``) if the agent may use it.

    Raises:
        LiveTLSError: not a ws:// or wss:// URL, or plain ws:// without
            ``allow_insecure_loopback`` or to an address that is not loopback.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise LiveTLSError(f"hub_url {url!r} must be wss://HOST:PORT/live")
    if parts.scheme == "ws":
        if not allow_insecure_loopback:
            raise LiveTLSError(f"hub_url {url}: plain ws:// is refused (no TLS); use wss://, "
                               "or set allow_insecure_loopback = true in [agent] of "
                               "agent.toml for a loopback test hub")
        if not is_loopback(parts.hostname):
            raise LiveTLSError(f"hub_url {url}: plain ws:// is only allowed to a loopback "
                               f"address, not {parts.hostname}")
    return parts.scheme


def pinned_context(ca_file: Path) -> ssl_module.SSLContext:
    """A client context that trusts only the hub CA in ``ca_file`` (no system CAs), checks
    the host name, and speaks TLS 1.2 or newer.

    Raises:
        LiveTLSError: the file is missing or holds no usable CA certificate.
    """
    try:
        context = ssl_module.create_default_context(cafile=str(ca_file))
    except FileNotFoundError as exc:
        raise LiveTLSError(f"no pinned hub CA at {ca_file}: import the hub's enrollment "
                           "response with `tiangong agent enroll-response FILE`") from exc
    except (OSError, ssl_module.SSLError) as exc:
        raise LiveTLSError(f"the pinned hub CA {ca_file} is not usable: {exc}") from exc
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    return context


def _peer_binding(ws: ClientConnection) -> bytes:
    """tls-server-end-point of this connection (§5.2): SHA-256 of the hub's certificate as
    presented on it; ``b""`` on plain ws://."""
    ssl_object = ws.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return b""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise LiveTLSError("the hub presented no certificate")
    return hashlib.sha256(der).digest()


@dataclass
class _Incoming:
    file: FileReceiver  # checks, hashes, writes and fsyncs in its own thread
    path: Path
    acked: int  # bytes an ACK was sent for
    syncing: int  # bytes an fsync was asked for (its ACK follows when it is done)


@dataclass
class _Session:
    ws: ClientConnection
    conn: AgentSide
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    incoming: dict[str, _Incoming] = field(default_factory=dict)
    outgoing: dict[str, Path] = field(default_factory=dict)
    acked: dict[str, asyncio.Event] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)  # results the hub cancelled this time
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    sent_state: dict[str, Any] | None = None  # the last STATE sent on this connection
    state_id: int = 0
    heard: float = field(default_factory=time.monotonic)  # the hub's last message (monotonic)

    async def flush(self) -> None:
        """Send what the protocol queued. Once the hub has closed, nothing more can be sent:
        the receive loop keeps writing what already arrived (more to resume from) and then
        ends the session."""
        async with self.send_lock:
            messages = self.conn.data_to_send()
            with contextlib.suppress(ConnectionClosed):
                for message in messages:
                    await self.ws.send(message)

    @property
    def open(self) -> bool:
        return self.conn.is_open and self.ws.state is WsState.OPEN

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class LiveClient:
    """One agent's live connection to its hub, reconnecting until stopped.

    ``ssl`` is the client context for ``wss://`` (default: :func:`pinned_context` of the
    CA pinned in the agent home); ``allow_insecure_loopback`` (default: the config's) permits
    plain ``ws://`` to a loopback hub. ``outbox_poll_seconds`` is how often the outbox is
    looked at for new results.

    Raises:
        ValueError: no hub_url or hub_id in the config.
        LiveTLSError: plain ws:// not allowed, or no usable pinned CA for wss://.
    """

    def __init__(self, config: AgentConfig, *, keys: AgentKeys | None = None,
                 url: str | None = None, ssl: ssl_module.SSLContext | None = None,
                 allow_insecure_loopback: bool | None = None, min_backoff: float = 0.5,
                 max_backoff: float = 60.0, outbox_poll_seconds: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self.url = url or config.hub_url
        if not self.url:
            raise ValueError(f"agent {config.agent_id}: no hub_url in agent.toml")
        if config.hub_id is None:
            raise ValueError(f"agent {config.agent_id}: no hub_id in agent.toml")
        insecure = (config.allow_insecure_loopback if allow_insecure_loopback is None
                    else allow_insecure_loopback)
        scheme = check_hub_url(self.url, allow_insecure_loopback=insecure)
        if scheme == "wss" and ssl is None:
            ssl = pinned_context(config.hub_ca_path)
        self.keys = keys or load_keys(config)
        self.ssl = ssl if scheme == "wss" else None
        self.last_error: str | None = None  # why the last attempt failed (for operators)
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.outbox_poll_seconds = outbox_poll_seconds
        self._rng = rng
        self.connected = threading.Event()  # set while authenticated
        self.last_refusal: tuple[str, str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logs: asyncio.Queue[tuple[str, int, int, str, str]] | None = None
        self._log_seq: dict[str, int] = {}
        self.dropped_logs = 0
        #: what STATE carries (``Agent.site_state``); called in a worker thread
        self.state_source: Callable[[], dict[str, Any]] | None = None
        self.version = PROTOCOL_VERSION  # 1 after a hub refused version 2

    # -- step logs (called from the runner's threads)

    def live_log(self, bundle_id: str, step: int, line: Any) -> None:
        """The runner's ``live_log`` hook (``Agent(config, live_log=client.live_log)``):
        queue one line of step output for the hub. Thread-safe; never blocks a step. The
        queue holds :data:`MAX_QUEUED_LOGS` messages (also while offline); beyond that lines
        are dropped and counted in :attr:`dropped_logs` (the result file keeps the log)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.dropped_logs += 1
            return
        stream = line.stream if line.stream in _LOG_STREAMS else "info"
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._queue_log, bundle_id, step, stream, str(line.text))

    def _queue_log(self, bundle_id: str, step: int, stream: str, text: str) -> None:
        assert self._logs is not None
        body = text.encode("utf-8", errors="replace")
        pieces = [body[i:i + MAX_LOG_LINE_BYTES] for i in range(0, len(body), MAX_LOG_LINE_BYTES)]
        for piece in pieces or [b""]:
            if self._logs.full():
                self.dropped_logs += 1
                continue
            seq = self._log_seq.get(bundle_id, 0)
            self._log_seq[bundle_id] = seq + 1
            self._logs.put_nowait((bundle_id, step, seq, stream,
                                   piece.decode("utf-8", errors="replace")))

    async def _send_logs(self, s: _Session) -> None:
        assert self._logs is not None
        while s.open:
            item = await self._logs.get()
            while (wait := s.conn.log_wait()) > 0:
                await asyncio.sleep(wait)
            if not s.open:
                self._logs.put_nowait(item)  # the next connection sends it
                return
            s.conn.send_log(*item)
            await s.flush()

    # -- the reconnect loop

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before connection attempt ``attempt`` (1 = first retry):
        exponential, capped at ``max_backoff``, with full jitter in its upper half."""
        ceiling = min(self.max_backoff, self.min_backoff * 2.0 ** max(0, attempt - 1))
        return float(ceiling * (0.5 + 0.5 * self._rng()))

    async def run(self, stop: threading.Event) -> None:
        """Connect, serve, reconnect with backoff, until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._logs = asyncio.Queue(MAX_QUEUED_LOGS)
        attempt = 0
        while not stop.is_set():
            welcomed = False
            try:
                welcomed = await self._connect_once(stop)
            except ssl_module.SSLCertVerificationError as exc:
                self.last_error = (f"the hub at {self.url} presented a certificate that does "
                                   f"not verify against the pinned CA {self.config.hub_ca_path}"
                                   f": {exc.verify_message or exc}")
                log.error("live: %s", self.last_error)
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, LiveTLSError) as exc:
                self.last_error = f"cannot reach {self.url}: {exc}"
                log.info("live: cannot reach %s: %s", self.url, exc)
            except ConnectionClosed as exc:
                log.info("live: connection to %s closed: %s", self.url, exc)
            finally:
                self.connected.clear()
            attempt = 1 if welcomed else attempt + 1
            delay = self.backoff(attempt)
            deadline = asyncio.get_running_loop().time() + delay
            while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(min(0.1, delay))

    async def _connect_once(self, stop: threading.Event) -> bool:
        assert self.config.hub_id is not None and self.url is not None
        async with connect(self.url, compression=None, max_size=MAX_MESSAGE_BYTES,
                           max_queue=QUEUE_MESSAGES, ssl=self.ssl, open_timeout=10,
                           ping_interval=None) as ws:
            read_in_large_pieces(ws)
            read_frames_in_one_copy(ws)  # a 1 MiB CHUNK copied once, not three times
            conn = AgentSide(self.config.agent_id, self.config.hub_id, self.keys.identity,
                             binding=_peer_binding(ws), version=self.version)
            s = _Session(ws, conn)
            conn.send_hello()
            await s.flush()
            welcomed = False
            watcher = asyncio.create_task(self._watch_stop(stop, ws))
            try:
                async for message in ws:
                    s.heard = time.monotonic()
                    if isinstance(message, str):
                        log.warning("live: the hub sent a text message; closing")
                        break
                    try:
                        conn.receive_data(message)
                    except SyncError as exc:
                        log.warning("live: %s", exc)
                    for event in conn.events_received():
                        if isinstance(event, Welcomed):
                            welcomed = True
                            self.connected.set()
                            log.info("live: connected to %s", self.url)
                            s.spawn(self._heartbeats(s, event.heartbeat))
                            s.spawn(self._watch_outbox(s))
                            s.spawn(self._send_logs(s))
                        else:
                            await self._on_event(s, event)
                    await s.flush()
                    if conn.is_closed:
                        if conn.close_code is not None and conn.failure is not None:
                            await ws.close(conn.close_code, conn.failure.code)
                        break
            finally:
                watcher.cancel()
                for task in list(s.tasks):
                    task.cancel()
                for inc in s.incoming.values():
                    inc.file.close()  # what was fsynced stays for a resume
                if s.incoming:  # transfers cut off: their buffers are free now too
                    _give_back_heap()
            return welcomed

    async def _watch_stop(self, stop: threading.Event, ws: ClientConnection) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await ws.close(1001, "going away")

    async def _heartbeats(self, s: _Session, interval: int) -> None:
        """A HEARTBEAT every ``interval`` seconds; a hub that sent nothing for
        :data:`HUB_SILENT_HEARTBEATS` intervals (not even the ACKs) is given up: the
        connection is cut and the reconnect loop takes over."""
        n = 0
        await self._send_state(s)
        while s.open:
            await asyncio.sleep(interval)
            if not s.open:
                return
            silent = time.monotonic() - s.heard
            if silent > HUB_SILENT_HEARTBEATS * interval:
                self.last_error = (f"the hub at {self.url} sent nothing for {silent:.0f} s "
                                   f"({HUB_SILENT_HEARTBEATS} heartbeat intervals of "
                                   f"{interval} s); reconnecting")
                log.warning("live: %s", self.last_error)
                s.ws.transport.abort()
                return
            n += 1
            await self._send_state(s)
            s.conn.send_heartbeat(n)
            await s.flush()

    async def _send_state(self, s: _Session) -> None:
        """STATE before this heartbeat, if the agent's state changed (§3.1)."""
        if self.state_source is None or s.conn.version < 2 or not s.open:
            return
        try:
            state = await asyncio.to_thread(self.state_source)
        except (OSError, ValueError, JournalError, sqlite3.Error) as exc:
            log.warning("live: cannot read this agent's state for the hub: %s", exc)
            return
        if not s.open or not state_changed(s.sent_state, state):
            return
        try:
            s.conn.send_state(s.state_id, state)
        except UsageError as exc:  # over the protocol's bounds: a bug, never a crash
            log.error("live: cannot send this agent's state: %s", exc)
            return
        s.sent_state, s.state_id = state, s.state_id + 1
        await s.flush()

    async def _on_event(self, s: _Session, event: Any) -> None:
        if isinstance(event, Refused | PeerError):
            self.last_refusal = (event.code, event.text)
            if event.code == "bad-version" and self.version > 1:
                log.warning("live: the hub does not speak protocol version %d (%s); speaking "
                            "version 1 (no inventory or holds in heartbeats)", self.version,
                            event.text)
                self.version = 1
                return
            log.error("live: the hub closed the connection: %s (%s)", event.code, event.text)
        elif isinstance(event, OfferReceived):
            held = self._already_held(event.offer)
            if held is not None:
                # Delivered by media first (docs/live-protocol.md §4.2): the hub marks it
                # delivered and never offers it again; the journal would refuse a second run
                # anyway, this only saves sending the bytes.
                log.info("live: %s is already here (%s); answering have-it", event.offer.name,
                         held)
                s.conn.send_cancel(event.offer.transfer, "hub", CANCEL_HAVE_IT,
                                   "the agent already holds this bundle")
            else:
                await self._open_incoming(s, event.offer)
        elif isinstance(event, ChunkReceived):
            await self._write_chunk(s, event)
        elif isinstance(event, TransferDone):
            await self._finish_incoming(s, event.transfer)
        elif isinstance(event, TransferCancelled):
            self._cancelled(s, event)
        elif isinstance(event, ResumeRequested):
            s.spawn(self._send_result(s, event.transfer, event.offset))
        elif isinstance(event, AckReceived):
            if event.transfer in s.acked:
                s.acked[event.transfer].set()
        elif isinstance(event, TransferReceived):
            self._result_received(s, event.transfer)

    # -- bundles in

    def _already_held(self, offer: Offer) -> Path | None:
        """The file in the inbox or archive with exactly the offered bytes (same name or a
        clash-suffixed one, same size and SHA-256), if any. Split offers are never held."""
        if offer.parts:
            return None
        stem, dot, suffix = offer.name.rpartition(".")
        for folder in (self.config.inbox, self.config.archive, self.config.archive / "duplicates"):
            candidates = [folder / offer.name]
            if dot:
                candidates += sorted(folder.glob(f"{glob_escape(stem)}-*.{glob_escape(suffix)}"))
            for path in candidates:
                try:
                    if not path.is_file() or path.stat().st_size != offer.size:
                        continue
                    if _size_and_sha256(path) == (offer.size, offer.sha256):
                        return path
                except OSError:
                    continue
        return None

    def _partial(self, transfer: str) -> Path:
        return self.config.staging / f"live-{transfer}.part"

    async def _open_incoming(self, s: _Session, offer: Offer) -> None:
        self.config.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._partial(offer.transfer)
        # What the file holds now (fsynced, re-hashed) is what we resume from.
        try:
            file = await asyncio.to_thread(FileReceiver.open, path, offer)
        except OSError as exc:
            log.error("live: cannot write %s into %s: %s", offer.name, path, exc)
            s.conn.send_cancel(offer.transfer, "hub", CANCEL_IO_ERROR,
                               "the agent cannot write the file")
            return
        if not s.open:  # the connection ended meanwhile
            file.close()
            return
        if not s.incoming:  # its 1 MiB messages reuse their buffers (agent.heap)
            heap.keep_freed_blocks()
        s.incoming[offer.transfer] = _Incoming(file, path, file.offset, file.offset)
        if file.offset:
            log.info("live: resuming %s at byte %d of %d", offer.name, file.offset,
                     offer.size)
        s.conn.send_resume(offer.transfer, file.offset)

    async def _write_chunk(self, s: _Session, event: ChunkReceived) -> None:
        """Hand the chunk to the file's worker (checked, hashed, written there) and read on;
        every :data:`ACK_EVERY_BYTES` and at the end an fsync is queued behind it, and its
        ACK is sent once it is done. Reading waits only while the worker is far behind."""
        inc = s.incoming.get(event.transfer)
        if inc is None:
            return
        try:
            inc.file.write(event.offset, event.data)
        except (SyncError, OSError) as exc:
            self._reject_incoming(s, event.transfer, exc)
            return
        offset = inc.file.offset
        if offset - inc.syncing >= ACK_EVERY_BYTES or offset == inc.file.offer.size:
            inc.syncing = offset
            s.spawn(self._ack_when_durable(s, event.transfer, inc, inc.file.sync()))
        await inc.file.room()

    async def _ack_when_durable(self, s: _Session, transfer: str, inc: _Incoming,
                                synced: Future[int]) -> None:
        try:
            durable = await inc.file.wait(synced)
        except (SyncError, OSError) as exc:
            if s.incoming.get(transfer) is inc:
                self._reject_incoming(s, transfer, exc)
                await s.flush()
            return
        # ACKs go out in order (one worker, callbacks in completion order); one for a
        # transfer already finished or dropped is not sent.
        if s.incoming.get(transfer) is inc and durable > inc.acked and s.open:
            inc.acked = durable
            s.conn.send_ack(transfer, durable)
            await s.flush()

    def _reject_incoming(self, s: _Session, transfer: str,
                         exc: SyncError | OSError) -> None:
        inc = _drop_incoming(s, transfer)
        assert inc is not None  # every caller found it in s.incoming
        log.error("live: %s rejected: %s", inc.file.offer.name, exc)
        if isinstance(exc, SyncError):
            s.conn.send_cancel(transfer, "hub", "corrupt", exc.remote_text)
        else:
            s.conn.send_cancel(transfer, "hub", CANCEL_IO_ERROR,
                               "the agent cannot write the file")

    async def _finish_incoming(self, s: _Session, transfer: str) -> None:
        inc = s.incoming.get(transfer)
        if inc is None:
            return
        try:
            # Every byte written, the size and the whole SHA-256 compared, fsynced, closed.
            await inc.file.wait(inc.file.finish())
        except (SyncError, OSError) as exc:
            if s.incoming.get(transfer) is inc:
                self._reject_incoming(s, transfer, exc)
            return
        del s.incoming[transfer]
        inc.file.close()
        if inc.acked < inc.file.durable:  # the last fsync's ACK may not have gone out yet
            inc.acked = inc.file.durable
            s.conn.send_ack(transfer, inc.acked)
        dest = self.config.inbox / inc.file.offer.name
        if dest.exists():  # delivered by media too: the journal runs it once
            inc.path.unlink()
        else:
            os.replace(inc.path, dest)
            fsync_dir(self.config.inbox)
        log.info("live: received %s into the inbox", dest.name)
        s.conn.send_received(transfer)
        _incoming_ended(s)

    def _cancelled(self, s: _Session, event: TransferCancelled) -> None:
        if event.offered_by == "hub":
            _drop_incoming(s, event.transfer)
        else:
            path = s.outgoing.pop(event.transfer, None)
            s.acked.pop(event.transfer, None)
            if path is None:
                return
            if event.code == CANCEL_REJECTED:
                # Decided: the importer refused it (forged, replayed, not ours ...).
                # Offering it again would get the same answer; the operator reads why.
                log.error("live: the hub rejected result %s: %s", path.name, event.text)
                self._mark_sent(path.name)
            else:
                s.skipped.add(path.name)
                log.warning("live: the hub did not take result %s now: %s (%s); it is "
                            "offered again on the next connection", path.name, event.code,
                            event.text)

    # -- results out

    @property
    def _sent_path(self) -> Path:
        return self.config.home / SENT_STATE

    def sent_results(self) -> set[str]:
        """Names of outbox results the hub has decided on: imported (RECEIVED) or
        rejected (CANCEL ``rejected``)."""
        try:
            names = json.loads(self._sent_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        return {n for n in names if isinstance(n, str)}

    def _mark_sent(self, name: str) -> None:
        names = sorted(self.sent_results() | {name})
        tmp = self._sent_path.with_name(SENT_STATE + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(names, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._sent_path)
        fsync_dir(self.config.home)

    async def _watch_outbox(self, s: _Session) -> None:
        while s.open:
            self._offer_results(s)
            await s.flush()
            await asyncio.sleep(self.outbox_poll_seconds)

    def _offer_results(self, s: _Session) -> None:
        sent = self.sent_results()
        offered = {p.name for p in s.outgoing.values()}
        for path in sorted(self.config.outbox.glob("*.tgr")):
            if len(s.outgoing) >= MAX_TRANSFERS:
                return
            if path.name in sent or path.name in offered or path.name in s.skipped:
                continue
            transfer = path.name[: -len(".tgr")]
            size, digest = _size_and_sha256(path)
            try:
                offer = Offer(transfer, path.name, size, digest)
            except SyncError as exc:
                log.warning("live: result %s cannot be offered: %s", path.name, exc)
                s.skipped.add(path.name)
                continue
            s.conn.send_offer(offer)
            s.outgoing[transfer] = path
            s.acked[transfer] = asyncio.Event()

    async def _send_result(self, s: _Session, transfer: str, offset: int) -> None:
        path = s.outgoing.get(transfer)
        if path is None:
            return
        size = path.stat().st_size
        with path.open("rb") as fh:
            fh.seek(offset)
            while offset < size and s.open and transfer in s.outgoing:
                if s.conn.in_flight(transfer) >= WINDOW_BYTES:
                    s.acked[transfer].clear()
                    await s.acked[transfer].wait()
                    continue
                data = fh.read(min(MAX_CHUNK_BYTES, size - offset))
                s.conn.send_chunk(transfer, offset, data)
                offset += len(data)
                await s.flush()
        if offset == size and s.open and transfer in s.outgoing:
            s.conn.send_done(transfer)
            await s.flush()

    def _result_received(self, s: _Session, transfer: str) -> None:
        path = s.outgoing.pop(transfer, None)
        s.acked.pop(transfer, None)
        if path is not None:
            self._mark_sent(path.name)
            log.info("live: the hub received and imported result %s", path.name)


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a glob pattern."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _drop_incoming(s: _Session, transfer: str) -> _Incoming | None:
    """Forget an incoming transfer that failed or was cancelled (None: none by that id):
    its partial file closed and removed, and :func:`_incoming_ended`."""
    inc = s.incoming.pop(transfer, None)
    if inc is not None:
        inc.file.close()
        inc.path.unlink(missing_ok=True)
        _incoming_ended(s)
    return inc


def _incoming_ended(s: _Session) -> None:
    """An incoming transfer ended: after the last one, the heap's free memory (its 1 MiB
    messages) goes back to the kernel (:mod:`agent.heap`)."""
    if not s.incoming:
        _give_back_heap()


def _give_back_heap() -> asyncio.Future[bool]:
    """:func:`agent.heap.give_back` in a worker thread (``ctypes`` releases the GIL): trimming
    a transfer's worth of free heap takes a few milliseconds, which RECEIVED and the
    connection's other messages do not wait for. First, here and in order with the next
    transfer's :func:`agent.heap.keep_freed_blocks`, the live thread's own arena is told to
    give its free top back (which ``malloc_trim`` does not trim)."""
    heap.stop_keeping()
    return asyncio.get_running_loop().run_in_executor(None, heap.give_back)


def run_live_client(config: AgentConfig, stop_event: threading.Event,
                    **options: Any) -> None:
    """Run the live client until ``stop_event`` is set (blocking; call it in a thread).

    ``options`` go to :class:`LiveClient` (``ssl``, ``min_backoff``, ``max_backoff``,
    ``outbox_poll_seconds``, ``keys``, ``url``).
    """
    client = LiveClient(config, **options)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(client.run(stop_event))
