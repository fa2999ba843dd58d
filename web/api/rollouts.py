"""The API's rollout operations (docs/rollouts.md, docs/api.md): start a rollout of a
release, show one, and its actions. Every rule is :mod:`hub.services.rollouts`'s; a rollout
touching an environment the caller may not view is a 404 like one that does not exist."""

from __future__ import annotations

from typing import Any

from hub.db import Rollout
from hub.services import rollouts as service
from hub.services.users import can
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _PRODUCT, _VERSION, _body, _release, _visible_env
from web.views import in_scope

__all__: list[str] = []

_ROLLOUT = Param("rollout_id", "path", "The rollout's number.", schema={"type": "integer"})
_ACTIONS = ("pause", "resume", "abort", "cancel", "confirm")
#: the start request's fields: the targets, then :class:`hub.services.rollouts.Strategy`
_START: dict[str, type] = {"environment": str, "selector": str, "canary": int,
                           "canary_agents": list, "batch_size": int, "batch_percent": int,
                           "soak_s": int, "manual": bool, "max_failures": int,
                           "max_failure_percent": int, "on_failure": str,
                           "auto_rollback": bool}


def _view(rollout: Rollout, did: list[str] | None = None) -> dict[str, Any]:
    sc = api_ctx()
    out = service.rollout_json(sc.session, rollout, sc.now())
    out["did"] = did or []
    return out


def _rollout(rollout_id: int) -> Rollout:
    sc = api_ctx()
    return in_scope(f"rollout {rollout_id} does not exist",
                    lambda: service.get_rollout(sc.session, rollout_id),
                    lambda r: all(can(sc.actor, "view", e)
                                  for e in service.rollout_scope(sc.session, r)))


@operation("/releases/<product>/<version>/rollouts", "POST", scope="deploy",
           summary="Start a rollout of an approved release", responses={201: "Rollout"},
           params=(_PRODUCT, _VERSION), body="RolloutRequest", errors=(400, 404, 409))
def rollouts_start(product: str, version: str) -> Any:
    """Targets: ``environment`` and/or ``selector`` (``k=v,k2=v2``); the rest is the
    strategy (docs/rollouts.md). The first batch is queued at once."""
    doc = _body(_START)
    environment = _visible_env(doc.pop("environment", None))
    selector = doc.pop("selector", None)
    agents = doc.get("canary_agents")
    if agents is not None and not all(isinstance(a, str) for a in agents):
        raise ApiError(400, "bad_request", "field 'canary_agents' must be a list of agent ids")
    strategy = service.Strategy.from_json({k: v for k, v in doc.items() if v is not None})
    rollout = service.start_rollout(
        api_ctx(), _release(product, version), environment=environment,
        labels=service.parse_selector(selector) if selector else None, strategy=strategy)
    return _view(rollout), 201


@operation("/rollouts/<int:rollout_id>", "GET", scope="read", summary="Show a rollout",
           responses={200: "Rollout"}, params=(_ROLLOUT,), errors=(404,))
def rollouts_show(rollout_id: int) -> Any:
    """Batches, gates, each agent's state and what the current batch waits for."""
    return _view(_rollout(rollout_id))


@operation("/rollouts/<int:rollout_id>/<action>", "POST", scope="deploy",
           summary="Pause, resume, abort, cancel a rollout or confirm its gate",
           responses={200: "Rollout"},
           params=(_ROLLOUT, Param("action", "path", "What to do.",
                                   schema={"type": "string", "enum": list(_ACTIONS)})),
           body="RolloutAction", errors=(400, 404, 409))
def rollouts_action(rollout_id: int, action: str) -> Any:
    """``confirm`` must come from another person than the one who started the rollout;
    ``reason`` is kept for pause, abort and cancel."""
    if action not in _ACTIONS:
        raise ApiError(404, "not_found", f"no rollout action {action[:32]!r}; actions: "
                       f"{', '.join(_ACTIONS)}")
    reason = str(_body({"reason": str}).get("reason") or "")
    rollout = _rollout(rollout_id)
    sc = api_ctx()
    did: Any
    if action == "pause":
        did = service.pause_rollout(sc, rollout, reason)
    elif action == "resume":
        did = service.resume_rollout(sc, rollout)
    elif action == "abort":
        did = service.abort_rollout(sc, rollout, reason)
    elif action == "cancel":
        did = service.cancel_rollout(sc, rollout, reason)
    else:
        did = service.confirm_gate(sc, rollout)
    return _view(rollout, did if isinstance(did, list) else [])
