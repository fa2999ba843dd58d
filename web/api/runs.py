"""The API's ad-hoc runs (docs/operations.md "Ad-hoc runs", issue 16 §1): run one file on
one agent (``tiangong remote run sql|shell|k8s|http``), ship a run once approved
(``remote run ship``), and follow a deployment's live lines and result
(``remote run … --follow``).

There is no second path: :func:`hub.services.adhoc.create_adhoc_release` creates and submits
the one-off release and :func:`hub.services.adhoc.ship_adhoc` applies the environment's
ad-hoc policy and queues it for the live server's push, exactly as for ``tiangong run`` and
the web UI's Run… form; :func:`hub.services.run_follow.poll_run` answers a follower. Who may
run is decided before anything is created, as on the web form: the developer role (to create
the release) and the operator role in the agent's environment (to queue it), or an admin;
the token needs the scopes ``releases:write`` and ``deploy``.

A run the policy does not let go yet is still created and submitted (as ``tiangong run``
leaves it): the answer says ``shipped: false`` and what it waits for; the shipping attempt
ran in a savepoint that was rolled back, so nothing was queued and no sequence used. Any
other refusal rolls the whole call back: no release, nothing queued.

**Media** (``remote run … --out DIR``, the request's ``"out": true``): the run is created
and submitted in its own transaction (it stays, whatever follows), then shipped and exported
into a fresh private directory of the web Media page's exports (:func:`web.media.
export_for_download`), as ``tiangong run --out`` would write it; an answer carries the
bundles (base64) up to :data:`MAX_MEDIA_ANSWER_BYTES` and the directory is removed, else they
wait on the Media page for download and the answer names the page.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import g, request

from hub.app import hub_config
from hub.db import Agent
from hub.errors import NotEnoughApprovalsError, ValidationError
from hub.services.adhoc import (
    ADHOC_PRODUCT,
    MAX_SCRIPT_BYTES,
    Shipped,
    adhoc_step,
    create_adhoc_release,
    ship_adhoc,
)
from hub.services.agents import get_agent
from hub.services.context import ServiceContext
from hub.services.deployments import get_deployment
from hub.services.run_follow import poll_run, result_json
from hub.services.tokens import require_scope
from hub.services.users import can, require
from web.api import ApiError, Param, api_ctx, operation
from web.api.routes import _VERSION, _body, _release
from web.views import in_scope

__all__ = ["MEDIA_FIELDS", "agent_for_run", "file_of", "run_json", "ship", "ship_in_savepoint"]

MAX_REASON_CHARS = 1000  # characters of a run's reason (as the web form)
#: Most bytes of bundle files one answer carries (base64 adds a third; `tiangong remote`
#: reads answers of up to 64 MiB); more wait on the web Media page.
MAX_MEDIA_ANSWER_BYTES = 32 * 1024 * 1024  # bytes
MAX_FILE_NAME_CHARS = 200
#: the request's fields besides the kind's options (hub.services.adhoc.ADHOC_KINDS)
_FIXED: dict[str, type] = {"kind": str, "agent": str, "file_name": str,
                           "content_base64": str, "reason": str, "out": bool, "expires": str}
#: the fields that ask for media instead of the live server (``tiangong run --out``)
MEDIA_FIELDS: dict[str, type] = {"out": bool, "expires": str}
_OPTIONS: dict[str, type] = {"connection": str, "engine": str, "interpreter": str,
                             "namespace": str, "wait": bool, "url": str, "method": str,
                             "headers": dict, "expect": list, "retries": int, "timeout": str}


def agent_for_run(sc: ServiceContext, agent_id: str) -> Agent:
    """The enrolled agent ``agent_id`` if the caller may view it (else 404), after checking
    the caller may create a run and queue it there (403), before anything is created."""
    require(sc.actor, "release.create")
    agent = in_scope(f"agent {agent_id[:64]!r} does not exist",
                     lambda: get_agent(sc.session, agent_id),
                     lambda a: can(sc.actor, "view", a.environment))
    require(sc.actor, "deployment.queue", agent.environment)
    return agent


def file_of(doc: dict[str, Any], work: Path) -> Path | None:
    """The run's file written into ``work`` from ``file_name`` and ``content_base64``
    (None when neither is given).

    Raises:
        ApiError: 400 naming the field and the rule.
    """
    name, content = doc.get("file_name"), doc.get("content_base64")
    if name is None and content is None:
        return None
    if not name or content is None:
        raise ApiError(400, "bad_request", "a file is sent as 'file_name' and "
                       "'content_base64' together")
    base = Path(name).name
    if (base != name or base in (".", "..") or "\x00" in base
            or len(base) > MAX_FILE_NAME_CHARS):
        raise ApiError(400, "bad_request", f"field 'file_name' must be a plain file name of "
                       f"at most {MAX_FILE_NAME_CHARS} characters, not {name[:64]!r}")
    if len(content) > (MAX_SCRIPT_BYTES + 2) // 3 * 4 + 4:
        raise ApiError(400, "bad_request", f"file {base} is larger than {MAX_SCRIPT_BYTES} "
                       "bytes (the most an ad-hoc run takes)")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", "field 'content_base64' is not base64") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise ApiError(400, "bad_request", f"file {base} is {len(data)} bytes, more than "
                       f"{MAX_SCRIPT_BYTES} (the most an ad-hoc run takes)")
    path = work / base
    path.write_bytes(data)
    return path


def ship_in_savepoint(sc: ServiceContext, release: Any,
                      agent_id: str) -> tuple[Shipped | None, str | None]:
    """Ship ``release`` to ``agent_id`` for the live server's push; when the ad-hoc policy
    wants approvals it has not got, roll the attempt back and say what it waits for."""
    try:
        with sc.session.begin_nested():
            return ship_adhoc(sc, release, agent_id, None), None
    except NotEnoughApprovalsError as exc:
        return None, str(exc)


def _expiry(text: Any) -> timedelta:
    from signing.durations import parse_duration

    try:
        return timedelta(seconds=parse_duration(str(text or "14d")))
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"field 'expires': {exc}") from None


def ship(sc: ServiceContext, release: Any, agent_id: str,
         doc: dict[str, Any]) -> tuple[Shipped | None, str | None, dict[str, Any] | None]:
    """Ship ``release`` to ``agent_id`` as ``doc`` asks: for the live server
    (:func:`ship_in_savepoint`), or with ``"out": true`` on media (see the module doc; the
    third value is the answer's ``media``). A refusal for want of approvals is ``(None,
    why, None)``, nothing queued."""
    if not doc.get("out"):
        if doc.get("expires") is not None:
            raise ApiError(400, "bad_request", "field 'expires' is for a bundle on media "
                           "('out': true)")
        return (*ship_in_savepoint(sc, release, agent_id), None)
    from web.media import export_for_download

    expires_in = _expiry(doc.get("expires"))
    product, version = release.product.name, release.version
    environment = get_agent(sc.session, agent_id).environment.name
    sc.session.commit()  # created and submitted, whatever follows (as `tiangong run --out`)
    made: list[Shipped] = []

    def export(out: Path) -> Any:
        made.append(ship_adhoc(sc, _release(product, version), agent_id, out,
                               expires_in=expires_in))
        return made[0].report

    try:
        report, out = export_for_download(environment, sc.actor_name, export)
    except NotEnoughApprovalsError as exc:
        sc.session.rollback()
        return None, str(exc), None
    files: list[dict[str, Any]] = [
        {"name": p.name, "deployment": b.deployment_id, "sequence": b.sequence, "path": p}
        for b in report.written for p in b.paths]
    if report.index is not None:
        files.append({"name": report.index.name, "deployment": None, "sequence": None,
                      "path": report.index})
    media: dict[str, Any] = {
        "expires_in_s": int(expires_in.total_seconds()), "download": None,
        "failed": [{"deployment": d, "reason": r} for d, r in report.failed]}
    if out is not None and sum(f["path"].stat().st_size for f in files) > \
            MAX_MEDIA_ANSWER_BYTES:
        media["download"] = f"/media/exports/{out.name}"  # too large for one answer
        media["files"] = [{k: v for k, v in f.items() if k != "path"} for f in files]
    else:
        media["files"] = [{**{k: v for k, v in f.items() if k != "path"},
                           "content_base64": base64.b64encode(f["path"].read_bytes()).decode()}
                          for f in files]
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)  # delivered in this answer
    return made[0] if made else None, None, media


def run_json(release: Any, environment: str, agent_id: str, shipped: Shipped | None,
             waiting: str | None, **extra: Any) -> dict[str, Any]:
    """A run as the schema ``Run`` describes it."""
    return {"product": release.product.name, "version": release.version,
            "state": release.state, "content_hash": release.content_hash,
            "environment": environment, "agent": agent_id, "shipped": shipped is not None,
            "deployment": shipped.deployment.id if shipped is not None else None,
            "waiting_for": waiting, **extra}


def _str_map(value: Any, field: str) -> None:
    if value is not None and not (isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
        raise ApiError(400, "bad_request", f"field {field!r} must map names to strings")


@operation("/runs", "POST", scope="deploy", summary="Run one file on one agent (ad-hoc run)",
           responses={201: "Run"}, body="RunRequest", errors=(400, 404, 409))
def runs_create() -> Any:
    """Creates and submits a one-off release of product `adhoc` with one step (`kind` sql,
    shell, k8s or http, and that kind's options, as `tiangong run KIND` takes them), then
    applies the agent's environment's ad-hoc policy: when it is met the run is queued for
    that agent and the hub's live server delivers it when the agent is online
    (`shipped: true`, `deployment`); otherwise it waits, submitted (`shipped: false`,
    `waiting_for` says for what; `POST /runs/{version}/ship` once approved). The token also
    needs the scope `releases:write`; the caller the developer role and the operator role
    in the agent's environment (or admin)."""
    doc = _body({**_FIXED, **_OPTIONS})
    require_scope(g.api_token, "releases:write")
    kind, agent_id = doc.get("kind"), doc.get("agent")
    if not kind or not agent_id:
        raise ApiError(400, "bad_request", "fields 'kind' and 'agent' are required")
    reason = str(doc.get("reason") or "").strip()
    if len(reason) > MAX_REASON_CHARS:
        raise ApiError(400, "bad_request", f"field 'reason' is at most {MAX_REASON_CHARS} "
                       "characters")
    _str_map(doc.get("headers"), "headers")
    expect = doc.get("expect")
    if expect is not None and not all(isinstance(e, int | str) and not isinstance(e, bool)
                                      for e in expect):
        raise ApiError(400, "bad_request", "field 'expect' is a list of statuses (200) or "
                       "classes ('2xx')")
    sc = api_ctx()
    agent_for_run(sc, agent_id)
    with tempfile.TemporaryDirectory(prefix="tiangong-api-run-") as work:
        script = file_of(doc, Path(work))
        step = adhoc_step(kind, script.name if script else None,
                          {k: doc.get(k) for k in _OPTIONS})
        try:
            made = create_adhoc_release(sc, agent_id, step, script, reason=reason,
                                        origin="the HTTP API")
        except ValidationError as exc:
            raise ValidationError(str(exc).replace(f"{work}/", "")) from None
    shipped, waiting, media = ship(sc, made.release, agent_id, doc)
    extra = {} if media is None else {"media": media}
    return run_json(made.release, made.environment, agent_id, shipped, waiting, **extra), 201


@operation("/runs/<version>/ship", "POST", scope="deploy",
           summary="Ship an approved ad-hoc run to its agent", responses={200: "Run"},
           params=(_VERSION,), body="ShipRequest", errors=(400, 404, 409))
def runs_ship(version: str) -> Any:
    """`tiangong run ship`: queue ad-hoc release `version` for `agent` under its
    environment's ad-hoc policy (refused, 409, while approvals are missing; nothing
    queued)."""
    doc = _body({"agent": str, **MEDIA_FIELDS})
    agent_id = doc.get("agent")
    if not agent_id:
        raise ApiError(400, "bad_request", "field 'agent' is required")
    sc = api_ctx()
    agent = in_scope(f"agent {agent_id[:64]!r} does not exist",
                     lambda: get_agent(sc.session, agent_id),
                     lambda a: can(sc.actor, "view", a.environment))
    release = _release(ADHOC_PRODUCT, version)
    if not doc.get("out"):
        return run_json(release, agent.environment.name, agent_id,
                        ship_adhoc(sc, release, agent_id, None), None)
    shipped, waiting, media = ship(sc, release, agent_id, doc)
    if waiting is not None:
        raise NotEnoughApprovalsError(waiting)
    return run_json(release, agent.environment.name, agent_id, shipped, None, media=media)


@operation("/deployments/<int:deployment_id>/progress", "GET", scope="read",
           summary="Follow a deployment: live lines, state, result", responses={200:
                                                                             "RunProgress"},
           params=(Param("deployment_id", "path", "The deployment's number.",
                         schema={"type": "integer"}),
                   Param("after", "query", "The `last_seq` of the previous answer (default "
                         "-1: from the first line).", schema={"type": "integer"},
                         required=False)), errors=(400, 404))
def deployments_progress(deployment_id: int) -> Any:
    """The live lines its agent streamed after `after`, its state, whether the agent is
    online, and once it is final (`done`) the verified result. Reads only; poll it with the
    previous answer's `last_seq` until `done` (`tiangong remote run … --follow` does, every
    half second, up to its `--follow-timeout`)."""
    try:
        after = int(request.args.get("after", "-1"))
    except ValueError:
        raise ApiError(400, "bad_request", "query 'after' must be an integer") from None
    sc = api_ctx()
    in_scope(f"deployment {deployment_id} does not exist",
             lambda: get_deployment(sc.session, deployment_id),
             lambda d: can(sc.actor, "view", d.environment))
    progress = poll_run(sc, deployment_id, hub_config().data_dir, after)
    return {"deployment": progress.deployment_id, "state": progress.state,
            "done": progress.done, "agent_online": progress.agent_online,
            "last_seq": progress.last_seq, "lines": [line.to_json() for line in progress.lines],
            "result": result_json(progress.result)}

