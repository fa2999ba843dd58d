"""The streaming verifier (docs/bundle-format.md §9): authenticate, parse, then stage.

The core, :func:`verify_bundle`, reads a byte source once, front to back, in the order of
docs/security.md and §9 — structure, trust and signature, manifest rules (kind, target, root
version, sequence, expiry, quotas, free space), then each payload: copied into private staging
while hashed, then decompressed with a window cap and hashed again. Memory stays bounded (1 MiB
buffers; a payload is never held whole unless it is at most 1 MiB compressed); staging itself
is ``bundle.staging``. :func:`verify_path` and :func:`verify_parts` are thin wrappers that open
files. :func:`check_bundle` runs every check of :func:`verify_bundle` on a bundle whose
payloads are each at most 1 MiB compressed without staging anything (for a caller that wants
only the verdict and the manifest: the hub importing a result).

The verifier never persists anything and never mutates its inputs: it returns a
:class:`VerifiedBundle` with the updated trusted root and the new :class:`VerifierState`; the
caller (the agent's journal) persists them atomically *before* acting on the bundle. On any
failure it removes everything it staged and raises the specific
:class:`~bundle.errors.BundleError`. Before the signature is verified, messages say only what is
wrong with the container or the signature, never what the unverified manifest claims.

Looking at a bundle without verifying it is ``bundle.inspect``, never this module.

This module does not run, decrypt or interpret payloads, and does not open sockets.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from bundle.container import (
    END_OF_ARCHIVE,
    ByteSource,
    ContainerReader,
    read_head,
)
from bundle.container import (
    member_span as _span,
)
from bundle.errors import (
    BundleError,
    BundleFormatError,
    BundleSignatureError,
    ExpiredError,
    InsufficientSpaceError,
    KindError,
    LimitExceededError,
    ManifestError,
    MisaddressedError,
    PartsError,
    ReplayError,
    TruncatedError,
    TrustUpdateError,
)
from bundle.inspect import InspectedBundle, inspect, inspect_stream
from bundle.limits import DEFAULT_LIMITS, Limits, format_bytes
from bundle.manifest import KIND_PLAN, KIND_RELEASE, KIND_RESULT, Manifest
from bundle.parts import (
    MAX_PARTS,
    PartsSource,
    assign_parts,
    find_first_part,
    strip_part_suffix,
)
from bundle.printable import printable
from bundle.staging import BUFFER_BYTES, FILES_DIR, Stager, staged_name
from signing.envelope import (
    TYPE_PLAN,
    TYPE_RELEASE,
    TYPE_RESULT,
    parse_envelope,
    verify_envelope,
)
from signing.errors import ExpiredError as RootExpiredError
from signing.errors import PayloadTypeError, SignatureError, SigningError, StrictJSONError
from signing.fileio import open_regular
from signing.keys import PublicKey
from signing.roots import MAX_ROOT_BYTES, RootDocument, TrustedRoot
from signing.strictjson import loads_strict

# ``inspect``, ``inspect_stream`` and ``InspectedBundle`` live in ``bundle.inspect`` and do NOT
# verify anything; they are re-exported here only for callers that import them from the reader.
__all__ = [
    "AdmitFn",
    "CheckedBundle",
    "Clock",
    "ExpectPlan",
    "ExpectRelease",
    "ExpectResult",
    "Expectation",
    "InspectedBundle",
    "ProgressFn",
    "VerifiedBundle",
    "VerifierState",
    "check_bundle",
    "inspect",
    "inspect_stream",
    "staging_needed",
    "system_clock",
    "verify_bundle",
    "verify_parts",
    "verify_path",
]

Clock = Callable[[], int]
#: ``progress(phase, done, total)``; the verifier reports phase ``"stage"`` (compressed
#: bytes copied plus content bytes written, over the sum of both).
ProgressFn = Callable[[str, int, int], None]
#: ``admit(manifest)``: the caller's last word before payload bytes are read (§9.7).
AdmitFn = Callable[[Manifest], None]


def system_clock() -> int:
    """Wall-clock time in integer Unix seconds."""
    return int(time.time())


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def staging_needed(m: Manifest, limits: Limits = DEFAULT_LIMITS) -> int:
    """Bytes of free staging space a verified manifest needs (§9.3 rule 8): the content of
    every payload, the largest compressed member over 1 MiB (the spool) and the reserve."""
    biggest = max((f.compressed_size for f in m.files if f.compressed_size > BUFFER_BYTES),
                  default=0)
    return m.total_size + biggest + limits.staging_reserve_bytes


def _utc(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t} (Unix seconds)"


# -- inputs and outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class VerifierState:
    """What the caller accepted last (§9.3): persist the returned one before acting.

    A bundle is accepted only if ``(root_version, sequence)`` is greater than the state's;
    ``time_floor`` (Unix seconds) never goes backwards.
    """

    root_version: int = 0
    sequence: int = 0
    time_floor: int = 0

    def __post_init__(self) -> None:
        for name in ("root_version", "sequence", "time_floor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"VerifierState.{name} must be a non-negative integer")


@dataclass(frozen=True)
class ExpectRelease:
    """An agent verifying a release bundle: its id and, if it has one, its environment."""

    agent_id: str
    environment: str | None = None


@dataclass(frozen=True)
class ExpectPlan(ExpectRelease):
    """An agent verifying a plan (preflight) bundle (§6.11): checked exactly like a release
    bundle — release role, target, root version, expiry — but of payload type and kind
    ``plan``, against the caller's *plan* state (its own sequence space)."""


@dataclass(frozen=True)
class ExpectResult:
    """The hub verifying a result bundle: its hub id, and the agent's id and public key."""

    hub_id: str
    agent_id: str
    agent_key: PublicKey


Expectation = ExpectRelease | ExpectPlan | ExpectResult


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check, staged under ``staged_dir``.

    ``files`` maps each logical name to its staged file. ``trusted_root`` is the root after
    the updates the bundle carried (``root_updates``, in order); ``state`` is the new state.
    Persist ``root_updates`` and ``state`` atomically before acting. ``not_before`` is
    returned, not enforced: the caller waits until then.
    """

    manifest: Manifest
    envelope: bytes
    envelope_sha256: str
    signer_key_ids: frozenset[str]
    staged_dir: Path
    files: Mapping[str, Path]
    trusted_root: TrustedRoot
    root_updates: tuple[bytes, ...]
    state: VerifierState
    not_before: int | None


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle that passed every check of :func:`check_bundle`, with nothing staged: the
    fields of :class:`VerifiedBundle` without the staged paths."""

    manifest: Manifest
    envelope: bytes
    envelope_sha256: str
    signer_key_ids: frozenset[str]
    trusted_root: TrustedRoot
    root_updates: tuple[bytes, ...]
    state: VerifierState
    not_before: int | None


# -- the verifier -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Authentic:
    """Steps 1–3 done: a verified, checked manifest and everything needed to stage it."""

    manifest: Manifest
    envelope: bytes
    envelope_sha256: str
    signers: frozenset[str]
    root: TrustedRoot
    updates: tuple[bytes, ...]
    state: VerifierState
    head_size: int
    data_size: int


class _Verifier:
    def __init__(
        self,
        *,
        label: str,
        trusted_root: TrustedRoot,
        state: VerifierState,
        expect: Expectation,
        staging_dir: Path,
        limits: Limits,
        clock: Clock,
        progress: ProgressFn | None,
        disk_free: Callable[[Path], int],
        durable: bool = True,
        keep: bool = True,
    ) -> None:
        self.durable = durable
        self.keep = keep
        self.label = label
        self.trusted_root = trusted_root
        self.state = state
        self.expect = expect
        self.staging_dir = Path(staging_dir)
        self.limits = limits
        self.clock = clock
        self.progress = progress
        self.disk_free = disk_free

    def _err(self, text: str) -> str:
        return f"bundle {self.label}: {text}"

    # -- steps 1–3: before any payload byte ---------------------------------------------

    def authenticate(self, reader: ContainerReader) -> _Authentic:
        """§9 steps 1–3."""
        head = read_head(reader, max_roots_bytes=self.limits.max_roots_bytes,
                         max_envelope_bytes=self.limits.max_envelope_bytes)
        floor = max(self.state.time_floor, int(self.clock()))
        updates: tuple[bytes, ...]
        if isinstance(self.expect, ExpectResult):
            # A result is signed by the agent's own key; it carries no trust (§5.2).
            if head.roots != b"[]":
                raise TrustUpdateError(self._err("a result bundle cannot carry root updates"))
            root, updates = self.trusted_root, ()
        else:
            root, updates = self._apply_roots(head.roots, floor)
        verified_payload, signers = self._verify_signature(head.envelope, root, floor)
        try:
            manifest = Manifest.from_bytes(verified_payload, self.limits.max_envelope_bytes)
        except ManifestError as exc:
            raise ManifestError(self._err(f"manifest {exc}")) from exc
        try:
            new_state = self._check_manifest(manifest, root, signers, floor)
        except BundleError as exc:
            if exc.manifest is None:  # signed: the refusal may name the bundle (§9.3)
                exc.manifest = manifest
            raise
        data_size = sum(_span(f.compressed_size) for f in manifest.files) + len(END_OF_ARCHIVE)
        if manifest.parts is not None and manifest.parts.data_bytes != data_size:
            raise ManifestError(self._err(
                f"manifest parts cover {manifest.parts.data_bytes} bytes, but the payload "
                f"members take {data_size}"))
        return _Authentic(
            manifest=manifest,
            envelope=head.envelope,
            envelope_sha256=hashlib.sha256(head.envelope).hexdigest(),
            signers=signers,
            root=root,
            updates=updates,
            state=new_state,
            head_size=head.size,
            data_size=data_size,
        )

    def _apply_roots(self, data: bytes, floor: int) -> tuple[TrustedRoot, tuple[bytes, ...]]:
        """§5.2: apply the carried root updates in memory, then require a current root."""
        try:
            value = loads_strict(data, self.limits.max_roots_bytes)
        except StrictJSONError as exc:
            raise TrustUpdateError(self._err(f"roots.json is not strict JSON: {exc}")) from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TrustUpdateError(self._err("roots.json must be a list of base64 strings"))
        if len(value) > self.limits.max_roots:
            raise LimitExceededError(self._err(
                f"roots.json holds {len(value)} root documents, over the max_roots limit of "
                f"{self.limits.max_roots}"))
        current = self.trusted_root
        applied: list[bytes] = []
        previous: int | None = None
        for i, text in enumerate(value):
            try:
                raw = base64.b64decode(text.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
                raise TrustUpdateError(self._err(f"roots.json entry {i} is not base64")) from exc
            if base64.b64encode(raw).decode("ascii") != text or len(raw) > MAX_ROOT_BYTES:
                raise TrustUpdateError(self._err(
                    f"roots.json entry {i} is not canonical base64 or is over "
                    f"{format_bytes(MAX_ROOT_BYTES)}"))
            try:
                # The version is read only to skip roots already trusted; every root that is
                # applied is verified by TrustedRoot.update before it is used.
                env = parse_envelope(raw, MAX_ROOT_BYTES)
                version = RootDocument.from_bytes(env.payload).version
            except SigningError as exc:
                raise TrustUpdateError(
                    self._err(f"roots.json entry {i} is malformed: {exc}")
                ) from exc
            if previous is not None and version != previous + 1:
                raise TrustUpdateError(self._err(
                    f"roots.json must list consecutive root versions; entry {i} is version "
                    f"{version} after {previous}"))
            previous = version
            if version <= current.version:
                continue
            try:
                current = current.update(raw)
            except SigningError as exc:
                raise TrustUpdateError(self._err(
                    f"the update to root version {version} is not valid: {exc}")) from exc
            applied.append(raw)
        try:
            current.check_current(floor)
        except RootExpiredError as exc:
            raise ExpiredError(self._err(f"{exc} (time floor {_utc(floor)})")) from exc
        return current, tuple(applied)

    def _verify_signature(
        self, envelope: bytes, root: TrustedRoot, floor: int
    ) -> tuple[bytes, frozenset[str]]:
        """§9 step 2: the signature over the exact envelope bytes, by the right role."""
        keys: Mapping[str, PublicKey]
        if isinstance(self.expect, ExpectRelease):
            payload_type = TYPE_PLAN if isinstance(self.expect, ExpectPlan) else TYPE_RELEASE
            role = root.role_keys("release", floor)
            keys, threshold = role.keys, role.threshold
            if not keys:
                raise BundleSignatureError(self._err(
                    f"trusted root version {root.version} has no usable release key (all "
                    "expired or revoked); deliver a new root or new keys"))
        else:
            payload_type = TYPE_RESULT
            keys, threshold = {self.expect.agent_key.key_id: self.expect.agent_key}, 1
        try:
            verified = verify_envelope(envelope, payload_type=payload_type, trusted=keys,
                                       threshold=threshold,
                                       max_bytes=self.limits.max_envelope_bytes)
        except PayloadTypeError as exc:
            raise KindError(self._err(f"signature verification failed: {exc}")) from exc
        except SignatureError as exc:
            raise BundleSignatureError(self._err(f"signature verification failed: {exc}")) from exc
        return verified.payload, verified.signer_key_ids

    def _check_manifest(
        self, m: Manifest, root: TrustedRoot, signers: frozenset[str], floor: int
    ) -> VerifierState:
        """§9 step 3: every rule that needs no payload byte, in the documented order."""
        want = (KIND_PLAN if isinstance(self.expect, ExpectPlan)
                else KIND_RELEASE if isinstance(self.expect, ExpectRelease) else KIND_RESULT)
        if m.kind != want:
            raise KindError(self._err(f"it is a {m.kind} bundle, expected a {want} bundle"))
        if m.issuer not in signers:
            raise BundleSignatureError(
                self._err("the issuer named in the manifest did not sign it")
            )
        self._check_target(m)
        if isinstance(self.expect, ExpectRelease):
            if m.root_version < root.version:
                raise ReplayError(self._err(
                    f"it was signed under root version {m.root_version}, but root version "
                    f"{root.version} is trusted now; export it again"))
            if m.root_version > root.version:
                raise TrustUpdateError(self._err(
                    f"it was made for root version {m.root_version}, but only version "
                    f"{root.version} is trusted and the bundle carries no update to it"))
        if (m.root_version, m.sequence) <= (self.state.root_version, self.state.sequence):
            if m.root_version < self.state.root_version:
                raise ReplayError(self._err(
                    f"root version {m.root_version} is older than root version "
                    f"{self.state.root_version} already accepted"), m)
            raise ReplayError(self._err(
                f"sequence {m.sequence} is not newer than {self.state.sequence} already "
                "accepted"), m)
        if m.expires <= floor:
            raise ExpiredError(self._err(
                f"it expired at {_utc(m.expires)}; the time floor is {_utc(floor)} — export "
                "a fresh bundle"))
        self._check_quotas(m)
        return VerifierState(m.root_version, m.sequence, max(floor, m.created))

    def _check_target(self, m: Manifest) -> None:
        t = m.target
        if isinstance(self.expect, ExpectRelease):
            e = self.expect
            ok_agent = not t.agents or e.agent_id in t.agents
            ok_env = t.environment is None or t.environment == e.environment
            if not (ok_agent and ok_env):
                to = []
                if t.agents:
                    to.append("agents " + ", ".join(repr(a) for a in t.agents[:5])
                              + (" ..." if len(t.agents) > 5 else ""))
                if t.environment is not None:
                    to.append(f"environment {t.environment!r}")
                here = f"agent {e.agent_id!r}" + (
                    f" in environment {e.environment!r}" if e.environment else "")
                raise MisaddressedError(self._err(
                    f"it is addressed to {' and '.join(to)}, not to {here}"))
        else:
            r = self.expect
            if t.hub != r.hub_id:
                raise MisaddressedError(self._err(f"it is addressed to hub {t.hub!r}, not "
                                                  f"{r.hub_id!r}"))
            assert m.result is not None
            if m.result.agent_id != r.agent_id or m.issuer != r.agent_key.key_id:
                raise MisaddressedError(self._err(
                    f"it reports agent {m.result.agent_id!r}, but was checked with the key of "
                    f"agent {r.agent_id!r}"))

    def _check_quotas(self, m: Manifest) -> None:
        lim = self.limits
        if len(m.files) > lim.max_files:
            raise LimitExceededError(self._err(
                f"{len(m.files)} payload files is over the max_files limit of {lim.max_files}"))
        for f in m.files:
            if f.size > lim.max_file_bytes:
                raise LimitExceededError(self._err(
                    f"payload {f.name!r} is {format_bytes(f.size)}, over the max_file_bytes "
                    f"limit of {format_bytes(lim.max_file_bytes)}"))
        if m.total_size > lim.max_total_bytes:
            raise LimitExceededError(self._err(
                f"the payloads total {format_bytes(m.total_size)}, over the max_total_bytes "
                f"limit of {format_bytes(lim.max_total_bytes)}"))
        if len(m.secrets) > lim.max_secrets:
            raise LimitExceededError(self._err(
                f"{len(m.secrets)} secrets is over the max_secrets limit of {lim.max_secrets}"))
        for s in m.secrets:
            if len(s.sealed) > lim.max_sealed_bytes:
                raise LimitExceededError(self._err(
                    f"sealed secret {s.name!r} is {len(s.sealed)} bytes, over the "
                    f"max_sealed_bytes limit of {lim.max_sealed_bytes}"))
        if m.parts is not None and m.parts.count > MAX_PARTS:
            raise LimitExceededError(self._err(f"{m.parts.count} parts is over {MAX_PARTS}"))

    def check_length(self, auth: _Authentic, size: int | None) -> None:
        """With the verified layout, a known stream length tells truncation up front."""
        total = auth.head_size + auth.data_size
        if size is None:
            return
        if size < total:
            raise TruncatedError(
                f"bundle {self.label} is truncated: {format_bytes(size)} of "
                f"{format_bytes(total)} present")
        if size > total:
            raise BundleFormatError(self._err(
                f"{size - total} unexpected bytes follow the end of the bundle"))

    def check_space(self, m: Manifest) -> None:
        """§9.3: the staging file system must hold every payload plus one spool."""
        need = staging_needed(m, self.limits)
        free = self.disk_free(self.staging_dir)
        if free < need:
            raise InsufficientSpaceError(self._err(
                f"staging it needs {format_bytes(need)} free in {self.staging_dir}, but only "
                f"{format_bytes(free)} is free; free {format_bytes(need - free)} and retry"))

    def check_in_memory(self, m: Manifest) -> None:
        """:func:`check_bundle`'s stand-in for §9.3 rule 8: every member must fit the memory
        a private copy may take (``BUFFER_BYTES``, §9.4), since there is no spool."""
        for f in m.files:
            if f.compressed_size > BUFFER_BYTES:
                raise InsufficientSpaceError(self._err(
                    f"payload {f.name!r} is {format_bytes(f.compressed_size)} compressed, over "
                    f"the {format_bytes(BUFFER_BYTES)} a payload may take to be checked in "
                    "memory; verify it with a staging directory"))

    # -- steps 4–6: staging --------------------------------------------------------------

    def stage(self, reader: ContainerReader, auth: _Authentic,
              parts: PartsSource | None = None) -> VerifiedBundle:
        """§9 steps 4–6; on failure nothing staged remains."""
        m = auth.manifest
        reader.expected_total = auth.head_size + auth.data_size
        stager = Stager(self.label, self.staging_dir, self.limits, self.progress,
                        durable=self.durable, keep=self.keep)
        work = stager.open()
        try:
            try:
                stager.stage_files(reader, m, work)
                reader.expect_end()
            except BundleError as exc:
                if parts is not None and not isinstance(exc, PartsError):
                    # A damaged part is the better message: only it needs copying again.
                    try:
                        parts.check_current_part()
                    except PartsError as better:
                        raise better from exc
                raise
            finally:
                if parts is not None:
                    parts.close()
            ready = stager.publish(work, auth.envelope_sha256)
        except BaseException:
            stager.discard(work)
            raise
        files = ({f.name: ready / FILES_DIR / staged_name(i) for i, f in enumerate(m.files, 1)}
                 if self.keep else {})
        return VerifiedBundle(
            manifest=m,
            envelope=auth.envelope,
            envelope_sha256=auth.envelope_sha256,
            signer_key_ids=auth.signers,
            staged_dir=ready,
            files=MappingProxyType(files),
            trusted_root=auth.root,
            root_updates=auth.updates,
            state=auth.state,
            not_before=m.not_before,
        )


# -- public entry points ----------------------------------------------------------------


def verify_bundle(
    source: ByteSource,
    *,
    label: str,
    trusted_root: TrustedRoot,
    state: VerifierState,
    expect: Expectation,
    staging_dir: Path,
    size: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    clock: Clock = system_clock,
    progress: ProgressFn | None = None,
    disk_free: Callable[[Path], int] = _disk_free,
    durable: bool = True,
    admit: AdmitFn | None = None,
    keep: bool = True,
) -> VerifiedBundle:
    """Verify the bundle read from ``source`` and stage its payloads (§9).

    Args:
        source: the bundle's bytes, read once from the start (``read(n)``).
        label: how messages name the bundle (usually its file name).
        trusted_root: the root pinned by the caller; updates carried by the bundle are
            applied to a copy in memory and returned.
        state: what the caller accepted last (see :class:`VerifierState`).
        expect: who is verifying — an agent (release bundles) or the hub (result bundles).
        staging_dir: an existing private directory (owned by us, not writable by others);
            the verifier stages into a new directory inside it and renames that to
            ``ready-<envelope sha256>`` on success.
        size: the total length when known (a file): truncation is then reported up front.
        limits, clock, progress, disk_free: injectable for tests and configuration.
        durable: flush the staged files to disk before the ready rename (§9.6). Only a
            caller that throws the staging directory away (``bundle verify``) turns it off.
        keep: keep the staged files. False (``bundle verify`` without ``--keep``): each is
            still written and checked, then removed at once, and ``files`` is empty.
        admit: called with the verified manifest after §9.3 rules 1–6 and before the
            length, space and payload checks (§9.7: the agent holds a bundle whose
            predecessor it has not applied). Whatever it raises propagates; nothing is staged.

    Raises:
        BundleFormatError (TruncatedError, ManifestError), LimitExceededError,
        TrustUpdateError, BundleSignatureError, KindError, MisaddressedError, ReplayError,
        ExpiredError, InsufficientSpaceError, DigestMismatchError, DecompressionError,
        StagingError — see docs/bundle-format.md §9 for which step raises which.
        OSError: reading the source or writing staging failed (transport, not bad data).
    """
    verifier = _Verifier(label=label, trusted_root=trusted_root, state=state, expect=expect,
                         staging_dir=staging_dir, limits=limits, clock=clock,
                         progress=progress, disk_free=disk_free, durable=durable,
                         keep=keep)
    reader = ContainerReader(source, label)
    auth = verifier.authenticate(reader)
    if admit is not None:
        admit(auth.manifest)
    verifier.check_length(auth, size)
    verifier.check_space(auth.manifest)
    return verifier.stage(reader, auth)


def check_bundle(
    source: ByteSource,
    *,
    label: str,
    trusted_root: TrustedRoot,
    state: VerifierState,
    expect: Expectation,
    size: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    clock: Clock = system_clock,
) -> CheckedBundle:
    """Every check of :func:`verify_bundle`, in the same order and with the same errors, on
    a bundle whose payloads are each at most ``BUFFER_BYTES`` compressed — with nothing
    staged: each member's private copy is held in memory (as §9.4 does for such a member),
    checked and decompressed (§9.5), and its output only counted and hashed. For a caller
    that needs the verdict and the manifest, not the files (the hub importing a result).

    Raises:
        InsufficientSpaceError: (instead of §9.3 rule 8) a payload is over ``BUFFER_BYTES``
            compressed: verify it with :func:`verify_bundle` and a staging directory.
        Everything else :func:`verify_bundle` raises, for the same reasons.
    """
    verifier = _Verifier(label=label, trusted_root=trusted_root, state=state, expect=expect,
                         staging_dir=Path(), limits=limits, clock=clock, progress=None,
                         disk_free=_disk_free, durable=False, keep=False)
    reader = ContainerReader(source, label)
    auth = verifier.authenticate(reader)
    verifier.check_length(auth, size)
    verifier.check_in_memory(auth.manifest)
    reader.expected_total = auth.head_size + auth.data_size
    Stager(label, Path(), limits, durable=False, keep=False).check_files(reader, auth.manifest)
    reader.expect_end()
    return CheckedBundle(
        manifest=auth.manifest,
        envelope=auth.envelope,
        envelope_sha256=auth.envelope_sha256,
        signer_key_ids=auth.signers,
        trusted_root=auth.root,
        root_updates=auth.updates,
        state=auth.state,
        not_before=auth.manifest.not_before,
    )


def verify_path(
    path: Path,
    *,
    trusted_root: TrustedRoot,
    state: VerifierState,
    expect: Expectation,
    staging_dir: Path,
    label: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    clock: Clock = system_clock,
    progress: ProgressFn | None = None,
    disk_free: Callable[[Path], int] = _disk_free,
    durable: bool = True,
    admit: AdmitFn | None = None,
    keep: bool = True,
) -> VerifiedBundle:
    """:func:`verify_bundle` on the file ``path``, opened read-only (a symbolic link is
    refused); ``label`` defaults to the file name, escaped (:func:`bundle.printable.printable`).
    Raises what :func:`verify_bundle` raises."""
    path = Path(path)
    name = label or printable(path.name)
    try:
        fd, st = open_regular(
            path, lambda: BundleFormatError(f"bundle {name} is not a regular file"))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleFormatError(f"bundle {name} is a symbolic link") from exc
        raise
    with open(fd, "rb", buffering=0) as fh:
        return verify_bundle(
            fh, label=name, size=st.st_size, trusted_root=trusted_root, state=state,
            expect=expect, staging_dir=staging_dir, limits=limits, clock=clock,
            progress=progress, disk_free=disk_free, durable=durable, admit=admit, keep=keep,
        )


def verify_parts(
    paths: Sequence[Path],
    *,
    trusted_root: TrustedRoot,
    state: VerifierState,
    expect: Expectation,
    staging_dir: Path,
    label: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    clock: Clock = system_clock,
    progress: ProgressFn | None = None,
    disk_free: Callable[[Path], int] = _disk_free,
    durable: bool = True,
    admit: AdmitFn | None = None,
    keep: bool = True,
) -> VerifiedBundle:
    """:func:`verify_bundle` on a split bundle, straight from its parts (§8.2).

    ``paths`` are candidate files in any order and under any names (for example every file
    of an inbox that looks like a part of this bundle). The first part is found by content
    and verified; then the signed part digests pick the data parts, which stream without
    being joined (no extra disk space). ``label`` defaults to the first part's name without
    ``.part000``, escaped (:func:`bundle.printable.printable`).

    Raises:
        PartsError: the first part is missing or ambiguous, or data parts are missing or
            damaged (each named); plus everything :func:`verify_bundle` raises.
    """
    candidates = [Path(p) for p in paths]
    first = find_first_part(candidates)
    name = label or printable(strip_part_suffix(first.name))
    verifier = _Verifier(label=name, trusted_root=trusted_root, state=state, expect=expect,
                         staging_dir=staging_dir, limits=limits, clock=clock,
                         progress=progress, disk_free=disk_free, durable=durable,
                         keep=keep)
    fd = os.open(first, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with open(fd, "rb", buffering=0) as fh:
        reader = ContainerReader(fh, name)
        auth = verifier.authenticate(reader)
        if admit is not None:
            admit(auth.manifest)
        info = auth.manifest.parts
        if info is None:
            raise PartsError(f"bundle {name}: {first.name} is a whole bundle, not a part")
        if os.fstat(fh.fileno()).st_size != auth.head_size:
            raise PartsError(f"bundle {name}: the first part {first.name} has extra bytes "
                             "after the signature — re-copy it")
        assigned = assign_parts(first, candidates, info)
        verifier.check_space(auth.manifest)
        source = PartsSource(assigned, info.count + 1)
        reader.source = source
        return verifier.stage(reader, auth, parts=source)
