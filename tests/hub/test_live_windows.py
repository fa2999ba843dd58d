"""The live server and maintenance windows: a queued deployment outside its window is not
pushed to a connected agent (its hold is recorded instead) and is offered as soon as the
window opens, by the push loop alone (hub.live_hub with hub.services.windows)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from bundle.sync import OfferReceived
from hub.db import Deployment
from hub.services.deployments import queue_deployment
from hub.services.windows import add_rule
from tests.e2e.conftest import wait_for
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent, _approved_release
from tests.hub.services.test_windows import SAT_BERLIN, SAT_OPENS
from tests.hub.test_live import DEADLINE, ScriptedAgent, _serve, file_world

__all__ = ["file_world"]


def _dep(world: World) -> Deployment:
    world.session.rollback()
    (dep,) = world.session.scalars(select(Deployment))
    return dep


def test_outside_its_window_a_deployment_is_pushed_when_the_window_opens(
        file_world: World, tmp_path: Path) -> None:
    world = file_world
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    world.session.commit()
    server = _serve(world, tmp_path)

    async def scenario() -> OfferReceived:
        async with ScriptedAgent(server.port, agent) as a:
            queue_deployment(world.ctx("op"), release, "test")
            world.session.commit()
            # The push loop exports nothing: it records the hold (the window's opening).
            await asyncio.to_thread(wait_for, lambda: _dep(world).hold_until == SAT_OPENS,
                                    DEADLINE, "the live server to record the hold")
            dep = _dep(world)
            assert dep.state == "queued" and dep.sequence is None
            world.session.rollback()
            world.clock.now = SAT_OPENS  # the window opens (the hub's injected clock)
            offer = await a.until(lambda e: isinstance(e, OfferReceived))
            assert isinstance(offer, OfferReceived)
            return offer

    try:
        offer = asyncio.run(scenario())
        assert offer.offer.name.endswith(".tgb")
        dep = _dep(world)
        assert dep.state in ("exported", "delivered") and dep.exported_at == SAT_OPENS
        world.session.rollback()
    finally:
        server.stop()
        agent.close()
