"""When an accepted bundle may start its next step: maintenance windows, freezes, overrides
and the order of the chain (docs/agent.md, "Windows and freezes").

The agent accepts a verified bundle as before (its sequence is consumed, it is journaled);
then, before **every** step, :func:`decide` says whether the step may start now or why the
bundle is held and until when:

1. an earlier accepted bundle that is held holds every later one (bundles apply in
   order);
2. a hub override in the manifest (``policy.override``) or an operator's ``agent run-now``
   (journal table ``overrides``) lets the bundle run outside its windows and in a freeze;
3. otherwise the bundle's policy (docs/bundle-format.md §6.9, :mod:`bundle.windows`) decides,
   at the agent's *policy time*: its clock, never below the time floor of its journal.

Test hook ``TIANGONG_CLOCK_FILE=<path>`` (read once at start, like ``agent.faults``): when
set, the policy time is read from that file (Unix seconds) at every decision instead of the
system clock — still never below the time floor — so end-to-end tests move a real agent's
clock for windows and freezes without sleeping. Nothing else in the agent uses it (file ages,
expiry, result times keep the real clock). A missing or unreadable file is logged once and
the system clock is used.

This module decides only; journaling the hold (state ``held``) and running steps are the
service's (``agent.service``) and the runner's (``agent.runner``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.errors import ManifestError
from bundle.windows import Policy, PolicyError

__all__ = ["CLOCK_FILE_ENV", "Decision", "Earlier", "PolicyClock", "after_held", "decide",
           "override_record", "policy_of"]

log = logging.getLogger("tiangong.agent")

CLOCK_FILE_ENV = "TIANGONG_CLOCK_FILE"
_CLOCK_FILE = os.environ.get(CLOCK_FILE_ENV) or None
_CLOCK_FILE_MAX_BYTES = 64  # bytes read from the test clock file


class PolicyClock:
    """The time windows and freezes are judged by: ``max(clock, time floor)``.

    Args:
        clock: the agent's clock (``time.time`` in production).
        floor: returns the journal's time floor now.
        clock_file: the test hook's file (default: ``$TIANGONG_CLOCK_FILE`` at start-up).
    """

    def __init__(self, clock: Callable[[], float], floor: Callable[[], int],
                 clock_file: str | None = _CLOCK_FILE) -> None:
        self._clock = clock
        self._floor = floor
        self._file = Path(clock_file) if clock_file else None
        self._complained = False

    def __call__(self) -> int:
        return max(self._read(), self._floor())

    def _read(self) -> int:
        if self._file is not None:
            try:
                with self._file.open("rb") as fh:
                    return int(fh.read(_CLOCK_FILE_MAX_BYTES).decode("ascii").strip())
            except (OSError, ValueError) as exc:
                if not self._complained:
                    log.error("%s=%s cannot be read as Unix seconds (%s); windows and "
                              "freezes use the system clock", CLOCK_FILE_ENV, self._file, exc)
                    self._complained = True
        return int(self._clock())


@dataclass(frozen=True)
class Decision:
    """Why a bundle is held: ``kind`` window | freeze | chain | clock; ``until`` the time at
    which to look again (None: not by itself — a run-now, or the bundle it waits for)."""

    kind: str
    text: str
    until: int | None = None


def policy_of(manifest: Mapping[str, Any]) -> Policy | None:
    """The policy of a manifest the agent verified and journaled (None when it has none)."""
    value = manifest.get("policy")
    if value is None:
        return None
    try:
        return Policy.from_json(value)
    except ManifestError as exc:  # verified at acceptance: only a damaged journal gets here
        raise ValueError(f"the journaled policy of bundle {manifest.get('bundle_id')} is "
                         f"invalid: {exc}") from exc


@dataclass(frozen=True)
class Earlier:
    """An earlier accepted bundle of the chain that is held."""

    bundle_id: str
    sequence: int
    what: str  # "hello 1.0"
    summary: str


def after_held(e: Earlier) -> Decision:
    """The hold of a bundle accepted after the held bundle ``e`` (bundles apply in order)."""
    return Decision("chain", f"after bundle {e.bundle_id} (sequence {e.sequence}, {e.what}), "
                    f"which is held: {e.summary}")


def decide(manifest: Mapping[str, Any], now: int, run_now: Mapping[str, Any] | None,
           earlier_held: Iterable[Earlier] = ()) -> Decision | None:
    """None when the bundle's next step may start at policy time ``now``; else why not.

    Raises:
        ValueError: the journaled policy is invalid (a damaged journal).
    """
    for e in earlier_held:
        return after_held(e)
    policy = policy_of(manifest)
    if policy is None or policy.override is not None or run_now is not None:
        return None
    try:
        hold = policy.hold(now)
    except PolicyError as exc:  # a clock (or time floor) beyond year 9997
        return Decision("clock", f"cannot judge its windows and freezes: {exc}; 'tiangong "
                        "agent run-now' runs it anyway")
    if hold is None:
        return None
    return Decision(hold.kind, hold.text, hold.until)


def override_record(manifest: Mapping[str, Any], run_now: Mapping[str, Any] | None
                    ) -> dict[str, Any] | None:
    """What the signed result says about an override of the bundle's windows and freezes:
    the hub's (``policy.override``: reason, by, second, at) or the site's ``run-now``
    (reason, the operator's OS user, at); None when neither."""
    policy = policy_of(manifest)
    out: dict[str, Any] = {}
    if policy is not None and policy.override is not None:
        out["hub"] = policy.override.to_json()
    if run_now is not None:
        out["site"] = {"reason": run_now["reason"], "by": run_now["by"],
                       "at": run_now["at"], "command": "tiangong agent run-now"}
    return out or None
