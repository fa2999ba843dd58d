"""Ad-hoc runs (issue 16 §1): one SQL or shell file for one agent, through the same trust
path as any release.

:func:`create_adhoc_release` builds a one-off release of product ``adhoc`` (version generated,
one step running the file) with :func:`~hub.services.releases.create_release` and submits
it — audited like any release (``release.create``, ``release.submit``). :func:`ship_adhoc`
then applies the environment's ad-hoc policy (:mod:`hub.services.adhoc_policy`: its
approval rule unless an admin set another number for ad-hoc runs),
queues a deployment for that one agent (:func:`~hub.services.deployments.queue_deployment`)
and exports it (:func:`~hub.services.export.export_environment`). There is no second path:
every rule of those services applies (roles, four eyes, preflight, sequence chain).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from hub.db import Deployment, Release
from hub.errors import InvalidStateError, NotEnoughApprovalsError, NotFoundError, ValidationError
from hub.services import audit
from hub.services.adhoc_policy import ADHOC_PRODUCT, adhoc_rule, describe_policy
from hub.services.agents import get_agent
from hub.services.approval_rules import check_rule
from hub.services.context import ServiceContext
from hub.services.deployments import queue_deployment
from hub.services.export import DEFAULT_EXPIRY, ExportReport, export_environment
from hub.services.generated import create_generated_release
from hub.services.releases import create_product, get_product, submit_release

__all__ = [
    "ADHOC_KINDS",
    "ADHOC_PRODUCT",
    "FILE_FIELD",
    "AdhocRun",
    "Shipped",
    "adhoc_step",
    "create_adhoc_release",
    "ship_adhoc",
]

#: The largest script an ad-hoc run takes (a run is one file, not a release tree).
MAX_SCRIPT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Shipped:
    """What :func:`ship_adhoc` did: the deployment it queued, the export (None: queued for
    the live server's push)."""

    deployment: Deployment
    report: ExportReport | None


@dataclass(frozen=True)
class AdhocRun:
    release: Release
    environment: str
    agent_id: str


def _version(ctx: ServiceContext) -> str:
    return f"{ctx.now():%Y%m%d.%H%M%S}-{secrets.token_hex(3)}"


#: the release file name of a run's file by step kind, and the step field that names it
FILE_FIELD = {"sql": "script", "shell": "script", "k8s": "manifests", "http": "body"}
_SUFFIXES = {".sql", ".sh", ".py", ".yaml", ".yml", ".json", ".xml", ".txt"}


def run_file_name(name: str) -> str:
    """The release file name of a run's file ``name``: ``run`` and its known suffix."""
    suffix = Path(name).suffix
    return "run" + (suffix if suffix in _SUFFIXES else "")


#: the options of each kind of run beyond ``timeout`` (``tiangong run KIND --help``)
ADHOC_KINDS: dict[str, tuple[str, ...]] = {
    "sql": ("connection", "engine"),
    "shell": ("interpreter",),
    "k8s": ("connection", "namespace", "wait"),
    "http": ("url", "method", "headers", "expect", "connection", "retries"),
}
_REQUIRED = {"sql": ("connection",), "k8s": ("connection",), "http": ("url",)}


def adhoc_step(kind: str, file_name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The one step of a ``kind`` run of the file ``file_name`` (None: an http run without
    a body) with ``options`` — what ``tiangong run KIND`` and the API's ``POST /runs`` take:
    sql ``connection``, ``engine`` (postgres); shell ``interpreter`` (sh); k8s
    ``connection``, ``namespace``, ``wait``; http ``url``, ``method`` (GET), ``headers``,
    ``expect``, ``connection``, ``retries``; all ``timeout`` (10m). The release format
    checks the values when the release is created.

    Raises:
        ValidationError: an unknown kind, an option the kind does not take, a missing one.
    """
    if kind not in ADHOC_KINDS:
        raise ValidationError(f"an ad-hoc run is {', '.join(ADHOC_KINDS)}, not {kind!r}")
    given = {k: v for k, v in options.items() if v not in (None, False, "", [], {})}
    allowed = (*ADHOC_KINDS[kind], "timeout")
    extra = sorted(set(given) - set(allowed))
    if extra:
        raise ValidationError(f"a {kind} run does not take {', '.join(extra)} (it takes "
                              f"{', '.join(allowed)})")
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in given]
    if missing:
        raise ValidationError(f"a {kind} run needs {', '.join(missing)}")
    if kind != "http" and not file_name:
        raise ValidationError(f"an ad-hoc {kind} run needs a file")
    step: dict[str, Any] = {"kind": kind, "timeout": given.pop("timeout", "10m")}
    if kind == "sql":
        step.update(name=f"run {file_name}", engine=given.pop("engine", "postgres"))
    elif kind == "shell":
        step.update(name=f"run {file_name}", interpreter=given.pop("interpreter", "sh"))
    elif kind == "k8s":
        step["name"] = f"apply {file_name}"
    else:
        step["method"] = given.pop("method", "GET")
        step["name"] = f"{step['method']} {given['url']}"[:200]
    return {**step, **given}


def _check_file(script: Path) -> None:
    try:
        size = script.stat().st_size
    except OSError as exc:
        raise ValidationError(f"--file {script}: {exc.strerror}") from exc
    if not script.is_file() or size > MAX_SCRIPT_BYTES:
        raise ValidationError(f"--file {script}: must be a regular file of at most "
                              f"{MAX_SCRIPT_BYTES} bytes (it is {size})")


def create_adhoc_release(ctx: ServiceContext, agent_id: str, step: dict[str, Any],
                         script: Path | None, *, origin: str | None = None,
                         reason: str = "") -> AdhocRun:
    """Create and submit the one-off release running ``step`` on agent ``agent_id``, with
    ``script`` as its file: a sql or shell step's ``script``, a k8s step's one manifest, an
    http step's ``body`` (optional: None sends none). ``origin`` (a template, say) is named
    in the description, and the operator's ``reason`` (at most 1000 characters).

    Raises:
        NotFoundError (agent), ValidationError (the file, the step), PermissionDeniedError,
        and what ``create_release`` and ``submit_release`` raise.
    """
    agent = get_agent(ctx.session, agent_id)
    if agent.status != "enrolled":
        raise ValidationError(f"agent {agent_id} is {agent.status}; an ad-hoc run needs an "
                              "enrolled agent")
    kind = str(step.get("kind"))
    field = FILE_FIELD.get(kind)
    if field is None:
        raise ValidationError(f"an ad-hoc run is sql, shell, k8s or http, not {kind!r}")
    if script is None and kind != "http":
        raise ValidationError(f"an ad-hoc {kind} run needs a file")
    files: dict[str, Path] = {}
    step = dict(step)
    if script is not None:
        _check_file(script)
        name = run_file_name(script.name)
        step[field] = [name] if field == "manifests" else name
        files[name] = script
    try:
        get_product(ctx.session, ADHOC_PRODUCT)
    except NotFoundError:
        create_product(ctx, ADHOC_PRODUCT, description="one-off runs (tiangong run)")
    version = _version(ctx)
    env_name = agent.environment.name
    what = script.name if script is not None else str(step.get("url", ""))[:200]
    description = (f"ad-hoc {kind} run of {what} on agent {agent_id} "
                   f"({env_name}) by {ctx.actor_name}" + (f" from {origin}" if origin else "")
                   + (f": {reason.strip()[:1000]}" if reason.strip() else ""))
    source = f"ad-hoc run of {script}" if script is not None else f"ad-hoc {kind} run"
    release = create_generated_release(ctx, ADHOC_PRODUCT, version, description, [step],
                                       files, source=source)
    submit_release(ctx, release)
    return AdhocRun(release, env_name, agent_id)


def waiting_message(release: Release, missing: int) -> str:
    return (f"waiting for {missing} approval{'s' if missing != 1 else ''}: "
            f"`tiangong hub releases approve {release.product.name} {release.version}`")


def ship_adhoc(ctx: ServiceContext, release: Release, agent_id: str, out_dir: Path | None, *,
               expires_in: timedelta = DEFAULT_EXPIRY) -> Shipped:
    """Queue ``release`` (product ``adhoc``) for agent ``agent_id`` alone and export it into
    ``out_dir``; with ``out_dir`` None, only queue it (an online agent gets it from the live
    server's push loop; ``tiangong run --follow``).

    The rule is the environment's ad-hoc policy (:func:`hub.services.adhoc_policy.
    adhoc_rule`). A submitted release that meets it without approvals (a policy of 0) is
    marked approved by the policy (``release.policy_approve``, audited) — the environment's
    own rule still applies to any other queue of it. Refuses before anything is queued or a
    sequence used when the rule is not met: ``NotEnoughApprovalsError`` saying how many
    approvals are missing and the command that gives one. The export carries, in sequence
    order, whatever else is already queued for that agent (one chain per agent).

    Raises:
        ValidationError (not an ad-hoc release), InvalidStateError (rejected, draft),
        NotEnoughApprovalsError, and what queue_deployment and the export raise.
    """
    if release.product.name != ADHOC_PRODUCT:
        raise ValidationError(f"release {release.label} is not an ad-hoc run (product "
                              f"{ADHOC_PRODUCT}); queue it with `tiangong hub deployments queue`")
    agent = get_agent(ctx.session, agent_id)
    env = agent.environment
    rule = adhoc_rule(env)
    check = check_rule(release, env, now=ctx.now(), rule=rule, inherited=False)
    if release.state not in ("submitted", "approved"):
        raise InvalidStateError(f"release {release.label} is {release.state}; only a "
                                "submitted or approved ad-hoc run can be shipped")
    if not check.met:
        missing = max(check.rule.required - check.found, 1)
        raise NotEnoughApprovalsError(
            f"release {release.label} not shipped: environment {env.name} requires "
            f"{check.rule.describe()}, it has {check.found}; "
            + waiting_message(release, missing))
    if release.state == "submitted":
        release.state = "approved"
        release.decided_at = ctx.now()
        ctx.session.flush()
        audit.record(ctx, "release.policy_approve", "release", release.label,
                     {"environment": env.name, "agent": agent_id,
                      "policy": describe_policy(env), "content_hash": release.content_hash})
    [dep] = queue_deployment(ctx, release, env.name, agent_id=agent_id, rule=rule)
    if out_dir is None:
        return Shipped(dep, None)
    return Shipped(dep, export_environment(ctx, env.name, out_dir, agent_id=agent_id,
                                           expires_in=expires_in))
