"""The ``windows`` page: maintenance windows and change freezes, of every environment and
product the user may view; admins add and remove them and end freezes. The deployment
page's "Waiting for" section and its override forms are in :mod:`web.deployments`.

Every decision is :mod:`hub.services.windows`'s (who may add, what a spec means, what a
freeze holds); this module reads forms, renders and turns domain errors into flashes or
error pages. Every POST carries the CSRF token (:mod:`web.csrf`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import db
from hub.errors import ValidationError
from hub.services.environments import viewable_environments
from hub.services.releases import list_products
from hub.services.users import can
from hub.services.windows import add_rule, end_freeze, list_rules, remove_rule
from web.views import ctx, login_required, signed_in_user

__all__ = ["KINDS", "bp"]

KINDS = {"window": "Window", "freeze": "Freeze"}

bp = Blueprint("windows", __name__, url_prefix="/windows")


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    user = signed_in_user()
    envs = viewable_environments(sc)
    manageable = [e.name for e in envs if can(user, "environment.update", e)]
    return render_template(
        "windows/index.html",
        windows=list_rules(sc, "window"),
        freezes=list_rules(sc, "freeze"),
        ended=[r for r in list_rules(sc, "freeze", include_ended=True) if r.ended_at],
        environments=manageable,
        products=[p.name for p in list_products(sc.session)],
        may_global=can(user, "environment.update"),
        may_manage=bool(manageable),
        may_update=lambda rule: can(user, "environment.update", rule.environment),
        describe=_describe,
    )


def _optional(name: str) -> str | None:
    return (request.form.get(name) or "").strip() or None


@bp.post("/")
@login_required
def add() -> Any:
    kind = (request.form.get("kind") or "").strip()
    if kind not in KINDS:
        raise ValidationError(f"kind must be window or freeze, not {kind[:20]!r}")
    spec = (request.form.get("spec") or "").strip()
    if kind == "freeze" and ": " not in spec and not spec.startswith("{"):
        reason = (request.form.get("reason") or "").strip()
        if reason:
            spec = f"{spec}: {reason}"
    rule = add_rule(ctx(), kind, spec, environment=_optional("environment"),
                    product=_optional("product"))
    db.session.commit()
    flash(f"{KINDS[kind]} {rule.id} added: {_describe(rule)}.")
    return redirect(url_for("windows.index"))


def _describe(rule: Any) -> str:
    from hub.services.windows import describe_rule

    return describe_rule(rule)


@bp.post("/<kind>/<int:rule_id>/remove")
@login_required
def remove(kind: str, rule_id: int) -> Any:
    if kind not in KINDS:
        raise ValidationError(f"kind must be window or freeze, not {kind[:20]!r}")
    before = remove_rule(ctx(), kind, rule_id)
    db.session.commit()
    flash(f"{KINDS[kind]} {rule_id} removed ({before['description']}).")
    return redirect(url_for("windows.index"))


@bp.post("/freeze/<int:rule_id>/end")
@login_required
def end(rule_id: int) -> Any:
    rule = end_freeze(ctx(), rule_id, request.form.get("reason") or "")
    db.session.commit()
    flash(f"Freeze {rule.id} ended; deployments it held may go now.")
    return redirect(url_for("windows.index"))
