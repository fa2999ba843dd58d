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

import logging
from typing import Any

from bundle.approvals import manifest_verdict
from bundle.errors import ReleaseFormatError
from bundle.reader import VerifiedBundle
from signing.delegations import ANY_ENVIRONMENT
from signing.envelope import parse_envelope
from signing.errors import SigningError
from signing.roots import MAX_ROOT_BYTES, RootDocument

__all__ = ["check_approvals", "required_here"]

log = logging.getLogger("tiangong.agent")


def check_approvals(environment: str | None, vb: VerifiedBundle
                    ) -> tuple[str, dict[str, Any]] | None:
    """Why this agent must refuse ``vb`` for its approvals — the reason, and the verdict as
    JSON for the signed result (``approvals`` in its body) — or None when it may run.

    ``environment`` is the agent's enrolled one; the root is ``vb``'s trusted root (after the
    updates it carried) and the floor its new time floor.
    """
    try:
        verdict = manifest_verdict(vb.trusted_root.document, environment, vb.manifest,
                                   vb.state.time_floor)
    except ReleaseFormatError as exc:
        return f"its approvals cannot be checked: {exc}", {}
    if verdict.ok and verdict.delegation is not None:
        log.info("bundle %s: approvals checked: %s", vb.manifest.bundle_id, verdict.message)
    return None if verdict.ok else (verdict.message, verdict.to_json())


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
