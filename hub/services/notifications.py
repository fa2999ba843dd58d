"""Notifications: webhooks per environment, an outbox, and its delivery with retries.

docs/operations.md ("Notifications"). The rules:

* **Configured per environment.** :func:`add_webhook` (admins) stores a URL, the events it
  wants (:data:`EVENTS`) and the path of a file holding its HMAC secret; the secret stays in
  that file (read at each delivery), never in the database. :func:`remove_webhook` ends it;
  its undelivered notifications are not sent any more.
* **Written with the event.** :func:`enqueue` inserts one outbox row per matching webhook in
  the caller's transaction: the notification commits with the release submission or the
  deployment's failure, or not at all. ``approval.needed`` (a release submitted) is not tied
  to an environment yet: it goes to every webhook that asked for it.
  ``deployment.failed`` goes to the webhooks of the deployment's environment,
  ``rollout.paused`` (by a person or by a failing batch) to those of every environment the
  rollout's agents are in.
* **Delivered at least once.** :func:`deliver_due` POSTs each due row (JSON body;
  ``X-Tiangong-Event``, ``X-Tiangong-Delivery`` — the outbox id, stable across retries,
  for the receiver to drop duplicates — and, with a secret,
  ``X-Tiangong-Signature: sha256=<hex HMAC-SHA256(secret, body)>``) and commits the outcome
  row by row. A hub killed before the commit leaves the row pending: it is sent again.
  A refusal, an error or a timeout counts an attempt and schedules the next one after
  :func:`backoff` (doubling); after :data:`MAX_ATTEMPTS` the row is ``failed``.
  Every attempt's time, HTTP status and error stay on the row (:func:`delivery_log`).

Deliberately not here: e-mail, agent-offline and overdue-result events (not built yet);
when the events happen (``releases``, ``deployments``, ``rollouts`` call :func:`enqueue`);
who runs :func:`deliver_due` (the hub scheduler each tick, ``tiangong hub notifications
deliver`` by hand or from cron).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Environment, NotificationOutbox, NotificationWebhook
from hub.errors import NotFoundError, ValidationError
from hub.faults import crash_point
from hub.services import audit
from hub.services.context import Clock, ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require_ctx

__all__ = ["EVENTS", "MAX_ATTEMPTS", "DeliveryReport", "WebhookInfo", "add_webhook", "backoff",
           "deliver_due", "delivery_log", "enqueue", "list_webhooks", "next_due",
           "remove_webhook", "sign"]

#: The events a webhook can ask for.
EVENTS = frozenset({"approval.needed", "deployment.failed", "rollout.paused"})
MAX_ATTEMPTS = 8  # deliveries tried before a notification is marked failed
BACKOFF_BASE_S = 30  # seconds before the second attempt; doubles after each failure
BACKOFF_MAX_S = 3600  # seconds between two attempts at most
TIMEOUT_S = 10.0  # seconds one POST may take (connect + response)
BATCH = 100  # notifications one deliver_due round sends at most
MAX_SECRET_BYTES = 4096  # bytes of a secret file
MAX_ERROR_CHARS = 500  # characters of an error or response kept on the row
SIGNATURE_HEADER = "X-Tiangong-Signature"


@dataclass(frozen=True)
class WebhookInfo:
    id: int
    environment: str
    url: str
    events: tuple[str, ...]
    secret_file: str
    created_by: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "environment": self.environment, "url": self.url,
                "events": list(self.events), "secret_file": self.secret_file,
                "created_by": self.created_by, "created_at": self.created_at}


@dataclass
class DeliveryReport:
    delivered: list[int]
    retrying: list[int]
    failed: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}


def _info(w: NotificationWebhook) -> WebhookInfo:
    return WebhookInfo(w.id, w.environment.name, w.url, tuple(w.events), w.secret_file,
                       w.created_by, w.created_at.isoformat())


def _read_secret(path: str) -> bytes:
    """The secret in ``path`` (one trailing newline dropped).

    Raises:
        ValidationError: unreadable, empty or over :data:`MAX_SECRET_BYTES`.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValidationError(f"webhook secret file {path}: cannot read it: "
                              f"{exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ValidationError(f"webhook secret file {path}: over {MAX_SECRET_BYTES} bytes")
    data = data.rstrip(b"\r\n")
    if not data:
        raise ValidationError(f"webhook secret file {path}: empty")
    return data


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def add_webhook(ctx: ServiceContext, environment: str, url: str, events: Iterable[str],
                secret_file: str | None = None) -> WebhookInfo:
    """Add a webhook to ``environment`` (admins; audited ``notification.webhook.add``).

    Raises:
        NotFoundError (environment), PermissionDeniedError, ValidationError (URL not http(s),
        no or unknown event, unreadable secret file).
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    if not (url.startswith("http://") or url.startswith("https://")) or len(url) > 2000:
        raise ValidationError(f"webhook URL {url!r}: must start with http:// or https:// "
                              "(at most 2000 characters)")
    wanted = sorted({e.strip() for e in events if e.strip()})
    unknown = [e for e in wanted if e not in EVENTS]
    if not wanted or unknown:
        raise ValidationError(f"webhook events {', '.join(unknown) or '(none)'}: not known; "
                              f"choose from {', '.join(sorted(EVENTS))}")
    secret_path = ""
    if secret_file is not None:
        secret_path = str(Path(secret_file).resolve())
        _read_secret(secret_path)
    hook = NotificationWebhook(environment_id=env.id, url=url, events=wanted,
                               secret_file=secret_path, created_by=ctx.actor_name,
                               created_at=ctx.now())
    ctx.session.add(hook)
    ctx.session.flush()
    audit.record(ctx, "notification.webhook.add", "webhook", str(hook.id),
                 {"environment": env.name, "url": url, "events": wanted,
                  "signed": bool(secret_path)})
    return _info(hook)


def _active(session: Session, environment: Environment | None = None) -> list[NotificationWebhook]:
    query = select(NotificationWebhook).where(NotificationWebhook.removed_at.is_(None))
    if environment is not None:
        query = query.where(NotificationWebhook.environment_id == environment.id)
    return list(session.scalars(query.order_by(NotificationWebhook.id)))


def list_webhooks(ctx: ServiceContext, environment: str | None = None) -> list[WebhookInfo]:
    """The active webhooks (of ``environment``, or all).

    Raises:
        NotFoundError (environment), PermissionDeniedError.
    """
    env = get_environment(ctx.session, environment) if environment is not None else None
    require_ctx(ctx, "view", env)
    return [_info(w) for w in _active(ctx.session, env)]


def remove_webhook(ctx: ServiceContext, webhook_id: int) -> WebhookInfo:
    """End webhook ``webhook_id`` (admins; audited); its pending notifications are marked
    ``cancelled``.

    Raises:
        NotFoundError (no such active webhook), PermissionDeniedError.
    """
    hook = ctx.session.get(NotificationWebhook, webhook_id)
    if hook is None or hook.removed_at is not None:
        raise NotFoundError(f"webhook {webhook_id}: no such active webhook")
    require_ctx(ctx, "environment.update", hook.environment)
    now = ctx.now()
    hook.removed_at = now
    for row in ctx.session.scalars(select(NotificationOutbox).where(
            NotificationOutbox.webhook_id == hook.id, NotificationOutbox.state == "pending")):
        row.state = "cancelled"
    ctx.session.flush()
    audit.record(ctx, "notification.webhook.remove", "webhook", str(hook.id),
                 {"environment": hook.environment.name, "url": hook.url})
    return _info(hook)


def enqueue(ctx: ServiceContext, event: str, environment: Environment | None,
            payload: Mapping[str, Any]) -> int:
    """Write ``event`` into the outbox for every active webhook that wants it (of
    ``environment``; None: of every environment), in the caller's transaction; returns how
    many rows."""
    assert event in EVENTS, event
    now = ctx.now()
    count = 0
    for hook in _active(ctx.session, environment):
        if event not in hook.events:
            continue
        body = {"event": event, "at": now.isoformat(), "environment": hook.environment.name,
                **payload}
        ctx.session.add(NotificationOutbox(webhook_id=hook.id, event=event, payload=body,
                                           state="pending", attempts=0, created_at=now,
                                           next_attempt_at=now, last_error=""))
        count += 1
    if count:
        ctx.session.flush()
    return count


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: 30 s, 60 s, 120 s … at most 1 h."""
    return timedelta(seconds=min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer other than 2xx: the attempt failed


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int | None, str]:
    """POST ``body``; (HTTP status or None, error text — empty on 2xx)."""
    if not (url.startswith("http://") or url.startswith("https://")):
        return None, f"{url}: not an http(s) URL"
    # the scheme is checked just above (and when the webhook was added)
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers=dict(headers))
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            status = int(response.status)
            response.read(MAX_ERROR_CHARS)
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_ERROR_CHARS).decode("utf-8", "replace")
        return exc.code, f"HTTP {exc.code} {exc.reason}: {text}"[:MAX_ERROR_CHARS]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{url}: {reason}"[:MAX_ERROR_CHARS]
    if 200 <= status < 300:
        return status, ""
    return status, f"HTTP {status}"


def deliver_due(session_factory: Callable[[], Session], clock: Clock, *,
                budget: timedelta | None = None) -> DeliveryReport:
    """Send every pending notification whose time has come (at most :data:`BATCH`),
    committing each outcome on its own; see the module docstring. With ``budget``, no new
    notification is started once that much time has passed since the call began (the rest
    stay due: the scheduler comes back at once, after its other work)."""
    report = DeliveryReport([], [], [])
    session = session_factory()
    try:
        now = clock()
        ids = list(session.scalars(
            select(NotificationOutbox.id).where(NotificationOutbox.state == "pending",
                                                NotificationOutbox.next_attempt_at <= now)
            .order_by(NotificationOutbox.id).limit(BATCH)))
        session.commit()
        for row_id in ids:
            if budget is not None and clock() - now >= budget:
                break
            row = session.get(NotificationOutbox, row_id)
            if row is None or row.state != "pending":
                continue
            hook = row.webhook
            body = json.dumps({**row.payload, "delivery": row.id}, sort_keys=True).encode()
            headers = {"Content-Type": "application/json", "User-Agent": "tiangong-hub",
                       "X-Tiangong-Event": row.event, "X-Tiangong-Delivery": str(row.id)}
            status: int | None = None
            try:
                if hook.secret_file:
                    headers[SIGNATURE_HEADER] = sign(_read_secret(hook.secret_file), body)
            except ValidationError as exc:
                error = str(exc)
            else:
                crash_point("hub.notify-sending")
                status, error = _post(hook.url, body, headers)
            at = clock()
            row.attempts += 1
            row.last_attempt_at = at
            row.last_status = status
            row.last_error = error
            if not error:
                crash_point("hub.notify-sent")
                row.state = "delivered"
                row.delivered_at = at
                report.delivered.append(row.id)
            elif row.attempts >= MAX_ATTEMPTS:
                row.state = "failed"
                report.failed.append(row.id)
            else:
                row.next_attempt_at = at + backoff(row.attempts)
                report.retrying.append(row.id)
            session.commit()
        return report
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def next_due(session: Session) -> datetime | None:
    """When the earliest pending notification is due (None: nothing pending)."""
    return session.scalar(select(NotificationOutbox.next_attempt_at)
                          .where(NotificationOutbox.state == "pending")
                          .order_by(NotificationOutbox.next_attempt_at).limit(1))


def delivery_log(ctx: ServiceContext, environment: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` notifications (of ``environment``) with their delivery state.

    Raises:
        NotFoundError (environment), PermissionDeniedError.
    """
    env = get_environment(ctx.session, environment) if environment is not None else None
    require_ctx(ctx, "view", env)
    query = select(NotificationOutbox).join(NotificationWebhook)
    if env is not None:
        query = query.where(NotificationWebhook.environment_id == env.id)
    rows = ctx.session.scalars(query.order_by(NotificationOutbox.id.desc()).limit(limit))
    return [{"id": r.id, "webhook": r.webhook_id, "environment": r.webhook.environment.name,
             "url": r.webhook.url, "event": r.event, "state": r.state, "attempts": r.attempts,
             "created_at": r.created_at.isoformat(),
             "last_attempt_at": r.last_attempt_at.isoformat() if r.last_attempt_at else None,
             "last_status": r.last_status, "last_error": r.last_error,
             "next_attempt_at": r.next_attempt_at.isoformat() if r.state == "pending" else None}
            for r in rows]
