"""Channels, promotion rules, subscriptions and recall (hub.services.channels and
hub.services.promotion), with real in-process agents where a health gate needs a run."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.config import load_config
from agent.home import init_home
from agent.service import Agent
from hub.db import AuditEvent, ChannelEntry, Deployment, PromotionApproval, Release, make_engine
from hub.errors import (
    ConflictError,
    HubError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    PromotionRefusedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.migrate import upgrade
from hub.services.approvals import approve_release, reject_release
from hub.services.channels import (
    ChannelRule,
    add_channel,
    list_channels,
    parse_duration,
    remove_channel,
    reorder_channels,
    set_rule,
    subscribe,
    unsubscribe,
)
from hub.services.deployments import queue_deployment, transition
from hub.services.environments import create_environment
from hub.services.exchange import export_environment, import_directory
from hub.services.promotion import (
    advance_planned,
    approve_promotion,
    entries_of,
    promote,
    recall,
    waiting_for,
)
from hub.services.releases import create_product, create_release, get_product, submit_release
from hub.services.users import bootstrap_admin, grant_role
from tests.hub.conftest import PEOPLE, FakeClock, Keys, World, seed_people

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"


def _release(world: World, tmp: Path, version: str = "1.0.0", *,
             approve: bool = True) -> Release:
    src = tmp / f"src-hello-{version}"
    shutil.copytree(HELLO, src)
    toml = src / "release.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    release = create_release(world.ctx("dev"), src, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    if approve:
        approve_release(world.ctx("appr1"), release)
    world.session.commit()
    return release


def _agent(world: World, tmp: Path, agent_id: str, environment: str) -> Agent:
    root = tmp / f"root-{agent_id}.json"
    root.write_bytes(world.keys.hub.root_envelope)
    _, request = init_home(tmp / agent_id, root_file=root, agent_id=agent_id,
                           environment=environment, now=int(world.clock().timestamp()))
    media = tmp / f"enroll-{agent_id}"
    media.mkdir()
    shutil.copy(request, media)
    report = import_directory(world.ctx("op"), media, results_dir=tmp / "results")
    assert [r.status for r in report.rows] == ["enrolled"], report.rows
    world.session.commit()
    return Agent(load_config(tmp / agent_id), clock=lambda: world.clock().timestamp())


def _run_at_site(world: World, agent: Agent, usb: Path, back: Path) -> list[str]:
    """The stick's bundles for ``agent`` go into its inbox; it runs them; the results come
    back and are imported. Returns the outcomes at the site."""
    now = world.clock().timestamp()
    for f in sorted(usb.glob(f"*{agent.config.agent_id}*.tgb")):
        dest = agent.config.inbox / f.name
        shutil.copyfile(f, dest)
        os.utime(dest, (now - 3600, now - 3600))  # settled long ago
    outs = [o.status for o in agent.run_once()]
    back.mkdir(exist_ok=True)
    for result in agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)
    import_directory(world.ctx("op"), back, results_dir=back.parent / "results")
    world.session.commit()
    return outs


def _events(world: World, action: str) -> list[dict[str, object]]:
    return [json.loads(d) for d in world.session.scalars(
        select(AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.seq))]


def _snapshot(world: World) -> tuple[int, int, int, list[tuple[int, str]]]:
    """What a refused call must leave as it was: audit events, entries, promotion
    approvals and every deployment's state."""
    s = world.session
    return (s.scalar(select(func.count()).select_from(AuditEvent)) or 0,
            s.scalar(select(func.count()).select_from(ChannelEntry)) or 0,
            s.scalar(select(func.count()).select_from(PromotionApproval)) or 0,
            [(d.id, d.state) for d in s.scalars(select(Deployment).order_by(Deployment.id))])


def _channels(world: World, product: str = "hello") -> list[str]:
    return [c.name for c in list_channels(world.session, get_product(world.session, product))]


def _where(world: World, release: Release) -> list[str]:
    return [e.channel.name for e in entries_of(world.session, release) if e.recalled_at is None]


# --- channels -----------------------------------------------------------------------------


def test_new_product_has_default_channels_and_an_approval_enters_the_first(
    world: World, tmp_path: Path
) -> None:
    create_product(world.ctx("dev"), "billing")
    assert _channels(world, "billing") == ["RELEASE", "CANARY", "STABLE"]
    release = _release(world, tmp_path, approve=False)
    assert _where(world, release) == []  # submitted, not approved: in no channel
    approve_release(world.ctx("appr1"), release)
    assert _where(world, release) == ["RELEASE"]
    (entered,) = _events(world, "channel.enter")
    assert entered == {"channel": "RELEASE", "content_hash": release.content_hash}
    approve_release(world.ctx("appr2"), release)  # a second approval: still one entry
    assert _where(world, release) == ["RELEASE"]


def test_admin_adds_reorders_and_removes_channels(world: World, tmp_path: Path) -> None:
    create_product(world.ctx("dev"), "hello")
    admin = world.ctx("admin")
    add_channel(admin, "hello", "beta", after="CANARY")
    add_channel(admin, "hello", "LAB", first=True)
    assert _channels(world) == ["LAB", "RELEASE", "CANARY", "BETA", "STABLE"]
    reorder_channels(admin, "hello", ["release", "lab", "canary", "beta", "stable"])
    assert _channels(world) == ["RELEASE", "LAB", "CANARY", "BETA", "STABLE"]
    assert remove_channel(admin, "hello", "LAB") == []
    assert _channels(world) == ["RELEASE", "CANARY", "BETA", "STABLE"]
    (removed,) = _events(world, "channel.remove")
    assert removed["order"] == ["RELEASE", "CANARY", "BETA", "STABLE"]


@pytest.mark.parametrize(("who", "call", "error", "words"), [
    ("op", lambda c: add_channel(c, "hello", "BETA"), PermissionDeniedError,
     "may not channel.manage"),
    ("admin", lambda c: add_channel(c, "hello", "canary"), ConflictError, "already exists"),
    ("admin", lambda c: add_channel(c, "hello", "no spaces"), ValidationError,
     "must be 1-32 letters"),
    ("admin", lambda c: add_channel(c, "hello", "BETA", after="NOPE"), NotFoundError,
     "its channels: RELEASE → CANARY → STABLE"),
    ("admin", lambda c: remove_channel(c, "hello", "STABLE"), ConflictError,
     "has subscribers (prod)"),
    ("admin", lambda c: reorder_channels(c, "hello", ["STABLE", "CANARY"]), ValidationError,
     "exactly once: RELEASE, CANARY, STABLE"),
    ("admin", lambda c: set_rule(c, "hello", "RELEASE", ChannelRule(required_approvals=1)),
     ValidationError, "releases enter it when approved"),
    ("admin", lambda c: set_rule(c, "hello", "STABLE", ChannelRule(required_approvals=11)),
     ValidationError, "between 0 and 10, not 11"),
    ("appr1", lambda c: set_rule(c, "hello", "STABLE", ChannelRule(min_successes=1)),
     PermissionDeniedError, "may not channel.manage"),
    ("op", lambda c: subscribe(c, "prod", "hello", "CANARY"), PermissionDeniedError,
     "may not environment.update in environment prod"),
    ("admin", lambda c: subscribe(c, "prod", "hello", "STABLE"), ConflictError,
     "already subscribes to STABLE"),
    ("admin", lambda c: subscribe(c, "prod", "hello", "GOLD"), NotFoundError,
     "channel GOLD of product hello does not exist"),
    ("admin", lambda c: unsubscribe(c, "test", "hello"), NotFoundError,
     "subscribes to no channel of product hello"),
])
def test_channel_admin_refusals_change_nothing(
    world: World, who: str, call: object, error: type[HubError], words: str
) -> None:
    create_product(world.ctx("dev"), "hello")
    subscribe(world.ctx("admin"), "prod", "hello", "STABLE")
    world.session.commit()
    before = _snapshot(world), _channels(world)
    with pytest.raises(error, match=None) as caught:
        call(world.ctx(who))  # type: ignore[operator]
    world.session.rollback()
    assert words in str(caught.value)
    assert (_snapshot(world), _channels(world)) == before


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "6h", "2d")] == [
        90, 90, 1800, 21600, 172800]
    with pytest.raises(ValidationError, match="not a duration"):
        parse_duration("an hour")


# --- promotion and its rule ---------------------------------------------------------------


def test_promotion_rule_approvers_and_health_gates(world: World, tmp_path: Path) -> None:
    admin = world.ctx("admin")
    create_environment(admin, "canary")
    site1 = _agent(world, tmp_path, "canary-01", "canary")
    site2 = _agent(world, tmp_path, "canary-02", "canary")
    release = _release(world, tmp_path)
    subscribe(admin, "canary", "hello", "CANARY")
    subscribe(admin, "prod", "hello", "STABLE")
    set_rule(admin, "hello", "STABLE", ChannelRule(
        required_approvals=2, min_successes=2, no_failures=True,
        soak_seconds=parse_duration("1h")))
    world.session.commit()

    # Into CANARY (no rule): one planned deployment per canary agent, queued at once
    # (canary requires one approval; appr1 gave it).
    done = promote(world.ctx("op"), "hello", "1.0.0")
    world.session.commit()
    assert done.entry.channel.name == "CANARY" and done.previous.name == "RELEASE"
    assert sorted(d.agent.agent_id for d in done.queued if d.agent) == ["canary-01",
                                                                          "canary-02"]
    assert [e["from"] for e in _events(world, "deployment.queued")] == ["planned", "planned"]

    # One canary agent runs it.
    world.clock.advance(60)
    usb = tmp_path / "usb1"
    export_environment(world.ctx("op"), "canary", usb)
    world.session.commit()
    assert _run_at_site(world, site1, usb, tmp_path / "back1") == ["succeeded"]

    # Into STABLE: refused with everything that is missing; nothing changes.
    before = _snapshot(world)
    with pytest.raises(PromotionRefusedError) as refused:
        promote(world.ctx("op"), "hello", "1.0.0", "stable")
    world.session.rollback()
    message = str(refused.value)
    assert "promotion of release hello 1.0.0 from CANARY to STABLE refused" in message
    assert "approvals: 0 of 2 distinct approver(s) other than the author dev" in message
    assert "successes: succeeded on 1 of 2 agent(s) in CANARY (canary)" in message
    assert "soak 1h: last success in CANARY at 2026-11-23 09:01 UTC" in message
    assert _snapshot(world) == before

    # The author cannot approve the promotion (even as an approver); approvers can, once each.
    grant_role(admin, "dev", "approver")
    with pytest.raises(SeparationOfDutiesError, match="dev is its author"):
        approve_promotion(world.ctx("dev"), "hello", "1.0.0", "STABLE")
    world.session.rollback()
    approve_promotion(world.ctx("appr1"), "hello", "1.0.0", "STABLE", comment="canary fine")
    world.session.commit()
    with pytest.raises(ConflictError, match="appr1 already approved"):
        approve_promotion(world.ctx("appr1"), "hello", "1.0.0", "STABLE")
    world.session.rollback()
    approve_promotion(world.ctx("admin"), "hello", "1.0.0")  # default: the next channel
    world.session.commit()

    world.clock.advance(60)
    assert _run_at_site(world, site2, usb, tmp_path / "back2") == ["succeeded"]
    with pytest.raises(PromotionRefusedError) as soaking:
        promote(world.ctx("op"), "hello", "1.0.0", "STABLE")
    world.session.rollback()
    assert str(soaking.value).endswith(
        "missing: soak 1h: last success in CANARY at 2026-11-23 09:02 UTC, so not before "
        "2026-11-23 10:02 UTC (1h 1s from now)"), soaking.value

    world.clock.advance(3600)
    done = promote(world.ctx("op"), "hello", "1.0.0", "STABLE", comment="soaked")
    world.session.commit()
    assert _where(world, release) == ["RELEASE", "CANARY", "STABLE"]
    (event,) = _events(world, "channel.promote")[1:]
    assert event["approvers"] == ["admin", "appr1"] and event["from"] == "CANARY"
    gates = event["gates"]
    assert isinstance(gates, dict) and gates["succeeded"] == ["canary-01", "canary-02"]

    # prod (no agent: one environment-wide deployment) requires two approvals of the
    # release: planned, waiting, until a second approver approves.
    (prod,) = done.planned
    assert prod.state == "planned" and done.queued == ()
    now = world.clock()
    assert waiting_for(world.session, prod, now) == [
        "approvals: environment prod needs 2 approvals; found 1 (appr1/-)"]
    approve_release(world.ctx("appr2"), release)
    world.session.commit()
    assert prod.state == "queued" and waiting_for(world.session, prod, now) == []
    site1.close()
    site2.close()


def test_a_failure_in_the_previous_channel_blocks_promotion(world: World, tmp_path: Path) -> None:
    admin = world.ctx("admin")
    _release(world, tmp_path)
    subscribe(admin, "test", "hello", "CANARY")
    set_rule(admin, "hello", "STABLE", ChannelRule(no_failures=True))
    (dep,) = promote(world.ctx("op"), "hello", "1.0.0").queued
    transition(world.ctx("op"), dep, "exported")
    transition(world.ctx("op"), dep, "failed")
    world.session.commit()
    before = _snapshot(world)
    with pytest.raises(PromotionRefusedError, match=(
            rf"missing: no failure: failed in CANARY on env:test \(failed, deployment "
            rf"{dep.id}\)$")):
        promote(world.ctx("op"), "hello", "1.0.0")
    world.session.rollback()
    assert _snapshot(world) == before


def test_a_gate_without_subscribers_says_so(world: World, tmp_path: Path) -> None:
    _release(world, tmp_path)
    set_rule(world.ctx("admin"), "hello", "CANARY", ChannelRule(min_successes=1))
    with pytest.raises(PromotionRefusedError,
                       match="no environment subscribes to RELEASE of product hello"):
        promote(world.ctx("op"), "hello", "1.0.0")


@pytest.mark.parametrize(("who", "to", "error", "words"), [
    ("appr1", None, PermissionDeniedError, "may not channel.promote"),
    ("op", "STABLE", InvalidStateError, "is not in CANARY, the channel before STABLE"),
    ("op", "RELEASE", ConflictError, "is in RELEASE already"),
    ("op", "GOLD", NotFoundError, "channel GOLD of product hello does not exist"),
])
def test_promotion_refusals_change_nothing(
    world: World, tmp_path: Path, who: str, to: str | None, error: type[HubError], words: str
) -> None:
    _release(world, tmp_path)
    before = _snapshot(world)
    with pytest.raises(error) as caught:
        promote(world.ctx(who), "hello", "1.0.0", to)
    world.session.rollback()
    assert words in str(caught.value)
    assert _snapshot(world) == before


def test_unapproved_release_is_in_no_channel(world: World, tmp_path: Path) -> None:
    _release(world, tmp_path, approve=False)
    with pytest.raises(InvalidStateError, match="is submitted; only an approved release"):
        promote(world.ctx("op"), "hello", "1.0.0")


# --- recall -------------------------------------------------------------------------------


def test_recall_cancels_planned_and_queued_and_the_site_refuses_the_exported_bundle(
    world: World, tmp_path: Path
) -> None:
    admin = world.ctx("admin")
    site = _agent(world, tmp_path, "site-01", "test")
    old = _release(world, tmp_path, "1.0.0")
    subscribe(admin, "test", "hello", "CANARY")
    subscribe(admin, "prod", "hello", "CANARY")
    promote(world.ctx("op"), "hello", "1.0.0")  # test: queued; prod: planned (1 of 2)
    world.session.commit()
    world.clock.advance(60)
    usb = tmp_path / "usb1"
    (written,) = export_environment(world.ctx("op"), "test", usb).written
    world.session.commit()
    states = {d.environment.name: d for d in world.session.scalars(select(Deployment))}
    assert (states["test"].state, states["prod"].state) == ("exported", "planned")

    # Refusals first: nothing changes.
    before = _snapshot(world)
    for who, channel, reason, error in (
            ("appr1", "CANARY", "bad", PermissionDeniedError),
            ("op", "CANARY", "  ", ValidationError),
            ("op", "STABLE", "bad", InvalidStateError)):
        with pytest.raises(error):
            recall(world.ctx(who), "hello", "1.0.0", channel, reason)
        world.session.rollback()
    assert _snapshot(world) == before

    done = recall(world.ctx("op"), "hello", "1.0.0", "canary", "corrupts invoices")
    world.session.commit()
    assert done.channels == ["CANARY"] and _where(world, old) == ["RELEASE"]
    assert [d.environment.name for d in done.cancelled] == ["prod"]
    assert [d.environment.name for d in done.lost] == ["test"]
    assert (states["prod"].state, states["test"].state) == ("cancelled", "lost")
    (event,) = _events(world, "channel.recall")
    assert event["reason"] == "corrupts invoices" and event["channels"] == ["CANARY"]
    with pytest.raises(InvalidStateError, match="was recalled from CANARY by op"):
        promote(world.ctx("op"), "hello", "1.0.0")
    world.session.rollback()
    # Nor can it be queued by hand, in a subscribed environment or any other.
    before = _snapshot(world)
    for env in ("test", "prod"):
        with pytest.raises(InvalidStateError,
                           match="recalled from CANARY by op: corrupts invoices"):
            queue_deployment(world.ctx("admin"), old, env)
        world.session.rollback()
    assert _snapshot(world) == before

    # The next release to the site carries the signed decision: the agent runs it and
    # refuses the recalled bundle with the hub's reason.
    _release(world, tmp_path, "1.0.1")
    promote(world.ctx("op"), "hello", "1.0.1")
    world.session.commit()
    world.clock.advance(60)
    usb2 = tmp_path / "usb2"
    export_environment(world.ctx("op"), "test", usb2)
    world.session.commit()
    assert _run_at_site(world, site, usb2, tmp_path / "back") == ["succeeded"]
    now = world.clock().timestamp()
    dest = site.config.inbox / written.paths[0].name
    shutil.copyfile(written.paths[0], dest)
    os.utime(dest, (now - 3600, now - 3600))
    (out,) = site.run_once()
    assert out.status == "rejected"
    assert "declared lost by op" in out.summary
    assert "release hello 1.0.0 recalled from CANARY: corrupts invoices" in out.summary
    site.close()


# --- concurrency (PostgreSQL) ------------------------------------------------------------


def test_concurrent_promotions_enter_once_on_postgresql(
    pg_db: str, keys: Keys, clock: FakeClock, tmp_path: Path
) -> None:
    """Four operators promote the same release into CANARY at the same instant: one
    promotion, one audit event; every other caller gets a ConflictError naming the release
    (never a database error)."""
    engine = make_engine(pg_db)
    upgrade(engine)
    try:
        with Session(engine, expire_on_commit=False) as session:
            bootstrap_admin(session, clock, "admin")
            w = World(session, clock, keys, tmp_path / "releases")
            seed_people(w.ctx("admin"), PEOPLE)
            session.commit()
            _release(w, tmp_path)
        outcomes: list[str] = []
        start = threading.Barrier(4)

        def attempt(_i: int) -> None:
            with Session(engine, expire_on_commit=False) as session:
                w = World(session, clock, keys, tmp_path / "releases")
                start.wait()
                try:
                    promote(w.ctx("op"), "hello", "1.0.0", "CANARY")
                    session.commit()
                    outcomes.append("promoted")
                except ConflictError as exc:
                    session.rollback()
                    assert "hello 1.0.0" in str(exc)
                    outcomes.append("conflict")

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(outcomes) == ["conflict"] * 3 + ["promoted"]
        with Session(engine) as session:
            w = World(session, clock, keys, None)
            assert len(_events(w, "channel.promote")) == 1
            assert session.scalar(select(func.count()).select_from(ChannelEntry)) == 2
    finally:
        engine.dispose()


def test_a_channel_approval_rule_applies_to_deployments_planned_through_it(
    world: World, tmp_path: Path
) -> None:
    """prod needs 2 approvals, but 1 for releases reaching it through STABLE (the approval
    rules spell channels in lower case): a planned deployment through STABLE is queued with
    one approval, and the deployment page's reasons (readiness) agree."""
    from hub.services.approval_rules import set_channel_rule
    from hub.services.readiness import waiting_for as reasons

    admin = world.ctx("admin")
    release = _release(world, tmp_path)
    set_channel_rule(admin, "prod", "stable", required=1)
    subscribe(admin, "prod", "hello", "STABLE")
    promote(world.ctx("op"), "hello", "1.0.0")
    (dep,) = promote(world.ctx("op"), "hello", "1.0.0").planned
    world.session.commit()
    assert dep.state == "queued" and release.state == "approved"
    assert [r.kind for r in reasons(world.session, dep, world.clock())
            if r.kind == "approvals"] == []


def test_a_release_rejected_after_it_was_planned_is_never_queued(
    world: World, tmp_path: Path
) -> None:
    admin = world.ctx("admin")
    release = _release(world, tmp_path)
    subscribe(admin, "prod", "hello", "CANARY")  # prod needs 2 approvals: planned, waiting
    (dep,) = promote(world.ctx("op"), "hello", "1.0.0").planned
    reject_release(world.ctx("appr2"), release, comment="found a bug")
    world.session.commit()
    assert advance_planned(world.ctx("op"), [dep]) == []
    assert dep.state == "planned"
    assert waiting_for(world.session, dep, world.clock()) == [
        "release hello 1.0.0 is rejected"]
