"""The API's change-control operations (issue 13; docs/governance.md, docs/api.md): a
product's channels, promoting a release (and approving a promotion), recalling it, and the
maintenance windows and change freezes. Every rule is the services' (:mod:`hub.services.
channels`, :mod:`hub.services.promotion`, :mod:`hub.services.windows`), exactly as for
``tiangong hub channels|releases promote|recall|windows|freezes``; the answers are the CLI's
``--json``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import request

from hub.services import promotion
from hub.services import windows as rules
from hub.services.channels import channel_rows
from hub.services.deployments import get_deployment
from hub.services.releases import can_read, get_product
from hub.services.users import can
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _PRODUCT, _VERSION, _body, _release, _visible_env
from web.views import in_scope

__all__: list[str] = []

_RULE_ID = Param("rule_id", "path", "The window's or freeze's number.",
                 schema={"type": "integer"})
_RULE_FIELDS: dict[str, type] = {"spec": object, "environment": str, "product": str}


@operation("/products/<product>/channels", "GET", scope="read",
           summary="List a product's channels", responses={200: "ChannelList"},
           params=(_PRODUCT,), errors=(404,))
def channels_list(product: str) -> Any:
    """In order: the releases in each (newest first), the environments subscribed, the
    rule for promoting into it."""
    sc = api_ctx()
    prod = in_scope(f"product {product[:64]!r} does not exist",
                    lambda: get_product(sc.session, product), lambda _p: can_read(sc.actor))
    return {"channels": channel_rows(sc.session, prod)}


@operation("/releases/<product>/<version>/promote", "POST", scope="deploy",
           summary="Promote a release to the next channel", responses={200: "Promotion"},
           params=(_PRODUCT, _VERSION), body="PromotionRequest", errors=(400, 404, 409))
def releases_promote(product: str, version: str) -> Any:
    """Under the channel's rule (approvers, health gates), refused with everything that is
    missing; environments subscribed to the channel get a planned deployment."""
    doc = _body({"to": str, "comment": str})
    _release(product, version)
    done = promotion.promote(api_ctx(), product, version, doc.get("to") or None,
                             comment=doc.get("comment") or "")
    return promotion.promotion_json(product, version, done)


@operation("/releases/<product>/<version>/promotion-approvals", "POST", scope="approve",
           summary="Approve promoting a release into a channel",
           responses={201: "PromotionApproval"}, params=(_PRODUCT, _VERSION),
           body="PromotionRequest", errors=(400, 404, 409))
def releases_approve_promotion(product: str, version: str) -> Any:
    """Counts toward the channel's approvals rule (never the release's author)."""
    doc = _body({"to": str, "comment": str})
    rel = _release(product, version)
    sc = api_ctx()
    _, channel = promotion.approve_promotion(sc, product, version, doc.get("to") or None,
                                             comment=doc.get("comment") or "")
    have = promotion.promotion_approvers(sc.session, rel, channel)
    return {"product": product, "version": version, "channel": channel.name,
            "approvers": have, "required": channel.required_approvals}, 201


@operation("/releases/<product>/<version>/recall", "POST", scope="deploy",
           summary="Recall a release from a channel", responses={200: "Recall"},
           params=(_PRODUCT, _VERSION), body="RecallRequest", errors=(400, 404, 409))
def releases_recall(product: str, version: str) -> Any:
    """From ``channel`` and every later one it is in: planned and queued deployments are
    cancelled; exported bundles not yet at the site are declared lost (the next bundle to
    each agent carries that signed decision)."""
    doc = _body({"channel": str, "reason": str})
    channel, reason = doc.get("channel"), doc.get("reason")
    if not channel or not reason:
        raise ApiError(400, "bad_request", "fields 'channel' and 'reason' are required")
    _release(product, version)
    done = promotion.recall(api_ctx(), product, version, channel, reason)
    return promotion.recall_json(product, version, reason, done)


# --- windows and freezes ---------------------------------------------------------------


def _rule_operations(kind: str, plural: str) -> None:
    """``GET``/``POST /<plural>`` and ``DELETE /<plural>/<id>`` for windows or freezes."""

    def listing() -> Any:
        """Those the caller may view: of an environment (with those of every environment)
        and/or a product, else all."""
        args = request.args
        found = rules.list_rules(api_ctx(), kind,
                                 environment=_visible_env(args.get("environment") or None),
                                 product=args.get("product") or None,
                                 include_ended=args.get("all") in ("1", "true"))
        return {plural: [rules.rule_json(r) for r in found]}

    def add() -> Any:
        """``spec`` as the CLI takes it (``sat,sun 01:00-05:00 Europe/Berlin``,
        ``START/END``, ``12-20..01-05 UTC: year end``) or its JSON object
        (docs/bundle-format.md §6.9); for one ``environment`` and/or ``product`` (default:
        every one). Admins; audited; queued deployments it touches are held or released."""
        doc = _body(_RULE_FIELDS)
        if doc.get("spec") is None:
            raise ApiError(400, "bad_request", f"field 'spec' is required: the {kind} as "
                           "`tiangong hub " + plural + " add` takes it, or its JSON object")
        rule = rules.add_rule(api_ctx(), kind, doc["spec"],
                              environment=_visible_env(doc.get("environment") or None),
                              product=doc.get("product") or None)
        return rules.rule_json(rule), 201

    def remove(rule_id: int) -> Any:
        """Delete it (audited); answers what it was."""
        return rules.remove_rule(api_ctx(), kind, rule_id)

    scope_params: tuple[Param, ...] = (
        Param("environment", "query", "Those that apply to this environment.", required=False),
        Param("product", "query", "Those that apply to this product.", required=False),
    )
    if kind == "freeze":
        scope_params += (Param("all", "query", "`1`: include ended freezes.", required=False),)
    _register(listing, f"{plural}_list", operation(
        f"/{plural}", "GET", scope="read", summary=f"List {plural}",
        responses={200: f"{kind.capitalize()}List"}, params=scope_params, errors=(404,)))
    _register(add, f"{plural}_add", operation(
        f"/{plural}", "POST", scope="admin", summary=f"Add a {kind}",
        responses={201: "PolicyRule"}, body="PolicyRuleRequest", errors=(400, 404, 409)))
    _register(remove, f"{plural}_remove", operation(
        f"/{plural}/<int:rule_id>", "DELETE", scope="admin", summary=f"Delete a {kind}",
        responses={200: "PolicyRule"}, params=(_RULE_ID,), errors=(404,)))


def _register(view: Callable[..., Any], name: str,
              decorator: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    view.__name__ = view.__qualname__ = name
    decorator(view)


_rule_operations("window", "windows")
_rule_operations("freeze", "freezes")


@operation("/freezes/<int:rule_id>/end", "POST", scope="admin", summary="End a freeze now",
           responses={200: "PolicyRule"}, params=(_RULE_ID,), body="ReasonRequest",
           errors=(400, 404, 409))
def freezes_end(rule_id: int) -> Any:
    """Kept as ended, for the record; the deployments it held are released."""
    reason = str(_body({"reason": str}).get("reason") or "")
    return rules.rule_json(rules.end_freeze(api_ctx(), rule_id, reason))


# --- hub overrides (docs/governance.md "Hub override") --------------------------------------

_DEPLOYMENT = Param("deployment_id", "path", "The deployment's number.",
                    schema={"type": "integer"})


def _deployment(deployment_id: int) -> Any:
    sc = api_ctx()
    return in_scope(f"deployment {deployment_id} does not exist",
                    lambda: get_deployment(sc.session, deployment_id),
                    lambda d: can(sc.actor, "view", d.environment))


@operation("/deployments/<int:deployment_id>/override", "POST", scope="deploy",
           summary="Ask to deploy despite freezes and windows", responses={201: "Override"},
           params=(_DEPLOYMENT,), body="ReasonRequest", errors=(400, 404, 409))
def deployments_override(deployment_id: int) -> Any:
    """A queued deployment, with a reason (audited, carried in its bundle); a second person
    confirms it within 24 hours (`…/override/confirm`). Operators of its environment."""
    reason = str(_body({"reason": str}).get("reason") or "")
    return rules.override_row(rules.request_override(api_ctx(), _deployment(deployment_id),
                                                     reason)), 201


@operation("/deployments/<int:deployment_id>/override/confirm", "POST", scope="deploy",
           summary="Confirm another person's override request", responses={200: "Override"},
           params=(_DEPLOYMENT,), errors=(404, 409))
def deployments_confirm_override(deployment_id: int) -> Any:
    """Never the requester's own: from now on the hub exports it despite freezes and
    windows, and its bundle tells the agent so."""
    return rules.override_row(rules.confirm_override(api_ctx(), _deployment(deployment_id)))
