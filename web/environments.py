"""The ``environments`` pages: the environments a user may view, each with its agents,
its latest deployments and the number of distinct approvals it requires; admins create
environments and change that number.

Every list starts from :func:`hub.services.environments.viewable_environments` and every
page from :func:`web.views.visible_environment`, so nobody sees an
environment without a grant there. Creating and changing are the service's decisions
(admin only); this module reads forms and renders.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import db
from hub.errors import ValidationError
from hub.services.adhoc_policy import describe_policy
from hub.services.agents import list_agents
from hub.services.approval_rules import rules_of
from hub.services.deployments import pending_exports
from hub.services.environments import (
    MAX_PREFLIGHT_HOURS,
    MAX_REQUIRED_APPROVALS,
    create_environment,
    describe_preflight_policy,
    latest_deployments,
    set_preflight_policy,
    set_required_approvals,
    viewable_environments,
)
from hub.services.users import can
from web.agents import presence, web_now
from web.views import ctx, login_required, signed_in_user, visible_environment

__all__ = ["DEPLOYMENTS_SHOWN", "bp"]

DEPLOYMENTS_SHOWN = 50  # newest deployments listed on an environment's page

bp = Blueprint("environments", __name__, url_prefix="/environments")


@contextlib.contextmanager
def _approvals_input(form_value: str | None) -> Iterator[int]:
    """The required-approvals form field as a number, for a service call in the block.

    Text that is not a whole number becomes 0, which the service refuses *after* its
    permission check (so a person without the right gets 403, not 400); the service's
    "not 0" is then replaced by what was typed.
    """
    text = (form_value or "").strip()
    number = int(text) if text.isdecimal() and len(text) < 6 else 0
    try:
        yield number
    except ValidationError as exc:
        if number == 0 and text != "0" and str(exc).startswith("required approvals"):
            raise ValidationError(
                f"required approvals must be a whole number from 1 to "
                f"{MAX_REQUIRED_APPROVALS}, not {text[:20]!r}"
            ) from exc
        raise


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    now = web_now()
    rows = []
    for env in viewable_environments(sc):
        agents = list_agents(sc.session, env.name)
        states = [presence(a, now) for a in agents]
        rows.append({
            "env": env,
            "agents": len(agents),
            "online": states.count("online"),
            "queued": len(pending_exports(sc.session, env.name)),
        })
    return render_template(
        "environments/index.html",
        rows=rows,
        may_create=can(signed_in_user(), "environment.create"),
        max_required=MAX_REQUIRED_APPROVALS,
        max_preflight=MAX_PREFLIGHT_HOURS,
    )


@bp.post("/")
@login_required
def create() -> Any:
    name = request.form.get("name", "").strip()
    with _approvals_input(request.form.get("required_approvals", "1")) as required:
        env = create_environment(
            ctx(), name, description=request.form.get("description", "").strip(),
            required_approvals=required,
        )
    db.session.commit()
    flash(f"Environment {env.name} created (requires {env.required_approvals} approval(s)).")
    return redirect(url_for("environments.show", name=env.name))


@bp.get("/<name>")
@login_required
def show(name: str) -> Any:
    sc = ctx()
    env = visible_environment(name)
    now = web_now()
    agents = [(a, presence(a, now)) for a in list_agents(sc.session, env.name)]
    user = signed_in_user()
    return render_template(
        "environments/show.html",
        env=env,
        agents=agents,
        deployments=latest_deployments(sc.session, env, DEPLOYMENTS_SHOWN),
        shown=DEPLOYMENTS_SHOWN,
        may_update=can(user, "environment.update", env),
        may_enroll=can(user, "agent.enroll", env),
        max_required=MAX_REQUIRED_APPROVALS,
        max_preflight=MAX_PREFLIGHT_HOURS,
        approval_rules=rules_of(sc, env.name),
        adhoc_policy=describe_policy(env),
        preflight_policy=describe_preflight_policy(env),
        may_run=can(user, "release.create") and can(user, "deployment.queue", env),
    )


@bp.post("/<name>/preflight-policy")
@login_required
def preflight_policy(name: str) -> Any:
    """Set (hours) or clear (empty) the environment's preflight policy: admins; audited by
    the service (docs/rollouts.md, "Preflight policy of an environment")."""
    visible_environment(name)
    text = (request.form.get("within_h") or "").strip()
    # Not a whole number: 0, which the service refuses after its permission check (403
    # before 400), naming what was typed.
    hours = None if not text else int(text) if text.isdecimal() and len(text) < 6 else 0
    try:
        env = set_preflight_policy(ctx(), name, hours)
    except ValidationError as exc:
        raise ValidationError(f"{exc}, not {text[:20]!r}") from exc
    db.session.commit()
    flash(f"Environment {env.name}: {describe_preflight_policy(env)}.")
    return redirect(url_for("environments.show", name=env.name))


@bp.post("/<name>/required-approvals")
@login_required
def required_approvals(name: str) -> Any:
    visible_environment(name)
    with _approvals_input(request.form.get("required_approvals")) as required:
        env = set_required_approvals(ctx(), name, required)
    db.session.commit()
    flash(f"Environment {env.name} now requires {env.required_approvals} distinct approval(s).")
    return redirect(url_for("environments.show", name=env.name))
