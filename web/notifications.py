"""The notifications page of an environment (``/notifications/<environment>``): its
webhook and e-mail targets and the events each receives, the agent-offline and
result-overdue thresholds, the open incidents, and the newest deliveries (pending,
delivered, failed with the last error, attempts) with a "Retry now" button.

Admins add and remove targets and set thresholds; operators retry. Every rule is
:mod:`hub.services.notifications`'s and :mod:`hub.services.incidents`'s; this module reads
forms and renders. A webhook added here is unsigned (its secret file is a path on the hub's
machine: ``tiangong hub notifications add-webhook --secret-file`` sets it)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import NotificationOutbox, NotificationWebhook, db
from hub.errors import NotFoundError
from hub.services import incidents
from hub.services import notifications as service
from hub.services.channels import format_duration
from hub.services.users import can
from web.views import ctx, login_required, signed_in_user, visible_environment

__all__ = ["bp"]

bp = Blueprint("notifications", __name__, url_prefix="/notifications")
DELIVERIES_SHOWN = 50  # newest deliveries on the page


@bp.get("/<name>")
@login_required
def show(name: str) -> Any:
    env = visible_environment(name)
    sc = ctx()
    user = signed_in_user()
    return render_template(
        "environments/notifications.html", env=env,
        targets=service.list_webhooks(sc, env.name),
        thresholds=incidents.get_thresholds(sc, env.name),
        incidents=incidents.list_incidents(sc, env.name, open_only=True),
        deliveries=service.delivery_log(sc, env.name, DELIVERIES_SHOWN),
        events=sorted(service.EVENTS),
        may_update=can(user, "environment.update", env),
        may_retry=can(user, "deployment.update", env),
        duration=lambda s: "off" if s is None else format_duration(s))


@bp.post("/<name>/targets")
@login_required
def add_target(name: str) -> Any:
    env = visible_environment(name)
    events = request.form.getlist("events")
    if (request.form.get("kind") or "webhook") == "email":
        info = service.add_email(ctx(), env.name,
                                 (request.form.get("recipients") or "").split(","), events)
    else:
        info = service.add_webhook(ctx(), env.name, (request.form.get("url") or "").strip(),
                                   events)
    db.session.commit()
    flash(f"{'E-mail' if info.kind == 'email' else 'Webhook'} target {info.id} added: "
          f"{info.url} ({', '.join(info.events)}).")
    return redirect(url_for("notifications.show", name=env.name))


@bp.post("/<name>/targets/<int:target_id>/remove")
@login_required
def remove_target(name: str, target_id: int) -> Any:
    env = visible_environment(name)
    hook = db.session.get(NotificationWebhook, target_id)
    if hook is None or hook.environment_id != env.id or hook.removed_at is not None:
        raise NotFoundError(f"notification target {target_id}: no such active target of "
                            f"{env.name}")
    info = service.remove_webhook(ctx(), target_id)
    db.session.commit()
    flash(f"Target {info.id} ({info.url}) removed; its undelivered notifications are "
          "cancelled.")
    return redirect(url_for("notifications.show", name=env.name))


@bp.post("/<name>/thresholds")
@login_required
def thresholds(name: str) -> Any:
    env = visible_environment(name)
    info = incidents.set_thresholds(
        ctx(), env.name,
        agent_offline_s=incidents.parse_threshold(request.form.get("agent_offline") or "off",
                                                  "agent offline threshold"),
        result_overdue_s=incidents.parse_threshold(
            request.form.get("result_overdue") or "off", "result overdue threshold"))
    db.session.commit()
    flash(f"Thresholds of {env.name}: {info.describe()}.")
    return redirect(url_for("notifications.show", name=env.name))


@bp.post("/<name>/deliveries/<int:delivery_id>/retry")
@login_required
def retry(name: str, delivery_id: int) -> Any:
    env = visible_environment(name)
    row = db.session.get(NotificationOutbox, delivery_id)
    if row is None or row.webhook.environment_id != env.id:
        raise NotFoundError(f"notification {delivery_id}: no such notification of {env.name}")
    service.retry_now(ctx(), delivery_id)
    db.session.commit()
    flash(f"Notification {delivery_id} is due now: the scheduler sends it at its next tick.")
    return redirect(url_for("notifications.show", name=env.name))
