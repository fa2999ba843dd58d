"""The hub's live WebSocket server: an asyncio layer over :class:`bundle.sync.HubSide`.

One task per agent connection moves WebSocket messages in and out of the sans-I/O protocol
(docs/live-protocol.md §10) and does the hub's share of the work:

* **Authentication.** On HELLO the agent's enrolled Ed25519 key is looked up
  (:func:`hub.services.agents.get_agent`); an unknown or revoked agent is refused with its
  close code (§7) and an audit event (``live.refused``).
* **Presence.** An in-memory set of online agents; ``agents.last_seen`` is written when an
  agent authenticates and on its heartbeats.
* **Bundles out.** :meth:`LiveHub.push_pending` exports the agent's queued deployments with
  the ordinary export path (:func:`hub.services.exchange.export_environment`) into a spool
  directory ``<data_dir>/live-outbox/<agent>/`` and offers every ``*.tgb`` there, in chunks
  from the offset the agent asks for (resume), within a window of unacknowledged bytes. A
  file leaves the spool (into ``sent/``) only when the agent answered RECEIVED, so an agent
  that drops off gets it again on its next connection.
* **Results in.** An offered ``*.tgr`` is written to ``<data_dir>/live-inbox/.partial/``,
  checked (:class:`bundle.sync.TransferReceiver`), moved to ``<data_dir>/live-inbox/`` and
  imported with the ordinary import path (:func:`hub.services.exchange.import_result`).
* **Logs.** LOG lines are appended as JSON lines to ``<data_dir>/live-logs/<bundle_id>.log``,
  each ``(bundle_id, seq)`` once.

Modules: :mod:`hub.live_hub` (:class:`LiveHub`, one task per connection),
:mod:`hub.live_files` (partial uploads, the log store); this one runs the server in its own
thread and event loop (:func:`serve_live`, :func:`start_live`).

Deliberately not here (yet): TLS certificate creation (pass an ``ssl`` context and its
``binding``), cross-process notifications, and pushing on approval (the caller calls
:meth:`LiveServer.push_pending`). Plain ``ws://`` is refused unless the caller allows it for
a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl as ssl_module
import threading
from concurrent.futures import Future
from typing import Any

from websockets.asyncio.server import Server, serve

from bundle.sync import DEFAULT_HEARTBEAT_SECONDS, MAX_MESSAGE_BYTES
from hub.errors import ConfigError
from hub.live_hub import ACK_EVERY_BYTES, WINDOW_BYTES, LiveHub

__all__ = ["ACK_EVERY_BYTES", "WINDOW_BYTES", "LiveHub", "LiveServer", "serve_live",
           "start_live"]


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if ssl is None and not _is_loopback(host):
        raise ConfigError(f"refusing plain ws:// on {host}: only loopback addresses may serve "
                          "without TLS")
    ready: Future[tuple[asyncio.AbstractEventLoop, Server, asyncio.Event]] = Future()

    async def main() -> None:
        stopped = asyncio.Event()
        try:
            server = await serve(hub.handler, host, port, compression=None,
                                 max_size=MAX_MESSAGE_BYTES, ssl=ssl)
        except OSError as exc:
            ready.set_exception(exc)
            return
        ready.set_result((asyncio.get_running_loop(), server, stopped))
        async with server:
            await stopped.wait()
            server.close(close_connections=True)
            await server.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="tiangong-live",
                              daemon=True)
    thread.start()
    loop, server, stopped = ready.result(timeout=30)
    return LiveServer(hub, loop, server, thread, stopped)


def serve_live(config: Any, host: str, port: int, *, actor: str,
               ssl: ssl_module.SSLContext | None = None, binding: bytes = b"",
               allow_insecure_loopback: bool = False,
               heartbeat: int = DEFAULT_HEARTBEAT_SECONDS) -> LiveServer:
    """Start the live server for the hub of ``config`` (a :class:`hub.config.HubConfig`).

    ``actor`` is the hub user that exports bundles for live delivery (needs the operator
    role); ``binding`` the SHA-256 of the hub's TLS certificate in DER form (§5.2).

    Raises:
        ConfigError: as :func:`start_live`, or the hub is not initialised.
    """
    from hub.db import make_engine, make_session_factory
    from hub.keystore import load_hub_keys

    keys = load_hub_keys(config.data_dir)
    engine = make_engine(config.database_url)
    hub = LiveHub(session_factory=make_session_factory(engine), keys=keys,
                  data_dir=config.data_dir, actor=actor, heartbeat=heartbeat,
                  binding=binding)
    return start_live(hub, host, port, ssl=ssl, allow_insecure_loopback=allow_insecure_loopback)
