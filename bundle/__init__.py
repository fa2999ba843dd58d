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
"""

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
from bundle.inspect import InspectedBundle, inspect_stream, read_manifest_unverified, verify_written
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
from bundle.writer import DEFAULT_LEVEL, PayloadFile, WrittenBundle, release_manifest, write_bundle

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
