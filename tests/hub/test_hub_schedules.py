"""The hub's own timed work (hub.services.hub_schedules): a report schedule writes the
environment's report atomically at its fire times; an export schedule runs at its cron
fire times on the scheduler's clock — the queued deployment written into the share with its
index, audited ``schedule.run`` by the scheduler — once per fire time, missed fire times
coalesced, none before it was added, a fire time claimed once by two schedulers; every
refused schedule changes nothing; and a real ``tiangong hub scheduler`` process runs a
per-second schedule added with ``tiangong hub schedule export --json``, after one killed at
crash point ``hub.schedule-claimed`` (the next fire time writes what it did not)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, Deployment, HubSchedule
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.scheduler import tick
from hub.services.hub_schedules import (
    _claim,
    add_export,
    add_report,
    list_schedules,
    remove_schedule,
)
from tests.e2e.conftest import TIANGONG, wait_for
from tests.hub.conftest import World
from tests.hub.realhub import ENV, RealHub
from tests.hub.services.test_windows import _queued

DEADLINE = 60.0  # seconds a real process gets to act
SCHEDULE_POINTS = ["hub.schedule-claimed"]


def _factory(engine: Engine) -> Callable[[], Session]:
    return lambda: Session(engine, expire_on_commit=False)


def _runs(world: World) -> list[dict[str, object]]:
    world.session.expire_all()
    return [json.loads(e.details) for e in world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "schedule.run",
                                 AuditEvent.actor == "system:scheduler"))]


def test_an_export_schedule_runs_once_per_fire_time(world: World, engine: Engine,
                                                    tmp_path: Path) -> None:
    world.clock.now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 02:00 in Berlin
    share = tmp_path / "share"
    info = add_export(world.ctx(), "test", str(share), "30 2 * * *", "Europe/Berlin")
    world.session.commit()
    dep = _queued(world)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.scheduled == {} and not share.exists()
    assert report.next_run == datetime(2026, 11, 23, 1, 1, tzinfo=UTC)  # the resync first
    world.clock.now = datetime(2026, 11, 23, 1, 29, 30, tzinfo=UTC)
    assert tick(_factory(engine), world.keys.hub, world.clock).next_run == datetime(
        2026, 11, 23, 1, 30, tzinfo=UTC)  # wakes exactly at the fire time
    world.clock.now = datetime(2026, 11, 23, 1, 30, tzinfo=UTC)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.scheduled == {info.id: {
        "fire_at": "2026-11-23T01:30:00+00:00", "missed": 0, "written": [dep.id],
        "failed": [], "held": [], "error": ""}}
    assert len(list(share.glob("*.tgb"))) == 1 and (share / "INDEX-test.txt").exists()
    assert not list(share.glob(".*tmp*"))  # nothing half-written left
    world.session.expire_all()
    assert world.session.get(Deployment, dep.id).state == "exported"  # type: ignore[union-attr]
    assert tick(_factory(engine), world.keys.hub, world.clock).scheduled == {}  # once
    # Three days without a scheduler: one run for the latest fire time.
    world.clock.now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.scheduled[info.id]["missed"] == 2
    assert report.scheduled[info.id]["written"] == []  # nothing queued
    # audited when it wrote something (a fire time with nothing queued adds no event)
    assert [r["fire_at"] for r in _runs(world)] == ["2026-11-23T01:30:00+00:00"]
    [shown] = list_schedules(world.ctx("view"))
    assert shown.last_fire_at == "2026-11-26T01:30:00+00:00"
    remove_schedule(world.ctx(), info.id)
    world.session.commit()
    world.clock.now += timedelta(days=1)
    assert tick(_factory(engine), world.keys.hub, world.clock).scheduled == {}


def test_a_report_schedule_writes_the_environment_report_atomically(
        world: World, engine: Engine, tmp_path: Path) -> None:
    from hub.services.deployments import mark_exported, transition

    world.clock.now = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    share = tmp_path / "reports"
    info = add_report(world.ctx(), "test", str(share), "0 7 * * 1", "UTC")  # Mondays 07:00
    world.session.commit()
    dep = _queued(world)
    mark_exported(world.ctx("op"), dep, bundle_id="b1", bundle_path="/m/b1", sequence=1,
                  root_version=1)
    transition(world.ctx("op"), dep, "failed")
    world.session.commit()
    world.clock.now = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    report = tick(_factory(engine), world.keys.hub, world.clock)
    assert report.scheduled[info.id]["written"] == ["REPORT-test.json"]
    assert [p.name for p in share.iterdir()] == ["REPORT-test.json"]  # no temporary left
    doc = json.loads((share / "REPORT-test.json").read_text())
    assert (doc["environment"], doc["since"], doc["deployments"]) == (
        "test", None, {"failed": 1})
    assert [f["deployment"] for f in doc["failed_since"]] == [dep.id]
    assert doc["generated_at"] == "2026-11-23T07:00:00+00:00"
    world.clock.now = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)  # a week later
    tick(_factory(engine), world.keys.hub, world.clock)
    doc = json.loads((share / "REPORT-test.json").read_text())
    assert doc["since"] == "2026-11-23T07:00:00+00:00" and doc["failed_since"] == []
    assert [r["kind"] for r in _runs(world)] == ["report", "report"]


def test_a_fire_time_is_claimed_once(world: World, tmp_path: Path) -> None:
    add_export(world.ctx(), "test", str(tmp_path), "* * * * *")
    world.session.commit()
    [s] = world.session.scalars(select(HubSchedule)).all()
    other = Session(world.session.get_bind())
    stale = other.get(HubSchedule, s.id)
    fire = world.clock() + timedelta(minutes=1)
    assert _claim(world.ctx(), s, fire) is True
    from hub.services.context import ServiceContext
    assert stale is not None and _claim(ServiceContext(other, world.clock, None, None),
                                        stale, fire) is False
    other.close()


@pytest.mark.parametrize(("user", "env", "to", "cron", "tz", "error", "words"), [
    ("admin", "test", "/srv/share", "61 * * * *", "UTC", ValidationError, "cron '61 * * * *'"),
    ("admin", "test", "/srv/share", "0 * * *", "UTC", ValidationError, "4 fields: give 5"),
    ("admin", "test", "/srv/share", "0 2 * * *", "Mars/Base", ValidationError, "Mars/Base"),
    ("admin", "test", "share", "0 2 * * *", "UTC", ValidationError, "absolute path"),
    ("admin", "nowhere", "/srv/share", "0 2 * * *", "UTC", NotFoundError, "nowhere"),
    ("op", "test", "/srv/share", "0 2 * * *", "UTC", PermissionDeniedError, "op"),
])
def test_a_refused_schedule_changes_nothing(
        world: World, user: str, env: str, to: str, cron: str, tz: str,
        error: type[Exception], words: str) -> None:
    before = world.session.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(error) as exc:
        add_export(world.ctx(user), env, to, cron, tz)
    assert words in str(exc.value)
    world.session.rollback()
    assert world.session.scalar(select(func.count()).select_from(HubSchedule)) == 0
    assert world.session.scalar(select(func.count()).select_from(AuditEvent)) == before


def test_the_real_scheduler_runs_a_per_second_export_schedule(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    hub.queue()  # no agent: one deployment for the environment
    share = tmp_path / "share"
    bad = hub.cli("schedule", "export", "--environment", ENV, "--to", str(share), "--cron",
                  "0 2 * *", user="admin")
    assert bad.returncode == 1 and "4 fields: give 5" in bad.stderr
    out = hub.cli("schedule", "export", "--environment", ENV, "--to", str(share), "--cron",
                  "* * * * * *", "--json", user="admin")
    assert out.returncode == 0, out.stderr
    added = json.loads(out.stdout)
    assert (added["id"], added["cron"], added["to"]) == (1, "* * * * * *", str(share))
    # Killed right after claiming a fire time: nothing written, the deployment still queued.
    killed = subprocess.run([*TIANGONG, "hub", "scheduler"], capture_output=True,
                            timeout=DEADLINE * 2, check=False,
                            env={**hub.env, "TIANGONG_CRASH_AT": "hub.schedule-claimed"})
    assert killed.returncode == -signal.SIGKILL, killed
    assert not share.exists() or list(share.iterdir()) == []
    [claimed] = json.loads(hub.cli("schedule", "list", "--json").stdout)
    assert claimed["last_fire_at"] is not None and claimed["last_result"] is None
    with hub.ctx() as ctx:
        assert ctx.session.scalars(select(Deployment)).one().state == "queued"
    # The next scheduler writes it at the schedule's next fire time.
    log = tmp_path / "scheduler.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*TIANGONG, "hub", "scheduler"], stdout=fh,
                                stderr=subprocess.STDOUT, env=hub.env)
    try:
        wait_for(lambda: proc.poll() is not None or (share / f"INDEX-{ENV}.txt").exists(),
                 DEADLINE, "the scheduled export")
        assert proc.poll() is None, log.read_text()

        def recorded() -> bool:  # a fire time that wrote it (later ones find nothing queued)
            with hub.ctx() as ctx:
                return any(json.loads(e.details)["written"] for e in ctx.session.scalars(
                    select(AuditEvent).where(AuditEvent.action == "schedule.run")))

        wait_for(recorded, DEADLINE, "the schedule's outcome")
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
    assert proc.returncode == 0, log.read_text()
    assert len(list(share.glob("*.tgb"))) == 1
    [row] = json.loads(hub.cli("schedule", "list", "--json").stdout)
    with hub.ctx() as ctx:
        dep = ctx.session.scalars(select(Deployment)).one()
        assert dep.state == "exported" and row["last_fire_at"] is not None
        runs = ctx.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "schedule.run")).all()
        assert [(e.actor, json.loads(e.details)["written"]) for e in runs] == [
            ("system:scheduler", [dep.id])]  # written once, by one fire time
        assert ctx.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "bundle.written")).one().actor == "system:scheduler"
    out = hub.cli("schedule", "remove", "1", "--json", user="admin")
    assert out.returncode == 0 and json.loads(hub.cli("schedule", "list", "--json").stdout) == []
    hub.close()
