"""The hub's side of the sequence chain (docs/bundle-format.md §6.8, docs/hub.md "Lost bundles").

Every release bundle names the bundle exported to the same target just before it, so that an
agent applies bundles in sequence order whatever order the media bring them in, and names the
bundle it waits for when one is missing. When a bundle will never arrive (a stick lost,
a share wiped), an operator **declares it lost**: the decision is audited, with its reason,
and every later bundle exported to that target carries it, signed, so the agent proceeds
without it — and refuses it with the hub's reason if it turns up after all.

* :func:`chain_for` — the ``chain`` object of the bundle being exported (export calls it
  once it has the bundle's sequence).
* :func:`declare_lost` — the operator's decision; optionally queues the release again for
  the same agent, whose bundle then carries the decision to the site at once.

Decisions live in the audit log (``bundle.declared_lost``, object id = the sequence target,
``agent:<id>`` or ``env:<name>``), which is append-only: a decision cannot be taken back,
only superseded by exporting again. This module does not write bundles or results.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import BindParameter, bindparam, func, select
from sqlalchemy.orm import Session, selectinload

from bundle.errors import ManifestError
from bundle.manifest import MAX_LOST_ENTRIES, ChainInfo, ChainLink, LostBundle
from hub.db import AuditEvent, Deployment, Release
from hub.errors import InvalidStateError, ValidationError
from hub.services import audit
from hub.services.context import ServiceContext
from hub.services.deployments import deployment_target, get_deployment, transition
from hub.services.users import require_ctx

__all__ = ["DECLARED_LOST", "MAX_REASON_CHARS", "chain_for", "chains_for", "declare_lost"]

DECLARED_LOST = "bundle.declared_lost"  # audit action; object id = the sequence target
MAX_REASON_CHARS = 2000  # characters of an operator's reason
_EXPORTED_ACTIONS = ("bundle.claimed", "deployment.exported", "bundle.written")
LOSABLE_STATES = ("exporting", "exported")  # written (or being written), not yet at the site


def _same_target(dep: Deployment) -> Any:
    """The SQL condition for deployments that share ``dep``'s sequence counter."""
    if dep.agent_id is not None:
        return Deployment.agent_id == dep.agent_id
    return (Deployment.agent_id.is_(None)) & (Deployment.environment_id == dep.environment_id)


def _exporter(session: Session, dep: Deployment) -> str:
    actor = session.scalars(
        select(AuditEvent.actor)
        .where(AuditEvent.action.in_(_EXPORTED_ACTIONS), AuditEvent.object_id == str(dep.id))
        .order_by(AuditEvent.seq)
        .limit(1)
    ).first()
    return actor or dep.queued_by or "unknown"


def _link(session: Session, dep: Deployment, exporter: str | None = None) -> ChainLink:
    """``dep``'s bundle as a link; ``exporter`` when the caller already read it."""
    assert dep.sequence is not None and dep.bundle_id is not None
    when = dep.exported_at or dep.updated_at
    return ChainLink(
        root_version=dep.root_version or 1,
        sequence=dep.sequence,
        bundle_id=dep.bundle_id,
        product=dep.release.product.name,
        version=dep.release.version,
        exported_at=int(when.timestamp()),
        exported_by=exporter or _exporter(session, dep),
    )


def _previous(session: Session, dep: Deployment, root_version: int,
              sequence: int) -> Deployment | None:
    """The deployment of the same target whose bundle comes just before ``sequence``."""
    base = select(Deployment).where(_same_target(dep), Deployment.id != dep.id,
                                    Deployment.sequence.is_not(None),
                                    Deployment.bundle_id.is_not(None))
    same_epoch = session.scalars(
        base.where(Deployment.root_version == root_version, Deployment.sequence < sequence)
        .order_by(Deployment.sequence.desc()).limit(1)
    ).first()
    if same_epoch is not None:
        return same_epoch
    return session.scalars(
        base.where(Deployment.root_version < root_version)
        .order_by(Deployment.root_version.desc(), Deployment.sequence.desc()).limit(1)
    ).first()


def _decisions(session: Session, target: str, root_version: int) -> tuple[LostBundle, ...]:
    """The newest decisions for ``target`` in ``root_version``, oldest first."""
    texts = session.scalars(
        select(AuditEvent.details)
        .where(AuditEvent.action == DECLARED_LOST, AuditEvent.object_id == target)
        .order_by(AuditEvent.seq.desc())
    )
    return _newest_decisions(texts, root_version)


def _newest_decisions(texts: Iterable[str], root_version: int) -> tuple[LostBundle, ...]:
    """:func:`_decisions` from the details of one target's decisions, newest first."""
    found: dict[tuple[int, int], LostBundle] = {}
    for text in texts:
        try:
            decision = LostBundle.from_json(json.loads(text)["decision"])
        except (KeyError, TypeError, ValueError, ManifestError):
            continue  # not ours to judge here: audit verify names damaged events
        if decision.bundle.root_version != root_version or decision.bundle.position in found:
            continue
        found[decision.bundle.position] = decision
        if len(found) == MAX_LOST_ENTRIES:
            break
    return tuple(sorted(found.values(), key=lambda d: d.bundle.position))


def chain_for(session: Session, dep: Deployment, root_version: int,
              sequence: int) -> ChainInfo:
    """The ``chain`` of the bundle exported for ``dep`` at ``(root_version, sequence)``:
    the previous bundle of the same target and the lost decisions of that root version."""
    previous = _previous(session, dep, root_version, sequence)
    return ChainInfo(
        previous=None if previous is None else _link(session, previous),
        lost=_decisions(session, deployment_target(dep), root_version),
    )


def chains_for(session: Session, items: Sequence[tuple[Deployment, int]],
               root_version: int) -> dict[int, ChainInfo]:
    """:func:`chain_for` of many deployments of an export batch at ``root_version``, each
    with its sequence: deployment id -> its ``chain``. Four queries for all of them (the
    previous bundles' sequences, their rows, who exported them, the lost decisions)
    instead of four per deployment.

    Only deployments to one agent each, every agent once among ``items``, called before
    any of them records its sequence and bundle id; the answer is :func:`chain_for`'s.
    A deployment left out of the answer (its previous bundle is not found unambiguously
    this way) is for the caller to ask :func:`chain_for` about.
    """
    items = [(dep, seq) for dep, seq in items if dep.agent_id is not None]
    agents = {dep.agent_id: (dep, seq) for dep, seq in items}
    if not agents or len(agents) != len(items):
        return {}
    batch_ids = [dep.id for dep, _ in items]
    agent_ids = sorted(a for a in agents if a is not None)
    # The newest sequence per agent and root version up to this one (not these bundles).
    newest: dict[int, list[tuple[int, int]]] = {}
    for agent_id, rv, seq in session.execute(_NEWEST, {"agents": agent_ids, "batch": batch_ids,
                                                       "rv": root_version}):
        if agent_id is not None and rv is not None and seq is not None:
            newest.setdefault(agent_id, []).append((rv, seq))
    wanted: dict[int, tuple[int, int]] = {}  # agent -> (root version, sequence) of previous
    unsure: set[int] = set()
    for agent_id, (_, seq) in agents.items():
        assert agent_id is not None
        found = newest.get(agent_id, [])
        same = [s for rv, s in found if rv == root_version]
        if same and same[0] >= seq:
            unsure.add(agent_id)  # a bundle past this sequence: chain_for looks closer
        elif same:
            wanted[agent_id] = (root_version, same[0])
        elif found:
            wanted[agent_id] = max(found)
    rows: dict[int, list[Deployment]] = {}
    if wanted:
        for dep in session.scalars(_PREVIOUS, {
                "agents": sorted(wanted), "batch": batch_ids,
                "sequences": sorted({s for _, s in wanted.values()})}):
            if dep.agent_id in wanted and (dep.root_version, dep.sequence) == wanted[dep.agent_id]:
                rows.setdefault(dep.agent_id, []).append(dep)
    previous: dict[int, Deployment] = {}
    for agent_id in wanted:
        if len(rows.get(agent_id, [])) == 1:
            previous[agent_id] = rows[agent_id][0]
        else:
            unsure.add(agent_id)  # two bundles of one sequence: chain_for's pick
    exporters: dict[str, str] = {}
    if previous:
        for object_id, actor in session.execute(
                _EXPORTERS, {"objects": sorted(str(d.id) for d in previous.values())}):
            exporters.setdefault(object_id, actor)
    targets = {agent_id: deployment_target(dep) for agent_id, (dep, _) in agents.items()}
    texts: dict[str, list[str]] = {}
    for object_id, details in session.execute(_LOST_OF,
                                              {"objects": sorted(set(targets.values()))}):
        texts.setdefault(object_id, []).append(details)
    out: dict[int, ChainInfo] = {}
    for agent_id, (dep, _) in agents.items():
        if agent_id in unsure:
            continue
        prev = previous.get(agent_id)  # type: ignore[arg-type]
        link = None
        if prev is not None:
            link = _link(session, prev, exporters.get(str(prev.id)) or prev.queued_by
                         or "unknown")
        out[dep.id] = ChainInfo(
            previous=link,
            lost=_newest_decisions(texts.get(targets[agent_id], []), root_version))
    return out


# chains_for's statements, made once (an export call runs them; a statement built per call
# costs its construction and cache key again, 40-90 us each)
_AGENTS: BindParameter[list[int]] = bindparam("agents", expanding=True)
#: the batch's own deployments (never a previous bundle)
_BATCH: BindParameter[list[int]] = bindparam("batch", expanding=True)
_OBJECTS: BindParameter[list[str]] = bindparam("objects", expanding=True)
#: the newest sequence per agent and root version up to ``rv``
_NEWEST = (
    select(Deployment.agent_id, Deployment.root_version, func.max(Deployment.sequence))
    .where(Deployment.agent_id.in_(_AGENTS), Deployment.id.not_in(_BATCH),
           Deployment.sequence.is_not(None), Deployment.bundle_id.is_not(None),
           Deployment.root_version <= bindparam("rv"))
    .group_by(Deployment.agent_id, Deployment.root_version)
)
#: the bundles of those agents at those sequences
_PREVIOUS = (
    select(Deployment)
    .where(Deployment.agent_id.in_(_AGENTS),
           Deployment.sequence.in_(bindparam("sequences", expanding=True)),
           Deployment.bundle_id.is_not(None), Deployment.id.not_in(_BATCH))
    .options(selectinload(Deployment.release).selectinload(Release.product))
)
#: who exported those deployments, oldest event first
_EXPORTERS = (select(AuditEvent.object_id, AuditEvent.actor)
              .where(AuditEvent.action.in_(_EXPORTED_ACTIONS), AuditEvent.object_id.in_(_OBJECTS))
              .order_by(AuditEvent.seq))
#: the lost decisions of those targets, newest first
_LOST_OF = (select(AuditEvent.object_id, AuditEvent.details)
            .where(AuditEvent.action == DECLARED_LOST, AuditEvent.object_id.in_(_OBJECTS))
            .order_by(AuditEvent.seq.desc()))


def declare_lost(ctx: ServiceContext, deployment_id: int, reason: str, *,
                 requeue: bool = False) -> tuple[Deployment, Deployment | None]:
    """Declare the bundle of an exported deployment lost; returns it (now ``lost``) and the
    new deployment if ``requeue``.

    The next bundle exported to the same target carries the decision (§6.8): the agent
    stops waiting for the lost bundle and refuses it if it turns up. ``requeue`` queues
    the same release again for the same agent (or environment), which is that next bundle.

    Raises:
        NotFoundError, PermissionDeniedError (operator: ``bundle.export``),
        ValidationError (no reason), InvalidStateError (the bundle is not exported: it may
        already have reached the site, or it was never written).
    """
    session = ctx.session
    dep = get_deployment(session, deployment_id)
    require_ctx(ctx, "bundle.export", dep.environment)
    reason = reason.strip()
    if not reason:
        raise ValidationError("say why the bundle is lost (--reason): the site sees it")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is {len(reason)} characters, over "
                              f"{MAX_REASON_CHARS}")
    if dep.state not in LOSABLE_STATES or dep.sequence is None or dep.bundle_id is None:
        raise InvalidStateError(
            f"deployment {dep.id} is {dep.state}; only the bundle of an exported deployment "
            "that has not reached the site can be declared lost")
    previous = _previous(session, dep, dep.root_version or 1, dep.sequence)
    decision = LostBundle(
        bundle=_link(session, dep),
        previous=None if previous is None else _link(session, previous),
        reason=reason,
        by=ctx.actor_name,
        at=int(ctx.now().timestamp()),
    )
    target = deployment_target(dep)
    transition(ctx, dep, "lost", action="bundle.export")
    audit.record(ctx, DECLARED_LOST, "target", target,
                 {"deployment": dep.id, "decision": decision.to_json()})
    again = _requeue(ctx, dep) if requeue else None
    return dep, again


def _requeue(ctx: ServiceContext, dep: Deployment) -> Deployment:
    """Queue ``dep``'s release again for the same agent (or environment)."""
    require_ctx(ctx, "deployment.queue", dep.environment)
    from hub.services.plans import require_passed_plan

    require_passed_plan(ctx, dep.release, dep.environment, [dep.agent] if dep.agent else [])
    now = ctx.now()
    again = Deployment(release=dep.release, environment=dep.environment, agent=dep.agent,
                       state="queued", queued_by=ctx.actor_name, queued_at=now,
                       updated_at=now)
    ctx.session.add(again)
    ctx.session.flush()
    audit.record(ctx, "deployment.queue", "deployment", str(again.id), {
        "release": dep.release.label,
        "content_hash": dep.release.content_hash,
        "environment": dep.environment.name,
        "agent": dep.agent.agent_id if dep.agent else None,
        "replaces": dep.id,
    })
    return again
