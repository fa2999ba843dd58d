"""``tiangong hub notifications add-webhook | list | remove | log | deliver``: webhooks per
environment and their delivery (``hub.services.notifications``)."""

from __future__ import annotations

import click

from hub.cli.base import _done, _emit, _services, hub, json_option


@hub.group("notifications")
def notifications() -> None:
    """Webhooks per environment: the hub POSTs approval.needed, deployment.failed and
    rollout.paused events,
    signed with HMAC-SHA256 when a secret file is given, and retries until delivered."""


@notifications.command("add-webhook")
@click.argument("environment")
@click.argument("url")
@click.option("--events", required=True, metavar="E1,E2",
              help="Comma-separated: approval.needed, deployment.failed, rollout.paused.")
@click.option("--secret-file", metavar="PATH", default=None,
              help="File holding the HMAC secret (read at each delivery; not stored).")
@json_option
@click.pass_context
def add_webhook(ctx: click.Context, environment: str, url: str, events: str,
                secret_file: str | None, as_json: bool) -> None:
    """Send ENVIRONMENT's EVENTS to URL (admins)."""
    from hub.services.notifications import add_webhook as add

    with _services(ctx) as sc:
        info = add(sc, environment, url, events.split(","), secret_file)
    _done(as_json, f"webhook {info.id} of {environment} added: {url} "
          f"({', '.join(info.events)})", info.to_json())


@notifications.command("list")
@click.argument("environment", required=False)
@json_option
@click.pass_context
def list_(ctx: click.Context, environment: str | None, as_json: bool) -> None:
    """Active webhooks (of ENVIRONMENT, or all)."""
    from hub.services.notifications import list_webhooks

    with _services(ctx) as sc:
        rows = []
        for i in list_webhooks(sc, environment):
            row = i.to_json()
            row["events"] = ",".join(i.events) if not as_json else row["events"]
            rows.append(row)
    _emit(rows, as_json, None if as_json else ["id", "environment", "url", "events",
                                                "secret_file"])


@notifications.command("remove")
@click.argument("webhook_id", type=int)
@json_option
@click.pass_context
def remove(ctx: click.Context, webhook_id: int, as_json: bool) -> None:
    """End webhook WEBHOOK_ID (admins); its undelivered notifications are cancelled."""
    from hub.services.notifications import remove_webhook

    with _services(ctx) as sc:
        info = remove_webhook(sc, webhook_id)
    _done(as_json, f"webhook {webhook_id} removed", info.to_json())


@notifications.command("log")
@click.argument("environment", required=False)
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
@click.pass_context
def log(ctx: click.Context, environment: str | None, limit: int, as_json: bool) -> None:
    """The newest notifications and their delivery: state, attempts, last status/error."""
    from hub.services.notifications import delivery_log

    with _services(ctx) as sc:
        rows = delivery_log(sc, environment, limit)
    _emit(rows, as_json, None if as_json else ["id", "environment", "event", "state",
                                                "attempts", "last_status", "last_error"])


@notifications.command("deliver")
@json_option
@click.pass_context
def deliver(ctx: click.Context, as_json: bool) -> None:
    """Send the notifications that are due now (operators; the hub scheduler does this
    on its own each time it wakes)."""
    from sqlalchemy.orm import sessionmaker

    from hub.services.notifications import deliver_due
    from hub.services.users import require_ctx

    with _services(ctx) as sc:
        require_ctx(sc, "deployment.update")
        report = deliver_due(sessionmaker(bind=sc.session.get_bind()), sc.clock)
    _done(as_json, f"{len(report.delivered)} delivered, {len(report.retrying)} to retry, "
          f"{len(report.failed)} failed", report.to_json())
