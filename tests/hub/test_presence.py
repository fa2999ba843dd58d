"""hub.services.presence: online / offline / last seen from ``agents.last_seen`` (written
by the live server), and the push loop's one query for its connected agents."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from hub.db import make_engine
from hub.errors import PermissionDeniedError
from hub.migrate import upgrade
from hub.services.agents import get_agent, revoke_agent
from hub.services.deployments import queue_deployment
from hub.services.presence import (
    ONLINE_FACTOR,
    LiveWork,
    agent_presence,
    list_presence,
    live_work,
    live_work_of,
    online_window,
)
from hub.services.users import bootstrap_admin
from tests.hub.conftest import PEOPLE, FakeClock, World, make_keys, seed_people
from tests.hub.services.test_exchange import _agent, _approved_release


def _seen(world: World, agent_id: str, seconds_ago: float | None) -> None:
    agent = get_agent(world.session, agent_id)
    agent.last_seen = None if seconds_ago is None else world.clock() - timedelta(
        seconds=seconds_ago)
    world.session.flush()


def test_online_window_is_two_and_a_half_heartbeats() -> None:
    assert ONLINE_FACTOR == 2.5
    assert online_window(30) == timedelta(seconds=75)
    assert online_window(4) == timedelta(seconds=10)


@pytest.mark.parametrize(("seconds_ago", "heartbeat", "state", "online"), [
    (None, 30, "never", False),
    (0, 30, "online", True),
    (75, 30, "online", True),  # exactly 2.5 heartbeats: one heartbeat may be late
    (75.001, 30, "offline", False),
    (11, 4, "offline", False),
    (3600, 30, "offline", False),
])
def test_presence_from_last_seen(world: World, tmp_path: Path, seconds_ago: float | None,
                                 heartbeat: int, state: str, online: bool) -> None:
    _agent(world, tmp_path)
    _seen(world, "site-01", seconds_ago)
    p = agent_presence(get_agent(world.session, "site-01"), world.clock(), heartbeat)
    assert (p.state, p.online, p.environment) == (state, online, "test")
    assert p.last_seen == (None if seconds_ago is None
                           else world.clock() - timedelta(seconds=seconds_ago))


def test_a_revoked_agent_is_never_online(world: World, tmp_path: Path) -> None:
    _agent(world, tmp_path)
    _seen(world, "site-01", 0)
    revoke_agent(world.ctx("op"), "site-01", reason="gone")
    (p,) = list_presence(world.ctx("view"))
    assert (p.state, p.online, p.status) == ("revoked", False, "revoked")


def test_list_presence_per_environment_and_needs_view(world: World, tmp_path: Path) -> None:
    _agent(world, tmp_path, "site-01")
    _agent(world, tmp_path, "site-02")
    _seen(world, "site-02", 1)
    rows = list_presence(world.ctx("view"), "test")
    assert [(p.agent_id, p.state) for p in rows] == [("site-01", "never"), ("site-02", "online")]
    assert list_presence(world.ctx("view"), "prod") == []
    with pytest.raises(PermissionDeniedError):
        list_presence(world.ctx(None))


def test_live_work_counts_queued_deployments_of_connected_agents(world: World,
                                                                  tmp_path: Path) -> None:
    _agent(world, tmp_path, "site-01")
    _agent(world, tmp_path, "site-02")
    assert live_work(world.session, []) == []
    assert live_work(world.session, ["site-01", "nobody"]) == [
        LiveWork("site-01", "enrolled", 0, None)]
    deps = queue_deployment(world.ctx("op"), _approved_release(world), "test")
    by_agent = {d.agent.agent_id: d.id for d in deps if d.agent is not None}
    revoke_agent(world.ctx("op"), "site-02")
    work = live_work(world.session, ["site-02", "site-01", "site-01"])
    assert work == [LiveWork("site-01", "enrolled", 1, by_agent["site-01"]),
                    LiveWork("site-02", "revoked", 1, by_agent["site-02"])]


def test_live_work_of_names_only_connected_agents_with_something_to_do(
        world: World, tmp_path: Path) -> None:
    """The push loop's query: what :func:`live_work` says, for the connected agents that
    have queued work or are no longer enrolled; an idle connected agent costs nothing."""
    for name in ("site-01", "site-02", "site-03", "site-04"):
        _agent(world, tmp_path, name)
    assert live_work_of(world.session, {"site-01", "site-02", "nobody"}) == []
    deps = queue_deployment(world.ctx("op"), _approved_release(world), "test")
    by_agent = {d.agent.agent_id: d.id for d in deps if d.agent is not None}
    revoke_agent(world.ctx("op"), "site-02")
    revoke_agent(world.ctx("op"), "site-04")
    # site-03 has queued work but is not connected here; site-04 is revoked, not connected.
    connected = {"site-01", "site-02", "nobody"}
    work = live_work_of(world.session, connected, now=world.clock())
    assert work == [LiveWork("site-01", "enrolled", 1, by_agent["site-01"]),
                    LiveWork("site-02", "revoked", 1, by_agent["site-02"])]
    assert work == [w for w in live_work(world.session, connected, now=world.clock())
                    if w.queued or w.status != "enrolled"]
    # Agents busy in a burst already: their queued work is left out, not their revocation.
    assert live_work_of(world.session, connected, now=world.clock(),
                        busy={"site-01", "site-02"}) == [LiveWork("site-02", "revoked", 0, None)]
    # During a burst, polls count only deployments newer than the newest one seen.
    one, two = by_agent["site-01"], by_agent["site-02"]
    assert one < two
    assert live_work_of(world.session, connected, now=world.clock(), after=two) == [
        LiveWork("site-02", "revoked", 0, None)]
    assert live_work_of(world.session, connected, now=world.clock(), after=one) == [
        LiveWork("site-02", "revoked", 1, two)]
    assert live_work_of(world.session, connected, now=world.clock(), after=one - 1) == work
    # Exported: nothing waits any more; the revoked agent is still named.
    for dep in deps:
        dep.state = "exported"
    world.session.flush()
    assert live_work_of(world.session, connected) == [LiveWork("site-02", "revoked", 0, None)]


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind the hub supports (real servers, tests/fixtures)."""
    if request.param == "sqlite":
        return "sqlite://"
    return str(request.getfixturevalue("pg_db" if request.param == "postgresql" else "mysql_db"))


def test_presence_and_live_work_on_every_database(db_url: str, tmp_path: Path) -> None:
    """The grouped outer join, the last_seen comparison and the revoked agents found by
    the index on agents.status mean the same everywhere (and last_seen comes back as an
    aware UTC time, comparable with the clock)."""
    engine = make_engine(db_url)
    upgrade(engine)
    clock = FakeClock()
    try:
        with Session(engine, expire_on_commit=False) as session:
            bootstrap_admin(session, clock, "admin")
            world = World(session, clock, make_keys(), tmp_path / "releases")
            seed_people(world.ctx("admin"), PEOPLE)
            session.commit()
            _agent(world, tmp_path, "site-01")
            _agent(world, tmp_path, "site-02")
            _seen(world, "site-01", 10)
            deps = queue_deployment(world.ctx("op"), _approved_release(world), "test")
            session.commit()
            session.expire_all()
            rows = list_presence(world.ctx("view"))
            assert [(p.agent_id, p.state) for p in rows] == [("site-01", "online"),
                                                              ("site-02", "never")]
            assert rows[0].last_seen == clock() - timedelta(seconds=10)
            newest = {d.agent.agent_id: d.id for d in deps if d.agent is not None}
            assert live_work(session, ["site-02", "site-01"]) == [
                LiveWork("site-01", "enrolled", 1, newest["site-01"]),
                LiveWork("site-02", "enrolled", 1, newest["site-02"])]
            assert live_work_of(session, {"site-02", "site-01"}, now=clock()) == [
                LiveWork("site-01", "enrolled", 1, newest["site-01"]),
                LiveWork("site-02", "enrolled", 1, newest["site-02"])]
            # "not enrolled" asked as two ranges of the index on agents.status
            revoke_agent(world.ctx("op"), "site-02")
            for dep in deps:
                dep.state = "exported"
            session.commit()
            assert live_work_of(session, {"site-02", "site-01"}, now=clock()) == [
                LiveWork("site-02", "revoked", 0, None)]
    finally:
        engine.dispose()
