"""hub.live_notify: which databases get wake-ups, a real LISTEN on a throwaway PostgreSQL
woken by the triggers of migration 0008, and what a wake-up does to the push loop
(hub.live_hub.LiveHub._poll_loop): a poll at once, however long the interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from hub.db import Agent, Environment, make_engine
from hub.live_hub import LiveHub
from hub.live_notify import CHANNEL, Listener, listen_dsn
from hub.migrate import upgrade
from hub.services.context import utc_now
from tests.hub.conftest import Keys

DEADLINE = 30.0  # seconds for a task of this event loop to get its turn on a loaded machine
HOUR = 3600.0  # a poll interval no test waits for: only a wake-up explains a poll


def test_only_postgresql_gets_a_listening_connection() -> None:
    assert listen_dsn("sqlite:////srv/hub/hub.db") is None
    assert listen_dsn("mysql://u:p@db/hub") is None
    assert listen_dsn("postgresql://u:p%40ss@db:5433/hub") == "postgresql://u:p%40ss@db:5433/hub"
    assert listen_dsn("postgresql+psycopg://u:pw@db/hub") == "postgresql://u:pw@db/hub"


def test_a_status_change_wakes_the_listener(pg_db: str) -> None:
    engine = make_engine(pg_db)
    upgrade(engine)
    with Session(engine) as session:
        env = Environment(name="plant-a", created_at=utc_now())
        session.add(env)
        session.flush()
        session.add(Agent(agent_id="site-01", environment_id=env.id, ed25519_public="a" * 64,
                          x25519_public="b" * 64, enrolled_at=utc_now()))
        session.commit()

    async def scenario() -> list[str]:
        woken = asyncio.Event()
        seen: list[str] = []

        def wake() -> None:
            seen.append("wake")
            woken.set()

        listener = Listener(listen_dsn(pg_db) or "", wake)
        task = asyncio.create_task(listener.run())
        await asyncio.wait_for(woken.wait(), 60)  # connected: one catch-up wake-up
        assert listener.listening
        woken.clear()
        with engine.begin() as conn:  # what `hub agents revoke` commits
            conn.execute(text("UPDATE agents SET status = 'revoked' WHERE agent_id = 'site-01'"))
        await asyncio.wait_for(woken.wait(), 60)
        task.cancel()
        return seen

    try:
        assert asyncio.run(scenario()) == ["wake", "wake"]
        with engine.connect() as conn:
            names = conn.execute(text(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname")).all()
        assert [n for (n,) in names] == ["tiangong_live_queued", "tiangong_live_status"]
        assert CHANNEL == "tiangong_live"
    finally:
        engine.dispose()


def _idle_hub(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> tuple[LiveHub, list[str], asyncio.Queue[None], asyncio.Queue[None]]:
    """A live hub with one connected agent, an hour between timed rounds and ``poll_once``
    replaced: each poll notes the label it was counted under, says it started and waits
    for a permit. Any database work fails the test."""

    def no_db() -> Any:
        raise AssertionError("no database work expected")

    hub = LiveHub(session_factory=no_db, keys=keys.hub, data_dir=tmp_path, actor="op",
                  poll_interval=HOUR)
    hub._recovered = True  # nothing left by a killed live server (no database)
    # a connected agent as the push loop's rounds look at it (no partial uploads to keep)
    hub.peers["site-01"] = SimpleNamespace(incoming={})  # type: ignore[assignment]
    polls: list[str] = []
    started: asyncio.Queue[None] = asyncio.Queue()
    permits: asyncio.Queue[None] = asyncio.Queue()

    async def poll_once() -> None:
        polls.append("poll")
        started.put_nowait(None)
        await permits.get()

    monkeypatch.setattr(hub, "poll_once", poll_once)
    return hub, polls, started, permits


def _wakeups(hub: LiveHub, by: str) -> float:
    return hub.metrics.registry.get_sample_value("tiangong_live_wakeups_total",
                                                 {"by": by}) or 0.0


def test_a_wake_up_polls_at_once_and_wake_ups_during_a_poll_make_one_more_round(
        keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hub, polls, started, permits = _idle_hub(keys, tmp_path, monkeypatch)
        hub._start_poller()
        try:
            hub._wake_up()
            await asyncio.wait_for(started.get(), DEADLINE)  # not an hour later
            assert polls == ["poll"] and _wakeups(hub, "notify") == 1
            for _ in range(1000):  # a flood while the poll runs
                hub._wake_up()
            permits.put_nowait(None)
            await asyncio.wait_for(started.get(), DEADLINE)
            # One more round for all of them, and nothing left to start another.
            assert polls == ["poll", "poll"] and _wakeups(hub, "notify") == 2
            assert not hub._woken and hub._wake is not None and not hub._wake.is_set()
            permits.put_nowait(None)
            hub._wake_up()  # the loop waits for the next wake-up, not for the interval
            await asyncio.wait_for(started.get(), DEADLINE)
            assert polls == ["poll"] * 3 and _wakeups(hub, "poll") == 0
            permits.put_nowait(None)
        finally:
            assert hub._poller is not None
            hub._poller.cancel()

    asyncio.run(scenario())


def test_the_first_round_polls_at_once_on_a_machine_up_for_less_than_the_interval(
        keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an agent connected and nothing woken, the push loop's first round asks the
    database at once, however long the interval and however briefly the machine has been
    up (time.monotonic() counts from boot: 5 s here, against an hour's interval)."""
    real = time.monotonic
    since_boot = real() - 5.0
    monkeypatch.setattr(time, "monotonic", lambda: real() - since_boot)

    async def scenario() -> None:
        hub, polls, started, permits = _idle_hub(keys, tmp_path, monkeypatch)
        hub._start_poller()
        try:
            await asyncio.wait_for(started.get(), DEADLINE)  # not an hour after boot
            assert polls == ["poll"] and _wakeups(hub, "poll") == 1
            permits.put_nowait(None)
        finally:
            assert hub._poller is not None
            hub._poller.cancel()

    asyncio.run(scenario())


def test_a_wake_up_with_nobody_connected_asks_the_database_nothing(
        keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hub, polls, started, _ = _idle_hub(keys, tmp_path, monkeypatch)
        hub.peers.clear()
        hub._start_poller()
        try:
            hub._wake_up()
            # The wake-up is taken (and dropped) by a round that asks nothing.
            async with asyncio.timeout(DEADLINE):
                while hub._woken:
                    await asyncio.sleep(0)
            assert polls == [] and started.empty() and _wakeups(hub, "notify") == 0
        finally:
            assert hub._poller is not None
            hub._poller.cancel()

    asyncio.run(scenario())


def test_a_take_over_that_failed_is_tried_again_without_a_restart(
        keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up take-over (a killed live server's unrecorded deliveries and export
    claims) that failed on a database restarting was said to be tried "at the next start":
    the push loop's rounds try it again, TAKE_OVER_RETRY_SECONDS apart, until it succeeds."""
    import hub.live_hub as live_hub_mod

    monkeypatch.setattr(live_hub_mod, "TAKE_OVER_RETRY_SECONDS", 0.0)

    async def scenario() -> list[str]:
        hub, _, _, _ = _idle_hub(keys, tmp_path, monkeypatch)
        hub._recovered = False
        hub.poll_interval = 0.05  # timed rounds: the retries ride on them
        tries: list[str] = []

        def recover() -> int:
            tries.append("recover")
            if len(tries) < 3:
                raise OSError("database is restarting")
            return 0

        async def recovered() -> None:
            while not hub._recovered:
                await asyncio.sleep(0.01)

        monkeypatch.setattr(hub, "recover_delivered", recover)
        monkeypatch.setattr(hub, "release_dead_claims", lambda: 0)
        hub.peers.clear()  # no polls: only the take-over
        hub._start_poller()
        try:
            await asyncio.wait_for(recovered(), DEADLINE)
        finally:
            assert hub._poller is not None
            hub._poller.cancel()
        return tries

    assert asyncio.run(scenario()) == ["recover"] * 3
