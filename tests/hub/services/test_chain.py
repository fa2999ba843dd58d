"""The hub's part of the sequence chain: each bundle names its predecessor; a lost bundle is
declared (audited) and the next bundle carries the decision to a real in-process agent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from agent.service import Agent
from bundle.inspect import inspect
from hub.db import AuditEvent, Deployment
from hub.errors import InvalidStateError, PermissionDeniedError, ValidationError
from hub.services.approvals import approve_release
from hub.services.chain import DECLARED_LOST, declare_lost
from hub.services.deployments import attempt_outcome, get_deployment, queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"


def _release(world: World, tmp: Path, version: str):  # type: ignore[no-untyped-def]
    src = tmp / f"hello-{version}"
    shutil.copytree(HELLO, src)
    toml = src / "release.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
    release = create_release(world.ctx("dev"), src, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    return release


def _ship(world: World, tmp: Path, version: str, usb: str) -> tuple[int, Path]:
    """Queue ``version`` for the test environment and export it; (deployment id, bundle)."""
    (dep,) = queue_deployment(world.ctx("op"), _release(world, tmp, version), "test")
    world.session.commit()
    world.clock.advance(60)
    report = export_environment(world.ctx("op"), "test", tmp / usb)
    (written,) = report.written
    return dep.id, written.paths[0]


def _drop(agent: Agent, bundle: Path, now: float) -> None:
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    os.utime(dest, (now - 3600, now - 3600))  # settled long ago


def _chain(bundle: Path) -> dict[str, object]:
    chain = inspect(bundle).manifest.chain  # the hub's own bundle: looked at, not trusted
    assert chain is not None
    return chain.to_json()


def test_each_bundle_names_its_predecessor(world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    _, first = _ship(world, tmp_path, "1.0.1", "usb1")
    _, second = _ship(world, tmp_path, "1.0.2", "usb2")
    assert _chain(first) == {"previous": None, "lost": []}
    prev = _chain(second)["previous"]
    assert isinstance(prev, dict)
    assert (prev["sequence"], prev["product"], prev["version"], prev["exported_by"]) == (
        1, "hello", "1.0.1", "op")
    agent.close()


def test_lost_bundle_declared_then_the_agent_proceeds_and_refuses_it(
    world: World, tmp_path: Path
) -> None:
    agent = _agent(world, tmp_path)
    now = world.clock().timestamp()
    _, b1 = _ship(world, tmp_path, "1.0.1", "usb1")
    lost_id, b2 = _ship(world, tmp_path, "1.0.2", "usb2")
    _, b3 = _ship(world, tmp_path, "1.0.3", "usb3")
    _drop(agent, b1, now)
    _drop(agent, b3, now)
    outs = agent.run_once()
    assert [o.status for o in outs] == ["succeeded", "held"]
    assert "waiting for sequence 2, hello 1.0.2, exported 2026-11-23 by op" in outs[1].summary

    dep, again = declare_lost(world.ctx("op"), lost_id, "stick 2 fell overboard", requeue=True)
    world.session.commit()
    assert dep.state == "lost" and again is not None and again.state == "queued"
    event = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == DECLARED_LOST)).one()
    assert event.actor == "op" and event.object_id == "agent:site-01"
    assert "stick 2 fell overboard" in event.details

    world.clock.advance(60)
    (b4,) = export_environment(world.ctx("op"), "test", tmp_path / "usb4").written
    lost = _chain(b4.paths[0])["lost"]
    assert isinstance(lost, list) and [x["bundle"]["sequence"] for x in lost] == [2]
    _drop(agent, b4.paths[0], now)
    outs = agent.run_once()
    assert [(o.status, o.bundle_id) for o in outs] == [
        ("succeeded", get_deployment(world.session, lost_id + 1).bundle_id),
        ("succeeded", b4.bundle_id)]

    # The lost stick turns up: refused with the hub's decision, reported in a signed result.
    _drop(agent, b2, now)
    (out,) = agent.run_once()
    assert out.status == "rejected"
    assert "declared lost by op" in out.summary and "stick 2 fell overboard" in out.summary
    assert [b.sequence for b in agent.journal.bundles()] == [1, 3, 4]

    # Its signed result reaches the hub: attached to the lost deployment's history, which
    # stays lost; one result.import event, no state change.
    back = tmp_path / "back"
    back.mkdir()
    for result in agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)
    agent.close()
    moves = _transitions(world, lost_id)
    rows = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    assert sorted(r.status for r in rows) == ["imported"] * 4, rows
    (refused,) = [r for r in rows if r.reason.startswith("rejected:")]
    assert refused.deployment_id == lost_id and "declared lost by op" in refused.reason
    lost = get_deployment(world.session, lost_id)
    assert lost.state == "lost"
    assert [(a.attempt, attempt_outcome(a)) for a in lost.attempts] == [
        (1, "rejected: declared lost")]
    assert _transitions(world, lost_id) == moves
    imports = [json.loads(d) for d in world.session.scalars(select(AuditEvent.details).where(
        AuditEvent.action == "result.import"))]
    (about,) = [d for d in imports if d["deployment"] == lost_id]
    assert (about["status"], about["attempt"], about["bundle_id"]) == ("rejected", 1, None)
    # Imported again: a duplicate, nothing changes.
    again = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    assert [r.status for r in again] == ["duplicate"] * 4
    assert len(get_deployment(world.session, lost_id).attempts) == 1


def _transitions(world: World, dep_id: int) -> list[str]:
    """The audit events about deployment ``dep_id`` (its moves), oldest first."""
    return list(world.session.scalars(select(AuditEvent.action).where(
        AuditEvent.object_type == "deployment", AuditEvent.object_id == str(dep_id))
        .order_by(AuditEvent.seq)))


@pytest.mark.parametrize(
    ("who", "reason", "error"),
    [
        ("op", "   ", ValidationError),
        ("view", "lost", PermissionDeniedError),
        ("op", "lost", InvalidStateError),  # still queued: nothing was exported
    ],
)
def test_declare_lost_refusals_change_nothing(
    world: World, tmp_path: Path, who: str, reason: str, error: type[Exception]
) -> None:
    _agent(world, tmp_path).close()
    if error is InvalidStateError:
        (dep,) = queue_deployment(world.ctx("op"), _release(world, tmp_path, "1.0.1"), "test")
        world.session.commit()
        dep_id = dep.id
    else:
        dep_id, _ = _ship(world, tmp_path, "1.0.1", "usb1")
    before = world.session.get(Deployment, dep_id)
    assert before is not None
    state = before.state
    events = world.session.scalars(select(AuditEvent.seq)).all()
    with pytest.raises(error):
        declare_lost(world.ctx(who), dep_id, reason, requeue=True)
    world.session.rollback()
    assert get_deployment(world.session, dep_id).state == state
    assert world.session.scalars(select(AuditEvent.seq)).all() == events
    assert len(world.session.scalars(select(Deployment)).all()) == 1
