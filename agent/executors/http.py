"""The ``http`` step: one HTTP request to a site service, retried with backoff.

docs/release-format.md §3.2 (``http``) and docs/operations.md ("HTTP steps"). In order:

1. The request is built from the verified step: ``method``, ``url``, ``headers``, each of
   ``secret_headers`` set to the value of the secret it names (sealed by the hub or defined at
   the site; never logged: the step log redacts every secret value), and ``body`` read from the
   staged, digest-checked release file.
2. With ``connection``, the site's connection of type ``http`` in ``agent.toml`` adds what
   the release must not carry: ``ca_file`` (a PEM file of CA certificates trusted for
   ``https://`` instead of the system's) and ``username``/``password`` (HTTP basic auth; the
   password may be ``{ secret = "name" }``, so the hub can seal it).
3. One attempt sends the request with ``request_timeout_s`` (never past the step's deadline)
   and reads the response: its status, headers and at most :data:`MAX_RESPONSE_LOG_BYTES` of
   the body go to the step log (the rest is counted, not read). Redirects are not followed:
   a 3xx is a status like any other.
4. An attempt that cannot connect, times out, or gets 429 or a 5xx status that is not expected
   is retried up to ``retries`` times, waiting ``retry_delay_s`` and then twice as long each
   time (at most :data:`MAX_RETRY_DELAY_S`). Any other status that is not in ``expect``
   fails the step at once: retrying a refused request does not make it acceptable.

An http step cannot be undone by a rollback (``bundle.steps.undo_support``).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.executors.base import MAX_LINE_CHARS, StepContext, StepOutcome
from agent.executors.file import SchemaValidated
from bundle.steps import status_expected

__all__ = ["MAX_RESPONSE_LOG_BYTES", "MAX_RETRY_DELAY_S", "HttpExecutor", "probe"]

#: Most bytes of a response body kept in the step log (and read from the socket).
MAX_RESPONSE_LOG_BYTES = 64 * 1024  # bytes
#: Longest wait between two attempts, however many retries came before (in seconds).
MAX_RETRY_DELAY_S = 60.0  # seconds
_USER_AGENT = "tiangong-agent"


class _StepFailure(Exception):
    """The step cannot be attempted at all; the message is its failure summary."""


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    body_bytes: int


def _ssl_context(ctx: StepContext) -> ssl.SSLContext:
    params: Mapping[str, Any] = ctx.connection.params if ctx.connection else {}
    ca_file = params.get("ca_file")
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(str(ca_file))
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        where = f"connection {ctx.connection.name!r}" if ctx.connection else "the step"
        raise _StepFailure(f"{where}: ca_file {path} cannot be used as a CA bundle: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None


def _request_headers(ctx: StepContext, body: bytes | None) -> dict[str, str]:
    step = ctx.step
    headers = {"User-Agent": _USER_AGENT, **step["headers"]}
    params: Mapping[str, Any] = ctx.connection.params if ctx.connection else {}
    if params.get("username") is not None:
        pair = f"{params['username']}:{params.get('password', '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    for header, secret in step["secret_headers"].items():
        value = ctx.secrets.get(secret)
        if value is None:
            raise _StepFailure(f"secret {secret!r} for header {header!r} was not given to "
                               "the step")
        if any(ch in value for ch in "\r\n\x00"):
            raise _StepFailure(f"secret {secret!r} contains a line break or NUL and cannot be "
                               f"the value of header {header!r}")
        headers[header] = value
    if body is not None:
        headers["Content-Length"] = str(len(body))
    return headers


def _connect(url: str, timeout: float, context: ssl.SSLContext) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def _target(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _attempt(ctx: StepContext, headers: Mapping[str, str], body: bytes | None,
             context: ssl.SSLContext, number: int) -> _Answer:
    """One request; raises OSError (socket, TLS, timeout) or http.client.HTTPException."""
    step = ctx.step
    timeout = max(0.1, min(float(step["request_timeout_s"]), ctx.remaining()))
    conn = _connect(step["url"], timeout, context)
    try:
        conn.request(step["method"], _target(step["url"]), body=body, headers=dict(headers))
        response = conn.getresponse()
        data = b"" if step["method"] == "HEAD" else response.read(MAX_RESPONSE_LOG_BYTES + 1)
        left_out = 0
        if len(data) > MAX_RESPONSE_LOG_BYTES:
            data = data[:MAX_RESPONSE_LOG_BYTES]
            length = response.getheader("Content-Length")
            left_out = int(length) - len(data) if length and length.isdecimal() else -1
        ctx.log.write(f"attempt {number}: {response.status} {response.reason}", "http")
        for name, value in response.getheaders():
            ctx.log.write(f"< {name}: {value}", "http")
        if data:
            _log_body(ctx, data.decode("utf-8", "replace"))
        if left_out:
            more = f"{left_out} more bytes" if left_out > 0 else "more bytes"
            ctx.log.write(f"response body cut after {MAX_RESPONSE_LOG_BYTES} bytes ({more} "
                          "not read)", "http")
        return _Answer(response.status, response.reason, len(data))
    finally:
        conn.close()


def _log_body(ctx: StepContext, text: str) -> None:
    """The body, line by line, long lines in pieces the step log keeps whole."""
    for line in text.split("\n"):
        for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
            ctx.log.write(line[start:start + MAX_LINE_CHARS], "response")


def _retriable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


class HttpExecutor(SchemaValidated):
    """Runs ``http`` steps."""

    kind: ClassVar[str] = "http"

    def run(self, ctx: StepContext) -> StepOutcome:
        try:
            return self._run(ctx)
        except _StepFailure as exc:
            ctx.log.write(str(exc), "http")
            return StepOutcome("failed", str(exc))

    def _run(self, ctx: StepContext) -> StepOutcome:
        step = ctx.step
        body = ctx.files[step["body"]].read_bytes() if "body" in step else None
        headers = _request_headers(ctx, body)
        context = _ssl_context(ctx)
        method, url = step["method"], step["url"]
        attempts = int(step["retries"]) + 1
        delay = float(step["retry_delay_s"])
        problem = ""
        for number in range(1, attempts + 1):
            if ctx.cancel.is_set():
                return StepOutcome("failed", f"cancelled before attempt {number} of {method} "
                                   f"{url}")
            ctx.log.write(f"attempt {number} of {attempts}: {method} {url}"
                          + (f" ({len(body)} bytes)" if body is not None else ""), "http")
            try:
                answer = _attempt(ctx, headers, body, context, number)
            except (OSError, http.client.HTTPException) as exc:
                problem = _describe(exc)
                ctx.log.write(f"attempt {number}: {problem}", "http")
            else:
                details = {"status": answer.status, "attempts": number, "method": method,
                           "url": url, "body_bytes": answer.body_bytes}
                if status_expected(answer.status, step["expect"]):
                    return StepOutcome("succeeded", f"{method} {url}: {answer.status} "
                                       f"{answer.reason}", details=details)
                problem = (f"status {answer.status} {answer.reason} is not expected "
                           f"({', '.join(map(str, step['expect']))})")
                if not _retriable(answer.status):
                    return StepOutcome("failed", f"{method} {url}: {problem}", details=details)
            if number == attempts:
                break
            wait = min(delay, MAX_RETRY_DELAY_S, ctx.remaining())
            if ctx.remaining() <= 0:
                problem += "; the step's timeout has passed"
                break
            ctx.log.write(f"retrying in {wait:g} s", "http")
            if ctx.cancel.wait(wait):
                return StepOutcome("failed", f"cancelled while waiting to retry {method} {url}")
            delay *= 2
        tries = f"{number} attempt{'s' if number > 1 else ''}"
        return StepOutcome("failed", f"{method} {url} failed after {tries}: {problem}",
                           details={"attempts": number, "method": method, "url": url})


def probe(ctx: StepContext) -> StepOutcome:
    """A preflight plan's check of an http step: does the server answer? One ``HEAD`` of the
    step's URL (a method that changes nothing), with the connection's CA and basic auth but
    none of the step's secret headers; any HTTP answer, whatever its status, passes. Never
    sends the step's own request."""
    url = ctx.step["url"]
    try:
        context = _ssl_context(ctx)
        timeout = max(0.1, min(float(ctx.step["request_timeout_s"]), ctx.remaining()))
        conn = _connect(url, timeout, context)
        try:
            conn.request("HEAD", _target(url), headers={"User-Agent": _USER_AGENT})
            response = conn.getresponse()
        finally:
            conn.close()
    except _StepFailure as exc:
        return StepOutcome("failed", str(exc))
    except (OSError, http.client.HTTPException) as exc:
        return StepOutcome("failed", f"HEAD {url}: no answer: {_describe(exc)}")
    return StepOutcome("succeeded", f"HEAD {url} answered {response.status} {response.reason}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer within the request timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host name cannot be resolved: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
