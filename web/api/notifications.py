"""The API's notification operations (docs/operations.md, "Notifications"): an
environment's targets and thresholds, adding and removing targets, the deliveries and
retry-now. Every rule is :mod:`hub.services.notifications`'s and
:mod:`hub.services.incidents`'s; an environment the caller may not view is a 404.

A webhook added here is unsigned: its HMAC secret lives in a file on the hub's machine, and
the API takes no path of that machine (``tiangong hub notifications add-webhook
--secret-file`` does, at the console)."""

from __future__ import annotations

from typing import Any

from flask import request

from hub.db import NotificationOutbox, NotificationWebhook
from hub.services import incidents
from hub.services import notifications as service
from hub.services.users import can
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _body, _visible_env
from web.views import in_scope

__all__: list[str] = []

_ENV = Param("environment", "path", "Environment name, e.g. `plant-a`.")
_LIMIT = 500  # deliveries one call lists at most


def _config(environment: str) -> dict[str, Any]:
    sc = api_ctx()
    return {"environment": environment,
            "targets": [i.to_json() for i in service.list_webhooks(sc, environment)],
            "thresholds": incidents.get_thresholds(sc, environment).to_json()}


@operation("/environments/<environment>/notifications", "GET", scope="read",
           summary="An environment's notification targets and thresholds",
           responses={200: "NotificationConfig"}, params=(_ENV,), errors=(404,))
def notifications_show(environment: str) -> Any:
    _visible_env(environment)
    return _config(environment)


@operation("/environments/<environment>/notifications/targets", "POST", scope="admin",
           summary="Add a webhook or e-mail target", responses={201: "NotificationTarget"},
           params=(_ENV,), body="NotificationTargetRequest", errors=(400, 404))
def notifications_target_add(environment: str) -> Any:
    """``{"kind": "webhook", "url": "https://…", "events": […]}`` or ``{"kind": "email",
    "recipients": ["ops@example.org"], "events": […]}``; admins only."""
    doc = _body({"kind": str, "url": str, "recipients": list, "events": list})
    _visible_env(environment)
    kind = doc.get("kind") or "webhook"
    events = [str(e) for e in doc.get("events") or []]
    if kind == "webhook":
        if doc.get("recipients") is not None:
            raise ApiError(400, "bad_request", "a webhook takes url, not recipients")
        info = service.add_webhook(api_ctx(), environment, str(doc.get("url") or ""), events)
    elif kind == "email":
        if doc.get("url") is not None:
            raise ApiError(400, "bad_request", "an e-mail target takes recipients, not url")
        info = service.add_email(api_ctx(), environment,
                                 [str(a) for a in doc.get("recipients") or []], events)
    else:
        raise ApiError(400, "bad_request", f"kind {kind[:32]!r}: webhook or email")
    return info.to_json(), 201


@operation("/notifications/targets/<int:target_id>", "DELETE", scope="admin",
           summary="Remove a target; its undelivered notifications are cancelled",
           responses={200: "NotificationTarget"},
           params=(Param("target_id", "path", "Target id.", {"type": "integer"}),),
           errors=(404,))
def notifications_target_remove(target_id: int) -> Any:
    sc = api_ctx()
    in_scope(f"notification target {target_id}: no such active target",
             lambda: _found(sc.session.get(NotificationWebhook, target_id)),
             lambda t: can(sc.actor, "view", t.environment))
    return service.remove_webhook(sc, target_id).to_json()


@operation("/environments/<environment>/notifications/thresholds", "PUT", scope="admin",
           summary="Set the agent-offline and result-overdue thresholds (null: off)",
           responses={200: "NotificationThresholds"}, params=(_ENV,),
           body="NotificationThresholdsRequest", errors=(400, 404))
def notifications_thresholds_set(environment: str) -> Any:
    """``{"agent_offline_s": 7200, "result_overdue_s": null}``: both are set (a missing one
    is off); 60 s to a year each."""
    doc = _body({"agent_offline_s": int, "result_overdue_s": int})
    _visible_env(environment)
    return incidents.set_thresholds(api_ctx(), environment,
                                    agent_offline_s=doc.get("agent_offline_s"),
                                    result_overdue_s=doc.get("result_overdue_s")).to_json()


@operation("/notifications/deliveries", "GET", scope="read",
           summary="The newest notifications and their delivery state",
           responses={200: "DeliveryList"},
           params=(Param("environment", "query", "Only this environment (without it the "
                         "caller needs a global grant).", required=False),),
           errors=(404,))
def notifications_deliveries() -> Any:
    environment = request.args.get("environment") or None
    _visible_env(environment)
    return {"deliveries": service.delivery_log(api_ctx(), environment, _LIMIT)}


@operation("/notifications/deliveries/<int:delivery_id>/retry", "POST", scope="deploy",
           summary="Make a pending or failed notification due now",
           responses={200: "Delivery"},
           params=(Param("delivery_id", "path", "Notification id.", {"type": "integer"}),),
           errors=(404, 409))
def notifications_retry(delivery_id: int) -> Any:
    """A failed one gets one more attempt; the hub scheduler sends it at its next tick."""
    sc = api_ctx()
    in_scope(f"notification {delivery_id}: no such notification",
             lambda: _found(sc.session.get(NotificationOutbox, delivery_id)),
             lambda r: can(sc.actor, "view", r.webhook.environment))
    return service.retry_now(sc, delivery_id)


def _found(obj: Any) -> Any:
    from hub.errors import NotFoundError

    if obj is None or getattr(obj, "removed_at", None) is not None:
        raise NotFoundError("not found")
    return obj
