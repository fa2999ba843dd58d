"""Batched export (docs/hub.md "Batches"): the commits of an export do not grow with the
number of deployments, every deployment keeps its own audit events, one that fails is
rolled back alone, and the release's frames are compressed once for all agents."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from sqlalchemy import event, select

from hub.db import Agent as AgentRow
from hub.db import AuditEvent, Deployment, SequenceCounter
from hub.services.agents import EnrollmentRequest, enroll_agent
from hub.services.approvals import approve_release
from hub.services.audit import verify_database
from hub.services.deployments import queue_deployment
from hub.services.export import FRAMES_DIR, export_agents, export_environment
from hub.services.releases import create_release, submit_release
from signing.keys import BoxKeyPair, SigningKey
from tests.hub.conftest import World

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"


def _enroll(world: World, ids: list[str]) -> None:
    for agent_id in ids:
        enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()


def _queue(world: World, version_dir: Path = HELLO) -> None:
    release = create_release(world.ctx("dev"), version_dir, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()


def _commits_of_export(world: World, usb: Path) -> tuple[int, int]:
    """(commits, bundles written) of one export_environment of every queued deployment."""
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    engine = world.session.get_bind()
    event.listen(engine, "commit", count)
    try:
        report = export_environment(world.ctx("op"), "test", usb)
    finally:
        event.remove(engine, "commit", count)
    assert not report.failed, report.failed
    return commits, len(report.written)


def test_commits_do_not_grow_with_the_number_of_deployments(world: World,
                                                            tmp_path: Path) -> None:
    _enroll(world, [f"site-{i:02d}" for i in range(2)])
    _queue(world)
    few, written = _commits_of_export(world, tmp_path / "usb1")
    assert written == 2
    _enroll(world, [f"site-{i:02d}" for i in range(2, 12)])
    steady = tmp_path / "steady"
    (steady / "release.toml").parent.mkdir()
    for item in HELLO.rglob("*"):
        dest = steady / item.relative_to(HELLO)
        if item.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            dest.write_bytes(item.read_bytes().replace(b'version = "1.0.0"', b'version = "1.0.1"'))
    _queue(world, steady)
    many, written = _commits_of_export(world, tmp_path / "usb2")
    assert written == 12
    assert many == few  # two deployments or twelve: the same commits
    events = world.session.scalars(select(AuditEvent)).all()
    deps = world.session.scalars(select(Deployment)).all()
    for action in ("bundle.claimed", "bundle.written"):
        per_dep = Counter(e.object_id for e in events if e.action == action)
        assert per_dep == Counter(str(d.id) for d in deps)  # each its own event, once
    written_events = {e.object_id: json.loads(e.details) for e in events
                      if e.action == "bundle.written"}
    for dep in deps:
        assert dep.state == "exported"
        assert dep.agent is not None
        assert written_events[str(dep.id)]["target"]["agents"] == [dep.agent.agent_id]
    assert verify_database(world.session, world.keys.hub).ok


def _counters(world: World) -> dict[str, int]:
    return {c.target: c.next_sequence
            for c in world.session.scalars(select(SequenceCounter))}


def test_one_failing_deployment_is_rolled_back_alone(world: World, tmp_path: Path) -> None:
    """An agent revoked after its deployment was queued: its claim is refused and rolled
    back (no sequence used, still queued), the others of the batch are exported."""
    ids = ["site-01", "site-02", "site-03"]
    _enroll(world, ids)
    _queue(world)
    revoked = world.session.scalars(select(AgentRow).where(
        AgentRow.agent_id == "site-02")).one()
    revoked.status = "revoked"
    world.session.commit()
    before = _counters(world)
    spool = tmp_path / "spool"
    report = export_agents(world.ctx("op"), "test", spool, ids)
    assert sorted(b.agent_id or "" for b in report.written) == ["site-01", "site-03"]
    ((dep_id, reason),) = report.failed
    assert "site-02 is revoked" in reason and report.failed_agents == {dep_id: "site-02"}
    world.session.expire_all()  # what the database holds
    failed = world.session.get(Deployment, dep_id)
    assert failed is not None and failed.state == "queued" and failed.sequence is None
    after = _counters(world)
    assert {t: n for t, n in after.items() if "site-02" in t} == {
        t: n for t, n in before.items() if "site-02" in t}  # no sequence allocated
    events = world.session.scalars(select(AuditEvent)).all()
    assert not [e for e in events if e.action == "bundle.claimed"
                and e.object_id == str(dep_id)]
    assert [e.object_id for e in events if e.action == "bundle.export_failed"] == [str(dep_id)]
    # Each agent's bundle in its own spool directory; the release's frames made once.
    assert [p.name for p in (spool / "site-01").glob("*.tgb")]
    assert [p.name for p in (spool / "site-03").glob("*.tgb")]
    assert not (spool / "site-02").exists() or not list((spool / "site-02").glob("*.tgb"))
    frames = Path(world.ctx("op").releases_dir or "") / FRAMES_DIR
    assert sorted(p.suffix for p in frames.iterdir()) == [".zst"] * 3
    assert verify_database(world.session, world.keys.hub).ok
