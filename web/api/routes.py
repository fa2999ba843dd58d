"""The API's operations: releases (upload, submit, approve, reject, list, show),
deployments (queue, list, show), environments, agents, the caller, and the OpenAPI
document. Each view reads its input, calls the same service functions as the web UI
(:mod:`web.releases`, :mod:`web.deployments`) and shapes the answer; the services decide.

A signed approval (issue 13 §2: an envelope made by ``tiangong keys approve``) is posted as
the request body itself, so the hub stores exactly the bytes the approver signed
(:func:`hub.services.approvals.approve_with_signature` checks it against the keys registered
to the caller). A deployment carries its "waiting for" reasons
(:func:`hub.services.readiness.waiting_for`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, g, request

from hub.db import DEPLOYMENT_STATES, Agent, Deployment, Environment, Release
from hub.services.approvals import (
    approve_release,
    approve_with_signature,
    reject_release,
    visible_approvals,
)
from hub.services.deployments import get_deployment, queue_deployment, visible_deployments
from hub.services.environments import viewable_environments
from hub.services.presence import agent_presence
from hub.services.readiness import waiting_for
from hub.services.releases import can_read, get_release, list_releases, submit_release
from hub.services.users import can
from signing.approvals import MAX_APPROVAL_BYTES
from web.api import ApiError, Param, api_ctx, operation
from web.releases import UploadRefusedError, create_from_upload
from web.views import in_scope

__all__: list[str] = []

LIST_LIMIT = 500  # newest deployments one list call returns
_PRODUCT = Param("product", "path", "Product name, e.g. `billing`.")
_VERSION = Param("version", "path", "Release version, e.g. `1.4.0`.")


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def release_json(rel: Release, full: bool = True) -> dict[str, Any]:
    """A release as the schema ``Release`` describes it."""
    out: dict[str, Any] = {
        "product": rel.product.name, "version": rel.version, "state": rel.state,
        "author": rel.author.username, "content_hash": rel.content_hash,
        "created_at": _time(rel.created_at), "submitted_at": _time(rel.submitted_at),
        "decided_at": _time(rel.decided_at),
    }  # fmt: skip
    if full:
        out.update(
            description=rel.description,
            steps=[str(s.get("name", "")) for s in rel.steps],
            files=[{"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
                   for f in rel.files],
            approvals=[{"by": a.approver.username, "decision": a.decision,
                        "environment": a.environment.name if a.environment else None,
                        "comment": a.comment, "at": _time(a.at), "signed_by": a.key_id,
                        "expires_at": _time(a.expires_at)}
                       for a in visible_approvals(g.api_user, rel)],
        )
    return out


def deployment_json(dep: Deployment) -> dict[str, Any]:
    """A deployment as the schema ``Deployment`` describes it."""
    return {
        "id": dep.id, "product": dep.release.product.name, "version": dep.release.version,
        "environment": dep.environment.name,
        "agent": dep.agent.agent_id if dep.agent is not None else None,
        "state": dep.state, "sequence": dep.sequence, "bundle_id": dep.bundle_id,
        "queued_by": dep.queued_by, "queued_at": _time(dep.queued_at),
        "exported_at": _time(dep.exported_at), "finished_at": _time(dep.finished_at),
        "updated_at": _time(dep.updated_at),
        "waiting_for": [r.to_json() for r in waiting_for(
            api_ctx().session, dep, current_app.extensions["tiangong_web"].clock())],
    }  # fmt: skip


def _environment_json(env: Environment) -> dict[str, Any]:
    return {"name": env.name, "description": env.description,
            "required_approvals": env.required_approvals,
            "preflight_within_h": env.preflight_within_h}


def _agent_json(agent: Agent, now: datetime) -> dict[str, Any]:
    presence = agent_presence(agent, now)
    return {"agent_id": agent.agent_id, "environment": agent.environment.name,
            "status": agent.status, "presence": presence.state, "hostname": agent.hostname,
            "label": agent.label, "enrolled_at": _time(agent.enrolled_at),
            "last_seen": _time(agent.last_seen)}


def _release(product: str, version: str) -> Release:
    """The release, if the caller may read releases (else the same 404 as a missing one)."""
    sc = api_ctx()
    return in_scope(f"release {product[:64]} {version[:64]} does not exist",
                    lambda: get_release(sc.session, product, version),
                    lambda _r: can_read(sc.actor))


def _body(allowed: dict[str, type]) -> dict[str, Any]:
    """The JSON object body, with only ``allowed`` fields of the given types.

    Raises:
        ApiError: 400 naming the field and the rule.
    """
    if not request.content_length and not request.data:
        return {}
    doc = request.get_json(silent=True)
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    for key, value in doc.items():
        if key not in allowed:
            raise ApiError(400, "bad_request",
                           f"unknown field {key[:64]!r}; allowed: {', '.join(sorted(allowed))}")
        if value is not None and not isinstance(value, allowed[key]):
            raise ApiError(400, "bad_request",
                           f"field {key!r} must be a {allowed[key].__name__}")
    return doc


# --- the document and the caller -------------------------------------------------------


@operation("/openapi.json", "GET", scope=None, summary="This API's OpenAPI 3.1 document",
           responses={200: "OpenApiDocument"})
def openapi_document() -> Any:
    """The document describing every operation (no token needed)."""
    from flask import jsonify

    from web.api.openapi import document

    return jsonify(document())


@operation("/me", "GET", scope="read", summary="Who the token belongs to",
           responses={200: "Me"})
def me() -> Any:
    """The token's owner, roles, and the token itself (never its secret)."""
    from hub.services.users import roles_of

    token, user = g.api_token, g.api_user
    return {"user": user.username, "display_name": user.display_name,
            "roles": [{"role": r, "environment": e} for r, e in roles_of(user)],
            "token": {"id": token.id, "prefix": token.prefix, "name": token.name,
                      "scopes": list(token.scopes), "expires_at": _time(token.expires_at)}}


# --- releases -------------------------------------------------------------------------


@operation("/releases", "GET", scope="read", summary="List releases",
           responses={200: "ReleaseList"},
           params=(Param("product", "query", "Only this product's releases.", required=False),),
           errors=(404,))
def releases_list() -> Any:
    """Releases, newest first per product (the caller needs any role)."""
    sc = api_ctx()
    if not can_read(sc.actor):
        return {"releases": []}
    product = request.args.get("product") or None
    rels = sorted(list_releases(sc.session, product), key=lambda r: (r.product.name, -r.id))
    return {"releases": [release_json(r, full=False) for r in rels]}


@operation("/releases", "POST", scope="releases:write",
           summary="Upload a release archive (creates a draft)",
           responses={201: "Release"}, body="multipart:archive", errors=(400, 409, 413))
def releases_upload() -> Any:
    """Create a draft release from a release archive (`.tar`, `.tar.gz`, `.tgz`, `.zip`
    holding `release.toml` and its files), sent as the multipart field `archive`. The
    hub.toml `[web]` upload caps apply (`max_upload_bytes`, `max_unpacked_*`,
    `max_unpack_ratio`); the product is created when it does not exist."""
    try:
        rel, _shown = create_from_upload(api_ctx(), request.files.get("archive"))
    except UploadRefusedError as refused:
        raise ApiError(refused.status, "bad_request" if refused.status == 400 else "conflict",
                       f"{refused.filename}: {refused.reason}") from refused
    return release_json(rel), 201


@operation("/releases/<product>/<version>", "GET", scope="read", summary="Show a release",
           responses={200: "Release"}, params=(_PRODUCT, _VERSION), errors=(404,))
def releases_show(product: str, version: str) -> Any:
    """One release with its steps, files and the approvals the caller may see."""
    return release_json(_release(product, version))


@operation("/releases/<product>/<version>/plans", "GET", scope="read",
           summary="The preflight plans of a release and every agent's answer",
           responses={200: "PlanList"}, params=(_PRODUCT, _VERSION), errors=(404,))
def releases_plans(product: str, version: str) -> Any:
    """Each plan (newest first) with each agent's outcome — passed, failed or refused (the
    agent refused the plan: expired, a replay; the reason is the summary) — as
    `tiangong hub releases plans` and the release page show them."""
    from hub.services.plans import outcomes_json

    return {"plans": outcomes_json(api_ctx().session, _release(product, version))}


@operation("/releases/<product>/<version>/submit", "POST", scope="releases:write",
           summary="Submit a draft for approval", responses={200: "Release"},
           params=(_PRODUCT, _VERSION), errors=(404, 409))
def releases_submit(product: str, version: str) -> Any:
    """Submit a draft: its content hash is fixed from now on."""
    rel = submit_release(api_ctx(), _release(product, version))
    return release_json(rel)


@operation("/releases/<product>/<version>/approve", "POST", scope="approve",
           summary="Approve a submitted release", responses={200: "Release"},
           params=(_PRODUCT, _VERSION), body="Decision", errors=(400, 404, 409))
def releases_approve(product: str, version: str) -> Any:
    """Approve (never your own release), for every environment or for one: a hub approval,
    as on the web UI (a signed one: `signed-approvals`)."""
    doc = _body({"comment": str, "environment": str})
    rel = _release(product, version)
    approve_release(api_ctx(), rel, comment=doc.get("comment") or "",
                    environment=_visible_env(doc.get("environment")))
    return release_json(rel)


@operation("/releases/<product>/<version>/signed-approvals", "POST", scope="approve",
           summary="Upload a signed approval (tiangong keys approve)",
           responses={201: "Release"}, params=(_PRODUCT, _VERSION), body="ApprovalEnvelope",
           errors=(400, 404, 409, 413))
def releases_signed_approval(product: str, version: str) -> Any:
    """The request body is the approval envelope file itself (at most 32 KiB), signed by a
    personal approver key registered to the caller; it names its own environments, comment
    and expiry. The hub stores the bytes as received and puts them in the bundles it exports
    for those environments."""
    if request.content_length is not None and request.content_length > MAX_APPROVAL_BYTES:
        raise ApiError(413, "too_large", f"an approval envelope is at most "
                       f"{MAX_APPROVAL_BYTES} bytes, not {request.content_length}")
    envelope = request.get_data(cache=False)
    if len(envelope) > MAX_APPROVAL_BYTES:
        raise ApiError(413, "too_large",
                       f"an approval envelope is at most {MAX_APPROVAL_BYTES} bytes")
    if not envelope:
        raise ApiError(400, "bad_request", "send the approval file (tiangong keys approve … "
                       "-o approval.json) as the request body")
    rel = _release(product, version)
    approve_with_signature(api_ctx(), rel, envelope)
    return release_json(rel), 201


@operation("/releases/<product>/<version>/reject", "POST", scope="approve",
           summary="Reject a submitted release (final)", responses={200: "Release"},
           params=(_PRODUCT, _VERSION), body="Decision", errors=(400, 404, 409))
def releases_reject(product: str, version: str) -> Any:
    """Reject, with a comment saying why (required)."""
    doc = _body({"comment": str, "environment": str})
    rel = _release(product, version)
    reject_release(api_ctx(), rel, comment=doc.get("comment") or "",
                   environment=_visible_env(doc.get("environment")))
    return release_json(rel)


def _visible_env(name: str | None) -> str | None:
    """``name`` if the caller may view that environment (else the 404 of a missing one)."""
    if name is None:
        return None
    sc = api_ctx()
    from hub.services.environments import get_environment

    in_scope(f"environment {name[:64]!r} does not exist",
             lambda: get_environment(sc.session, name), lambda e: can(sc.actor, "view", e))
    return name


# --- deployments ----------------------------------------------------------------------


@operation("/releases/<product>/<version>/deployments", "POST", scope="deploy",
           summary="Queue an approved release for an environment",
           responses={201: "DeploymentList"}, params=(_PRODUCT, _VERSION),
           body="QueueRequest", errors=(400, 404, 409))
def deployments_queue(product: str, version: str) -> Any:
    """One deployment per enrolled agent of the environment (or one for the environment
    when it has none yet); the environment's approvals must be met."""
    doc = _body({"environment": str})
    environment = doc.get("environment")
    if not environment:
        raise ApiError(400, "bad_request", "field 'environment' is required")
    _visible_env(environment)
    deps = queue_deployment(api_ctx(), _release(product, version), environment)
    return {"deployments": [deployment_json(d) for d in deps]}, 201


@operation("/deployments", "GET", scope="read", summary="List deployments",
           responses={200: "DeploymentList"},
           params=(Param("environment", "query", "Only this environment.", required=False),
                   Param("state", "query", "Only this state.", required=False,
                         schema={"type": "string", "enum": list(DEPLOYMENT_STATES)})),
           errors=(400, 404))
def deployments_list() -> Any:
    """Deployments in the environments the caller may view, newest first (at most 500)."""
    environment = request.args.get("environment") or None
    state = request.args.get("state") or None
    if state is not None and state not in DEPLOYMENT_STATES:
        raise ApiError(400, "bad_request",
                       f"unknown state {state[:32]!r}; states: {', '.join(DEPLOYMENT_STATES)}")
    if environment is not None:
        _visible_env(environment)
    deps = visible_deployments(api_ctx(), environment, state, limit=LIST_LIMIT)
    return {"deployments": [deployment_json(d) for d in deps]}


@operation("/deployments/<int:deployment_id>", "GET", scope="read", summary="Show a deployment",
           responses={200: "Deployment"},
           params=(Param("deployment_id", "path", "The deployment's number.",
                         schema={"type": "integer"}),), errors=(404,))
def deployments_show(deployment_id: int) -> Any:
    """One deployment (404 outside the caller's environments)."""
    sc = api_ctx()
    dep = in_scope(f"deployment {deployment_id} does not exist",
                   lambda: get_deployment(sc.session, deployment_id),
                   lambda d: can(sc.actor, "view", d.environment))
    return deployment_json(dep)


# --- environments and agents ----------------------------------------------------------


@operation("/environments", "GET", scope="read", summary="List environments",
           responses={200: "EnvironmentList"})
def environments_list() -> Any:
    """The environments the caller may view."""
    return {"environments": [_environment_json(e) for e in viewable_environments(api_ctx())]}


@operation("/agents", "GET", scope="read", summary="List agents",
           responses={200: "AgentList"},
           params=(Param("environment", "query", "Only this environment.", required=False),),
           errors=(404,))
def agents_list() -> Any:
    """The agents of the environments the caller may view, with their presence."""
    sc = api_ctx()
    environment = request.args.get("environment") or None
    if environment is not None:
        _visible_env(environment)
    from hub.services.agents import list_agents

    now = current_app.extensions["tiangong_web"].clock()
    agents = [a for a in list_agents(sc.session, environment)
              if can(sc.actor, "view", a.environment)]
    return {"agents": [_agent_json(a, now) for a in agents]}

