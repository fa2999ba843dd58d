"""What a release bundle carries to prove its approvals, and the check before export.

:func:`bundle_approvals` is called by the export (:mod:`hub.services.export`) while it
claims a deployment, before a sequence is allocated. It gathers every stored approval
envelope of the release covering the target environment (:func:`hub.services.approvals.
envelopes_for`); when the current root delegates that environment in mode ``hub``, it adds
a fresh attestation signed by the hub's approval key (``keys/approval.key``) listing the
approvers the hub's own rule counts (:func:`hub.services.approval_rules.check_rule`). Then
it runs the agent's own rule, ``signing.approvals.evaluate_approvals``, against the root's
delegation for the target environment, and refuses with the very message a site would give
when it is not met — so the export uses no sequence and writes nothing.

A rollback release approved by inheritance (``Release.approvals_from``, a rollout's
automatic rollback) also carries the envelopes — and, in mode ``hub``, an attestation — of
the release it undoes, checked against that release (an attestation names only the
approvers of the release it is about, never inherited ones): a site accepts them only for
an undo-only bundle of a bundle it ran (agent.approvalcheck, docs/security.md threat 18).

This module does not decide the hub's own approval rules (``approval_rules``) and does not
write bundles.
"""

from __future__ import annotations

from hub.db import Approval, Environment, Release
from hub.errors import ConfigError, NotEnoughApprovalsError
from hub.services.approval_rules import assign_groups, check_rule, counted_approvals
from hub.services.approvals import envelopes_for
from hub.services.context import ServiceContext
from signing.approvals import (
    MAX_ATTESTED_APPROVERS,
    MAX_ATTESTED_COMMENT_CHARS,
    AttestationDocument,
    AttestedApprover,
    ReleaseRef,
    Verdict,
    evaluate_approvals,
    peek_approval,
    sign_attestation,
)
from signing.errors import SigningError

__all__ = ["MAX_BUNDLE_APPROVALS", "NO_GROUP", "approvals_hold_until", "attestation_for",
           "bundle_approvals", "verdict_for"]

MAX_BUNDLE_APPROVALS = 32  # envelopes one manifest carries (docs/bundle-format.md §6)
NO_GROUP = "none"  # the group an attestation names for an approver in no group


def attestation_for(
    ctx: ServiceContext, release: Release, env: Environment, *, issued: int, expires: int
) -> bytes | None:
    """An attestation of the approvers the hub's rule counts for ``env``, signed by the
    hub's approval key; None when nobody approved.

    Raises:
        ConfigError: the hub has no approval key (``tiangong hub keys approval-key``).
    """
    keys = ctx.keys
    if keys is None or keys.approval_key is None:
        raise ConfigError(
            f"environment {env.name} takes hub-attested approvals but the hub's approval "
            "key keys/approval.key is not loaded; create it with `tiangong hub keys "
            "approval-key` and list keys/approval.pub in the root's approval role"
        )
    check = check_rule(release, env, now=ctx.now(), inherited=False)  # its own approvers
    if not check.approvers:
        return None
    groups = assign_groups([g for _, g in check.approvers])
    first: dict[str, Approval] = {}
    for a in counted_approvals(release, env, ctx.now()):
        first.setdefault(a.approver.username, a)
    people = []
    pairs = list(zip(check.approvers, groups, strict=True))
    for (name, own), group in pairs[:MAX_ATTESTED_APPROVERS]:
        approval = first[name]
        people.append(AttestedApprover(
            name=name,
            group=group or (own[0] if own else NO_GROUP),
            at=min(int(approval.at.timestamp()), issued),
            comment=approval.comment[:MAX_ATTESTED_COMMENT_CHARS],
        ))
    doc = AttestationDocument(
        product=release.product.name,
        version=release.version,
        content_hash=release.content_hash,
        environments=(env.name,),
        approvers=tuple(people),
        issued=issued,
        expires=expires,
    )
    return sign_attestation(doc, [keys.approval_key])


def verdict_for(
    ctx: ServiceContext, release: Release, env: Environment, envelopes: list[bytes], floor: int
) -> Verdict:
    """The site's verdict on ``envelopes`` for ``env`` under the hub's current root."""
    assert ctx.keys is not None
    return evaluate_approvals(
        ctx.keys.root,
        env.name,
        ReleaseRef(release.product.name, release.version, release.author.username),
        release.content_hash,
        envelopes,
        floor,
    )


def bundle_approvals(
    ctx: ServiceContext, release: Release, env: Environment, *, created: int, expires: int
) -> list[bytes]:
    """The approval envelopes a bundle of ``release`` for ``env`` carries (at most
    :data:`MAX_BUNDLE_APPROVALS`, the newest kept), after checking they satisfy the root's
    delegation for ``env`` as an agent would at time ``created``.

    Raises:
        NotEnoughApprovalsError: the site would refuse the bundle (the agent's message).
        ConfigError: hub-attested mode without the hub's approval key.
    """
    assert ctx.keys is not None
    # A rollback approved by inheritance carries its own approvals (if people gave some) and
    # those of the release it undoes, which a site judges against that release's ref and
    # content hash (agent.approvalcheck); either may satisfy the delegation.
    sources = [release] + ([release.approvals_from] if release.approvals_from is not None
                           else [])
    delegation = ctx.keys.root.delegation(env.name)
    envelopes: list[bytes] = []
    for source in sources:
        envelopes += envelopes_for(source, env)
        if delegation is not None and delegation.mode == "hub":
            attestation = attestation_for(ctx, source, env, issued=created, expires=expires)
            if attestation is not None:
                envelopes.append(attestation)
    envelopes = envelopes[-MAX_BUNDLE_APPROVALS:]
    if delegation is None:
        return envelopes
    verdicts = [verdict_for(ctx, source, env, envelopes, created) for source in sources]
    verdict = next((v for v in verdicts if v.ok), verdicts[-1])
    if not verdict.ok:
        raise NotEnoughApprovalsError(
            f"release {release.label} cannot go to {env.name}: root version "
            f"{ctx.keys.root.version} requires approvals that a site would not find — "
            f"{verdict.message}"
        )
    return envelopes


def approvals_hold_until(ctx: ServiceContext, release: Release, env: Environment,
                         envelopes: list[bytes], created: int, expires: int) -> int:
    """The latest time, at most ``expires``, at which ``envelopes`` still meet the current
    root's delegation for ``env`` as a site judges them: a bundle valid longer than its
    approvals would be refused at a site it reached late, for an expired approval, after
    the hub said it would be accepted. ``expires`` itself when nothing is required."""
    assert ctx.keys is not None
    if ctx.keys.root.delegation(env.name) is None:
        return expires
    ends: set[int] = set()
    for envelope in envelopes:
        try:
            ends.add(peek_approval(envelope)[1].expires)
        except (SigningError, ValueError):
            continue  # an envelope that does not parse never counted
    sources = [release] + ([release.approvals_from] if release.approvals_from is not None
                           else [])
    for end in sorted(e for e in ends if created < e <= expires):
        # At ``end`` the approvals expiring then no longer count (expires <= time floor).
        if not any(verdict_for(ctx, source, env, envelopes, end).ok for source in sources):
            return end - 1
    return expires
