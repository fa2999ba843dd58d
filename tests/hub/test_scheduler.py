"""The hub's scheduler (hub.scheduler): its decisions with an injected clock, and a real
``tiangong hub scheduler`` process that writes a bundle to the file share when a window
opens (and refuses to run twice for one hub)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, Deployment, PolicyRule
from hub.scheduler import RESYNC_S, HubScheduler, scheduled_environments, tick
from hub.services.windows import add_rule, request_override
from tests.e2e.conftest import TIANGONG, wait_for
from tests.hub.conftest import World
from tests.hub.realhub import ENV, RealHub
from tests.hub.services.test_windows import SAT_BERLIN, SAT_OPENS, _queued

DEADLINE = 60.0  # seconds a real process gets to act


def _factory(engine: Engine) -> Callable[[], Session]:
    return lambda: Session(engine, expire_on_commit=False)


def _actions(world: World) -> list[tuple[str, str]]:
    world.session.expire_all()
    return [(e.action, e.actor) for e in world.session.scalars(
        select(AuditEvent).where(AuditEvent.actor == "system:scheduler"))]


def test_window_opening_releases_and_exports_to_the_share(world: World, engine: Engine,
                                                          tmp_path: Path) -> None:
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    world.session.commit()
    share = tmp_path / "share"
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=share,
                  export_environments=frozenset({"test"}))
    assert report.released == [] and report.exported == {}
    # Nothing due before the opening: the next run is the resync, not earlier.
    assert report.next_run == world.clock() + timedelta(seconds=RESYNC_S)
    assert not share.exists() or not list(share.glob("*.tgb"))
    world.clock.now = SAT_OPENS - timedelta(seconds=30)
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=share,
                  export_environments=frozenset({"test"}))
    assert report.next_run == SAT_OPENS  # it wakes exactly at the opening
    world.clock.now = SAT_OPENS
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=share,
                  export_environments=frozenset({"test"}))
    assert report.released == [dep.id] and report.exported == {"test": [dep.id]}
    assert [p.name for p in share.glob("*.tgb")] and (share / "INDEX-test.txt").exists()
    world.session.refresh(dep)
    assert dep.state == "exported" and dep.hold_until is None
    assert ("bundle.written", "system:scheduler") in _actions(world)


def test_environments_not_named_are_not_exported(world: World, engine: Engine,
                                                 tmp_path: Path) -> None:
    dep = _queued(world)
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=tmp_path / "s",
                  export_environments=frozenset({"prod"}))
    assert report.exported == {}
    world.session.refresh(dep)
    assert dep.state == "queued"
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=tmp_path / "s",
                  export_environments=None)  # "*"
    assert report.exported == {"test": [dep.id]}


def test_frozen_deployment_waits_for_the_freeze_to_end(world: World, engine: Engine,
                                                       tmp_path: Path) -> None:
    dep = _queued(world)
    now = int(world.clock().timestamp())
    rule = add_rule(world.ctx("admin"), "freeze",
                    {"kind": "once", "start": now, "end": now + 600, "reason": "audit"},
                    environment="test")
    world.session.commit()
    share = tmp_path / "share"
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=share,
                  export_environments=None)
    assert report.exported == {} and report.next_run == world.clock() + timedelta(seconds=60)
    world.clock.advance(600)
    report = tick(_factory(engine), world.keys.hub, world.clock, export_dir=share,
                  export_environments=None)
    assert report.expired_freezes == [rule.id] and report.released == [dep.id]
    assert report.exported == {"test": [dep.id]}
    world.session.refresh(rule)
    assert rule.ended_by == "system:scheduler"
    assert ("freeze.expire", "system:scheduler") in _actions(world)


def test_override_requests_expire(world: World, engine: Engine) -> None:
    dep = _queued(world)
    request_override(world.ctx("op"), dep, "hotfix")
    world.session.commit()
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.expired_overrides == []
    assert report.next_run == world.clock() + timedelta(seconds=RESYNC_S)
    world.clock.advance(24 * 3600)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert len(report.expired_overrides) == 1
    assert ("override.expire", "system:scheduler") in _actions(world)


def test_without_a_share_nothing_is_written(world: World, engine: Engine) -> None:
    dep = _queued(world)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.exported == {}
    world.session.refresh(dep)
    assert dep.state == "queued"


def test_apscheduler_runs_ticks_and_survives_a_database_error(world: World,
                                                              engine: Engine) -> None:
    def broken() -> Session:
        raise OSError("database file is gone")

    sched = HubScheduler(broken, world.keys.hub, clock=world.clock)
    report = sched.run_once()
    assert report.next_run == world.clock() + timedelta(seconds=RESYNC_S)
    sched = HubScheduler(_factory(engine), world.keys.hub, clock=world.clock)
    sched.start()
    try:
        wait_for(lambda: sched.ticks >= 1, DEADLINE, "the first tick")
    finally:
        sched.stop()
    assert sched.last is not None and sched.last.at == world.clock()


@pytest.mark.parametrize(("setting", "expected"), [
    ("", frozenset()), ("prod, lab", frozenset({"prod", "lab"})), ("*", None),
    ("prod,*", None)])
def test_scheduled_environments(setting: str, expected: frozenset[str] | None) -> None:
    assert scheduled_environments(setting) == expected


# --- a real process ----------------------------------------------------------------------


def test_real_scheduler_writes_the_bundle_when_the_window_opens(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    hub.queue()  # no agent: one deployment for the environment
    share = tmp_path / "share"
    with (hub.data / "hub.toml").open("a") as toml:
        toml.write(f'\nexport_dir = "{share}"\nscheduled_export = "{ENV}"\n')
    opens = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    spec = json.dumps({"kind": "once", "start": int(opens.timestamp()),
                       "end": int(opens.timestamp()) + 3600})
    out = hub.cli("windows", "add", spec, "--environment", ENV, "--json", user="admin")
    assert out.returncode == 0, out.stderr
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*TIANGONG, "hub", "scheduler"], stdout=out,
                                stderr=subprocess.STDOUT, env=hub.env)
    try:
        def written() -> bool:  # the index is written after the bundle is recorded
            return proc.poll() is not None or (share / f"INDEX-{ENV}.txt").exists()

        wait_for(written, DEADLINE, "the scheduler to write the bundle at the opening")
        assert proc.poll() is None, log.read_text()
        assert len(list(share.glob("*.tgb"))) == 1
        with hub.ctx() as ctx:
            (dep,) = ctx.session.scalars(select(Deployment)).all()
            assert dep.state == "exported" and dep.exported_at is not None
            assert dep.exported_at >= opens  # not before the window opened
            assert ctx.session.scalars(select(PolicyRule)).one().kind == "window"
        # A second scheduler for the same hub refuses to start and names the first.
        second = hub.cli("scheduler")
        assert second.returncode == 2
        assert f"another scheduler (process {proc.pid})" in second.stderr
        # As a child of another `hub serve` (--parent-pid) it stands by, and takes over.
        standby_log = tmp_path / "standby.log"
        with standby_log.open("wb") as out:
            standby = subprocess.Popen(
                [*TIANGONG, "hub", "scheduler", "--parent-pid", str(os.getpid())],
                stdout=out, stderr=subprocess.STDOUT, env=hub.env)
        try:
            wait_for(lambda: "standing by" in standby_log.read_text(), DEADLINE,
                     "the second scheduler to stand by")
            proc.terminate()
            proc.wait(DEADLINE)
            wait_for(lambda: "scheduler: running" in standby_log.read_text(), DEADLINE,
                     "the standby to take over")
            lock = (hub.data / "scheduler.lock").read_text().strip()
            assert lock == str(standby.pid)
        finally:
            standby.terminate()
            standby.wait(DEADLINE)
        assert standby.returncode == 0, standby_log.read_text()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(DEADLINE)
        hub.close()
    assert proc.returncode == 0, log.read_text()
    assert "scheduler: wrote 1 bundle(s) of plant-a" in log.read_text()


def test_an_approval_expiring_is_recorded_once_and_the_deployment_waits(
        world: World, engine: Engine) -> None:
    from hub.services.readiness import waiting_for

    dep = _queued(world, env="prod")  # prod needs 2 approvals: appr1 and appr2 gave them
    approval = dep.release.approvals[-1]
    approval.expires_at = world.clock() + timedelta(hours=1)  # as a signed approval's
    world.session.commit()
    world.clock.advance(3600 - 30)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.expired_approvals == []
    assert report.next_run == approval.expires_at  # it wakes exactly then
    world.clock.advance(30)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.expired_approvals == [approval.id]
    assert tick(_factory(engine), world.keys.hub, world.clock).expired_approvals == []
    assert _actions(world).count(("approval.expire", "system:scheduler")) == 1
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.kind == "approvals" and reason.text.startswith("approval 1 of 2")
