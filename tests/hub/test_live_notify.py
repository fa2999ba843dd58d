"""hub.live_notify: which databases get wake-ups, and a real LISTEN on a throwaway
PostgreSQL woken by the triggers of migration 0008."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.orm import Session

from hub.db import Agent, Environment, make_engine
from hub.live_notify import CHANNEL, Listener, listen_dsn
from hub.migrate import upgrade
from hub.services.context import utc_now


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
