"""The fleet page (``/fleet``: environments × agents × the version of each product each
runs, presence, pending) and the rollout pages (``/rollouts``: batches, gates, each agent's
state, what the current batch waits for), with the buttons pause, resume, abort, cancel and
confirm the gate (``POST /rollouts/<id>/act``; the services decide who may: operators of
every environment of the rollout, the gate not by its starter). Starting a rollout is
``tiangong hub rollouts start`` or the API (docs/rollouts.md).

A running rollout's page reloads itself every :data:`REFRESH_S` seconds (an HTML ``meta``
refresh: no JavaScript), so results imported from media and from live agents show up.
Who sees what: the environments one may view (:func:`hub.services.users.can`); a rollout
touching an environment one may not view is a 404 like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import Rollout, db
from hub.errors import ValidationError
from hub.services import rollouts as service
from hub.services.environments import list_environments
from hub.services.fleet import fleet as fleet_view
from hub.services.rollouts import get_rollout, list_rollouts, rollout_json, rollout_scope
from hub.services.users import can
from web.views import ctx, in_scope, login_required, signed_in_user

__all__ = ["ACTIONS", "LIST_LIMIT", "REFRESH_S", "bp"]

#: The buttons of a rollout's page: action -> label.
ACTIONS = {"pause": "Pause", "resume": "Resume", "confirm": "Confirm the gate",
           "abort": "Abort", "cancel": "Cancel (withdraw exported bundles)"}

REFRESH_S = 15  # seconds between two reloads of a running rollout's page
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
                           refresh=REFRESH_S if rollout.state == "running" else None)


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
