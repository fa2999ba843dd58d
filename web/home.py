"""The ``home`` blueprint: ``/`` shows who is signed in (the dashboard replaces it later)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, session

from hub.services.users import roles_of
from web.sessions import METHOD, current_hub_user

__all__ = ["bp"]

bp = Blueprint("home", __name__)


@bp.get("/")
def index() -> Any:
    user = current_hub_user()
    if user is None:
        return render_template("auth/login.html")
    return render_template(
        "home/index.html", user=user, roles=roles_of(user), method=session.get(METHOD)
    )
