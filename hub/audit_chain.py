"""The audit log's hash chain and signed checkpoints, as pure functions (threat 16).

Each event's hash is the SHA-256 of the canonical JSON (``signing.strictjson``) of::

    {"seq", "at", "actor", "action", "object_type", "object_id", "details", "prev_hash"}

``prev_hash`` is the previous event's hash, :data:`GENESIS_HASH` (64 zeros) for event 1.
A checkpoint ``{type, hub_id, seq, head_hash, at}`` is signed with the hub's *audit* key in
a DSSE envelope of payload type :data:`TYPE_AUDIT_CHECKPOINT`.

:class:`ChainVerifier` walks events one at a time (bounded memory: a window of
:data:`WINDOW` recent events) and names what it finds: an edited, deleted, inserted,
duplicated or reordered event, a link that does not match, a checkpoint that does not match
or that covers events the log no longer has (truncation). The export format (JSON lines:
a header, the signed checkpoints, then the events) is verified by :func:`verify_export_lines`.

This module deliberately imports neither Flask nor SQLAlchemy and does no I/O: the hub's
database verifier and the offline ``tiangong audit verify-export`` both feed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hub.errors import AuditVerificationError
from signing.envelope import sign_envelope, verify_envelope
from signing.errors import SigningError, StrictJSONError
from signing.keys import PublicKey, SigningKey
from signing.roots import TrustedRoot
from signing.strictjson import dumps_canonical, loads_strict

__all__ = [
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "MAX_EXPORT_LINE_BYTES",
    "MAX_PROBLEMS",
    "TYPE_AUDIT_CHECKPOINT",
    "WINDOW",
    "ChainEvent",
    "ChainReport",
    "ChainVerifier",
    "Checkpoint",
    "EventRow",
    "Problem",
    "at_text",
    "compute_hash",
    "compute_hash_raw",
    "format_at",
    "sign_checkpoint",
    "verify_chain",
    "verify_checkpoint",
    "verify_export_lines",
]

GENESIS_HASH = "0" * 64
TYPE_AUDIT_CHECKPOINT = "application/vnd.tiangong.audit-checkpoint.v1+json"
EXPORT_FORMAT = "tiangong/audit-export"
EXPORT_VERSION = 1
MAX_EXPORT_LINE_BYTES = 1024 * 1024  # bytes per JSON line of an export
MAX_CHECKPOINT_BYTES = 16 * 1024  # bytes per checkpoint envelope
MAX_PROBLEMS = 100  # problems kept in a report (the count goes on)
WINDOW = 16  # recent events remembered, and how far a renumbered event is searched for

_EVENT_FIELDS = frozenset(
    {"seq", "at", "actor", "action", "object_type", "object_id", "details", "prev_hash", "hash"}
)


def format_at(dt: datetime) -> str:
    """The one text form of an event time: UTC, microseconds, ``Z`` (naive means UTC)."""
    if dt.tzinfo is not None and dt.tzinfo is not UTC:  # UTC itself: same wall clock
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def at_text(value: object) -> str:
    """An event time as a database returns it, in :func:`format_at` form: a datetime, or
    (SQLite) the text ``YYYY-MM-DD HH:MM:SS[.ffffff]`` the column stores. Text that is no
    time is returned as it is (the event's hash then fails: it is reported, not raised)."""
    if isinstance(value, datetime):
        return format_at(value)
    text = str(value)
    if len(text) == 26 and text[10] == " " and text[19] == ".":  # what the hub writes
        return f"{text[:10]}T{text[11:]}Z"
    try:
        return format_at(datetime.fromisoformat(text))
    except ValueError:
        return text


#: One stored event as :meth:`ChainVerifier.feed_rows` takes it: ``(seq, at, actor, action,
#: object_type, object_id, details_text, prev_hash, hash, ...)``, ``at`` as :func:`at_text`
#: takes it; further items (the MAC) are ignored.
EventRow = Sequence[Any]


def compute_hash(
    seq: int,
    at: str,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """Hex SHA-256 of the canonical JSON of one event's fields (see the module docstring)."""
    body = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(dumps_canonical(body)).hexdigest()


_quote = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) quotes str with


def _scalars(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash_raw(
    seq: int,
    at: str,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details_text: str,
    prev_hash: str,
) -> str:
    """:func:`compute_hash` with ``details`` given as its canonical JSON text (as the
    database stores it): the same bytes are hashed without parsing and re-serialising.
    Keys in canonical order: action, actor, at, details, object_id, object_type, prev_hash,
    seq."""
    body = None
    if type(seq) is int and type(details_text) is str:  # a bool seq: json writes ``true``
        # The common case, without building two dicts and sorting their keys per event
        # (verify runs this once per event): ``_quote`` is the very string encoder
        # ``json.dumps(..., ensure_ascii=False)`` uses, so the bytes are identical. It
        # refuses anything but a str; such a value takes the general path below.
        try:
            body = (
                f'{{"action":{_quote(action)},"actor":{_quote(actor)},"at":{_quote(at)},'
                f'"details":{details_text},"object_id":{_quote(object_id)},'
                f'"object_type":{_quote(object_type)},"prev_hash":{_quote(prev_hash)},'
                f'"seq":{int.__repr__(seq)}}}'
            )
        except TypeError:
            body = None
    if body is None:
        head = _scalars({"action": action, "actor": actor, "at": at})
        tail = _scalars(
            {"object_id": object_id, "object_type": object_type, "prev_hash": prev_hash, "seq": seq}
        )
        body = head[:-1] + ',"details":' + details_text + "," + tail[1:]
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainEvent:
    """One audit event as stored or exported (``at`` already in :func:`format_at` form)."""

    seq: int
    at: str
    actor: str
    action: str
    object_type: str
    object_id: str
    details: Mapping[str, Any] | None
    prev_hash: str
    hash: str
    #: the canonical JSON text of ``details`` as stored (database rows); hashed as is
    details_text: str | None = field(default=None, compare=False)
    #: the hub's MAC of the event (database rows only; an export carries none)
    mac: str | None = field(default=None, compare=False)

    def recompute(self, seq: int | None = None) -> str:
        """The hash these fields give (optionally as if the event had sequence ``seq``)."""
        if self.details_text is not None:
            return compute_hash_raw(
                self.seq if seq is None else seq,
                self.at,
                self.actor,
                self.action,
                self.object_type,
                self.object_id,
                self.details_text,
                self.prev_hash,
            )
        return compute_hash(
            self.seq if seq is None else seq,
            self.at,
            self.actor,
            self.action,
            self.object_type,
            self.object_id,
            self.details or {},
            self.prev_hash,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "details": self.details_object(),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def details_object(self) -> dict[str, Any]:
        """The details as an object (parsed from ``details_text`` when that is set; text that
        is not a strict JSON object is kept under ``__unparseable__`` so an export still
        shows it and its hash still fails)."""
        if self.details is not None:
            return dict(self.details)
        text = self.details_text or "{}"
        try:
            parsed = loads_strict(text.encode("utf-8"), MAX_EXPORT_LINE_BYTES)
        except StrictJSONError:
            return {"__unparseable__": text[:200]}
        return parsed if isinstance(parsed, dict) else {"__not_an_object__": text[:200]}

    @classmethod
    def from_row(cls, row: EventRow) -> ChainEvent:
        """The event a stored row holds (see :data:`EventRow`; a tenth item is the MAC)."""
        return cls(
            row[0],
            at_text(row[1]),
            row[2],
            row[3],
            row[4],
            row[5],
            None,
            row[7],
            row[8],
            details_text=row[6],
            mac=row[9] if len(row) > 9 else None,
        )

    @classmethod
    def from_json(cls, doc: object) -> ChainEvent:
        """Raises AuditVerificationError when ``doc`` is not an event object."""
        if not isinstance(doc, dict) or set(doc) != _EVENT_FIELDS:
            raise AuditVerificationError(
                f"an audit event must have exactly the fields {sorted(_EVENT_FIELDS)}"
            )
        seq = doc["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise AuditVerificationError("an audit event's seq must be a positive integer")
        for name in ("at", "actor", "action", "object_type", "object_id", "prev_hash", "hash"):
            if not isinstance(doc[name], str):
                raise AuditVerificationError(f"audit event {seq}: {name} must be a string")
        if not isinstance(doc["details"], dict):
            raise AuditVerificationError(f"audit event {seq}: details must be an object")
        return cls(
            seq,
            doc["at"],
            doc["actor"],
            doc["action"],
            doc["object_type"],
            doc["object_id"],
            doc["details"],
            doc["prev_hash"],
            doc["hash"],
        )


@dataclass(frozen=True)
class Problem:
    """One finding of the verifier; ``seq`` is the (stored) event it is about."""

    seq: int
    kind: str  # edited | missing | inserted | duplicate | out-of-order | link | checkpoint
    message: str


@dataclass
class ChainReport:
    """What a verification found. ``ok`` when no problem was found."""

    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str = GENESIS_HASH
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    checkpoints_checked: int = 0
    #: every event's MAC was checked with the hub's audit MAC key (None: not applicable)
    macs_checked: bool | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self) -> str:
        if self.ok:
            macs = {
                True: ", every event's MAC verified",
                False: " (event MACs NOT checked: the hub's audit MAC key is not loaded)",
                None: "",
            }[self.macs_checked]
            return (
                f"audit log verified: {self.events} events, head {self.last_seq or 0} "
                f"{self.head_hash}, {self.checkpoints_checked} checkpoint(s) match{macs}"
            )
        more = self.problem_count - len(self.problems)
        lines = [f"audit log does NOT verify: {self.problem_count} problem(s)"]
        lines += [f"  {p.message}" for p in self.problems]
        if more > 0:
            lines.append(f"  … and {more} more")
        return "\n".join(lines)


@dataclass
class _Accepted:
    stored_seq: int
    orig_seq: int
    hash: str


class ChainVerifier:
    """Streaming verifier: :meth:`feed` events in stored order, then :meth:`finish`.

    Args:
        checkpoints: signed head hashes by sequence (already signature-checked).
        start_seq / start_prev_hash: where the chain is expected to begin (a partial
            verification can start after a checkpoint).
    """

    def __init__(
        self,
        checkpoints: Mapping[int, str] | None = None,
        *,
        start_seq: int = 1,
        start_prev_hash: str = GENESIS_HASH,
    ) -> None:
        self.report = ChainReport()
        self._checkpoints = dict(checkpoints or {})
        self._expected = start_seq
        self._last_hash = start_prev_hash
        self._recent: deque[_Accepted] = deque(maxlen=WINDOW)
        self._pending: ChainEvent | None = None
        self._pending_orig: int | None = None
        self._skip_link = False

    # --- public -------------------------------------------------------------------------

    def feed(self, event: ChainEvent) -> None:
        """Add the next event in stored order (a one-event lookahead detects swaps)."""
        if self._pending is None:
            self._pending, self._pending_orig = event, self._locate(event)
            return
        current, orig = self._pending, self._pending_orig
        nxt_orig = self._locate(event)
        if orig is not None and orig == self._expected + 1 and nxt_orig == self._expected:
            first, second = sorted((current.seq, event.seq))
            self.add_problem(first, "out-of-order", f"events {first} and {second} are out of order")
            self._accept(event, nxt_orig, check_link=True)
            self._skip_link = False
            self._accept(current, orig, check_link=True)
            self._pending = self._pending_orig = None
            return
        self._process(current, orig)
        self._pending, self._pending_orig = event, nxt_orig

    def finish(self) -> ChainReport:
        """Process the last event and the checkpoints past the end; return the report."""
        if self._pending is not None:
            self._process(self._pending, self._pending_orig)
            self._pending = None
        last = self.report.last_seq or 0
        for seq in sorted(self._checkpoints):
            if seq > last:
                self.add_problem(
                    seq,
                    "checkpoint",
                    f"the log ends at event {last} but a signed checkpoint covers event {seq}: "
                    f"events {last + 1} to {seq} were removed (log truncated)",
                )
        return self.report

    def feed_rows(self, rows: Sequence[EventRow]) -> None:
        """:meth:`feed` for a batch of stored rows (see :data:`EventRow`), with the same
        findings as feeding each row's :class:`ChainEvent` in turn — but the common case,
        an event that carries the expected sequence number, links to the previous hash, has
        no checkpoint and hashes to its stored hash, is checked without building an object
        per event: the canonical bytes are laid out exactly as :func:`compute_hash_raw`
        lays them out and hashed once. Any other event takes :meth:`feed`."""
        quote = _quote
        sha256 = hashlib.sha256
        checkpoints = self._checkpoints
        report = self.report
        n = len(rows)
        i = 0
        while i < n:
            if self._pending is not None:
                if self._pending_orig != self._expected:
                    # It may be half of a swap: only the next event can tell.
                    self.feed(ChainEvent.from_row(rows[i]))
                    i += 1
                    continue
                # In order: no later event can change how it is judged (see feed).
                self._process(self._pending, self._pending_orig)
                self._pending = self._pending_orig = None
            expected, last = self._expected, self._last_hash
            start = i
            try:
                while i < n:
                    row = rows[i]
                    seq, at, actor, action, otype, oid, details, prev, digest = row[:9]
                    if (
                        seq != expected
                        or prev != last
                        or type(seq) is not int
                        or type(details) is not str
                        or seq in checkpoints
                    ):
                        break
                    if type(at) is str and len(at) == 26 and at[10] == " " and at[19] == ".":
                        at = f"{at[:10]}T{at[11:]}Z"
                    else:
                        at = at_text(at)
                    body = (
                        f'{{"action":{quote(action)},"actor":{quote(actor)},"at":{quote(at)},'
                        f'"details":{details},"object_id":{quote(oid)},'
                        f'"object_type":{quote(otype)},"prev_hash":{quote(prev)},'
                        f'"seq":{int.__repr__(seq)}}}'
                    )
                    if sha256(body.encode("utf-8")).hexdigest() != digest:
                        break
                    expected, last = seq + 1, digest
                    i += 1
            except TypeError:  # a NULL or other odd column: the general path names it
                pass
            if i > start:
                first = rows[start][0]
                self._expected, self._last_hash = expected, last
                self._skip_link = False
                report.events += i - start
                if report.first_seq is None:
                    report.first_seq = first
                report.last_seq = expected - 1
                report.head_hash = last
                recent = self._recent
                for row in rows[max(start, i - WINDOW) : i]:
                    recent.append(_Accepted(row[0], row[0], row[8]))
            if i < n:
                self.feed(ChainEvent.from_row(rows[i]))
                i += 1

    # --- internals ----------------------------------------------------------------------

    def _locate(self, event: ChainEvent) -> int | None:
        """The sequence number the event was hashed with (its own, or a nearby one when
        rows were renumbered), or None when its content or hash was edited."""
        try:
            if event.recompute() == event.hash:
                return event.seq
            for delta in range(1, WINDOW + 1):
                for seq in (event.seq - delta, event.seq + delta):
                    if seq >= 1 and event.recompute(seq) == event.hash:
                        return seq
        except StrictJSONError:
            return None
        return None

    def add_problem(self, seq: int, kind: str, message: str) -> None:
        """Record a finding (callers add checkpoint problems found outside the chain)."""
        self.report.problem_count += 1
        if len(self.report.problems) < MAX_PROBLEMS:
            self.report.problems.append(Problem(seq, kind, message))

    def _process(self, event: ChainEvent, orig: int | None) -> None:
        if orig is None:
            try:
                recomputed = event.recompute()
            except StrictJSONError:
                recomputed = "(details are not strict JSON)"
            self.add_problem(
                event.seq,
                "edited",
                f"event {event.seq} was edited: stored hash {event.hash} recomputed {recomputed}",
            )
            self._account_seq(event, event.seq)
            self._remember(event, event.seq)
            self._skip_link = True  # its successor's link is not a second finding
            return
        if orig > self._expected:
            first, last = self._expected, orig - 1
            if first == last:
                self.add_problem(first, "missing", f"event {first} is missing")
            else:
                self.add_problem(first, "missing", f"events {first} to {last} are missing")
            self._expected = orig
            self._skip_link = True
        elif orig < self._expected:
            linked = self._linked_index(event.prev_hash)
            if any(a.hash == event.hash for a in self._recent):
                self.add_problem(event.seq, "duplicate", f"event {event.seq} appears twice")
                return
            if linked is not None and self._recent[linked].orig_seq == orig - 1:
                inserted = [a.stored_seq for a in list(self._recent)[linked + 1 :]]
                names = ", ".join(str(s) for s in inserted)
                noun = "event" if len(inserted) == 1 else "events"
                verb = "was" if len(inserted) == 1 else "were"
                self.add_problem(
                    inserted[0] if inserted else event.seq,
                    "inserted",
                    f"{noun} {names} {verb} inserted: event {event.seq} links past "
                    f"{'it' if len(inserted) == 1 else 'them'} to event "
                    f"{self._recent[linked].stored_seq}",
                )
                # Forget the inserted events; the chain continues from the genuine one.
                for _ in inserted:
                    self._recent.pop()
                self._last_hash = self._recent[-1].hash if self._recent else self._last_hash
                self._expected = orig
            else:
                self.add_problem(
                    event.seq,
                    "out-of-order",
                    f"event {event.seq} is out of order (expected event {self._expected})",
                )
                return
        self._accept(event, orig, check_link=True)

    def _linked_index(self, prev_hash: str) -> int | None:
        for i in range(len(self._recent) - 1, -1, -1):
            if self._recent[i].hash == prev_hash:
                return i
        return None

    def _accept(self, event: ChainEvent, orig: int, *, check_link: bool) -> None:
        if check_link and not self._skip_link and event.prev_hash != self._last_hash:
            linked = self._linked_index(event.prev_hash)
            if linked is not None and linked < len(self._recent) - 1:
                inserted = [a.stored_seq for a in list(self._recent)[linked + 1 :]]
                names = ", ".join(str(s) for s in inserted)
                self.add_problem(
                    inserted[0],
                    "inserted",
                    f"event(s) {names} inserted: event {event.seq} links to event "
                    f"{self._recent[linked].stored_seq}",
                )
            else:
                before = self._recent[-1].stored_seq if self._recent else None
                who = f"event {before} was edited and re-hashed" if before else "chain start"
                self.add_problem(
                    event.seq,
                    "link",
                    f"{who}: event {event.seq} links to hash {event.prev_hash} "
                    f"but the previous event hashes to {self._last_hash}",
                )
        self._skip_link = False
        self._account_seq(event, orig)
        self._remember(event, orig)

    def _account_seq(self, event: ChainEvent, orig: int) -> None:
        self._expected = max(self._expected, orig + 1)
        report = self.report
        report.events += 1
        if report.first_seq is None:
            report.first_seq = event.seq
        report.last_seq = event.seq
        report.head_hash = event.hash
        signed = self._checkpoints.get(event.seq)
        if signed is not None:
            if signed == event.hash:
                report.checkpoints_checked += 1
            else:
                self.add_problem(
                    event.seq,
                    "checkpoint",
                    f"event {event.seq} does not match the signed checkpoint: checkpoint head "
                    f"hash {signed}, log has {event.hash} (history before it was rewritten)",
                )

    def _remember(self, event: ChainEvent, orig: int) -> None:
        self._recent.append(_Accepted(event.seq, orig, event.hash))
        self._last_hash = event.hash


def verify_chain(
    events: Iterable[ChainEvent], checkpoints: Mapping[int, str] | None = None
) -> ChainReport:
    """Verify a whole chain from event 1, streaming. Never raises for bad data: the report
    names every problem (up to :data:`MAX_PROBLEMS`)."""
    verifier = ChainVerifier(checkpoints)
    for event in events:
        verifier.feed(event)
    return verifier.finish()


# --- checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "after event ``seq`` the head hash was ``head_hash``"."""

    hub_id: str
    seq: int
    head_hash: str
    at: int  # Unix seconds

    def to_bytes(self) -> bytes:
        return dumps_canonical(
            {
                "type": "tiangong/audit-checkpoint",
                "hub_id": self.hub_id,
                "seq": self.seq,
                "head_hash": self.head_hash,
                "at": self.at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Raises AuditVerificationError for anything but a well-formed checkpoint."""
        try:
            doc = loads_strict(data, MAX_CHECKPOINT_BYTES)
        except StrictJSONError as exc:
            raise AuditVerificationError(f"checkpoint is not strict JSON: {exc}") from exc
        if not isinstance(doc, dict) or set(doc) != {"type", "hub_id", "seq", "head_hash", "at"}:
            raise AuditVerificationError("checkpoint has missing or unknown fields")
        if doc["type"] != "tiangong/audit-checkpoint":
            raise AuditVerificationError("checkpoint type is not tiangong/audit-checkpoint")
        for name in ("seq", "at"):
            value = doc[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AuditVerificationError(f"checkpoint {name} must be a non-negative integer")
        if not isinstance(doc["hub_id"], str) or not isinstance(doc["head_hash"], str):
            raise AuditVerificationError("checkpoint hub_id and head_hash must be strings")
        return cls(doc["hub_id"], doc["seq"], doc["head_hash"], doc["at"])


def sign_checkpoint(checkpoint: Checkpoint, audit_key: SigningKey) -> bytes:
    """The canonical envelope bytes of ``checkpoint`` signed with the audit key."""
    return sign_envelope(TYPE_AUDIT_CHECKPOINT, checkpoint.to_bytes(), [audit_key])


def verify_checkpoint(
    envelope: bytes,
    audit_keys: Mapping[str, PublicKey],
    threshold: int,
    hub_id: str | None = None,
) -> Checkpoint:
    """Verify a checkpoint envelope against the audit role's keys, then parse it.

    Raises:
        AuditVerificationError: bad signature, wrong payload type, malformed, other hub.
    """
    try:
        verified = verify_envelope(
            envelope,
            payload_type=TYPE_AUDIT_CHECKPOINT,
            trusted=audit_keys,
            threshold=threshold,
            max_bytes=MAX_CHECKPOINT_BYTES,
        )
    except SigningError as exc:
        raise AuditVerificationError(f"checkpoint signature does not verify: {exc}") from exc
    checkpoint = Checkpoint.from_bytes(verified.payload)
    if hub_id is not None and checkpoint.hub_id != hub_id:
        raise AuditVerificationError(
            f"checkpoint is for hub {checkpoint.hub_id!r}, expected {hub_id!r}"
        )
    return checkpoint


# --- export -----------------------------------------------------------------------------


def export_header(hub_id: str, root_envelope: bytes | None) -> dict[str, Any]:
    """First line of an export."""
    header: dict[str, Any] = {
        "type": "header",
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "hub_id": hub_id,
    }
    if root_envelope is not None:
        header["root"] = base64.b64encode(root_envelope).decode("ascii")
    return header


def export_lines(
    hub_id: str,
    root_envelope: bytes | None,
    checkpoint_envelopes: Iterable[bytes],
    events: Iterable[ChainEvent],
) -> Iterator[bytes]:
    """Yield the export's lines (each canonical JSON + ``\\n``): header, checkpoints, events."""
    yield dumps_canonical(export_header(hub_id, root_envelope)) + b"\n"
    for env in checkpoint_envelopes:
        line = {"type": "checkpoint", "envelope": base64.b64encode(env).decode("ascii")}
        yield dumps_canonical(line) + b"\n"
    for event in events:
        yield dumps_canonical({"type": "event", **event.to_json()}) + b"\n"


def _parse_line(raw: bytes, number: int) -> dict[str, Any]:
    try:
        doc = loads_strict(raw.rstrip(b"\n"), MAX_EXPORT_LINE_BYTES)
    except StrictJSONError as exc:
        raise AuditVerificationError(f"line {number}: not strict JSON: {exc}") from exc
    if not isinstance(doc, dict) or "type" not in doc:
        raise AuditVerificationError(f"line {number}: expected an object with a type")
    return doc


def verify_export_lines(lines: Iterable[bytes], trusted: TrustedRoot) -> ChainReport:
    """Verify an export read line by line, offline, against the hub's root document.

    The audit key comes from the root's ``audit`` role. Checkpoints must all verify
    (a bad one raises); the chain is verified with :class:`ChainVerifier`.

    Raises:
        AuditVerificationError: malformed file, a line over :data:`MAX_EXPORT_LINE_BYTES`,
            another hub's export, or a checkpoint whose signature does not verify.
    """
    audit = trusted.document.role_keys("audit")
    hub_id = trusted.document.hub_id
    checkpoints: dict[int, str] = {}
    verifier: ChainVerifier | None = None
    number = 0
    for raw in lines:
        number += 1
        if len(raw) > MAX_EXPORT_LINE_BYTES + 1:
            raise AuditVerificationError(
                f"line {number} is {len(raw)} bytes, over the limit of {MAX_EXPORT_LINE_BYTES}"
            )
        doc = _parse_line(raw, number)
        kind = doc["type"]
        if number == 1:
            if kind != "header" or doc.get("format") != EXPORT_FORMAT:
                raise AuditVerificationError("line 1 is not a tiangong audit export header")
            if doc.get("hub_id") != hub_id:
                raise AuditVerificationError(
                    f"export is from hub {doc.get('hub_id')!r} but the trusted root is for "
                    f"hub {hub_id!r}"
                )
            continue
        if kind == "checkpoint":
            if verifier is not None:
                raise AuditVerificationError(f"line {number}: checkpoint after the events")
            env_text = doc.get("envelope")
            try:
                env = base64.b64decode(str(env_text), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise AuditVerificationError(f"line {number}: checkpoint is not base64") from exc
            try:
                cp = verify_checkpoint(env, audit.keys, audit.threshold, hub_id)
            except AuditVerificationError as exc:
                raise AuditVerificationError(f"line {number}: {exc}") from exc
            checkpoints[cp.seq] = cp.head_hash
        elif kind == "event":
            if verifier is None:
                verifier = ChainVerifier(checkpoints)
            body = {k: v for k, v in doc.items() if k != "type"}
            verifier.feed(ChainEvent.from_json(body))
        else:
            raise AuditVerificationError(f"line {number}: unknown line type {str(kind)[:40]!r}")
    if number == 0:
        raise AuditVerificationError("the export is empty")
    if verifier is None:
        verifier = ChainVerifier(checkpoints)
    return verifier.finish()
