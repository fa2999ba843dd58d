"""Do a verified bundle's approvals meet what the root requires for this site? Checked before
the bundle is accepted, right after the step check (docs/agent.md, "What is checked before a
bundle is accepted").

The rule is ``signing.approvals.evaluate_approvals`` (the hub applies the same one before
export), fed only with what the agent trusts:

* the delegation of the agent's **own enrolled environment** (``agent.toml``), never the
  environment the bundle names, from the trusted root *after* the root updates the bundle
  carried (a new root may add or tighten a delegation);
* the content hash **recomputed** from the verified manifest (docs/release-format.md §5),
  never the hash the manifest states;
* the release's product, version and author from the verified manifest;
* the new time floor (never the wall clock alone).

An agent enrolled without an environment is judged under the ``"*"`` delegation, and only
approvals for any environment (``"*"``) count for it.

**Inherited approvals (a rollback).** The approvals of a release cover its own undo: the
people who approved it saw what cannot be undone, and its ``down``/``rollback`` scripts are
part of what they approved. A bundle whose own approvals do not meet the delegation is still
accepted when it is *undo-only* — every step an ``undo`` step of one bundle B
(``bundle.approvals.undone_bundle``) — and all of this holds:

* B is in this agent's journal, ran here (succeeded, failed or interrupted) and this agent
  recorded undo data for it (``undo/<B>/``);
* the journal holds B's release digest, recorded when B was accepted;
* no bundle undid B here before, and no later bundle of B's product was accepted since B
  (undoing B then would put back what was there before B over the later release);
* the bundle is of B's product, and each step is exactly the undo of a step of B as B was
  recorded (``bundle.approvals.undo_mismatch``: same connection, same script by SHA-256, …), and
  it carries no file but the scripts of its steps (a ``schedule.toml`` would install jobs
  no approver saw);
* the approvals it carries meet the delegation as approvals of B's release: B's product,
  version and author and the **recorded** digest (``bundle.approvals.inherited_verdict``),
  at the new time floor, against the current root (revoked or expired keys do not count).

Anything else is refused naming what failed. This module reads the verified bundle, the
journal and the undo directory; it changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.executors.undodata import UNDO_RECORD
from agent.journal import Journal
from bundle.approvals import inherited_verdict, manifest_verdict, undo_mismatch, undone_bundle
from bundle.errors import BundleError, ReleaseFormatError
from bundle.manifest import Manifest
from bundle.reader import VerifiedBundle
from bundle.release import content_hash_of_manifest
from signing.delegations import ANY_ENVIRONMENT
from signing.envelope import parse_envelope
from signing.errors import SigningError
from signing.roots import MAX_ROOT_BYTES, RootDocument

__all__ = ["check_approvals", "release_digest", "required_here"]

log = logging.getLogger("tiangong.agent")


RAN_STATES = ("succeeded", "failed", "interrupted")


def release_digest(manifest: Manifest) -> str | None:
    """The content hash of a verified release manifest, recomputed (docs/release-format.md
    §5), as the journal records it at acceptance; None for anything else."""
    if manifest.release is None:
        return None
    try:
        return content_hash_of_manifest(manifest)
    except ReleaseFormatError:
        return None


def check_approvals(environment: str | None, vb: VerifiedBundle, journal: Journal | None = None,
                    undo_root: Path | None = None) -> tuple[str, dict[str, Any]] | None:
    """Why this agent must refuse ``vb`` for its approvals — the reason, and the verdict as
    JSON for the signed result (``approvals`` in its body) — or None when it may run.

    ``environment`` is the agent's enrolled one; the root is ``vb``'s trusted root (after the
    updates it carried) and the floor its new time floor. With ``journal`` and ``undo_root``
    (the agent's), an undo-only bundle may run on the approvals of the bundle it undoes
    (the module's docstring says when).
    """
    try:
        verdict = manifest_verdict(vb.trusted_root.document, environment, vb.manifest,
                                   vb.state.time_floor)
    except ReleaseFormatError as exc:
        return f"its approvals cannot be checked: {exc}", {}
    if verdict.ok:
        if verdict.delegation is not None:
            log.info("bundle %s: approvals checked: %s", vb.manifest.bundle_id,
                     verdict.message)
        return None
    target = undone_bundle(vb.manifest)
    if target is None or journal is None or undo_root is None:
        return verdict.message, verdict.to_json()
    why, inherited = _inherited(environment, vb, target, journal, undo_root)
    if why is None:
        log.info("bundle %s: a rollback of bundle %s, approvals inherited from it: %s",
                 vb.manifest.bundle_id, target, inherited.get("message"))
        return None
    message = (f"{verdict.message}; as an undo-only bundle of bundle {target} it may run on "
               f"that bundle's approvals instead, but {why}")
    return message, {**verdict.to_json(), "message": message,
                     "inherited": {"bundle": target, "refused": why, **inherited}}


def _inherited(environment: str | None, vb: VerifiedBundle, target: str, journal: Journal,
               undo_root: Path) -> tuple[str | None, dict[str, Any]]:
    """(None, the inherited verdict as JSON) when undo-only ``vb`` may run on the approvals
    of bundle ``target``; else (why not, what is known)."""
    rec = journal.bundle(target)
    if rec is None:
        return f"bundle {target} never ran on this agent", {}
    if rec.state not in RAN_STATES or rec.started_at is None:
        return f"bundle {target} never ran on this agent (it is {rec.state})", {}
    if rec.release_digest is None:
        return (f"this agent did not record the release digest of bundle {target} when it "
                "accepted it (an agent older than schema 4)"), {}
    folder = undo_root / target
    try:
        recorded = folder.is_dir() and any((d / UNDO_RECORD).is_file()
                                           for d in folder.iterdir())
    except OSError as exc:
        return f"the undo data of bundle {target} in {folder} cannot be read: {exc}", {}
    if not recorded:
        return f"this agent recorded no undo data for bundle {target}", {}
    first = journal.undone_by(target)
    if first is not None:
        return (f"bundle {target} was already rolled back here by bundle {first.bundle_id} "
                f"({first.state}); another rollback needs its own approvals"), {}
    later = journal.later_of_product(rec)
    if later:
        return (f"bundle {later[0].bundle_id} ({later[0].product} {later[0].version}) was "
                f"accepted here after bundle {target}; undoing {target} now would put back "
                "what was there before it over that later release"), {}
    try:
        original = Manifest.from_json(rec.manifest)
    except BundleError as exc:
        return f"the journal's copy of bundle {target}'s manifest cannot be read: {exc}", {}
    release = vb.manifest.release
    if release is None or original.release is None or \
            release.product != original.release.product:
        theirs = original.release.product if original.release else "no release"
        return (f"it is a release of {release.product if release else 'nothing'} and bundle "
                f"{target} of {theirs}"), {}
    mismatch = undo_mismatch(vb.manifest, original)
    if mismatch is not None:
        return mismatch, {}
    verdict = inherited_verdict(vb.trusted_root.document, environment, vb.manifest, original,
                                rec.release_digest, vb.state.time_floor)
    known = {"release": f"{original.release.product} {original.release.version}",
             "release_digest": rec.release_digest, **{
                 k: v for k, v in verdict.to_json().items() if k != "environment"}}
    if not verdict.ok:
        return (f"its approvals do not count as approvals of {known['release']} (digest "
                f"{rec.release_digest[:16]}…, recorded when bundle {target} was accepted): "
                f"{verdict.message}"), known
    return None, known


def required_here(root_envelope: bytes, environment: str | None) -> str | None:
    """What the trusted root (the journal's, already verified) requires of a bundle before it
    runs here, for ``agent status``: ``2 approvals from 2 groups (signed by approver keys)``,
    or None when nothing is required."""
    try:
        doc = RootDocument.from_bytes(parse_envelope(root_envelope, MAX_ROOT_BYTES).payload)
    except SigningError:
        return None  # the journal's root was verified when stored; status never fails on it
    delegation = doc.delegation(environment or ANY_ENVIRONMENT)
    return None if delegation is None else delegation.describe()
