"""Ad-hoc runs (issue 16 §1): one SQL or shell file for one agent, through the same trust
path as any release.

:func:`create_adhoc_release` builds a one-off release of product ``adhoc`` (version generated,
one step running the file) with :func:`~hub.services.releases.create_release` and submits
it — audited like any release (``release.create``, ``release.submit``). :func:`ship_adhoc`
then applies the environment's approval rule (:func:`~hub.services.approval_rules.check_rule`),
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

from hub.db import Release
from hub.errors import NotEnoughApprovalsError, NotFoundError, ValidationError
from hub.services.agents import get_agent
from hub.services.approval_rules import check_rule
from hub.services.context import ServiceContext
from hub.services.deployments import queue_deployment
from hub.services.export import DEFAULT_EXPIRY, ExportReport, export_environment
from hub.services.generated import create_generated_release
from hub.services.releases import create_product, get_product, submit_release

__all__ = ["ADHOC_PRODUCT", "AdhocRun", "create_adhoc_release", "ship_adhoc"]

ADHOC_PRODUCT = "adhoc"
#: The largest script an ad-hoc run takes (a run is one file, not a release tree).
MAX_SCRIPT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class AdhocRun:
    release: Release
    environment: str
    agent_id: str


def _version(ctx: ServiceContext) -> str:
    return f"{ctx.now():%Y%m%d.%H%M%S}-{secrets.token_hex(3)}"


def create_adhoc_release(ctx: ServiceContext, agent_id: str, step: dict[str, Any],
                         script: Path) -> AdhocRun:
    """Create and submit the one-off release running ``script`` as ``step`` (its ``script``
    field is set here) on agent ``agent_id``.

    Raises:
        NotFoundError (agent), ValidationError (the file), PermissionDeniedError, and what
        ``create_release`` and ``submit_release`` raise.
    """
    agent = get_agent(ctx.session, agent_id)
    if agent.status != "enrolled":
        raise ValidationError(f"agent {agent_id} is {agent.status}; an ad-hoc run needs an "
                              "enrolled agent")
    try:
        size = script.stat().st_size
    except OSError as exc:
        raise ValidationError(f"--file {script}: {exc.strerror}") from exc
    if not script.is_file() or size > MAX_SCRIPT_BYTES:
        raise ValidationError(f"--file {script}: must be a regular file of at most "
                              f"{MAX_SCRIPT_BYTES} bytes (it is {size})")
    try:
        get_product(ctx.session, ADHOC_PRODUCT)
    except NotFoundError:
        create_product(ctx, ADHOC_PRODUCT, description="one-off runs (tiangong run)")
    version = _version(ctx)
    name = "run" + (script.suffix if script.suffix in {".sql", ".sh", ".py"} else "")
    env_name = agent.environment.name
    description = (f"ad-hoc {step['kind']} run of {script.name} on agent {agent_id} "
                   f"({env_name}) by {ctx.actor_name}")
    release = create_generated_release(
        ctx, ADHOC_PRODUCT, version, description, [{**step, "script": name}],
        {name: script}, source=f"ad-hoc run of {script}")
    submit_release(ctx, release)
    return AdhocRun(release, env_name, agent_id)


def waiting_message(release: Release, missing: int) -> str:
    return (f"waiting for {missing} approval{'s' if missing != 1 else ''}: "
            f"`tiangong hub releases approve {release.product.name} {release.version}`")


def ship_adhoc(ctx: ServiceContext, release: Release, agent_id: str, out_dir: Path, *,
               expires_in: timedelta = DEFAULT_EXPIRY) -> ExportReport:
    """Queue ``release`` for agent ``agent_id`` alone and export it into ``out_dir``.

    Refuses before anything is queued or a sequence used when the environment's approval
    rule is not met: ``NotEnoughApprovalsError`` saying how many approvals are missing and
    the command that gives one. The export carries, in sequence order, whatever else is
    already queued for that agent (one chain per agent).
    """
    agent = get_agent(ctx.session, agent_id)
    env = agent.environment
    check = check_rule(release, env, now=ctx.now())
    if not check.met or release.state != "approved":
        missing = max(check.rule.required - check.found, 1)
        raise NotEnoughApprovalsError(
            f"release {release.label} not shipped: environment {env.name} requires "
            f"{check.rule.describe()}, it has {check.found}; "
            + waiting_message(release, missing))
    queue_deployment(ctx, release, env.name, agent_id=agent_id)
    return export_environment(ctx, env.name, out_dir, agent_id=agent_id,
                              expires_in=expires_in)
