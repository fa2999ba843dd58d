"""The agent's journal: what it accepted, what it ran, what it reported — written before acting.

One SQLite file (WAL, ``synchronous=FULL`` so a committed transaction survives power loss)
holding:

* ``trust``: per issuer (the hub id) the trusted root envelope, the root version + sequence
  high-water mark, and the time floor. Updated in the same transaction that records a bundle
  as accepted, so a crash can never leave a bundle accepted without its sequence persisted, or
  the other way round (SECURITY-MODEL.md, verification step 6).
* ``bundles``: every bundle seen, keyed by bundle id and unique by envelope digest (a bundle
  dropped twice runs once), with its state.
* ``steps``: one row per step *attempt* with state pending → running → succeeded / failed /
  skipped, or interrupted when the agent died while it was running. A step is marked running
  (committed) before it starts.
* ``results``: the agent's result sequence and the digest chain of its result files.

This module does not verify, run or write bundle files: it only records.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BundleRecord",
    "Journal",
    "JournalError",
    "StepRecord",
    "TrustRecord",
]

SCHEMA_VERSION = 1

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
    summary          TEXT
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
    created_at   INTEGER NOT NULL
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

BUNDLE_STATES = ("waiting", "running", "succeeded", "failed", "interrupted", "cancelled")
STEP_STATES = ("pending", "running", "succeeded", "failed", "interrupted", "skipped")


class JournalError(Exception):
    """The journal refuses an inconsistent write (e.g. a sequence that is not newer)."""


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


class Journal:
    """A handle on the journal file. Thread-safe (one connection, serialised by a lock)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> int:
        return int(self._clock())

    @contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction. ``durable=False`` commits without waiting for the disk
        (``synchronous=NORMAL``): WAL keeps the order, so the change becomes durable with the
        next durable commit; after a power cut it may be lost, never reordered."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    # -- trust and replay state -------------------------------------------------------------

    def pin_root(self, issuer: str, root_envelope: bytes, root_version: int) -> None:
        """Record the root the operator pinned (agent init / enrollment). Never lowers it."""
        with self._tx() as db:
            row = db.execute("SELECT root_version FROM trust WHERE issuer=?", (issuer,)).fetchone()
            if row is not None and row["root_version"] > root_version:
                raise JournalError(
                    f"trusted root version {row['root_version']} is newer than {root_version}"
                )
            db.execute(
                "INSERT INTO trust(issuer, root_envelope, root_version, sequence, time_floor,"
                " updated_at) VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT(issuer) DO UPDATE SET"
                " root_envelope=excluded.root_envelope, root_version=excluded.root_version,"
                " updated_at=excluded.updated_at",
                (issuer, root_envelope, root_version, self._now()),
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
    ) -> None:
        """Persist acceptance of a verified bundle *and* the new replay state, atomically.

        ``steps`` is ``[(name, kind), ...]``; each gets a pending attempt 1.

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
                    " not_before, state, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (bundle_id, envelope_sha256, source, issuer, root_version, sequence,
                     release.get("product"), release.get("version"),
                     json.dumps(manifest, sort_keys=True), staged_dir, not_before, "waiting",
                     self._now()),
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(f"bundle {bundle_id} is already recorded") from exc
            for idx, (name, kind) in enumerate(steps):
                db.execute(
                    "INSERT INTO steps(bundle_id, idx, attempt, name, kind, state)"
                    " VALUES (?, ?, 1, ?, ?, 'pending')",
                    (bundle_id, idx, name, kind),
                )

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

    def recover_interrupted(self) -> list[str]:
        """After a restart: running steps become interrupted, and so do their bundles.

        Nothing is re-run automatically. Returns the ids of the interrupted bundles.
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
            running = db.execute("SELECT bundle_id FROM bundles WHERE state='running'").fetchall()
            for r in running:
                if r[0] not in ids:
                    ids.append(r[0])
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
        return ids

    # -- results ----------------------------------------------------------------------------

    def last_result(self) -> tuple[int, str | None]:
        """(last result sequence, its sha256) — (0, None) before the first result."""
        with self._lock:
            row = self._db.execute(
                "SELECT result_seq, sha256 FROM results ORDER BY result_seq DESC LIMIT 1"
            ).fetchone()
        return (row[0], row[1]) if row else (0, None)

    def record_result(
        self, result_seq: int, bundle_id: str | None, status: str, file_name: str, sha256: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO results(result_seq, bundle_id, status, file_name, sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (result_seq, bundle_id, status, file_name, sha256, self._now()),
            )

    def results(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM results ORDER BY result_seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

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
    )


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        row["bundle_id"], row["idx"], row["attempt"], row["name"], row["kind"], row["state"],
        row["started_at"], row["finished_at"], row["exit_code"], row["summary"],
        json.loads(row["details"]) if row["details"] else None, row["log_path"],
    )
