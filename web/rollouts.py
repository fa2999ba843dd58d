"""The fleet page (``/fleet``: environments × agents × the version of each product each
runs, presence, pending) and the rollout pages (``/rollouts``: batches, gates, each agent's
state, what the current batch waits for). Read-only: the actions (start, pause, resume,
abort, cancel, confirm) are ``tiangong hub rollouts …`` (docs/rollouts.md).

A running rollout's page reloads itself every :data:`REFRESH_S` seconds (an HTML ``meta``
refresh: no JavaScript), so results imported from media and from live agents show up.
Who sees what: the environments one may view (:func:`hub.services.users.can`); a rollout
touching an environment one may not view is a 404 like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from hub.db import Rollout
from hub.services.environments import list_environments
from hub.services.fleet import fleet as fleet_view
from hub.services.rollouts import get_rollout, list_rollouts, rollout_json, rollout_scope
from hub.services.users import can
from web.views import ctx, in_scope, login_required, signed_in_user

__all__ = ["LIST_LIMIT", "REFRESH_S", "bp"]

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
    return render_template("rollouts/show.html", r=view,
                           refresh=REFRESH_S if rollout.state == "running" else None)
