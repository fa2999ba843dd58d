"""The agent's journal: what it accepted, what it ran, what it reported — written before acting.

One SQLite file (WAL, ``synchronous=FULL`` so a committed transaction survives power loss)
holding:

* ``trust``: per issuer (the hub id) the trusted root envelope, the root version + sequence
  high-water mark, and the time floor. Updated in the same transaction that records a bundle
  as accepted, so a crash can never leave a bundle accepted without its sequence persisted, or
  the other way round (docs/security.md, "The agent's verification order", step 6).
* ``bundles``: every bundle seen, keyed by bundle id and unique by envelope digest (a bundle
  dropped twice runs once), with its state.
* ``steps``: one row per step *attempt* with state pending → running → succeeded / failed /
  skipped, or interrupted when the agent died while it was running. A step is marked running
  (committed) before it starts.
* ``results``: the agent's result sequence and the digest chain of its result files. A result
  is recorded *before* its file is written (state ``pending``, with everything needed to
  write it: ``spec`` and ``result_logs``), in the same transaction as the bundle's final
  state, the rejection or the interruption it reports; writing the file later is a pure
  function of that row and the previous result's digest, so it can be repeated after a
  crash or a full disk and gives the same bytes (``agent.results``).
* ``disposals``: refused files and duplicate copies on their way out of the inbox (to
  ``quarantine/`` or ``archive/duplicates/``): recorded with their result before they move,
  so a crash in between moves them later without a second result.
* ``operator_actions``: things the operator did outside a bundle (``agent sql unlock``),
  reported in the next result.
* ``job_schedule`` / ``job_runs``: the schedule of site jobs installed by the last bundle
  that carried one, and every run of a job (running → succeeded / failed, or interrupted),
  reported in the next result (``scheduled_jobs``; ``agent.jobs``).
* ``overrides``: ``agent run-now`` decisions — one bundle may run outside its maintenance
  windows and in a freeze (who, when, why); reported in that bundle's result. A bundle that
  waits for a window or a freeze to end is in state ``held`` (summary: why, until when).

Opening an existing journal checks it (``PRAGMA quick_check``, the schema version row): a
damaged, emptied or missing journal raises :class:`JournalDamagedError`, whose message gives
the recovery command (docs/agent.md, "Damaged journal").

This module does not verify, run or write bundle files: it only records.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.faults import fault_point

__all__ = [
    "BundleRecord",
    "Disposal",
    "Journal",
    "JournalDamagedError",
    "JournalError",
    "JournalWriteError",
    "PendingResult",
    "ResultIntent",
    "StepRecord",
    "TrustRecord",
]

SCHEMA_VERSION = 4
RECOVER_COMMAND = "tiangong agent journal recover --home {home}"
# SQLite's messages for a full, read-only or failing disk.
_WRITE_TROUBLE = re.compile(r"disk is full|readonly|read-only|disk I/O error|out of memory")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trust (
    issuer        TEXT PRIMARY KEY,
    root_envelope BLOB NOT NULL,
    root_version  INTEGER NOT NULL,
    sequence      INTEGER NOT NULL,
    time_floor    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id        TEXT PRIMARY KEY,
    envelope_sha256  TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    issuer           TEXT NOT NULL,
    root_version     INTEGER NOT NULL,
    sequence         INTEGER NOT NULL,
    product          TEXT,
    version          TEXT,
    manifest         TEXT NOT NULL,
    staged_dir       TEXT,
    not_before       INTEGER,
    state            TEXT NOT NULL,
    received_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    summary          TEXT,
    archived         INTEGER NOT NULL DEFAULT 1,
    inbox_files      TEXT,
    release_digest   TEXT,
    undoes           TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    bundle_id   TEXT NOT NULL REFERENCES bundles(bundle_id),
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    exit_code   INTEGER,
    summary     TEXT,
    details     TEXT,
    log_path    TEXT,
    PRIMARY KEY (bundle_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS results (
    result_seq   INTEGER PRIMARY KEY,
    bundle_id    TEXT,
    status       TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    state        TEXT NOT NULL DEFAULT 'written',
    spec         TEXT
);
CREATE TABLE IF NOT EXISTS result_logs (
    result_seq   INTEGER NOT NULL,
    name         TEXT NOT NULL,
    text         TEXT NOT NULL,
    PRIMARY KEY (result_seq, name)
);
CREATE TABLE IF NOT EXISTS disposals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    names       TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    dest        TEXT NOT NULL,
    result_seq  INTEGER,
    done        INTEGER NOT NULL DEFAULT 0,
    at          INTEGER NOT NULL,
    check_name  TEXT,
    reason      TEXT
);
CREATE TABLE IF NOT EXISTS operator_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    result_seq  INTEGER
);
CREATE TABLE IF NOT EXISTS job_schedule (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    bundle_id   TEXT NOT NULL,
    jobs        TEXT NOT NULL,
    installed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT NOT NULL,
    bundle_id   TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    missed      INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER,
    summary     TEXT NOT NULL DEFAULT '',
    result_seq  INTEGER,
    UNIQUE (job, bundle_id, due_at)
);
CREATE TABLE IF NOT EXISTS overrides (
    bundle_id   TEXT PRIMARY KEY REFERENCES bundles(bundle_id),
    reason      TEXT NOT NULL,
    by_user     TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    file_name   TEXT NOT NULL,
    file_sha256 TEXT,
    check_name  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
"""

BUNDLE_STATES = ("waiting", "running", "held", "succeeded", "failed", "interrupted",
                 "cancelled")
STEP_STATES = ("pending", "running", "succeeded", "failed", "interrupted", "skipped")


class JournalError(Exception):
    """The journal refuses an inconsistent write (e.g. a sequence that is not newer)."""


class JournalWriteError(JournalError):
    """A journal commit failed for lack of space or a read-only disk; nothing was changed,
    and the same write may succeed later."""


class JournalDamagedError(JournalError):
    """The journal file is missing, emptied or corrupt; the message names the file and the
    recovery command."""


@dataclass(frozen=True)
class TrustRecord:
    issuer: str
    root_envelope: bytes
    root_version: int
    sequence: int
    time_floor: int


@dataclass(frozen=True)
class BundleRecord:
    bundle_id: str
    envelope_sha256: str
    source: str
    issuer: str
    root_version: int
    sequence: int
    product: str | None
    version: str | None
    manifest: dict[str, Any]
    staged_dir: str | None
    not_before: int | None
    state: str
    received_at: int
    started_at: int | None
    finished_at: int | None
    summary: str | None
    archived: bool = True
    inbox_files: tuple[str, ...] = ()
    #: the release's content hash recomputed from the verified manifest when it was accepted
    #: (docs/release-format.md §5); None for a result or a bundle accepted before schema 4
    release_digest: str | None = None
    #: the bundle every step of this one undoes (an undo-only rollback bundle), else None
    undoes: str | None = None


@dataclass(frozen=True)
class StepRecord:
    bundle_id: str
    idx: int
    attempt: int
    name: str
    kind: str
    state: str
    started_at: int | None
    finished_at: int | None
    exit_code: int | None
    summary: str | None
    details: dict[str, Any] | None
    log_path: str | None


@dataclass(frozen=True)
class ResultIntent:
    """A result to record: ``spec`` is JSON-safe (built by ``agent.results.result_intent``),
    ``logs`` the log files it carries (payload name -> text)."""

    status: str
    bundle_id: str | None
    spec: dict[str, Any]
    logs: dict[str, str]


@dataclass(frozen=True)
class PendingResult:
    """A recorded result whose file is not (known to be) in the outbox yet."""

    result_seq: int
    bundle_id: str | None
    status: str
    file_name: str
    spec: dict[str, Any]
    logs: dict[str, str]


@dataclass(frozen=True)
class Disposal:
    """Inbox files on their way to quarantine/ or archive/duplicates/."""

    id: int
    names: tuple[str, ...]
    sha256: str
    dest: str
    result_seq: int | None
    done: bool
    rejection: tuple[str, str, str] | None = None  # (file name, check, reason) if refused


def _open_private(path: Path) -> None:
    """Create the journal file 0600 before SQLite does (it would use the umask)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def damaged(path: Path, what: str) -> JournalDamagedError:
    home = path.parent
    return JournalDamagedError(
        f"the journal {path} {what}; the agent refuses to start, because without it it "
        "cannot tell what already ran. Recover with "
        f"'{RECOVER_COMMAND.format(home=home)}' (it keeps the damaged file, rebuilds the "
        "sequence floor and the results from archive/ and outbox/, and never re-runs "
        "anything; docs/agent.md, 'Damaged journal')"
    )


def _refuse_unwritable(path: Path, exc: sqlite3.Error) -> None:
    """SQLite could not open the journal (``exc``), but the file itself may be sound: a
    journal in WAL mode on a read-only file system (or in a directory this user cannot
    write) fails with "unable to open database file", because its ``-shm`` file cannot be
    made. Read without those (``immutable``), a sound file passes SQLite's check and holds
    the journal's tables: then this raises :class:`JournalWriteError` saying so, instead
    of calling the file damaged (whose advice, ``journal recover``, would set the agent's
    history aside for nothing).

    Raises:
        JournalWriteError: the file reads back sound.
    """
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
    except sqlite3.Error:
        return
    try:
        check = db.execute("PRAGMA quick_check").fetchone()
        meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                          ).fetchone()
    except sqlite3.Error:
        return
    finally:
        db.close()
    if check is not None and check[0] == "ok" and meta is not None:
        raise JournalWriteError(
            f"cannot open the journal {path} for writing ({exc}), although the file reads "
            f"back sound: its directory {path.parent} refuses writes (a read-only file "
            "system, or another user's directory); remount it read-write or run as the "
            "agent's user. The journal is not damaged: do not recover it") from exc


class Journal:
    """A handle on the journal file. Thread-safe (one connection, serialised by a lock).

    ``create=True`` (``agent init``, tests) creates a new journal; ``create=False`` (the agent)
    refuses a missing, emptied or damaged one.

    Raises:
        JournalDamagedError: ``create=False`` and the file is missing or empty, or the file
            is not a readable journal.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, *,
                 create: bool = True) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        if not create:
            if not self.path.exists():
                raise damaged(self.path, "is missing")
            if self.path.stat().st_size == 0:
                raise damaged(self.path, "is empty (0 bytes)")
        else:
            _open_private(self.path)
        if self.path.stat().st_mode & 0o077:
            with suppress(OSError):  # a read-only disk is reported by the first write
                os.chmod(self.path, 0o600)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            _refuse_unwritable(self.path, exc)
            raise damaged(self.path, f"cannot be opened ({exc})") from exc
        self._db.row_factory = sqlite3.Row
        try:
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise damaged(self.path, f"fails SQLite's integrity check ({check and check[0]})")
            self._db.execute("PRAGMA busy_timeout=10000")
            # Checked before anything is written, so a refused file is left as it was.
            known = {r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if not create and "meta" not in known:
                raise damaged(self.path, "holds no journal tables (emptied?)")
            if "meta" in known:
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None and not create:
                    raise damaged(self.path, "has no schema version (emptied?)")
                version = int(row[0]) if row is not None else SCHEMA_VERSION
            else:
                version = SCHEMA_VERSION
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if version > SCHEMA_VERSION:
                raise JournalError(f"the journal {self.path} has schema version {version}, "
                                   f"newer than this agent's {SCHEMA_VERSION}; upgrade the agent")
            if version < SCHEMA_VERSION and "bundles" in known:
                self._migrate(version)
            if version != SCHEMA_VERSION or "meta" not in known or "overrides" not in known \
                    or "job_runs" not in known:
                self._db.executescript(_SCHEMA)
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON "
                        "CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (str(SCHEMA_VERSION),),
                    )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            if _WRITE_TROUBLE.search(str(exc)):
                raise JournalWriteError(f"cannot open the journal {self.path} for writing: "
                                        f"{exc} (free space, or remount it read-write)") from exc
            _refuse_unwritable(self.path, exc)
            raise damaged(self.path, f"is not a readable SQLite journal ({exc})") from exc
        except JournalError:
            self._db.close()
            raise

    def _migrate(self, version: int) -> None:
        """Schema 1 → 2: columns for pending results and archiving; 2 → 3: the overrides
        table; 3 → 4: a bundle's release digest and the bundle it undoes. New tables come
        from ``_SCHEMA``."""
        if version < 2:
            for ddl in (
                "ALTER TABLE bundles ADD COLUMN archived INTEGER NOT NULL DEFAULT 1",
                "ALTER TABLE bundles ADD COLUMN inbox_files TEXT",
                "ALTER TABLE results ADD COLUMN state TEXT NOT NULL DEFAULT 'written'",
                "ALTER TABLE results ADD COLUMN spec TEXT",
            ):
                self._db.execute(ddl)
        if version < 4:
            have = {r[1] for r in self._db.execute("PRAGMA table_info(bundles)")}
            for column in ("release_digest", "undoes"):
                if column not in have:
                    self._db.execute(f"ALTER TABLE bundles ADD COLUMN {column} TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction. ``durable=False`` commits without waiting for the disk
        (``synchronous=NORMAL``): WAL keeps the order, so the change becomes durable with the
        next durable commit; after a power cut it may be lost, never reordered.

        Raises:
            JournalWriteError: the disk is full or read-only (nothing was changed).
        """
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    fault_point("journal")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                else:
                    self._db.execute("COMMIT")
            except (OSError, sqlite3.OperationalError) as exc:
                if isinstance(exc, sqlite3.OperationalError) and not _WRITE_TROUBLE.search(
                        str(exc)):
                    raise
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalWriteError(f"cannot write the journal {self.path}: {exc}") from exc
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    # -- trust and replay state -------------------------------------------------------------

    def pin_root(self, issuer: str, root_envelope: bytes, root_version: int,
                 time_floor: int = 0) -> None:
        """Record the root the operator pinned (agent init / enrollment). Never lowers it,
        nor the time floor (``agent init`` passes max(root issue time, now))."""
        with self._tx() as db:
            row = db.execute("SELECT root_version FROM trust WHERE issuer=?", (issuer,)).fetchone()
            if row is not None and row["root_version"] > root_version:
                raise JournalError(
                    f"trusted root version {row['root_version']} is newer than {root_version}"
                )
            db.execute(
                "INSERT INTO trust(issuer, root_envelope, root_version, sequence, time_floor,"
                " updated_at) VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(issuer) DO UPDATE SET"
                " root_envelope=excluded.root_envelope, root_version=excluded.root_version,"
                " time_floor=MAX(time_floor, excluded.time_floor),"
                " updated_at=excluded.updated_at",
                (issuer, root_envelope, root_version, time_floor, self._now()),
            )

    def trust(self, issuer: str) -> TrustRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM trust WHERE issuer=?", (issuer,)).fetchone()
        if row is None:
            return None
        return TrustRecord(row["issuer"], bytes(row["root_envelope"]), row["root_version"],
                           row["sequence"], row["time_floor"])

    def issuers(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT issuer FROM trust ORDER BY issuer")]

    # -- bundles ----------------------------------------------------------------------------

    def find_by_envelope(self, envelope_sha256: str) -> BundleRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM bundles WHERE envelope_sha256=?", (envelope_sha256,)
            ).fetchone()
        return _bundle(row) if row else None

    def bundle(self, bundle_id: str) -> BundleRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM bundles WHERE bundle_id=?", (bundle_id,)
            ).fetchone()
        return _bundle(row) if row else None

    def bundles(self, states: tuple[str, ...] | None = None) -> list[BundleRecord]:
        with self._lock:
            if states:
                marks = ",".join("?" * len(states))
                rows = self._db.execute(
                    f"SELECT * FROM bundles WHERE state IN ({marks})"  # noqa: S608 - placeholders
                    " ORDER BY root_version, sequence",
                    states,
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM bundles ORDER BY received_at, root_version, sequence"
                ).fetchall()
        return [_bundle(r) for r in rows]

    def accept_bundle(
        self,
        *,
        issuer: str,
        root_envelope: bytes,
        root_version: int,
        sequence: int,
        time_floor: int,
        bundle_id: str,
        envelope_sha256: str,
        source: str,
        manifest: dict[str, Any],
        staged_dir: str,
        not_before: int | None,
        steps: list[tuple[str, str]],
        inbox_files: tuple[str, ...] | None = None,
        release_digest: str | None = None,
        undoes: str | None = None,
    ) -> None:
        """Persist acceptance of a verified bundle *and* the new replay state, atomically.

        ``release_digest`` is the release's content hash recomputed from the verified
        manifest, ``undoes`` the bundle an undo-only bundle undoes (both kept for a later
        rollback's inherited approvals, ``agent.approvalcheck``).

        ``steps`` is ``[(name, kind), ...]``; each gets a pending attempt 1. With
        ``inbox_files`` (the names the bundle has in the inbox), the bundle is recorded as not
        archived yet (:meth:`set_archived` once its files are in ``archive/``).

        Raises:
            JournalError: the (root_version, sequence) is not newer than the stored one (a
                concurrent acceptance won the race), or the bundle is already recorded.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM trust WHERE issuer=?", (issuer,)).fetchone()
            if row is not None and (root_version, sequence) <= (
                row["root_version"], row["sequence"]
            ):
                raise JournalError(
                    f"sequence {sequence} (root {root_version}) is not newer than "
                    f"{row['sequence']} (root {row['root_version']}) already accepted"
                )
            floor = max(time_floor, row["time_floor"] if row is not None else 0)
            db.execute(
                "INSERT INTO trust(issuer, root_envelope, root_version, sequence, time_floor,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(issuer) DO UPDATE SET"
                " root_envelope=excluded.root_envelope, root_version=excluded.root_version,"
                " sequence=excluded.sequence, time_floor=excluded.time_floor,"
                " updated_at=excluded.updated_at",
                (issuer, root_envelope, root_version, sequence, floor, self._now()),
            )
            release = manifest.get("release") or {}
            try:
                db.execute(
                    "INSERT INTO bundles(bundle_id, envelope_sha256, source, issuer,"
                    " root_version, sequence, product, version, manifest, staged_dir,"
                    " not_before, state, received_at, archived, inbox_files, release_digest,"
                    " undoes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (bundle_id, envelope_sha256, source, issuer, root_version, sequence,
                     release.get("product"), release.get("version"),
                     json.dumps(manifest, sort_keys=True), staged_dir, not_before, "waiting",
                     self._now(), 0 if inbox_files is not None else 1,
                     json.dumps(list(inbox_files or ())), release_digest, undoes),
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"bundle {bundle_id} is already recorded") from exc
            for idx, (name, kind) in enumerate(steps):
                db.execute(
                    "INSERT INTO steps(bundle_id, idx, attempt, name, kind, state)"
                    " VALUES (?, ?, 1, ?, ?, 'pending')",
                    (bundle_id, idx, name, kind),
                )

    def undone_by(self, bundle_id: str) -> BundleRecord | None:
        """The first accepted bundle that undoes ``bundle_id`` (undo-only), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM bundles WHERE undoes=? ORDER BY root_version, sequence LIMIT 1",
                (bundle_id,)).fetchone()
        return _bundle(row) if row else None

    def later_of_product(self, rec: BundleRecord) -> list[BundleRecord]:
        """Bundles of ``rec``'s product and issuer accepted after it (by chain position)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM bundles WHERE issuer=? AND product=? AND bundle_id<>? AND"
                " (root_version>? OR (root_version=? AND sequence>?))"
                " ORDER BY root_version, sequence",
                (rec.issuer, rec.product, rec.bundle_id, rec.root_version, rec.root_version,
                 rec.sequence)).fetchall()
        return [_bundle(r) for r in rows]

    def set_archived(self, bundle_id: str) -> None:
        """The bundle's inbox files are in ``archive/`` now."""
        with self._tx() as db:
            db.execute("UPDATE bundles SET archived=1 WHERE bundle_id=?", (bundle_id,))

    def unarchived(self) -> list[BundleRecord]:
        """Accepted bundles whose files could not be moved to ``archive/`` yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM bundles WHERE archived=0 ORDER BY root_version, sequence"
            ).fetchall()
        return [_bundle(r) for r in rows]

    def finish_bundle(self, bundle_id: str, state: str, summary: str,
                      result: ResultIntent) -> int:
        """Record the bundle's final state and its result, in one transaction; returns the
        result's sequence number. The result file is written afterwards
        (:meth:`pending_results`)."""
        if state not in BUNDLE_STATES or state in ("waiting", "running", "held"):
            raise ValueError(f"not a final bundle state: {state!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE bundles SET state=?, finished_at=?, summary=? WHERE bundle_id=?",
                (state, self._now(), summary, bundle_id),
            )
            return self._add_result(db, result)

    def set_bundle_state(self, bundle_id: str, state: str, summary: str | None = None) -> None:
        if state not in BUNDLE_STATES:
            raise ValueError(f"unknown bundle state {state!r}")
        now = self._now()
        with self._tx() as db:
            if state == "running":
                db.execute(
                    "UPDATE bundles SET state=?, started_at=COALESCE(started_at, ?) "
                    "WHERE bundle_id=?",
                    (state, now, bundle_id),
                )
            elif state == "waiting":
                db.execute("UPDATE bundles SET state=? WHERE bundle_id=?", (state, bundle_id))
            elif state == "held":
                db.execute("UPDATE bundles SET state=?, summary=? WHERE bundle_id=?",
                           (state, summary, bundle_id))
            else:
                db.execute(
                    "UPDATE bundles SET state=?, finished_at=?, summary=? WHERE bundle_id=?",
                    (state, now, summary, bundle_id),
                )

    # -- steps ------------------------------------------------------------------------------

    def steps(self, bundle_id: str, latest_only: bool = False) -> list[StepRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM steps WHERE bundle_id=? ORDER BY idx, attempt", (bundle_id,)
            ).fetchall()
        records = [_step(r) for r in rows]
        if latest_only:
            latest: dict[int, StepRecord] = {}
            for rec in records:
                latest[rec.idx] = rec
            records = [latest[i] for i in sorted(latest)]
        return records

    def step_running(self, bundle_id: str, idx: int, attempt: int, log_path: str) -> None:
        """Mark a step attempt running, committed, *before* the step starts."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE steps SET state='running', started_at=?, log_path=? "
                "WHERE bundle_id=? AND idx=? AND attempt=? AND state='pending'",
                (self._now(), log_path, bundle_id, idx, attempt),
            )
            if cur.rowcount != 1:
                raise JournalError(
                    f"step {idx + 1} attempt {attempt} of {bundle_id} is not pending"
                )

    def step_finished(
        self,
        bundle_id: str,
        idx: int,
        attempt: int,
        state: str,
        summary: str,
        exit_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if state not in STEP_STATES:
            raise ValueError(f"unknown step state {state!r}")
        # Not waited for: if a power cut loses this row, the step still reads 'running' and
        # recovery reports it 'interrupted' (never re-run) — the safe direction. The next
        # durable commit (the next step's 'running', the result) persists it in order.
        with self._tx(durable=False) as db:
            db.execute(
                "UPDATE steps SET state=?, finished_at=?, summary=?, exit_code=?, details=? "
                "WHERE bundle_id=? AND idx=? AND attempt=?",
                (state, self._now(), summary, exit_code,
                 json.dumps(details or {}, sort_keys=True, default=str),
                 bundle_id, idx, attempt),
            )

    def add_attempts(self, bundle_id: str, from_idx: int) -> int:
        """Add a new pending attempt for every step from ``from_idx`` on (operator retry).

        Returns the new attempt number.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT idx, MAX(attempt) AS a, name, kind FROM steps WHERE bundle_id=? "
                "GROUP BY idx ORDER BY idx",
                (bundle_id,),
            ).fetchall()
            if not rows:
                raise JournalError(f"bundle {bundle_id} has no steps")
            attempt = int(max(r["a"] for r in rows)) + 1
            for r in rows:
                if r["idx"] >= from_idx:
                    db.execute(
                        "INSERT INTO steps(bundle_id, idx, attempt, name, kind, state) "
                        "VALUES (?, ?, ?, ?, ?, 'pending')",
                        (bundle_id, r["idx"], attempt, r["name"], r["kind"]),
                    )
            db.execute(
                "UPDATE bundles SET state='waiting', finished_at=NULL WHERE bundle_id=?",
                (bundle_id,),
            )
        return attempt

    def recover_interrupted(
        self, result_for: Callable[[str], ResultIntent] | None = None
    ) -> list[str]:
        """After a restart: running steps become interrupted, and so do their bundles.

        Nothing is re-run automatically. A bundle left ``running`` with no running step (the
        agent died between two steps) is not interrupted: its next step never started, and
        the agent continues it. With ``result_for``, each interrupted bundle's result is
        recorded in the same transaction (``result_for(bundle_id)`` is called inside it and
        may read :meth:`steps`). Returns the ids of the interrupted bundles.
        """
        now = self._now()
        with self._tx() as db:
            rows = db.execute(
                "SELECT DISTINCT bundle_id FROM steps WHERE state='running'"
            ).fetchall()
            ids = [r[0] for r in rows]
            db.execute(
                "UPDATE steps SET state='interrupted', finished_at=?, summary="
                "'the agent stopped while this step was running; it was not re-run' "
                "WHERE state='running'",
                (now,),
            )
            for bid in ids:
                db.execute(
                    "UPDATE steps SET state='skipped', summary='not run: an earlier step was "
                    "interrupted' WHERE bundle_id=? AND state='pending'",
                    (bid,),
                )
                db.execute(
                    "UPDATE bundles SET state='interrupted', finished_at=?, summary=? "
                    "WHERE bundle_id=?",
                    (now, "interrupted: the agent stopped while a step was running", bid),
                )
                if result_for is not None:
                    self._add_result(db, result_for(bid))
        return ids

    # -- results ----------------------------------------------------------------------------

    def _add_result(self, db: sqlite3.Connection, result: ResultIntent) -> int:
        """Allocate the next result sequence and record ``result`` as pending (inside a
        transaction). Operator actions not reported yet are added to it."""
        row = db.execute("SELECT MAX(result_seq) FROM results").fetchone()
        floor = db.execute("SELECT value FROM meta WHERE key='result_floor'").fetchone()
        seq = max(int(row[0] or 0), int(floor[0]) if floor else 0) + 1
        spec = dict(result.spec)
        actions = db.execute(
            "SELECT id, at, action, detail FROM operator_actions WHERE result_seq IS NULL "
            "ORDER BY id"
        ).fetchall()
        if actions:
            spec["extra"] = {**(spec.get("extra") or {}), "operator_actions": [
                {"at": a["at"], "action": a["action"], "detail": a["detail"]} for a in actions]}
            db.execute("UPDATE operator_actions SET result_seq=? WHERE result_seq IS NULL",
                       (seq,))
        runs = db.execute(
            "SELECT * FROM job_runs WHERE result_seq IS NULL AND state != 'running' ORDER BY id"
        ).fetchall()
        if runs:
            spec["extra"] = {**(spec.get("extra") or {}), "scheduled_jobs": [
                {k: r[k] for k in ("job", "bundle_id", "due_at", "started_at", "finished_at",
                                   "state", "attempts", "missed", "exit_code", "summary")}
                for r in runs]}
            db.execute("UPDATE job_runs SET result_seq=? WHERE result_seq IS NULL AND "
                       "state != 'running'", (seq,))
        file_name = f"{spec['agent_id']}-{seq:06d}-{result.status}.tgr"
        db.execute(
            "INSERT INTO results(result_seq, bundle_id, status, file_name, sha256, created_at,"
            " state, spec) VALUES (?, ?, ?, ?, '', ?, 'pending', ?)",
            (seq, result.bundle_id, result.status, file_name, self._now(),
             json.dumps(spec, sort_keys=True)),
        )
        for name, text in result.logs.items():
            db.execute("INSERT INTO result_logs(result_seq, name, text) VALUES (?, ?, ?)",
                       (seq, name, text))
        return seq

    def add_result(self, result: ResultIntent) -> int:
        """Record a result on its own (no other state changes); returns its sequence."""
        with self._tx() as db:
            return self._add_result(db, result)

    def pending_results(self) -> list[PendingResult]:
        """Recorded results whose file is not known to be written, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM results WHERE state='pending' ORDER BY result_seq"
            ).fetchall()
            out = []
            for r in rows:
                logs = {lr["name"]: lr["text"] for lr in self._db.execute(
                    "SELECT name, text FROM result_logs WHERE result_seq=? ORDER BY name",
                    (r["result_seq"],))}
                out.append(PendingResult(r["result_seq"], r["bundle_id"], r["status"],
                                         r["file_name"], json.loads(r["spec"] or "{}"), logs))
        return out

    def previous_digest(self, result_seq: int) -> str | None:
        """The envelope digest of the result before ``result_seq`` (None for the first).

        Raises:
            JournalError: that result is recorded but its file not written yet.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT state, sha256 FROM results WHERE result_seq < ? "
                "ORDER BY result_seq DESC LIMIT 1", (result_seq,)
            ).fetchone()
            floor = self._db.execute(
                "SELECT value FROM meta WHERE key='result_floor_sha256'").fetchone()
        if row is None:
            return str(floor[0]) if floor and floor[0] else None
        if row["state"] != "written":
            raise JournalError(f"result {result_seq - 1} is not written yet")
        return str(row["sha256"])

    def result_written(self, result_seq: int, sha256: str) -> None:
        """The result file is in the outbox with this envelope digest."""
        with self._tx() as db:
            db.execute("UPDATE results SET state='written', sha256=? WHERE result_seq=?",
                       (sha256, result_seq))
            db.execute("DELETE FROM result_logs WHERE result_seq=?", (result_seq,))

    def result_file(self, result_seq: int) -> tuple[str, str] | None:
        """(file name, state) of a recorded result."""
        with self._lock:
            row = self._db.execute(
                "SELECT file_name, state FROM results WHERE result_seq=?", (result_seq,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def last_result(self) -> tuple[int, str | None]:
        """(last result sequence, its sha256) — (0, None) before the first result."""
        with self._lock:
            row = self._db.execute(
                "SELECT result_seq, sha256 FROM results ORDER BY result_seq DESC LIMIT 1"
            ).fetchone()
        return (row[0], row[1] or None) if row else (0, None)

    def record_result(
        self, result_seq: int, bundle_id: str | None, status: str, file_name: str, sha256: str
    ) -> None:
        """Record a result file that is already written (journal recovery)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO results(result_seq, bundle_id, status, file_name, sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (result_seq, bundle_id, status, file_name, sha256, self._now()),
            )

    def results(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT result_seq, bundle_id, status, file_name, sha256, created_at, state "
                "FROM results ORDER BY result_seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

    # -- disposals (refused files and duplicate copies leaving the inbox) -------------------

    def find_disposal(self, names: tuple[str, ...], sha256: str) -> Disposal | None:
        """An unfinished disposal of exactly these files (same names, same bytes)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM disposals WHERE names=? AND sha256=? AND done=0",
                (json.dumps(list(names)), sha256),
            ).fetchone()
        return _disposal(row) if row else None

    def open_disposals(self) -> list[Disposal]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM disposals WHERE done=0 ORDER BY id").fetchall()
        return [_disposal(r) for r in rows]

    def record_disposal(self, names: tuple[str, ...], sha256: str, dest: str,
                        result: ResultIntent,
                        rejection: tuple[str, str, str] | None = None) -> Disposal:
        """Record that these inbox files go to ``dest``, with their result (and, for a refused
        file, the rejection ``(file_name, check, reason)``), before they move."""
        with self._tx() as db:
            seq = self._add_result(db, result)
            if rejection is not None:
                db.execute(
                    "INSERT INTO rejections(file_name, file_sha256, check_name, reason, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (rejection[0], sha256, rejection[1], rejection[2], self._now()),
                )
            cur = db.execute(
                "INSERT INTO disposals(names, sha256, dest, result_seq, done, at, check_name,"
                " reason) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (json.dumps(list(names)), sha256, dest, seq, self._now(),
                 rejection[1] if rejection else None, rejection[2] if rejection else None),
            )
            rowid = int(cur.lastrowid or 0)
        return Disposal(rowid, names, sha256, dest, seq, False, rejection)

    def disposal_done(self, disposal_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE disposals SET done=1 WHERE id=?", (disposal_id,))

    # -- operator actions -------------------------------------------------------------------

    def record_action(self, action: str, detail: str) -> None:
        """Something the operator did outside a bundle; reported in the next result."""
        with self._tx() as db:
            db.execute("INSERT INTO operator_actions(at, action, detail) VALUES (?, ?, ?)",
                       (self._now(), action, detail))

    # -- scheduled jobs (agent.jobs) ---------------------------------------------------------

    def set_schedule(self, bundle_id: str, jobs: list[dict[str, Any]],
                     installed_at: int | None = None) -> None:
        """Replace the installed job schedule with ``jobs`` from bundle ``bundle_id``,
        installed at ``installed_at`` (the jobs' clock; default: the journal's)."""
        with self._tx() as db:
            db.execute("INSERT INTO job_schedule(id, bundle_id, jobs, installed_at) "
                       "VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                       "bundle_id=excluded.bundle_id, jobs=excluded.jobs, "
                       "installed_at=excluded.installed_at",
                       (bundle_id, json.dumps(jobs, sort_keys=True),
                        self._now() if installed_at is None else installed_at))

    def schedule(self) -> tuple[str, list[dict[str, Any]], int] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM job_schedule WHERE id=1").fetchone()
        if row is None:
            return None
        return row["bundle_id"], json.loads(row["jobs"]), int(row["installed_at"])

    def last_job_due(self, job: str, bundle_id: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT MAX(due_at) FROM job_runs WHERE job=? AND "
                                   "bundle_id=?", (job, bundle_id)).fetchone()
        return None if row[0] is None else int(row[0])

    def job_started(self, job: str, bundle_id: str, due_at: int, now: int,
                    missed: int) -> int | None:
        """Commit a run of ``job`` due at ``due_at`` as running; None if it exists already."""
        with self._tx() as db:
            try:
                cur = db.execute("INSERT INTO job_runs(job, bundle_id, due_at, started_at, "
                                 "state, missed) VALUES (?, ?, ?, ?, 'running', ?)",
                                 (job, bundle_id, due_at, now, missed))
            except sqlite3.IntegrityError:
                return None
            return cur.lastrowid

    def job_finished(self, run_id: int, state: str, attempts: int, exit_code: int | None,
                     summary: str, now: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE job_runs SET state=?, attempts=?, exit_code=?, summary=?, "
                       "finished_at=? WHERE id=? AND state='running'",
                       (state, attempts, exit_code, summary, now, run_id))

    def unreported_job_runs(self) -> tuple[int, int | None]:
        """Finished runs no result carries yet: (how many, oldest finish time)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), MIN(finished_at) FROM job_runs WHERE "
                                   "result_seq IS NULL AND state != 'running'").fetchone()
        return int(row[0]), None if row[1] is None else int(row[1])

    def interrupt_job_runs(self, now: int) -> int:
        """Runs left running by a crash become interrupted; returns how many."""
        with self._tx() as db:
            cur = db.execute("UPDATE job_runs SET state='interrupted', finished_at=?, "
                             "summary='interrupted: the agent stopped while the job ran' "
                             "WHERE state='running'", (now,))
            return cur.rowcount

    def job_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM job_runs ORDER BY id DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [dict(r) for r in rows]

    def record_override(self, bundle_id: str, reason: str, by_user: str) -> int:
        """``agent run-now``: let the held bundle ``bundle_id`` run outside its windows and in
        a freeze. Returns the time recorded.

        Raises:
            JournalError: no such bundle, it is not held, or it already has an override.
        """
        now = self._now()
        with self._tx() as db:
            row = db.execute("SELECT state FROM bundles WHERE bundle_id=?",
                             (bundle_id,)).fetchone()
            if row is None:
                raise JournalError(f"no bundle {bundle_id} in the journal")
            if row["state"] != "held":
                raise JournalError(f"bundle {bundle_id} is not held (it is {row['state']}); "
                                   "run-now only releases a bundle held by its maintenance "
                                   "windows or a freeze")
            try:
                db.execute("INSERT INTO overrides(bundle_id, reason, by_user, at) "
                           "VALUES (?, ?, ?, ?)", (bundle_id, reason, by_user, now))
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"bundle {bundle_id} already has a run-now override"
                                   ) from exc
        return now

    def override(self, bundle_id: str) -> dict[str, Any] | None:
        """The run-now override of ``bundle_id`` (reason, by, at), or None."""
        with self._lock:
            row = self._db.execute("SELECT reason, by_user, at FROM overrides WHERE "
                                   "bundle_id=?", (bundle_id,)).fetchone()
        if row is None:
            return None
        return {"reason": row["reason"], "by": row["by_user"], "at": row["at"]}

    def actions(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM operator_actions ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def restore_outcome(self, bundle_id: str, step_state: str, step_summary: str,
                        bundle_state: str | None = None) -> None:
        """Journal recovery: set every pending step of a rebuilt bundle (and, if given, the
        bundle) to a known final state."""
        now = self._now()
        with self._tx() as db:
            db.execute("UPDATE steps SET state=?, summary=?, finished_at=? WHERE bundle_id=? "
                       "AND state='pending'", (step_state, step_summary, now, bundle_id))
            if bundle_state is not None:
                db.execute("UPDATE bundles SET state=?, summary=?, finished_at=? "
                           "WHERE bundle_id=?", (bundle_state, step_summary, now, bundle_id))

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                       "SET value=excluded.value", (key, value))

    # -- rejections -------------------------------------------------------------------------

    def record_rejection(
        self, file_name: str, file_sha256: str | None, check: str, reason: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rejections(file_name, file_sha256, check_name, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (file_name, file_sha256, check, reason, self._now()),
            )

    def rejections(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]


def _bundle(row: sqlite3.Row) -> BundleRecord:
    return BundleRecord(
        row["bundle_id"], row["envelope_sha256"], row["source"], row["issuer"],
        row["root_version"], row["sequence"], row["product"], row["version"],
        json.loads(row["manifest"]), row["staged_dir"], row["not_before"], row["state"],
        row["received_at"], row["started_at"], row["finished_at"], row["summary"],
        bool(row["archived"]), tuple(json.loads(row["inbox_files"] or "[]")),
        row["release_digest"], row["undoes"],
    )


def _disposal(row: sqlite3.Row) -> Disposal:
    names = tuple(json.loads(row["names"]))
    rejection = ((names[0], row["check_name"], row["reason"] or "")
                 if row["check_name"] is not None else None)
    return Disposal(row["id"], names, row["sha256"], row["dest"], row["result_seq"],
                    bool(row["done"]), rejection)


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        row["bundle_id"], row["idx"], row["attempt"], row["name"], row["kind"], row["state"],
        row["started_at"], row["finished_at"], row["exit_code"], row["summary"],
        json.loads(row["details"]) if row["details"] else None, row["log_path"],
    )
