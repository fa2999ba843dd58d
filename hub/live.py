"""The hub's live WebSocket server: an asyncio layer over :class:`bundle.sync.HubSide`.

One task per agent connection moves WebSocket messages in and out of the sans-I/O protocol
(docs/live-protocol.md §10) and does the hub's share of the work:

* **Authentication.** On HELLO the agent's enrolled Ed25519 key is looked up
  (:func:`hub.services.agents.get_agent`); an unknown or revoked agent is refused with its
  close code (§7) and an audit event (``live.refused``).
* **Presence.** An in-memory set of online agents; ``agents.last_seen`` and
  ``online_until`` are written when an agent authenticates, on its heartbeats and when it
  disconnects (:mod:`hub.services.presence`).
* **Bundles out.** LiveHub's push loop asks the database — woken by PostgreSQL NOTIFY
  (:mod:`hub.live_notify`), else every ``poll_interval`` — for
  queued deployments of connected agents — approval and queueing happen in other processes,
  so the database is the signal — and exports them with the ordinary export path
  (:func:`hub.services.exchange.export_environment`) into a spool directory
  ``<data_dir>/live-outbox/<agent>/``, then offers every ``*.tgb`` there, in chunks from the
  offset the agent asks for (resume), within a window of unacknowledged bytes. A file leaves
  the spool (into ``sent/``) only when the agent answered RECEIVED or ``have-it``, so an
  agent that drops off gets it again on its next connection.
* **Results in.** An offered ``*.tgr`` is written to ``<data_dir>/live-inbox/.partial/``,
  checked (:class:`bundle.sync.TransferReceiver`), moved to ``<data_dir>/live-inbox/`` and
  imported with the ordinary import path (:func:`hub.services.exchange.import_result`).
* **Logs.** LOG lines are appended as JSON lines to ``<data_dir>/live-logs/<bundle_id>.log``,
  each ``(bundle_id, seq)`` once.

Modules: :mod:`hub.live_hub` (:class:`LiveHub`, one task per connection),
:mod:`hub.live_files` (partial uploads, the log store), :mod:`hub.tls` (the server's SSL
context and channel binding); this one runs the server in its own thread and event loop
(:func:`serve_live`, :func:`start_live`) and, for ``tiangong hub live`` / ``hub serve``,
from the hub configuration (:func:`start_configured`, :func:`run_until_signalled`).

**Who acts.** Without a configured hub user the live server acts as the hub itself: a
:class:`hub.services.context.ServiceContext` with ``system="live"``, which the services
allow only to export deployments an operator already queued and to import results
(:data:`hub.services.users.SYSTEM_ACTIONS`); the audit log names it ``system:live``.

Deliberately not here: certificate creation (:mod:`hub.tls`) and PostgreSQL
LISTEN/NOTIFY (:mod:`hub.live_notify`; :meth:`LiveServer.push_pending` still pushes at once
for callers in this process). Plain ``ws://`` is refused unless the
caller allows it for a loopback address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
import threading
from concurrent.futures import Future
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from websockets.asyncio.server import Server, serve

from bundle.sync import MAX_MESSAGE_BYTES, is_loopback
from hub.errors import ConfigError, HubError
from hub.live_http import http_endpoints
from hub.live_hub import ACK_EVERY_BYTES, WINDOW_BYTES, LiveHub
from tiangong.stopsignals import stop_signals

__all__ = ["ACK_EVERY_BYTES", "WINDOW_BYTES", "LiveHub", "LiveServer",
           "is_loopback", "parse_bind", "run_until_signalled", "serve_live",
           "start_configured", "start_live"]

log = logging.getLogger("tiangong.hub.live")

PARENT_POLL_S = 1.0  # seconds between checks that `hub serve` (the parent) still runs
# Bytes asyncio's TLS layer reads from a socket at once. Its default (256 KiB) is a buffer
# allocated and zeroed for every connection: 283 KiB of resident memory per idle TLS
# connection, 2.8 GiB for 10,000 agents; with 16 KiB (a TLS record) it is 43 KiB
# (docs/benchmarks.md, "10,000 agents"). Only reads from agents (results, logs) are cut
# into more pieces; what the hub sends is not affected.
TLS_READ_BYTES = 16 * 1024


class LiveServer:
    """A running live server in its own thread and event loop."""

    def __init__(self, hub: LiveHub, loop: asyncio.AbstractEventLoop, server: Server,
                 thread: threading.Thread, stopped: asyncio.Event) -> None:
        self.hub = hub
        self.loop = loop
        self.server = server
        self.thread = thread
        self._stopped = stopped
        self.port: int = next(iter(server.sockets)).getsockname()[1]

    def push_pending(self, agent_id: str) -> Future[int]:
        """Thread-safe :meth:`LiveHub.push_pending`."""
        return asyncio.run_coroutine_threadsafe(self.hub.push_pending(agent_id), self.loop)

    @property
    def online(self) -> frozenset[str]:
        return self.hub.online

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (1001) and stop the thread."""
        self.loop.call_soon_threadsafe(self._stopped.set)
        self.thread.join(timeout)


def start_live(hub: LiveHub, host: str, port: int, *,
               ssl: ssl_module.SSLContext | None = None,
               allow_insecure_loopback: bool = False) -> LiveServer:
    """Serve ``hub`` on ``host:port`` (0: any free port) in a new thread; returns once it
    listens.

    Raises:
        ConfigError: no TLS context and plain ws:// not allowed, or not on loopback.
        OSError: the address cannot be bound.
    """
    if ssl is None and not allow_insecure_loopback:
        raise ConfigError("the live server needs TLS; plain ws:// is only for loopback tests "
                          "(allow_insecure_loopback=True)")
    if ssl is None and not is_loopback(host):
        raise ConfigError(f"refusing plain ws:// on {host}: only loopback addresses may serve "
                          "without TLS")
    ready: Future[tuple[asyncio.AbstractEventLoop, Server, asyncio.Event]] = Future()
    if ssl is not None:
        _limit_tls_read_buffer()

    async def main() -> None:
        stopped = asyncio.Event()
        try:
            # The TLS and WebSocket handshakes get the same deadline as authentication
            # (docs/live-protocol.md §5.3); the handler's deadline runs from its start.
            extra: dict[str, Any] = (
                {"ssl_handshake_timeout": hub.limits.handshake_timeout_s} if ssl else {})
            # No WebSocket pings from the hub (ping_interval=None): the protocol's
            # heartbeats are the keepalive — a connection silent for three intervals is
            # closed by the handler — and pings every 20 s (the library's default) cost
            # 10,000 agents 500 ping/pong rounds a second (docs/benchmarks.md).
            server = await serve(hub.handler, host, port, compression=None,
                                 max_size=MAX_MESSAGE_BYTES, ssl=ssl, ping_interval=None,
                                 open_timeout=hub.limits.handshake_timeout_s,
                                 process_request=http_endpoints(hub, stopped.is_set),
                                 **extra)
        except OSError as exc:
            ready.set_exception(exc)
            return
        ready.set_result((asyncio.get_running_loop(), server, stopped))
        async with server:
            await stopped.wait()
            server.close(close_connections=True)
            await server.wait_closed()
            try:
                await hub.shutdown()
            except (SQLAlchemyError, HubError, OSError) as exc:  # the database went first
                log.error("live: at shutdown: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="tiangong-live",
                              daemon=True)
    thread.start()
    loop, server, stopped = ready.result(timeout=30)
    return LiveServer(hub, loop, server, thread, stopped)


def _limit_tls_read_buffer() -> None:
    """Make asyncio's TLS transports of this process read :data:`TLS_READ_BYTES` at a time
    (a class attribute of ``asyncio.sslproto.SSLProtocol``, the size of the read buffer each
    TLS connection allocates; the live server is the only server of its process)."""
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BYTES:
        sslproto.SSLProtocol.max_size = TLS_READ_BYTES


def serve_live(config: Any, host: str, port: int, *, actor: str | None = None,
               ssl: ssl_module.SSLContext | None = None, binding: bytes = b"",
               allow_insecure_loopback: bool = False,
               heartbeat: int | None = None) -> LiveServer:
    """Start the live server for the hub of ``config`` (a :class:`hub.config.HubConfig`).

    ``actor`` is the hub user that exports bundles for live delivery (needs the operator
    role), or None: the hub's own ``system:live`` (see :meth:`LiveHub._services`);
    ``binding`` the SHA-256 of the hub's TLS certificate in DER form (§5.2); ``heartbeat``
    the seconds between heartbeats (default: ``[live] heartbeat_s``).

    Raises:
        ConfigError: as :func:`start_live`, or the hub is not initialised.
    """
    from hub.db import make_engine, make_session_factory
    from hub.keystore import KeysReloader
    from hub.live_exports import ExportWorkers
    from hub.live_guard import LiveLimits
    from hub.live_notify import listen_dsn
    from hub.live_wake import wake_dir
    from hub.metrics import single_process

    single_process()  # before LiveHub creates its metrics

    reloader = KeysReloader(config.data_dir)
    keys = reloader.current()
    engine = make_engine(config.database_url, audit_mac=keys.audit_mac)
    limits = LiveLimits.from_config(config)
    # Started by the hub once enough agents are connected (LiveHub._start_workers): before
    # the first burst, and never for a handful of agents (starting costs a second of CPU).
    workers = (ExportWorkers(config, actor, limits.export_processes)
               if limits.export_processes else None)
    hub = LiveHub(session_factory=make_session_factory(engine), keys=keys,
                  data_dir=config.data_dir, actor=actor,
                  heartbeat=heartbeat or limits.heartbeat_s, binding=binding, limits=limits,
                  poll_interval=limits.poll_s,
                  notify_dsn=listen_dsn(config.database_url), keys_source=reloader.current,
                  export_workers=workers, wake_dir=wake_dir(config.database_url))
    return start_live(hub, host, port, ssl=ssl, allow_insecure_loopback=allow_insecure_loopback)


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8401`` for IPv6) as (host, port).

    Raises:
        ConfigError: not HOST:PORT, or the port is not 0…65535.
    """
    host, sep, port_text = bind.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdecimal() or int(port_text) > 65535:
        raise ConfigError(f"live bind {bind!r} is not HOST:PORT (e.g. 0.0.0.0:8401)")
    return host, int(port_text)


def start_configured(config: Any, *, bind: str | None = None,
                     allow_insecure_loopback: bool | None = None) -> LiveServer:
    """Start the live server as ``config`` (a :class:`hub.config.HubConfig`) says; ``bind``
    and ``allow_insecure_loopback`` override the ``[live]`` settings (CLI flags).

    With ``allow_insecure_loopback`` on a loopback address the server speaks plain ``ws://``
    (tests, or behind a TLS-terminating proxy on the same host); otherwise ``wss://`` with
    ``live_tls_cert``/``live_tls_key``. The channel binding is the tls-server-end-point of
    ``live_binding_cert`` when set (the certificate agents really see: a terminating
    proxy's), else of the server's own certificate, else empty (plain ws://).

    Raises:
        ConfigError: no bind address, a bad one, missing or mismatched TLS files, plain
            ws:// anywhere but loopback, the hub not initialised.
        OSError: the address cannot be bound.
    """
    from hub.tls import certificate_binding, load_server_tls

    bind = bind or config.live_bind
    if not bind:
        raise ConfigError("no live bind address: set [live] bind = \"HOST:PORT\" in hub.toml, "
                          "TIANGONG_HUB_LIVE_BIND, or give --live-bind")
    host, port = parse_bind(bind)
    insecure = (config.live_allow_insecure_loopback if allow_insecure_loopback is None
                else allow_insecure_loopback)
    binding = (certificate_binding(config.live_binding_cert)
               if config.live_binding_cert is not None else None)
    if insecure:
        if not is_loopback(host):
            raise ConfigError(f"refusing plain ws:// on {host}: allow_insecure_loopback "
                              "applies to loopback addresses only")
        return serve_live(config, host, port, allow_insecure_loopback=True,
                          binding=binding or b"")
    tls = load_server_tls(config.live_tls_cert, config.live_tls_key)
    return serve_live(config, host, port, ssl=tls.context, binding=binding or tls.binding)


def run_until_signalled(server: LiveServer, *, parent_pid: int | None = None) -> None:
    """Block the main thread until SIGTERM or SIGINT, then stop ``server`` (close code
    1001 to every agent). For ``tiangong hub live``.

    ``parent_pid``: also stop once that process is gone (``hub serve`` passes its own pid,
    so a live child never outlives a killed master and keeps the port from its successor).

    Raises:
        RuntimeError: the server thread died.
    """
    stop = threading.Event()

    def on_signal(signum: int) -> None:  # in a helper thread (tiangong.stopsignals)
        log.info("live: signal %d: stopping", signum)
        stop.set()

    try:
        with stop_signals(on_signal):
            while not stop.wait(PARENT_POLL_S):
                if not server.thread.is_alive():
                    raise RuntimeError("the live server thread ended unexpectedly")
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("live: parent process %d is gone; stopping", parent_pid)
                    break
    finally:
        server.stop()
