"""Plain HTTP on the live server's port: ``GET /metrics``, ``/healthz`` and ``/readyz``.

The live server is one asyncio process with a port of its own (docs/live.md); monitoring
asks it directly, beside ``/live``, with websockets' ``process_request`` hook: a request
for one of these paths is answered and closed before any WebSocket handshake, a request for
any other path goes on to the handshake (and its limits, docs/live-protocol.md §5.3).

* ``/metrics``: this process's :class:`hub.metrics.LiveMetrics` (connected agents, push
  latency, transfer bytes, errors by kind …). Several live processes: scrape each.
* ``/healthz``: ``{"status": "ok", "database": "ok", "live": "ok"}`` (200), or 503 with
  ``"database": "unreachable"``.
* ``/readyz``: for load balancers: 200 ``{"status": "ready"}`` while the database answers
  and the server is not stopping, else 503.

Deliberately not here: authentication (the figures are counts, no agent ids;
docs/security.md), and anything a WebSocket client could reach (the paths are fixed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from hub.live_hub import LiveHub
from hub.metrics import CONTENT_TYPE_LATEST

__all__ = ["HEALTH_PATHS", "http_endpoints"]

log = logging.getLogger("tiangong.hub.live")

HEALTH_PATHS = ("/metrics", "/healthz", "/readyz")
DB_CHECK_TIMEOUT_S = 5.0  # seconds a health check waits for the database


def http_endpoints(hub: LiveHub, stopping: Callable[[], bool]
                   ) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """websockets' ``process_request`` for ``hub``; ``stopping()`` is true once the server
    is shutting down (``/readyz`` answers 503)."""

    def database_ok() -> bool:
        session = hub.session_factory()
        try:
            session.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError as exc:
            log.error("live: health check: database unreachable: %s", exc)
            return False
        finally:
            session.rollback()
            session.close()

    async def check_database() -> bool:
        try:
            return await asyncio.wait_for(asyncio.to_thread(database_ok), DB_CHECK_TIMEOUT_S)
        except TimeoutError:
            log.error("live: health check: the database did not answer within %s s",
                      DB_CHECK_TIMEOUT_S)
            return False

    def answer(connection: ServerConnection, status: int, body: dict[str, str]) -> Response:
        response = connection.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def process_request(connection: ServerConnection,
                              request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path not in HEALTH_PATHS:
            return None
        if path == "/metrics":
            response = connection.respond(200, hub.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        db_ok = await check_database()
        if path == "/healthz":
            if not db_ok:
                return answer(connection, 503, {"status": "unavailable",
                                                "database": "unreachable", "live": "ok"})
            return answer(connection, 200, {"status": "ok", "database": "ok", "live": "ok"})
        if stopping():
            return answer(connection, 503, {"status": "stopping"})
        if not db_ok:
            return answer(connection, 503, {"status": "unavailable",
                                            "database": "unreachable"})
        return answer(connection, 200, {"status": "ready", "database": "ok"})

    return process_request
