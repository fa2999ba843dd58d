"""The API's channel administration, environments' channel subscriptions and preflight policy
(docs/governance.md, docs/rollouts.md, docs/api.md): the operations of ``tiangong hub
channels add|remove|order|rule``, ``hub environments subscribe|unsubscribe|subscriptions``
and ``hub environments preflight-policy``. Every rule, role check and audit event is the
services' (:mod:`hub.services.channels`, :func:`hub.services.environments.
set_preflight_policy`), as for the CLI and the web pages; the answers are the CLI's
``--json``. An environment the caller may not view is a 404, as a missing one."""

from __future__ import annotations

from typing import Any

from hub.services import channels as service
from hub.services.environments import (
    describe_preflight_policy,
    environment_for,
    set_preflight_policy,
)
from hub.services.releases import can_read, get_product
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _PRODUCT, _body, _time, _visible_env
from web.views import in_scope

__all__: list[str] = []

_CHANNEL = Param("channel", "path", "Channel name, e.g. `STABLE` (any letter case).")
_ENV = Param("environment", "path", "Environment name, e.g. `plant-a`.")


def _int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is not None and (type(value) is not int):
        raise ApiError(400, "bad_request", f"field {key!r} must be an integer")
    return value


# --- channels of a product ---------------------------------------------------------------


@operation("/products/<product>/channels", "POST", scope="admin",
           summary="Add a channel to a product", responses={201: "ChannelOrder"},
           params=(_PRODUCT,), body="ChannelRequest", errors=(400, 404, 409))
def channels_add(product: str) -> Any:
    """``{"name": "BETA", "after": "CANARY"}`` (default: at the end; ``"first": true``:
    where approved releases enter). Admins; audited ``channel.add``."""
    doc = _body({"name": str, "after": str, "first": bool})
    if not doc.get("name"):
        raise ApiError(400, "bad_request", "field 'name' is required")
    sc = api_ctx()
    channel = service.add_channel(sc, product, doc["name"], after=doc.get("after") or None,
                                  first=bool(doc.get("first")))
    return {"product": product, "channel": channel.name,
            "order": service.channel_order(sc.session, product)}, 201


@operation("/products/<product>/channels/<channel>", "DELETE", scope="admin",
           summary="Remove a channel of a product", responses={200: "ChannelOrder"},
           params=(_PRODUCT, _CHANNEL), errors=(400, 404, 409))
def channels_remove(product: str, channel: str) -> Any:
    """Refused while environments subscribe to it; the releases it held stay in the
    others. Admins; audited ``channel.remove``."""
    sc = api_ctx()
    held = service.remove_channel(sc, product, channel)
    return {"product": product, "channel": service.normalize_name(channel), "releases": held,
            "order": service.channel_order(sc.session, product)}


@operation("/products/<product>/channels", "PUT", scope="admin",
           summary="Reorder a product's channels", responses={200: "ChannelOrder"},
           params=(_PRODUCT,), body="ChannelOrderRequest", errors=(400, 404))
def channels_order(product: str) -> Any:
    """``{"order": ["RELEASE", "BETA", "CANARY", "STABLE"]}``: every channel once, first
    to last. Admins; audited ``channel.reorder``."""
    names = _body({"order": list}).get("order")
    if not names or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "bad_request", "field 'order' must list every channel's name, "
                       "first to last")
    return {"product": product,
            "order": [c.name for c in service.reorder_channels(api_ctx(), product, names)]}


@operation("/products/<product>/channels/<channel>/rule", "GET", scope="read",
           summary="A channel's promotion rule", responses={200: "ChannelRule"},
           params=(_PRODUCT, _CHANNEL), errors=(400, 404))
def channels_rule_show(product: str, channel: str) -> Any:
    """The settings and the rule in words, as `hub channels rule PRODUCT NAME --json`."""
    sc = api_ctx()
    prod = in_scope(f"product {product[:64]!r} does not exist",
                    lambda: get_product(sc.session, product), lambda _p: can_read(sc.actor))
    found = service.get_channel(sc.session, prod, channel)
    return {**service.rule_answer(sc.session, found), "product": product}


@operation("/products/<product>/channels/<channel>/rule", "PATCH", scope="admin",
           summary="Change a channel's promotion rule", responses={200: "ChannelRule"},
           params=(_PRODUCT, _CHANNEL), body="ChannelRuleRequest", errors=(400, 404))
def channels_rule_set(product: str, channel: str) -> Any:
    """The fields given change, the others keep their value (as the options of `hub
    channels rule`). Admins; audited ``channel.rule``."""
    doc = _body({"approvals": int, "min_successes": int, "no_failures": bool, "soak": str,
                 "preflight_within": int})
    rule = service.ChannelRule(
        _int(doc, "approvals"), _int(doc, "min_successes"), doc.get("no_failures"),
        None if doc.get("soak") is None else service.parse_duration(doc["soak"]),
        _int(doc, "preflight_within"))
    if rule == service.ChannelRule():
        raise ApiError(400, "bad_request", "give at least one of approvals, min_successes, "
                       "no_failures, soak, preflight_within")
    sc = api_ctx()
    changed = service.set_rule(sc, product, channel, rule)
    return {**service.rule_answer(sc.session, changed), "product": product}


# --- an environment's subscriptions and preflight policy ----------------------------------


@operation("/environments/<environment>/subscriptions", "GET", scope="read",
           summary="The channels an environment follows", responses={200: "SubscriptionList"},
           params=(_ENV,), errors=(404,))
def subscriptions_list(environment: str) -> Any:
    """One per product, as `hub environments subscriptions --json`."""
    _visible_env(environment)
    sc = api_ctx()
    rows = service.subscription_rows(sc.session, environment_for(sc, environment))
    return {"subscriptions": [{**r, "since": _time(r["since"])} for r in rows]}


@operation("/environments/<environment>/subscriptions/<product>", "PUT", scope="admin",
           summary="Subscribe an environment to a product's channel",
           responses={200: "Subscription"}, params=(_ENV, _PRODUCT),
           body="SubscriptionRequest", errors=(400, 404, 409))
def subscriptions_set(environment: str, product: str) -> Any:
    """``{"channel": "STABLE"}``; replaces its subscription to another channel of the
    product. Admins of the environment; audited ``environment.subscribe``."""
    channel = _body({"channel": str}).get("channel")
    if not channel:
        raise ApiError(400, "bad_request", "field 'channel' is required")
    _visible_env(environment)
    sub, previous = service.subscribe(api_ctx(), environment, product, channel)
    return {"environment": environment, "product": product, "channel": sub.channel.name,
            "previous": previous}


@operation("/environments/<environment>/subscriptions/<product>", "DELETE", scope="admin",
           summary="End an environment's subscription to a product's channel",
           responses={200: "Subscription"}, params=(_ENV, _PRODUCT), errors=(404,))
def subscriptions_remove(environment: str, product: str) -> Any:
    """Deployments already planned stay. Admins of the environment; audited
    ``environment.unsubscribe``."""
    _visible_env(environment)
    return {"environment": environment, "product": product,
            "channel": service.unsubscribe(api_ctx(), environment, product)}


def _policy(env: Any) -> dict[str, Any]:
    return {"environment": env.name, "preflight_within_h": env.preflight_within_h,
            "policy": describe_preflight_policy(env)}


@operation("/environments/<environment>/preflight-policy", "GET", scope="read",
           summary="An environment's preflight policy", responses={200: "PreflightPolicy"},
           params=(_ENV,), errors=(404,))
def preflight_policy_show(environment: str) -> Any:
    """As `hub environments preflight-policy NAME --json` (docs/rollouts.md)."""
    _visible_env(environment)
    return _policy(environment_for(api_ctx(), environment))


@operation("/environments/<environment>/preflight-policy", "PUT", scope="admin",
           summary="Set or clear an environment's preflight policy",
           responses={200: "PreflightPolicy"}, params=(_ENV,),
           body="PreflightPolicyRequest", errors=(400, 404))
def preflight_policy_set(environment: str) -> Any:
    """``{"within_h": 24}``: every deployment there needs a preflight plan of its release
    passed on each target agent within 24 h, whoever queues it; ``{"within_h": null}``
    clears it. Admins of the environment; audited ``environment.preflight_policy``."""
    doc = _body({"within_h": int})
    if "within_h" not in doc:
        raise ApiError(400, "bad_request", "field 'within_h' is required (hours, or null to "
                       "clear the policy)")
    _visible_env(environment)
    return _policy(set_preflight_policy(api_ctx(), environment, _int(doc, "within_h")))
