"""Scheduled site jobs end to end through the hub's services: a release carrying
``schedule.toml`` is approved, exported to media and run by a real agent (in-process); the
agent runs the job three times on its own clock with no hub; the next bundle's signed result
carries the three outcomes, and the hub imports and audits each (``job.run``)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

from hub.services.approvals import approve_release
from hub.services.audit import iter_events
from hub.services.deployments import queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent, _deliver

HOUR = 3600


def _release(tmp: Path, version: str, marker: Path, schedule: bool) -> Path:
    d = tmp / f"ops-{version}"
    (d / "jobs").mkdir(parents=True)
    (d / "step.sh").write_text("echo step\n")
    (d / "jobs" / "cleanup.sh").write_text(f'echo cleaned >> "{marker}"\necho "cleaned up"\n')
    (d / "release.toml").write_text(
        f'format = 1\n[release]\nproduct = "ops"\nversion = "{version}"\n\n[[steps]]\n'
        'name = "step"\nkind = "shell"\nscript = "step.sh"\n')
    if schedule:
        (d / "schedule.toml").write_text(
            '[[schedule]]\nname = "cleanup"\ncron = "30 * * * *"\ntimezone = "Asia/Shanghai"\n'
            'retries = 1\ntimeout = 60\nscript = "jobs/cleanup.sh"\n')
    return d


def _ship(world: World, release_dir: Path, usb: Path) -> None:
    release = create_release(world.ctx("dev"), release_dir, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    report = export_environment(world.ctx("op"), "test", usb)
    assert len(report.written) == 1 and not report.failed


def test_three_offline_runs_arrive_in_the_next_result_and_are_audited(
        world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    marker = tmp_path / "cleaned.txt"
    _ship(world, _release(tmp_path, "1.0.0", marker, schedule=True), tmp_path / "usb1")
    _deliver(agent, tmp_path / "usb1")
    back = tmp_path / "back"
    shutil.copytree(agent.config.outbox, back)
    import_directory(world.ctx("op"), back, results_dir=tmp_path / "results")
    world.session.commit()
    # Disconnected: three half-past-the-hour fire times pass on the agent's clock.
    for n in (1, 2, 3):
        world.clock.advance(HOUR)
        agent.run_once()
        assert marker.read_text().count("cleaned") == n
    assert len(list(agent.config.outbox.glob("*.tgr"))) == 1  # batched, no result yet
    # The next release, by media: its result carries the three runs.
    _ship(world, _release(tmp_path, "1.0.1", marker, schedule=False), tmp_path / "usb2")
    _deliver(agent, tmp_path / "usb2")
    back2 = tmp_path / "back2"
    shutil.copytree(agent.config.outbox, back2)
    rows = import_directory(world.ctx("op"), back2, results_dir=tmp_path / "results").rows
    assert sorted(r.status for r in rows if r.file.endswith(".tgr")) == ["duplicate",
                                                                         "imported"]
    world.session.commit()
    runs = [e for e in iter_events(world.session) if e.action == "job.run"]
    assert len(runs) == 3
    assert {(e.object_type, e.object_id) for e in runs} == {("agent", "site-01")}
    details = [json.loads(e.details_text or "{}") for e in runs]
    assert [(d["job"], d["state"], d["attempts"], d["result_seq"]) for d in details] == [
        ("cleanup", "succeeded", 1, 2)] * 3
    dues = [d["due_at"] for d in details]
    assert [b - a for a, b in itertools.pairwise(dues)] == [HOUR, HOUR]
    assert all("cleaned up" in d["summary"] for d in details)
    agent.close()
