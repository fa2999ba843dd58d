"""The site-secrets page of an environment (``/secrets/<environment>``): the names of its
secrets, who set them and when, and for admins a form that stores a value — write-only: no
page ever shows a value again. The rules are :mod:`hub.services.site_secrets`'s."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import db
from hub.services.site_secrets import list_secrets, set_secret
from hub.services.users import can
from web.views import ctx, login_required, signed_in_user, visible_environment

__all__ = ["bp"]

bp = Blueprint("secrets", __name__, url_prefix="/secrets")


@bp.get("/<name>")
@login_required
def show(name: str) -> Any:
    env = visible_environment(name)
    return render_template("environments/secrets.html", env=env,
                           secrets=list_secrets(ctx(), env.name),
                           may_update=can(signed_in_user(), "environment.update", env))


@bp.post("/<name>")
@login_required
def store(name: str) -> Any:
    env = visible_environment(name)
    secret = (request.form.get("name") or "").strip()
    info = set_secret(ctx(), env.name, secret, request.form.get("value") or "")
    db.session.commit()
    flash(f"Secret {info.name} of {env.name} stored (encrypted; it is not shown again).")
    return redirect(url_for("secrets.show", name=env.name))
