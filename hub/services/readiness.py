""""Why is this not deploying?": every reason a deployment waits, computed in one place.

:func:`waiting_for` answers for the deployment page, ``tiangong hub deployments why ID``
and ``deployments list --json`` alike. Reasons, each a :class:`Reason` with a ``kind``:

* ``approvals`` — the hub's approval rule for its environment is not met (for an ad-hoc
  run, nor the environment's ad-hoc policy, :mod:`hub.services.adhoc_policy`)
  (:func:`hub.services.approval_rules.check_rule`: how many, from which groups, never the
  author, not expired): "approval 1 of 2: environment prod needs 2 approvals from 2
  groups; found 1 (alice/dba)";
* ``channel`` — a planned deployment whose release is not (or no longer) in the channel
  its environment subscribes to: "not yet promoted to STABLE";
* ``freeze`` — a change freeze holds it: "frozen until 2027-01-05 00:00 UTC (quarter
  close)"; the hub does not export it (:mod:`hub.services.windows`);
* ``window`` — outside every maintenance window: "window opens Sat 2027-01-02 01:00
  Europe/Berlin"; exported to media early (the agent holds it), pushed live at the opening;
* ``override`` — an override was requested and waits for a second person;
* ``site`` — an agent reported (in its newest result or live STATE, docs/live-protocol.md
  §3.1) that it holds this deployment's bundle: "held at site-7 (reported 2027-01-15 08:00
  UTC): window opens Sat 2027-01-16 01:00 Europe/Berlin" — by its own clock and the policy
  the bundle carried, which is what decides at the site.

A confirmed hub override lifts ``freeze`` and ``window`` (not ``site``: the agent holds by
the bundle it has; ``tiangong agent run-now`` there). Deployments that are running or
finished wait for nothing (an empty list).

This module decides nothing and changes nothing: each rule lives in its own service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bundle.windows import format_instant
from hub.db import Agent, ChannelEntry, ChannelSubscription, Deployment
from hub.services.adhoc_policy import adhoc_rule, is_adhoc
from hub.services.approval_rules import check_rule
from hub.services.windows import FOREVER, Gate, gate_for, list_overrides

__all__ = ["WAITING_STATES", "Reason", "site_holds", "waiting_for"]

#: states in which a deployment can still be waiting for something before it runs
WAITING_STATES = frozenset({"planned", "queued", "exporting", "exported", "delivered"})


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
    # The channel rule applies to what comes through a subscription (as
    # hub.services.promotion.approval_check, which queued it); "not yet promoted" only
    # while planned.
    sub = _subscription(session, deployment)
    reasons = _approvals(deployment, now, sub)
    if deployment.state == "planned":
        reasons += _channel(session, deployment, sub)
        from hub.services.plans import deploy_waits  # the environment's preflight policy

        reasons += [Reason("preflight", f"preflight: {w}") for w in deploy_waits(
            session, deployment.release, deployment.environment,
            [deployment.agent] if deployment.agent else [], now)]
    gate = gate_for(session, deployment, now)
    reasons += _freeze_and_window(gate, deployment)
    pending = [o for o in list_overrides(session, deployment) if o.state == "requested"]
    if pending:
        o = pending[-1]
        reasons.append(Reason("override", f"override requested by {o.requested_by} "
                              f"({o.reason}); needs a second person to confirm it"))
    return reasons + site_holds(session, deployment)


def site_holds(session: Session, dep: Deployment) -> list[Reason]:
    """What the agents this deployment reaches report holding of its bundle (``site``)."""
    if dep.bundle_id is None or dep.state not in ("exported", "delivered"):
        return []
    if dep.agent is not None:
        agents = [dep.agent]
    else:
        agents = list(session.scalars(select(Agent).where(
            Agent.environment_id == dep.environment_id, Agent.holds.is_not(None))
            .order_by(Agent.agent_id)))
    out = []
    for agent in agents:
        for hold in agent.holds or []:
            if hold.get("bundle_id") != dep.bundle_id:
                continue
            until = hold.get("until")
            reported = (f" (reported {format_instant(int(agent.inventory_at.timestamp()))})"
                        if agent.inventory_at is not None else "")
            out.append(Reason("site", f"held at {agent.agent_id}{reported}: {hold['text']}",
                              datetime.fromtimestamp(until, UTC)
                              if isinstance(until, int) else None))
    return out


def _subscription(session: Session, dep: Deployment) -> ChannelSubscription | None:
    sub: ChannelSubscription | None = session.scalar(select(ChannelSubscription).where(
        ChannelSubscription.environment_id == dep.environment_id,
        ChannelSubscription.product_id == dep.release.product_id))
    return sub


def _approvals(dep: Deployment, now: datetime, sub: ChannelSubscription | None) -> list[Reason]:
    """The hub's rule (a planned deployment: its channel's rule, if the channel has one)."""
    channel = sub.channel.name if sub is not None else None
    # A planned deployment came through a channel: only the release's own approvals count
    # there (hub.services.promotion.approval_check); inherited ones queue nothing.
    check = check_rule(dep.release, dep.environment, channel=channel, now=now,
                       inherited=dep.state != "planned")
    if check.met:
        return []
    if is_adhoc(dep):  # an ad-hoc run went out under its environment's ad-hoc policy
        adhoc = check_rule(dep.release, dep.environment, now=now,
                           rule=adhoc_rule(dep.environment))
        if adhoc.met:
            return []
        check = adhoc
    return [Reason("approvals", f"approval {check.found} of {check.rule.required}: "
                   f"{check.summary()}")]


def _channel(session: Session, dep: Deployment, sub: ChannelSubscription | None
             ) -> list[Reason]:
    """A planned deployment whose release is not in its environment's subscribed channel."""
    if sub is None:
        return []
    inside = session.scalar(select(ChannelEntry.id).where(
        ChannelEntry.channel_id == sub.channel_id, ChannelEntry.release_id == dep.release_id,
        ChannelEntry.recalled_at.is_(None)))
    if inside is not None:
        return []
    return [Reason("channel", f"not yet promoted to {sub.channel.name} (the channel "
                   f"{dep.environment.name} subscribes to for {dep.release.product.name})")]


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
