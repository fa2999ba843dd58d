"""E-mail notifications (hub.services.notifications, ``kind`` "email"): sent through a real
SMTP server on 127.0.0.1 (aiosmtpd), with and without STARTTLS; the same outbox, retries and
delivery log as webhooks; a relay that is down, refuses a recipient or is not configured is
a recorded attempt; retry-now; every refusal changes nothing."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db import AuditEvent, NotificationOutbox, NotificationWebhook
from hub.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from hub.services.notifications import (
    MAX_ATTEMPTS,
    SmtpSettings,
    add_email,
    backoff,
    deliver_due,
    delivery_log,
    list_webhooks,
    retry_now,
)
from hub.services.releases import create_product, create_release, submit_release
from hub.tls import TlsFiles, create_ca, issue_server_certificate
from tests.fixtures.dbservers import free_port
from tests.hub.conftest import World
from tests.hub.smtp_receiver import Mailbox, mailbox


@pytest.fixture
def box() -> Iterator[Mailbox]:
    with mailbox() as b:
        yield b


def _smtp(box: Mailbox, **kw: object) -> SmtpSettings:
    return SmtpSettings(host=box.host, port=box.port, sender="hub@example.org",
                        hub_id="hub-test", **kw)  # type: ignore[arg-type]


def _deliver(world: World, smtp: SmtpSettings) -> tuple[list[int], list[int], list[int]]:
    world.session.commit()
    report = deliver_due(lambda: Session(world.session.get_bind()), world.clock, smtp=smtp)
    world.session.expire_all()
    return report.delivered, report.retrying, report.failed


def _submit(world: World, release_dir: Callable[..., Path]) -> None:
    ctx = world.ctx("dev")
    create_product(ctx, "hello")
    submit_release(ctx, create_release(ctx, release_dir(version="1.0.0")))


def _count(world: World, model: type) -> int:
    return int(world.session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_submitted_release_is_mailed_to_every_recipient(
        world: World, release_dir: Callable[..., Path], box: Mailbox) -> None:
    target = add_email(world.ctx(), "prod", ["ops@example.org", " dba@example.org"],
                       ["approval.needed"])
    assert (target.kind, target.url) == ("email", "dba@example.org, ops@example.org")
    _submit(world, release_dir)

    assert _deliver(world, _smtp(box)) == ([1], [], [])
    [(sender, rcpts, msg)] = box.messages
    assert sender == "hub@example.org"
    assert sorted(rcpts) == ["dba@example.org", "ops@example.org"]
    assert msg["Subject"] == "[tiangong] approval.needed: prod hello 1.0.0"
    assert msg["Message-ID"] == "<tiangong-delivery-1@hub-test>"
    assert msg["X-Tiangong-Event"] == "approval.needed"
    body = msg.get_content()
    assert "release: hello 1.0.0" in body and "submitted_by: dev" in body
    [row] = delivery_log(world.ctx("view"))
    assert (row["kind"], row["state"], row["attempts"], row["last_error"]) == (
        "email", "delivered", 1, "")
    assert _deliver(world, _smtp(box)) == ([], [], [])  # once
    assert len(box.messages) == 1
    audit = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "notification.email.add")).one()
    assert json.loads(audit.details)["recipients"] == "dba@example.org, ops@example.org"


def test_starttls_to_a_relay_with_the_configured_ca(
        world: World, release_dir: Callable[..., Path], tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    files.directory.mkdir()
    now = dt.datetime.now(dt.UTC)
    create_ca(files, "relay-test", now)
    issue_server_certificate(files, ["127.0.0.1"], now)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(files.server_cert, files.server_key)
    add_email(world.ctx(), "prod", ["ops@example.org"], ["approval.needed"])
    _submit(world, release_dir)
    with mailbox(server_tls) as tls_box:
        # without the relay's CA the certificate is not trusted: a recorded attempt
        assert _deliver(world, _smtp(tls_box, starttls=True)) == ([], [1], [])
        [row] = delivery_log(world.ctx())
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"], row
        # a relay that insists on STARTTLS refuses a plain client
        world.clock.advance(backoff(1).total_seconds())
        assert _deliver(world, _smtp(tls_box)) == ([], [1], [])
        [row] = delivery_log(world.ctx())
        assert "STARTTLS" in row["last_error"] and tls_box.messages == []
        world.clock.advance(backoff(2).total_seconds())
        assert _deliver(world, _smtp(tls_box, starttls=True,
                                     ca_file=str(files.ca_cert))) == ([1], [], [])
        assert (len(tls_box.messages), tls_box.tls_sessions) == (1, 1)


def test_a_relay_that_is_down_is_retried_and_the_error_names_it(
        world: World, release_dir: Callable[..., Path]) -> None:
    add_email(world.ctx(), "prod", ["ops@example.org"], ["approval.needed"])
    _submit(world, release_dir)
    port = free_port()  # nothing listens there
    down = SmtpSettings(host="127.0.0.1", port=port, timeout_s=5.0)
    assert _deliver(world, down) == ([], [1], [])
    [row] = delivery_log(world.ctx())
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert f"SMTP 127.0.0.1:{port}" in row["last_error"]
    assert _deliver(world, down) == ([], [], [])  # not before its backoff
    with mailbox() as box:
        world.clock.advance(backoff(1).total_seconds())
        assert _deliver(world, _smtp(box)) == ([1], [], [])
        assert len(box.messages) == 1


def test_no_relay_configured_is_a_recorded_attempt_naming_the_setting(
        world: World, release_dir: Callable[..., Path]) -> None:
    add_email(world.ctx(), "prod", ["ops@example.org"], ["approval.needed"])
    _submit(world, release_dir)
    assert _deliver(world, SmtpSettings()) == ([], [1], [])
    [row] = delivery_log(world.ctx())
    assert "[smtp]" in row["last_error"] and "hub.toml" in row["last_error"]


def test_a_partly_refused_message_is_delivered_and_names_the_refused_recipient(
        world: World, release_dir: Callable[..., Path], box: Mailbox) -> None:
    add_email(world.ctx(), "prod", ["gone@example.org", "ops@example.org"],
              ["approval.needed"])
    _submit(world, release_dir)
    box.refuse = {"gone@example.org"}
    assert _deliver(world, _smtp(box)) == ([1], [], [])
    [(_, rcpts, _msg)] = box.messages
    assert rcpts == ["ops@example.org"]
    [row] = delivery_log(world.ctx())
    assert row["state"] == "delivered" and "refused: gone@example.org" in row["last_error"]


def test_a_refused_recipient_fails_the_attempt_and_retry_now_sends_it_again(
        world: World, release_dir: Callable[..., Path], box: Mailbox) -> None:
    add_email(world.ctx(), "prod", ["gone@example.org"], ["approval.needed"])
    _submit(world, release_dir)
    box.refuse = {"gone@example.org"}
    for attempt in range(1, MAX_ATTEMPTS):
        assert _deliver(world, _smtp(box)) == ([], [1], [])
        world.clock.advance(backoff(attempt).total_seconds())
    assert _deliver(world, _smtp(box)) == ([], [], [1])
    [row] = delivery_log(world.ctx())
    assert row["state"] == "failed" and "every recipient refused" in row["last_error"]
    assert "gone@example.org" in row["last_error"] and box.messages == []

    box.refuse = set()
    retried = retry_now(world.ctx("op"), row["id"])
    assert (retried["state"], retried["attempts"]) == ("pending", MAX_ATTEMPTS - 1)
    assert _deliver(world, _smtp(box)) == ([1], [], [])
    [row] = delivery_log(world.ctx())
    assert (row["state"], row["attempts"]) == ("delivered", MAX_ATTEMPTS)
    event = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "notification.retry")).one()
    assert (event.actor, json.loads(event.details)["was"]) == ("op", "failed")


@pytest.mark.parametrize(("user", "delivery", "error", "words"), [
    ("op", 1, ConflictError, "delivered"),
    ("op", 99, NotFoundError, "notification 99"),
    ("view", 1, PermissionDeniedError, "view"),
])
def test_a_refused_retry_changes_nothing(
        world: World, release_dir: Callable[..., Path], box: Mailbox, user: str,
        delivery: int, error: type[Exception], words: str) -> None:
    add_email(world.ctx(), "prod", ["ops@example.org"], ["approval.needed"])
    _submit(world, release_dir)
    assert _deliver(world, _smtp(box)) == ([1], [], [])
    before = (delivery_log(world.ctx()), _count(world, AuditEvent))
    with pytest.raises(error) as exc:
        retry_now(world.ctx(user), delivery)
    assert words in str(exc.value)
    world.session.rollback()
    assert (delivery_log(world.ctx()), _count(world, AuditEvent)) == before


@pytest.mark.parametrize(("user", "env", "rcpts", "events", "error", "words"), [
    ("admin", "prod", ["not-an-address"], ["approval.needed"], ValidationError,
     "not-an-address"),
    ("admin", "prod", ["a@b.example\r\nBcc: x@y"], ["approval.needed"], ValidationError,
     "local@domain"),
    ("admin", "prod", [" "], ["approval.needed"], ValidationError, "1 to 20 recipients"),
    ("admin", "prod", [f"u{i}@example.org" for i in range(21)], ["approval.needed"],
     ValidationError, "not 21"),
    ("admin", "prod", ["ops@example.org"], ["agent.lost"], ValidationError, "agent.lost"),
    ("admin", "nowhere", ["ops@example.org"], ["approval.needed"], NotFoundError, "nowhere"),
    ("op", "prod", ["ops@example.org"], ["approval.needed"], PermissionDeniedError, "op"),
])
def test_a_refused_email_target_changes_nothing(
        world: World, user: str, env: str, rcpts: list[str], events: list[str],
        error: type[Exception], words: str) -> None:
    events_before = _count(world, AuditEvent)
    with pytest.raises(error) as exc:
        add_email(world.ctx(user), env, rcpts, events)
    assert words in str(exc.value)
    world.session.rollback()
    assert _count(world, NotificationWebhook) == 0 and list_webhooks(world.ctx()) == []
    assert _count(world, AuditEvent) == events_before
    assert _count(world, NotificationOutbox) == 0
