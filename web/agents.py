"""The ``agents`` pages: agents of the environments a user may view, with their status and
when they were last seen; enrollment by uploading the agent's enrollment request; the signed
enrollment response as a download; revocation with a reason.

Enrollment uses the same parser and service as ``tiangong hub agents enroll``
(:meth:`~hub.services.agents.EnrollmentRequest.from_bytes`,
:func:`~hub.services.agents.enroll_agent`), and the response is the same signed file the
CLI writes (``enrollment-response-<agent id>.json``, signed with the release key). The web
UI keeps a copy in ``<data_dir>/enrollment-responses/`` so an operator can download it
again (a lost USB stick) until the agent is revoked.

Status comes from :mod:`hub.services.presence` (the same the dashboard shows): ``online``
while the agent's live connection is open and heard within a heartbeat interval,
``offline``, ``never`` (enrolled, never seen) or ``revoked``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge

from hub.app import hub_config, hub_keys
from hub.db import Agent, db
from hub.errors import (
    ConfigError,
    HubError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services.agents import (
    MAX_REQUEST_BYTES,
    EnrollmentRequest,
    enroll_agent,
    get_agent,
    list_agents,
    revoke_agent,
)
from hub.services.environments import viewable_environments
from hub.services.presence import agent_presence
from hub.services.users import can, require
from signing.errors import SigningError
from signing.fileio import write_file_atomic
from web.views import (
    ctx,
    in_scope,
    login_required,
    signed_in_user,
    status_for,
    visible_environment,
)

__all__ = [
    "RESPONSES_DIR",
    "bp",
    "cap_request_body",
    "presence",
    "response_name",
    "response_path",
    "store_response",
    "too_large_page",
    "upload_name",
    "web_now",
]

RESPONSES_DIR = "enrollment-responses"  # under data_dir: responses kept for download
MAX_REASON_CHARS = 2000  # characters of a revocation reason
MULTIPART_OVERHEAD = 64 * 1024  # bytes of form fields and boundaries around an upload
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

bp = Blueprint("agents", __name__, url_prefix="/agents")

#: endpoint -> the largest request body it accepts (bytes), see :func:`cap_request_body`.
_BODY_CAPS: dict[str, Callable[[], int]] = {}


def cap_request_body(endpoint: str, limit: Callable[[], int]) -> None:
    """Refuse (413) a request to ``endpoint`` whose body is larger than ``limit()`` bytes,
    before anything reads it — the CSRF check reads the form first, so a blueprint's own
    ``before_request`` would come too late and an oversized upload would fill the disk."""
    _BODY_CAPS[endpoint] = limit


def _cap_body() -> None:
    limit = _BODY_CAPS.get(request.endpoint or "")
    if limit is not None:
        request.max_content_length = limit()


@bp.record_once
def _install_caps(state: BlueprintSetupState) -> None:
    # Ahead of every other before_request function of the app (the CSRF check among them).
    state.app.before_request_funcs.setdefault(None, []).insert(0, _cap_body)


cap_request_body("agents.enroll", lambda: MAX_REQUEST_BYTES + MULTIPART_OVERHEAD)


def too_large_page(message: str) -> Any:
    """The 413 answer to an upload refused by :func:`cap_request_body`."""
    return render_template("errors/error.html", status=413, title="Too large",
                           message=message), 413


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Any:
    return too_large_page(f"the upload is larger than {MAX_REQUEST_BYTES // 1024} KiB: it is "
                          "not an enrollment request (nothing was read)")


def web_now() -> datetime:
    """The web UI's clock (injected: tests move it)."""
    now: datetime = current_app.extensions["tiangong_web"].clock()
    return now


def presence(agent: Agent, now: datetime) -> str:
    """``online``, ``offline``, ``never`` or ``revoked`` (:mod:`hub.services.presence`)."""
    return agent_presence(agent, now).state


def upload_name(filename: str | None) -> str:
    """An uploaded file's name as shown to the operator and used on disk: the last path
    component, with anything but letters, digits, ``.``, ``_`` and ``-`` replaced, never
    hidden (no leading dot), at most 200 characters."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", base).lstrip(".")[:200]
    return safe or "upload"


def response_name(agent_id: str) -> str:
    """The enrollment response's file name (the one ``hub import`` writes too)."""
    return f"enrollment-response-{agent_id}.json"


def response_path(data_dir: Path, agent_id: str) -> Path:
    return data_dir / RESPONSES_DIR / response_name(agent_id)


def store_response(data_dir: Path, agent_id: str, data: bytes) -> Path:
    """Keep a signed enrollment response for download (atomically written).

    Raises:
        ConfigError: the data directory is not writable.
    """
    path = response_path(data_dir, agent_id)
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_file_atomic(path, data, mode=0o644, overwrite=True)
    except (OSError, SigningError) as exc:
        raise ConfigError(f"cannot keep the enrollment response of {agent_id}: {exc}") from exc
    return path


def _enrollable(user: Any) -> list[str]:
    sc = ctx()
    return [e.name for e in viewable_environments(sc) if can(user, "agent.enroll", e)]


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    chosen = request.args.get("environment") or None
    if chosen is not None:
        agents = list_agents(sc.session, visible_environment(chosen).name)
    else:
        visible = {e.id for e in viewable_environments(sc)}
        agents = [a for a in list_agents(sc.session) if a.environment_id in visible]
    now = web_now()
    return render_template(
        "agents/index.html",
        agents=[(a, presence(a, now)) for a in agents],
        environments=[e.name for e in viewable_environments(sc)],
        chosen=chosen,
        may_enroll=bool(_enrollable(signed_in_user())),
    )


def _enroll_page(status: int = 200, error: str = "") -> Any:
    choices = _enrollable(signed_in_user())
    if not choices:
        raise PermissionDeniedError(
            f"{signed_in_user().username} may not enroll agents in any environment: it needs "
            "the operator or admin role there"
        )
    chosen = request.values.get("environment", "")
    return render_template(
        "agents/enroll.html", environments=choices, chosen=chosen, error=error,
        max_kib=MAX_REQUEST_BYTES // 1024,
    ), status


@bp.get("/enroll")
@login_required
def enroll_form() -> Any:
    return _enroll_page()


@bp.post("/enroll")
@login_required
def enroll() -> Any:
    """Enroll from an uploaded request; a bad file answers 400/409 with the form again,
    naming the file and the reason (nothing is enrolled)."""
    upload = request.files.get("request_file")
    if upload is None or not upload.filename:
        return _enroll_page(400, "Choose the enrollment request file (enrollment-<agent>.json).")
    name = upload_name(upload.filename)
    data = upload.stream.read(MAX_REQUEST_BYTES + 1)
    sc = ctx()
    try:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValidationError(
                f"larger than {MAX_REQUEST_BYTES // 1024} KiB: not an enrollment request"
            )
        enrollment = EnrollmentRequest.from_bytes(data)
        environment = request.form.get("environment") or enrollment.environment
        if not environment:
            raise ValidationError("the request names no environment: choose one")
        visible_environment(environment)
        keys = hub_keys()
        if keys is None or keys.release_key is None:
            raise ConfigError("the release key is needed to sign the enrollment response; "
                              "it lives in <data_dir>/keys/")
        response = enroll_agent(sc, environment, enrollment)
        store_response(hub_config().data_dir, response.agent_id,
                       response.to_envelope(keys.release_key))
        db.session.commit()
    except HubError as exc:
        db.session.rollback()
        return _enroll_page(status_for(exc), f"Enrollment request {name}: {exc}")
    flash(f"Agent {response.agent_id} enrolled in {response.environment}. Download the "
          "enrollment response and carry it to the agent.")
    return redirect(url_for("agents.show", agent_id=response.agent_id))


def _agent_for(agent_id: str, action: str = "view") -> Agent:
    """The agent, if the user may view its environment (else a 404 like a missing agent),
    and then only if they may do ``action`` there (else a 403)."""
    sc = ctx()
    agent = in_scope(f"agent {agent_id[:64]!r} does not exist",
                     lambda: get_agent(sc.session, agent_id),
                     lambda a: can(sc.actor, "view", a.environment))
    if action != "view":
        require(sc.actor, action, agent.environment)
    return agent


@bp.get("/<agent_id>")
@login_required
def show(agent_id: str) -> Any:
    agent = _agent_for(agent_id)
    user = signed_in_user()
    may_enroll = can(user, "agent.enroll", agent.environment)
    has_response = response_path(hub_config().data_dir, agent.agent_id).is_file()
    return render_template(
        "agents/show.html",
        agent=agent,
        state=presence(agent, web_now()),
        may_revoke=agent.status != "revoked" and can(user, "agent.revoke", agent.environment),
        response_ready=may_enroll and has_response and agent.status != "revoked",
        may_run=agent.status == "enrolled" and can(user, "release.create")
        and can(user, "deployment.queue", agent.environment),
    )


@bp.get("/<agent_id>/enrollment-response")
@login_required
def enrollment_response(agent_id: str) -> Any:
    """The signed enrollment response, as the attachment ``enrollment-response-<id>.json``."""
    agent = _agent_for(agent_id, "agent.enroll")
    if agent.status == "revoked":
        raise InvalidStateError(
            f"agent {agent_id} is revoked: its enrollment response is no longer offered"
        )
    path = response_path(hub_config().data_dir, agent.agent_id)
    if not path.is_file():
        raise NotFoundError(
            f"no enrollment response of agent {agent_id} is kept here: it was enrolled "
            "outside the web UI, where its response was written"
        )
    # Read whole (a few KiB) so no file handle outlives the request.
    return send_file(io.BytesIO(path.read_bytes()), mimetype="application/json", as_attachment=True,
                     download_name=response_name(agent.agent_id), max_age=0)


@bp.get("/<agent_id>/revoke")
@login_required
def revoke_form(agent_id: str) -> Any:
    agent = _agent_for(agent_id, "agent.revoke")
    return render_template("agents/revoke.html", agent=agent, max_reason=MAX_REASON_CHARS)


@bp.post("/<agent_id>/revoke")
@login_required
def revoke(agent_id: str) -> Any:
    agent = _agent_for(agent_id, "agent.revoke")
    reason = request.form.get("reason", "").strip()
    if not reason:
        raise ValidationError(f"revoking agent {agent.agent_id} needs a reason (it is audited)")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is longer than {MAX_REASON_CHARS} characters")
    revoke_agent(ctx(), agent.agent_id, reason=reason)
    db.session.commit()
    flash(f"Agent {agent.agent_id} revoked: no bundle is addressed to it again and its results "
          "are refused.")
    return redirect(url_for("agents.show", agent_id=agent.agent_id))
