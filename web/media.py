"""The ``media`` pages (work in progress: see issue 6)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from web.views import login_required

__all__ = ["bp"]

bp = Blueprint("media", __name__, url_prefix="/media")


@bp.get("/")
@login_required
def index() -> Any:
    return render_template("placeholder.html", title="Media")
