"""The one interface every step executor implements, and the step log they all write to.

An executor runs one step of a verified bundle. It receives a :class:`StepContext` (the step's
validated spec, the staged payload files it may read, the site connection it names, the secrets
it asked for, a log, a deadline and a cancel flag) and returns a :class:`StepOutcome`.

Executors never see unverified data: the agent hands them a step only after the bundle's
signature, target, sequence, expiry and every payload digest have checked out, and only paths
inside the agent's private staging directory.

This module deliberately does not know about the journal, the result file or transport; the
runner (``agent/runner.py``) wires those around executors.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

__all__ = [
    "Connection",
    "Executor",
    "LogLine",
    "StepContext",
    "StepLog",
    "StepOutcome",
    "StepStatus",
]

StepStatus = Literal["succeeded", "failed", "skipped"]

#: Default cap on the log kept for one step, in bytes (head and tail are kept, the middle cut).
DEFAULT_STEP_LOG_CAP = 1024 * 1024  # bytes
#: Longest single log line kept, in characters; longer lines are cut and marked (in bytes).
MAX_LINE_CHARS = 16 * 1024  # characters
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class Connection:
    """A site-defined connection, named in the agent config and referenced by steps.

    ``type`` is ``"mysql"``, ``"postgres"``, ``"kubernetes"`` or ``"http"``. ``params`` are
    type specific and already have their secrets resolved:

    * mysql / postgres: ``dsn`` (``mysql://user:pw@host:port/db`` or
      ``postgresql://user:pw@host:port/db``), optionally ``password`` (overrides the DSN's).
    * kubernetes: ``in_cluster`` (bool), ``kubeconfig`` (path), ``context`` (str or None).
    * http: optionally ``ca_file`` (path of PEM CA certificates for https), ``username`` and
      ``password`` (basic auth).
    """

    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogLine:
    seq: int
    ts: float
    stream: str  # "stdout", "stderr", "info", "sql", "k8s", ...
    text: str


class StepLog:
    """A capped, redacting, line-oriented log for one step.

    Every line goes to ``sink`` (live streaming: journal, WebSocket) as it is written, in
    sequence order; the log kept for the result holds the first half of ``cap_bytes`` and the
    most recent half, and :meth:`text` marks the cut with the number of lines and bytes left
    out. Every secret value given at construction is replaced by ``[REDACTED]`` before a line
    is stored or sent; where secrets overlap, the whole covered run becomes one marker, and each
    line of a multi-line secret (a PEM key, say) is redacted on its own as well, because output
    reaches the log line by line.

    Thread-safe: a shell executor writes stdout and stderr from two reader threads. Writers are
    serialised up to and including the sink call, so the sink sees sequence numbers in order.

    It deliberately does not recognise secrets that were transformed (base64, JSON-escaped,
    split across two ``write`` calls): only the exact values, and their lines, are redacted.
    """

    def __init__(
        self,
        cap_bytes: int = DEFAULT_STEP_LOG_CAP,
        secrets: Sequence[str] = (),
        sink: Callable[[LogLine], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cap = max(cap_bytes, 1024)
        self._secrets = _redaction_patterns(secrets)
        self._sink = sink
        self._clock = clock
        # _lock guards the kept lines and counters (readers take only this one); _write_lock
        # serialises writers through the sink call so live lines arrive in sequence order.
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._head: list[LogLine] = []
        self._head_bytes = 0
        self._tail: deque[LogLine] = deque()
        self._tail_bytes = 0
        self._cut_lines = 0
        self._cut_bytes = 0
        self._seq = 0

    def redact(self, text: str) -> str:
        """Return ``text`` with every run covered by a secret value replaced by ``[REDACTED]``.

        Matches are found on the original text (all secrets, overlapping occurrences too) and
        merged before replacing, so overlapping secrets leave no fragment of either behind.
        """
        spans: list[tuple[int, int]] = []
        for secret in self._secrets:
            start = text.find(secret)
            while start != -1:
                spans.append((start, start + len(secret)))
                start = text.find(secret, start + 1)
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        pos = 0
        run_start, run_end = spans[0]
        for start, end in spans[1:]:
            if start <= run_end:
                run_end = max(run_end, end)
                continue
            out.append(text[pos:run_start])
            out.append(REDACTED)
            pos = run_end
            run_start, run_end = start, end
        out.append(text[pos:run_start])
        out.append(REDACTED)
        out.append(text[run_end:])
        return "".join(out)

    def write(self, text: str, stream: str = "info", *, cut_bytes: int = 0) -> None:
        """Record one line (one trailing newline is stripped; embedded newlines split lines).

        ``cut_bytes`` is for writers that bound what they read: it says the (last) line of
        ``text`` is only the beginning of a longer line, and that many bytes after it were
        dropped unread. The line is then marked as cut, and if it ends with the beginning of a
        secret (the rest of which was dropped), that beginning is dropped too.
        """
        text = self.redact(text)
        if text.endswith("\n"):
            text = text[:-1]
        pieces = text.split("\n")
        for i, piece in enumerate(pieces):
            self._write_one(piece, stream, cut_bytes if i == len(pieces) - 1 else 0)

    def _write_one(self, raw: str, stream: str, cut_bytes: int) -> None:
        left_out = cut_bytes
        if cut_bytes:
            partial = self._partial_secret_suffix(raw)
            if partial:
                left_out += len(raw[-partial:].encode("utf-8", "replace"))
                raw = raw[:-partial]
        if len(raw) > MAX_LINE_CHARS:
            left_out += len(raw[MAX_LINE_CHARS:].encode("utf-8", "replace"))
            raw = raw[:MAX_LINE_CHARS]
        if left_out:
            raw += f" [line cut: {left_out} bytes left out]"
        size = len(raw.encode("utf-8", "replace")) + 1
        with self._write_lock:
            with self._lock:
                self._seq += 1
                line = LogLine(self._seq, self._clock(), stream, raw)
                self._keep(line, size)
            if self._sink is not None:
                self._sink(line)

    def _keep(self, line: LogLine, size: int) -> None:
        half = self._cap // 2
        if self._head_bytes + size <= half and not self._tail:
            self._head.append(line)
            self._head_bytes += size
            return
        self._tail.append(line)
        self._tail_bytes += size
        while self._tail_bytes > half and len(self._tail) > 1:
            dropped = self._tail.popleft()
            dropped_size = len(dropped.text.encode("utf-8", "replace")) + 1
            self._tail_bytes -= dropped_size
            self._cut_lines += 1
            self._cut_bytes += dropped_size

    def _partial_secret_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper beginning of a secret."""
        longest = 0
        for secret in self._secrets:
            start = text.find(secret[0], max(0, len(text) - len(secret) + 1))
            while start != -1 and len(text) - start > longest:
                if secret.startswith(text[start:]):
                    longest = len(text) - start
                    break
                start = text.find(secret[0], start + 1)
        return longest

    @property
    def truncated(self) -> bool:
        """Whether lines were left out between the head and the tail."""
        with self._lock:
            return self._cut_lines > 0

    def lines(self) -> list[LogLine]:
        """The kept lines, head then tail (the cut is between them when :attr:`truncated`)."""
        with self._lock:
            return [*self._head, *self._tail]

    def text(self) -> str:
        """The kept log as text, one ``[stream] line`` per line, with the cut marked."""
        with self._lock:
            out = [f"[{ln.stream}] {ln.text}" for ln in self._head]
            if self._cut_lines:
                out.append(
                    f"[tiangong] ... log cut: {self._cut_lines} lines "
                    f"({self._cut_bytes} bytes) left out here; cap is {self._cap} bytes ..."
                )
            out.extend(f"[{ln.stream}] {ln.text}" for ln in self._tail)
        return "\n".join(out) + ("\n" if out else "")


def _redaction_patterns(secrets: Sequence[str]) -> list[str]:
    """The strings to redact: each secret, plus each non-blank line of a multi-line secret."""
    patterns: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        patterns.add(secret)
        if "\n" in secret:
            for fragment in secret.split("\n"):
                fragment = fragment.rstrip("\r")
                if fragment.strip():
                    patterns.add(fragment)
    return sorted(patterns, key=len, reverse=True)


@dataclass(frozen=True)
class StepContext:
    """Everything an executor may use to run one step.

    Attributes:
        bundle_id: id of the verified bundle this step belongs to.
        release: ``{"product", "version", ...}`` from the verified manifest.
        index: 0-based position of the step in the release.
        step: the step's validated spec (see ``docs/release-format.md``, "Steps").
        files: payload name (as in the manifest, e.g. ``"sql/001_schema.sql"``) -> staged,
            decompressed, digest-checked path. Executors read only these paths.
        workdir: a fresh private directory for this run of this step.
        connection: the site connection named by the step's ``connection``, if any.
        secrets: secret name -> value, only those the step lists in ``secrets``.
        log: where output goes (capped, redacted, streamed).
        deadline: ``time.monotonic()`` value after which the step must stop.
        cancel: set when the operator or the agent's shutdown cancels the run.
        undo_dir: where the step records what a rollback needs before it changes anything
            (``<home>/undo/<bundle id>/<step number>``, kept across attempts and crashes);
            None when the caller keeps no undo data.
    """

    bundle_id: str
    release: Mapping[str, Any]
    index: int
    step: Mapping[str, Any]
    files: Mapping[str, Path]
    workdir: Path
    connection: Connection | None
    secrets: Mapping[str, str]
    log: StepLog
    deadline: float
    cancel: threading.Event
    undo_dir: Path | None = None

    def remaining(self) -> float:
        """Seconds left before :attr:`deadline` (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


@dataclass(frozen=True)
class StepOutcome:
    """What happened. ``summary`` is one operator-facing sentence; ``details`` is JSON-safe
    (e.g. exit code, statements applied, objects applied) and goes into the result file."""

    status: StepStatus
    summary: str
    exit_code: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """The protocol of a step executor (one per file in ``agent/executors/``).

    ``kind`` is the step kind it runs (``"sql"``, ``"k8s"``, ``"shell"``).

    ``validate(step)`` checks the kind-specific fields of a step spec and raises
    :class:`agent.executors.errors.StepSpecError` naming the field; it is called before any
    step of a bundle runs, so a malformed step fails the bundle before anything changes.

    ``run(ctx)`` runs the step and returns its outcome. Failures of the step itself (bad SQL,
    non-zero exit, 422 from the API server, unreachable database, timeout) are outcomes with
    ``status="failed"`` and a clear summary, not exceptions. It raises only for bugs.
    """

    kind: ClassVar[str]

    def validate(self, step: Mapping[str, Any]) -> None: ...

    def run(self, ctx: StepContext) -> StepOutcome: ...
