"""The audit log in the database: append, stream, verify, checkpoint, export.

Appends are serialised by the single ``audit_head`` row: the first statement of an append
is an ``UPDATE audit_head SET seq = seq + 1`` (PostgreSQL: a row lock held to commit;
SQLite: the database write lock), so sequence numbers are gap-free and the chain is linear
even with several hub processes. The event is written in the caller's transaction, so an
action and its event commit together (or roll back together, leaving no gap).

A caller appending many events in one transaction (the result importer) can hold the head
instead (:func:`held_head`): the row is locked once, *outside* any savepoint (a lock taken
inside a savepoint would be released by rolling that savepoint back), its sequence and hash
are kept in memory while :func:`append_event` continues the chain, per-item savepoints
(:meth:`HeldHead.savepoint`) rewind the in-memory head together with the database, and the
row is written once before the commit. Other appenders wait on the same lock exactly as
before, so the guarantee is unchanged.

Reading and verifying stream the table in keyset-paginated batches of :data:`BATCH`
columns-only rows: memory does not grow with the log.

This module does not decide who may *cause* events (the services do); reading, verifying,
exporting and checkpointing need the auditor role (checkpointing: operator too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Integer, String, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session, SessionTransaction

from hub.audit_chain import (
    GENESIS_HASH,
    ChainEvent,
    ChainReport,
    ChainVerifier,
    Checkpoint,
    compute_hash_raw,
    export_lines,
    format_at,
    sign_checkpoint,
    verify_checkpoint,
)
from hub.audit_mac import CONNECTION_KEY, AuditMacKey
from hub.db import AuditCheckpoint, AuditEvent, AuditHead, Environment
from hub.errors import AuditError, AuditVerificationError, ConfigError, HubError
from hub.faults import crash_point
from hub.services.context import HubKeys, ServiceContext
from signing.errors import SigningError, StrictJSONError
from signing.strictjson import dumps_canonical

__all__ = [
    "BATCH",
    "PAGE_SIZE",
    "EventPage",
    "EventQuery",
    "HeldHead",
    "NewEvent",
    "append_event",
    "append_events",
    "checkpoint_for_export",
    "export_audit",
    "head_seq",
    "held_head",
    "iter_events",
    "iter_rows",
    "latest_checkpoint",
    "lock_head",
    "mac_key",
    "record",
    "record_many",
    "record_refusal",
    "search_events",
    "verify_database",
    "write_checkpoint",
]

BATCH = 1000  # events per keyset page
VERIFY_BATCH = 10_000  # events per keyset page when verifying (a few MiB of rows)
PREFETCH = False  # verify: read the next page in a thread while hashing this one (see benchmarks)
PAGE_SIZE = 50  # events per page of search_events
MAX_DETAILS_BYTES = 256 * 1024  # bytes of canonical JSON per event's details
_HEAD_ID = 1
#: The statements on the audit head and the log that every append or checkpoint runs, made
#: once (each is immutable; SQLAlchemy keeps a made statement's cache key, where one built
#: per call costs its construction and key again, 40-90 us each). The head row is written
#: with Core UPDATEs of its table: no session holds it as an object, and the ORM UPDATE
#: searched every object the session held for one to synchronise (an export's session holds
#: its batch's deployments and agents).
_HEAD = AuditHead.__table__
_AT_HEAD = update(_HEAD).where(_HEAD.c.id == _HEAD_ID)
_LOCK_HEAD = _AT_HEAD.values(seq=_HEAD.c.seq)  # takes the lock, changes nothing
_BUMP_HEAD = _AT_HEAD.values(seq=_HEAD.c.seq + bindparam("h_count", type_=Integer))
_SET_HEAD = _AT_HEAD.values(seq=bindparam("h_seq", type_=Integer),
                            hash=bindparam("h_hash", type_=String))
_SET_HEAD_HASH = _AT_HEAD.values(hash=bindparam("h_hash", type_=String))
_READ_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == _HEAD_ID)
_LAST_SEQ = select(func.max(AuditEvent.__table__.c.seq))
_INSERT_EVENTS = insert(AuditEvent.__table__)


_HELD_KEY = "tiangong.audit.held_head"  # Session.info key of the HeldHead, if any


class HeldHead:
    """The audit head, locked for the rest of one transaction and continued in memory.

    Made by :func:`held_head`; while it is registered on the session, :func:`append_event`
    takes the next sequence and previous hash from here instead of from the row. It is
    valid only in the transaction that locked the row: an append after that transaction
    ended (committed or rolled back) raises :class:`AuditError` rather than fork the chain.
    """

    def __init__(self, session: Session) -> None:
        if session.in_nested_transaction():
            # A lock taken inside a savepoint is released when the savepoint rolls back.
            raise AuditError("hold the audit head outside any savepoint")
        self.session = session
        # Take the lock first (as append_event does), then read what it protects.
        locked = session.execute(_LOCK_HEAD)
        if locked.rowcount != 1:  # type: ignore[attr-defined]
            raise AuditError("the audit head row is missing: run the hub's migrations")
        self.seq, self.hash = session.execute(_READ_HEAD).one()
        _refuse_rows_past_head(session, self.seq)
        self.mac = mac_key(session)
        self._locked_seq: int = self.seq
        self._transaction: SessionTransaction | None = session.get_transaction()

    def check(self) -> None:
        """Raise AuditError unless the transaction that locked the row is still open."""
        tx = self.session.get_transaction()
        if tx is None or tx is not self._transaction or not tx.is_active:
            raise AuditError(
                "the held audit head belongs to a transaction that has ended; hold it again"
            )

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A SAVEPOINT for one item: on an exception both the rows written inside it and
        the in-memory head are rolled back (then the exception propagates)."""
        self.check()
        mark = (self.seq, self.hash)
        nested = self.session.begin_nested()
        try:
            yield
        except BaseException:
            if nested.is_active:
                nested.rollback()
            self.seq, self.hash = mark
            raise
        nested.commit()

    def write(self) -> None:
        """Store the in-memory head in the locked row (before the commit)."""
        self.check()
        if self.seq == self._locked_seq:
            return
        self.session.execute(_SET_HEAD, {"h_seq": self.seq, "h_hash": self.hash})
        self._locked_seq = self.seq


@contextmanager
def held_head(session: Session) -> Iterator[HeldHead]:
    """Lock the audit head for the rest of the session's transaction and append in memory.

    On a normal exit the head row is updated (the caller then commits); on an exception
    nothing is written and the caller must roll back. Nest no other ``held_head``.

    Raises:
        AuditError: the head row is missing, a savepoint is open, or a head is already held.
    """
    if session.info.get(_HELD_KEY) is not None:
        raise AuditError("the audit head is already held in this session")
    head = HeldHead(session)
    session.info[_HELD_KEY] = head
    try:
        yield head
        head.write()
    finally:
        session.info.pop(_HELD_KEY, None)


def lock_head(session: Session) -> None:
    """Take the audit head's lock for the rest of the session's transaction, changing
    nothing: a transaction that will append events and also lock other rows takes this
    first, so every writer locks in one order (audit head, then the rows).

    Raises:
        AuditError: the head row is missing (database not migrated).
    """
    locked = session.execute(_LOCK_HEAD)
    if locked.rowcount != 1:  # type: ignore[attr-defined]
        raise AuditError("the audit head row is missing: run the hub's migrations")


def _details_text(action: str, details: Mapping[str, Any] | None) -> str:
    """``details`` as the canonical JSON text an event stores.

    Raises:
        AuditError: not strict JSON (floats, datetimes …), or over ``MAX_DETAILS_BYTES``.
    """
    try:
        text = dumps_canonical(dict(details or {})).decode("utf-8")
    except StrictJSONError as exc:
        raise AuditError(f"audit event {action}: details are not strict JSON: {exc}") from exc
    if len(text) > MAX_DETAILS_BYTES:
        raise AuditError(
            f"audit event {action}: details are {len(text)} bytes, over the limit "
            f"of {MAX_DETAILS_BYTES}"
        )
    return text


def append_event(
    session: Session,
    at: datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: Mapping[str, Any] | None = None,
    *,
    mac: AuditMacKey | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the session's transaction, MACed with ``mac``
    or else the key the session's engine carries (:func:`hub.audit_mac.attach`).

    Raises:
        AuditError: ``details`` is not strict JSON (floats, datetimes …) or too large, or
            the head row is missing (database not migrated).
    """
    details_text = _details_text(action, details)
    held: HeldHead | None = session.info.get(_HELD_KEY)
    if held is not None:
        # The row is locked by this transaction and its state is in memory.
        held.check()
        seq, prev_hash = held.seq + 1, held.hash
    else:
        # Take the lock first: this UPDATE serialises every appender until commit.
        locked = session.execute(_BUMP_HEAD, {"h_count": 1})
        if locked.rowcount != 1:  # type: ignore[attr-defined]
            raise AuditError("the audit head row is missing: run the hub's migrations")
        seq, prev_hash = session.execute(_READ_HEAD).one()
        _refuse_rows_past_head(session, seq - 1)
    if mac is None:
        mac = held.mac if held is not None else mac_key(session)
    if mac is None and held is None:
        _refuse_unkeyed_after_keyed(session, seq, action)
    at_text = format_at(at)
    digest = compute_hash_raw(
        seq, at_text, actor, action, object_type, object_id, details_text, prev_hash
    )
    event = AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        details=details_text,
        prev_hash=prev_hash,
        hash=digest,
        mac=mac.mac(seq, digest) if mac is not None else None,
    )
    session.add(event)
    if held is not None:
        # Inserted with the next flush (savepoint release or commit); the row is written
        # once by HeldHead.write.
        held.seq, held.hash = seq, digest
        return event
    session.flush()
    session.execute(_SET_HEAD_HASH, {"h_hash": digest})
    crash_point("hub.audit-appended")
    return event


def _refuse_unkeyed_after_keyed(session: Session, seq: int, action: str) -> None:
    """Raise AuditError when the event before ``seq`` carries a MAC but this process has
    no audit MAC key: the event would be written unMACed, `audit verify` would flag it, and
    every later checkpoint (so every export) would be refused. Better to refuse this one
    write, saying which key is missing.

    Raises:
        AuditError: naming the key file.
    """
    with session.no_autoflush:
        before = session.scalar(select(AuditEvent.mac).where(AuditEvent.seq == seq - 1))
    if before is not None:
        raise AuditError(
            f"audit event {action}: this process has no audit MAC key (keys/audit-mac.key in "
            f"the hub's data directory) but the log is MACed up to event {seq - 1}; an "
            "unMACed event would break the chain, so nothing was recorded. Open the hub with "
            "its keys (hub.keystore.load_hub_keys, make_engine(..., audit_mac=keys.audit_mac))"
        )


def mac_key(session: Session) -> AuditMacKey | None:
    """The audit MAC key the session's engine carries (:func:`hub.audit_mac.attach`)."""
    key = session.connection().info.get(CONNECTION_KEY)
    return key if isinstance(key, AuditMacKey) else None


def _refuse_rows_past_head(session: Session, head: int) -> None:
    """Raise AuditError when the log holds events after the head (``head``): rows written
    into the database without the hub. Appending would collide with them.

    Raises:
        AuditError: naming the rows and the command that lists every problem.
    """
    last = session.scalar(_LAST_SEQ)
    if last is not None and last > head:
        raise AuditError(
            f"the audit log holds event(s) {head + 1}..{last} after its head (event {head}): "
            "rows were written without the hub; nothing was recorded. Run "
            "`tiangong hub audit verify` to list every problem"
        )


#: One event for :func:`append_events`: (action, object type, object id, details).
NewEvent = tuple[str, str, str, Mapping[str, Any] | None]


def append_events(
    session: Session,
    at: datetime,
    actor: str,
    events: Sequence[NewEvent],
    *,
    mac: AuditMacKey | None = None,
) -> list[int]:
    """Append many events at once to the chain inside the session's transaction, all at
    ``at`` by ``actor``: the rows are inserted with one executemany statement (not one ORM
    object each), with exactly the hashes, chain and MACs :func:`append_event` gives them
    one by one, so `audit verify` cannot tell the difference. Returns their sequence
    numbers, in order.

    With the head held (:func:`held_head`) they continue its in-memory chain (and a
    savepoint rolls them back with it); otherwise the head row is locked, read and written
    once for the whole batch.

    Raises:
        AuditError: a ``details`` is not strict JSON or too large (nothing appended), or
            the head row is missing.
    """
    if not events:
        return []
    texts = []
    for action, _, _, details in events:
        texts.append(_details_text(action, details))
    held: HeldHead | None = session.info.get(_HELD_KEY)
    if held is not None:
        held.check()
        seq, prev_hash = held.seq, held.hash
    else:
        locked = session.execute(_BUMP_HEAD, {"h_count": len(events)})
        if locked.rowcount != 1:  # type: ignore[attr-defined]
            raise AuditError("the audit head row is missing: run the hub's migrations")
        last, prev_hash = session.execute(_READ_HEAD).one()
        seq = last - len(events)
        _refuse_rows_past_head(session, seq)
    if mac is None:
        mac = held.mac if held is not None else mac_key(session)
    if mac is None and held is None:
        _refuse_unkeyed_after_keyed(session, seq + 1, events[0][0])
    at_text = format_at(at)
    rows: list[dict[str, Any]] = []
    for (action, object_type, object_id, _), details_text in zip(events, texts, strict=True):
        seq += 1
        digest = compute_hash_raw(
            seq, at_text, actor, action, object_type, object_id, details_text, prev_hash
        )
        rows.append({"seq": seq, "at": at, "actor": actor, "action": action,
                     "object_type": object_type, "object_id": object_id,
                     "details": details_text, "prev_hash": prev_hash, "hash": digest,
                     "mac": mac.mac(seq, digest) if mac is not None else None})
        prev_hash = digest
    session.execute(_INSERT_EVENTS, rows)  # Core: no ORM bookkeeping
    if held is not None:
        held.seq, held.hash = seq, prev_hash
    else:
        session.execute(_SET_HEAD_HASH, {"h_hash": prev_hash})
        crash_point("hub.audit-appended")
    return [row["seq"] for row in rows]


def record_many(ctx: ServiceContext, events: Sequence[NewEvent]) -> list[int]:
    """:func:`append_events` for the context's actor at the context's time (MACed with the
    context's audit MAC key when it has one; its ``via`` added to every event's details)."""
    mac = ctx.keys.audit_mac if ctx.keys is not None else None
    if ctx.via is not None:
        events = [(a, t, i, {**(d or {}), "via": ctx.via}) for a, t, i, d in events]
    return append_events(ctx.session, ctx.now(), ctx.actor_name, events, mac=mac)


def record(
    ctx: ServiceContext,
    action: str,
    object_type: str,
    object_id: str,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an event for the context's actor at the context's time (MACed with the
    context's audit MAC key when it has one); the context's ``via`` (local-admin, API
    token) is added to the details."""
    mac = ctx.keys.audit_mac if ctx.keys is not None else None
    if ctx.via is not None:
        details = {**(details or {}), "via": ctx.via}
    return append_event(
        ctx.session, ctx.now(), ctx.actor_name, action, object_type, object_id, details, mac=mac
    )


def record_refusal(ctx: ServiceContext, exc: HubError) -> bool:
    """Record the audit event a refusal carries (``exc.audit``, hub.errors), after the
    caller rolled the refused work back; the caller commits. False: nothing to record."""
    event = exc.audit
    if event is None:
        return False
    record(ctx, event.action, event.target_type, event.target_id,
           {**event.details, "refused": str(exc)[:2000]})
    return True


#: The columns of an event in :data:`hub.audit_chain.EventRow` order.
_ROW_COLUMNS = "seq, at, actor, action, object_type, object_id, details, prev_hash, hash, mac"
#: How each driver's paramstyle writes the one parameter of the keyset query.
_PARAM_MARK = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":1"}


def iter_rows(
    session: Session, after_seq: int = 0, batch: int = BATCH, *, prefetch: bool = False
) -> Iterator[list[Any]]:
    """Stream stored events as lists of up to ``batch`` plain row tuples in
    :data:`hub.audit_chain.EventRow` order (with the MAC), in sequence order (keyset
    pagination), straight from the database driver: no ORM objects, no result rows, no
    type conversion (``at`` comes as the driver gives it: SQLite's stored text, or a
    datetime; :func:`hub.audit_chain.at_text` reads both). A million events cost what the
    driver costs, not several times that (docs/benchmarks.md). ``prefetch``: read the next
    page in a thread while the caller handles this one (the verifier)."""
    conn = session.connection()
    mark = _PARAM_MARK.get(conn.dialect.paramstyle)
    # Constants only: the column list, the driver's placeholder, an int.
    sql = (
        f"SELECT {_ROW_COLUMNS} FROM audit_events WHERE seq > {mark or ':last'} "  # noqa: S608
        f"ORDER BY seq LIMIT {int(batch)}"
    )
    if mark is None:  # a driver this hub does not ship with: through SQLAlchemy
        last = after_seq
        while rows := [tuple(r) for r in session.execute(text(sql), {"last": last})]:
            yield rows
            last = rows[-1][0]
        return
    cursor = conn.connection.cursor()  # the session's own connection and transaction

    def fetch(after: int) -> list[Any]:
        cursor.execute(sql, (after,))
        return list(cursor.fetchall())

    if not prefetch:
        try:
            last = after_seq
            while rows := fetch(last):
                yield rows
                if len(rows) < batch:
                    return
                last = rows[-1][0]
        finally:
            cursor.close()
        return
    # One thread fetches the next page while the caller works on this one (the driver lets
    # go of the GIL while the database reads); only one of the two uses the cursor at a time.
    pool = ThreadPoolExecutor(1, thread_name_prefix="audit-rows")
    pending: Future[list[Any]] | None = pool.submit(fetch, after_seq)
    try:
        while pending is not None:
            rows = pending.result()
            pending = None
            if not rows:
                return
            if len(rows) == batch:
                pending = pool.submit(fetch, rows[-1][0])
            yield rows
    finally:
        if pending is not None:  # the caller stopped early: let the fetch finish first
            with contextlib.suppress(Exception):
                pending.result()
        pool.shutdown(wait=True)
        cursor.close()


def iter_events(session: Session, after_seq: int = 0, batch: int = BATCH) -> Iterator[ChainEvent]:
    """Stream events in sequence order, ``batch`` rows per query (keyset pagination)."""
    for rows in iter_rows(session, after_seq, batch):
        for row in rows:
            yield ChainEvent.from_row(row)


def verify_database(session: Session, keys: HubKeys | None) -> ChainReport:
    """Verify the whole chain and every stored checkpoint (signature and head hash).

    A checkpoint whose signature or stored columns do not match its signed payload is a
    problem in the report, like a bad event. Without ``keys`` checkpoints are not checked.
    This function checks no permission (``hub audit verify`` runs as the operating
    system user); use :func:`verify` from services.
    """
    problems: list[tuple[int, str]] = []
    signed: dict[int, str] = {}
    if keys is not None:
        role = keys.root.role_keys("audit")
        for cp in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)):
            try:
                payload = verify_checkpoint(cp.envelope, role.keys, role.threshold, keys.hub_id)
            except AuditVerificationError as exc:
                problems.append((cp.seq, f"checkpoint {cp.id} at event {cp.seq}: {exc}"))
                continue
            if payload.seq != cp.seq or payload.head_hash != cp.head_hash:
                problems.append(
                    (
                        cp.seq,
                        f"checkpoint {cp.id}: stored seq/head hash ({cp.seq}, {cp.head_hash}) "
                        f"differ from its signed payload ({payload.seq}, {payload.head_hash})",
                    )
                )
            signed[payload.seq] = payload.head_hash
    verifier = ChainVerifier(signed)
    for seq, message in problems:
        verifier.add_problem(seq, "checkpoint", message)
    mac = keys.audit_mac if keys is not None and keys.audit_mac is not None else None
    return _verify_rows(session, verifier, mac or mac_key(session), after_seq=0)


def _verify_rows(
    session: Session, verifier: ChainVerifier, mac: AuditMacKey | None, *, after_seq: int
) -> ChainReport:
    """Feed the events after ``after_seq`` to ``verifier``, check each MAC (with ``mac``)
    and that the head row agrees with the last event; return the report."""
    for rows in iter_rows(session, after_seq, VERIFY_BATCH, prefetch=PREFETCH):
        if mac is not None:
            for seq, wrong in mac.check_rows(rows):
                verifier.add_problem(seq, "mac", wrong)
        verifier.feed_rows(rows)
    report = verifier.finish()
    report.macs_checked = mac is not None
    head_seq, head_hash = session.execute(_READ_HEAD).one()
    last = report.last_seq if report.last_seq is not None else after_seq
    if last > head_seq:
        verifier.add_problem(
            head_seq + 1,
            "appended",
            f"the log goes on past its head (event {head_seq}) to event {last}: rows were "
            "added without the hub",
        )
    elif last < head_seq:
        verifier.add_problem(
            last + 1,
            "missing",
            f"the head says event {head_seq} but the log ends at event {last}: "
            f"events {last + 1} to {head_seq} were removed",
        )
    elif report.events and head_hash != report.head_hash:
        verifier.add_problem(
            head_seq,
            "link",
            f"the head hash {head_hash} is not the hash of event {head_seq} "
            f"({report.head_hash})",
        )
    return report


def verify(ctx: ServiceContext) -> ChainReport:
    """:func:`verify_database` for an auditor.

    Raises:
        PermissionDeniedError.
    """
    from hub.services.users import require

    require(ctx.actor, "audit.verify")
    report = verify_database(ctx.session, ctx.keys)
    try:
        record(ctx, "audit.verify", "audit", "log", {"ok": report.ok, "events": report.events})
    except AuditError:
        ctx.session.rollback()  # rows past the head: the report names them; record nothing
    return report


def write_checkpoint(ctx: ServiceContext) -> AuditCheckpoint:
    """Sign the current head with the audit key and store the checkpoint.

    The checkpoint covers the head *before* its own ``audit.checkpoint`` event.

    Raises:
        PermissionDeniedError; ConfigError when the audit key is not loaded.
    """
    from hub.services.users import require_ctx

    require_ctx(ctx, "audit.checkpoint")
    return _sign_checkpoint(ctx)


def checkpoint_for_export(ctx: ServiceContext, environment: Environment) -> AuditCheckpoint:
    """The checkpoint every exported bundle carries (docs/hub.md): part of exporting, so it
    needs ``bundle.export`` in ``environment`` — an operator of one environment may export
    there without a global ``audit.checkpoint`` grant.

    Raises:
        PermissionDeniedError; ConfigError when the audit key is not loaded.
    """
    from hub.services.users import require_ctx

    require_ctx(ctx, "bundle.export", environment)
    return _sign_checkpoint(ctx)


def _verify_since_last_checkpoint(session: Session, keys: HubKeys) -> None:
    """Verify the chain from the newest checkpoint (its signature first) to the head, every
    MAC included: a checkpoint is signed only over a chain verified since the last one.

    Raises:
        AuditError: naming the problems (up to five, and how many there are).
    """
    last = latest_checkpoint(session)
    start_seq, start_hash = 1, GENESIS_HASH
    if last is not None:
        role = keys.root.role_keys("audit")
        try:
            signed = verify_checkpoint(last.envelope, role.keys, role.threshold, keys.hub_id)
        except AuditVerificationError as exc:
            raise AuditError(
                f"refusing to sign an audit checkpoint: the newest stored checkpoint "
                f"(id {last.id}, event {last.seq}) does not verify: {exc}"
            ) from exc
        if (signed.seq, signed.head_hash) != (last.seq, last.head_hash):
            raise AuditError(
                f"refusing to sign an audit checkpoint: checkpoint {last.id}'s stored event "
                "and hash differ from what it signed"
            )
        start_seq, start_hash = last.seq + 1, last.head_hash
    verifier = ChainVerifier(start_seq=start_seq, start_prev_hash=start_hash)
    mac = keys.audit_mac or mac_key(session)
    report = _verify_rows(session, verifier, mac, after_seq=start_seq - 1)
    if not report.ok:
        since = f"checkpoint at event {start_seq - 1}" if last is not None else "the start"
        shown = "; ".join(p.message for p in report.problems[:5])
        more = report.problem_count - min(5, len(report.problems))
        raise AuditError(
            f"refusing to sign an audit checkpoint: the log since {since} does not verify "
            f"({report.problem_count} problem(s)): {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + " — run `tiangong hub audit verify`"
        )


def _sign_checkpoint(ctx: ServiceContext) -> AuditCheckpoint:
    if ctx.keys is None or ctx.keys.audit_key is None:
        raise ConfigError("the audit key is not loaded; it lives in <data_dir>/keys/audit.key")
    # Lock the head so the signed (seq, hash) is the real head at commit.
    session = ctx.session
    session.execute(_LOCK_HEAD)
    seq, head_hash = session.execute(_READ_HEAD).one()
    _verify_since_last_checkpoint(session, ctx.keys)
    now = ctx.now()
    payload = Checkpoint(ctx.keys.hub_id, seq, head_hash, int(now.timestamp()))
    try:
        envelope = sign_checkpoint(payload, ctx.keys.audit_key)
    except SigningError as exc:
        raise AuditError(f"cannot sign the audit checkpoint: {exc}") from exc
    cp = AuditCheckpoint(seq=seq, head_hash=head_hash, at=now, envelope=envelope)
    session.add(cp)
    session.flush()
    crash_point("hub.checkpoint-signed")
    record(ctx, "audit.checkpoint", "audit", str(seq), {"head_hash": head_hash})
    return cp


@dataclass(frozen=True)
class EventQuery:
    """What an auditor looks for; every field optional, all given ones must match.

    ``since`` is inclusive, ``until`` exclusive; ``before`` is the keyset cursor (events
    with a smaller ``seq``), ``limit`` at most :data:`PAGE_SIZE` × 4.
    """

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = PAGE_SIZE


@dataclass(frozen=True)
class EventPage:
    """Newest first; ``next_before`` is the cursor of the next (older) page, or None."""

    events: list[AuditEvent]
    next_before: int | None


def search_events(ctx: ServiceContext, query: EventQuery) -> EventPage:
    """One page of events matching ``query``, newest first (keyset pagination on ``seq``).

    Raises:
        PermissionDeniedError (auditor or admin: audit.read).
    """
    from hub.services.users import require

    require(ctx.actor, "audit.read")
    limit = max(1, min(query.limit, PAGE_SIZE * 4))
    stmt = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit + 1)
    if query.actor:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.action:
        stmt = stmt.where(AuditEvent.action == query.action)
    if query.object_type:
        stmt = stmt.where(AuditEvent.object_type == query.object_type)
    if query.object_id:
        stmt = stmt.where(AuditEvent.object_id == query.object_id)
    if query.since is not None:
        stmt = stmt.where(AuditEvent.at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEvent.at < query.until)
    if query.before is not None:
        stmt = stmt.where(AuditEvent.seq < query.before)
    rows = list(ctx.session.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(rows, rows[-1].seq if more and rows else None)


def head_seq(session: Session) -> int:
    """The sequence number of the newest event (0 for an empty log)."""
    seq = session.scalar(select(AuditHead.seq).where(AuditHead.id == _HEAD_ID))
    return int(seq or 0)


def latest_checkpoint(session: Session) -> AuditCheckpoint | None:
    """The newest stored checkpoint (export puts it into bundles)."""
    return session.scalar(_LATEST_CHECKPOINT)


#: latest_checkpoint's statement, made once (every export call signs a checkpoint and asks it)
_LATEST_CHECKPOINT = select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)


def export_audit(ctx: ServiceContext, out: IO[bytes]) -> int:
    """Write the log as JSON lines (header with the root, checkpoints, events); returns the
    number of events written. Checkpoint first if you want the export to end at one.

    Raises:
        PermissionDeniedError; ConfigError when the hub's root document is not loaded.
    """
    from hub.services.users import require

    require(ctx.actor, "audit.export")
    if ctx.keys is None:
        raise ConfigError("the hub's root document is needed to export the audit log")
    envelopes = [
        cp.envelope
        for cp in ctx.session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))
    ]
    count = 0

    def counted() -> Iterator[ChainEvent]:
        nonlocal count
        for event in iter_events(ctx.session):
            count += 1
            yield event

    for line in export_lines(ctx.keys.hub_id, ctx.keys.root_envelope, envelopes, counted()):
        out.write(line)
    record(ctx, "audit.export", "audit", "log", {"events": count})
    return count
