"""Errors of the bundle package. Every bad-data error names the file and the check that failed.

    BundleError                       (attribute ``check``: short name of the failed check)
    ├── BundleFormatError             container structure: unexpected, missing, extra,
    │   │                             reordered or duplicate member; bad tar header; not a
    │   │                             regular file; trailing garbage                [format]
    │   ├── TruncatedError            the file ends early ("812 MiB of 1.4 GiB present") [truncated]
    │   ├── PartsError                split parts missing, duplicated, foreign or corrupt  [parts]
    │   └── ManifestError             the verified manifest breaks a field rule      [manifest]
    ├── ReleaseFormatError            a release directory / release.toml is invalid   [release]
    ├── BundleSignatureError          envelope malformed, wrong payload type, too few valid
    │                                 signatures                                    [signature]
    ├── TrustUpdateError              a root update carried in the bundle is invalid  [trust]
    ├── KindError                     a result offered as a release or vice versa     [kind]
    ├── MisaddressedError             the bundle is for another agent/environment/hub [target]
    ├── ReplayError                   root version / sequence not newer than accepted [sequence]
    ├── ExpiredError                  expired at the time floor                       [expiry]
    ├── DigestMismatchError           a member's length or SHA-256 differs from the manifest
    │                                                                               [digest]
    ├── LimitExceededError            a named limit is exceeded (size, count, window) [limit]
    ├── DecompressionError            a payload is not a single valid zstd frame      [zstd]
    ├── ApprovalsError                the approvals do not meet the root's delegation for the
    │                                 verifier's environment (after verification) [approvals]
    └── StagingError                  the private staging area is unsafe or unusable  [staging]
        └── InsufficientSpaceError    not enough free space (says how much is needed) [space]

Transport trouble (an unreadable device, a full disk at write time) is ``OSError`` and is not
wrapped: it says nothing about the bundle's validity.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalsError",
    "BundleError",
    "BundleFormatError",
    "BundleSignatureError",
    "DecompressionError",
    "DigestMismatchError",
    "ExpiredError",
    "InsufficientSpaceError",
    "KindError",
    "LimitExceededError",
    "ManifestError",
    "MisaddressedError",
    "PartsError",
    "ReleaseFormatError",
    "ReplayError",
    "StagingError",
    "TruncatedError",
    "TrustUpdateError",
]


class BundleError(Exception):
    """Base of bundle errors. ``check`` names the verification step that failed.
    ``manifest`` is the *verified* manifest (its signature checked) when the refusal came
    from a rule checked after the signature (§9 step 3: kind, target, root, sequence,
    expiry, quotas), so the caller may name the bundle it refused (§9.3); else None."""

    check = "bundle"
    manifest: Any = None


class BundleFormatError(BundleError):
    check = "format"


class TruncatedError(BundleFormatError):
    check = "truncated"


class PartsError(BundleFormatError):
    """Parts of a split bundle are missing or damaged (§8.2). ``damaged`` are the files that
    are present but wrong (a damaged copy, a part of another bundle); ``missing`` the
    indexes of the data parts that have no file. Only these need copying again."""

    check = "parts"

    def __init__(self, message: str, *, damaged: tuple[Any, ...] = (),
                 missing: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.damaged = damaged
        self.missing = missing


class ManifestError(BundleFormatError):
    check = "manifest"


class ReleaseFormatError(BundleError):
    check = "release"


class BundleSignatureError(BundleError):
    check = "signature"


class TrustUpdateError(BundleError):
    check = "trust"


class KindError(BundleError):
    check = "kind"


class MisaddressedError(BundleError):
    check = "target"


class ReplayError(BundleError):
    """Not newer than what was accepted (§9.3 rule 4). ``manifest`` is the *verified*
    manifest (its signature checked), so the caller may name the bundle (§9.7)."""

    check = "sequence"

    def __init__(self, message: str, manifest: Any = None) -> None:
        super().__init__(message)
        self.manifest = manifest


class ExpiredError(BundleError):
    check = "expiry"


class DigestMismatchError(BundleError):
    check = "digest"


class LimitExceededError(BundleError):
    check = "limit"


class DecompressionError(BundleError):
    check = "zstd"


class ApprovalsError(BundleError):
    """The verified bundle lacks the approvals its verifier's environment requires."""

    check = "approvals"


class StagingError(BundleError):
    check = "staging"


class InsufficientSpaceError(StagingError):
    check = "space"
