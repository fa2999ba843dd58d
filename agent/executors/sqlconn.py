"""Database sessions for the SQL executor: where to connect, and one statement at a time.

:func:`parse_target` turns a site :class:`~agent.executors.base.Connection` into a
:class:`Target` (host or socket, port, user, password, database). :func:`open_session` connects
with a bounded timeout and returns a :class:`Session`: :class:`PostgresSession` (psycopg 3) or
:class:`MySQLSession` (PyMySQL). A session runs one statement per :meth:`Session.execute` in the
driver's autocommit mode (transactions are opened with SQL ``BEGIN``, so both engines behave the
same), sets per-statement server timeouts, and can be interrupted from another thread.
Every method is serialised by a per-session mutex, so the executor's watchdog thread may share
the control session with the main thread between statements.

Errors (internal to the SQL executor, which turns them into step outcomes)::

    SqlConnError
    ├── DsnError        the connection's DSN cannot be used (never quotes the password)
    ├── ConnectError    the server cannot be reached or refused the login
    └── StatementError  the server rejected a statement (code, message, timeout flag)

This module deliberately does not pool or retry connections, does not log, and does not read
scripts or know about schema history; result sets are kept only up to ``max_rows`` (PyMySQL
streams the rest, psycopg buffers a whole result set in the client, so scripts should not
select large tables).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from agent.executors.base import Connection

if TYPE_CHECKING:  # the drivers are imported by the first session that needs them
    import psycopg
    import pymysql.connections
    import pymysql.cursors

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ConnectError",
    "DsnError",
    "Engine",
    "MySQLSession",
    "PostgresSession",
    "ResultSet",
    "Session",
    "SqlConnError",
    "StatementError",
    "Target",
    "open_session",
    "parse_target",
]

Engine = Literal["mysql", "postgres"]

#: Longest wait for a TCP/socket connection and login.
CONNECT_TIMEOUT_S = 10  # seconds
#: Socket read timeout of the control session (lock, history); its statements are tiny.
CONTROL_TIMEOUT_S = 30  # seconds
#: Extra socket read time given to a work session beyond the step's remaining time, so the
#: server-side statement timeout (not the socket) normally ends an overlong statement.
READ_TIMEOUT_GRACE_S = 30  # seconds

_SCHEMES: dict[Engine, tuple[str, ...]] = {
    "postgres": ("postgresql", "postgres"),
    "mysql": ("mysql", "mariadb"),
}
_MYSQL_OPTIONS = ("unix_socket", "ssl_ca", "ssl_cert", "ssl_key")
# MariaDB: max_statement_time exceeded / query interrupted; MySQL: max execution time exceeded.
_MYSQL_TIMEOUT_CODES = {"1969", "3024"}
_MYSQL_INTERRUPTED = "1317"


class SqlConnError(Exception):
    """Base of the SQL executor's database errors."""


class DsnError(SqlConnError):
    """The DSN is malformed or names an option we do not support."""


class ConnectError(SqlConnError):
    """Connecting or logging in failed; ``reason`` is the driver's message, redacted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StatementError(SqlConnError):
    """The server rejected a statement.

    ``code`` is the SQLSTATE (PostgreSQL) or the server error number (MySQL), ``message`` the
    server's text, ``timeout`` whether a statement timeout ended it, ``interrupted`` whether
    it was cancelled from outside (watchdog), ``position`` the 1-based character position in
    the statement when the server reports one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        timeout: bool = False,
        interrupted: bool = False,
        position: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.timeout = timeout
        self.interrupted = interrupted
        self.position = position


@dataclass(frozen=True)
class Target:
    """Where a connection points. ``host`` is None when ``socket`` is used."""

    engine: Engine
    name: str
    host: str | None
    port: int
    socket: str | None
    user: str
    password: str | None = field(repr=False)
    database: str
    options: Mapping[str, str] = field(default_factory=dict)

    def where(self) -> str:
        """``127.0.0.1:5432`` or ``socket /run/mysqld/mysqld.sock`` (for messages)."""
        return f"socket {self.socket}" if self.socket else f"{self.host}:{self.port}"

    def secrets(self) -> list[str]:
        """Values that must never appear in a log or summary (the password, raw and quoted)."""
        if not self.password:
            return []
        return sorted({self.password, quote(self.password, safe="")}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, "[REDACTED]")
        return text


def parse_target(connection: Connection, engine: Engine) -> Target:
    """Read ``connection.params["dsn"]`` (and ``password``, which overrides the DSN's).

    Raises:
        DsnError: no DSN, a scheme that does not match ``engine``, no database, a bad port,
            or an unsupported option. The message never contains the password.
    """
    dsn = connection.params.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise DsnError("has no 'dsn' parameter")
    try:
        parts = urlsplit(dsn)
        port_value = parts.port
    except ValueError as exc:
        raise DsnError("has a malformed DSN (bad host or port)") from exc
    if parts.scheme not in _SCHEMES[engine]:
        raise DsnError(
            f"has a {parts.scheme or 'scheme-less'}:// DSN; a {engine} step needs "
            f"{' or '.join(s + '://' for s in _SCHEMES[engine])}"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise DsnError("has a DSN without a database name (…/dbname)")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname or "localhost"
    socket_path: str | None = None
    if engine == "mysql":
        unknown = sorted(set(options) - set(_MYSQL_OPTIONS))
        if unknown:
            raise DsnError(
                f"has unsupported DSN option(s) {', '.join(unknown)}; "
                f"supported: {', '.join(_MYSQL_OPTIONS)}"
            )
        socket_path = options.pop("unix_socket", None)
    else:  # the other query keys are libpq connection parameters (sslmode, …)
        options.pop("connect_timeout", None)  # we bound it ourselves
        password = options.pop("password", password)
        host_opt = options.pop("host", "")
        if host_opt.startswith("/"):
            socket_path = host_opt
        elif host_opt:
            host = host_opt
    override = connection.params.get("password")
    if isinstance(override, str):
        password = override
    default_port = 3306 if engine == "mysql" else 5432
    return Target(
        engine=engine,
        name=connection.name,
        host=None if socket_path else host,
        port=port_value or default_port,
        socket=socket_path,
        user=unquote(parts.username or ""),
        password=password,
        database=database,
        options=options,
    )


@dataclass(frozen=True)
class ResultSet:
    """One result of a statement: ``columns`` is None for a statement without rows."""

    columns: tuple[str, ...] | None
    rows: tuple[tuple[Any, ...], ...]
    more_rows: int
    rowcount: int
    status: str = ""


class Session:
    """A connection to one database; see the module docstring."""

    engine: Engine

    def __init__(self, target: Target) -> None:
        self.target = target
        self._mutex = threading.RLock()

    def execute(
        self, sql: str, params: Sequence[Any] | None = None, *, max_rows: int = 0
    ) -> list[ResultSet]:
        """Run one statement; keep at most ``max_rows`` rows of each result set.

        Raises:
            StatementError: the server rejected it, it timed out or was interrupted.
        """
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a small query of our own and return all its rows (bounded by its LIMIT).

        Raises:
            StatementError: the server rejected it.
        """
        results = self.execute(sql, params, max_rows=1000)
        return list(results[0].rows) if results else []

    def set_statement_timeout(self, seconds: float) -> None:
        """Limit the next statements to ``seconds`` of server time.

        Raises:
            StatementError: the server rejected the setting.
        """
        raise NotImplementedError

    def in_transaction(self) -> bool:
        """Whether a transaction is open (so the last statements are not yet committed)."""
        raise NotImplementedError

    def interrupt(self, via: Session) -> None:
        """Cancel the statement running on this session; ``via`` is another session to the
        same server (MySQL needs one to send ``KILL QUERY``). Called from another thread.

        Raises:
            StatementError: the cancel request failed.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back by the server."""
        raise NotImplementedError


class PostgresSession(Session):
    engine: Engine = "postgres"

    def __init__(self, target: Target, conn: psycopg.Connection[Any]) -> None:
        super().__init__(target)
        self._conn = conn

    def execute(
        self, sql: str, params: Sequence[Any] | None = None, *, max_rows: int = 0
    ) -> list[ResultSet]:
        import psycopg

        with self._mutex:
            try:
                with self._conn.cursor() as cur:
                    if params is None:
                        cur.execute(sql.encode("utf-8"))
                    else:
                        cur.execute(sql.encode("utf-8"), params)
                    return [_pg_result(cur, max_rows)]
            except psycopg.Error as exc:
                raise _pg_error(exc) from exc

    def set_statement_timeout(self, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        # is_local=true: like SET LOCAL, it ends with the transaction
        self.execute("SELECT set_config('statement_timeout', %s, true)", (f"{ms}ms",))

    def in_transaction(self) -> bool:
        import psycopg

        status = self._conn.info.transaction_status
        return status != psycopg.pq.TransactionStatus.IDLE

    def interrupt(self, via: Session) -> None:
        import psycopg

        try:
            self._conn.cancel_safe(timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise _pg_error(exc) from exc

    def close(self) -> None:
        self._conn.close()


class MySQLSession(Session):
    engine: Engine = "mysql"

    def __init__(self, target: Target, conn: pymysql.connections.Connection[Any]) -> None:
        super().__init__(target)
        self._conn = conn
        self.mariadb = "mariadb" in conn.get_server_info().lower()

    @property
    def thread_id(self) -> int:
        return int(self._conn.thread_id())

    def execute(
        self, sql: str, params: Sequence[Any] | None = None, *, max_rows: int = 0
    ) -> list[ResultSet]:
        import pymysql.cursors

        with self._mutex:
            try:
                cur = self._conn.cursor(pymysql.cursors.SSCursor)
                try:
                    cur.execute(sql, params)
                    results = [_mysql_result(cur, max_rows)]
                    while cur.nextset():  # CALL returns one result per SELECT, then a status
                        results.append(_mysql_result(cur, max_rows))
                    return results
                finally:
                    cur.close()
            except pymysql.MySQLError as exc:
                raise _mysql_error(exc) from exc

    def set_statement_timeout(self, seconds: float) -> None:
        if self.mariadb:
            self.execute("SET SESSION max_statement_time = %s", (max(0.001, round(seconds, 3)),))
        else:  # MySQL: applies to SELECT only; the watchdog covers the rest
            self.execute("SET SESSION MAX_EXECUTION_TIME = %s", (max(1, int(seconds * 1000)),))

    def in_transaction(self) -> bool:
        from pymysql.constants import SERVER_STATUS

        return bool((self._conn.server_status or 0) & SERVER_STATUS.SERVER_STATUS_IN_TRANS)

    def interrupt(self, via: Session) -> None:
        via.execute(f"KILL QUERY {self.thread_id}")

    def close(self) -> None:
        import pymysql

        if self._conn.open:
            # COM_QUIT on a connection the server already dropped fails; it is gone anyway
            with contextlib.suppress(pymysql.MySQLError, OSError):
                self._conn.close()


def open_session(
    target: Target,
    timeout_s: float,
    *,
    read_timeout_s: float,
    statement_timeout_s: float | None = None,
) -> Session:
    """Connect to ``target`` within ``timeout_s`` (capped at :data:`CONNECT_TIMEOUT_S`).

    ``read_timeout_s`` bounds every socket read on MySQL (a dead server cannot hang us);
    PostgreSQL relies on statement timeouts and cancel requests instead, and
    ``statement_timeout_s`` sets a session-wide one there (for the control session).

    Raises:
        ConnectError: the server is unreachable or refused the login.
    """
    timeout = max(1, min(CONNECT_TIMEOUT_S, int(timeout_s + 0.999)))
    if target.engine == "postgres":
        kwargs: dict[str, Any] = {
            **target.options,
            "host": target.socket or target.host,
            "port": target.port,
            "user": target.user or None,
            "password": target.password,
            "dbname": target.database,
            "connect_timeout": timeout,
            "application_name": "tiangong-agent",
        }
        if statement_timeout_s is not None:
            ms = max(1, int(statement_timeout_s * 1000))
            kwargs["options"] = f"{target.options.get('options', '')} -c statement_timeout={ms}"
        import psycopg

        try:
            pg = psycopg.connect(autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise ConnectError(target.redact(_one_line(str(exc)))) from exc
        return PostgresSession(target, pg)
    import pymysql

    try:
        conn = pymysql.connect(
            host=target.host or "localhost",
            port=target.port,
            user=target.user,
            password=target.password or "",
            database=target.database,
            connect_timeout=timeout,
            read_timeout=max(1, int(read_timeout_s)),
            write_timeout=max(1, int(read_timeout_s)),
            charset="utf8mb4",
            autocommit=True,
            defer_connect=True,
            ssl_ca=target.options.get("ssl_ca"),
            ssl_cert=target.options.get("ssl_cert"),
            ssl_key=target.options.get("ssl_key"),
        )
        conn.connect(_unix_socket(target.socket, timeout) if target.socket else None)
    except (pymysql.MySQLError, OSError) as exc:
        raise ConnectError(target.redact(_one_line(_mysql_text(exc)))) from exc
    return MySQLSession(target, conn)


def _unix_socket(path: str, timeout: float) -> socket.socket:
    # PyMySQL leaks its own Unix socket when connecting fails; this one is closed on error.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", "; ", text.strip())


def _pg_result(cur: psycopg.Cursor[Any], max_rows: int) -> ResultSet:
    status = cur.statusmessage or ""
    if cur.description is None:
        return ResultSet(None, (), 0, cur.rowcount, status)
    columns = tuple(d.name for d in cur.description)
    rows = tuple(tuple(r) for r in cur.fetchmany(max_rows)) if max_rows else ()
    total = max(cur.rowcount, len(rows))
    return ResultSet(columns, rows, total - len(rows), total, status)


def _pg_error(exc: psycopg.Error) -> StatementError:
    diag = exc.diag
    code = exc.sqlstate or ""
    message = _one_line(diag.message_primary or str(exc) or type(exc).__name__)
    if diag.message_detail:
        message += f" ({_one_line(diag.message_detail)})"
    position = int(diag.statement_position) if diag.statement_position else None
    import psycopg.errors

    canceled = isinstance(exc, psycopg.errors.QueryCanceled)
    return StatementError(
        code,
        message,
        timeout=canceled and "statement timeout" in message,
        interrupted=canceled and "user request" in message,
        position=position,
    )


def _mysql_result(cur: pymysql.cursors.SSCursor, max_rows: int) -> ResultSet:
    if cur.description is None:
        return ResultSet(None, (), 0, cur.rowcount, "")
    columns = tuple(str(d[0]) for d in cur.description)
    rows = tuple(tuple(r) for r in cur.fetchmany(max_rows)) if max_rows else ()
    more = 0
    while cur.fetchone() is not None:  # unbuffered: count the rest without keeping it
        more += 1
    return ResultSet(columns, rows, more, len(rows) + more, "")


def _mysql_text(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[1], str):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


def _mysql_error(exc: pymysql.MySQLError) -> StatementError:
    args: tuple[Any, ...] = tuple(exc.args)
    code = str(args[0]) if args and isinstance(args[0], int) else ""
    message = _one_line(args[1] if len(args) >= 2 and isinstance(args[1], str) else str(exc))
    return StatementError(
        code,
        message,
        timeout=code in _MYSQL_TIMEOUT_CODES,
        interrupted=code == _MYSQL_INTERRUPTED,
    )
