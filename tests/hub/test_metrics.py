"""hub.metrics.HubCollector: the hub-wide figures read from the database at scrape time —
deployments by state, the oldest queued age, agents by presence (both presence rules),
bundles exported, the audit head — with the test's clock; and a database that does not
answer."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from hub.metrics import HubCollector
from hub.services.agents import EnrollmentRequest, enroll_agent, get_agent, revoke_agent
from hub.services.deployments import queue_deployment
from signing.keys import BoxKeyPair, SigningKey
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _approved_release

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(collector: HubCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _enroll(world: World, agent_id: str) -> None:
    enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
        hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
        x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
        environment="test", hub_id=world.keys.hub.hub_id))


def test_hub_wide_figures_follow_the_database_and_the_clock(world: World) -> None:
    now = world.clock()
    for agent_id in ("never", "online", "closed", "gone", "legacy"):
        _enroll(world, agent_id)
    s = world.session
    get_agent(s, "online").last_seen = now
    get_agent(s, "online").online_until = now + timedelta(seconds=33)
    get_agent(s, "closed").last_seen = now - timedelta(seconds=5)
    get_agent(s, "closed").online_until = now - timedelta(seconds=1)  # disconnected
    get_agent(s, "legacy").last_seen = now - timedelta(seconds=10)  # no live record: old rule
    revoke_agent(world.ctx("op"), "gone", reason="stolen")
    release = _approved_release(world)
    world.session.commit()
    collector = HubCollector(sessionmaker(world.session.get_bind()), world.clock)

    before = _scrape(collector)
    assert before[("tiangong_database_up", ())] == 1
    assert before[("tiangong_bundles_exported_total", ())] == 0
    assert not any(name == "tiangong_deployments" for name, _ in before)
    assert not any(name == "tiangong_queue_oldest_age_seconds" for name, _ in before)
    presence = {dict(labels)["presence"]: v for (name, labels), v in before.items()
                if name == "tiangong_agents"}
    assert presence == {"never": 1, "online": 2, "offline": 1, "revoked": 1}
    head = before[("tiangong_audit_head_seq", ())]
    assert head > 0

    queue_deployment(world.ctx("op"), release, "test")  # one per enrolled agent: four
    world.session.commit()
    world.clock.advance(42)
    after = _scrape(collector)
    assert after[("tiangong_deployments", (("environment", "test"), ("state", "queued")))] == 4
    assert after[("tiangong_queue_oldest_age_seconds", (("environment", "test"),))] == 42
    assert after[("tiangong_audit_head_seq", ())] > head
    online = after[("tiangong_agents", (("environment", "test"), ("presence", "online")))]
    assert online == 1  # 42 s later the live record ran out; the old rule's 75 s did not


def test_a_database_that_does_not_answer_gives_database_up_zero_and_nothing_else(
        world: World) -> None:
    engine = create_engine("sqlite:////nonexistent-dir/hub.db")
    samples = _scrape(HubCollector(sessionmaker(engine), world.clock))
    assert samples == {("tiangong_database_up", ()): 0.0}
    engine.dispose()
