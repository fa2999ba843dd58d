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

This module only reads the verified bundle; it does not touch files or the journal.
"""

from __future__ import annotations

from bundle.errors import ReleaseFormatError
from bundle.reader import VerifiedBundle
from bundle.release import content_hash_of_manifest
from signing.approvals import ReleaseRef, Verdict, evaluate_approvals
from signing.delegations import ANY_ENVIRONMENT

__all__ = ["approval_verdict", "check_approvals"]


def approval_verdict(environment: str | None, vb: VerifiedBundle) -> Verdict:
    """The verdict on ``vb``'s approvals for an agent enrolled in ``environment``.

    Raises:
        ReleaseFormatError: ``vb`` is not a release bundle, or its content cannot be hashed.
    """
    m = vb.manifest
    if m.release is None:
        raise ReleaseFormatError(f"bundle {m.bundle_id} is not a release bundle")
    root = vb.trusted_root.document
    env = environment or ANY_ENVIRONMENT
    if root.delegation(env) is None:
        # Nothing required: skip hashing (the common case costs nothing).
        return evaluate_approvals(root, env, ReleaseRef("", "", ""), "", (), 0)
    return evaluate_approvals(
        root, env, ReleaseRef(m.release.product, m.release.version, m.release.author),
        content_hash_of_manifest(m), m.approvals, vb.state.time_floor)


def check_approvals(environment: str | None, vb: VerifiedBundle) -> str | None:
    """The reason this agent must refuse ``vb`` for its approvals, or None when it may run."""
    try:
        verdict = approval_verdict(environment, vb)
    except ReleaseFormatError as exc:
        return f"its approvals cannot be checked: {exc}"
    return None if verdict.ok else verdict.message
