"""The pure hash chain: every kind of tampering is found and named (threat 16)."""

from __future__ import annotations

import dataclasses

import pytest

from hub.audit_chain import (
    GENESIS_HASH,
    ChainEvent,
    ChainReport,
    Checkpoint,
    compute_hash,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from hub.errors import AuditVerificationError
from signing.envelope import sign_envelope
from signing.keys import SigningKey


def chain(n: int, start_prev: str = GENESIS_HASH) -> list[ChainEvent]:
    events: list[ChainEvent] = []
    prev = start_prev
    for seq in range(1, n + 1):
        at = f"2026-11-23T09:00:{seq % 60:02d}.000000Z"
        details = {"n": seq}
        digest = compute_hash(seq, at, "alice", "test.act", "thing", str(seq), details, prev)
        events.append(
            ChainEvent(seq, at, "alice", "test.act", "thing", str(seq), details, prev, digest)
        )
        prev = digest
    return events


def rehash(event: ChainEvent, **changes: object) -> ChainEvent:
    changed = dataclasses.replace(event, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(changed, hash=changed.recompute())


def messages(events: list[ChainEvent], checkpoints: dict[int, str] | None = None) -> list[str]:
    return [p.message for p in verify_chain(events, checkpoints).problems]


def test_intact_chain_verifies() -> None:
    events = chain(50)
    report = verify_chain(events, {10: events[9].hash, 50: events[49].hash})
    assert report.ok, report.summary()
    assert report.events == 50 and report.head_hash == events[-1].hash
    assert report.checkpoints_checked == 2
    assert verify_chain([]).ok


def test_edited_event_is_named() -> None:
    events = chain(20)
    events[11] = dataclasses.replace(events[11], actor="mallory")
    (msg,) = messages(events)
    assert msg.startswith(f"event 12 was edited: stored hash {events[11].hash} recomputed ")


def test_edited_and_rehashed_event_is_named() -> None:
    events = chain(20)
    events[11] = rehash(events[11], actor="mallory")
    (msg,) = messages(events)
    assert "event 12 was edited and re-hashed: event 13 links to hash" in msg


@pytest.mark.parametrize("index", [0, 7, 19])
def test_deleted_event_is_named(index: int) -> None:
    events = chain(20)
    del events[index]
    msgs = messages(events)
    if index == 19:
        assert msgs == []  # a deleted tail is truncation: only a checkpoint reveals it
    else:
        assert msgs == [f"event {index + 1} is missing"]


def test_deleted_tail_found_by_checkpoint() -> None:
    events = chain(20)
    cp = {20: events[19].hash}
    (msg,) = messages(events[:17], cp)
    assert "the log ends at event 17 but a signed checkpoint covers event 20" in msg


def test_several_deleted_events() -> None:
    events = chain(20)
    del events[4:8]
    assert messages(events) == ["events 5 to 8 are missing"]


def test_reordered_lines_are_named() -> None:
    events = chain(20)
    events[9], events[10] = events[10], events[9]
    assert messages(events) == ["events 10 and 11 are out of order"]


def test_swapped_sequence_numbers_are_named() -> None:
    events = chain(20)
    a, b = events[9], events[10]
    events[9] = dataclasses.replace(b, seq=10)
    events[10] = dataclasses.replace(a, seq=11)
    assert messages(events) == ["events 10 and 11 are out of order"]


def test_inserted_event_with_renumbering_is_named() -> None:
    events = chain(20)
    forged = ChainEvent(
        5, events[4].at, "mallory", "test.act", "thing", "x", {}, events[3].hash, ""
    )
    forged = dataclasses.replace(forged, hash=forged.recompute())
    shifted = [dataclasses.replace(e, seq=e.seq + 1) for e in events[4:]]
    tampered = [*events[:4], forged, *shifted]
    assert messages(tampered) == ["event 5 was inserted: event 6 links past it to event 4"]


def test_duplicated_event_is_named() -> None:
    events = chain(10)
    events.insert(6, events[5])
    assert messages(events) == ["event 6 appears twice"]


def test_rewritten_history_found_by_checkpoint() -> None:
    events = chain(10)
    signed = {8: events[7].hash}
    # Rewrite event 3 and re-hash everything after it: the chain is consistent again…
    rewritten = events[:2]
    prev = events[1].hash
    for e in events[2:]:
        e2 = rehash(e, prev_hash=prev, actor="mallory" if e.seq == 3 else e.actor)
        rewritten.append(e2)
        prev = e2.hash
    assert messages(rewritten) == []
    # …but not with the signed checkpoint.
    (msg,) = messages(rewritten, signed)
    assert "event 8 does not match the signed checkpoint" in msg


def test_problem_list_is_bounded() -> None:
    events = [dataclasses.replace(e, actor="x") for e in chain(300)]
    report = verify_chain(events)
    assert report.problem_count == 300 and len(report.problems) == 100
    assert "and 200 more" in report.summary()


def test_checkpoint_signature() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    cp = Checkpoint("hub-1", 42, "ab" * 32, 1_700_000_000)
    env = sign_checkpoint(cp, key)
    keys = {key.key_id: key.public}
    assert verify_checkpoint(env, keys, 1, "hub-1") == cp
    with pytest.raises(AuditVerificationError, match="signature does not verify"):
        verify_checkpoint(sign_checkpoint(cp, other), keys, 1)
    with pytest.raises(AuditVerificationError, match="signature does not verify"):
        verify_checkpoint(sign_envelope("application/other", cp.to_bytes(), [key]), keys, 1)
    tampered = env.replace(env[40:60], bytes(reversed(env[40:60])))
    with pytest.raises(AuditVerificationError):
        verify_checkpoint(tampered, keys, 1)
    with pytest.raises(AuditVerificationError, match="for hub 'hub-1'"):
        verify_checkpoint(env, keys, 1, "hub-2")


@pytest.mark.parametrize(
    "details",
    [{}, {"a": 1, "b": [1, "x"]}, {"ü": "日本", "z": {"nested": None, "t": True}}, {"q": '"\\'}],
)
def test_raw_hash_equals_canonical_hash(details: dict[str, object]) -> None:
    from hub.audit_chain import compute_hash_raw
    from signing.strictjson import dumps_canonical

    args = (7, "2026-11-23T09:00:00.000000Z", "al\u00efce", "a.b", "t", "id 1", GENESIS_HASH)
    text = dumps_canonical(details).decode("utf-8")
    assert compute_hash_raw(*args[:6], text, args[6]) == compute_hash(*args[:6], details, args[6])
    # Stored text that means the same but is not canonical does not hash the same.
    assert (
        compute_hash_raw(*args[:6], text.replace(":", ": "), args[6])
        != compute_hash(*args[:6], details, args[6])
        or ":" not in text
    )


@pytest.mark.parametrize(
    "scalar",
    [
        'quote " back \\ slash',
        "ctl \x00\x01\x1f\x7f tab\t nl\n",
        "\u2028\u2029 é 日本 \U0001f600",
        "",
    ],
)
def test_raw_hash_fast_path_quotes_like_json(scalar: str) -> None:
    """compute_hash_raw builds the body by hand for str fields and an int seq (verify's hot
    path); it must give the bytes json.dumps(sort_keys, ensure_ascii=False) gives."""
    import hashlib
    import json

    from hub.audit_chain import compute_hash_raw

    def by_json(seq: object, *fields: object) -> str:
        at, actor, action, otype, oid, prev = fields
        body = json.dumps(
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "object_type": otype,
                "object_id": oid,
                "details": {"k": 1},
                "prev_hash": prev,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    fields = ("2026-11-23T09:00:00.000000Z", scalar, "a.b", scalar, "id " + scalar, GENESIS_HASH)
    assert compute_hash_raw(12, *fields[:5], '{"k":1}', fields[5]) == by_json(12, *fields)
    # Values the hand-built body does not cover take json's general path: a bool seq is
    # ``true`` (not 1), a None actor is ``null``.
    assert compute_hash_raw(True, *fields[:5], '{"k":1}', fields[5]) == by_json(True, *fields)
    odd = (fields[0], None, *fields[2:])
    assert compute_hash_raw(12, *odd[:5], '{"k":1}', odd[5]) == by_json(12, *odd)


def test_format_at_same_text_for_naive_utc_and_other_zones() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from hub.audit_chain import format_at

    naive = datetime(2026, 11, 23, 9, 0, 0, 5)
    want = "2026-11-23T09:00:00.000005Z"
    assert format_at(naive) == want
    assert format_at(naive.replace(tzinfo=UTC)) == want
    plus8 = naive.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=8)))
    assert format_at(plus8) == want


# --- the batch path (feed_rows) finds exactly what feed finds -----------------------------


def _rows(events: list[ChainEvent]) -> list[tuple[object, ...]]:
    """Events as a database row holds them: SQLite's text for ``at``, canonical details."""
    from signing.strictjson import dumps_canonical

    rows: list[tuple[object, ...]] = []
    for e in events:
        at = e.at.replace("T", " ").rstrip("Z") if e.at.endswith("Z") else e.at
        details = dumps_canonical(dict(e.details or {})).decode() if e.details is not None else None
        rows.append((e.seq, at, e.actor, e.action, e.object_type, e.object_id,
                     e.details_text if e.details_text is not None else details,
                     e.prev_hash, e.hash, None))
    return rows


def _both_ways(
    rows: list[tuple[object, ...]], checkpoints: dict[int, str], split: int
) -> tuple[ChainReport, ChainReport]:
    from hub.audit_chain import ChainVerifier

    one = ChainVerifier(checkpoints)
    for row in rows:
        one.feed(ChainEvent.from_row(row))
    batched = ChainVerifier(checkpoints)
    for i in range(0, len(rows), split):
        batched.feed_rows(rows[i : i + split])
    return one.finish(), batched.finish()


def _same(a: ChainReport, b: ChainReport) -> None:
    assert (a.events, a.first_seq, a.last_seq, a.head_hash, a.checkpoints_checked) == (
        b.events, b.first_seq, b.last_seq, b.head_hash, b.checkpoints_checked
    )
    assert a.problems == b.problems and a.problem_count == b.problem_count


def _tampered(kind: str, events: list[ChainEvent], at: int) -> list[ChainEvent]:
    events = list(events)
    if kind == "edit":
        events[at] = dataclasses.replace(events[at], actor="mallory")
    elif kind == "rehash":
        events[at] = rehash(events[at], object_id="forged")
    elif kind == "delete":
        del events[at]
    elif kind == "swap" and at + 1 < len(events):
        events[at], events[at + 1] = events[at + 1], events[at]
    elif kind == "renumber-swap" and at + 1 < len(events):
        a, b = events[at], events[at + 1]
        events[at] = dataclasses.replace(b, seq=a.seq)
        events[at + 1] = dataclasses.replace(a, seq=b.seq)
    elif kind == "duplicate":
        events.insert(at, events[at])
    elif kind == "insert":
        forged = rehash(events[at], actor="mallory", prev_hash=events[at - 1].hash if at else
                        GENESIS_HASH)
        events.insert(at, forged)
        events[at + 1 :] = [dataclasses.replace(e, seq=e.seq + 1) for e in events[at + 1 :]]
    elif kind == "null-actor":
        events[at] = dataclasses.replace(events[at], actor=None)  # type: ignore[arg-type]
    elif kind == "odd-at":
        events[at] = dataclasses.replace(events[at], at="yesterday")
    elif kind == "bool-seq":
        events[at] = dataclasses.replace(events[at], seq=True)  # type: ignore[arg-type]
    return events


KINDS = ("edit", "rehash", "delete", "swap", "renumber-swap", "duplicate", "insert",
         "null-actor", "odd-at", "bool-seq")


@pytest.mark.parametrize("kind", KINDS)
def test_feed_rows_finds_what_feed_finds(kind: str) -> None:
    """Every tampering, at the start, in the middle and at the end, with checkpoints before
    and after it, fed in batches cut everywhere (1, 2, 3, 5 rows and all at once)."""
    events = chain(30)
    checkpoints = {5: events[4].hash, 25: events[24].hash}
    for at in (0, 1, 4, 5, 14, 28, 29):
        rows = _rows(_tampered(kind, events, at))
        for split in (1, 2, 3, 5, 64):
            one, batched = _both_ways(rows, checkpoints, split)
            _same(one, batched)
    # The untampered chain: the fast path takes every event and finds nothing.
    one, batched = _both_ways(_rows(events), checkpoints, 7)
    _same(one, batched)
    assert batched.ok and batched.events == 30 and batched.checkpoints_checked == 2


def test_feed_rows_random_tampering_matches_feed() -> None:
    """Two or three tamperings at random places (fixed seed), 300 times."""
    import random

    rng = random.Random(15)
    events = chain(40)
    checkpoints = {10: events[9].hash, 40: events[39].hash}
    for _ in range(300):
        tampered = events
        for _ in range(rng.randint(2, 3)):
            tampered = _tampered(rng.choice(KINDS), tampered, rng.randrange(len(tampered) - 1))
        rows = _rows(tampered)
        one, batched = _both_ways(rows, checkpoints, rng.choice((1, 4, 9, 100)))
        _same(one, batched)


def test_at_text_reads_what_databases_return() -> None:
    from datetime import UTC, datetime

    from hub.audit_chain import at_text

    want = "2026-11-23T09:00:00.000005Z"
    assert at_text("2026-11-23 09:00:00.000005") == want  # SQLite's stored text
    assert at_text(datetime(2026, 11, 23, 9, 0, 0, 5)) == want  # PostgreSQL, MariaDB
    assert at_text(datetime(2026, 11, 23, 9, 0, 0, 5, tzinfo=UTC)) == want
    assert at_text("2026-11-23 09:00:00") == "2026-11-23T09:00:00.000000Z"  # by hand
    assert at_text("yesterday") == "yesterday"  # hashed as it is: the event fails, named
