"""Tiangong bundles: the signed container, its writer and its streaming verifier.

The format is specified in ``docs/bundle-format.md``; modules cite its sections.

* Writing: :func:`write_bundle` (generic: a manifest and payload files),
  :func:`release_manifest` (the manifest of a release bundle), :func:`join_parts`,
  :func:`split_bundle`, :func:`verify_written` (export re-reads what it wrote).
* Verifying: :func:`verify_path`, :func:`verify_parts` and the stream core
  :func:`verify_bundle`, with :class:`VerifierState`, :class:`ExpectRelease` /
  :class:`ExpectResult`, returning a :class:`VerifiedBundle`.
* Looking without trust: :func:`inspect_bundle` (``bundle.inspect.inspect``) and
  :func:`read_manifest_unverified` — display only.
* The model and the knobs: :class:`Manifest` and its parts, :class:`Limits`; every error is
  a :class:`BundleError` with a ``check`` name (``bundle.errors``).

Release directories (``release.toml``) are loaded by ``bundle.release``.

The names below are imported from their modules on first use (``from bundle import
verify_path``), so that importing one small module (``bundle.crashhook``, ``bundle.errors``)
does not import the writer, the reader and the manifest model with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bundle.errors import (
        BundleError,
        BundleFormatError,
        BundleSignatureError,
        DecompressionError,
        DigestMismatchError,
        ExpiredError,
        InsufficientSpaceError,
        KindError,
        LimitExceededError,
        ManifestError,
        MisaddressedError,
        PartsError,
        ReleaseFormatError,
        ReplayError,
        StagingError,
        TruncatedError,
        TrustUpdateError,
    )
    from bundle.inspect import (
        InspectedBundle,
        inspect_stream,
        read_manifest_unverified,
        verify_written,
    )
    from bundle.inspect import inspect as inspect_bundle
    from bundle.limits import DEFAULT_LIMITS, Limits
    from bundle.manifest import (
        FORMAT,
        KIND_RELEASE,
        KIND_RESULT,
        Approval,
        FileEntry,
        Manifest,
        PartDigest,
        PartsInfo,
        ReleaseInfo,
        ResultInfo,
        SecretEntry,
        Target,
    )
    from bundle.parts import DEFAULT_SPLIT_SIZE, join_parts, part_path, split_bundle
    from bundle.reader import (
        ExpectRelease,
        ExpectResult,
        VerifiedBundle,
        VerifierState,
        system_clock,
        verify_bundle,
        verify_parts,
        verify_path,
    )
    from bundle.writer import (
        DEFAULT_LEVEL,
        PayloadFile,
        WrittenBundle,
        release_manifest,
        write_bundle,
    )

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_LIMITS",
    "DEFAULT_SPLIT_SIZE",
    "FORMAT",
    "KIND_RELEASE",
    "KIND_RESULT",
    "Approval",
    "BundleError",
    "BundleFormatError",
    "BundleSignatureError",
    "DecompressionError",
    "DigestMismatchError",
    "ExpectRelease",
    "ExpectResult",
    "ExpiredError",
    "FileEntry",
    "InspectedBundle",
    "InsufficientSpaceError",
    "KindError",
    "LimitExceededError",
    "Limits",
    "Manifest",
    "ManifestError",
    "MisaddressedError",
    "PartDigest",
    "PartsError",
    "PartsInfo",
    "PayloadFile",
    "ReleaseFormatError",
    "ReleaseInfo",
    "ReplayError",
    "ResultInfo",
    "SecretEntry",
    "StagingError",
    "Target",
    "TruncatedError",
    "TrustUpdateError",
    "VerifiedBundle",
    "VerifierState",
    "WrittenBundle",
    "inspect_bundle",
    "inspect_stream",
    "join_parts",
    "part_path",
    "read_manifest_unverified",
    "release_manifest",
    "split_bundle",
    "system_clock",
    "verify_bundle",
    "verify_parts",
    "verify_path",
    "verify_written",
    "write_bundle",
]

#: Each public name: (the module that defines it, its name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    "Approval": ("bundle.manifest", "Approval"),
    "BundleError": ("bundle.errors", "BundleError"),
    "BundleFormatError": ("bundle.errors", "BundleFormatError"),
    "BundleSignatureError": ("bundle.errors", "BundleSignatureError"),
    "DEFAULT_LEVEL": ("bundle.writer", "DEFAULT_LEVEL"),
    "DEFAULT_LIMITS": ("bundle.limits", "DEFAULT_LIMITS"),
    "DEFAULT_SPLIT_SIZE": ("bundle.parts", "DEFAULT_SPLIT_SIZE"),
    "DecompressionError": ("bundle.errors", "DecompressionError"),
    "DigestMismatchError": ("bundle.errors", "DigestMismatchError"),
    "ExpectRelease": ("bundle.reader", "ExpectRelease"),
    "ExpectResult": ("bundle.reader", "ExpectResult"),
    "ExpiredError": ("bundle.errors", "ExpiredError"),
    "FORMAT": ("bundle.manifest", "FORMAT"),
    "FileEntry": ("bundle.manifest", "FileEntry"),
    "InspectedBundle": ("bundle.inspect", "InspectedBundle"),
    "InsufficientSpaceError": ("bundle.errors", "InsufficientSpaceError"),
    "KIND_RELEASE": ("bundle.manifest", "KIND_RELEASE"),
    "KIND_RESULT": ("bundle.manifest", "KIND_RESULT"),
    "KindError": ("bundle.errors", "KindError"),
    "LimitExceededError": ("bundle.errors", "LimitExceededError"),
    "Limits": ("bundle.limits", "Limits"),
    "Manifest": ("bundle.manifest", "Manifest"),
    "ManifestError": ("bundle.errors", "ManifestError"),
    "MisaddressedError": ("bundle.errors", "MisaddressedError"),
    "PartDigest": ("bundle.manifest", "PartDigest"),
    "PartsError": ("bundle.errors", "PartsError"),
    "PartsInfo": ("bundle.manifest", "PartsInfo"),
    "PayloadFile": ("bundle.writer", "PayloadFile"),
    "ReleaseFormatError": ("bundle.errors", "ReleaseFormatError"),
    "ReleaseInfo": ("bundle.manifest", "ReleaseInfo"),
    "ReplayError": ("bundle.errors", "ReplayError"),
    "ResultInfo": ("bundle.manifest", "ResultInfo"),
    "SecretEntry": ("bundle.manifest", "SecretEntry"),
    "StagingError": ("bundle.errors", "StagingError"),
    "Target": ("bundle.manifest", "Target"),
    "TruncatedError": ("bundle.errors", "TruncatedError"),
    "TrustUpdateError": ("bundle.errors", "TrustUpdateError"),
    "VerifiedBundle": ("bundle.reader", "VerifiedBundle"),
    "VerifierState": ("bundle.reader", "VerifierState"),
    "WrittenBundle": ("bundle.writer", "WrittenBundle"),
    "inspect_bundle": ("bundle.inspect", "inspect"),
    "inspect_stream": ("bundle.inspect", "inspect_stream"),
    "join_parts": ("bundle.parts", "join_parts"),
    "part_path": ("bundle.parts", "part_path"),
    "read_manifest_unverified": ("bundle.inspect", "read_manifest_unverified"),
    "release_manifest": ("bundle.writer", "release_manifest"),
    "split_bundle": ("bundle.parts", "split_bundle"),
    "system_clock": ("bundle.reader", "system_clock"),
    "verify_bundle": ("bundle.reader", "verify_bundle"),
    "verify_parts": ("bundle.reader", "verify_parts"),
    "verify_path": ("bundle.reader", "verify_path"),
    "verify_written": ("bundle.inspect", "verify_written"),
    "write_bundle": ("bundle.writer", "write_bundle"),
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562).

    Raises:
        AttributeError: ``name`` is not a public name of the package.
    """
    spec = _EXPORTS.get(name)
    if spec is None:
        raise AttributeError(f"module 'bundle' has no attribute {name!r}")
    value = getattr(importlib.import_module(spec[0]), spec[1])
    globals()[name] = value
    return value
