"""Following a run (``tiangong run … --follow``, issue 16 §1): what happened to one
deployment since a cursor — the live lines its agent streamed (:mod:`hub.services.logs`),
its state, whether the agent is online, and the verified result once it is final.

:func:`poll_run` reads; it never writes and never waits. The caller polls it (the CLI every
:data:`POLL_SECONDS`, a page with its own timer) with the cursor of the previous answer and
stops when :attr:`RunProgress.done`. Nothing here delivers the bundle: the live server's
push loop does (docs/live-protocol.md), or media (``--out``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.db import Deployment
from hub.errors import NotFoundError
from hub.services.context import ServiceContext
from hub.services.deployments import FINAL_STATES
from hub.services.logs import LiveLine, ResultLogs, deployment_live_lines, result_for_deployment
from hub.services.presence import agent_presence

__all__ = ["POLL_SECONDS", "RunProgress", "poll_run", "result_json"]

POLL_SECONDS = 0.5  # seconds between two polls of a follower


@dataclass(frozen=True)
class RunProgress:
    """One poll's answer; ``last_seq`` is the cursor for the next poll."""

    deployment_id: int
    state: str
    lines: tuple[LiveLine, ...]
    last_seq: int
    agent_online: bool
    done: bool
    result: ResultLogs | None = None  # once done, when a result was imported


def poll_run(ctx: ServiceContext, deployment_id: int, data_dir: Path,
             after: int = -1) -> RunProgress:
    """The lines after ``after`` and the state of deployment ``deployment_id``.

    Raises:
        NotFoundError, PermissionDeniedError (the actor may not view its environment).
    """
    dep = ctx.session.get(Deployment, deployment_id)
    if dep is None:
        raise NotFoundError(f"deployment {deployment_id} not found")
    chunk = deployment_live_lines(ctx, dep, data_dir, after)
    online = dep.agent is not None and agent_presence(dep.agent, ctx.now()).online
    # Done only once the lines are drained: a final state with lines still unread waits.
    done = dep.state in FINAL_STATES and not chunk.more
    result = result_for_deployment(ctx, dep, data_dir) if done else None
    return RunProgress(dep.id, dep.state, chunk.lines, chunk.last_seq, online, done, result)


def result_json(result: ResultLogs | None) -> dict[str, Any] | None:
    """A followed run's verified result as ``tiangong run --follow --json`` and the API's
    ``RunProgress`` give it: status, summary, each step, and the problem (a stored result
    that no longer verifies)."""
    if result is None:
        return None
    return {"status": result.status, "summary": result.summary, "problem": result.problem,
            "steps": [{"step": s.index, "name": s.name, "status": s.status,
                       "summary": s.summary, "exit_code": s.exit_code}
                      for s in result.steps]}
