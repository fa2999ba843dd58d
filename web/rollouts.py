"""The fleet page (``/fleet``: environments × agents × the version of each product each
runs, presence, pending) and the rollout pages (``/rollouts``: batches, gates, each agent's
state, what the current batch waits for), with the buttons pause, resume, abort, cancel and
confirm the gate (``POST /rollouts/<id>/act``; the services decide who may: operators of
every environment of the rollout, the gate not by its starter). A rollout is started from
the release page's form (``POST /releases/<product>/<version>/rollouts``: the fields of
``tiangong hub rollouts start``, parsed by ``Strategy.from_text``; operators of the
environment, as in the CLI), the CLI or the API (docs/rollouts.md).

A running rollout's page follows its agents live: ``static/rollout-live.js`` polls
``/rollouts/<id>/state`` (a small JSON document) every :data:`POLL_S` seconds and updates
the states, the batches and what they wait for in place — a live agent's result shows up
seconds after it is imported. Without JavaScript the page reloads itself every
:data:`REFRESH_S` seconds (``<noscript>`` meta refresh).
Who sees what: the environments one may view (:func:`hub.services.users.can`); a rollout
touching an environment one may not view is a 404 like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from hub.db import Rollout, db
from hub.errors import ValidationError
from hub.services import rollouts as service
from hub.services.environments import list_environments
from hub.services.fleet import fleet as fleet_view
from hub.services.releases import can_read, get_release
from hub.services.rollouts import get_rollout, list_rollouts, rollout_json, rollout_scope
from hub.services.users import can
from web.views import ctx, in_scope, login_required, signed_in_user, visible_environment

__all__ = ["ACTIONS", "LIST_LIMIT", "POLL_S", "REFRESH_S", "bp"]

#: The buttons of a rollout's page: action -> label.
ACTIONS = {"pause": "Pause", "resume": "Resume", "confirm": "Confirm the gate",
           "abort": "Abort", "cancel": "Cancel (withdraw exported bundles)"}

REFRESH_S = 15  # seconds between two reloads of a running rollout's page (no JavaScript)
POLL_S = 2  # seconds between two polls of a running rollout's state (rollout-live.js)
LIST_LIMIT = 100  # newest rollouts listed

bp = Blueprint("rollouts", __name__)


def _visible(rollout: Rollout) -> bool:
    user = signed_in_user()
    return all(can(user, "view", env) for env in rollout_scope(ctx().session, rollout))


@bp.get("/fleet")
@login_required
def index() -> Any:
    sc = ctx()
    user = signed_in_user()
    names = {e.name for e in list_environments(sc.session) if can(user, "view", e)}
    return render_template("rollouts/fleet.html", fleet=fleet_view(sc.session, sc.now(), names))


@bp.get("/rollouts/")
@login_required
def listing() -> Any:
    sc = ctx()
    rows = [r for r in list_rollouts(sc.session) if _visible(r)][:LIST_LIMIT]
    return render_template("rollouts/index.html", rollouts=rows)


@bp.get("/rollouts/<int:rollout_id>")
@login_required
def show(rollout_id: int) -> Any:
    sc = ctx()
    rollout = in_scope(f"rollout {rollout_id} does not exist",
                       lambda: get_rollout(sc.session, rollout_id), _visible)
    view = rollout_json(sc.session, rollout, sc.now())
    user = signed_in_user()
    may = all(can(user, "deployment.update", e) for e in rollout_scope(sc.session, rollout))
    offered = {"running": ("pause", "confirm", "abort", "cancel"),
               "paused": ("resume", "abort", "cancel")}.get(rollout.state, ())
    if not rollout.strategy.get("manual"):
        offered = tuple(a for a in offered if a != "confirm")
    return render_template("rollouts/show.html", r=view,
                           actions=[(a, ACTIONS[a]) for a in offered] if may else [],
                           refresh=REFRESH_S if rollout.state == "running" else None,
                           poll_s=POLL_S)


def _live_state(view: dict[str, Any]) -> dict[str, Any]:
    """What the rollout page updates in place (rollout-live.js)."""
    return {
        "id": view["id"], "state": view["state"], "current_batch": view["current_batch"],
        "running": view["state"] == "running",
        "batches": [{
            "number": b["number"],
            "status": _batch_status(b),
            "waiting_for": list(b.get("waiting_for") or []),
            "agents": [{"agent": a["agent"], "state": a["state"], "reached": a["reached"],
                        "deployment_url": (url_for("deployments.show",
                                                   deployment_id=a["deployment"])
                                           if a.get("deployment") else None),
                        "owes_result_since": a.get("owes_result_since")}
                       for a in b["agents"]],
        } for b in view["batches"]],
    }


def _batch_status(b: dict[str, Any]) -> str:
    """The batch's line under its heading, as the page renders it."""
    if b.get("done_at"):
        text = f"done {b['done_at']}"
    elif b.get("started_at"):
        text = f"started {b['started_at']}"
    else:
        text = "not started"
    if b.get("confirmed_by"):
        text += f"; gate confirmed by {b['confirmed_by']} at {b['confirmed_at']}"
    return text


@bp.get("/rollouts/<int:rollout_id>/state")
@login_required
def state(rollout_id: int) -> Any:
    """The rollout's live state as JSON (polled by its page; same visibility rules)."""
    sc = ctx()
    rollout = in_scope(f"rollout {rollout_id} does not exist",
                       lambda: get_rollout(sc.session, rollout_id), _visible)
    resp = jsonify(_live_state(rollout_json(sc.session, rollout, sc.now())))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/releases/<product>/<version>/rollouts")
@login_required
def start(product: str, version: str) -> Any:
    """Start a rollout of an approved release from its page's form (operators of the
    environment; the same fields and rules as ``tiangong hub rollouts start``)."""
    form = request.form
    environment = (form.get("environment") or "").strip() or None
    selector = (form.get("selector") or "").strip() or None
    if environment is None and selector is None:
        raise ValidationError("choose an environment or give a label selector (k=v,k2=v2)")
    if environment is not None:
        visible_environment(environment)
    strategy = service.Strategy.from_text(
        canary=form.get("canary") or "0", batch=(form.get("batch") or "").strip() or None,
        soak_s=_int_field("soak_s", 0), manual=form.get("manual") == "on",
        max_failures=form.get("max_failures") or "0",
        on_failure=(form.get("on_failure") or "pause").strip(),
        auto_rollback=form.get("auto_rollback") == "on",
        preflight_within_h=_int_field("preflight_within_h", None))
    sc = ctx()
    release = in_scope(f"release {product[:64]} {version[:64]} does not exist",
                       lambda: get_release(sc.session, product, version),
                       lambda _r: can_read(sc.actor))
    rollout = service.start_rollout(
        sc, release, environment=environment,
        labels=service.parse_selector(selector) if selector else None, strategy=strategy)
    db.session.commit()
    flash(f"Rollout {rollout.id} of {release.label} started; its first batch is queued.",
          "info")
    return redirect(url_for("rollouts.show", rollout_id=rollout.id))


def _int_field(name: str, default: int | None) -> Any:
    """A whole-number form field (empty: ``default``).

    Raises:
        ValidationError: not a whole number.
    """
    raw = (request.form.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdecimal() or len(raw) > 9:
        raise ValidationError(f"{name.replace('_', ' ')} {raw[:32]!r}: give a whole number")
    return int(raw)


@bp.post("/rollouts/<int:rollout_id>/act")
@login_required
def act(rollout_id: int) -> Any:
    action = (request.form.get("action") or "").strip()
    if action not in ACTIONS:
        raise ValidationError(f"no rollout action {action[:32]!r}; actions: "
                              f"{', '.join(ACTIONS)}")
    reason = (request.form.get("reason") or "").strip()[:1000]
    sc = ctx()
    rollout = in_scope(f"rollout {rollout_id} does not exist",
                       lambda: get_rollout(sc.session, rollout_id), _visible)
    if action == "pause":
        service.pause_rollout(sc, rollout, reason)
    elif action == "resume":
        service.resume_rollout(sc, rollout)
    elif action == "confirm":
        service.confirm_gate(sc, rollout)
    elif action == "abort":
        service.abort_rollout(sc, rollout, reason)
    else:
        service.cancel_rollout(sc, rollout, reason)
    db.session.commit()
    flash(f"Rollout {rollout_id}: {action} done; it is {rollout.state}.", "info")
    return redirect(url_for("rollouts.show", rollout_id=rollout_id))
