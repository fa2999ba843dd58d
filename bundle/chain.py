"""The sequence chain rule (docs/bundle-format.md §9.7): apply in order, never refuse for it.

Every release bundle the hub exports names the bundle exported to the same target just before
it (``chain.previous``) and carries the hub's signed decisions that bundles of that chain are
lost (``chain.lost``). A verifier that has accepted up to ``(root_version, sequence)`` uses
them to decide, *after* the signature and manifest checks (§9.3) and before any payload byte:

* :func:`missing_predecessor` — the bundle this one must wait for, or None when it may be
  applied now. A predecessor at or below the accepted position was applied (or passed over by
  an earlier decision); a predecessor declared lost is skipped and *its* predecessor is
  looked at instead, and so on. A bundle whose predecessor is missing is **held**, never
  refused: copy order, names and arrival order never decide anything.
* :func:`declared_lost` — the decision that names this very bundle lost, if any: such a bundle
  is refused if it turns up later, because the hub has superseded it.
* :func:`collect_lost` — gathers decisions from several verified manifests (those already
  accepted and those waiting), newest decision last.

Pure functions on verified manifest values; this module does no I/O and trusts its caller to
pass only decisions taken from manifests whose signatures verified.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bundle.manifest import ChainInfo, ChainLink, LostBundle, Manifest

__all__ = ["LostMap", "Position", "collect_lost", "declared_lost", "missing_predecessor"]

Position = tuple[int, int]
"""``(root_version, sequence)``; positions compare lexicographically (§9.3 rule 4)."""

LostMap = Mapping[Position, LostBundle]


def collect_lost(chains: Iterable[ChainInfo | None]) -> dict[Position, LostBundle]:
    """Every lost-bundle decision in ``chains``, by the position of the lost bundle."""
    out: dict[Position, LostBundle] = {}
    for chain in chains:
        if chain is None:
            continue
        for decision in chain.lost:
            out[decision.bundle.position] = decision
    return out


def missing_predecessor(manifest: Manifest, accepted: Position,
                        known_lost: LostMap | None = None) -> ChainLink | None:
    """The bundle ``manifest`` waits for, or None if it may be applied after ``accepted``.

    ``known_lost`` adds decisions the caller learnt from other verified bundles; the
    manifest's own decisions always count. Links strictly decrease (§6.8), so the walk ends.
    """
    chain = manifest.chain
    if chain is None:
        return None
    lost = dict(known_lost or {})
    lost.update(collect_lost([chain]))
    link = chain.previous
    while link is not None:
        if link.position <= accepted:
            return None
        decision = lost.get(link.position)
        if decision is None:
            return link
        link = decision.previous
    return None


def declared_lost(manifest: Manifest, known_lost: LostMap) -> LostBundle | None:
    """The hub's decision that ``manifest``'s own bundle is lost, if ``known_lost`` has one.

    A decision names the bundle by position and id; both must match.
    """
    decision = known_lost.get((manifest.root_version, manifest.sequence))
    if decision is None or decision.bundle.bundle_id != manifest.bundle_id:
        return None
    return decision
