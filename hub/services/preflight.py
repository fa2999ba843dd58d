"""Preflight: can each target agent run a release, judged by its last known inventory?

Issue 14 §3; docs/rollouts.md, "Preflight". Agents send their inventory in every result body
(docs/agent.md, "Inventory") and in the live channel's STATE (docs/live-protocol.md §3.1);
the hub keeps the newest report per agent — by when it was made: a result's ``created``, a
STATE's arrival — with the holds that came with it (:func:`store_inventory`,
:func:`state_values`). Before a deployment is exported — before its sequence is used —
:func:`check_agent` compares the release's steps and files with it:

* every connection a step names is one the agent has, of the type the step needs
  ("agent site-7 has no connection 'billing-db' (it has: app-db, reports-db)");
* every step kind is one the agent can run;
* the agent's free disk holds the release's files twice (the bundle in the inbox and its
  staged files; :data:`DISK_FACTOR`).

A missing piece is a **problem**: the export refuses the deployment (it stays queued, no
sequence is used) unless forced. An agent that has sent no inventory yet is a **warning**.

:func:`check_inventory` is pure (no database); this module does not export, and it never
sees a connection's details or a secret: inventories carry only names and types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bundle.steps import needed_connection_type
from hub.db import Agent, Deployment

__all__ = ["DISK_FACTOR", "Finding", "check_agent", "check_deployment", "check_inventory",
           "clean_holds", "clean_inventory", "state_values", "store_inventories",
           "store_inventory"]

#: The release's files must fit this many times in the agent's free disk (bundle + staging).
DISK_FACTOR = 2
#: Most connection names / step kinds kept from one inventory.
MAX_INVENTORY_NAMES = 256  # names
MAX_INVENTORY_TEXT = 200  # characters of one string value
MAX_HOLDS = 64  # holds kept from one report
MAX_HOLD_TEXT = 500  # characters of one hold's reason


@dataclass(frozen=True)
class Finding:
    """One preflight finding. ``blocking``: a problem (refuses the export); else a warning."""

    agent_id: str
    message: str
    blocking: bool

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent_id, "message": self.message,
                "severity": "problem" if self.blocking else "warning"}


def _text(value: object) -> str | None:
    return value[:MAX_INVENTORY_TEXT] if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def clean_inventory(raw: object) -> dict[str, Any] | None:
    """The known, bounded fields of an inventory from a (verified) result body; None when
    it is not an inventory. Unknown keys are dropped."""
    if not isinstance(raw, Mapping):
        return None
    conns = raw.get("connections")
    kinds = raw.get("step_kinds")
    return {
        "agent_version": _text(raw.get("agent_version")),
        "os": _text(raw.get("os")),
        "free_disk_bytes": _int(raw.get("free_disk_bytes")),
        "cpus": _int(raw.get("cpus")),
        "memory_bytes": _int(raw.get("memory_bytes")),
        "connections": {
            str(k)[:MAX_INVENTORY_TEXT]: _text(v) or ""
            for k, v in list(conns.items())[:MAX_INVENTORY_NAMES]
        } if isinstance(conns, Mapping) else {},
        "step_kinds": [k[:MAX_INVENTORY_TEXT] for k in kinds[:MAX_INVENTORY_NAMES]
                       if isinstance(k, str)] if isinstance(kinds, list) else [],
        "time_zone": _text(raw.get("time_zone")),
        "window": _text(raw.get("window")),
    }


def clean_holds(raw: object) -> list[dict[str, Any]] | None:
    """The holds of a report (bundle id, sequence, kind, reason, until), bounded; malformed
    entries are dropped. None when the report carries no list (an older agent)."""
    if not isinstance(raw, list):
        return None
    out = []
    for h in raw[:MAX_HOLDS]:
        if not isinstance(h, Mapping) or not isinstance(h.get("bundle_id"), str):
            continue
        out.append({"bundle_id": h["bundle_id"][:128], "sequence": _int(h.get("sequence")),
                    "kind": _text(h.get("kind")) or "hold",
                    "text": h["text"][:MAX_HOLD_TEXT] if isinstance(h.get("text"), str)
                    else "", "until": _int(h.get("until"))})
    return out


def state_values(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``agents`` columns a report (a result body, a live STATE) sets: ``inventory``,
    ``holds``, ``agent_version``; None when it carries no inventory."""
    inventory = clean_inventory(report.get("inventory"))
    if inventory is None:
        return None
    return {"inventory": inventory, "holds": clean_holds(report.get("holds")),
            "agent_version": (inventory["agent_version"] or "")[:64] or None}


def store_inventory(agent: Agent, body: Mapping[str, Any], at: datetime) -> bool:
    """Keep the inventory and holds of a result body made at ``at`` as ``agent``'s last
    known ones, unless a newer report (a live STATE, say) is kept already. True if stored."""
    return store_inventories(agent, [(body, at)])


def store_inventories(agent: Agent, reports: Sequence[tuple[Mapping[str, Any], datetime]]
                      ) -> bool:
    """:func:`store_inventory` of each report in turn, with the same outcome, but the one
    that stays is the only one cleaned and written (an import stores a batch's results of
    one agent at once). True if one was stored."""
    newest: Mapping[str, Any] | None = None
    kept = agent.inventory_at
    for body, at in reports:
        if not isinstance(body.get("inventory"), Mapping):
            continue  # no inventory (state_values: None)
        if kept is not None and at < kept:
            continue
        newest, kept = body, at
    values = state_values(newest) if newest is not None else None
    if values is None:
        return False
    agent.inventory, agent.inventory_at, agent.holds = (values["inventory"], kept,
                                                        values["holds"])
    if values["agent_version"]:
        agent.agent_version = values["agent_version"]
    return True


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def check_inventory(agent_id: str, steps: Sequence[Mapping[str, Any]], payload_bytes: int,
                    inventory: Mapping[str, Any] | None) -> list[Finding]:
    """What ``agent_id`` (with ``inventory``, None: unknown) lacks to run ``steps`` whose
    files total ``payload_bytes``. Pure."""
    if inventory is None:
        return [Finding(agent_id, f"agent {agent_id} has sent no inventory yet (it comes with "
                        "every result); the hub cannot check what it has", False)]
    out: list[Finding] = []
    conns: Mapping[str, str] = inventory.get("connections") or {}
    kinds: list[str] = list(inventory.get("step_kinds") or [])
    has = ", ".join(sorted(conns)) or "none"
    seen: set[str] = set()  # step kinds reported
    seen_conns: set[str] = set()
    for idx, step in enumerate(steps, 1):
        where = f"step {idx} ({step.get('name')!r})"
        kind = str(step.get("kind"))
        if kinds and kind not in kinds and kind not in seen:
            seen.add(kind)
            out.append(Finding(agent_id, f"agent {agent_id} cannot run {kind} steps ({where}; "
                               f"it can run: {', '.join(kinds)})", True))
        name = step.get("connection")
        if not isinstance(name, str) or name in seen_conns:
            continue
        seen_conns.add(name)
        if name not in conns:
            out.append(Finding(agent_id, f"agent {agent_id} has no connection {name!r} "
                               f"(it has: {has}); {where} needs it", True))
            continue
        needed = needed_connection_type(step)
        if needed is not None and conns[name] != needed:
            out.append(Finding(agent_id, f"agent {agent_id}'s connection {name!r} is of type "
                               f"{conns[name]!r}; {where} needs {needed!r}", True))
    free = inventory.get("free_disk_bytes")
    if isinstance(free, int) and free < DISK_FACTOR * payload_bytes:
        out.append(Finding(agent_id, f"agent {agent_id} has {_mib(free)} free in its home; "
                           f"the release's files ({_mib(payload_bytes)}) need "
                           f"{_mib(DISK_FACTOR * payload_bytes)} there", True))
    return out


def check_agent(agent: Agent, steps: Sequence[Mapping[str, Any]],
                files: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """:func:`check_inventory` for a stored agent and a release's steps and file list."""
    payload = sum(int(f.get("size", 0)) for f in files)
    return check_inventory(agent.agent_id, steps, payload, agent.inventory)


def check_deployment(session: Session, dep: Deployment) -> list[Finding]:
    """Findings for every agent a deployment reaches: its agent, or every enrolled agent of
    its environment for an environment-wide deployment."""
    release = dep.release
    if dep.agent is not None:
        agents = [dep.agent]
    else:
        agents = list(session.scalars(
            select(Agent).where(Agent.environment_id == dep.environment_id,
                                Agent.status == "enrolled").order_by(Agent.agent_id)))
    out: list[Finding] = []
    for agent in agents:
        out.extend(check_agent(agent, release.steps or [], release.files or []))
    return out
