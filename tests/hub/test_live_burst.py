"""A rollout burst always completes (issue 15: a burst to 9,000 live agents stalled).

Why it stalled, read from the push loop: an export that failed *after* it had claimed a
deployment left it ``exporting`` — released (claim cleared) after a file error such as
``EMFILE`` ("too many open files", likely with 9,000 sockets open), or still claimed by the
live process itself after a database error (SQLite "database is locked" under the burst's
writes). The push loop asked only for ``queued`` work and a claim of a running process is
never taken over, so while the agents stayed connected nothing looked at those deployments
again, and the hub went idle. Now the push loop also counts released ``exporting`` work
(:func:`hub.services.presence.live_work`) and releases its own claims after a database
error (:meth:`hub.live_hub.LiveHub._release_claims`): the next export resumes them.

The test: 200 protocol-level agents on one real live server (a SQLite file), one rollout for
all of them in one commit, while exports fail now and then — every tenth bundle write with
``EMFILE``, one record with a database error. Every deployment must end ``delivered``, each
once. Nothing is timed: the wait has a deadline.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from websockets.asyncio.client import connect

from bundle.sync import MAX_MESSAGE_BYTES, AgentSide, OfferReceived, Welcomed
from hub import live_hub
from hub.db import Agent as AgentRow
from hub.db import AuditEvent, Deployment, make_session_factory
from hub.errors import PermissionDeniedError
from hub.live import LiveHub, start_live
from hub.live_guard import LiveLimits
from hub.services import export as export_service
from hub.services.agents import EnrollmentRequest, enroll_agent
from hub.services.audit import verify_database
from hub.services.deployments import mark_delivered_many, queue_deployment
from hub.services.presence import LiveWork
from signing import fileio
from signing.keys import BoxKeyPair, SigningKey
from tests.e2e import test_live as e2e_live
from tests.e2e.conftest import wait_for
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _approved_release

AGENTS = 200  # a few hundred: enough for exports to queue up behind each other
DEADLINE = 240.0  # seconds for the whole burst on a shared 2-core machine
file_world = e2e_live.file_world  # the fixture: the hub World on a SQLite file


class BurstAgent:
    """Connects, authenticates, and answers every offer with ``have-it`` (the bytes are not
    what this test is about: exports, offers and the delivered bookkeeping are)."""

    def __init__(self, agent_id: str, key: SigningKey, hub_id: str) -> None:
        self.conn = AgentSide(agent_id, hub_id, key)
        self.offers: list[str] = []
        self.ws: Any = None

    async def run(self, url: str, welcomed: asyncio.Event) -> None:
        async with connect(url, compression=None, max_size=MAX_MESSAGE_BYTES) as ws:
            self.ws = ws
            self.conn.send_hello()
            await self.flush()
            async for message in ws:
                assert isinstance(message, bytes)
                self.conn.receive_data(message)
                for event in self.conn.events_received():
                    if isinstance(event, Welcomed):
                        welcomed.set()
                    elif isinstance(event, OfferReceived):
                        self.offers.append(event.offer.name)
                        self.conn.send_cancel(event.offer.transfer, "hub", "have-it",
                                              "already here")
                await self.flush()

    async def flush(self) -> None:
        for message in self.conn.data_to_send():
            await self.ws.send(message)


def _states(world: World) -> Counter[str]:
    world.session.rollback()
    states = Counter(world.session.scalars(select(Deployment.state)))
    world.session.rollback()
    return states


def test_a_burst_to_hundreds_of_agents_completes_although_exports_fail_now_and_then(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = file_world
    keys = [SigningKey.generate() for _ in range(AGENTS)]
    ids = [f"burst-{i:03d}" for i in range(AGENTS)]
    op = world.ctx("op")
    for agent_id, key in zip(ids, keys, strict=True):
        enroll_agent(op, "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=key.public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()
    release = _approved_release(world)

    # Faults after the claim: every tenth bundle write runs out of file descriptors, and one
    # record of a written bundle meets a database error.
    monkeypatch.setattr(live_hub, "EXPORT_RETRY_SECONDS", 0.2)  # retries sooner than 60 s
    monkeypatch.setattr(live_hub, "BURST_POLL_SECONDS", 0.2)  # and a burst's polls, than 5 s
    writes = Counter[str]()
    write, record = export_service._Run._write, export_service._Run._record_one
    record_batch = export_service._Run._record_batch

    def failing_write(self: Any, dep: Any, intent: Any, *args: Any, **kwargs: Any) -> Any:
        writes["write"] += 1
        if writes["write"] % 10 == 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return write(self, dep, intent, *args, **kwargs)

    def failing_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        writes["record"] += 1
        if writes["record"] == 7:
            raise OperationalError("UPDATE deployments …", {}, Exception("database is locked"))
        return record(self, *args, **kwargs)

    def failing_record_batch(self: Any, written: Any, *args: Any) -> Any:
        writes["batches"] += 1
        if writes["batches"] == 2:
            raise OperationalError("UPDATE deployments …", {}, Exception("database is locked"))
        if writes["batches"] == 4:  # a bug: its claims are released all the same
            raise RuntimeError("unexpected")
        writes["record"] += len(written)
        return record_batch(self, written, *args)

    monkeypatch.setattr(export_service._Run, "_write", failing_write)
    monkeypatch.setattr(export_service._Run, "_record_one", failing_record)
    monkeypatch.setattr(export_service._Run, "_record_batch", failing_record_batch)

    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock, poll_interval=0.05,
                  # The agents here send no heartbeats: on a loaded machine the burst may
                  # outlast three default intervals (90 s), and being closed for silence is
                  # not what this test is about.
                  heartbeat=3600,
                  limits=LiveLimits(max_unauthenticated_per_address=AGENTS,
                                    max_unauthenticated=AGENTS))
    server = start_live(hub, "127.0.0.1", 0, allow_insecure_loopback=True)
    agents = [BurstAgent(agent_id, key, world.keys.hub.hub_id)
              for agent_id, key in zip(ids, keys, strict=True)]

    async def scenario() -> None:
        welcomed = [asyncio.Event() for _ in agents]
        url = f"ws://127.0.0.1:{server.port}/live"
        tasks = [asyncio.create_task(a.run(url, w)) for a, w in zip(agents, welcomed,
                                                                     strict=True)]
        try:
            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(*(w.wait() for w in welcomed))
            queue_deployment(world.ctx("op"), release, "test")  # the burst: one commit
            world.session.commit()
            await asyncio.to_thread(
                wait_for, lambda: _states(world) == Counter({"delivered": AGENTS}), DEADLINE,
                f"all {AGENTS} deployments to be delivered", interval_s=0.5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert writes["write"] > AGENTS and writes["record"] >= AGENTS  # the faults happened
    world.session.rollback()
    failed = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "bundle.export_failed")).all()
    assert len(failed) >= AGENTS // 10
    delivered = Counter(e.object_id for e in world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "deployment.delivered")))
    assert len(delivered) == AGENTS and set(delivered.values()) == {1}  # each once
    assert all(len(a.offers) >= 1 for a in agents)


def _burst_gc_hub() -> LiveHub:
    """A LiveHub with only what _push_burst and _release_gc keep (no bursts, nothing held)."""
    hub = object.__new__(LiveHub)
    hub._bursts = 0
    hub._gc_held = False
    hub._gc_release = None
    return hub


def test_the_heap_alive_at_a_bursts_start_is_left_out_of_garbage_collection_until_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frozen (gc.freeze) from the first of overlapping bursts until GC_SETTLE_SECONDS after
    the end of the last, also when one fails; not before. Meanwhile the youngest
    generation's threshold is BURST_GC_YOUNG and no full collection runs (BURST_GC_FULL). A
    burst starting within the settle time keeps it all held (the release is put off to its
    end); then the thresholds are the process's own again and nothing is frozen."""
    from hub.live_hub import BURST_GC_FULL, BURST_GC_YOUNG, GC_SETTLE_SECONDS

    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    raised = (BURST_GC_YOUNG, before[1], BURST_GC_FULL)
    seen: list[tuple[int, tuple[int, ...]]] = []

    async def held(self: LiveHub, due: list[Any]) -> None:
        seen.append((gc.get_freeze_count(), gc.get_threshold()))
        await asyncio.sleep(0)
        if due[0][0] == "fails":
            raise OSError("the burst's export failed")
        seen.append((gc.get_freeze_count(), gc.get_threshold()))

    monkeypatch.setattr(LiveHub, "_push_burst_held", held)
    hub = _burst_gc_hub()

    async def bursts() -> None:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(hub._push_burst([("a", (1, 1))]),
                                       hub._push_burst([("fails", (1, 2))]),
                                       return_exceptions=True)
        assert isinstance(results[1], OSError) and hub._bursts == 0
        # the last transfers may still run: held a while longer
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == raised
        release = hub._gc_release
        assert release is not None
        assert release.when() - loop.time() == pytest.approx(GC_SETTLE_SECONDS, abs=1.0)
        # another burst within the settle time: the release waits for its end
        await hub._push_burst([("b", (2, 1))])
        assert release.cancelled() and hub._gc_release is not None
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == raised
        hub._release_gc()  # what the timer calls
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
        assert hub._gc_release is None and not hub._gc_held

    try:
        asyncio.run(bursts())
        assert len(seen) == 5 and all(n > 0 for n, _ in seen)
        assert {t for _, t in seen} == {raised}
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_shutdown_gives_the_collector_back_what_a_running_burst_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop ending with a burst under way (its task cancelled later) or within the
    settle time: LiveHub.shutdown's release gives the thresholds and the heap back at once
    (an in-process hub, as the tests run, left them raised and frozen)."""
    before = gc.get_threshold()
    hub = _burst_gc_hub()
    started = asyncio.Event()

    async def held(self: LiveHub, due: list[Any]) -> None:
        started.set()
        await asyncio.Event().wait()  # runs until cancelled

    monkeypatch.setattr(LiveHub, "_push_burst_held", held)

    async def main() -> None:
        burst = asyncio.create_task(hub._push_burst([("a", (1, 1))]))
        await started.wait()
        assert gc.get_freeze_count() > 0 and hub._bursts == 1
        hub._release_gc(force=True)  # as shutdown() does first
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
        burst.cancel()
        with pytest.raises(asyncio.CancelledError):
            await burst
        hub._release_gc()  # the settle timer the cancelled burst set: nothing left to do
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_cancelled_burst_gives_the_collector_back_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst cancelled while it waits (hub live stopping), alone or while another one
    runs on: the heap stays frozen and BURST_GC_YOUNG in force until the last one ended and
    the settle time passed (its timer, _release_gc), then it is unfrozen with the process's
    own thresholds."""
    from hub.live_hub import BURST_GC_YOUNG

    before = gc.get_threshold()
    started = 0
    both = asyncio.Event()

    async def held(self: LiveHub, due: list[Any]) -> None:
        nonlocal started
        started += 1
        if started == 2:
            both.set()
        await asyncio.Event().wait()  # until cancelled

    monkeypatch.setattr(LiveHub, "_push_burst_held", held)
    hub = _burst_gc_hub()

    async def bursts() -> None:
        first = asyncio.create_task(hub._push_burst([("a", (1, 1))]))
        second = asyncio.create_task(hub._push_burst([("b", (1, 2))]))
        await asyncio.wait_for(both.wait(), 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == BURST_GC_YOUNG
        assert hub._gc_release is None
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert hub._bursts == 0 and hub._gc_release is not None
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == BURST_GC_YOUNG
        hub._release_gc()  # what the timer calls
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before

    try:
        asyncio.run(bursts())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_burst_is_cut_into_growing_export_calls_that_cover_every_agent() -> None:
    """The pipeline's export calls (hub.live_hub._burst_sizes): a few agents first, so the
    first bundles leave early, then a share of those left, from LIVE_EXPORT_BATCH up to one
    export batch (EXPORT_BATCH), so a large burst pays a call's fixed cost less often while
    its last calls stay small; every agent exactly once."""
    assert list(live_hub._burst_sizes(0)) == []
    assert list(live_hub._burst_sizes(3)) == [3]
    first = list(live_hub.BURST_STEPS)
    for count in (1000, 10_000):
        sizes = list(live_hub._burst_sizes(count))
        assert sizes[:len(first)] == first and first == sorted(first)
        rest = sizes[len(first):]
        least, most = live_hub.LIVE_EXPORT_BATCH, export_service.EXPORT_BATCH
        assert all(least <= s <= most for s in rest[:-1])
        assert rest[:-1] == sorted(rest[:-1], reverse=True)  # large first, small last
        assert 0 < rest[-1] <= live_hub.LIVE_EXPORT_BATCH
        assert rest[-2] == live_hub.LIVE_EXPORT_BATCH
    # 10,000 agents: most calls take a whole export batch, not LIVE_EXPORT_BATCH
    assert list(live_hub._burst_sizes(10_000)).count(export_service.EXPORT_BATCH) > 40
    for count in (1, 5, 6, 74, 75, 76, 175, 176, 9_999):
        sizes = list(live_hub._burst_sizes(count))
        assert sum(sizes) == count and all(s > 0 for s in sizes)


def test_delivered_bundles_are_recorded_as_one_batch_whatever_its_size(
        file_world: World, tmp_path: Path) -> None:
    """LiveHub._mark_delivered: each confirmed bundle moves its deployment ``exported →
    delivered`` once, with its ``live.delivered`` event (a bundle whose deployment moved on
    meanwhile keeps its state; a file no deployment was exported into, like a preflight
    plan's, is recorded against the agent), and the batch's SQL statements do not grow
    with the number of bundles (a burst's confirmations came one transaction each)."""
    world = file_world
    ids = [f"batch-{i}" for i in range(6)]
    op = world.ctx("op")
    for agent_id in ids:
        enroll_agent(op, "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    world.session.commit()
    engine = world.session.get_bind()
    hub = LiveHub(session_factory=make_session_factory(engine),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock)
    assert hub._export_many(ids) == {agent_id: (1, 0) for agent_id in ids}
    names = {agent_id: next((hub.spool_root / agent_id).glob("*.tgb")).name
             for agent_id in ids}
    world.session.rollback()
    moved_on = world.session.scalars(select(Deployment).join(Deployment.agent).where(
        Deployment.agent.has(agent_id=ids[0]))).one()
    moved_on.state = "succeeded"  # its result came by media before the live confirmation
    world.session.commit()

    statements: list[int] = []

    def count(*_: Any) -> None:
        statements[-1] += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        statements.append(0)
        hub._mark_delivered([(ids[1], names[ids[1]], "received")])
        statements.append(0)
        hub._mark_delivered([(agent_id, names[agent_id], "received") for agent_id in ids[2:]]
                            + [(ids[0], names[ids[0]], "have-it"),
                               (ids[0], "preflight-plan.tgb", "received")])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements[1] <= statements[0] + 1  # the odd name is looked up alone
    assert _states(world) == Counter({"delivered": len(ids) - 1, "succeeded": 1})
    world.session.rollback()
    events = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action.in_(["live.delivered", "deployment.delivered"]))).all()
    delivered = Counter(e.object_id for e in events if e.action == "deployment.delivered")
    assert len(delivered) == len(ids) - 1 and set(delivered.values()) == {1}
    live = {(e.object_type, json.loads(e.details)["file"]): json.loads(e.details)
            for e in events if e.action == "live.delivered"}
    assert len(live) == len(ids) + 1
    assert live[("deployment", names[ids[0]])]["state"] == "succeeded"
    assert live[("agent", "preflight-plan.tgb")]["state"] is None
    # The events are what transition() appended one by one: a deployment's own event right
    # before its live.delivered, in a chain that verifies; delivered_at is set.
    order = [(e.action, e.object_id) for e in sorted(events, key=lambda e: e.seq)]
    for i, (action, object_id) in enumerate(order):
        if action == "deployment.delivered":
            assert order[i + 1] == ("live.delivered", object_id)
    assert verify_database(world.session, world.keys.hub).ok
    assert all(d.delivered_at is not None for d in world.session.scalars(
        select(Deployment).where(Deployment.state == "delivered")))


def test_confirmations_arriving_together_are_recorded_in_one_batch_timed_at_their_arrival(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirmations gather for DELIVERED_GATHER_SECONDS before their batch is recorded (a
    batch costs the same few ms whatever its size): three confirmed one after another are
    one transaction, and the push-latency metric counts each to its confirmation, not to
    the later commit."""
    world = file_world
    ids = [f"gather-{i}" for i in range(3)]
    for agent_id in ids:
        enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    world.session.commit()
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock)
    assert hub._export_many(ids) == {agent_id: (1, 0) for agent_id in ids}
    batches: list[int] = []
    mark = hub._mark_delivered

    def counted(items: list[tuple[str, str, str]], at: Any = None) -> None:
        batches.append(len(items))
        mark(items, at)

    monkeypatch.setattr(hub, "_mark_delivered", counted)

    async def confirm() -> None:
        world.clock.advance(2)  # queued at 09:00:00, confirmed at 09:00:02
        for agent_id in ids:
            name = next((hub.spool_root / agent_id).glob("*.tgb")).name
            hub._delivered.append((agent_id, name, "received", world.clock()))
            hub._record_delivered_soon()
            await asyncio.sleep(0)
        world.clock.advance(10)  # recorded later: not what the metric counts
        assert hub._recording is not None
        await hub._recording

    asyncio.run(confirm())
    assert batches == [3] and not hub._delivered
    assert _states(world) == Counter({"delivered": 3})
    registry = hub.metrics.registry
    assert registry.get_sample_value("tiangong_live_push_latency_seconds_count") == 3
    assert registry.get_sample_value("tiangong_live_push_latency_seconds_sum") == 6.0


def _exported_deployment(world: World, agent_id: str) -> Deployment:
    """A deployment of an approved release to a new agent ``agent_id`` of ``test``, set
    ``exported`` and committed (the state mark_delivered_many moves on)."""
    enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
        hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
        x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
        environment="test", hub_id=world.keys.hub.hub_id))
    (dep,) = queue_deployment(world.ctx("op"), _approved_release(world), "test")
    dep.state = "exported"
    world.session.commit()
    return dep


def test_delivered_bundles_of_an_actor_without_export_change_nothing(
        file_world: World, tmp_path: Path) -> None:
    """mark_delivered_many checks bundle.export in each environment before it writes: a
    viewer is refused, and no deployment, no audit event changes."""
    world = file_world
    dep = _exported_deployment(world, "deny-1")
    head = world.session.scalar(select(func.max(AuditEvent.seq)))
    ctx = world.ctx("view")
    with pytest.raises(PermissionDeniedError, match=r"bundle\.export"):
        mark_delivered_many(ctx, [(dep.id, dep.environment)])
    world.session.rollback()
    assert world.session.get(Deployment, dep.id).state == "exported"  # type: ignore[union-attr]
    assert world.session.scalar(select(func.max(AuditEvent.seq))) == head


def test_a_deployment_the_session_holds_shows_what_mark_delivered_many_wrote(
        file_world: World) -> None:
    """The UPDATE is Core: an object the session holds is given the written values (state,
    updated_at, delivered_at where it had none), the same as the row read afresh."""
    world = file_world
    dep = _exported_deployment(world, "held-d")
    assert dep.delivered_at is None  # loaded, and held by the session
    mark_delivered_many(world.ctx("op"), [(dep.id, dep.environment)])
    held = (dep.state, dep.updated_at, dep.delivered_at)
    world.session.commit()
    world.session.expire(dep)
    assert held == (dep.state, dep.updated_at, dep.delivered_at)
    assert held[0] == "delivered" and held[2] is not None


def test_claims_of_an_export_worker_are_released_after_its_database_error(
        file_world: World, tmp_path: Path) -> None:
    """A worker process (hub.live_exports) claims under its own token: after its call failed
    on a database error, the push loop releases the claims of that token on the agent's
    deployments (the next export resumes them) — and none of another process."""
    world = file_world
    op = world.ctx("op")
    for agent_id in ("held-1", "held-2"):
        enroll_agent(op, "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()
    mine, other = "vm:4242:123", "elsewhere:7:1"
    deps = queue_deployment(world.ctx("op"), _approved_release(world), "test")
    for dep, token in zip(sorted(deps, key=lambda d: d.agent_id or 0), (mine, other),
                          strict=True):
        dep.state, dep.claimed_by = "exporting", token
    world.session.commit()

    class Workers:
        def __init__(self) -> None:
            self.tokens = {mine}

    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock, export_workers=Workers())  # type: ignore[arg-type]
    hub._unclaim.update({"held-1", "held-2"})
    asyncio.run(hub._release_claims())
    assert not hub._unclaim
    with hub._session() as session:
        claims = {agent_id: (state, token) for agent_id, state, token in session.execute(
            select(AgentRow.agent_id, Deployment.state, Deployment.claimed_by)
            .join(AgentRow, Deployment.agent_id == AgentRow.id))}
    assert claims == {"held-1": ("exporting", None), "held-2": ("exporting", other)}


def test_delivered_bundles_whose_spool_cannot_be_synced_are_recorded_in_a_later_round(
        file_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool directory a delivered bundle left for ``sent/`` cannot be fsynced (EIO):
    the OSError escaped LiveHub._record_delivered, whose task died with the batch already
    taken off the list, so the deployment stayed ``exported`` for good (its file in
    ``sent/`` is never offered again). Now the batch waits for the next round, nothing
    recorded meanwhile, and is recorded once the directory syncs."""
    world = file_world
    agent_id = "sync-fails"
    _exported_deployment(world, agent_id).state = "queued"
    world.session.commit()
    hub = LiveHub(session_factory=make_session_factory(world.session.get_bind()),  # type: ignore[arg-type]
                  keys=world.keys.hub, data_dir=tmp_path / "hubdata", actor="op",
                  clock=world.clock)
    assert hub._export_many([agent_id]) == {agent_id: (1, 0)}
    spooled = next((hub.spool_root / agent_id).glob("*.tgb"))
    assert (spooled.parent / "sent").is_dir()  # made by the export
    spooled.rename(spooled.parent / "sent" / spooled.name)  # as LiveHub._sent moves it
    head = world.session.scalar(select(func.max(AuditEvent.seq)))

    def eio(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(directory))

    monkeypatch.setattr(live_hub, "fsync_dir", eio)
    confirmed = (agent_id, spooled.name, "received", world.clock())
    hub._delivered.append(confirmed)
    asyncio.run(hub._record_delivered())
    assert hub._delivered == [confirmed]
    assert _states(world) == Counter({"exported": 1})
    assert world.session.scalar(select(func.max(AuditEvent.seq))) == head
    monkeypatch.setattr(live_hub, "fsync_dir", fileio.fsync_dir)
    asyncio.run(hub._record_delivered())
    assert hub._delivered == []
    assert _states(world) == Counter({"delivered": 1})


def test_the_live_sides_sync_directories_as_every_other_writer_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live server and the agent's live client had their own directory fsync, which
    failed on a file system that cannot fsync a directory (EINVAL, vfat on some kernels):
    the hub's delivered records then waited for good, the agent's received bundle never
    reached RECEIVED. They use signing.fileio.fsync_dir, which tolerates that, like every
    other writer; any other error is still raised."""
    import os

    from agent import live as agent_live

    real = os.fsync

    def einval(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", einval)
    live_hub.fsync_dir(tmp_path)
    agent_live.fsync_dir(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(
        OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match="Input/output error"):
        live_hub.fsync_dir(tmp_path)


def test_a_batch_of_delivered_bundles_syncs_its_spools_by_one_syncfs_from_eight_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From SYNCFS_FROM spool directories, one syncfs per file system
    (signing.fileio.syncfs_each) instead of an fsync each; fewer, or syncfs unavailable or
    failing, an fsync each (its error names the directory; one that is gone is skipped)."""
    synced: list[list[str]] = []
    fsynced: list[str] = []
    answer = [True]

    def syncfs_each(paths: list[Path]) -> bool:
        synced.append([str(p) for p in paths])
        return answer[0]

    def fsync_dir(directory: Path) -> None:
        if not directory.exists():
            raise FileNotFoundError(errno.ENOENT, "gone", str(directory))
        fsynced.append(str(directory))

    monkeypatch.setattr(live_hub, "syncfs_each", syncfs_each)
    monkeypatch.setattr(live_hub, "fsync_dir", fsync_dir)
    dirs = [tmp_path / f"a{i}" for i in range(live_hub.SYNCFS_FROM)]
    for d in dirs[1:]:
        d.mkdir()
    LiveHub._sync_spools(dirs)
    assert synced == [[str(d) for d in dirs]] and fsynced == []
    LiveHub._sync_spools(dirs[1:])  # one fewer than SYNCFS_FROM
    assert len(synced) == 1 and fsynced == [str(d) for d in dirs[1:]]
    answer[0] = False  # syncfs unavailable, failed, or dirs[0] gone: an fsync each
    fsynced.clear()
    LiveHub._sync_spools(dirs)
    assert len(synced) == 2 and fsynced == [str(d) for d in dirs[1:]]

    def eio(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(live_hub, "fsync_dir", eio)
    with pytest.raises(OSError, match="Input/output error") as raised:
        LiveHub._sync_spools(dirs)
    assert raised.value.filename == str(dirs[0])


def test_polls_during_a_burst_look_only_for_work_newer_than_any_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll reads all queued work; while a burst runs, polls ask only for deployments newer
    than the newest a poll saw, and keep the failed exports they do not see (the first
    poll after the burst reads everything again)."""
    class Keys:
        hub_id = "hub-test"

    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=Keys(), data_dir=tmp_path, actor=None)  # type: ignore[arg-type]
    asked: list[int | None] = []
    answer = [LiveWork("a", "enrolled", 2, 7), LiveWork("b", "enrolled", 1, 5)]

    def live_work(agent_ids: Any, busy: set[str], after: int | None = None) -> list[LiveWork]:
        asked.append(after)
        return answer

    monkeypatch.setattr(hub, "_live_work", live_work)
    monkeypatch.setattr(hub, "_spawn", lambda coro: coro.close())
    hub._export_failed["c"] = ((1, 3), 0.0)  # failed earlier; its work is not new
    asyncio.run(hub.poll_once())
    assert asked == [None] and hub._seen_work == 7
    assert "c" not in hub._export_failed  # a full poll: c has no work any more
    hub._export_failed["c"] = ((1, 3), 0.0)
    hub._bursts = 1
    answer = [LiveWork("d", "enrolled", 1, 9)]
    asyncio.run(hub.poll_once())
    assert asked == [None, 7] and hub._seen_work == 9
    assert "c" in hub._export_failed  # not seen by a poll that only looks for newer work
    hub._bursts = 0
    answer = []
    asyncio.run(hub.poll_once())
    assert asked == [None, 7, None] and "c" not in hub._export_failed


def test_a_poll_that_finds_nothing_to_push_starts_no_burst(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll without work spawns nothing: an empty burst froze and unfroze the GC at every
    poll (four times a second on SQLite), moving each young object into the oldest
    generation, so cyclic garbage of a quiet hub was never collected."""
    class Keys:
        hub_id = "hub-test"

    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=Keys(), data_dir=tmp_path, actor=None)  # type: ignore[arg-type]
    spawned: list[str] = []

    def spawn(coro: Any) -> None:
        spawned.append(coro.__qualname__)
        coro.close()

    monkeypatch.setattr(hub, "_live_work", lambda *a, **k: [])
    monkeypatch.setattr(hub, "_spawn", spawn)
    asyncio.run(hub.poll_once())
    assert spawned == [] and hub._bursts == 0 and gc.get_freeze_count() == 0


def test_the_poll_that_starts_a_burst_runs_no_full_collection_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poll runs with a burst's collector thresholds (a full collection of a 10,000-agent
    heap, 0.5-0.9 s, fell between a rollout's commit and its first export); the burst it
    starts takes them over with the thresholds never given back in between; a poll that
    starts no burst (nothing to do, one push, a failed query) gives them back at once."""
    from hub.live_hub import BURST_GC_FULL, BURST_GC_YOUNG

    class Keys:
        hub_id = "hub-test"

    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=Keys(), data_dir=tmp_path, actor=None)  # type: ignore[arg-type]
    before = gc.get_threshold()
    raised = (BURST_GC_YOUNG, before[1], BURST_GC_FULL)
    answer: list[LiveWork] = []
    during: list[tuple[int, ...]] = []

    def live_work(agent_ids: Any, busy: set[str], after: int | None = None) -> list[LiveWork]:
        during.append(gc.get_threshold())
        if not answer:
            raise OSError("the database is restarting")
        return answer

    set_to: list[tuple[int, ...]] = []
    real_set = gc.set_threshold

    def set_threshold(*t: int) -> None:
        set_to.append(t)
        real_set(*t)

    async def held(self: LiveHub, due: list[Any]) -> None:
        during.append(gc.get_threshold())
        assert gc.get_freeze_count() > 0

    monkeypatch.setattr(hub, "_live_work", live_work)
    monkeypatch.setattr(gc, "set_threshold", set_threshold)
    monkeypatch.setattr(LiveHub, "_push_burst_held", held)
    monkeypatch.setattr(LiveHub, "_push_queued", lambda *a: asyncio.sleep(0))
    hub.peers.update({"a": SimpleNamespace(open=True), "b": SimpleNamespace(open=True)})

    async def poll() -> None:
        await hub.poll_once()
        await asyncio.sleep(0)  # the burst's first step, then what the poll scheduled
        await asyncio.sleep(0)

    try:
        with pytest.raises(OSError):
            asyncio.run(poll())  # a failed query: given back
        assert during == [raised] and set_to == [raised, before] and not hub._gc_held
        answer = [LiveWork("a", "enrolled", 1, 3)]  # one push: given back
        asyncio.run(poll())
        assert during[1:] == [raised] and set_to[2:] == [raised, before]
        answer = [LiveWork("a", "enrolled", 1, 5), LiveWork("b", "enrolled", 1, 6)]
        del during[:], set_to[:]
        asyncio.run(poll())  # a burst: held on, until GC_SETTLE_SECONDS after its end
        assert during == [raised, raised] and set_to == [raised] and hub._gc_held
        hub._release_gc()  # what the settle timer calls
        assert set_to == [raised, before] and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        real_set(*before)


def test_bursts_that_follow_each_other_still_read_all_queued_work_now_and_then(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While bursts keep running, a poll reads every queued deployment again once
    FULL_POLL_SECONDS passed since the last that did: an older deployment (its hold ended,
    its export was lost, it was re-queued with its id) is not starved by polls that only look
    for newer ones."""
    class Keys:
        hub_id = "hub-test"

    hub = LiveHub(session_factory=lambda: None,  # type: ignore[arg-type,return-value]
                  keys=Keys(), data_dir=tmp_path, actor=None)  # type: ignore[arg-type]
    asked: list[int | None] = []
    spawned: list[str] = []

    def live_work(agent_ids: Any, busy: set[str], after: int | None = None) -> list[LiveWork]:
        asked.append(after)
        return [] if after is not None else [LiveWork("old", "enrolled", 1, 3)]

    def spawn(coro: Any) -> None:
        spawned.append(coro.__qualname__)
        coro.close()

    monkeypatch.setattr(hub, "_live_work", live_work)
    monkeypatch.setattr(hub, "_spawn", spawn)
    monkeypatch.setitem(hub.peers, "old", SimpleNamespace(open=True))
    hub._seen_work = 9  # a burst to newer work runs, and another after it
    hub._bursts = 1
    hub._full_polled = time.monotonic()
    asyncio.run(hub.poll_once())
    assert asked == [9] and spawned == []  # the older deployment is not looked at
    hub._full_polled = time.monotonic() - live_hub.FULL_POLL_SECONDS
    asyncio.run(hub.poll_once())
    assert asked == [9, None] and spawned == ["LiveHub._push_queued"]
    assert hub._seen_work == 9  # what was seen stays the newest
    asyncio.run(hub.poll_once())
    assert asked == [9, None, 9]  # the next full read waits FULL_POLL_SECONDS again
