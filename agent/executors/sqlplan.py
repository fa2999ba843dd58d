"""What a sql step will do, worked out before any database is touched.

:func:`prepare` resolves the step's connection (type, DSN), reads the staged script (bounded
by :data:`MAX_SCRIPT_BYTES`), computes its SHA-256 checksum, decodes it as UTF-8, splits it
into statements, refuses transaction control in PostgreSQL scripts, and settles the version,
description and lock holder name. Every problem becomes a failed outcome saying that nothing
was run.

This module deliberately does not connect to a database or write to the step log.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from agent.executors.base import Connection, StepContext, StepOutcome
from agent.executors.sqlconn import DsnError, Engine, Target, parse_target
from agent.executors.sqlhistory import LOCK_TTL_S
from agent.executors.sqlsplit import SqlSplitError, Statement, split_statements

__all__ = ["MAX_SCRIPT_BYTES", "Plan", "failed", "prepare"]

#: Largest script the executor reads.
MAX_SCRIPT_BYTES = 64 * 1024 * 1024  # bytes

# PostgreSQL scripts run in our transaction; these would end or nest it.
_PG_TXN_CONTROL = re.compile(
    r"(?is)(begin|start\s+transaction|commit|end|abort|"
    r"rollback(?!\s+(?:(?:work|transaction)\s+)?to\b))\b"
)


@dataclass(frozen=True)
class Plan:
    """Everything checked before touching the database."""

    engine: Engine
    connection: Connection
    target: Target
    script: str
    checksum: str
    statements: tuple[Statement, ...]
    version: str
    description: str
    lock_ttl_s: int
    holder: str
    token: str

    @property
    def label(self) -> str:
        return f"{self.engine} connection '{self.connection.name}'"

    def details(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "connection": self.connection.name,
            "script": self.script,
            "version": self.version,
            "checksum": self.checksum,
            "statements_total": len(self.statements),
        }

    def history_fields(self, ctx: StepContext) -> dict[str, Any]:
        return {
            "version": self.version,
            "description": self.description,
            "script": self.script,
            "checksum": self.checksum,
            "bundle_id": ctx.bundle_id,
            "step_name": str(ctx.step["name"]),
            "installed_by": self.holder,
            "statements_total": len(self.statements),
        }


def failed(summary: str, **details: Any) -> StepOutcome:
    """A failed outcome with ``details``."""
    return StepOutcome(status="failed", summary=summary, details=details)


def prepare(ctx: StepContext) -> Plan | StepOutcome:
    """Resolve the connection, read, checksum and split the script; no database yet.

    Returns the :class:`Plan`, or a failed outcome saying why nothing was run.

    Raises:
        KeyError: the step lacks a field :meth:`SqlExecutor.validate` requires (a bug).
    """
    step = ctx.step
    engine: Engine = step["engine"]
    conn_name = step["connection"]
    script = step["script"]
    conn = ctx.connection
    if conn is None:
        return failed(
            f"{engine} connection '{conn_name}' is not configured on this agent; nothing was run"
        )
    if conn.type != engine:
        return failed(
            f"connection '{conn.name}' is a {conn.type} connection but the step's engine is "
            f"{engine}; nothing was run"
        )
    try:
        target = parse_target(conn, engine)
    except DsnError as exc:
        return failed(f"{engine} connection '{conn.name}' {exc}; nothing was run")
    path = ctx.files.get(script)
    if path is None:
        return failed(f"script {script!r} is not among the staged payloads; nothing was run")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        return failed(f"cannot read script {script!r}: {exc.strerror}; nothing was run")
    if len(data) > MAX_SCRIPT_BYTES:
        return failed(f"script {script!r} is larger than {MAX_SCRIPT_BYTES} bytes; nothing was run")
    checksum = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return failed(f"script {script!r} is not UTF-8 (line {line}); nothing was run")
    try:
        statements = split_statements(text.removeprefix("\ufeff"), engine)
    except SqlSplitError as exc:
        return failed(f"cannot split script {script!r}: {exc}; nothing was run", line=exc.line)
    if engine == "postgres":
        for statement in statements:
            if _PG_TXN_CONTROL.match(statement.text):
                word = statement.text.split(None, 1)[0].upper()
                return failed(
                    f"script {script!r} line {statement.line}: {word} — PostgreSQL scripts run "
                    "in one transaction that the agent opens and commits; remove transaction "
                    "control statements; nothing was run",
                    line=statement.line,
                )
    ttl = conn.params.get("lock_ttl_s", LOCK_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        return failed(
            f"{engine} connection '{conn.name}': lock_ttl_s must be a positive integer "
            f"(seconds), got {ttl!r}; nothing was run"
        )
    version = step.get("version") or f"{ctx.release['version']}.{ctx.index + 1}"
    holder = (
        f"{socket.gethostname()} pid {os.getpid()} bundle {ctx.bundle_id} "
        f"step {ctx.index + 1} ({step['name']})"
    )
    return Plan(
        engine=engine,
        connection=conn,
        target=target,
        script=script,
        checksum=checksum,
        statements=tuple(statements),
        version=str(version),
        description=str(step.get("description") or step["name"]),
        lock_ttl_s=ttl,
        holder=holder,
        token=secrets.token_hex(16),
    )
