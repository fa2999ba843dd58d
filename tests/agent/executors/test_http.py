"""The http executor against a real HTTP server on 127.0.0.1, plain and TLS (a test CA):
methods, headers from secrets, a body file, expected statuses, retries with backoff, the
bounded response log, and the step rules of bundle.steps."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.executors import get_executor
from agent.executors.base import Connection, StepContext, StepLog, StepOutcome
from agent.executors.http import MAX_RESPONSE_LOG_BYTES
from bundle.errors import ReleaseFormatError
from bundle.steps import normalize_step, undo_support, validate_step
from hub.tls import TlsFiles, create_ca, issue_server_certificate, load_server_tls

SECRET = "s3cr3t-token-value"


@dataclass
class Seen:
    """What the test server received, and what it answers next."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in order; then 200
    body: bytes = b'{"ok": true}'


def _handler(seen: Seen) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.requests.append({"method": self.command, "path": self.path,
                                  "headers": dict(self.headers.items()),
                                  "body": self.rfile.read(length)})
            status = seen.statuses.pop(0) if seen.statuses else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(seen.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(seen.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@dataclass
class Server:
    url: str
    seen: Seen
    ca: Path | None = None


def _serve(context: ssl.SSLContext | None) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen))
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def plain() -> Iterator[Server]:
    for url, seen in _serve(None):
        yield Server(url, seen)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Server]:
    files = TlsFiles(tmp_path / "test-ca")
    now = dt.datetime.now(dt.UTC)
    create_ca(files, "http-step-test", now)
    issue_server_certificate(files, ["127.0.0.1"], now)
    context = load_server_tls(files.server_cert, files.server_key).context
    for url, seen in _serve(context):
        yield Server(url, seen, files.ca_cert)


def _run(tmp: Path, fields: dict[str, Any], *, connection: Connection | None = None,
         secrets: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[StepOutcome, StepLog]:
    files: dict[str, Path] = {}
    if body is not None:
        path = tmp / "payload" / "body.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        files["body.json"] = path
        fields = {"body": "body.json", **fields}
    step = normalize_step({"name": "call", "kind": "http", **fields}, 0, set(files))
    executor = get_executor("http")
    executor.validate(step)
    log = StepLog(secrets=list((secrets or {}).values()))
    ctx = StepContext(bundle_id="b-1", release={}, index=0, step=step, files=files,
                      workdir=tmp, connection=connection, secrets=secrets or {}, log=log,
                      deadline=time.monotonic() + 120, cancel=threading.Event())
    return executor.run(ctx), log


def test_a_post_sends_the_body_file_headers_and_a_secret_header(tmp_path: Path,
                                                                plain: Server) -> None:
    outcome, log = _run(tmp_path, {
        "method": "POST", "url": plain.url + "/deploy?env=dev", "expect": [200],
        "headers": {"Content-Type": "application/json"},
        "secret_headers": {"Authorization": "api-token"}, "secrets": ["api-token"],
    }, secrets={"api-token": SECRET}, body=b'{"version": "2.4.0"}')

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.details["status"] == 200 and outcome.details["attempts"] == 1
    (request,) = plain.seen.requests
    assert (request["method"], request["path"]) == ("POST", "/deploy?env=dev")
    assert request["body"] == b'{"version": "2.4.0"}'
    assert request["headers"]["Authorization"] == SECRET
    assert request["headers"]["Content-Type"] == "application/json"
    text = log.text()
    assert '[response] {"ok": true}' in text and "attempt 1: 200 OK" in text
    assert SECRET not in text


def test_a_wrong_status_fails_at_once_and_is_not_retried(tmp_path: Path,
                                                         plain: Server) -> None:
    plain.seen.statuses = [404]

    outcome, log = _run(tmp_path, {"url": plain.url + "/x", "retries": 3,
                                   "retry_delay": 1})

    assert outcome.status == "failed"
    assert "status 404 Not Found is not expected (2xx)" in outcome.summary
    assert len(plain.seen.requests) == 1  # a refused request is not sent again
    assert "retrying" not in log.text()


def test_5xx_answers_are_retried_until_an_expected_status(tmp_path: Path,
                                                          plain: Server) -> None:
    plain.seen.statuses = [503, 502, 204]

    outcome, log = _run(tmp_path, {"url": plain.url, "retries": 2, "retry_delay": 1,
                                   "expect": [204]})

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.details["attempts"] == 3 and len(plain.seen.requests) == 3
    text = log.text()
    # the backoff doubles: 1 s, then 2 s
    assert "retrying in 1 s" in text and "retrying in 2 s" in text


def test_retries_run_out_and_the_step_fails_naming_the_last_problem(tmp_path: Path,
                                                                    plain: Server) -> None:
    plain.seen.statuses = [500, 500]

    outcome, _ = _run(tmp_path, {"url": plain.url, "retries": 1, "retry_delay": 1})

    assert outcome.status == "failed"
    assert outcome.summary.endswith("failed after 2 attempts: status 500 Internal Server "
                                    "Error is not expected (2xx)")
    assert len(plain.seen.requests) == 2


def test_a_refused_connection_is_retried_then_fails(tmp_path: Path) -> None:
    for url, _ in _serve(None):
        closed = url  # the port is free again once the server is gone
    outcome, log = _run(tmp_path, {"url": closed, "retries": 1, "retry_delay": 1})

    assert outcome.status == "failed"
    assert "after 2 attempts: connection refused" in outcome.summary
    assert log.text().count("connection refused") == 2


def test_tls_with_the_connection_ca_and_basic_auth_from_a_secret(tmp_path: Path,
                                                                 tls: Server) -> None:
    assert tls.ca is not None
    conn = Connection("api", "http", {"ca_file": str(tls.ca), "username": "deploy",
                                      "password": SECRET})
    outcome, log = _run(tmp_path, {"url": tls.url + "/health", "connection": "api"},
                        connection=conn, secrets={"pw": SECRET})

    assert outcome.status == "succeeded", outcome.summary
    auth = tls.seen.requests[0]["headers"]["Authorization"]
    assert auth.startswith("Basic ") and SECRET not in log.text()


def test_tls_without_the_ca_is_refused_and_sends_nothing(tmp_path: Path, tls: Server) -> None:
    outcome, _ = _run(tmp_path, {"url": tls.url, "retries": 0})

    assert outcome.status == "failed"
    assert "TLS certificate not trusted" in outcome.summary
    assert tls.seen.requests == []


def test_the_response_in_the_log_is_bounded(tmp_path: Path, plain: Server) -> None:
    plain.seen.body = b"x" * (MAX_RESPONSE_LOG_BYTES + 5000)

    outcome, log = _run(tmp_path, {"url": plain.url})

    assert outcome.status == "succeeded"
    kept = sum(len(line.text) for line in log.lines() if line.stream == "response")
    assert kept == MAX_RESPONSE_LOG_BYTES
    assert "response body cut after 65536 bytes (5000 more bytes not read)" in log.text()


@pytest.mark.parametrize(("fields", "files", "message"), [
    ({"url": "ftp://host/x"}, set(), "field url: 'ftp://host/x' is not an http:// or https://"),
    ({"url": "https://user:pw@host/"}, set(), "field url: must not carry a user name"),
    ({"url": "http://h/", "method": "FETCH"}, set(), "field method: 'FETCH' is not one of"),
    ({"url": "http://h/", "expect": [700]}, set(), "field expect: item 1: 700 is not an HTTP"),
    ({"url": "http://h/", "retries": 21}, set(), "field retries: 21 is not a number of retries"),
    ({"url": "http://h/", "body": "b.json"}, {"b.json"}, "field body: a GET request sends no"),
    ({"url": "http://h/", "method": "POST", "body": "c.json"}, {"b.json"},
     "field body: no release file is named 'c.json'"),
    ({"url": "http://h/", "secret_headers": {"Authorization": "tok"}}, set(),
     "field secret_headers: header 'Authorization' takes secret 'tok', which is not in"),
    ({"url": "http://h/", "headers": {"X-A": "a\nb"}}, set(),
     "field headers: header 'X-A' contains a line break"),
    ({"url": "http://h/", "timeout": 10, "request_timeout": 20}, set(),
     "field request_timeout: 20 seconds is longer than the step's timeout (10 seconds)"),
    ({"url": "http://h/", "wait": True}, set(), "'wait' is a field of k8s steps"),
])
def test_step_rules(fields: dict[str, Any], files: set[str], message: str) -> None:
    raw = {"name": "call", "kind": "http", **fields}
    before = json.dumps(raw, sort_keys=True)
    with pytest.raises(ReleaseFormatError) as info:
        normalize_step(raw, 0, files)
    assert message in str(info.value)
    assert str(info.value).startswith("step 1 ('call')")
    assert json.dumps(raw, sort_keys=True) == before  # the table is not changed


def test_the_normalized_step_validates_and_cannot_be_undone() -> None:
    step = normalize_step({"name": "call", "kind": "http", "url": "http://h/",
                           "request_timeout": "1m"}, 0, set())
    assert step["request_timeout_s"] == 60 and step["expect"] == ["2xx"]
    validate_step(step)
    assert undo_support(step)[0] is False
    with pytest.raises(ReleaseFormatError, match="request_timeout_s: must be an integer"):
        validate_step({**step, "request_timeout_s": "60"})
