"""The ``jobs`` pages (issue 16): the job templates the hub stores, and the "Run…" form of an
agent or environment page — one file (uploaded or typed) run on one agent.

The form goes through the very services ``tiangong run`` uses:
:func:`hub.services.adhoc.create_adhoc_release` creates and submits the one-off release (its
own transaction, so a run waiting for an approval stays submitted), then
:func:`hub.services.adhoc.ship_adhoc` applies the environment's ad-hoc policy and queues it
for the live server's push; the browser lands on the deployment's page, whose live log
follows the run. Missing approvals are a flash on the release's page. Who may use it is the
services' decision (creating needs developer, queueing operator on the environment: admins,
or people holding both); this module reads the form, and every POST carries the CSRF token
(:mod:`web.csrf`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from hub.db import Agent, db
from hub.errors import NotEnoughApprovalsError, PermissionDeniedError, ValidationError
from hub.services.adhoc import (
    ADHOC_KINDS,
    MAX_SCRIPT_BYTES,
    adhoc_step,
    create_adhoc_release,
    ship_adhoc,
)
from hub.services.adhoc_policy import describe_policy
from hub.services.agents import get_agent
from hub.services.environments import get_environment
from hub.services.releases import get_release
from hub.services.templates import list_templates, specs_of
from hub.services.users import can
from web.views import ctx, login_required, signed_in_user, visible_environment

__all__ = ["KINDS", "bp"]

#: kind -> (label, the file's name when typed into the form)
KINDS = {"sql": ("SQL", "run.sql"), "shell": ("Shell script", "run.sh"),
         "k8s": ("Kubernetes manifest", "run.yaml"), "http": ("HTTP request", "body.json")}
MAX_REASON_CHARS = 1000

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


@bp.get("/")
@login_required
def index() -> Any:
    """The newest version of every job template with its parameters."""
    sc = ctx()
    rows = [(t, [p.describe() for p in specs_of(t)]) for t in list_templates(sc)]
    return render_template("jobs/index.html", templates=rows)


def _may_create() -> None:
    """403 for someone who may not create releases at all (before any name is looked up,
    so nothing about agents or environments is revealed to them)."""
    user = signed_in_user()
    if not can(user, "release.create"):
        raise PermissionDeniedError(
            f"{user.username} may not run files: a run is a release, which needs the "
            "developer role (and operator on the agent's environment to queue it)")


def _may_run(env_name: str) -> None:
    """403 unless the signed-in user may create a release and queue it in ``env_name``
    (404 for an environment they cannot see)."""
    _may_create()
    user = signed_in_user()
    env = visible_environment(env_name)
    if not can(user, "deployment.queue", env):
        raise PermissionDeniedError(
            f"{user.username} may not run files in environment {env.name}: it needs the "
            "developer role (to create the run) and the operator role there (to queue it)")


def _form(status: int = 200, error: str = "") -> Any:
    _may_create()
    sc = ctx()
    agent_id = (request.values.get("agent") or "").strip()
    env_name = (request.values.get("environment") or "").strip()
    if agent_id:
        env_name = get_agent(sc.session, agent_id).environment.name
    if not env_name:
        raise ValidationError("a run needs ?agent=ID or ?environment=NAME")
    _may_run(env_name)
    env = get_environment(sc.session, env_name)
    agents = [a.agent_id for a in sc.session.scalars(
        select(Agent).where(Agent.environment_id == env.id, Agent.status == "enrolled")
        .order_by(Agent.agent_id))]
    return render_template("jobs/run.html", environment=env.name, agents=agents,
                           chosen=agent_id, kinds=KINDS, policy=describe_policy(env),
                           error=error, form=request.form,
                           max_mib=MAX_SCRIPT_BYTES // (1024 * 1024)), status


@bp.get("/run")
@login_required
def run_form() -> Any:
    return _form()


def _options(kind: str) -> dict[str, str]:
    """The form's fields that a ``kind`` run takes (the form shows every kind's fields; a
    hidden one still posts its value), for :func:`hub.services.adhoc.adhoc_step`."""
    return {k: (request.form.get(k) or "").strip() for k in (*ADHOC_KINDS[kind], "timeout")}


@bp.post("/run")
@login_required
def run() -> Any:
    _may_create()
    f = request.form
    agent_id = (f.get("agent") or "").strip()
    kind = f.get("kind") or ""
    reason = (f.get("reason") or "").strip()
    if kind not in KINDS:
        return _form(400, f"kind must be one of {', '.join(KINDS)}")
    if not agent_id:
        return _form(400, "choose the agent that runs it")
    if not reason or len(reason) > MAX_REASON_CHARS:
        return _form(400, f"say why (1 to {MAX_REASON_CHARS} characters): it goes into the "
                          "release's description and the audit log")
    sc = ctx()
    agent = get_agent(sc.session, agent_id)
    _may_run(agent.environment.name)
    upload = request.files.get("file")
    # A browser sends a textarea's lines as CRLF: a shell would read "\r" into names.
    text = (f.get("text") or "").replace("\r\n", "\n")
    if upload is not None and upload.filename:
        data, name = upload.read(MAX_SCRIPT_BYTES + 1), Path(upload.filename).name
    elif text.strip():
        data, name = text.encode("utf-8"), KINDS[kind][1]
    elif kind == "http":
        data, name = b"", ""
    else:
        return _form(400, "upload a file or type its text")
    if len(data) > MAX_SCRIPT_BYTES:
        return _form(400, f"the file is larger than {MAX_SCRIPT_BYTES} bytes")
    with tempfile.TemporaryDirectory(prefix="tiangong-run-") as work:
        script = None
        if name:
            script = Path(work) / name
            script.write_bytes(data)
        try:
            made = create_adhoc_release(sc, agent_id,
                                        adhoc_step(kind, name or None, _options(kind)), script,
                                        reason=reason, origin="the web UI")
        except ValidationError as exc:
            db.session.rollback()
            return _form(400, str(exc).replace(work, "the form"))
    release = made.release
    product, version = release.product.name, release.version
    db.session.commit()  # created and submitted, whatever the policy says next
    sc = ctx()
    try:
        shipped = ship_adhoc(sc, get_release(sc.session, product, version), agent_id, None)
    except NotEnoughApprovalsError as exc:
        db.session.rollback()
        flash(str(exc))
        return redirect(url_for("releases.release", product=product, version=version))
    dep_id = shipped.deployment.id
    db.session.commit()
    flash(f"Run {product} {version} queued for agent {agent_id}: the live server delivers it "
          "when the agent is online.")
    return redirect(url_for("deployments.show", deployment_id=dep_id))
