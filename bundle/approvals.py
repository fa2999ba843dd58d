"""The manifest's optional ``approvals`` field (docs/bundle-format.md §6.10).

A release bundle may carry up to :data:`MAX_MANIFEST_APPROVALS` approval and approval-
attestation envelopes (``signing.approvals``), each written into the manifest as the
strict-JSON envelope object itself. This module only checks their *framing*: canonical
envelopes of one of the two approval payload types, within the size caps, none twice. Whether
they count is decided after the bundle is verified, by ``signing.approvals.evaluate_approvals``
(the agent's approval check); an approval that does not count is never a format error.

:func:`manifest_verdict` applies that rule to a verified manifest for a verifier's own
environment (the agent's approval check, ``bundle verify --environment``).

It does no I/O and keeps each envelope as its exact bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bundle.errors import ManifestError, ReleaseFormatError
from bundle.release import content_hash_of_manifest
from signing.approvals import MAX_APPROVAL_BYTES, ReleaseRef, Verdict, evaluate_approvals
from signing.delegations import ANY_ENVIRONMENT
from signing.envelope import TYPE_APPROVAL, TYPE_APPROVAL_ATTESTATION, parse_envelope
from signing.errors import SignatureError, StrictJSONError
from signing.roots import RootDocument
from signing.strictjson import dumps_canonical, loads_strict

if TYPE_CHECKING:
    from bundle.manifest import Manifest

__all__ = [
    "MAX_APPROVALS_TOTAL_BYTES",
    "MAX_MANIFEST_APPROVALS",
    "approvals_from_json",
    "approvals_to_json",
    "check_approvals",
    "inherited_verdict",
    "manifest_verdict",
    "undo_mismatch",
    "undone_bundle",
]

MAX_MANIFEST_APPROVALS = 32  # envelopes one manifest carries
MAX_APPROVALS_TOTAL_BYTES = 256 * 1024  # bytes of all of them together
_TYPES = (TYPE_APPROVAL, TYPE_APPROVAL_ATTESTATION)


def check_approvals(envelopes: object) -> tuple[bytes, ...]:
    """Check the framing of the ``approvals`` of a manifest being built or parsed.

    Raises:
        ManifestError: not a tuple of bytes, too many or too large, not a canonical envelope
            of an approval payload type, or one envelope listed twice.
    """
    if not isinstance(envelopes, tuple) or not all(isinstance(e, bytes) for e in envelopes):
        raise ManifestError("approvals: must be a list of envelopes")
    if len(envelopes) > MAX_MANIFEST_APPROVALS:
        raise ManifestError(f"approvals: {len(envelopes)} envelopes, over the limit of "
                            f"{MAX_MANIFEST_APPROVALS}")
    total = sum(len(e) for e in envelopes)
    if total > MAX_APPROVALS_TOTAL_BYTES:
        raise ManifestError(f"approvals: {total} bytes, over the limit of "
                            f"{MAX_APPROVALS_TOTAL_BYTES} bytes")
    seen: dict[bytes, int] = {}
    for i, data in enumerate(envelopes):
        try:
            env = parse_envelope(data, MAX_APPROVAL_BYTES)
        except SignatureError as exc:
            raise ManifestError(f"approvals[{i}]: {exc}") from None
        if env.payload_type not in _TYPES:
            raise ManifestError(f"approvals[{i}]: payload type {env.payload_type[:100]!r} is "
                                "not an approval nor an approval attestation")
        if data in seen:
            raise ManifestError(f"approvals[{i}]: the same envelope as approvals[{seen[data]}]")
        seen[data] = i
    return envelopes


def approvals_from_json(value: object) -> tuple[bytes, ...]:
    """The envelopes of the manifest's ``approvals`` value (a list of envelope objects).

    Raises:
        ManifestError: not a list of objects, or see :func:`check_approvals`.
    """
    if not isinstance(value, list):
        raise ManifestError("approvals: must be a list")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ManifestError(f"approvals[{i}]: must be an envelope object")
        try:
            out.append(dumps_canonical(item))
        except StrictJSONError as exc:
            raise ManifestError(f"approvals[{i}]: {exc}") from None
    return check_approvals(tuple(out))


def approvals_to_json(envelopes: Sequence[bytes]) -> list[Any]:
    """The manifest value of ``envelopes``: each envelope's JSON object."""
    return [loads_strict(e, MAX_APPROVAL_BYTES) for e in envelopes]


def manifest_verdict(root: RootDocument, environment: str | None, manifest: Manifest,
                     floor: int) -> Verdict:
    """Do the approvals of the VERIFIED ``manifest`` meet ``root``'s delegation for
    ``environment`` (the verifier's own; None = an agent enrolled without one, held to
    ``"*"``) at time floor ``floor``? The content hash is recomputed from the manifest
    (docs/release-format.md §5), never taken from it.

    Raises:
        ReleaseFormatError: not a release manifest, or its content cannot be hashed.
    """
    if manifest.release is None:
        raise ReleaseFormatError(f"bundle {manifest.bundle_id} is not a release bundle")
    env = environment or ANY_ENVIRONMENT
    if root.delegation(env) is None:
        # Nothing required: no hashing (the common case costs nothing).
        return evaluate_approvals(root, env, ReleaseRef("", "", ""), "", (), floor)
    r = manifest.release
    return evaluate_approvals(root, env, ReleaseRef(r.product, r.version, r.author),
                              content_hash_of_manifest(manifest), manifest.approvals, floor)


# ---- approvals inherited by a rollback (docs/bundle-format.md §6.10.1) ----------------------

#: Keys of an ``undo`` step that decide what it runs; each must be the original step's.
_UNDO_RUN_KEYS = ("connection", "engine", "interpreter", "env", "args", "secrets_via")


def undone_bundle(manifest: Manifest) -> str | None:
    """The one bundle every step of release ``manifest`` undoes, when the manifest is
    *undo-only* (at least one step, every step of kind ``undo``, all naming the same bundle,
    not itself); else None."""
    steps = manifest.steps
    if manifest.release is None or not steps:
        return None
    targets = {step.get("bundle") for step in steps if step.get("kind") == "undo"}
    if len(targets) != 1 or any(step.get("kind") != "undo" for step in steps):
        return None
    target = next(iter(targets))
    if not isinstance(target, str) or target == manifest.bundle_id:
        return None
    return target


def _expected_undo(step: Mapping[str, Any], files: Mapping[str, str]
                   ) -> tuple[dict[str, Any], str | None, str | None]:
    """What the undo of normalized ``step`` runs with (:func:`_runs_with`), the SHA-256 of
    the script it runs (None: none) and, when a rollback does not undo such a step, why."""
    kind = step.get("kind")
    if kind == "k8s":
        return {"connection": step.get("connection"), "secrets": []}, None, None
    if kind == "sql" and isinstance(step.get("down"), str):
        return ({"connection": step.get("connection"), "engine": step.get("engine"),
                 "secrets": list(step.get("secrets") or [])},
                files.get(step["down"], "?"), None)
    if kind == "shell" and isinstance(step.get("rollback"), str):
        return (_runs_with({**{k: step.get(k) for k in ("interpreter", "env", "args",
                                                          "secrets_via")},
                            "secrets": step.get("secrets")}),
                files.get(step["rollback"], "?"), None)
    if kind in ("file", "sql", "shell"):  # a sql or shell one says "cannot be undone"
        return {"secrets": []}, None, None
    return {}, None, f"it is a {kind} step, which a rollback does not undo"


def _runs_with(step: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of an undo step that decide what it runs, with the executor's defaults."""
    out = {key: step[key] for key in _UNDO_RUN_KEYS if key in step}
    if "interpreter" in out:
        out.setdefault("env", {})
        out.setdefault("args", [])
        out.setdefault("secrets_via", "env")
    out["secrets"] = list(step.get("secrets") or [])
    return out


def undo_mismatch(manifest: Manifest, original: Manifest) -> str | None:
    """Why the steps of undo-only ``manifest`` are not exactly undo steps of ``original``
    (the bundle they name, as this verifier recorded it), or None when they are: each names
    a step of ``original`` at most once, and runs what that step's undo runs — the same
    connection, the same ``down``/``rollback`` script (by SHA-256), engine or interpreter,
    env, args, secrets — and nothing else; and it carries no file but those scripts."""
    files = {f.name: f.sha256 for f in manifest.files}
    original_files = {f.name: f.sha256 for f in original.files}
    of = f"bundle {original.bundle_id}"
    # Only the scripts its steps run: any other file (a schedule.toml, say) would act on
    # the approvals of a release that never held it.
    unused = sorted(set(files) - {str(step["script"]) for step in manifest.steps
                                  if "script" in step})
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5
                                         else "")
        return (f"it carries {shown}, which none of its undo steps runs (an undo-only bundle "
                "carries only the scripts of its steps)")
    seen: set[int] = set()
    for index, step in enumerate(manifest.steps, start=1):
        number = step.get("step")
        where = f"step {index} ({str(step.get('name'))[:100]!r})"
        if not isinstance(number, int) or not 1 <= number <= len(original.steps):
            return f"{where} undoes step {number} of {of}, which has {len(original.steps)} step(s)"
        if number in seen:
            return f"{where} undoes step {number} of {of} a second time"
        seen.add(number)
        run, script, refused = _expected_undo(original.steps[number - 1], original_files)
        if refused is not None:
            return f"{where} undoes step {number} of {of}, but {refused}"
        if _runs_with(step) != run:
            return (f"{where} is not the undo of step {number} of {of}: it runs with other "
                    "settings than that step (connection, engine, interpreter, env, args or "
                    "secrets)")
        given = files.get(str(step["script"])) if "script" in step else None
        if given != script:
            what = "down" if original.steps[number - 1].get("kind") == "sql" else "rollback"
            return (f"{where} is not the undo of step {number} of {of}: "
                    + (f"it runs a script that is not that step's {what} script (SHA-256 "
                       "differs)" if script is not None else "that step has nothing to run "
                       "back, but it carries a script"))
    return None


def inherited_verdict(root: RootDocument, environment: str | None, manifest: Manifest,
                      original: Manifest, original_digest: str, floor: int) -> Verdict:
    """Do the approvals ``manifest`` carries meet ``root``'s delegation for ``environment``
    as approvals of ``original``'s release — its product, version and author, and
    ``original_digest``, the content hash the verifier recorded when it accepted
    ``original`` — at time floor ``floor``?

    Raises:
        ReleaseFormatError: ``original`` is not a release manifest.
    """
    if original.release is None:
        raise ReleaseFormatError(f"bundle {original.bundle_id} is not a release bundle")
    r = original.release
    return evaluate_approvals(root, environment or ANY_ENVIRONMENT,
                              ReleaseRef(r.product, r.version, r.author), original_digest,
                              manifest.approvals, floor)
