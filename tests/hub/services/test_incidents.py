"""The events the scheduler computes (hub.services.incidents): an agent offline beyond its
environment's threshold and a result overdue from a site are notified once per incident —
not at every tick — cleared (and notified resolved) when they end, and audited; thresholds
are per environment; a refused setting changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, NotificationIncident, NotificationThresholds
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.scheduler import tick
from hub.services.agents import enroll_agent
from hub.services.deployments import mark_exported, queue_deployment, transition
from hub.services.incidents import (
    get_thresholds,
    list_incidents,
    parse_threshold,
    set_thresholds,
)
from hub.services.notifications import add_webhook, delivery_log
from tests.hub.conftest import World
from tests.hub.services.test_deployments import approved, request
from tests.hub.webhook_receiver import Receiver, receiver

HOUR = 3600


def _tick(world: World) -> tuple[list[int], list[int]]:
    world.session.commit()
    report = tick(lambda: Session(world.session.get_bind()), world.keys.hub, world.clock)
    world.session.expire_all()
    return report.incidents_opened, report.incidents_cleared


def _actions(world: World, prefix: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.action, json.loads(e.details)) for e in world.session.scalars(
        select(AuditEvent).where(AuditEvent.action.like(prefix + "%"))
        .order_by(AuditEvent.seq))]


def test_an_agent_offline_is_notified_once_and_resolved_when_seen_again(
        world: World) -> None:
    with receiver() as rec:
        add_webhook(world.ctx(), "test", rec.url, ["agent.offline"])
        add_webhook(world.ctx(), "prod", rec.url, ["agent.offline"])
        enroll_agent(world.ctx("op"), "test", request("h1", "site-01"))
        enroll_agent(world.ctx("op"), "prod", request("h2", "prod-01"))  # no threshold
        set_thresholds(world.ctx(), "test", agent_offline_s=2 * HOUR, result_overdue_s=None)
        assert _tick(world) == ([], [])
        world.clock.advance(2 * HOUR - 1)
        assert _tick(world) == ([], [])  # not yet beyond
        world.clock.advance(1)
        assert _tick(world) == ([1], [])
        for _ in range(3):  # later ticks: the same incident, nothing new
            world.clock.advance(600)
            assert _tick(world) == ([], [])
        assert len(rec.posts) == 1
        body = json.loads(rec.posts[0][1])
        assert (body["event"], body["agent"], body["state"], body["environment"],
                body["threshold_s"]) == ("agent.offline", "site-01", "open", "test", 7200)

        from hub.db import Agent
        agent = world.session.scalars(select(Agent).where(Agent.agent_id == "site-01")).one()
        agent.last_seen = world.clock()  # a result imported, a live session
        assert _tick(world) == ([], [1])
        assert len(rec.posts) == 2
        resolved = json.loads(rec.posts[1][1])
        assert (resolved["event"], resolved["state"], resolved["incident"]) == (
            "agent.offline", "resolved", 1)
        [inc] = list_incidents(world.ctx("view"), "test")
        assert inc["cleared_at"] == world.clock().isoformat()
        assert [a for a, _ in _actions(world, "notification.incident")] == [
            "notification.incident.open", "notification.incident.clear"]

        world.clock.advance(2 * HOUR)  # offline again: a new incident
        assert _tick(world) == ([2], [])
        assert len(rec.posts) == 3
        assert [i["id"] for i in list_incidents(world.ctx(), open_only=True)] == [2]


def test_a_result_overdue_is_notified_once_and_resolved_when_it_arrives(
        world: World, release_dir: Callable[..., Path]) -> None:
    rec: Receiver
    with receiver() as rec:
        add_webhook(world.ctx(), "test", rec.url, ["result.overdue"])
        enroll_agent(world.ctx("op"), "test", request("h1", "site-01"))
        rel = approved(world, release_dir, "appr1")
        [dep] = queue_deployment(world.ctx("op"), rel, "test")
        set_thresholds(world.ctx(), "test", agent_offline_s=None, result_overdue_s=24 * HOUR)
        world.clock.advance(48 * HOUR)  # queued, never exported: nothing is overdue
        assert _tick(world) == ([], [])
        mark_exported(world.ctx("op"), dep, bundle_id="b1", bundle_path="/media/b1",
                      sequence=1, root_version=1)
        world.clock.advance(24 * HOUR)
        assert _tick(world) == ([1], [])
        world.clock.advance(HOUR)
        assert _tick(world) == ([], [])
        [post] = rec.posts
        body = json.loads(post[1])
        assert (body["event"], body["deployment"], body["agent"], body["release"],
                body["bundle_id"], body["state"]) == (
            "result.overdue", dep.id, "site-01", "hello 1.0.0", "b1", "open")
        transition(world.ctx("op"), world.session.merge(dep), "succeeded")
        assert _tick(world) == ([], [1])
        assert json.loads(rec.posts[1][1])["state"] == "resolved"
        assert [r["state"] for r in delivery_log(world.ctx())] == ["delivered", "delivered"]
        [(_, opened), (_, cleared)] = _actions(world, "notification.incident")
        assert opened["kind"] == "result.overdue" and opened["deployment"] == dep.id
        assert cleared["subject"] == str(dep.id)


def test_turning_a_threshold_off_clears_its_open_incidents(world: World) -> None:
    enroll_agent(world.ctx("op"), "test", request("h1", "site-01"))
    set_thresholds(world.ctx(), "test", agent_offline_s=HOUR, result_overdue_s=None)
    world.clock.advance(HOUR)
    assert _tick(world) == ([1], [])
    set_thresholds(world.ctx(), "test", agent_offline_s=None, result_overdue_s=None)
    assert _tick(world) == ([], [1])
    assert get_thresholds(world.ctx("view"), "test").to_json()["agent_offline_s"] is None


def test_parse_threshold() -> None:
    assert parse_threshold("90m", "x") == 5400 and parse_threshold("off", "x") is None
    with pytest.raises(ValidationError, match="--agent-offline 30s: at least 1 minute"):
        parse_threshold("30s", "--agent-offline")
    with pytest.raises(ValidationError, match="not a duration"):
        parse_threshold("soon", "--agent-offline")


@pytest.mark.parametrize(("user", "env", "offline", "error", "words"), [
    ("admin", "test", 59, ValidationError, "60 s"),
    ("admin", "test", 400 * 86400, ValidationError, "a year"),
    ("admin", "nowhere", HOUR, NotFoundError, "nowhere"),
    ("op", "test", HOUR, PermissionDeniedError, "op"),
])
def test_a_refused_threshold_changes_nothing(
        world: World, user: str, env: str, offline: int, error: type[Exception],
        words: str) -> None:
    set_thresholds(world.ctx(), "test", agent_offline_s=2 * HOUR, result_overdue_s=None)
    world.session.commit()
    before = world.session.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(error) as exc:
        set_thresholds(world.ctx(user), env, agent_offline_s=offline, result_overdue_s=None)
    assert words in str(exc.value)
    world.session.rollback()
    assert get_thresholds(world.ctx(), "test").agent_offline_s == 2 * HOUR
    assert world.session.scalar(select(func.count()).select_from(NotificationThresholds)) == 1
    assert world.session.scalar(select(func.count()).select_from(AuditEvent)) == before
    assert world.session.scalar(select(func.count()).select_from(NotificationIncident)) == 0
