"""Test hooks that make the agent die or fail at a named durable transition.

Two environment variables, read once when the process starts (this module is imported):

* ``TIANGONG_CRASH_AT=<point>[:<nth>]`` — at the ``nth`` time (default 1) the agent reaches
  crash point ``point``, it kills itself with ``SIGKILL``: no ``finally``, no flush, no
  clean-up, as far as the agent can tell a power cut. The points, in the order a bundle meets
  them, are :data:`CRASH_POINTS` (docs/agent.md, "Crash points").
* ``TIANGONG_FAULT_AT=<write point>:<ERRNO>[:<path>]`` — every write at ``write point``
  (:data:`WRITE_POINTS`) fails with ``OSError(ERRNO)`` (``ENOSPC``, ``EROFS``, ``EIO`` ...),
  as a full or read-only disk would. With ``path``, only while that path exists: a test
  removes it to make "space return" without restarting the agent.

Unset (production), each hook is one comparison with ``None``. This module deliberately
does not read the environment again after start-up, and offers no way to set either hook
from a bundle, the config or the network.
"""

from __future__ import annotations

import errno
import os

from bundle.crashhook import CrashHook

__all__ = ["CRASH_POINTS", "JOB_CRASH_POINTS", "PLAN_CRASH_POINTS", "UPGRADE_CRASH_POINTS",
           "WRITE_POINTS", "crash_point", "fault_point"]

#: Every durable transition of the agent, in the order one bundle meets them.
CRASH_POINTS: dict[str, str] = {
    "staged": "verified and staged in staging/, nothing recorded yet",
    "accepted": "acceptance and the new sequence committed to the journal, files still in "
                "the inbox",
    "archived": "the bundle's files moved from the inbox to archive/, no step started",
    "held": "a bundle held by its maintenance windows, a freeze or an earlier held bundle "
            "committed as held (with the reason) before a step, no step started",
    "override-recorded": "an operator's 'agent run-now' override committed to the journal "
                         "(the bundle still held)",
    "step-started": "a step committed as running, its executor not called yet",
    "undo-recorded": "a step's undo data (what a rollback restores) written and fsynced in "
                     "undo/, the change not made yet",
    "step-ran": "a step's executor returned (its effect is done), its outcome not recorded",
    "step-finished": "a step's outcome committed to the journal",
    "final": "the bundle's final state and its result committed to the journal (result "
             "pending), no result file yet",
    "result-built": "the signed result built in a private temporary directory in outbox/ "
                    "(.result-*), not yet renamed into place",
    "result-written": "the signed result file renamed into outbox/, the journal still says "
                      "pending",
    "result-recorded": "the journal records the result file as written",
    "rejection-recorded": "a refused file's rejection and result committed, the file still "
                          "in the inbox",
    "quarantined": "a refused file moved to quarantine/ with its reason file",
    "interrupted-recorded": "on start-up, steps that were running committed as interrupted "
                            "(with their result)",
}

#: Where the agent writes, for ``TIANGONG_FAULT_AT``.
WRITE_POINTS: dict[str, str] = {
    "journal": "a journal commit (journal.sqlite)",
    "staging": "verifying a bundle into staging/",
    "archive": "moving accepted or duplicate bundles to archive/",
    "quarantine": "moving refused files to quarantine/ and writing their reason file",
    "outbox": "writing a signed result file to outbox/",
    "logs": "writing a step's live log in logs/",
}


def _parse_fault(value: str | None) -> tuple[str, int, str | None] | None:
    if not value:
        return None
    point, _, rest = value.partition(":")
    name, _, path = rest.partition(":")
    code = getattr(errno, name, None)
    if point not in WRITE_POINTS or not isinstance(code, int):
        raise SystemExit(f"TIANGONG_FAULT_AT={value}: expected <write point>:<ERRNO>[:<path>] "
                         f"with a write point among {', '.join(WRITE_POINTS)}")
    return point, code, path or None


#: The agent-upgrade step's own durable transitions (agent/executors/upgrade.py; tested in
#: tests/e2e/test_agent_upgrade.py, not by the bundle crash-point matrix).
UPGRADE_CRASH_POINTS: dict[str, str] = {
    "upgrade-installed": "an agent-upgrade step installed the new version in versions/<V>, "
                         "nothing switched or recorded",
    "upgrade-recorded": "the switch recorded in versions/upgrade.json, versions/current not "
                        "yet switched",
}

#: Scheduled site jobs' durable transitions (agent/jobs.py; tested in tests/agent/test_jobs.py,
#: not by the bundle crash-point matrix).
JOB_CRASH_POINTS: dict[str, str] = {
    "job-started": "a scheduled job's run committed as running, its command not started",
    "job-ran": "a scheduled job's command ended, its outcome not recorded",
}

#: A plan (preflight) bundle's durable transitions (agent/plan.py; docs/agent.md, "Plan
#: bundles"; tested in tests/agent/test_plan.py).
PLAN_CRASH_POINTS: dict[str, str] = {
    "plan-accepted": "a plan verified and the plan state written, its files still in the "
                     "inbox, no check run",
    "plan-recorded": "a plan's checks run and its result recorded in the journal, the result "
                     "file not yet written",
}

_CRASH = CrashHook(os.environ.get("TIANGONG_CRASH_AT"),
                   {**CRASH_POINTS, **UPGRADE_CRASH_POINTS, **JOB_CRASH_POINTS,
                    **PLAN_CRASH_POINTS}, hub=False)
_FAULT = _parse_fault(os.environ.get("TIANGONG_FAULT_AT"))


def crash_point(point: str) -> None:
    """Mark that the agent has reached crash point ``point``; die there if asked to."""
    _CRASH.hit(point)


def fault_point(point: str) -> None:
    """About to write at ``point``: raise the injected error if one is set for it.

    Raises:
        OSError: the injected error (only under ``TIANGONG_FAULT_AT``).
    """
    if _FAULT is None or _FAULT[0] != point:
        return
    if _FAULT[2] is not None and not os.path.lexists(_FAULT[2]):
        return
    raise OSError(_FAULT[1], f"{os.strerror(_FAULT[1])} (injected at {point})")
