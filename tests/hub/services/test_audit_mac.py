"""The audit log cannot be extended by whoever can write the database (issue 9 §1): every
event carries a MAC made with a key the database does not hold; ``audit verify`` names every
inconsistency instead of crashing; a checkpoint is signed only over a chain verified since
the last one (so an export no longer signs over a forged event)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from hub.audit_chain import compute_hash_raw, format_at
from hub.audit_mac import AuditMacKey
from hub.db import AuditCheckpoint, AuditEvent, AuditHead
from hub.errors import AuditError
from hub.services import audit
from hub.services.context import ServiceContext
from tests.hub.conftest import World


@pytest.fixture(autouse=True)
def _mac(world: World) -> None:
    """The hub got its key after the fixture's first events (as an older hub would)."""
    head = world.session.scalar(select(AuditHead.seq)) or 0
    world.mac = AuditMacKey(bytes(range(32)), from_seq=head + 1)  # type: ignore[attr-defined]


def _ctx(world: World, user: str = "aud") -> ServiceContext:
    ctx = world.ctx(user)
    assert ctx.keys is not None
    mac = world.mac  # type: ignore[attr-defined]
    return dataclasses.replace(ctx, keys=dataclasses.replace(ctx.keys, audit_mac=mac))


def _fill(world: World, n: int = 5) -> None:
    for i in range(n):
        world.clock.advance(1)
        audit.record(_ctx(world, "op"), "test.act", "thing", str(i), {"i": i})
    world.session.commit()


def _forge(world: World, seq: int, *, move_head: bool) -> None:
    """What someone with only database access can do: a row with a correct hash (and,
    if ``move_head``, the head row moved to it)."""
    prev = world.session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq - 1))
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    details = '{"release":"x"}'
    digest = compute_hash_raw(seq, format_at(at), "mallory", "release.approve", "release",
                              "x", details, str(prev))
    world.session.execute(
        text("INSERT INTO audit_events (seq, at, actor, action, object_type, object_id, "
             "details, prev_hash, hash) VALUES (:seq, :at, 'mallory', 'release.approve', "
             "'release', 'x', :d, :prev, :hash)"),
        {"seq": seq, "at": at.replace(tzinfo=None), "d": details, "prev": prev,
         "hash": digest})
    if move_head:
        world.session.execute(text("UPDATE audit_head SET seq = :s, hash = :h"),
                              {"s": seq, "h": digest})
    world.session.commit()


def _state(world: World) -> tuple[int, int, int]:
    s = world.session
    return (s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
            s.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0,
            s.scalar(select(AuditHead.seq)) or 0)


def test_events_carry_macs_and_verify(world: World) -> None:
    _fill(world)
    report = audit.verify_database(world.session, _ctx(world).keys)
    assert report.ok, report.summary()
    assert report.macs_checked and "every event's MAC verified" in report.summary()
    macs = world.session.scalars(
        select(AuditEvent.mac).where(AuditEvent.actor == "op")).all()
    assert len(macs) == 5 and all(m and len(m) == 64 for m in macs)


def test_forged_event_with_a_correct_hash_is_named_and_never_checkpointed(
    world: World,
) -> None:
    _fill(world)
    audit.write_checkpoint(_ctx(world))
    world.session.commit()
    head = world.session.scalar(select(AuditHead.seq))
    _forge(world, head + 1, move_head=True)
    report = audit.verify_database(world.session, _ctx(world).keys)
    assert [p.message for p in report.problems] == [
        f"event {head + 1} carries no MAC: it was written without the hub's audit key "
        "(directly into the database?)"]
    before = _state(world)
    with pytest.raises(AuditError, match=rf"refusing to sign .* event {head + 1} carries no MAC"):
        audit.write_checkpoint(_ctx(world))
    world.session.rollback()
    assert _state(world) == before  # no checkpoint, no event


def test_row_past_the_head_is_named_and_writes_fail_clearly(world: World) -> None:
    """A row with the next sequence number, the head left alone: every later append would
    collide with it (a raw IntegrityError before)."""
    _fill(world)
    head = world.session.scalar(select(AuditHead.seq))
    _forge(world, head + 1, move_head=False)
    before = _state(world)
    with pytest.raises(AuditError, match=rf"event\(s\) {head + 1}..{head + 1} after its head"):
        audit.record(_ctx(world, "op"), "test.act", "thing", "late", {})
    world.session.rollback()
    report = audit.verify(_ctx(world))  # records nothing, names everything, does not raise
    world.session.commit()
    assert [p.message for p in report.problems] == [
        f"event {head + 1} carries no MAC: it was written without the hub's audit key "
        "(directly into the database?)",
        f"the log goes on past its head (event {head}) to event {head + 1}: rows were added "
        "without the hub",
    ]
    assert _state(world) == before


def test_every_kind_of_tampering_is_named_at_once(world: World) -> None:
    b = world.mac.from_seq  # type: ignore[attr-defined]
    _fill(world, 8)
    s = world.session
    s.execute(text("UPDATE audit_events SET details = :d WHERE seq = :s"),
              {"d": '{"i":99}', "s": b + 1})
    s.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": b + 3})
    s.execute(text("UPDATE audit_events SET mac = :m WHERE seq = :s"), {"m": "0" * 64, "s": b + 5})
    s.commit()
    head = s.scalar(select(AuditHead.seq))
    _forge(world, head + 1, move_head=False)
    report = audit.verify_database(s, _ctx(world).keys)
    kinds = [(p.seq, p.kind) for p in report.problems]
    assert (b + 1, "edited") in kinds and (b + 3, "missing") in kinds
    assert (b + 5, "mac") in kinds
    assert (head + 1, "mac") in kinds and (head + 1, "appended") in kinds
    assert report.problem_count == len(kinds) == 5, report.summary()


def test_a_process_without_the_key_cannot_append_after_maced_events(world: World) -> None:
    """A process that opened the database without the hub's keys (a script, a bench, a
    misconfigured worker) is refused at its first write, instead of writing an unMACed
    event that would make every later checkpoint — and so every export — fail."""
    _fill(world)
    before = _state(world)
    plain = world.ctx("op")
    assert plain.keys is None or plain.keys.audit_mac is None
    with pytest.raises(AuditError, match=r"no audit MAC key .* MACed up to event"):
        audit.record(plain, "test.act", "thing", "late", {})
    world.session.rollback()
    assert _state(world) == before
    assert audit.verify_database(world.session, _ctx(world).keys).ok


def test_append_events_writes_what_one_by_one_appends_write(world: World) -> None:
    """The batched append (one executemany) gives every event exactly the sequence, hash,
    chain and MAC that appending them one at a time gives: the same log either way, and
    `audit verify` checks it; with the head held, a savepoint rolls a batch back too."""
    _fill(world, 2)
    events = [("test.batch", "thing", str(i), {"i": i}) for i in range(4)]
    ctx = _ctx(world, "op")
    head = world.session.scalar(select(AuditHead.seq)) or 0
    one_by_one = [audit.record(ctx, *e) for e in events]
    expected = [(e.seq, e.prev_hash, e.hash, e.mac) for e in one_by_one]
    world.session.rollback()
    assert audit.record_many(ctx, events) == [head + 1, head + 2, head + 3, head + 4]
    world.session.commit()
    rows = world.session.execute(
        select(AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.mac)
        .where(AuditEvent.seq > head).order_by(AuditEvent.seq)).all()
    assert [tuple(r) for r in rows] == expected
    with audit.held_head(world.session) as held:
        audit.record_many(ctx, events[:1])
        with pytest.raises(RuntimeError), held.savepoint():
            audit.record_many(ctx, events[1:])
            raise RuntimeError("item failed")
        audit.record_many(ctx, events[3:])
    world.session.commit()
    assert world.session.scalar(select(AuditHead.seq)) == head + 6
    report = audit.verify_database(world.session, ctx.keys)
    assert report.ok and report.macs_checked, report.summary()


def test_append_events_refuses_a_bad_batch_whole(world: World) -> None:
    _fill(world, 1)
    before = _state(world)
    with pytest.raises(AuditError, match=r"test\.bad: details are not strict JSON"):
        audit.record_many(_ctx(world, "op"), [("test.ok", "thing", "1", {}),
                                              ("test.bad", "thing", "2", {"f": 1.5})])
    world.session.rollback()
    assert _state(world) == before


@pytest.mark.parametrize("key_len", [32, 64, 65, 100])
def test_check_rows_is_the_same_mac(key_len: int) -> None:
    """check_rows computes HMAC from precomputed pad states: the very MAC mac() makes, for
    keys shorter than, equal to and longer than SHA-256's block; every wrong one is named."""
    key = AuditMacKey(bytes((7 * i + key_len) % 256 for i in range(key_len)), from_seq=3)
    hashes = [f"{n:064x}" for n in range(40)]
    good = [(seq, *[""] * 7, h, key.mac(seq, h)) for seq, h in enumerate(hashes, start=1)]
    assert list(key.check_rows(good)) == []
    bad = list(good)
    bad[5] = (*bad[5][:9], key.mac(6, hashes[0]))  # another event's MAC
    bad[9] = (*bad[9][:9], None)
    bad[12] = (*bad[12][:8], "é" * 64, bad[12][9])  # a hash that is not ASCII
    bad[1] = (*bad[1][:9], None)  # before from_seq: not checked
    found = list(key.check_rows(bad))
    assert [seq for seq, _ in found] == [6, 10, 13]
    assert "does not match" in found[0][1] and "carries no MAC" in found[1][1]
