"""Maintenance windows, change freezes and hub overrides at the hub.

**Rules.** A :class:`~hub.db.PolicyRule` is a window or a freeze for one environment and/or
one product (NULL: every one); its ``spec`` is the design's JSON object (design13 §5,
docs/bundle-format.md ``policy``), checked by :mod:`bundle.windows` — the one model of
windows and freezes, shared with the agent. The rules that apply to a deployment are those
of its environment (or of every environment) and of its release's product (or of every
product) that were not ended: :func:`applicable_rules`. Several windows: open when any is
open; no window: any time. A freeze holds whenever one is in force.

**What the hub does with them** (docs/governance.md, "Windows and freezes"):

* every release bundle carries the windows and freezes that apply, and the override if one
  was confirmed, in its manifest's ``policy`` (:func:`policy_for`): the agent enforces them
  offline;
* a queued deployment is **not exported while a freeze holds it** (media, web and live
  alike), unless overridden;
* outside its windows it **is** exported to media at once (the agent holds the bundle until
  its window opens, by its own clock), but the **live server does not push it** to an online
  agent before the window opens — :attr:`~hub.db.Deployment.hold_until` says until when, a
  cache :func:`refresh_holds` keeps (every export, every change of rules, and the scheduler,
  :mod:`hub.scheduler`, at each opening);
* a hub override (deploy despite freezes and windows) needs a reason and a second person who
  confirms it (never the requester), within :data:`OVERRIDE_REQUEST_TTL`; both steps are
  audited and the confirmed override goes into the bundle (``policy.override``).

This module does not compute window arithmetic itself (:mod:`bundle.windows` does), and
does not decide approvals or channels (:mod:`hub.services.readiness` gathers every reason).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session

from bundle import windows as model
from bundle.errors import BundleError
from hub.db import POLICY_KINDS, Deployment, DeploymentOverride, PolicyRule, Product
from hub.errors import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.environments import get_environment, list_environments
from hub.services.users import can, require

__all__ = [
    "FOREVER",
    "MAX_REASON_CHARS",
    "MAX_RULES",
    "OVERRIDE_REQUEST_TTL",
    "Gate",
    "active_override",
    "add_rule",
    "applicable_rules",
    "confirm_override",
    "describe_rule",
    "end_freeze",
    "expire_freezes",
    "expire_overrides",
    "gate_for",
    "gates_for",
    "hold_back",
    "list_overrides",
    "list_rules",
    "override_json",
    "policy_for",
    "refresh_holds",
    "remove_rule",
    "request_override",
    "rule_json",
]

MAX_RULES = 100  # windows and freezes (not ended) the hub keeps; a bundle carries fewer
MAX_REASON_CHARS = 500  # characters of a freeze's or an override's reason
OVERRIDE_REQUEST_TTL = timedelta(hours=24)  # a request nobody confirmed by then expires
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)  # hold_until of a hold no time will lift
_IN_CHUNK = 500  # ids in one SQL IN list (well under every driver's parameter limit)


def _unix(at: datetime) -> int:
    return int(at.timestamp())


def _from_unix(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# --- rules -------------------------------------------------------------------------------


def _scope(ctx: ServiceContext, environment: str | None,
           product: str | None) -> tuple[Any, Product | None]:
    env = get_environment(ctx.session, environment) if environment is not None else None
    prod = None
    if product is not None:
        prod = ctx.session.scalar(select(Product).where(Product.name == product))
        if prod is None:
            raise NotFoundError(f"product {product!r} does not exist")
    return env, prod


def _check_spec(kind: str, spec: Any) -> dict[str, Any]:
    """``spec`` (a JSON object, or the short form of ``bundle create --window/--freeze``)
    checked by the shared model; the canonical JSON object to store.

    Raises:
        ValidationError: names the rule the spec breaks.
    """
    if kind not in POLICY_KINDS:
        raise ValidationError(f"kind must be one of {', '.join(POLICY_KINDS)}, not {kind!r}")
    try:
        if isinstance(spec, str):
            parsed = (model.parse_window_spec(spec) if kind == "window"
                      else model.parse_freeze_spec(spec))
            stored: dict[str, Any] = parsed.to_json()
        else:
            stored = _from_json(kind, spec).to_json()
        return stored
    except BundleError as exc:
        raise ValidationError(f"{kind}: {exc}") from exc


def _from_json(kind: str, spec: Any) -> Any:
    """A stored spec as the shared model's window or freeze.

    Raises:
        PolicyError.
    """
    if kind == "window":
        return model.Policy.from_json({"windows": [spec], "freezes": [],
                                       "override": None}).windows[0]
    return model.Freeze.from_json(spec)


def add_rule(ctx: ServiceContext, kind: str, spec: Any, *, environment: str | None = None,
             product: str | None = None) -> PolicyRule:
    """Add a window or a freeze (``kind``) for ``environment`` and/or ``product`` (None:
    every one). Audited (``window.add`` / ``freeze.add``); the holds of the queued
    deployments it touches are refreshed.

    Raises:
        PermissionDeniedError (``environment.update``: an admin, of that environment or
        global for a rule of every environment), NotFoundError (environment, product),
        ValidationError (the spec, named by rule), ConflictError (:data:`MAX_RULES`).
    """
    env, prod = _scope(ctx, environment, product)
    require(ctx.actor, "environment.update", env)
    stored = _check_spec(kind, spec)
    live = ctx.session.scalars(select(PolicyRule.id).where(PolicyRule.ended_at.is_(None)))
    if len(live.all()) >= MAX_RULES:
        raise ConflictError(f"the hub keeps at most {MAX_RULES} windows and freezes; remove "
                            "or end some first")
    rule = PolicyRule(kind=kind, environment=env, product=prod, spec=stored,
                      created_by=ctx.actor_name, created_at=ctx.now(), ended_by="")
    ctx.session.add(rule)
    ctx.session.flush()
    audit.record(ctx, f"{kind}.add", kind, str(rule.id), rule_json(rule))
    refresh_holds(ctx.session, ctx.now(), environment_id=env.id if env else None)
    return rule


def _get_rule(ctx: ServiceContext, kind: str, rule_id: int) -> PolicyRule:
    """The rule, if the actor may view it (else: as if it did not exist).

    Raises:
        NotFoundError.
    """
    rule = ctx.session.get(PolicyRule, rule_id)
    if rule is None or rule.kind != kind or not _visible(ctx, rule):
        raise NotFoundError(f"{kind} {rule_id} does not exist")
    return rule


def _visible(ctx: ServiceContext, rule: PolicyRule) -> bool:
    """One environment's rule: to those who may view it; every environment's: to those
    who may view any."""
    if rule.environment is not None:
        return can(ctx.actor, "view", rule.environment)
    return any(can(ctx.actor, "view", e) for e in list_environments(ctx.session))


def remove_rule(ctx: ServiceContext, kind: str, rule_id: int) -> dict[str, Any]:
    """Delete a window or freeze; returns what it was (audited ``<kind>.remove``).

    Raises:
        NotFoundError, PermissionDeniedError (as :func:`add_rule`).
    """
    rule = _get_rule(ctx, kind, rule_id)
    require(ctx.actor, "environment.update", rule.environment)
    before = rule_json(rule)
    env_id = rule.environment_id
    ctx.session.delete(rule)
    ctx.session.flush()
    audit.record(ctx, f"{kind}.remove", kind, str(rule_id), before)
    refresh_holds(ctx.session, ctx.now(), environment_id=env_id)
    return before


def end_freeze(ctx: ServiceContext, rule_id: int, reason: str) -> PolicyRule:
    """End a freeze now (kept, marked ended, for the record). Audited ``freeze.end``.

    Raises:
        NotFoundError, PermissionDeniedError, ValidationError (no reason), InvalidStateError
        (already ended).
    """
    rule = _get_rule(ctx, "freeze", rule_id)
    require(ctx.actor, "environment.update", rule.environment)
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"ending a freeze needs a reason (1-{MAX_REASON_CHARS} "
                              "characters)")
    if rule.ended_at is not None:
        raise InvalidStateError(f"freeze {rule_id} already ended at "
                                f"{rule.ended_at:%Y-%m-%d %H:%M} UTC by {rule.ended_by}")
    rule.ended_at = ctx.now()
    rule.ended_by = ctx.actor_name
    ctx.session.flush()
    audit.record(ctx, "freeze.end", "freeze", str(rule_id), {**rule_json(rule),
                                                             "why": reason})
    refresh_holds(ctx.session, ctx.now(), environment_id=rule.environment_id)
    return rule


def list_rules(ctx: ServiceContext, kind: str, *, environment: str | None = None,
               product: str | None = None, include_ended: bool = False) -> list[PolicyRule]:
    """The windows or freezes the actor may view: of ``environment`` (with the rules of
    every environment) and/or ``product``, else all; ended freezes only on request. Rules
    of one environment are listed to those who may view it, rules of every environment to
    those who may view any.

    Raises:
        PermissionDeniedError (view, when ``environment`` is named), NotFoundError.
    """
    env, prod = _scope(ctx, environment, product)
    if env is not None:
        require(ctx.actor, "view", env)
    query = select(PolicyRule).where(PolicyRule.kind == kind).order_by(PolicyRule.id)
    if env is not None:
        query = query.where(or_(PolicyRule.environment_id.is_(None),
                                PolicyRule.environment_id == env.id))
    if prod is not None:
        query = query.where(or_(PolicyRule.product_id.is_(None),
                                PolicyRule.product_id == prod.id))
    if not include_ended:
        query = query.where(PolicyRule.ended_at.is_(None))
    return [r for r in ctx.session.scalars(query) if _visible(ctx, r)]


def rule_json(rule: PolicyRule) -> dict[str, Any]:
    """A rule as the CLI's ``--json`` and the audit log show it."""
    return {
        "id": rule.id,
        "kind": rule.kind,
        "environment": rule.environment.name if rule.environment else None,
        "product": rule.product.name if rule.product else None,
        "spec": dict(rule.spec),
        "description": describe_rule(rule),
        "created_by": rule.created_by,
        "created_at": rule.created_at.isoformat() if rule.created_at else None,
        "ended_at": rule.ended_at.isoformat() if rule.ended_at else None,
        "ended_by": rule.ended_by or None,
    }


def describe_rule(rule: PolicyRule) -> str:
    """``Sat, Sun 01:00–05:00 Europe/Berlin`` and the like (the shared model's words)."""
    text: str = _from_json(rule.kind, rule.spec).describe()
    return text


def applicable_rules(session: Session, deployment: Deployment,
                     now: datetime) -> tuple[list[PolicyRule], list[PolicyRule]]:
    """(windows, freezes) that apply to ``deployment``: of its environment or every one,
    of its product or every one, not ended; one-off freezes already over are left out
    (they can never hold anything again). Windows are all kept: no window means any time,
    so dropping a past one-off window would open the deployment."""
    release = deployment.release
    rows = session.scalars(_RULES, {"env_id": deployment.environment_id,
                                    "product_id": release.product_id}).all()
    windows = [r for r in rows if r.kind == "window"]
    freezes = [r for r in rows if r.kind == "freeze"
               and not (r.spec.get("kind") == "once" and r.spec.get("end", 0) <= _unix(now))]
    return windows, freezes


# --- overrides ---------------------------------------------------------------------------


def _reason(reason: str, what: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ValidationError(f"{what} needs a reason (it is audited and goes into the "
                              "bundle)")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"{what}: the reason is longer than {MAX_REASON_CHARS} "
                              "characters")
    return reason


def request_override(ctx: ServiceContext, deployment: Deployment,
                     reason: str) -> DeploymentOverride:
    """Ask to deploy ``deployment`` despite freezes and windows. A second person confirms
    (:func:`confirm_override`). Audited ``override.request``.

    Raises:
        PermissionDeniedError (``deployment.queue`` in its environment), ValidationError
        (reason), InvalidStateError (not queued: its bundle is written without the
        override), ConflictError (an override is already requested or confirmed).
    """
    require(ctx.actor, "deployment.queue", deployment.environment)
    text = _reason(reason, f"an override of deployment {deployment.id}")
    if deployment.state != "queued":
        raise InvalidStateError(
            f"deployment {deployment.id} is {deployment.state}; only a queued deployment can "
            "be overridden (its bundle is not written yet)")
    expire_overrides(ctx, deployment_id=deployment.id)
    open_ = _open_override(ctx.session, deployment.id)
    if open_ is not None:
        raise ConflictError(f"deployment {deployment.id} already has an override "
                            f"{open_.state} by {open_.requested_by} (override {open_.id})")
    row = DeploymentOverride(deployment_id=deployment.id, reason=text,
                             requested_by=ctx.actor_name, requested_at=ctx.now(),
                             state="requested")
    ctx.session.add(row)
    ctx.session.flush()
    audit.record(ctx, "override.request", "deployment", str(deployment.id),
                 {"override": row.id, "reason": text,
                  "expires": (row.requested_at + OVERRIDE_REQUEST_TTL).isoformat()})
    return row


def confirm_override(ctx: ServiceContext, deployment: Deployment) -> DeploymentOverride:
    """Confirm the override requested for ``deployment``: the second person. From now on
    no freeze or window holds it at the hub, and its bundle carries ``policy.override``
    (reason, requester, confirmer, time) so the agent does not hold it either. Audited
    ``override.confirm``.

    Raises:
        PermissionDeniedError (``deployment.queue`` in its environment), NotFoundError (no
        open request; an expired one counts as none), ConflictError (confirmed already),
        SeparationOfDutiesError (the requester confirms), InvalidStateError (no longer
        queued).
    """
    require(ctx.actor, "deployment.queue", deployment.environment)
    expire_overrides(ctx, deployment_id=deployment.id)
    row = _open_override(ctx.session, deployment.id)
    if row is not None and row.state == "confirmed":
        raise ConflictError(f"the override of deployment {deployment.id} was already confirmed "
                            f"by {row.confirmed_by} (requested by {row.requested_by})")
    if row is None:
        raise NotFoundError(f"override of deployment {deployment.id} does not exist "
                            "(none requested, or the request expired)")
    if row.requested_by == ctx.actor_name:
        raise SeparationOfDutiesError(
            f"deployment {deployment.id}: {ctx.actor_name} requested this override and "
            "cannot confirm it; a second person must")
    if deployment.state != "queued":
        raise InvalidStateError(f"deployment {deployment.id} is {deployment.state}; its "
                                "bundle is already written without the override")
    row.state = "confirmed"
    row.confirmed_by = ctx.actor_name
    row.confirmed_at = ctx.now()
    ctx.session.flush()
    audit.record(ctx, "override.confirm", "deployment", str(deployment.id),
                 {"override": row.id, "reason": row.reason, "by": row.requested_by,
                  "second": row.confirmed_by})
    refresh_holds(ctx.session, ctx.now(), environment_id=deployment.environment_id)
    return row


def _open_override(session: Session, deployment_id: int) -> DeploymentOverride | None:
    row: DeploymentOverride | None = session.scalar(
        select(DeploymentOverride)
        .where(DeploymentOverride.deployment_id == deployment_id,
               DeploymentOverride.state.in_(("requested", "confirmed")))
        .order_by(DeploymentOverride.id.desc()))
    return row


def active_override(session: Session, deployment: Deployment) -> DeploymentOverride | None:
    """The confirmed override of ``deployment``, if any."""
    row = _open_override(session, deployment.id)
    return row if row is not None and row.state == "confirmed" else None


def list_overrides(session: Session, deployment: Deployment) -> list[DeploymentOverride]:
    """Every override request of ``deployment``, oldest first."""
    return list(session.scalars(
        select(DeploymentOverride).where(DeploymentOverride.deployment_id == deployment.id)
        .order_by(DeploymentOverride.id)))


def override_row(row: DeploymentOverride) -> dict[str, Any]:
    """An override request as ``hub deployments override|confirm-override --json`` and the
    API answer it."""
    return {"override": row.id, "deployment": row.deployment_id, "state": row.state,
            "requested_by": row.requested_by, "confirmed_by": row.confirmed_by,
            "reason": row.reason}


def override_json(row: DeploymentOverride) -> dict[str, Any]:
    """``policy.override`` of the manifest (design13 §3/§5)."""
    assert row.confirmed_at is not None and row.confirmed_by is not None
    return {"reason": row.reason, "by": row.requested_by, "second": row.confirmed_by,
            "at": _unix(row.confirmed_at)}


def expire_overrides(ctx: ServiceContext, *, deployment_id: int | None = None) -> list[int]:
    """Expire override requests nobody confirmed within :data:`OVERRIDE_REQUEST_TTL`
    (audited ``override.expire``); the ids expired."""
    cutoff = ctx.now() - OVERRIDE_REQUEST_TTL
    query = select(DeploymentOverride).where(DeploymentOverride.state == "requested",
                                             DeploymentOverride.requested_at <= cutoff)
    if deployment_id is not None:
        query = query.where(DeploymentOverride.deployment_id == deployment_id)
    expired = []
    for row in ctx.session.scalars(query).all():
        row.state = "expired"
        expired.append(row.id)
        audit.record(ctx, "override.expire", "deployment", str(row.deployment_id),
                     {"override": row.id, "requested_by": row.requested_by,
                      "requested_at": row.requested_at.isoformat()})
    if expired:
        ctx.session.flush()
    return expired


def expire_freezes(ctx: ServiceContext) -> list[int]:
    """Mark one-off freezes that are over as ended (``ended_by`` the actor, audited
    ``freeze.expire``); the ids. Recurring freezes never end on their own."""
    now = _unix(ctx.now())
    ended = []
    rows = ctx.session.scalars(select(PolicyRule).where(PolicyRule.kind == "freeze",
                                                        PolicyRule.ended_at.is_(None)))
    for rule in rows.all():
        if rule.spec.get("kind") == "once" and int(rule.spec.get("end", 0)) <= now:
            rule.ended_at = _from_unix(int(rule.spec["end"]))
            rule.ended_by = ctx.actor_name
            ended.append(rule.id)
            audit.record(ctx, "freeze.expire", "freeze", str(rule.id), rule_json(rule))
    if ended:
        ctx.session.flush()
    return ended


# --- the gate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """What windows, freezes and an override say about one deployment at ``now``.

    ``frozen_until``: a freeze holds it until then (:data:`FOREVER`: no end found);
    ``freeze``: the shared model's sentence ("frozen until Tue 2027-01-05 00:00 UTC (year
    end)"). ``window_opens``: it is outside every window until then (:data:`FOREVER`: no
    window opens again); ``window``: the sentence ("window opens Sat 2027-01-02 01:00
    Europe/Berlin"). ``runs_from``: the first instant both allow (None: now or never).
    ``overridden``: a confirmed hub override lifts freezes and windows.
    """

    now: datetime
    frozen_until: datetime | None = None
    freeze: str = ""
    window_opens: datetime | None = None
    window: str = ""
    runs_from: datetime | None = None
    overridden: bool = False

    @property
    def frozen(self) -> bool:
        return self.frozen_until is not None and not self.overridden

    @property
    def outside_window(self) -> bool:
        return self.window_opens is not None and not self.overridden

    def export_allowed(self, *, live: bool) -> bool:
        """Media exports wait for freezes only (the agent holds a bundle until its window
        opens); the live server waits for the window too."""
        return not self.frozen and not (live and self.outside_window)

    def hold_until(self) -> datetime | None:
        """The live server's hold (:attr:`~hub.db.Deployment.hold_until`): None when it may
        push now, else the first instant both freezes and windows allow."""
        if self.export_allowed(live=True):
            return None
        return self.runs_from or FOREVER


def _policy(windows: Sequence[PolicyRule], freezes: Sequence[PolicyRule],
            override: DeploymentOverride | None = None) -> Any:
    return model.Policy(
        windows=tuple(_from_json("window", r.spec) for r in windows),
        freezes=tuple(_from_json("freeze", r.spec) for r in freezes),
        override=model.Override.from_json(override_json(override)) if override else None,
    )


def gate_for(session: Session, deployment: Deployment, now: datetime) -> Gate:
    """The :class:`Gate` of ``deployment`` at ``now`` (the shared model's arithmetic)."""
    windows, freezes = applicable_rules(session, deployment, now)
    return _gate(windows, freezes, active_override(session, deployment) is not None, now)


def _gate(windows: Sequence[PolicyRule], freezes: Sequence[PolicyRule], overridden: bool,
          now: datetime) -> Gate:
    at = _unix(now)
    frozen_until: datetime | None = None
    freeze_text = ""
    if freezes:
        frozen = _policy([], freezes)
        held = frozen.hold(at)
        end = frozen.frozen_until(at)  # the freeze's own end, however far
        if held is not None:
            frozen_until = FOREVER if end is None else _from_unix(end[0])
            freeze_text = held.text
    window_opens: datetime | None = None
    window_text = ""
    if windows:
        held = _policy(windows, []).hold(at)
        if held is not None:
            window_opens = FOREVER if held.until is None else _from_unix(held.until)
            window_text = held.text
    runs_from = None
    if frozen_until is not None or window_opens is not None:
        opens = _policy(windows, freezes).next_open(at)
        runs_from = None if opens is None else _from_unix(opens)
    return Gate(now, frozen_until, freeze_text, window_opens, window_text, runs_from,
                overridden)


def policy_for(session: Session, deployment: Deployment, now: datetime) -> Any:
    """The manifest's ``policy`` for ``deployment``'s bundle (:class:`bundle.windows.Policy`),
    or None when no window, freeze or override applies (the field is then left out)."""
    windows, freezes = applicable_rules(session, deployment, now)
    override = active_override(session, deployment)
    if not windows and not freezes and override is None:
        return None
    return _policy(windows, freezes, override)


def gates_for(session: Session, deployments: Sequence[Deployment],
              now: datetime) -> dict[int, tuple[Gate, Any]]:
    """:func:`gate_for` and :func:`policy_for` of many deployments at once: deployment id
    -> (gate, policy). The same answers, with one query of rules per (environment,
    product) and one of overrides for all of them, instead of three queries each (an
    export of a rollout to 1,000 agents asks this once per batch)."""
    rules: dict[tuple[int, int], tuple[list[PolicyRule], list[PolicyRule]]] = {}
    for dep in deployments:
        key = (dep.environment_id, dep.release.product_id)
        if key not in rules:
            rules[key] = applicable_rules(session, dep, now)
    open_: dict[int, DeploymentOverride] = {}
    ids = sorted({dep.id for dep in deployments})
    for start in range(0, len(ids), _IN_CHUNK):
        for row in session.scalars(_OPEN_OVERRIDES, {"ids": ids[start:start + _IN_CHUNK]}):
            open_.setdefault(row.deployment_id, row)  # the newest, as _open_override
    out: dict[int, tuple[Gate, Any]] = {}
    # (environment, product) -> the gate and policy of its deployments without an override:
    # the same for each of them (a rollout's thousand), so worked out once
    plain: dict[tuple[int, int], tuple[Gate, Any]] = {}
    for dep in deployments:
        key = (dep.environment_id, dep.release.product_id)
        windows, freezes = rules[key]
        found = open_.get(dep.id)
        override = found if found is not None and found.state == "confirmed" else None
        if override is None and key in plain:
            out[dep.id] = plain[key]
            continue
        policy = (None if not windows and not freezes and override is None
                  else _policy(windows, freezes, override))
        out[dep.id] = (_gate(windows, freezes, override is not None, now), policy)
        if override is None:
            plain[key] = out[dep.id]
    return out


# The statements of gates_for, made once (an export call asks it twice: a statement built
# per call costs its construction and cache key again, 40-90 us each).
#: applicable_rules: the rules of environment ``env_id`` or every one, of product
#: ``product_id`` or every one, not ended
_RULES = (
    select(PolicyRule)
    .where(PolicyRule.ended_at.is_(None),
           or_(PolicyRule.environment_id.is_(None),
               PolicyRule.environment_id == bindparam("env_id")),
           or_(PolicyRule.product_id.is_(None),
               PolicyRule.product_id == bindparam("product_id")))
    .order_by(PolicyRule.id)
)
#: the requested or confirmed overrides of the deployments ``ids``, newest first
_OPEN_OVERRIDES = (
    select(DeploymentOverride)
    .where(DeploymentOverride.deployment_id.in_(bindparam("ids", expanding=True)),
           DeploymentOverride.state.in_(("requested", "confirmed")))
    .order_by(DeploymentOverride.id.desc())
)


def refresh_holds(session: Session, now: datetime, *, environment_id: int | None = None,
                  deployments: Iterable[Deployment] | None = None) -> list[Deployment]:
    """Recompute :attr:`~hub.db.Deployment.hold_until` of queued deployments (of one
    environment, or the ones given); returns those whose hold was lifted (it was set, and
    they may go now)."""
    if deployments is None:
        query = select(Deployment).where(Deployment.state == "queued")
        if environment_id is not None:
            query = query.where(Deployment.environment_id == environment_id)
        deployments = session.scalars(query).all()
    lifted = []
    deployments = list(deployments)
    gates = gates_for(session, deployments, now)
    for dep in deployments:
        hold = gates[dep.id][0].hold_until()
        if hold != dep.hold_until:
            if hold is None:
                lifted.append(dep)
            dep.hold_until = hold
    session.flush()
    return lifted


def hold_back(session: Session, deployments: Sequence[Deployment], now: datetime, *,
              live: bool) -> tuple[list[Deployment], list[tuple[int, str]]]:
    """Split queued ``deployments`` into those an export may write now and those held
    ((id, why) pairs), refreshing their :attr:`~hub.db.Deployment.hold_until` on the way
    (the caller commits). ``live``: for the live server, which also waits for windows."""
    go: list[Deployment] = []
    held: list[tuple[int, str]] = []
    gates = gates_for(session, deployments, now)
    for dep in deployments:
        gate = gates[dep.id][0]
        hold = gate.hold_until()
        if hold != dep.hold_until:
            dep.hold_until = hold
        if gate.export_allowed(live=live):
            go.append(dep)
        else:
            held.append((dep.id, gate.freeze if gate.frozen else gate.window))
    return go, held
