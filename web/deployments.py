"""The ``deployments`` pages: the deployments a user may view (filtered by environment and
state), and one deployment with its state timeline, its steps, the step logs of its signed
result, and the live log an online agent streams while it runs (``/<id>/logs?after=N``,
polled by ``static/live-logs.js``; the page renders the log so far without JavaScript).

Who sees what is decided by :mod:`hub.services.deployments` (``visible_deployments``,
and :func:`web.views.in_scope`: a deployment outside one's environments is a 404 like one
that does not exist) and :mod:`hub.services.logs`; marking a deployment delivered is
:func:`hub.services.deployments.transition`'s decision. "Waiting for" is
:func:`hub.services.readiness.waiting_for`; requesting and confirming a hub override (deploy
despite freezes and windows, two people) is :mod:`hub.services.windows`'s decision.
Cancelling is not offered: a deployment marked final by hand would make the hub refuse the
agent's genuine result later.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from hub.app import hub_config
from hub.db import DEPLOYMENT_STATES, Deployment, db
from hub.errors import HubError, ValidationError
from hub.services.deployments import (
    FINAL_STATES,
    TRANSITIONS,
    attempt_outcome,
    get_deployment,
    transition,
    visible_deployments,
)
from hub.services.environments import list_environments
from hub.services.logs import (
    deployment_live_lines,
    deployment_live_tail,
    result_for_deployment,
)
from hub.services.presence import agent_presence
from hub.services.readiness import waiting_for
from hub.services.users import can
from hub.services.windows import confirm_override, list_overrides, request_override
from web.stepgraph import graph_rows
from web.views import (
    ctx,
    in_scope,
    login_required,
    signed_in_user,
    status_for,
    visible_environment,
)

__all__ = ["LIST_LIMIT", "WEB_MARKS", "bp"]

LIST_LIMIT = 200  # newest deployments listed per page view
#: States an operator may set by hand from the web UI (and from which state).
WEB_MARKS = {"delivered": "Mark delivered (the media reached the site)"}

bp = Blueprint("deployments", __name__, url_prefix="/deployments")


@bp.app_template_filter("dep_unix")
def dep_unix(value: int | None) -> str:
    """Unix seconds (an agent's step times) as UTC text."""
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("dep_utc")
def dep_utc(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _filters() -> tuple[str | None, str | None]:
    """The list's filters from the query string.

    Raises:
        ValidationError: a state that does not exist.
    """
    env = (request.args.get("environment") or "").strip() or None
    state = (request.args.get("state") or "").strip() or None
    if state is not None and state not in DEPLOYMENT_STATES:
        raise ValidationError(
            f"state {state[:40]!r} does not exist; states are {', '.join(DEPLOYMENT_STATES)}"
        )
    return env, state


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    user = signed_in_user()
    envs = [e for e in list_environments(sc.session) if can(user, "view", e)]
    env, state = _filters()
    if env is not None:
        visible_environment(env)
    deployments = visible_deployments(sc, env, state, limit=LIST_LIMIT + 1)
    return render_template(
        "deployments/index.html",
        deployments=deployments[:LIST_LIMIT],
        cut=len(deployments) > LIST_LIMIT,
        limit=LIST_LIMIT,
        environments=envs,
        states=DEPLOYMENT_STATES,
        environment=env or "",
        state=state or "",
    )


def _timeline(dep: Deployment) -> list[tuple[str, datetime | None, str]]:
    """(label, time, note) of each state timestamp the deployment has."""
    finished = dep.state if dep.state in FINAL_STATES else "finished"
    return [
        ("queued", dep.queued_at, f"by {dep.queued_by}" if dep.queued_by else ""),
        ("exported", dep.exported_at, f"bundle {dep.bundle_id}" if dep.bundle_id else ""),
        ("delivered", dep.delivered_at, ""),
        ("running", dep.started_at, ""),
        (finished, dep.finished_at, ""),
    ]


def _deployment(deployment_id: int) -> Deployment:
    """The deployment, if the user may view its environment (else a 404 like a missing one).

    Raises:
        NotFoundError.
    """
    sc = ctx()
    return in_scope(f"deployment {deployment_id} does not exist",
                    lambda: get_deployment(sc.session, deployment_id),
                    lambda d: can(sc.actor, "view", d.environment))


def _step_states(result: Any, summary_steps: list[Any]) -> dict[int, str]:
    """Step number → state, from the verified result (else the summary kept at import)."""
    if result is not None and not result.problem:
        return {s.index: s.status for s in result.steps}
    return {s["index"]: str(s.get("status")) for s in summary_steps
            if isinstance(s, dict) and isinstance(s.get("index"), int)}


@bp.get("/<int:deployment_id>")
@login_required
def show(deployment_id: int) -> Any:
    sc = ctx()
    dep = _deployment(deployment_id)
    data_dir = hub_config().data_dir
    result = result_for_deployment(sc, dep, data_dir)
    live = deployment_live_tail(sc, dep, data_dir)
    finished = dep.state in FINAL_STATES
    summary_steps = (dep.result_summary or {}).get("steps") or []
    presence = agent_presence(dep.agent, sc.now()).state if dep.agent else None
    # Nothing was streamed and the agent is not online: the bundle travels on media (file
    # drop) or waits. Instead of an empty live panel, a sentence says what happens next;
    # the panel stays in the page, hidden, and live-logs.js shows it when lines arrive.
    waiting = not finished and live is None and presence != "online"
    marks = [
        (state, label) for state, label in WEB_MARKS.items()
        if state in TRANSITIONS.get(dep.state, frozenset())
    ]
    may_queue = can(signed_in_user(), "deployment.queue", dep.environment)
    overrides = list_overrides(sc.session, dep)
    return render_template(
        "deployments/show.html",
        dep=dep,
        waiting_for=waiting_for(sc.session, dep, sc.now()),
        overrides=overrides,
        may_request_override=may_queue and dep.state == "queued" and not any(
            o.state in ("requested", "confirmed") for o in overrides),
        may_confirm_override=may_queue and dep.state == "queued" and any(
            o.state == "requested" and o.requested_by != sc.actor_name for o in overrides),
        finished=finished,
        timeline=_timeline(dep),
        result=result,
        summary_steps=summary_steps,
        graph=graph_rows(dep.release.steps or [], _step_states(result, summary_steps)),
        live=live,
        # A queued run for one agent shows the (empty) panel at once: the live server pushes
        # it when the agent is online and the page's script adds the lines as they come.
        show_live=(dep.bundle_id is not None or dep.agent is not None)
        and (not finished or live is not None),
        waiting=waiting,
        presence=presence,
        marks=marks if can(signed_in_user(), "deployment.update", dep.environment) else [],
        outcome=attempt_outcome,
    )


@bp.post("/<int:deployment_id>/override")
@login_required
def override(deployment_id: int) -> Any:
    """Ask to deploy despite freezes and windows (a second person confirms)."""
    dep = _deployment(deployment_id)
    request_override(ctx(), dep, request.form.get("reason") or "")
    db.session.commit()
    flash(f"Override of deployment {deployment_id} requested; a second person must confirm "
          "it.", "info")
    return redirect(url_for("deployments.show", deployment_id=deployment_id))


@bp.post("/<int:deployment_id>/confirm-override")
@login_required
def confirm(deployment_id: int) -> Any:
    """Confirm another person's override request."""
    dep = _deployment(deployment_id)
    row = confirm_override(ctx(), dep)
    db.session.commit()
    flash(f"Override of deployment {deployment_id} confirmed (requested by "
          f"{row.requested_by}).", "info")
    return redirect(url_for("deployments.show", deployment_id=deployment_id))


@bp.get("/<int:deployment_id>/logs")
@login_required
def logs(deployment_id: int) -> Any:
    """Live log lines after ``after`` (a LOG ``seq``; -1 for all) as JSON."""
    try:
        after = int(request.args.get("after", "-1"))
    except ValueError:
        return jsonify({"error": "after must be a whole number (a log line's seq)"}), 400
    sc = ctx()
    try:
        dep = _deployment(deployment_id)
        chunk = deployment_live_lines(sc, dep, hub_config().data_dir, max(after, -1))
    except HubError as exc:
        db.session.rollback()
        return jsonify({"error": str(exc)}), status_for(exc)
    return jsonify({
        "deployment": dep.id,
        "state": dep.state,
        "finished": dep.state in FINAL_STATES,
        "last_seq": chunk.last_seq,
        "more": chunk.more,
        "lines": [line.to_json() for line in chunk.lines],
    })


@bp.post("/<int:deployment_id>/mark")
@login_required
def mark(deployment_id: int) -> Any:
    state = (request.form.get("state") or "").strip()
    if state not in WEB_MARKS:
        raise ValidationError(
            f"the web UI marks deployments only {', '.join(WEB_MARKS)}, not {state[:40]!r}"
        )
    sc = ctx()
    dep = _deployment(deployment_id)
    transition(sc, dep, state)
    db.session.commit()
    flash(f"Deployment {deployment_id} marked {state}.", "info")
    return redirect(url_for("deployments.show", deployment_id=deployment_id))
