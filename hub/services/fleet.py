"""The fleet at a glance (``tiangong hub fleet``, the web fleet page): for each environment
its agents, the version of each product each agent runs (its newest succeeded deployment),
its presence (online through a live connection, else when it was last seen) and what is
pending for it (deployments not final yet)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db import Agent, Deployment
from hub.services.deployments import FINAL_STATES
from hub.services.environments import list_environments

__all__ = ["fleet"]


def fleet(session: Session, now: datetime, environments: set[str] | None = None
          ) -> list[dict[str, Any]]:
    """One entry per environment (those in ``environments``, or all): ``{"environment",
    "agents": [{"agent", "labels", "online", "last_seen", "runs": {product: version},
    "pending": [{"deployment", "release", "state"}]}]}``. Two queries whatever the size."""
    agents = list(session.scalars(select(Agent).where(Agent.status == "enrolled")
                                  .order_by(Agent.agent_id)))
    runs: dict[int, dict[str, tuple[datetime, str]]] = {}
    pending: dict[int, list[dict[str, Any]]] = {}
    for dep in session.scalars(select(Deployment).where(Deployment.agent_id.is_not(None))
                               .order_by(Deployment.id)):
        assert dep.agent_id is not None
        if dep.state == "succeeded":
            when = dep.finished_at or dep.updated_at
            product = dep.release.product.name
            seen = runs.setdefault(dep.agent_id, {}).get(product)
            if seen is None or seen[0] <= when:
                runs[dep.agent_id][product] = (when, dep.release.version)
        elif dep.state not in FINAL_STATES:
            pending.setdefault(dep.agent_id, []).append(
                {"deployment": dep.id, "release": dep.release.label, "state": dep.state})
    out = []
    for env in list_environments(session):
        if environments is not None and env.name not in environments:
            continue
        rows = []
        for a in agents:
            if a.environment_id != env.id:
                continue
            rows.append({
                "agent": a.agent_id, "labels": dict(a.labels or {}),
                "online": a.online_until is not None and a.online_until > now,
                "last_seen": a.last_seen.isoformat() if a.last_seen else None,
                "runs": {p: v for p, (_, v) in sorted(runs.get(a.id, {}).items())},
                "pending": pending.get(a.id, []),
            })
        out.append({"environment": env.name, "agents": rows})
    return out
