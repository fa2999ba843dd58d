"""Export worker processes for the live server: a rollout burst's exports on another core.

An export is CPU-bound Python (sign, frame, hash, the database rows); in the live server's
own threads it holds the GIL that the event loop needs to offer and send bundles, so a
burst's exports and its sending took turns on one core. :class:`ExportWorkers` runs a
burst's export calls (:func:`hub.live_hub.export_many`) in ``[live] export_processes``
processes of their own instead: each opens its own database engine and loads the hub's keys
from the data directory, as the live server did; the live server's event loop only offers
and sends. The bundles, their rows and audit events are exactly those of an export in the
live server itself: the same function runs, only in another process.

Two workers by default where the live server may run on two or more CPUs, none on one
(:func:`hub.live_guard.default_export_processes`): the exports' CPU leaves the event loop's
core, which then only offers, sends and records deliveries (docs/benchmarks.md, "Session 9:
live burst"), and a burst's two export calls at once run side by side ("Session 12: two
export workers").

What stays in the live server's threads: single exports (an agent connecting, one queued
deployment), the ``delivered`` bookkeeping, and every export call while the workers are not
running (the live server starts them once :data:`hub.live_hub.EXPORT_WORKERS_FROM` agents
are connected; after a worker died, the next call starts them again and runs in threads
meanwhile, so no bundle waits for a process to start; a start that failed is tried again
:data:`RESTART_PAUSE_S` later at the earliest).

The workers are started with ``spawn`` (forking the live server's threads and sockets is
unsafe), which imports the main module again in each worker: ``tiangong``'s entry points
guard their ``main()``, as any program embedding the live server must.

Claims (:mod:`hub.services.export_claims`) name the process that exports: a worker's claims
carry its own token, which it reports with every call, so the live server can release them
after a database error (:meth:`hub.live_hub.LiveHub._release_claims`); the claims of a
worker that died are stale (its pid is gone) and the next export takes them over. A worker
ends when the live server's process is gone (it watches its parent), and a pool whose
worker died is started again for the next call.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hub.errors import HubError

__all__ = ["ExportWorkers", "WorkerFailed", "WorkerLost"]

log = logging.getLogger("tiangong.hub.live")

PARENT_POLL_S = 1.0  # seconds between a worker's checks that the live server still runs
RESTART_PAUSE_S = 60.0  # seconds after a worker failed to start before the next try
WORKER_GC_THRESHOLD = 50_000  # a worker's gen-0 collection threshold (the default is 700)


class WorkerFailed(HubError):
    """An export call failed as a whole in a worker (what the error was is in the text);
    ``database`` says whether it was a database error (claims may need releasing)."""

    def __init__(self, message: str, *, database: bool) -> None:
        super().__init__(message)
        self.database = database


class WorkerLost(HubError):
    """The worker process running an export call died (its claims are stale: the next
    export takes them over)."""


@dataclass(frozen=True)
class _Answer:
    """A worker's reply: its claim token, and the outcome or the error."""

    token: str
    outcome: Any = None  # hub.live_hub.ExportOutcome
    error: str | None = None
    database: bool = False


# -- in the worker process

_state: dict[str, Any] = {}


def _init(config: Any, actor: str | None, parent: int) -> None:
    """Worker start: the hub's keys (reloaded when root.json changes), a database engine
    of its own, and a thread that ends the process once ``parent`` is gone."""
    from hub.db import make_engine, make_session_factory
    from hub.keystore import KeysReloader
    from hub.live_hub import export_many  # noqa: F401  (now, not in the first call)

    reloader = KeysReloader(config.data_dir)
    engine = make_engine(config.database_url, audit_mac=reloader.current().audit_mac)
    _state.update(reloader=reloader, sessions=make_session_factory(engine), actor=actor,
                  data_dir=Path(config.data_dir))

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="tiangong-export-parent", daemon=True).start()
    # What is loaded now (modules, the engine, the keys) lives as long as the worker: out of
    # the cyclic collector's walks. A call makes ~100 objects per agent and frees them by
    # reference counting; with the default gen-0 threshold (700) a 1,000-agent burst ran
    # ~10 % of its export CPU in collections (docs/benchmarks.md, "Session 9: export CPU").
    gc.freeze()
    gc.set_threshold(WORKER_GC_THRESHOLD, *gc.get_threshold()[1:])


def _ping() -> str:
    from hub.services.export_claims import my_token

    return my_token()


def _export(spool_root: str, agent_ids: list[str]) -> _Answer:
    """One export call in the worker; every error is answered, never raised (an exception
    object from SQLAlchemy or a driver need not survive pickling)."""
    from hub.live_hub import export_many, live_services
    from hub.services.context import utc_now
    from hub.services.export_claims import my_token

    def services() -> Any:
        return live_services(_state["sessions"], utc_now, _state["actor"],
                             _state["reloader"].current(), _state["data_dir"])

    try:
        return _Answer(my_token(), outcome=export_many(services, Path(spool_root), agent_ids))
    except SQLAlchemyError as exc:
        return _Answer(my_token(), error=f"database error: {exc}", database=True)
    except (HubError, OSError) as exc:
        return _Answer(my_token(), error=str(exc))


# -- in the live server


class ExportWorkers:
    """``processes`` export worker processes of the live server (started on first use)."""

    def __init__(self, config: Any, actor: str | None, processes: int) -> None:
        self.config = config
        self.actor = actor
        self.processes = processes
        self.tokens: set[str] = set()  # claim tokens of workers (for releasing claims)
        self._pool: ProcessPoolExecutor | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._not_before = 0.0  # monotonic time: no start before (after a failed start)

    @property
    def ready(self) -> bool:
        """The workers have started (calls before that run in the live server's threads)."""
        return self._ready

    def start(self) -> None:
        """Start the worker processes, if not yet (returns at once; :attr:`ready` turns true
        when they answered). After a start that failed, the next is tried only
        :data:`RESTART_PAUSE_S` later (callers ask on every connection and burst)."""
        with self._lock:
            if self._pool is not None or time.monotonic() < self._not_before:
                return
            log.info("live: starting %d export worker(s)", self.processes)
            # spawn: forking the live server (threads, sockets, an event loop) is unsafe
            self._pool = pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init, initargs=(self.config, self.actor, os.getpid()))
            pings = [pool.submit(_ping) for _ in range(self.processes)]
        for ping in pings:
            ping.add_done_callback(functools.partial(self._started, pool))

    def _started(self, pool: ProcessPoolExecutor, ping: Future[str]) -> None:
        try:
            token = ping.result()
        except (BrokenProcessPool, OSError) as exc:
            log.error("live: an export worker did not start (%s); exports stay in the live "
                      "server's threads, the next start is tried in %g s or later", exc,
                      RESTART_PAUSE_S)
            self._not_before = time.monotonic() + RESTART_PAUSE_S
            self._drop(pool)
            return
        self.tokens.add(token)
        self._ready = True
        log.info("live: export worker %s ready", token)

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
                self._ready = False
        pool.shutdown(wait=False, cancel_futures=True)

    async def export_many(self, spool_root: Path, agent_ids: list[str]) -> Any:
        """:func:`hub.live_hub.export_many` in a worker; its ExportOutcome.

        Raises:
            WorkerFailed: the call failed as a whole (as it would have here).
            WorkerLost: the worker died (the pool starts again on the next burst).
        """
        pool = self._pool
        if pool is None:
            raise WorkerLost("the export workers are not running")
        try:
            answer: _Answer = await asyncio.wrap_future(
                pool.submit(_export, str(spool_root), agent_ids))
        except BrokenProcessPool as exc:
            self._drop(pool)
            raise WorkerLost(f"an export worker died ({exc}); the next round exports them "
                             "again, in the live server's threads until new export workers "
                             "are ready") from exc
        except RuntimeError as exc:  # the pool was shut down meanwhile (dropped, stopping)
            raise WorkerLost(f"the export workers stopped ({exc}); the next round exports "
                             "them again") from exc
        self.tokens.add(answer.token)
        if answer.error is not None:
            raise WorkerFailed(answer.error, database=answer.database)
        return answer.outcome

    def shutdown(self) -> None:
        """Stop the workers (a call under way is left to finish in its process)."""
        with self._lock:
            pool, self._pool, self._ready = self._pool, None, False
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
