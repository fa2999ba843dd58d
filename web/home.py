"""The ``home`` blueprint: ``/`` is the dashboard for a signed-in user and the sign-in page
for a visitor.

The dashboard shows environments × products with the deployed version, the releases
waiting for the user's approval, agents that are not online (:mod:`hub.services.presence`)
and failed deployments — all from :func:`hub.services.dashboard.build_dashboard`, which
keeps to the environments the user may view. A small "you" card says who is signed in,
with which roles.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, session

from hub.services.dashboard import build_dashboard
from hub.services.presence import online_window
from hub.services.users import roles_of
from web.sessions import METHOD, current_hub_user
from web.views import ctx

__all__ = ["bp"]

bp = Blueprint("home", __name__)


@bp.get("/")
def index() -> Any:
    user = current_hub_user()
    if user is None:
        return render_template("auth/login.html")
    return render_template(
        "home/index.html",
        user=user,
        roles=roles_of(user),
        method=session.get(METHOD),
        board=build_dashboard(ctx()),
        online_seconds=int(online_window().total_seconds()),
    )
