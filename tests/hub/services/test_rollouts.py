"""Rollouts (hub.services.rollouts): planning for every strategy, the engine's batches and
gates, failure thresholds, people's actions, labels and selectors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, Release, Rollout
from hub.errors import InvalidStateError, PermissionDeniedError, ValidationError
from hub.services import rollouts as ro
from hub.services.agents import EnrollmentRequest, enroll_agent, get_agent
from hub.services.deployments import mark_exported, transition
from hub.services.rollouts import Strategy
from hub.services.users import create_user, grant_role
from tests.hub.conftest import World, write_undoable_release
from tests.hub.services.test_deployments import approved, request


def _fleet(world: World, n: int, env: str = "test", prefix: str = "a",
           labels: tuple[tuple[str, str], ...] = ()) -> list[str]:
    ids = []
    for i in range(n):
        req = request(f"{prefix}{i}", f"{prefix}{i:02d}")
        req = EnrollmentRequest(hostname=req.hostname, ed25519_public=req.ed25519_public,
                                x25519_public=req.x25519_public, agent_id=req.agent_id,
                                labels=labels)
        ids.append(enroll_agent(world.ctx("op"), env, req).agent_id)
    return ids


@pytest.fixture
def rel(world: World, release_dir: Callable[..., Path]) -> Release:
    return approved(world, release_dir, "appr1")


def _second_operator(world: World) -> None:
    create_user(world.ctx("admin"), "op2")
    grant_role(world.ctx("admin"), "op2", "operator", None)


def _batch_of(rollout: Rollout, number: int) -> list[str]:
    return [a["agent"] for a in ro.rollout_json(
        rollout_session(rollout), rollout, rollout.created_at)["batches"][number - 1]["agents"]]


def rollout_session(rollout: Rollout):  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import object_session

    return object_session(rollout)


def _finish(world: World, rollout: Rollout, outcome: dict[str, str] | None = None, *,
            stores_files: bool = True) -> list[str]:
    """Every queued deployment of the current batch exported, then finished with
    ``outcome[agent]`` (default succeeded); then what the engine did (``stores_files``
    False: in a context without a releases directory, as the live server's import)."""
    ctx = world.ctx("op")
    if not stores_files:
        ctx = dataclasses.replace(ctx, releases_dir=None)
    outcome = outcome or {}
    ids = []
    for dep in _current(world, rollout):
        if dep.state == "queued":
            mark_exported(ctx, dep, bundle_id=f"b{dep.id}", bundle_path=f"/m/{dep.id}",
                          sequence=dep.id, root_version=1)
        transition(ctx, dep, outcome.get(dep.agent.agent_id, "succeeded"))
        ids.append(dep.id)
    return ro.after_deployments(ctx, ids)


def _current(world: World, rollout: Rollout) -> list[Deployment]:
    deps = world.session.scalars(select(Deployment).where(
        Deployment.queued_by == f"rollout:{rollout.id}", Deployment.state.not_in(
            ("succeeded", "failed", "rejected", "interrupted", "cancelled", "lost"))))
    return list(deps)


def _count(world: World, model: type) -> int:
    return world.session.scalar(select(func.count()).select_from(model)) or 0


# ---- planning: every strategy ---------------------------------------------------------


def test_plan_all_at_once(world: World) -> None:
    agents = [get_agent(world.session, a) for a in _fleet(world, 3)]
    assert [[a.agent_id for a in b] for b in ro.plan_batches(agents, Strategy())] == [
        ["a00", "a01", "a02"]]


def test_plan_canary_then_batches_by_count_and_percent(world: World) -> None:
    agents = [get_agent(world.session, a) for a in _fleet(world, 7)]
    plan = ro.plan_batches(agents, Strategy(canary=1, batch_size=2))
    assert [[a.agent_id for a in b] for b in plan] == [
        ["a00"], ["a01", "a02"], ["a03", "a04"], ["a05", "a06"]]
    plan = ro.plan_batches(agents, Strategy(batch_percent=30))  # ceil(7 * 0.3) = 3
    assert [len(b) for b in plan] == [3, 3, 1]
    plan = ro.plan_batches(agents, Strategy(canary_agents=("a05", "a02")))
    assert [[a.agent_id for a in b] for b in plan] == [
        ["a05", "a02"], ["a00", "a01", "a03", "a04", "a06"]]


def test_plan_refusals(world: World) -> None:
    agents = [get_agent(world.session, a) for a in _fleet(world, 2)]
    with pytest.raises(ValidationError, match=r"canary agent.*zz.*not among the 2"):
        ro.plan_batches(agents, Strategy(canary_agents=("zz",)))
    with pytest.raises(ValidationError, match="no enrolled agent"):
        ro.plan_batches([], Strategy())
    for bad, rule in ((Strategy(batch_size=0), "at least 1"),
                      (Strategy(batch_percent=101), "1 … 100"),
                      (Strategy(batch_size=1, batch_percent=5), "not both"),
                      (Strategy(on_failure="explode"), "pause or abort")):
        with pytest.raises(ValidationError, match=rule):
            bad.check()


# ---- labels and selectors --------------------------------------------------------------


def test_labels_from_enrollment_edit_and_select(world: World) -> None:
    _fleet(world, 2, labels=(("region", "eu"),))
    _fleet(world, 1, prefix="u", labels=(("region", "us"),))
    assert [a.agent_id for a in ro.select_agents(world.session, labels={"region": "eu"})] \
        == ["a00", "a01"]
    ro.set_agent_labels(world.ctx("admin"), "a01", ["region=us", "tier=gold"])
    assert get_agent(world.session, "a01").labels == {"region": "us", "tier": "gold"}
    assert [a.agent_id for a in ro.select_agents(
        world.session, labels=ro.parse_selector("region=us,tier=gold"))] == ["a01"]
    ro.set_agent_labels(world.ctx("admin"), "a01", ["tier-"])
    assert get_agent(world.session, "a01").labels == {"region": "us"}
    events = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "agent.label")).all()
    assert len(events) == 2


def test_label_edit_refusals_change_nothing(world: World) -> None:
    _fleet(world, 1, labels=(("region", "eu"),))
    for who, changes, error in (("op", ["x=y"], PermissionDeniedError),
                                ("admin", ["bad key=y"], ValidationError),
                                ("admin", ["nothere-"], ValidationError)):
        with pytest.raises(error):
            ro.set_agent_labels(world.ctx(who), "a00", changes)
        assert get_agent(world.session, "a00").labels == {"region": "eu"}
    with pytest.raises(ValidationError, match="name=value"):
        ro.parse_selector("region")


# ---- the engine ------------------------------------------------------------------------


def test_all_at_once_succeeds(world: World, rel: Release) -> None:
    _fleet(world, 3)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test")
    assert len(_current(world, rollout)) == 3
    did = _finish(world, rollout)
    assert rollout.state == "succeeded" and "rollout succeeded" in did


def test_canary_batches_manual_gate(world: World, rel: Release) -> None:
    _fleet(world, 5)
    _second_operator(world)
    strategy = Strategy(canary=1, batch_size=2, manual=True)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test", strategy=strategy)
    assert [d.agent.agent_id for d in _current(world, rollout)] == ["a00"]
    with pytest.raises(InvalidStateError, match=r"batch 1 .* not done: 1 agent"):
        ro.confirm_gate(world.ctx("op2"), rollout)
    _finish(world, rollout)
    assert _current(world, rollout) == []  # the gate holds batch 2
    waits = ro.rollout_json(world.session, rollout, world.clock())["batches"][0]["waiting_for"]
    assert any("manual confirmation" in w for w in waits)
    with pytest.raises(PermissionDeniedError, match="another operator"):
        ro.confirm_gate(world.ctx("op"), rollout)  # the starter
    with pytest.raises(PermissionDeniedError):
        ro.confirm_gate(world.ctx("view"), rollout)
    assert _current(world, rollout) == []
    ro.confirm_gate(world.ctx("op2"), rollout)
    assert [d.agent.agent_id for d in _current(world, rollout)] == ["a01", "a02"]
    _finish(world, rollout)
    ro.confirm_gate(world.ctx("op2"), rollout)
    _finish(world, rollout)
    assert rollout.state == "succeeded"
    assert _count(world, Deployment) == 5
    actions = world.session.scalars(select(AuditEvent.action).where(
        AuditEvent.object_type == "rollout")).all()
    assert actions.count("rollout.confirm") == 2 and actions.count("rollout.batch_start") == 3


def test_soak_time(world: World, rel: Release) -> None:
    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1, soak_s=600))
    _finish(world, rollout)
    assert _current(world, rollout) == []
    assert ro.next_wakeup(world.session) is not None
    world.clock.advance(599)
    assert ro.advance_all(world.ctx("op")) == {}
    world.clock.advance(1)
    assert ro.advance_all(world.ctx("op")) == {rollout.id: [
        "batch 2 started", f"deployment {_current(world, rollout)[0].id} queued for a01"]}


def test_failing_batch_pauses_then_resume_accepts(world: World, rel: Release) -> None:
    _fleet(world, 4)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(batch_size=2))
    did = _finish(world, rollout, {"a01": "failed"})
    assert rollout.state == "paused" and "a01 (failed)" in rollout.reason, did
    assert _current(world, rollout) == []  # batch 2 not started
    assert ro.advance(world.ctx("op"), rollout) == []
    ro.resume_rollout(world.ctx("op"), rollout)
    assert rollout.state == "running" and len(_current(world, rollout)) == 2
    _finish(world, rollout)
    assert rollout.state == "succeeded"


def test_threshold_count_and_percent(world: World, rel: Release) -> None:
    _fleet(world, 4)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(batch_size=2, max_failures=1))
    _finish(world, rollout, {"a00": "failed"})
    assert rollout.state == "running" and len(_current(world, rollout)) == 2
    _finish(world, rollout, {"a02": "interrupted"})
    assert rollout.state == "paused"
    ro.abort_rollout(world.ctx("op"), rollout)
    rel2 = rel
    rollout2 = ro.start_rollout(world.ctx("op"), rel2, environment="test",
                                strategy=Strategy(batch_size=2, max_failure_percent=50))
    _finish(world, rollout2, {"a00": "failed", "a01": "failed"})  # 2 of 4 = 50 %: allowed
    assert rollout2.state == "running"


def test_failure_aborts_and_calls_the_rollback_action(world: World, rel: Release) -> None:
    _fleet(world, 4)
    calls: list[list[int]] = []

    def fake_rollback(ctx, rollout, failed):  # type: ignore[no-untyped-def]
        calls.append([d.id for d in failed])
        return f"rollback of {len(failed)} queued"

    strategy = Strategy(canary=2, on_failure="abort", auto_rollback=True)
    rollout = ro.start_rollout(world.ctx("admin"), rel, environment="test", strategy=strategy)
    saved = list(ro.ROLLBACK_ACTIONS)
    ro.ROLLBACK_ACTIONS[:] = [fake_rollback]
    try:
        did = _finish(world, rollout, {"a00": "failed"})
    finally:
        ro.ROLLBACK_ACTIONS[:] = saved
    assert rollout.state == "aborted" and rollout.rolled_back
    assert len(calls) == 1 and "rollback: rollback of 1 queued" in did
    assert _count(world, Deployment) == 2  # the rest was never queued


def _undoable(world: World, tmp_path: Path) -> Release:
    src = write_undoable_release(tmp_path)
    from hub.services.approvals import approve_release
    from hub.services.releases import create_product, create_release, submit_release

    create_product(world.ctx("dev"), "hello")
    rel = create_release(world.ctx("dev"), src)
    submit_release(world.ctx("dev"), rel)
    approve_release(world.ctx("appr1"), rel)
    return rel


def test_automatic_rollback_is_approved_by_inheritance_and_queued(world: World,
                                                                  tmp_path: Path) -> None:
    rel = _undoable(world, tmp_path)
    _fleet(world, 3)
    rollout = ro.start_rollout(world.ctx("admin"), rel, environment="test",
                               strategy=Strategy(canary=1, auto_rollback=True))
    did = _finish(world, rollout, {"a00": "failed"}, stores_files=False)
    assert rollout.state == "paused"
    (said,) = [d for d in did if d.startswith("rollback:")]
    assert "rollback release hello 2.0.0-rollback-" in said, did
    assert "approved by inheritance from hello 2.0.0 and queued for a00" in said
    assert "rollback: deployment" in rollout.reason  # rollouts show says it
    rollback = world.session.scalars(select(Release).where(
        Release.version.like("2.0.0-rollback-%"))).one()
    assert rollback.state == "approved" and rollback.author.username == "admin"
    # stored beside the release it undoes, so it can be exported
    assert Path(rollback.stored_path).parent == Path(rel.stored_path).parent
    assert rollback.approvals_from is rel and rollback.approvals == []
    failed = world.session.scalars(select(Deployment).where(
        Deployment.release_id == rel.id)).one()
    assert rollback.rollback_of_id == failed.id
    (queued,) = world.session.scalars(select(Deployment).where(
        Deployment.release_id == rollback.id))
    assert queued.state == "queued" and queued.agent is not None
    assert queued.agent.agent_id == "a00"  # only the agent that ran it
    from hub.services.approval_rules import check_rule

    assert check_rule(rollback, queued.environment).met  # the original's approvals count
    assert not check_rule(rollback, queued.environment, inherited=False).met  # none of its own
    # The inheritance is for this rollback only: not queued by hand elsewhere, not rolled out.
    from hub.errors import NotEnoughApprovalsError
    from hub.services.deployments import queue_deployment

    deployments = _count(world, Deployment)
    with pytest.raises(NotEnoughApprovalsError, match=r"inherited from hello 2\.0\.0 for the "
                       r"automatic rollback of one deployment only"):
        queue_deployment(world.ctx("op"), rollback, "test")
    with pytest.raises(InvalidStateError, match="approved by inheritance"):
        ro.start_rollout(world.ctx("admin"), rollback, environment="test")
    assert _count(world, Deployment) == deployments
    (event,) = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "release.approve_inherited"))
    details = json.loads(event.details) if isinstance(event.details, str) else event.details
    assert details["inherited_from"] == "hello 2.0.0" and details["rollout"] == rollout.id
    assert [a["approver"] for a in details["approvals"]] == ["appr1"]
    view = ro.rollout_json(world.session, rollout, rollout.updated_at)
    assert view["rollbacks"][0]["deployments"] == [
        {"id": queued.id, "state": "queued", "agent": "a00"}]

    # Resumed, the next failure is rolled back too; the first is not rolled back twice.
    ro.resume_rollout(world.ctx("admin"), rollout)
    did = _finish(world, rollout, {"a01": "failed"})
    (said,) = [d for d in did if d.startswith("rollback:")]
    assert "rolled back already by hello 2.0.0-rollback-" in said
    assert _count_like(world, "2.0.0-rollback-%") == 2


def _count_like(world: World, pattern: str) -> int:
    return len(world.session.scalars(select(Release).where(
        Release.version.like(pattern))).all())


def test_automatic_rollback_without_valid_approvals_is_left_for_people(
        world: World, tmp_path: Path) -> None:
    from hub.services.approval_rules import set_environment_rule

    rel = _undoable(world, tmp_path)
    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("admin"), rel, environment="test",
                               strategy=Strategy(canary=1, auto_rollback=True))
    set_environment_rule(world.ctx("admin"), "test", required=2)  # tightened since
    did = _finish(world, rollout, {"a00": "failed"})
    (said,) = [d for d in did if d.startswith("rollback:")]
    assert "submitted, not queued: the approvals of hello 2.0.0 no longer meet" in said
    rollback = world.session.scalars(select(Release).where(
        Release.version.like("2.0.0-rollback-%"))).one()
    assert rollback.state == "submitted" and rollback.approvals_from is None
    assert world.session.scalars(select(Deployment).where(
        Deployment.release_id == rollback.id)).all() == []


def test_only_someone_who_may_create_releases_starts_an_automatic_rollback(
        world: World, rel: Release) -> None:
    _fleet(world, 2)
    before = _count(world, Rollout)
    with pytest.raises(PermissionDeniedError, match=r"--auto-rollback: .*op may not "
                       r"release\.create"):
        ro.start_rollout(world.ctx("op"), rel, environment="test",
                         strategy=Strategy(canary=1, auto_rollback=True))
    assert _count(world, Rollout) == before and _count(world, Deployment) == 0


def test_automatic_rollback_says_what_cannot_be_undone(world: World, rel: Release) -> None:
    _fleet(world, 2)
    releases = _count(world, Release)
    rollout = ro.start_rollout(world.ctx("admin"), rel, environment="test",
                               strategy=Strategy(canary=1, auto_rollback=True))
    did = _finish(world, rollout, {"a00": "failed"})
    assert rollout.state == "paused"
    (said,) = [d for d in did if d.startswith("rollback:")]
    assert "no rollback release" in said and "none of its steps can be undone" in said
    assert _count(world, Release) == releases


def test_cancel_cancels_queued_and_withdraws_exported(world: World, rel: Release) -> None:
    _fleet(world, 3)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test")
    deps = _current(world, rollout)
    mark_exported(world.ctx("op"), deps[0], bundle_id="bx", bundle_path="/m/x", sequence=1,
                  root_version=1)
    transition(world.ctx("op"), deps[1], "exported")  # a bundle record without a file
    did = ro.cancel_rollout(world.ctx("op"), rollout, "wrong release")
    assert rollout.state == "cancelled"
    assert deps[0].state == "lost" and deps[2].state == "cancelled"
    assert any("withdrawn" in d for d in did)
    lost = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "bundle.declared_lost")).all()
    assert len(lost) == 1 and "wrong release" in str(lost[0].details)


def test_actions_refused_change_nothing(world: World, rel: Release) -> None:
    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1))
    events = _count(world, AuditEvent)
    for action in (ro.pause_rollout, ro.abort_rollout, ro.cancel_rollout):
        with pytest.raises(PermissionDeniedError):
            action(world.ctx("view"), rollout)
    with pytest.raises(InvalidStateError, match="only a paused rollout"):
        ro.resume_rollout(world.ctx("op"), rollout)
    with pytest.raises(InvalidStateError, match="no manual gate"):
        ro.confirm_gate(world.ctx("admin"), rollout)
    assert rollout.state == "running" and _count(world, AuditEvent) == events
    with pytest.raises(InvalidStateError, match="already in an active rollout"):
        ro.start_rollout(world.ctx("op"), rel, environment="test")
    assert _count(world, Rollout) == 1


def test_pause_stops_the_next_batch(world: World, rel: Release) -> None:
    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1))
    ro.pause_rollout(world.ctx("op"), rollout, "looking at the canary")
    _finish(world, rollout)
    assert rollout.state == "paused" and _current(world, rollout) == []
    ro.resume_rollout(world.ctx("op"), rollout)
    assert [d.agent.agent_id for d in _current(world, rollout)] == ["a01"]


def test_batch_waits_for_approvals(world: World, rel: Release) -> None:
    _fleet(world, 1, env="prod", prefix="p")  # prod needs 2 approvals; rel has 1
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="prod")
    assert _current(world, rollout) == []
    view = ro.rollout_json(world.session, rollout, world.clock())
    assert view["batches"][0]["agents"][0]["state"] == "not queued"
    assert any("approval 1 of 2" in w for w in view["batches"][0]["waiting_for"])
    from hub.services.approvals import approve_release

    approve_release(world.ctx("appr2"), rel)
    ro.advance(world.ctx("op"), rollout)
    assert len(_current(world, rollout)) == 1


def test_owes_result_since(world: World, rel: Release) -> None:
    _fleet(world, 1)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test")
    dep = _current(world, rollout)[0]
    mark_exported(world.ctx("op"), dep, bundle_id="b", bundle_path="/m/b", sequence=1,
                  root_version=1)
    row = ro.rollout_json(world.session, rollout, world.clock())["batches"][0]["agents"][0]
    assert row["reached"] == "media" and row["owes_result_since"] == dep.exported_at.isoformat()


def test_the_scheduler_wakes_when_the_soak_ends_and_starts_the_next_batch(
        world: World, rel: Release, engine) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from sqlalchemy.orm import Session

    from hub.scheduler import RESYNC_S, tick

    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1, soak_s=20))
    _finish(world, rollout)
    world.session.commit()
    done = world.clock()

    def factory() -> Session:
        return Session(engine, expire_on_commit=False)

    report = tick(factory, world.keys.hub, world.clock)
    assert report.next_run == done + timedelta(seconds=20) < done + timedelta(seconds=RESYNC_S)
    world.clock.advance(20)
    tick(factory, world.keys.hub, world.clock)
    world.session.expire_all()
    assert [d.agent.agent_id for d in _current(world, rollout)] == ["a01"]
    starts = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "rollout.batch_start")).all()
    assert [e.actor for e in starts] == ["system:rollout", "system:rollout"]


def test_a_rollback_reaching_a_channel_is_not_queued_on_its_inherited_approvals(
        world: World, tmp_path: Path) -> None:
    """One person's approval puts an automatic rollback into its product's first channel;
    the environments subscribed there get it planned, but the inherited approvals (2 of 2
    in prod) do not queue it: only the rollback's own (1 of 2) count there."""
    from hub.services import readiness
    from hub.services.approvals import approve_release
    from hub.services.channels import subscribe
    from hub.services.promotion import waiting_for
    from hub.services.releases import create_product, create_release, submit_release

    create_product(world.ctx("dev"), "hello")
    rel = create_release(world.ctx("dev"), write_undoable_release(tmp_path))
    submit_release(world.ctx("dev"), rel)
    approve_release(world.ctx("appr1"), rel)
    approve_release(world.ctx("appr2"), rel)
    _fleet(world, 2, env="prod", prefix="p")
    rollout = ro.start_rollout(world.ctx("admin"), rel, environment="prod",
                               strategy=Strategy(canary=1, auto_rollback=True))
    _finish(world, rollout, {"p00": "failed"}, stores_files=False)
    rollback = world.session.scalars(select(Release).where(
        Release.version.like("2.0.0-rollback-%"))).one()
    assert rollback.approvals_from is rel
    subscribe(world.ctx("admin"), "prod", "hello", "RELEASE")
    queued_before = world.session.scalars(select(Deployment).where(
        Deployment.release_id == rollback.id, Deployment.state == "queued")).all()
    approve_release(world.ctx("appr-prod"), rollback, environment="prod")
    planned = world.session.scalars(select(Deployment).where(
        Deployment.release_id == rollback.id, Deployment.state == "planned")).all()
    every = [(d.agent.agent_id if d.agent else None, d.state, d.queued_by) for d in
             world.session.scalars(select(Deployment).where(
                 Deployment.release_id == rollback.id))]
    assert planned, every
    assert world.session.scalars(select(Deployment).where(
        Deployment.release_id == rollback.id, Deployment.state == "queued")).all() \
        == queued_before
    for dep in planned:
        (why,) = waiting_for(world.session, dep, world.clock.now)
        assert why.startswith("approvals: environment prod needs 2 approvals; found 1"), why
        assert readiness.waiting_for(world.session, dep, world.clock.now)[0].kind == "approvals"
