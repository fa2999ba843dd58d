"""Notifications: webhook and e-mail targets per environment, an outbox, and its delivery
with retries.

docs/operations.md ("Notifications"). The rules:

* **Configured per environment.** :func:`add_webhook` (admins) stores a URL, the events it
  wants (:data:`EVENTS`) and the path of a file holding its HMAC secret; the secret stays in
  that file (read at each delivery), never in the database. :func:`add_email` stores
  recipients instead: the hub sends them a plain-text mail through the SMTP relay of its
  config file (``[smtp]``: :class:`SmtpSettings`). :func:`remove_webhook` ends a target of
  either kind; its undelivered notifications are not sent any more.
* **Written with the event.** :func:`enqueue` inserts one outbox row per matching webhook in
  the caller's transaction: the notification commits with the release submission or the
  deployment's failure, or not at all. ``approval.needed`` (a release submitted) is not tied
  to an environment yet: it goes to every webhook that asked for it.
  ``deployment.failed`` goes to the webhooks of the deployment's environment,
  ``rollout.paused`` (by a person or by a failing batch) to those of every environment the
  rollout's agents are in. ``agent.offline`` and ``result.overdue`` are opened and cleared
  by the scheduler (:mod:`hub.services.incidents`), once per incident.
* **Delivered at least once.** :func:`deliver_due` POSTs each due row (JSON body;
  ``X-Tiangong-Event``, ``X-Tiangong-Delivery`` — the outbox id, stable across retries,
  for the receiver to drop duplicates — and, with a secret,
  ``X-Tiangong-Signature: sha256=<hex HMAC-SHA256(secret, body)>``) and commits the outcome
  row by row. A hub killed before the commit leaves the row pending: it is sent again.
  A refusal, an error or a timeout counts an attempt and schedules the next one after
  :func:`backoff` (doubling); after :data:`MAX_ATTEMPTS` the row is ``failed``.
  Every attempt's time, HTTP status and error stay on the row (:func:`delivery_log`).
  An e-mail goes to the relay with ``Message-ID: <tiangong-delivery-<id>@<hub>>`` (stable
  across retries); the relay refusing every recipient, an SMTP error or a timeout counts an
  attempt like an HTTP error (a message some recipients got is delivered, the refused ones
  named in its last error: resending would repeat it to the others). :func:`retry_now`
  makes a pending or failed row due at once (a failed row gets one more attempt).

Deliberately not here: when the events happen (``releases``, ``deployments``,
``rollouts`` and ``incidents`` call :func:`enqueue`); who runs :func:`deliver_due` (the
hub scheduler each tick, ``tiangong hub notifications deliver`` by hand or from cron).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Environment, NotificationOutbox, NotificationWebhook
from hub.errors import ConflictError, NotFoundError, ValidationError
from hub.faults import crash_point
from hub.services import audit
from hub.services.context import Clock, ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require_ctx

__all__ = ["EVENTS", "MAX_ATTEMPTS", "DeliveryReport", "SmtpSettings", "WebhookInfo",
           "add_email", "add_webhook", "backoff", "deliver_due", "delivery_log", "enqueue",
           "list_webhooks", "next_due", "remove_webhook", "retry_now", "sign"]

#: The events a target can ask for.
EVENTS = frozenset({"approval.needed", "deployment.failed", "rollout.paused", "agent.offline",
                    "result.overdue"})
KINDS = ("webhook", "email")
MAX_RECIPIENTS = 20  # addresses of one e-mail target
_ADDRESS = re.compile(r"^[A-Za-z0-9._%+=-]{1,64}@[A-Za-z0-9.-]{1,190}$")
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
    """A target: ``kind`` "webhook" (``url``) or "email" (``url``: the recipients)."""

    id: int
    environment: str
    url: str
    events: tuple[str, ...]
    secret_file: str
    created_by: str
    created_at: str
    kind: str = "webhook"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "environment": self.environment,
                "url": self.url, "events": list(self.events), "secret_file": self.secret_file,
                "created_by": self.created_by, "created_at": self.created_at}


@dataclass(frozen=True)
class SmtpSettings:
    """The relay e-mail targets are sent through (hub.toml ``[smtp]``)."""

    host: str = ""
    port: int = 25
    starttls: bool = False
    ca_file: str = ""
    sender: str = "tiangong-hub@localhost"
    username: str = ""
    password_file: str = ""
    timeout_s: float = TIMEOUT_S
    hub_id: str = "hub"

    @classmethod
    def from_config(cls, config: Any) -> SmtpSettings:
        return cls(config.smtp_host, config.smtp_port, config.smtp_starttls,
                   config.smtp_ca_file, config.smtp_from, config.smtp_username,
                   config.smtp_password_file, config.smtp_timeout_s, config.hub_id or "hub")


@dataclass
class DeliveryReport:
    delivered: list[int]
    retrying: list[int]
    failed: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}


def _info(w: NotificationWebhook) -> WebhookInfo:
    return WebhookInfo(w.id, w.environment.name, w.url, tuple(w.events), w.secret_file,
                       w.created_by, w.created_at.isoformat(), w.kind)


def _read_secret(path: str, what: str = "webhook secret file") -> bytes:
    """The secret in ``path`` (one trailing newline dropped).

    Raises:
        ValidationError: unreadable, empty or over :data:`MAX_SECRET_BYTES`.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValidationError(f"{what} {path}: cannot read it: "
                              f"{exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ValidationError(f"{what} {path}: over {MAX_SECRET_BYTES} bytes")
    data = data.rstrip(b"\r\n")
    if not data:
        raise ValidationError(f"{what} {path}: empty")
    return data


def _events(events: Iterable[str]) -> list[str]:
    """The distinct events asked for, sorted.

    Raises:
        ValidationError: none, or one not in :data:`EVENTS`.
    """
    wanted = sorted({e.strip() for e in events if e.strip()})
    unknown = [e for e in wanted if e not in EVENTS]
    if not wanted or unknown:
        raise ValidationError(f"notification events {', '.join(unknown) or '(none)'}: not "
                              f"known; choose from {', '.join(sorted(EVENTS))}")
    return wanted


def _add_target(ctx: ServiceContext, env: Environment, kind: str, url: str,
                events: list[str], secret_path: str) -> WebhookInfo:
    hook = NotificationWebhook(environment_id=env.id, kind=kind, url=url, events=events,
                               secret_file=secret_path, created_by=ctx.actor_name,
                               created_at=ctx.now())
    ctx.session.add(hook)
    ctx.session.flush()
    details: dict[str, Any] = {"environment": env.name, "kind": kind, "events": events}
    if kind == "webhook":
        details.update(url=url, signed=bool(secret_path))
    else:
        details["recipients"] = url
    audit.record(ctx, f"notification.{kind}.add", kind, str(hook.id), details)
    return _info(hook)


def add_email(ctx: ServiceContext, environment: str, recipients: Iterable[str],
              events: Iterable[str]) -> WebhookInfo:
    """Mail ``environment``'s ``events`` to ``recipients`` through the hub's SMTP relay
    (admins; audited ``notification.email.add``).

    Raises:
        NotFoundError (environment), PermissionDeniedError, ValidationError (no recipient,
        more than :data:`MAX_RECIPIENTS`, an address that is not ``local@domain``, no or
        unknown event).
    """
    env = get_environment(ctx.session, environment)
    require_ctx(ctx, "environment.update", env)
    addresses = sorted({a.strip() for a in recipients if a.strip()})
    bad = [a for a in addresses if not _ADDRESS.match(a)]
    if bad:
        raise ValidationError(f"e-mail address {bad[0][:80]!r}: not local@domain (letters, "
                              "digits, . _ % + = - only)")
    if not addresses or len(addresses) > MAX_RECIPIENTS:
        raise ValidationError(f"an e-mail target needs 1 to {MAX_RECIPIENTS} recipients, "
                              f"not {len(addresses)}")
    return _add_target(ctx, env, "email", ", ".join(addresses), _events(events), "")


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
    if "@" in url.split("/", 3)[2]:
        host = url.split("/", 3)[2].rsplit("@", 1)[1]
        raise ValidationError(f"webhook URL for {host}: must not carry a user name or password "
                              "(the URL is shown in lists, the web UI and the audit log); the "
                              "hub signs each POST with --secret-file instead")
    wanted = _events(events)
    secret_path = ""
    if secret_file is not None:
        secret_path = str(Path(secret_file).resolve())
        _read_secret(secret_path)
    return _add_target(ctx, env, "webhook", url, wanted, secret_path)


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
        raise NotFoundError(f"notification target {webhook_id}: no such active target")
    require_ctx(ctx, "environment.update", hook.environment)
    now = ctx.now()
    hook.removed_at = now
    for row in ctx.session.scalars(select(NotificationOutbox).where(
            NotificationOutbox.webhook_id == hook.id, NotificationOutbox.state == "pending")):
        row.state = "cancelled"
    ctx.session.flush()
    audit.record(ctx, f"notification.{hook.kind}.remove", hook.kind, str(hook.id),
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


@functools.cache
def _opener() -> Any:
    """The opener webhooks are posted with: no proxy, no redirect followed (made, and
    urllib.request imported, by the first delivery: a console command sends nothing)."""
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # a redirect is an answer other than 2xx: the attempt failed

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int | None, str]:
    """POST ``body``; (HTTP status or None, error text — empty on 2xx)."""
    import urllib.error
    import urllib.request

    if not (url.startswith("http://") or url.startswith("https://")):
        return None, f"{url}: not an http(s) URL"
    # the scheme is checked just above (and when the webhook was added)
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers=dict(headers))
    try:
        with _opener().open(request, timeout=TIMEOUT_S) as response:
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


def _subject(row: NotificationOutbox) -> str:
    p = row.payload
    what = (p.get("agent") or p.get("release") or p.get("rollout") or p.get("deployment")
            or "")
    state = " resolved" if p.get("state") == "resolved" else ""
    return f"[tiangong] {row.event}{state}: {p.get('environment', '')} {what}".strip()[:200]


def _mail_body(row: NotificationOutbox) -> str:
    lines = [f"{key}: {row.payload[key]}" for key in sorted(row.payload)]
    return "\n".join([f"Tiangong hub notification {row.event} (delivery {row.id}).", "",
                      *lines, ""])


def _send_mail(smtp: SmtpSettings, row: NotificationOutbox) -> tuple[str, str]:
    """Send ``row`` to its target's recipients through ``smtp``; (error text, empty when
    the relay accepted it for at least one recipient; the recipients it refused, if any).
    A message some recipients got is not sent again (they would get it each retry)."""
    import smtplib
    import ssl
    from email.message import EmailMessage

    recipients = [a.strip() for a in row.webhook.url.split(",") if a.strip()]
    if not smtp.host:
        return ("e-mail: no SMTP relay configured: set host in the [smtp] table of the hub's "
                "config file (hub.toml)"), ""
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = _subject(row)
    message["Message-ID"] = f"<tiangong-delivery-{row.id}@{smtp.hub_id}>"
    message["X-Tiangong-Event"] = row.event
    message["X-Tiangong-Delivery"] = str(row.id)
    message.set_content(_mail_body(row))
    try:
        password = (_read_secret(smtp.password_file, "SMTP password file").decode()
                    if smtp.username else "")
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
            client.ehlo()
            if smtp.starttls:
                context = ssl.create_default_context(cafile=smtp.ca_file or None)
                client.starttls(context=context)
                client.ehlo()
            if smtp.username:
                client.login(smtp.username, password)
            refused = client.send_message(message, smtp.sender, recipients)
    except ValidationError as exc:
        return str(exc), ""
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"SMTP {smtp.host}:{smtp.port}: {exc.smtp_code} {text}"[:MAX_ERROR_CHARS], ""
    except smtplib.SMTPRecipientsRefused as exc:
        return (f"SMTP {smtp.host}:{smtp.port}: every recipient refused: "
                f"{', '.join(sorted(exc.recipients))}")[:MAX_ERROR_CHARS], ""
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return f"SMTP {smtp.host}:{smtp.port}: {exc}"[:MAX_ERROR_CHARS], ""
    if refused:
        return "", (f"SMTP {smtp.host}:{smtp.port}: delivered, but recipient(s) refused: "
                    f"{', '.join(sorted(refused))}")[:MAX_ERROR_CHARS]
    return "", ""


def _send_webhook(row: NotificationOutbox) -> tuple[int | None, str]:
    hook = row.webhook
    body = json.dumps({**row.payload, "delivery": row.id}, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "tiangong-hub",
               "X-Tiangong-Event": row.event, "X-Tiangong-Delivery": str(row.id)}
    try:
        if hook.secret_file:
            headers[SIGNATURE_HEADER] = sign(_read_secret(hook.secret_file), body)
    except ValidationError as exc:
        return None, str(exc)
    crash_point("hub.notify-sending")
    return _post(hook.url, body, headers)


def deliver_due(session_factory: Callable[[], Session], clock: Clock, *,
                budget: timedelta | None = None,
                smtp: SmtpSettings | None = None) -> DeliveryReport:
    """Send every pending notification whose time has come (at most :data:`BATCH`),
    committing each outcome on its own; see the module docstring. With ``budget``, no new
    notification is started once that much time has passed since the call began (the rest
    stay due: the scheduler comes back at once, after its other work). ``smtp``: the relay
    of e-mail targets (None: not configured)."""
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
            status: int | None = None
            note = ""
            if row.webhook.kind == "email":
                crash_point("hub.notify-sending")
                error, note = _send_mail(smtp or SmtpSettings(), row)
            else:
                status, error = _send_webhook(row)
            at = clock()
            row.attempts += 1
            row.last_attempt_at = at
            row.last_status = status
            row.last_error = error or note
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


def retry_now(ctx: ServiceContext, delivery_id: int) -> dict[str, Any]:
    """Make notification ``delivery_id`` due now (operators of its environment; audited
    ``notification.retry``): a pending one skips its backoff, a failed one gets one more
    attempt (and is failed again if that fails). The next scheduler tick or
    ``hub notifications deliver`` sends it.

    Raises:
        NotFoundError (no such notification), PermissionDeniedError, ConflictError
        (delivered, or cancelled with its target).
    """
    row = ctx.session.get(NotificationOutbox, delivery_id)
    if row is None:
        raise NotFoundError(f"notification {delivery_id}: no such notification")
    require_ctx(ctx, "deployment.update", row.webhook.environment)
    if row.state not in ("pending", "failed"):
        raise ConflictError(f"notification {delivery_id} is {row.state}: only a pending or "
                            "failed notification can be retried")
    previous = row.state
    row.state = "pending"
    row.next_attempt_at = ctx.now()
    if previous == "failed":
        row.attempts = min(row.attempts, MAX_ATTEMPTS - 1)
    ctx.session.flush()
    audit.record(ctx, "notification.retry", "notification", str(row.id),
                 {"environment": row.webhook.environment.name, "event": row.event,
                  "target": row.webhook_id, "was": previous, "attempts": row.attempts})
    return _log_row(row)


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
    return [_log_row(r) for r in rows]


def _log_row(r: NotificationOutbox) -> dict[str, Any]:
    return {"id": r.id, "webhook": r.webhook_id, "kind": r.webhook.kind,
            "environment": r.webhook.environment.name, "url": r.webhook.url,
            "event": r.event, "state": r.state, "attempts": r.attempts,
            "created_at": r.created_at.isoformat(),
            "last_attempt_at": r.last_attempt_at.isoformat() if r.last_attempt_at else None,
            "last_status": r.last_status, "last_error": r.last_error,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.state == "pending" else None}
