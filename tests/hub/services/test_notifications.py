"""Webhook notifications (hub.services.notifications): written in the transaction of the
event, delivered signed to a real HTTP server on 127.0.0.1, retried with backoff, every
attempt recorded; every refusal changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, NotificationOutbox, NotificationWebhook, Release
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.scheduler import tick
from hub.services import rollouts as ro
from hub.services.notifications import (
    MAX_ATTEMPTS,
    add_webhook,
    backoff,
    deliver_due,
    delivery_log,
    list_webhooks,
    remove_webhook,
)
from hub.services.releases import create_product, create_release, submit_release
from tests.hub.conftest import World
from tests.hub.services.test_rollouts import _finish, _fleet, rel  # noqa: F401 - fixture
from tests.hub.webhook_receiver import SECRET, Receiver, receiver


@pytest.fixture
def rec() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hook.secret"
    path.write_bytes(SECRET + b"\n")
    return path


def _deliver(world: World) -> tuple[list[int], list[int], list[int]]:
    world.session.commit()
    report = deliver_due(lambda: Session(world.session.get_bind()), world.clock)
    world.session.expire_all()
    return report.delivered, report.retrying, report.failed


def _submit(world: World, release_dir: Callable[..., Path], version: str = "1.0.0") -> None:
    ctx = world.ctx("dev")
    if version == "1.0.0":
        create_product(ctx, "hello")
    submit_release(ctx, create_release(ctx, release_dir(version=version)))


def test_a_submitted_release_reaches_the_webhook_signed(
        world: World, release_dir: Callable[..., Path], rec: Receiver, secret_file: Path) -> None:
    hook = add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"], str(secret_file))
    add_webhook(world.ctx(), "test", rec.url, ["deployment.failed"])  # not this event
    _submit(world, release_dir)

    assert _deliver(world) == ([1], [], [])
    payload = rec.verified()
    assert payload["event"] == "approval.needed" and payload["release"] == "hello 1.0.0"
    assert payload["environment"] == "prod" and payload["submitted_by"] == "dev"
    assert len(rec.posts) == 1
    [row] = delivery_log(world.ctx("view"))
    assert (row["state"], row["attempts"], row["last_status"], row["webhook"]) == (
        "delivered", 1, 200, hook.id)
    assert _deliver(world) == ([], [], [])  # delivered once
    assert len(rec.posts) == 1


def test_the_outbox_row_commits_or_rolls_back_with_its_event(
        world: World, release_dir: Callable[..., Path], rec: Receiver) -> None:
    add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"])
    world.session.commit()
    _submit(world, release_dir)
    world.session.rollback()  # the submission is undone: so is its notification

    assert world.session.scalar(select(func.count()).select_from(NotificationOutbox)) == 0
    assert _deliver(world) == ([], [], [])
    assert rec.posts == []


def test_a_failing_receiver_is_retried_with_backoff_and_each_attempt_recorded(
        world: World, release_dir: Callable[..., Path], rec: Receiver, secret_file: Path) -> None:
    add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"], str(secret_file))
    _submit(world, release_dir)
    rec.answers = [500, 503]

    assert _deliver(world) == ([], [1], [])
    [row] = delivery_log(world.ctx())
    assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, 500)
    assert "HTTP 500" in row["last_error"]
    assert _deliver(world) == ([], [], [])  # not due before its backoff
    world.clock.advance(backoff(1).total_seconds())
    assert _deliver(world) == ([], [1], [])
    world.clock.advance(backoff(2).total_seconds())
    assert _deliver(world) == ([1], [], [])
    [row] = delivery_log(world.ctx())
    assert (row["state"], row["attempts"], row["last_status"], row["last_error"]) == (
        "delivered", 3, 200, "")
    assert len(rec.posts) == 3
    assert len({rec.verified(i)["delivery"] for i in range(3)}) == 1  # one delivery id


def test_an_unreachable_receiver_ends_failed_after_the_last_attempt(
        world: World, release_dir: Callable[..., Path], rec: Receiver) -> None:
    add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"])
    _submit(world, release_dir)
    rec.answers = [502] * MAX_ATTEMPTS
    for attempt in range(1, MAX_ATTEMPTS):
        assert _deliver(world) == ([], [1], [])
        world.clock.advance(backoff(attempt).total_seconds())
    assert _deliver(world) == ([], [], [1])
    [row] = delivery_log(world.ctx())
    assert (row["state"], row["attempts"], row["next_attempt_at"]) == (
        "failed", MAX_ATTEMPTS, None)
    world.clock.advance(86400)
    assert _deliver(world) == ([], [], [])
    assert len(rec.posts) == MAX_ATTEMPTS


def test_a_missing_secret_file_at_delivery_is_a_recorded_attempt_naming_it(
        world: World, release_dir: Callable[..., Path], rec: Receiver, secret_file: Path) -> None:
    add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"], str(secret_file))
    _submit(world, release_dir)
    secret_file.unlink()

    assert _deliver(world) == ([], [1], [])
    [row] = delivery_log(world.ctx())
    assert str(secret_file) in row["last_error"] and row["last_status"] is None
    assert rec.posts == []  # nothing unsigned went out


def test_removing_a_webhook_cancels_what_it_had_pending(
        world: World, release_dir: Callable[..., Path], rec: Receiver) -> None:
    hook = add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"])
    _submit(world, release_dir)
    remove_webhook(world.ctx(), hook.id)

    assert list_webhooks(world.ctx()) == []
    assert _deliver(world) == ([], [], [])
    assert [r["state"] for r in delivery_log(world.ctx())] == ["cancelled"]
    assert rec.posts == []


@pytest.mark.parametrize(("user", "env", "url", "events", "secret", "error", "words"), [
    ("admin", "prod", "ftp://x/", ["approval.needed"], None, ValidationError, "http://"),
    ("admin", "prod", "http://127.0.0.1/", ["agent.lost"], None, ValidationError,
     "agent.lost"),
    ("admin", "prod", "http://127.0.0.1/", [" "], None, ValidationError, "(none)"),
    ("admin", "prod", "https://bob:s3cret@127.0.0.1/h", ["approval.needed"], None,
     ValidationError, "webhook URL for 127.0.0.1: must not carry a user name or password"),
    ("admin", "prod", "http://127.0.0.1/", ["approval.needed"], "missing.secret",
     ValidationError, "missing.secret"),
    ("admin", "nowhere", "http://127.0.0.1/", ["approval.needed"], None, NotFoundError,
     "nowhere"),
    ("op", "prod", "http://127.0.0.1/", ["approval.needed"], None, PermissionDeniedError,
     "op"),
])
def test_a_refused_webhook_changes_nothing(
        world: World, tmp_path: Path, user: str, env: str, url: str, events: list[str],
        secret: str | None, error: type[Exception], words: str) -> None:
    events_before = world.session.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(error) as exc:
        add_webhook(world.ctx(user), env, url, events,
                    str(tmp_path / secret) if secret else None)
    assert words in str(exc.value) and "s3cret" not in str(exc.value)
    world.session.rollback()
    assert world.session.scalar(select(func.count()).select_from(NotificationWebhook)) == 0
    assert world.session.scalar(select(func.count()).select_from(AuditEvent)) == events_before


def test_removing_an_unknown_webhook_is_refused(world: World) -> None:
    with pytest.raises(NotFoundError, match="target 7"):
        remove_webhook(world.ctx(), 7)


def test_a_rollout_paused_by_a_failing_batch_notifies_its_environment(
        world: World, rel: Release, rec: Receiver, secret_file: Path) -> None:  # noqa: F811
    add_webhook(world.ctx(), "test", rec.url, ["rollout.paused", "deployment.failed"],
                str(secret_file))
    add_webhook(world.ctx(), "prod", rec.url, ["rollout.paused"])  # no agent there
    _fleet(world, 4)
    rollout = ro.start_rollout(world.ctx("op"), rel, environment="test",
                               strategy=ro.Strategy(batch_size=2))
    _finish(world, rollout, {"a01": "failed"})
    assert rollout.state == "paused"

    assert len(_deliver(world)[0]) == 2
    failed, paused = rec.verified(0), rec.verified(1)
    assert (failed["event"], failed["agent"], failed["state"]) == (
        "deployment.failed", "a01", "failed")
    assert (paused["event"], paused["environment"], paused["rollout"]) == (
        "rollout.paused", "test", rollout.id)
    assert "a01 (failed)" in paused["reason"]


def test_the_scheduler_delivers_and_wakes_when_a_retry_is_due(
        world: World, release_dir: Callable[..., Path], rec: Receiver) -> None:
    add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"])
    _submit(world, release_dir)
    world.session.commit()
    rec.answers = [500]
    factory = lambda: Session(world.session.get_bind())  # noqa: E731

    first = tick(factory, world.keys.hub, world.clock)
    assert first.notified == [] and len(rec.posts) == 1
    assert first.next_run == world.clock() + backoff(1)
    world.clock.advance(backoff(1).total_seconds())
    assert tick(factory, world.keys.hub, world.clock).notified == [1]
    assert len(rec.posts) == 2


def test_a_delivery_budget_leaves_the_rest_due_for_the_next_round(
        world: World, release_dir: Callable[..., Path], rec: Receiver) -> None:
    for _ in range(3):
        add_webhook(world.ctx(), "prod", rec.url, ["approval.needed"])
    _submit(world, release_dir)
    world.session.commit()
    rec.on_post = lambda: world.clock.advance(15)  # each receiver takes 15 s
    factory = lambda: Session(world.session.get_bind())  # noqa: E731

    first = deliver_due(factory, world.clock, budget=timedelta(seconds=20))
    assert first.delivered == [1, 2] and len(rec.posts) == 2
    world.session.expire_all()
    assert [r["state"] for r in delivery_log(world.ctx())] == ["pending", "delivered",
                                                               "delivered"]
    assert deliver_due(factory, world.clock, budget=timedelta(seconds=20)).delivered == [3]
