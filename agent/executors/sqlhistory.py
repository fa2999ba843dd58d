"""Schema history and the schema lock, kept in the target database itself.

``tiangong_schema_history`` (in the style of Flyway's history table) has one row per attempt
to apply a script version: ``version``, ``description``, ``script``, ``checksum`` (SHA-256 hex
of the script's bytes), ``bundle_id``, ``step_name``, ``installed_by`` (the lock holder),
``installed_on``, ``execution_ms``, ``success``, ``statements_total``, ``statements_applied``
and ``error``. A version with a successful row is never applied again; a version whose rows
are all failures may be retried. Every attempt is inserted (and committed) before its first
statement runs, with ``success`` false and ``error`` :data:`UNFINISHED`, and updated with its
outcome after: an agent killed mid-way leaves it so. On PostgreSQL the success update commits
in the script's own transaction (so a killed attempt applied nothing); on MySQL/MariaDB the
row also counts the statements committed so far.

``tiangong_schema_lock`` has exactly one row (``lock_id = 1``) naming its ``holder``
(agent host, pid, bundle and step) with an ``expires_at`` in the database server's clock, so
agents with skewed clocks agree. A holder renews it while it works; a holder that died leaves
a lock that simply expires and is taken over (the taker logs the old holder). Nothing here
relies on a session staying open, unlike MySQL's ``GET_LOCK`` (released when the session
dies, but unnameable across servers and invisible in the table the operator looks at).

This module deliberately does not run scripts, open connections or wait on its own clock:
the caller passes a :class:`~agent.executors.sqlconn.Session` and decides how long to wait.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

from agent.executors.sqlconn import Session, StatementError

__all__ = [
    "HISTORY_TABLE",
    "LOCK_TABLE",
    "LOCK_TTL_S",
    "HistoryRecord",
    "LockHolder",
    "SchemaStore",
]

HISTORY_TABLE = "tiangong_schema_history"
LOCK_TABLE = "tiangong_schema_lock"
#: How long a schema lock lives without renewal (a connection param ``lock_ttl_s`` overrides).
LOCK_TTL_S = 600  # seconds
#: Text of the error column while an attempt runs; it stays if the agent dies mid-way.
UNFINISHED = "did not finish: the agent stopped before recording an outcome"

_PG_DDL = (
    """CREATE TABLE IF NOT EXISTS {history} (
        installed_rank BIGSERIAL PRIMARY KEY,
        version VARCHAR(100) NOT NULL,
        description VARCHAR(255) NOT NULL,
        script VARCHAR(1000) NOT NULL,
        checksum CHAR(64) NOT NULL,
        bundle_id VARCHAR(255) NOT NULL,
        step_name VARCHAR(255) NOT NULL,
        installed_by VARCHAR(500) NOT NULL,
        installed_on TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        execution_ms BIGINT NOT NULL DEFAULT 0,
        success BOOLEAN NOT NULL,
        statements_total INTEGER NOT NULL,
        statements_applied INTEGER NOT NULL,
        error TEXT)""",
    "CREATE INDEX IF NOT EXISTS tiangong_schema_history_version_idx ON {history} (version)",
    """CREATE TABLE IF NOT EXISTS {lock} (
        lock_id INTEGER PRIMARY KEY,
        holder VARCHAR(500),
        token CHAR(32),
        acquired_at TIMESTAMPTZ,
        expires_at TIMESTAMPTZ)""",
    "INSERT INTO {lock} (lock_id) VALUES (1) ON CONFLICT (lock_id) DO NOTHING",
)
_MYSQL_DDL = (
    """CREATE TABLE IF NOT EXISTS {history} (
        installed_rank BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        version VARCHAR(100) NOT NULL,
        description VARCHAR(255) NOT NULL,
        script VARCHAR(1000) NOT NULL,
        checksum CHAR(64) NOT NULL,
        bundle_id VARCHAR(255) NOT NULL,
        step_name VARCHAR(255) NOT NULL,
        installed_by VARCHAR(500) NOT NULL,
        installed_on DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        execution_ms BIGINT NOT NULL DEFAULT 0,
        success BOOLEAN NOT NULL,
        statements_total INT NOT NULL,
        statements_applied INT NOT NULL,
        error TEXT,
        KEY tiangong_schema_history_version_idx (version)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS {lock} (
        lock_id INT NOT NULL PRIMARY KEY,
        holder VARCHAR(500),
        token CHAR(32),
        acquired_at DATETIME(6),
        expires_at DATETIME(6)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "INSERT IGNORE INTO {lock} (lock_id) VALUES (1)",
)
_HISTORY_COLUMNS = (
    "installed_rank, version, description, script, checksum, bundle_id, step_name, "
    "installed_by, installed_on, execution_ms, success, statements_total, "
    "statements_applied, error"
)


@dataclass(frozen=True)
class HistoryRecord:
    """One row of the history table."""

    installed_rank: int
    version: str
    description: str
    script: str
    checksum: str
    bundle_id: str
    step_name: str
    installed_by: str
    installed_on: dt.datetime
    execution_ms: int
    success: bool
    statements_total: int
    statements_applied: int
    error: str | None

    def when(self) -> str:
        return format_time(self.installed_on)


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) the schema lock, and until when (database clock)."""

    holder: str
    expires_at: dt.datetime
    expired: bool

    def until(self) -> str:
        return format_time(self.expires_at)


def format_time(value: dt.datetime) -> str:
    """A timestamp for messages: seconds precision, with the offset when the server gave one."""
    return value.isoformat(sep=" ", timespec="seconds")


class SchemaStore:
    """History and lock tables in the database ``session`` is connected to.

    Table names are qualified with the session's current schema (PostgreSQL) or database
    (MySQL), so a script that changes ``search_path`` or runs ``USE`` cannot redirect them.
    """

    def __init__(self, session: Session, namespace: str) -> None:
        self.session = session
        self.engine = session.engine
        ns = _quote_ident(namespace, self.engine)
        self.history = f"{ns}.{_quote_ident(HISTORY_TABLE, self.engine)}"
        self.lock = f"{ns}.{_quote_ident(LOCK_TABLE, self.engine)}"

    @classmethod
    def open(cls, session: Session) -> SchemaStore:
        """Find the namespace, create the tables if needed, and return the store.

        Raises:
            StatementError: the tables cannot be created (e.g. no privilege) or the
                session has no current schema/database.
        """
        current = "SELECT current_schema()" if session.engine == "postgres" else "SELECT DATABASE()"
        rows = session.query(current)
        if not rows or not rows[0][0]:
            raise StatementError("", "the connection has no current schema or database")
        store = cls(session, str(rows[0][0]))
        store._create_tables()
        return store

    def _create_tables(self) -> None:
        names = {"history": self.history, "lock": self.lock}
        if self.engine == "postgres":
            # CREATE TABLE IF NOT EXISTS races with itself on PostgreSQL: serialise it.
            self.session.execute("BEGIN")
            try:
                self.session.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.history,))
                for ddl in _PG_DDL:
                    self.session.execute(ddl.format(**names))
                self.session.execute("COMMIT")
            except StatementError:
                with contextlib.suppress(StatementError):  # keep the original error
                    self.session.execute("ROLLBACK")
                raise
        else:
            for ddl in _MYSQL_DDL:
                self.session.execute(ddl.format(**names))

    # --- history --------------------------------------------------------------------------

    def records(self, version: str) -> list[HistoryRecord]:
        """All attempts at ``version``, oldest first.

        Raises:
            StatementError: the query failed.
        """
        rows = self.session.query(
            f"SELECT {_HISTORY_COLUMNS} FROM {self.history} WHERE version = %s "  # noqa: S608
            "ORDER BY installed_rank LIMIT 500",
            (version,),
        )
        return [_record(row) for row in rows]

    def insert(
        self,
        session: Session,
        *,
        fields: dict[str, Any],
        success: bool,
        applied: int,
        execution_ms: int,
        error: str | None,
    ) -> int:
        """Insert an attempt through ``session`` (the control session: committed at once)
        and return its ``installed_rank``.

        Raises:
            StatementError: the insert failed.
        """
        columns = (
            "version, description, script, checksum, bundle_id, step_name, installed_by, "
            "statements_total, success, statements_applied, execution_ms, error"
        )
        values = (
            fields["version"],
            fields["description"][:255],
            fields["script"][:1000],
            fields["checksum"],
            fields["bundle_id"][:255],
            fields["step_name"][:255],
            fields["installed_by"][:500],
            fields["statements_total"],
            success,
            applied,
            execution_ms,
            error,
        )
        sql = f"INSERT INTO {self.history} ({columns}) VALUES ({', '.join(['%s'] * 12)})"  # noqa: S608
        if self.engine == "postgres":
            rows = session.query(sql + " RETURNING installed_rank", values)
            return int(rows[0][0])
        session.execute(sql, values)
        return int(session.query("SELECT LAST_INSERT_ID()")[0][0])

    def update(
        self, rank: int, *, success: bool, applied: int, execution_ms: int, error: str | None,
        session: Session | None = None,
    ) -> None:
        """Record progress or the outcome of attempt ``rank``, through the control session
        or ``session`` (the work session, to commit a PostgreSQL success with the script).

        Raises:
            StatementError: the update failed.
        """
        (session or self.session).execute(
            f"UPDATE {self.history} SET success = %s, statements_applied = %s, "  # noqa: S608
            "execution_ms = %s, error = %s WHERE installed_rank = %s",
            (success, applied, execution_ms, error, rank),
        )

    # --- lock -----------------------------------------------------------------------------

    def try_lock(self, holder: str, token: str, ttl_s: int) -> tuple[bool, LockHolder | None]:
        """One attempt to take the lock: ``(True, previous expired holder or None)`` when
        taken, ``(False, live holder)`` when someone else holds it.

        Raises:
            StatementError: the database failed (the transaction is rolled back).
        """
        now = "clock_timestamp()" if self.engine == "postgres" else "CURRENT_TIMESTAMP(6)"
        self.session.execute("BEGIN")
        try:
            rows = self.session.query(
                f"SELECT holder, token, expires_at, expires_at <= {now} "  # noqa: S608
                f"FROM {self.lock} WHERE lock_id = 1 FOR UPDATE"
            )
            previous: LockHolder | None = None
            if rows and rows[0][0] is not None and rows[0][1] != token:
                previous = LockHolder(str(rows[0][0]), rows[0][2], bool(rows[0][3]))
                if not previous.expired:
                    self.session.execute("ROLLBACK")
                    return False, previous
            self.session.execute(
                f"UPDATE {self.lock} SET holder = %s, token = %s, acquired_at = {now}, "  # noqa: S608
                f"expires_at = {self._plus(now)} WHERE lock_id = 1",
                (holder, token, ttl_s),
            )
            self.session.execute("COMMIT")
        except StatementError:
            with contextlib.suppress(StatementError):  # keep the original error
                self.session.execute("ROLLBACK")
            raise
        return True, previous

    def renew(self, token: str, ttl_s: int) -> bool:
        """Push our lock's expiry ``ttl_s`` into the future; False when it is no longer ours.

        Raises:
            StatementError: the database failed.
        """
        now = "clock_timestamp()" if self.engine == "postgres" else "CURRENT_TIMESTAMP(6)"
        results = self.session.execute(
            f"UPDATE {self.lock} SET expires_at = {self._plus(now)} "  # noqa: S608
            "WHERE lock_id = 1 AND token = %s",
            (ttl_s, token),
        )
        return results[0].rowcount == 1

    def unlock(self, token: str) -> None:
        """Release the lock if it is still ours.

        Raises:
            StatementError: the database failed.
        """
        self.session.execute(
            f"UPDATE {self.lock} SET holder = NULL, token = NULL, acquired_at = NULL, "  # noqa: S608
            "expires_at = NULL WHERE lock_id = 1 AND token = %s",
            (token,),
        )

    def holder(self) -> LockHolder | None:
        """The lock's current holder (live or expired), or None when it is free.

        Raises:
            StatementError: the query failed.
        """
        now = "clock_timestamp()" if self.engine == "postgres" else "CURRENT_TIMESTAMP(6)"
        rows = self.session.query(
            f"SELECT holder, expires_at, expires_at <= {now} FROM {self.lock} "  # noqa: S608
            "WHERE lock_id = 1"
        )
        if not rows or rows[0][0] is None:
            return None
        return LockHolder(str(rows[0][0]), rows[0][1], bool(rows[0][2]))

    def clear(self, holder: str) -> bool:
        """Free the lock if ``holder`` still holds it (the operator's ``sql unlock``);
        False when someone else took it meanwhile.

        Raises:
            StatementError: the database failed.
        """
        results = self.session.execute(
            f"UPDATE {self.lock} SET holder = NULL, token = NULL, acquired_at = NULL, "  # noqa: S608
            "expires_at = NULL WHERE lock_id = 1 AND holder = %s",
            (holder,),
        )
        return results[0].rowcount == 1

    def _plus(self, now: str) -> str:
        if self.engine == "postgres":
            return f"{now} + %s * interval '1 second'"
        return f"{now} + INTERVAL %s SECOND"


def _quote_ident(name: str, engine: str) -> str:
    if engine == "postgres":
        return '"' + name.replace('"', '""') + '"'
    return "`" + name.replace("`", "``") + "`"


def _record(row: tuple[Any, ...]) -> HistoryRecord:
    return HistoryRecord(
        installed_rank=int(row[0]),
        version=str(row[1]),
        description=str(row[2]),
        script=str(row[3]),
        checksum=str(row[4]).strip(),
        bundle_id=str(row[5]),
        step_name=str(row[6]),
        installed_by=str(row[7]),
        installed_on=row[8],
        execution_ms=int(row[9]),
        success=bool(row[10]),
        statements_total=int(row[11]),
        statements_applied=int(row[12]),
        error=None if row[13] is None else str(row[13]),
    )
