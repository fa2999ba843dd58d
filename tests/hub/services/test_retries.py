"""Retries are first-class at the hub (issue 9 §1, "Retries cannot be recorded"): a
deployment moves interrupted/failed → retried → succeeded/failed, each result is one
attempt (number, outcome, times), and the audit log shows the history.

A real agent (in-process) runs a bundle whose step fails until a marker file exists; the
operator retries it at the site (once "interrupted" by a simulated power cut, once for real).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from agent.inbox import ReadyItem
from agent.service import Agent
from hub.db import AuditEvent, Deployment, DeploymentAttempt
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import World, write_release
from tests.hub.services.test_exchange import _agent


def _three_attempts(world: World, tmp_path: Path) -> tuple[Agent, list[Path]]:
    """Attempt 1 fails, attempt 2 is interrupted, attempt 3 succeeds; their result files."""
    marker = tmp_path / "go"
    src = write_release(tmp_path / "src", steps={"check": f"test -f {marker}\n"})
    release = create_release(world.ctx("dev"), src, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    agent = _agent(world, tmp_path)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    usb = tmp_path / "usb"
    export_environment(world.ctx("op"), "test", usb)
    (bundle,) = usb.glob("*.tgb")
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    first = agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single", 0.0))
    assert first.status == "failed", first.summary
    bundle_id = agent.journal.bundles()[0].bundle_id
    # Retry, and the power fails while the step runs: the restarted agent reports it.
    attempt = agent.journal.add_attempts(bundle_id, 0)
    agent.journal.set_bundle_state(bundle_id, "running")
    agent.journal.step_running(bundle_id, 0, attempt, str(tmp_path / "step.log"))
    assert len(agent.recover()) == 1
    marker.write_text("")
    assert agent.retry(bundle_id, 1).status == "succeeded"
    results = sorted(agent.config.outbox.glob("*.tgr"))
    assert [r.name.rsplit("-", 1)[1] for r in results] == [
        "failed.tgr", "interrupted.tgr", "succeeded.tgr"]
    return agent, results


def _history(world: World) -> tuple[str, list[tuple[int, str]], list[str]]:
    world.session.expire_all()
    dep = world.session.scalars(select(Deployment)).one()
    attempts = [
        (a.attempt, a.status)
        for a in world.session.scalars(
            select(DeploymentAttempt).order_by(DeploymentAttempt.attempt))
    ]
    moves = world.session.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.object_type == "deployment", AuditEvent.object_id == str(dep.id),
               AuditEvent.action.like("deployment.%"))
        .order_by(AuditEvent.seq)).all()
    return dep.state, attempts, list(moves)


def test_retried_deployment_ends_succeeded_with_every_attempt(
    world: World, tmp_path: Path
) -> None:
    _, results = _three_attempts(world, tmp_path)
    back = tmp_path / "back"
    back.mkdir()
    for r in results:
        shutil.copy(r, back)
    reads: list[str] = []  # the statements that read attempts

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "deployment_attempts" in statement:
            reads.append(statement)

    engine = world.session.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        report = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results")
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [r.status for r in report.rows] == ["imported"] * 3, report.rows
    assert len(reads) == 1, reads  # once for the batch, not once per result
    assert all(not r.flags for r in report.rows)  # no "gap" from a refused result
    state, attempts, moves = _history(world)
    assert state == "succeeded"
    assert attempts == [(1, "failed"), (2, "interrupted"), (3, "succeeded")]
    assert moves == ["deployment.queue", "deployment.exported",
                     "deployment.failed", "deployment.retried", "deployment.interrupted",
                     "deployment.retried", "deployment.succeeded"]
    imported = world.session.scalars(
        select(AuditEvent.details).where(AuditEvent.action == "result.import")
        .order_by(AuditEvent.seq)).all()
    assert [(json.loads(d)["attempt"], json.loads(d)["status"]) for d in imported] == attempts


def test_results_arriving_newest_first_keep_the_newest_outcome(
    world: World, tmp_path: Path
) -> None:
    """Media bring the retry's result first: older attempts only join the history."""
    _, results = _three_attempts(world, tmp_path)
    for n, r in enumerate(reversed(results)):
        stick = tmp_path / f"stick-{n}"
        stick.mkdir()
        shutil.copy(r, stick)
        report = import_directory(world.ctx("op"), stick, results_dir=tmp_path / "results")
        assert [row.status for row in report.rows] == ["imported"], report.rows
    state, attempts, _ = _history(world)
    assert state == "succeeded"
    assert attempts == [(1, "failed"), (2, "interrupted"), (3, "succeeded")]
