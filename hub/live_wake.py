"""Local wake-ups for the live servers of a hub on SQLite: one datagram per commit that queued.

SQLite has no ``NOTIFY`` (:mod:`hub.live_notify`), but every process of a hub on SQLite is on
one host: the database is a local file. So each live server binds a Unix datagram socket in
the **wake-up directory** beside that file (``<database>-wake/``, e.g.
``<data-dir>/hub.db-wake/<pid>-<random>.sock``, the directory made mode 0700), and a process
whose commit queued a deployment or changed an agent's status sends one empty datagram to
every socket there. The live server's push loop then polls at once instead of at its next
interval; the poll reads the truth from the tables (a datagram carries no data, like the
NOTIFY), and the timed poll stays as the safety net for a wake-up that was lost.

What counts is exactly what fires the PostgreSQL triggers of migration 0008: a ``deployments``
row inserted with state ``queued``, or updated with its state set to ``queued``, and an
``agents`` row whose ``status`` changed (revocation). :func:`wake_on_commit` watches a session
factory for them — the ORM's flushes (``after_flush``) and ORM ``UPDATE``/``INSERT``
statements (``do_orm_execute``: a conditional ``update(Deployment).values(state="queued")``)
— and sends after the commit (``after_commit`` of the transaction, not of a savepoint: a
poll woken then could not see the work yet); a rollback forgets (``after_rollback``; a
savepoint's rollback only what was noted inside it; a session closed without either,
``after_transaction_end``), so nothing is sent for work that did not happen.

Why beside the database file, not under ``data_dir``: the database is what the processes
share by definition (the session hook knows only its engine, so nothing has to be passed to
every place that opens one), and whoever can write that directory can already write the
database (SQLite makes its ``-wal``/``-shm`` files there): a wake-up gives nobody a new power.

Sending is best effort and never raises into the commit: no directory (no live server ever
ran), a socket nobody holds any more (removed: ``ECONNREFUSED``), a server whose queue is
full (it is woken already), an unreadable directory (logged once a process). Paths longer
than a socket address holds (107 bytes) are reached through ``/proc/self/fd`` and an open
directory; a live server that cannot bind logs why, polls, and tries again every round.

Deliberately not here: PostgreSQL (its triggers NOTIFY; no datagram is sent there) and
MariaDB (its hub processes may be on other hosts: the live server polls), what a wake-up
does (:meth:`hub.live_hub.LiveHub._poll_loop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.attributes import History
from sqlalchemy.sql.elements import BindParameter

from hub.db import Agent, Deployment, normalize_url

__all__ = ["DRAIN_DATAGRAMS", "MAX_ADDRESS_BYTES", "SOCKET_SUFFIX", "SUFFIX", "WakeSocket",
           "send_wakeups", "wake_dir", "wake_on_commit"]

log = logging.getLogger("tiangong.hub.live")

SUFFIX = "-wake"  # the wake-up directory: the database file's path + this
SOCKET_SUFFIX = ".sock"
MAX_ADDRESS_BYTES = 107  # bytes of a Unix socket path (sun_path: 108 with its NUL)
DRAIN_DATAGRAMS = 64  # datagrams a live server reads at most per readable event
_NOTED = "tiangong_live_wake"  # Session.info key: this transaction queued or revoked (_note)
_warned: set[str] = set()  # problems logged once a process (per directory and kind)


def wake_dir(database_url: str) -> Path | None:
    """The wake-up directory of the hub whose database is ``database_url``, or None: not a
    SQLite file (PostgreSQL NOTIFYs, MariaDB polls, an in-memory database is one process)."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database).absolute()
    return path.with_name(path.name + SUFFIX)


def _engine_wake_dir(bind: Engine | Connection) -> Path | None:
    """The wake-up directory of a session's bind: an engine, or a connection of one (a
    session joined to an outer transaction)."""
    return wake_dir(bind.engine.url.render_as_string(hide_password=False))


# --- the sending side: every process that commits -----------------------------------------


@contextlib.contextmanager
def _opened(directory: Path) -> Iterator[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _address(directory: Path, dir_fd: int, name: str) -> str:
    """``name`` in ``directory`` as a socket address: the path, or the path through the open
    directory ``dir_fd`` when the path is too long for one."""
    path = str(directory / name)
    if len(os.fsencode(path)) <= MAX_ADDRESS_BYTES:
        return path
    return f"/proc/self/fd/{dir_fd}/{name}"


def _warn_once(directory: Path, what: str, exc: OSError) -> None:
    key = f"{directory}:{what}:{exc.errno}"
    if key not in _warned:
        _warned.add(key)
        log.warning("live wake-up: cannot %s in %s (%s); the live server finds the work at "
                    "its next poll instead", what, directory, exc.strerror or exc)


def send_wakeups(directory: Path) -> int:
    """Send one empty datagram to every live server's socket in ``directory``; remove the
    sockets nobody holds any more. Returns how many were sent. Never raises: a wake-up that
    cannot be sent leaves the work to the next timed poll."""
    try:
        with _opened(directory) as dir_fd:
            # A live server binds its socket here, never a link: one to a socket elsewhere
            # (another program's) is not followed with the hub's rights.
            names = [e.name for e in os.scandir(dir_fd)
                     if e.name.endswith(SOCKET_SUFFIX) and not e.is_symlink()]
            if not names:
                return 0
            # A socket of this call's own (a few microseconds, once per queueing commit):
            # none held for the process's life, none shared by a forked child.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sent = 0
                for name in names:
                    try:
                        sock.sendto(b"", _address(directory, dir_fd, name))
                        sent += 1
                    except (BlockingIOError, FileNotFoundError):
                        pass  # its queue is full (woken already), or it just went away
                    except ConnectionRefusedError:
                        _remove_stale(directory, dir_fd, name)
                    except OSError as exc:
                        _warn_once(directory, f"send a wake-up to {name}", exc)
                return sent
    except FileNotFoundError:
        return 0  # no live server has run on this database
    except OSError as exc:
        _warn_once(directory, "list the live servers' sockets", exc)
        return 0


def _remove_stale(directory: Path, dir_fd: int, name: str) -> None:
    """Remove ``name``, a socket whose live server is gone (names are never reused: a new
    live server binds another name). A socket file caught in the instant of its ``bind``
    (its file made, the socket not yet bound) refuses too and is removed: its live server
    binds a new one within a round (:meth:`WakeSocket.check`), meanwhile it polls."""
    try:
        if stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _warn_once(directory, f"remove the stale socket {name}", exc)


# --- which commits wake (= the triggers of migration 0008) --------------------------------


def _flushed_wakes(session: Session) -> bool:
    for obj in session.new:
        if isinstance(obj, Deployment) and obj.state == "queued":
            return True
    for obj in session.dirty:
        if isinstance(obj, Deployment):
            if obj.state == "queued" and inspect(obj).attrs.state.history.has_changes():
                return True
        elif isinstance(obj, Agent):
            history: History = inspect(obj).attrs.status.history
            if history.has_changes() and list(history.added) != list(history.deleted):
                return True
    return False


_EXPRESSION = object()  # a SET value that is not a plain value: it may be anything


def _set_value(values: Any, key: str) -> tuple[bool, Any]:
    """(whether ``key`` is set, its value or :data:`_EXPRESSION`) in a statement's SET or
    VALUES, or in one row of its parameters."""
    for column, value in dict(values or {}).items():
        if getattr(column, "key", column) == key:
            if isinstance(value, BindParameter):
                return True, value.value
            return True, value if isinstance(value, str) else _EXPRESSION
    return False, None


def _statement_wakes(state: ORMExecuteState) -> bool:
    """An ORM ``UPDATE``/``INSERT`` of deployments that sets the state to ``queued`` (or to
    an expression: it may be), or an ORM ``UPDATE`` of agents that sets ``status``."""
    if not (state.is_update or state.is_insert) or state.bind_mapper is None:
        return False
    entity = state.bind_mapper.class_
    # The statement's SET/VALUES: SQLAlchemy keeps them in _values (no public accessor);
    # bulk statements carry them in the parameters instead, one dict a row.
    values = getattr(state.statement, "_values", None)
    rows = [values] if values else list(_param_rows(state.parameters))
    if entity is Deployment:
        return any(_set_value(row, "state") in ((True, "queued"), (True, _EXPRESSION))
                   for row in rows)
    if entity is Agent and state.is_update:
        return any(_set_value(row, "status")[0] for row in rows)
    return False


def _param_rows(parameters: Any) -> Iterator[dict[str, Any]]:
    if isinstance(parameters, dict):
        yield parameters
    elif isinstance(parameters, list | tuple):
        yield from (p for p in parameters if isinstance(p, dict))


# Session.info[_NOTED]: the innermost savepoint (SessionTransaction) open when the work was
# first noted, None for the transaction itself; absent: nothing noted. A savepoint's commit
# and rollback fire after_commit/after_rollback too: its release hands the note to the
# enclosing level (nothing is sent before the real commit), its rollback forgets only what
# was noted inside it.


def _note(session: Session) -> None:
    session.info[_NOTED] = session.get_nested_transaction()


def _enclosing_savepoint(transaction: SessionTransaction) -> SessionTransaction | None:
    parent = transaction.parent
    while parent is not None and not parent.nested:
        parent = parent.parent
    return parent


def _inside(noted: SessionTransaction | None, savepoint: SessionTransaction) -> bool:
    while noted is not None:
        if noted is savepoint:
            return True
        noted = noted.parent
    return False


def _after_flush(session: Session, _context: UOWTransaction) -> None:
    if _NOTED not in session.info and _flushed_wakes(session):
        _note(session)


def _on_execute(state: ORMExecuteState) -> None:
    if _NOTED not in state.session.info and _statement_wakes(state):
        _note(state.session)


def _after_commit(session: Session) -> None:
    if _NOTED not in session.info:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is not None:  # released: the work is the enclosing level's now
        if session.info[_NOTED] is savepoint:
            session.info[_NOTED] = _enclosing_savepoint(savepoint)
        return
    del session.info[_NOTED]
    directory = _engine_wake_dir(session.get_bind())
    if directory is not None:
        send_wakeups(directory)


def _after_rollback(session: Session) -> None:
    savepoint = session.get_nested_transaction()
    if savepoint is None or _inside(session.info.get(_NOTED), savepoint):
        session.info.pop(_NOTED, None)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # also a close() without commit or rollback
        session.info.pop(_NOTED, None)


_LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("after_flush", _after_flush), ("do_orm_execute", _on_execute),
    ("after_commit", _after_commit), ("after_rollback", _after_rollback),
    ("after_transaction_end", _after_transaction_end))


def wake_on_commit(sessions: sessionmaker[Any] | scoped_session[Any],
                   database_url: str) -> None:
    """Make every commit of ``sessions`` that queued a deployment or changed an agent's
    status wake the live servers of its database. Called where session factories are made;
    calling it again changes nothing. On a database that is not a SQLite file
    (:func:`wake_dir` is None) nothing is installed: the hooks would look at every flush
    and ORM statement of every session only to send nothing."""
    if wake_dir(database_url) is None:
        return
    for name, listener in _LISTENERS:
        if not event.contains(sessions, name, listener):
            event.listen(sessions, name, listener)


# --- the receiving side: the live server --------------------------------------------------


class WakeSocket:
    """A live server's socket in the wake-up directory: each datagram calls ``wake`` (on the
    event loop; many at once, one call). Open it on the loop that runs the push loop."""

    def __init__(self, directory: Path, wake: Callable[[], None]) -> None:
        self.directory = directory
        self.wake = wake
        self.path: Path | None = None  # the socket's file, while bound
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted = False  # opened and not closed: check() binds again when it must
        self._failed: int | None = None  # errno of the failure logged last (logged once)

    def open(self) -> bool:
        """Bind a new socket (a name no live server used before) and read it on the running
        loop. False, logged, when it cannot: the push loop polls as without it, and
        :meth:`check` tries again every round."""
        self._loop = asyncio.get_running_loop()
        self._wanted = True
        name = f"{os.getpid()}-{secrets.token_hex(4)}{SOCKET_SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            with _opened(self.directory) as dir_fd:
                sock.bind(_address(self.directory, dir_fd, name))
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno != self._failed:
                self._failed = exc.errno
                log.error("live: cannot listen for local wake-ups in %s (%s); the push loop "
                          "polls every round instead and tries again", self.directory,
                          exc.strerror or exc)
            return False
        self._failed = None
        self._sock, self.path, self._inode = sock, self.directory / name, (st.st_dev, st.st_ino)
        self._loop.add_reader(sock.fileno(), self._readable)
        log.info("live: listening for local wake-ups at %s", self.path)
        return True

    def _readable(self) -> None:
        """Read what is queued, at most :data:`DRAIN_DATAGRAMS` (senders that refill the
        queue as fast as it is read must not keep the event loop here: the selector calls
        again), and wake once."""
        assert self._sock is not None
        for _ in range(DRAIN_DATAGRAMS):
            try:
                self._sock.recv(1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # not expected of a bound datagram socket; say it
                log.warning("live: local wake-up socket %s: %s", self.path, exc)
                break
        self.wake()

    def check(self) -> None:
        """Bind again if the socket's file was removed or replaced (someone cleaned the
        directory) or binding failed before (a full disk, something in the directory's
        place): senders find live servers by their files. Called every round."""
        if not self._wanted:
            return
        if self._sock is not None and self.path is not None:
            try:
                st = os.stat(self.path, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == self._inode:
                    return
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError:
                return  # cannot be looked at now (permissions): nothing to repair
            log.warning("live: the local wake-up socket %s was removed; binding a new one",
                        self.path)
            self.close(unlink=False)
        self.open()

    def close(self, *, unlink: bool = True) -> None:
        """Stop reading and remove the socket's file (senders then skip it); ``unlink``
        False: to bind again (:meth:`check`)."""
        if unlink:
            self._wanted = False
        if self._sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        if unlink and self.path is not None:
            with contextlib.suppress(OSError), _opened(self.directory) as dir_fd:
                os.unlink(self.path.name, dir_fd=dir_fd)
        self.path = None

    @property
    def listening(self) -> bool:
        return self._sock is not None


