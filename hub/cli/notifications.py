"""``tiangong hub notifications add-webhook | add-email | list | remove | thresholds |
incidents | log | retry | deliver``: notification targets per environment, the thresholds of
the events the scheduler computes, and their delivery (``hub.services.notifications``,
``hub.services.incidents``)."""

from __future__ import annotations

import click

from hub.cli.base import _config, _done, _emit, _services, _state, hub, json_option

_EVENTS_HELP = ("Comma-separated: approval.needed, deployment.failed, rollout.paused, "
                "agent.offline, result.overdue.")


@hub.group("notifications")
def notifications() -> None:
    """Notification targets per environment: webhooks (POSTed JSON, signed with HMAC-SHA256
    when a secret file is given) and e-mail (through the [smtp] relay of hub.toml), for
    approval.needed, deployment.failed, rollout.paused, agent.offline and result.overdue;
    retried until delivered."""


@notifications.command("add-webhook")
@click.argument("environment")
@click.argument("url")
@click.option("--events", required=True, metavar="E1,E2", help=_EVENTS_HELP)
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


@notifications.command("add-email")
@click.argument("environment")
@click.argument("recipients")
@click.option("--events", required=True, metavar="E1,E2", help=_EVENTS_HELP)
@json_option
@click.pass_context
def add_email(ctx: click.Context, environment: str, recipients: str, events: str,
              as_json: bool) -> None:
    """Mail ENVIRONMENT's EVENTS to RECIPIENTS (comma-separated addresses) through the hub's
    SMTP relay (admins)."""
    from hub.services.notifications import add_email as add

    with _services(ctx) as sc:
        info = add(sc, environment, recipients.split(","), events.split(","))
    _done(as_json, f"e-mail target {info.id} of {environment} added: {info.url} "
          f"({', '.join(info.events)})", info.to_json())


@notifications.command("thresholds")
@click.argument("environment")
@click.option("--agent-offline", metavar="DURATION|off", default=None,
              help="Notify agent.offline when an agent has not been seen this long (30m, "
                   "6h, 2d; off).")
@click.option("--result-overdue", metavar="DURATION|off", default=None,
              help="Notify result.overdue when an exported bundle has no result this long "
                   "after its export (off).")
@json_option
@click.pass_context
def thresholds(ctx: click.Context, environment: str, agent_offline: str | None,
               result_overdue: str | None, as_json: bool) -> None:
    """Show ENVIRONMENT's thresholds, or set them (admins; an option not given keeps its
    value)."""
    from hub.services.incidents import get_thresholds, parse_threshold, set_thresholds

    with _services(ctx) as sc:
        current = get_thresholds(sc, environment)
        if agent_offline is None and result_overdue is None:
            info = current
        else:
            offline = (current.agent_offline_s if agent_offline is None
                       else parse_threshold(agent_offline, "--agent-offline"))
            overdue = (current.result_overdue_s if result_overdue is None
                       else parse_threshold(result_overdue, "--result-overdue"))
            info = set_thresholds(sc, environment, agent_offline_s=offline,
                                  result_overdue_s=overdue)
    _done(as_json, f"{environment}: {info.describe()}", info.to_json())


@notifications.command("incidents")
@click.argument("environment", required=False)
@click.option("--open", "open_only", is_flag=True, help="Only incidents not cleared yet.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
@click.pass_context
def incidents(ctx: click.Context, environment: str | None, open_only: bool, limit: int,
              as_json: bool) -> None:
    """agent.offline and result.overdue incidents the scheduler opened (and cleared)."""
    from hub.services.incidents import list_incidents

    with _services(ctx) as sc:
        rows = list_incidents(sc, environment, open_only=open_only, limit=limit)
    _emit(rows, as_json, None if as_json else ["id", "kind", "environment", "subject",
                                                "opened_at", "cleared_at"])


@notifications.command("retry")
@click.argument("delivery_id", type=int)
@json_option
@click.pass_context
def retry(ctx: click.Context, delivery_id: int, as_json: bool) -> None:
    """Make notification DELIVERY_ID (pending or failed) due now; the scheduler's next tick
    or `notifications deliver` sends it."""
    from hub.services.notifications import retry_now

    with _services(ctx) as sc:
        row = retry_now(sc, delivery_id)
    _done(as_json, f"notification {delivery_id} ({row['event']} to {row['url']}) is due now "
          f"(attempt {row['attempts'] + 1})", row)


@notifications.command("list")
@click.argument("environment", required=False)
@json_option
@click.pass_context
def list_(ctx: click.Context, environment: str | None, as_json: bool) -> None:
    """Active targets, webhooks and e-mail (of ENVIRONMENT, or all)."""
    from hub.services.notifications import list_webhooks

    with _services(ctx) as sc:
        rows = []
        for i in list_webhooks(sc, environment):
            row = i.to_json()
            row["events"] = ",".join(i.events) if not as_json else row["events"]
            rows.append(row)
    _emit(rows, as_json, None if as_json else ["id", "kind", "environment", "url", "events",
                                                "secret_file"])


@notifications.command("remove")
@click.argument("webhook_id", type=int)
@json_option
@click.pass_context
def remove(ctx: click.Context, webhook_id: int, as_json: bool) -> None:
    """End target WEBHOOK_ID, webhook or e-mail (admins); its undelivered notifications are
    cancelled."""
    from hub.services.notifications import remove_webhook

    with _services(ctx) as sc:
        info = remove_webhook(sc, webhook_id)
    _done(as_json, f"{info.kind} target {webhook_id} removed", info.to_json())


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
    _emit(rows, as_json, None if as_json else ["id", "environment", "kind", "event", "state",
                                                "attempts", "last_status", "last_error"])


@notifications.command("deliver")
@json_option
@click.pass_context
def deliver(ctx: click.Context, as_json: bool) -> None:
    """Send the notifications that are due now (operators; the hub scheduler does this
    on its own each time it wakes)."""
    from sqlalchemy.orm import sessionmaker

    from hub.services.notifications import SmtpSettings, deliver_due
    from hub.services.users import require_ctx

    smtp = SmtpSettings.from_config(_config(_state(ctx)))
    with _services(ctx) as sc:
        require_ctx(sc, "deployment.update")
        report = deliver_due(sessionmaker(bind=sc.session.get_bind()), sc.clock, smtp=smtp)
    _done(as_json, f"{len(report.delivered)} delivered, {len(report.retrying)} to retry, "
          f"{len(report.failed)} failed", report.to_json())
