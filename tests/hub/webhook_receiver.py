"""A real HTTP receiver on 127.0.0.1 for the notification tests: records every POST and
answers with the statuses it is told to (then 200)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SECRET = b"webhook-shared-secret"


@dataclass
class Receiver:
    url: str = ""
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    on_post: Callable[[], None] | None = None  # called for each POST, before answering

    def verified(self, index: int = -1) -> dict[str, Any]:
        """The JSON body of POST ``index`` after checking its HMAC-SHA256 signature."""
        headers, body = self.posts[index]
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Tiangong-Signature"], expected), headers
        payload: dict[str, Any] = json.loads(body)
        assert headers["X-Tiangong-Delivery"] == str(payload["delivery"])
        assert headers["X-Tiangong-Event"] == payload["event"]
        return payload


@contextmanager
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                rec.posts.append((dict(self.headers.items()), body))
                status = rec.answers.pop(0) if rec.answers else 200
                if rec.on_post is not None:
                    rec.on_post()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
