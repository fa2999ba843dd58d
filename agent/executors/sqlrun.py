"""Running split statements on a work session: the loop, its watchdog, and what it logs.

:func:`run_statements` executes statements one by one on a
:class:`~agent.executors.sqlconn.Session`, giving each a server-side timeout equal to the
step's remaining time, checking the cancel flag and deadline between statements, and logging
each statement, its rows affected and (capped) result rows to the step log's ``sql`` stream.
It stops at the first failure and reports which statement failed and why in a
:class:`Progress`.

:class:`Watchdog` runs beside the loop in a thread: it renews the schema lock, and when the
step is cancelled, its deadline passes or the lock is lost, it interrupts the running
statement (PostgreSQL cancel request, MySQL ``KILL QUERY``) and keeps doing so every second
until the loop notices.

This module deliberately does not open or close connections, begin/commit transactions or
write schema history; the executor (``sql.py``) does, around it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from agent.executors.base import StepLog
from agent.executors.sqlconn import ResultSet, Session, StatementError
from agent.executors.sqlsplit import Statement

__all__ = [
    "EXCERPT_CHARS",
    "MAX_LOGGED_ROWS",
    "Failure",
    "Progress",
    "SqlLog",
    "Watchdog",
    "excerpt",
    "run_statements",
]

Reason = Literal["error", "timeout", "cancelled", "lock lost"]

#: Rows of each result set written to the log; the rest are counted.
MAX_LOGGED_ROWS = 20  # rows
#: Characters of a statement quoted in summaries and details.
EXCERPT_CHARS = 200  # characters
#: Characters of one result cell written to the log.
MAX_CELL_CHARS = 200  # characters
#: How often the watchdog looks at the cancel flag and the clock.
WATCH_INTERVAL_S = 0.1  # seconds
#: How often the watchdog repeats an interrupt the loop has not noticed yet.
REINTERRUPT_S = 1.0  # seconds


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class SqlLog:
    """The step log as the SQL executor writes it: everything passes the DSN password
    redaction first (the step's own secrets are redacted by :class:`StepLog` itself)."""

    def __init__(self, log: StepLog, redact: Callable[[str], str]) -> None:
        self._log = log
        self._redact = redact

    def info(self, text: str) -> None:
        self._log.write(self._redact(text), "info")

    def sql(self, text: str) -> None:
        self._log.write(self._redact(text), "sql")


@dataclass(frozen=True)
class Failure:
    """Why the loop stopped early: at 1-based ``index`` (``statement``), with ``error`` from
    the server, or None when it stopped before running the statement."""

    index: int
    statement: Statement
    reason: Reason
    error: StatementError | None

    def error_text(self) -> str:
        if self.error is None:
            return {
                "timeout": "the step's deadline passed before this statement",
                "cancelled": "the step was cancelled before this statement",
                "lock lost": "the schema lock was lost before this statement",
                "error": "stopped",
            }[self.reason]
        text = f"{self.error.code} {self.error.message}".strip()
        if self.error_line() != self.statement.line:
            text += f" (at line {self.error_line()})"
        return text

    def error_line(self) -> int:
        """The script line the server pointed at, or the statement's first line."""
        position = self.error.position if self.error else None
        if not position:
            return self.statement.line
        return self.statement.line + self.statement.text.count("\n", 0, position - 1)

    def as_details(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "line": self.statement.line,
            "excerpt": excerpt(self.statement.text),
            "error": self.error_text(),
            "code": self.error.code if self.error else None,
            "reason": self.reason,
        }


@dataclass
class Progress:
    """How far the loop got: ``executed`` statements ran without error."""

    total: int
    executed: int = 0
    failure: Failure | None = None


class Watchdog:
    """Interrupts the running statement on cancel, deadline or lost lock; renews the lock.

    Use as a context manager around the statement loop; ``reason`` tells the loop why it
    was interrupted. ``interrupt`` and ``renew`` run in the watchdog's thread.
    """

    def __init__(
        self,
        *,
        cancel: threading.Event,
        deadline: float,
        interrupt: Callable[[], None],
        renew: Callable[[], bool],
        renew_every_s: float,
        log: SqlLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cancel = cancel
        self._deadline = deadline
        self._interrupt = interrupt
        self._renew = renew
        self._renew_every = renew_every_s
        self._log = log
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sql-watchdog", daemon=True)
        self.reason: Reason | None = None

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        next_renew = self._clock() + self._renew_every
        last_interrupt: float | None = None
        while not self._stop.wait(WATCH_INTERVAL_S):
            now = self._clock()
            if self.reason is None:
                if self._cancel.is_set():
                    self.reason = "cancelled"
                elif now >= self._deadline:
                    self.reason = "timeout"
                elif now >= next_renew:
                    next_renew = now + self._renew_every
                    self._renew_lock()
            if self.reason is not None and (
                last_interrupt is None or now - last_interrupt >= REINTERRUPT_S
            ):
                last_interrupt = now
                try:
                    self._interrupt()
                except StatementError as exc:
                    self._log.info(f"could not interrupt the running statement: {exc}")

    def _renew_lock(self) -> None:
        try:
            if not self._renew():
                self._log.info("the schema lock was taken over by another holder; stopping")
                self.reason = "lock lost"
        except StatementError as exc:  # try again next time; the lock has TTL to spare
            self._log.info(f"could not renew the schema lock (will retry): {exc}")


def run_statements(
    statements: Sequence[Statement],
    work: Session,
    *,
    remaining: Callable[[], float],
    cancel: threading.Event,
    watchdog: Watchdog,
    log: SqlLog,
    after_each: Callable[[int], None] | None = None,
) -> Progress:
    """Run ``statements`` in order until one fails; see the module docstring.

    ``after_each(k)`` is called after the k-th (1-based) statement succeeded.

    Raises:
        StatementError: only from ``after_each`` (bookkeeping), never from a statement.
    """
    total = len(statements)
    progress = Progress(total)
    for k, statement in enumerate(statements, 1):
        stop: Reason | None = watchdog.reason
        if stop is None and cancel.is_set():
            stop = "cancelled"
        if stop is None and remaining() <= 0:
            stop = "timeout"
        if stop is not None:
            progress.failure = Failure(k, statement, stop, None)
            break
        log.sql(f"[{k}/{total}] line {statement.line}: {excerpt(statement.text, 120)}")
        started = time.monotonic()
        try:
            work.set_statement_timeout(remaining())
            results = work.execute(statement.text, max_rows=MAX_LOGGED_ROWS)
        except StatementError as exc:
            reason: Reason = "error"
            if exc.timeout:
                reason = "timeout"
            elif watchdog.reason is not None:
                reason = watchdog.reason
            failure = Failure(k, statement, reason, exc)
            log.sql(f"  failed: {failure.error_text()}")
            progress.failure = failure
            break
        elapsed_ms = int((time.monotonic() - started) * 1000)
        for line in describe_results(results, elapsed_ms):
            log.sql(line)
        progress.executed = k
        if after_each is not None:
            after_each(k)
    return progress


def describe_results(results: Sequence[ResultSet], elapsed_ms: int) -> list[str]:
    """Log lines for one statement's results: rows affected, or capped result rows."""
    lines: list[str] = []
    for result in results:
        status = f" ({result.status})" if result.status else ""
        if result.columns is None:
            if result.rowcount >= 0:
                noun = "row" if result.rowcount == 1 else "rows"
                lines.append(f"  {result.rowcount} {noun} affected{status}")
            else:
                lines.append(f"  ok{status}")
            continue
        lines.append("  " + " | ".join(result.columns))
        lines.extend("  " + " | ".join(_cell(v) for v in row) for row in result.rows)
        if result.more_rows:
            lines.append(f"  ... {result.more_rows} more rows")
        noun = "row" if result.rowcount == 1 else "rows"
        lines.append(f"  ({result.rowcount} {noun})")
    lines.append(f"  done in {elapsed_ms} ms")
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    text = "0x" + value.hex() if isinstance(value, bytes | bytearray) else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"
