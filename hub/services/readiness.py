""""Why is this not deploying?": every reason a deployment waits, computed in one place.

:func:`waiting_for` answers for the deployment page, ``tiangong hub deployments why ID``
and ``deployments list --json`` alike. Reasons, each a :class:`Reason` with a ``kind``:

* ``approvals`` — fewer distinct approvers (never the author) than its environment
  requires: "approval 1 of 2 (alice); needs 1 more";
* ``freeze`` — a change freeze holds it: "frozen until 2027-01-05 00:00 UTC (quarter
  close)"; the hub does not export it (:mod:`hub.services.windows`);
* ``window`` — outside every maintenance window: "window opens Sat 2027-01-02 01:00
  Europe/Berlin"; exported to media early (the agent holds it), pushed live at the opening;
* ``override`` — an override was requested and waits for a second person;
* ``site`` — the agent received it and holds it (its last status said so).

A confirmed hub override lifts ``freeze`` and ``window``. Deployments that are running or
finished wait for nothing (an empty list).

This module decides nothing and changes nothing: each rule lives in its own service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from hub.db import Deployment
from hub.services.approvals import distinct_approvers
from hub.services.windows import FOREVER, Gate, gate_for, list_overrides

__all__ = ["WAITING_STATES", "Reason", "waiting_for"]

#: states in which a deployment can still be waiting for something before it runs
WAITING_STATES = frozenset({"queued", "exporting", "exported", "delivered"})


@dataclass(frozen=True)
class Reason:
    """One thing a deployment waits for: its ``kind``, the sentence people read, and when
    it ends if that is known."""

    kind: str
    text: str
    until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text,
                "until": self.until.isoformat() if self.until is not None else None}


def waiting_for(session: Session, deployment: Deployment, now: datetime) -> list[Reason]:
    """Every reason ``deployment`` waits at ``now``, most fundamental first (approvals,
    then freeze, window, override, site); empty when it waits for nothing."""
    if deployment.state not in WAITING_STATES:
        return []
    reasons = _approvals(deployment)
    gate = gate_for(session, deployment, now)
    reasons += _freeze_and_window(gate, deployment)
    pending = [o for o in list_overrides(session, deployment) if o.state == "requested"]
    if pending:
        o = pending[-1]
        reasons.append(Reason("override", f"override requested by {o.requested_by} "
                              f"({o.reason}); needs a second person to confirm it"))
    return reasons


def _approvals(dep: Deployment) -> list[Reason]:
    env = dep.environment
    approvers = sorted(distinct_approvers(dep.release, env))
    need = env.required_approvals
    if len(approvers) >= need:
        return []
    have = len(approvers)
    who = f" ({', '.join(approvers)})" if approvers else ""
    return [Reason("approvals",
                   f"approval {have} of {need}{who}; needs {need - have} more distinct "
                   f"approver(s) for {env.name}, never the author")]


def _freeze_and_window(gate: Gate, dep: Deployment) -> list[Reason]:
    out = []
    if gate.frozen:
        until = None if gate.frozen_until == FOREVER else gate.frozen_until
        out.append(Reason("freeze", f"{gate.freeze}; the hub does not export it", until))
    if gate.outside_window:
        until = None if gate.window_opens == FOREVER else gate.window_opens
        where = ("the agent holds it until then" if dep.state != "queued"
                 else "exported to media early (the agent holds it), pushed live then")
        out.append(Reason("window", f"{gate.window}; {where}", until))
    return out
