"""An environment's preflight policy (``environments.preflight_within_h``): every path that
queues a deployment there goes through the one gate, ``hub.services.plans.deploy_waits`` —
``deployments queue`` (and the web and API, which call it), a rollout's batch, a channel's
planned deployment, a lost bundle queued again. Ad-hoc runs follow their own policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, Environment, PlanBundle, Release
from hub.errors import PermissionDeniedError, PreflightRequiredError, ValidationError
from hub.services import audit
from hub.services import rollouts as ro
from hub.services.agents import get_agent
from hub.services.deployments import queue_deployment
from hub.services.environments import get_environment, set_preflight_policy
from hub.services.plans import create_plan, deploy_waits, record_outcome
from hub.services.readiness import waiting_for
from hub.services.rollouts import Strategy
from tests.hub.conftest import World
from tests.hub.services.test_deployments import approved
from tests.hub.services.test_rollouts import _fleet


@pytest.fixture
def rel(world: World, release_dir: Callable[..., Path]) -> Release:
    return approved(world, release_dir, "appr1")


def _count(world: World, model: type) -> int:
    return world.session.scalar(select(func.count()).select_from(model)) or 0


def _events(world: World, action: str) -> list[dict[str, object]]:
    return [json.loads(e.details) for e in world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))]


def _pass(world: World, rel: Release, tmp_path: Path, agent: str, status: str = "plan-passed",
          summary: str = "ok") -> int:
    plan = create_plan(world.ctx("op"), rel, agent_id=agent, out_dir=tmp_path / "m")
    row = world.session.get(PlanBundle, plan.sequence)
    assert row is not None
    assert record_outcome(world.ctx("op"), get_agent(world.session, agent), row.bundle_id,
                          status, {"summary": summary}, 1) is None
    return plan.sequence


def _policy(world: World, hours: int | None, env: str = "test") -> None:
    set_preflight_policy(world.ctx("admin"), env, hours)
    world.session.commit()


def test_setting_the_policy_is_audited_and_bounded(world: World) -> None:
    _policy(world, 24)
    assert get_environment(world.session, "test").preflight_within_h == 24
    before = _count(world, AuditEvent)
    for bad in (0, 721):
        with pytest.raises(ValidationError, match=f"a preflight policy of {bad} h: give 1"):
            set_preflight_policy(world.ctx("admin"), "test", bad)
        world.session.rollback()
    with pytest.raises(PermissionDeniedError):
        set_preflight_policy(world.ctx("op"), "test", None)
    world.session.rollback()
    assert get_environment(world.session, "test").preflight_within_h == 24
    assert _count(world, AuditEvent) == before
    _policy(world, None)
    assert [(e["from"], e["to"]) for e in _events(world, "environment.preflight_policy")] == [
        (None, 24), (24, None)]


def test_queue_is_refused_naming_release_agent_and_fix_then_allowed(
        world: World, rel: Release, tmp_path: Path) -> None:
    _fleet(world, 2)
    _policy(world, 24)
    before = _count(world, AuditEvent)
    with pytest.raises(PreflightRequiredError) as refused:
        queue_deployment(world.ctx("op"), rel, "test")
    world.session.rollback()
    text = str(refused.value)
    assert text.startswith(f"environment test requires a preflight plan of {rel.label} passed "
                           "on every target agent within 24 h: a00: no preflight plan of "
                           f"{rel.label} has been answered (tiangong hub releases plan hello "
                           f"{rel.version} --agent a00); a01: ")
    assert text.endswith("; nothing queued")
    assert _count(world, Deployment) == 0 and _count(world, AuditEvent) == before
    # The entry points record the refusal after rolling back (hub.errors.RefusalEvent).
    assert audit.record_refusal(world.ctx("op"), refused.value)
    world.session.commit()
    [event] = _events(world, "deployment.refused")
    assert event["agents"] == ["a00", "a01"] and event["rule"] == "preflight within 24 h"
    assert event["refused"] == text

    _pass(world, rel, tmp_path, "a00")
    failed = _pass(world, rel, tmp_path, "a01", "plan-failed", "connection 'db' is not defined")
    with pytest.raises(PreflightRequiredError, match=f"a01: preflight plan {failed} failed at "
                       ".*connection 'db' is not defined; nothing queued"):
        queue_deployment(world.ctx("op"), rel, "test")
    world.session.rollback()
    assert _count(world, Deployment) == 0
    _pass(world, rel, tmp_path, "a01")
    world.clock.advance(25 * 3600)  # the passes are too old now
    with pytest.raises(PreflightRequiredError, match="more than 24 h ago; plan again"):
        queue_deployment(world.ctx("op"), rel, "test")
    world.session.rollback()
    _pass(world, rel, tmp_path, "a00")
    _pass(world, rel, tmp_path, "a01")
    deps = queue_deployment(world.ctx("op"), rel, "test")
    assert sorted(d.agent.agent_id for d in deps if d.agent) == ["a00", "a01"]


def test_an_environment_without_agents_cannot_pass_a_plan(world: World, rel: Release) -> None:
    _policy(world, 12)
    with pytest.raises(PreflightRequiredError, match=r"environment test has no enrolled agent, "
                       r"so no preflight plan of .* can pass there"):
        queue_deployment(world.ctx("op"), rel, "test")
    world.session.rollback()
    assert _count(world, Deployment) == 0


def test_without_a_policy_nothing_is_asked(world: World, rel: Release) -> None:
    _fleet(world, 1)
    env = world.session.scalar(select(Environment).where(Environment.name == "test"))
    assert env is not None
    assert deploy_waits(world.session, rel, env, [get_agent(world.session, "a00")],
                        world.clock()) == []
    assert len(queue_deployment(world.ctx("op"), rel, "test")) == 1


def test_a_rollout_batch_obeys_the_environments_policy(world: World, rel: Release,
                                                       tmp_path: Path) -> None:
    _fleet(world, 2)
    _policy(world, 24)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1))  # no preflight of its own
    assert _count(world, Deployment) == 0
    waits = ro.batch_waits(world.session, rollout, 1, world.clock())
    assert waits[0].startswith(f"preflight: a00: no preflight plan of {rel.label}")
    _pass(world, rel, tmp_path, "a00")  # the answer advances the rollout
    assert [d.agent.agent_id for d in world.session.scalars(select(Deployment))] == ["a00"]


def test_the_stricter_of_rollout_and_policy_counts(world: World, rel: Release,
                                                   tmp_path: Path) -> None:
    _fleet(world, 1)
    _policy(world, 48)
    _pass(world, rel, tmp_path, "a00")
    world.clock.advance(30 * 3600)
    env = get_environment(world.session, "test")
    agents = [get_agent(world.session, "a00")]
    assert deploy_waits(world.session, rel, env, agents, world.clock()) == []
    [wait] = deploy_waits(world.session, rel, env, agents, world.clock(), within_h=24)
    assert "more than 24 h ago" in wait


def test_a_planned_channel_deployment_waits_for_the_policy(world: World, rel: Release,
                                                           tmp_path: Path) -> None:
    from hub.services.channels import subscribe
    from hub.services.promotion import promote

    _fleet(world, 1)
    subscribe(world.ctx("admin"), "test", "hello", "CANARY")
    _policy(world, 24)
    done = promote(world.ctx("op"), "hello", rel.version, "CANARY")
    [dep] = done.planned
    assert dep.state == "planned" and done.queued == ()
    reasons = [r for r in waiting_for(world.session, dep, world.clock()) if r.kind == "preflight"]
    assert [r.text for r in reasons] == [
        f"preflight: a00: no preflight plan of {rel.label} has been answered (tiangong hub "
        f"releases plan hello {rel.version} --agent a00)"]
    _pass(world, rel, tmp_path, "a00")  # the answer queues it
    world.session.refresh(dep)
    assert dep.state == "queued"


def test_an_adhoc_run_follows_its_own_policy(world: World, rel: Release) -> None:
    from hub.services.adhoc_policy import adhoc_rule

    _fleet(world, 1)
    _policy(world, 24)
    env = get_environment(world.session, "test")
    [dep] = queue_deployment(world.ctx("op"), rel, "test", agent_id="a00", rule=adhoc_rule(env))
    assert dep.state == "queued"


def test_a_lost_bundle_is_queued_again_only_past_the_gate(world: World, tmp_path: Path) -> None:
    from hub.services.chain import declare_lost
    from tests.hub.services.test_chain import _ship
    from tests.hub.services.test_exchange import _agent

    agent = _agent(world, tmp_path)
    try:
        lost_id, _bundle = _ship(world, tmp_path, "1.0.1", "usb1")
        _policy(world, 24)
        with pytest.raises(PreflightRequiredError, match=r"no preflight plan of hello 1\.0\.1"):
            declare_lost(world.ctx("op"), lost_id, "stick fell overboard", requeue=True)
        world.session.rollback()
        assert [d.state for d in world.session.scalars(select(Deployment))] == ["exported"]
        dep, again = declare_lost(world.ctx("op"), lost_id, "stick fell overboard")
        assert dep.state == "lost" and again is None  # without --requeue: not gated
    finally:
        agent.close()
