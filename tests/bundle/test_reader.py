"""The verifier (docs/bundle-format.md §9): round trips and the basic refusals.

Every refusal asserts the error type, that staging is empty afterwards, and that the caller's
trusted root is untouched (the verifier returns new state; it never persists or mutates).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundle.container import (
    END_OF_ARCHIVE,
    ENVELOPE_NAME,
    MARKER,
    MARKER_NAME,
    ROOTS_NAME,
    encode_member,
)
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
    MisaddressedError,
    ReplayError,
    StagingError,
    TruncatedError,
    TrustUpdateError,
)
from bundle.inspect import inspect, read_manifest_unverified
from bundle.limits import Limits
from bundle.manifest import Target
from bundle.reader import ExpectRelease, ExpectResult, VerifierState, verify_bundle
from bundle.writer import write_bundle
from signing.envelope import TYPE_RELEASE, sign_envelope
from signing.keys import SigningKey
from tests.bundle.kit import (
    AGENT,
    HUB,
    NOW,
    craft_bundle,
    make_files,
    release_draft,
    result_draft,
    rotate_root,
    staging_entries,
    verify,
)
from tests.fixtures.trust import TrustKit, make_trust

CONTENTS = {
    "sql/001_schema.sql": b"create table invoices (id bigint primary key);\n" * 50,
    "empty.txt": b"",
    "bin/tool": os.urandom(3 * 1024 * 1024),  # > 1 MiB compressed: staged through a spool
    "k8s/app.yaml": b"apiVersion: apps/v1\nkind: Deployment\n" * 200_000,  # > 4 MiB: all cores
}


def _frame(data: bytes, **kwargs: Any) -> bytes:
    params = {"level": 3, "write_checksum": True, "write_content_size": True, **kwargs}
    return zstandard.ZstdCompressor(**params).compress(data)


@pytest.fixture
def bundle_path(trust: TrustKit, src: Path, out: Path) -> Path:
    w = write_bundle(out / "billing-2.4.0.tgb", release_draft(trust, sequence=5),
                     make_files(src, CONTENTS), [trust.release_key])
    return w.paths[0]


def test_round_trip(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    progress: list[tuple[str, int, int]] = []
    before = trust.trusted
    v = verify(bundle_path, trust, staging, state=VerifierState(1, 4, NOW - 999),
               progress=lambda *a: progress.append(a))
    assert v.state == VerifierState(root_version=1, sequence=5, time_floor=NOW)
    assert v.staged_dir == staging / f"ready-{v.envelope_sha256}"
    assert staging_entries(staging) == [v.staged_dir.name]
    assert set(v.files) == set(CONTENTS)
    for name, path in v.files.items():
        assert path.read_bytes() == CONTENTS[name]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent.parent == v.staged_dir
    assert stat.S_IMODE(v.staged_dir.stat().st_mode) == 0o700
    assert sorted(os.listdir(v.staged_dir)) == ["files"]  # the spool is gone
    assert v.manifest.release is not None and v.manifest.release.product == "billing"
    assert v.trusted_root.version == 1 and v.root_updates == ()
    assert trust.release_key.key_id in v.signer_key_ids
    assert before.version == 1
    assert progress[-1][1] == progress[-1][2] == sum(
        f.size + f.compressed_size for f in v.manifest.files)


def test_time_floor_takes_created_when_the_clock_lags(trust: TrustKit, src: Path, out: Path,
                                                      staging: Path) -> None:
    w = write_bundle(out / "b.tgb", release_draft(trust, created=NOW + 500,
                                                  expires=NOW + 9000, not_before=NOW + 600),
                     [], [trust.release_key])
    v = verify(w.paths[0], trust, staging)
    assert v.state.time_floor == NOW + 500
    assert v.not_before == NOW + 600  # returned, not enforced


def test_many_small_files(trust: TrustKit, src: Path, out: Path, staging: Path) -> None:
    # Each staged file is fsync'ed (§9.6): about 3-10 ms apiece on ext4, hence only 120 here.
    contents = {f"sql/{i:04d}.sql": b"insert into t values (%d);\n" % i for i in range(120)}
    w = write_bundle(out / "b.tgb", release_draft(trust), make_files(src, contents),
                     [trust.release_key])
    v = verify(w.paths[0], trust, staging)
    assert {n: p.read_bytes() for n, p in v.files.items()} == contents


def test_environment_addressing(trust: TrustKit, src: Path, out: Path, staging: Path) -> None:
    m = release_draft(trust, target=Target(environment="prod"))
    w = write_bundle(out / "b.tgb", m, [], [trust.release_key])
    verify(w.paths[0], trust, staging, expect=ExpectRelease("any-agent", "prod"))


# -- refusals ---------------------------------------------------------------------------


def _refused(
    exc: type[BundleError], path: Path | list[Path], trust: TrustKit, staging: Path,
    match: str | None = None, **kwargs: Any
) -> BundleError:
    trusted = trust.trusted
    with pytest.raises(exc, match=match) as info:
        verify(path, trust, staging, trusted_root=trusted, **kwargs)
    assert staging_entries(staging) == [], "staging must be empty after a refusal"
    assert trusted.version == 1 and trusted.envelope == trust.root_envelope
    return info.value


def _flip(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_payload_byte(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    _flip(bundle_path, 1024 + 700)  # inside the last payload member
    err = _refused(DigestMismatchError, bundle_path, trust, staging)
    assert "'k8s/app.yaml' (payload/000004.zst)" in str(err)
    assert err.check == "digest"


def test_wrong_key(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    other = make_trust()
    trusted = other.trusted
    with pytest.raises(BundleSignatureError, match=r"signature verification failed"):
        verify(bundle_path, other, staging, trusted_root=trusted)
    assert staging_entries(staging) == []


def test_replay(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    _refused(ReplayError, bundle_path, trust, staging,
             match=r"sequence 5 is not newer than 5 already accepted",
             state=VerifierState(1, 5, 0))
    _refused(ReplayError, bundle_path, trust, staging, match=r"older than root version 2",
             state=VerifierState(2, 1, 0))


def test_expired(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    _refused(ExpiredError, bundle_path, trust, staging, match=r"expired at",
             now=NOW + 8 * 86400)
    # A clock set back does not help: the time floor never goes backwards.
    _refused(ExpiredError, bundle_path, trust, staging, now=NOW - 86400 * 365,
             state=VerifierState(0, 0, NOW + 8 * 86400))


@pytest.mark.parametrize("expect", [ExpectRelease("agent-2"),
                                    ExpectRelease("agent-2", "prod")])
def test_misaddressed(trust: TrustKit, bundle_path: Path, staging: Path,
                      expect: ExpectRelease) -> None:
    _refused(MisaddressedError, bundle_path, trust, staging,
             match=r"addressed to agents 'agent-1', not to agent 'agent-2'", expect=expect)


def test_agents_and_environment_must_both_match(trust: TrustKit, src: Path, out: Path,
                                               staging: Path) -> None:
    m = release_draft(trust, target=Target(agents=(AGENT,), environment="prod"))
    w = write_bundle(out / "b.tgb", m, [], [trust.release_key])
    _refused(MisaddressedError, w.paths[0], trust, staging,
             expect=ExpectRelease(AGENT, "staging"))


def test_result_offered_as_a_release(trust: TrustKit, out: Path, staging: Path) -> None:
    agent_key = SigningKey.generate()
    w = write_bundle(out / "r.tgr", result_draft(agent_key), [], [agent_key])
    _refused(KindError, w.paths[0], trust, staging, match=r"payload type")


def test_truncated(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    size = bundle_path.stat().st_size
    os.truncate(bundle_path, size - 3 * 1024 * 1024)
    err = _refused(TruncatedError, bundle_path, trust, staging)
    assert "is truncated: " in str(err) and " of " in str(err) and "present" in str(err)


def test_trailing_garbage(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    with open(bundle_path, "ab") as fh:
        fh.write(bytes(512))
    _refused(BundleFormatError, bundle_path, trust, staging, match=r"unexpected bytes")


def test_insufficient_space(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    err = _refused(InsufficientSpaceError, bundle_path, trust, staging,
                   disk_free=lambda path: 1024 * 1024)
    assert "1.0 MiB is free" in str(err) and err.check == "space"


def test_limits(trust: TrustKit, bundle_path: Path, staging: Path) -> None:
    _refused(LimitExceededError, bundle_path, trust, staging, match=r"max_files",
             limits=Limits(max_files=3))
    _refused(LimitExceededError, bundle_path, trust, staging, match=r"max_file_bytes",
             limits=Limits(max_file_bytes=1024 * 1024))
    _refused(LimitExceededError, bundle_path, trust, staging, match=r"max_envelope_bytes",
             limits=Limits(max_envelope_bytes=1024))
    _refused(LimitExceededError, bundle_path, trust, staging, match=r"window",
             limits=Limits(max_window_bytes=1024 * 1024))


def test_unsafe_staging_directory(trust: TrustKit, bundle_path: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StagingError, match=r"not writable by group or others"):
        verify(bundle_path, trust, shared)
    assert os.listdir(shared) == []


def test_symlink_planted_in_staging(trust: TrustKit, bundle_path: Path, staging: Path,
                                    tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    first = verify(bundle_path, trust, staging)
    ready_name = first.staged_dir.name
    os.rename(first.staged_dir, tmp_path / "moved")
    (staging / ready_name).symlink_to(victim)
    with pytest.raises(StagingError, match=r"already exists"):
        verify(bundle_path, trust, staging)
    assert staging_entries(staging) == [ready_name]  # only the planted link
    assert os.listdir(victim) == []


# -- zstd rules, with frames made by hand ------------------------------------------------


def _crafted(trust: TrustKit, out: Path, content: bytes, compressed: bytes) -> Path:
    path = out / "crafted.tgb"
    craft_bundle(path, trust, [("a.bin", content, compressed)])
    return path


ZSTD_CASES: list[tuple[str, Callable[[bytes], bytes], type[BundleError], str]] = [
    ("two frames", lambda d: _frame(d) + _frame(b""), DecompressionError, "only one frame"),
    ("skippable frame", lambda d: b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd" + _frame(d),
     DecompressionError, "skippable"),
    ("no content size", lambda d: _frame(d, write_content_size=False), DecompressionError,
     "content size"),
    ("no checksum", lambda d: _frame(d, write_checksum=False), DecompressionError, "checksum"),
    ("cut short", lambda d: _frame(d)[:-2], DecompressionError, "cut short"),
    ("not zstd", lambda d: b"\x1f\x8b" + d, DecompressionError, "not a zstd frame"),
    ("bad checksum", lambda d: _frame(d)[:-1] + bytes([_frame(d)[-1] ^ 1]), DecompressionError,
     "not valid zstd"),
]


@pytest.mark.parametrize(("case", "make", "exc", "match"), ZSTD_CASES,
                         ids=[c[0] for c in ZSTD_CASES])
def test_zstd_rules(trust: TrustKit, out: Path, staging: Path, case: str,
                    make: Callable[[bytes], bytes], exc: type[BundleError], match: str) -> None:
    content = b"hello zstd\n" * 1000
    _refused(exc, _crafted(trust, out, content, make(content)), trust, staging, match=match)


def test_frame_size_must_equal_the_signed_size(trust: TrustKit, out: Path,
                                               staging: Path) -> None:
    # A bomb announces its size: a frame of 10 MB signed as 1,000 bytes is refused before
    # libzstd sees a byte.
    bomb = _frame(bytes(10_000_000))
    path = out / "bomb.tgb"
    craft_bundle(path, trust, [("a.bin", bytes(1000), bomb)])
    _refused(DecompressionError, path, trust, staging, match=r"states 10000000 content bytes")


def test_window_cap(trust: TrustKit, out: Path, staging: Path) -> None:
    content = os.urandom(64 * 1024) * 40
    compressed = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters
                                          .from_level(3, window_log=22, write_checksum=1,
                                                      write_content_size=1)).compress(content)
    path = _crafted(trust, out, content, compressed)
    _refused(LimitExceededError, path, trust, staging, match=r"needs a 2\.5 MiB zstd window",
             limits=Limits(max_window_bytes=2 * 1024 * 1024))
    verify(path, trust, staging, limits=Limits(max_window_bytes=4 * 1024 * 1024))


# -- trust ------------------------------------------------------------------------------


def test_root_rotation_travels_in_the_bundle(trust: TrustKit, out: Path,
                                             staging: Path) -> None:
    root_v2, _, release_v2 = rotate_root(trust)
    m = release_draft(trust, root_version=2, issuer=release_v2.key_id)
    w = write_bundle(out / "b.tgb", m, [], [release_v2], roots=[trust.root_envelope, root_v2])
    pinned = trust.trusted
    v = verify(w.paths[0], trust, staging, trusted_root=pinned,
               state=VerifierState(1, 99, 0))  # a new root starts a new sequence epoch
    assert v.trusted_root.version == 2
    assert v.root_updates == (root_v2,)
    assert v.state == VerifierState(2, 1, NOW)
    assert pinned.version == 1  # the caller's root is not mutated


def test_bundle_for_a_newer_root_without_the_update(trust: TrustKit, out: Path,
                                                    staging: Path) -> None:
    _, _, release_v2 = rotate_root(trust)
    m = release_draft(trust, root_version=2, issuer=release_v2.key_id)
    w = write_bundle(out / "b.tgb", m, [], [release_v2])
    _refused(BundleSignatureError, w.paths[0], trust, staging)


def test_skipped_root_version(trust: TrustKit, out: Path, staging: Path) -> None:
    root_v3, _, release_v3 = rotate_root(trust, version=3)
    m = release_draft(trust, root_version=3, issuer=release_v3.key_id)
    w = write_bundle(out / "b.tgb", m, [], [release_v3], roots=[root_v3])
    _refused(TrustUpdateError, w.paths[0], trust, staging, match=r"cannot follow")


def test_signed_under_an_older_root(trust: TrustKit, out: Path, staging: Path) -> None:
    root_v2, _, _ = rotate_root(trust, release_key=trust.release_key)
    w = write_bundle(out / "b.tgb", release_draft(trust), [], [trust.release_key],
                     roots=[root_v2])
    _refused(ReplayError, w.paths[0], trust, staging, match=r"signed under root version 1")


# -- results ----------------------------------------------------------------------------


def test_result_round_trip_and_refusals(trust: TrustKit, src: Path, out: Path,
                                        staging: Path) -> None:
    agent_key = SigningKey.generate()
    w = write_bundle(out / "r.tgr", result_draft(agent_key),
                     make_files(src, {"logs/schema.log": b"ok\n"}), [agent_key])
    expect = ExpectResult(HUB, AGENT, agent_key.public)
    v = verify(w.paths[0], trust, staging, expect=expect)
    assert v.manifest.result is not None and v.manifest.result.status == "succeeded"
    assert v.files["logs/schema.log"].read_bytes() == b"ok\n"
    os.rename(v.staged_dir, out / "done")
    other = SigningKey.generate()
    _refused(BundleSignatureError, w.paths[0], trust, staging,
             expect=ExpectResult(HUB, AGENT, other.public))
    _refused(MisaddressedError, w.paths[0], trust, staging,
             expect=ExpectResult("other-hub", AGENT, agent_key.public))
    _refused(MisaddressedError, w.paths[0], trust, staging,
             expect=ExpectResult(HUB, "agent-2", agent_key.public))
    _refused(KindError, w.paths[0], trust, staging)  # a result is not a release


def test_results_carry_no_trust(trust: TrustKit, out: Path, staging: Path) -> None:
    agent_key = SigningKey.generate()
    w = write_bundle(out / "r.tgr", result_draft(agent_key), [], [agent_key],
                     roots=[trust.root_envelope])
    _refused(TrustUpdateError, w.paths[0], trust, staging,
             expect=ExpectResult(HUB, AGENT, agent_key.public))


# -- inspect ----------------------------------------------------------------------------


def test_inspect_is_flagged_unverified(bundle_path: Path) -> None:
    seen = inspect(bundle_path)
    assert seen.verified is False
    assert seen.manifest is not None and seen.manifest.sequence == 5
    assert seen.label == "billing-2.4.0.tgb"
    assert read_manifest_unverified(bundle_path)["sequence"] == 5


def test_inspect_reports_a_broken_manifest(trust: TrustKit, out: Path) -> None:
    envelope = sign_envelope(TYPE_RELEASE, b'{"format":1}', [trust.release_key])
    path = out / "x.tgb"
    path.write_bytes(encode_member(MARKER_NAME, MARKER) + encode_member(ROOTS_NAME, b"[]")
                     + encode_member(ENVELOPE_NAME, envelope) + END_OF_ARCHIVE)
    seen = inspect(path)
    assert seen.manifest is None
    assert seen.problem is not None and "missing" in seen.problem
    assert seen.claimed_signer_key_ids == (trust.release_key.key_id,)


# -- the stream core ----------------------------------------------------------------------


class _Trickle:
    """A live-channel-like source: short reads, length unknown in advance."""

    def __init__(self, data: bytes, step: int = 70_000) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, n: int, /) -> bytes:
        return self._data.read(min(n, self._step))


def test_verify_a_stream_of_unknown_length(trust: TrustKit, bundle_path: Path,
                                           staging: Path) -> None:
    v = verify_bundle(_Trickle(bundle_path.read_bytes()), label="live", trusted_root=trust.trusted,
                      state=VerifierState(), expect=ExpectRelease(AGENT), staging_dir=staging,
                      clock=lambda: NOW)
    assert v.files["bin/tool"].read_bytes() == CONTENTS["bin/tool"]


def test_a_cut_stream_says_how_much_arrived(trust: TrustKit, bundle_path: Path,
                                            staging: Path) -> None:
    data = bundle_path.read_bytes()
    with pytest.raises(TruncatedError, match=r"bundle live is truncated: 2\.0 MiB of .* present"):
        verify_bundle(_Trickle(data[: 2 * 1024 * 1024]), label="live",
                      trusted_root=trust.trusted, state=VerifierState(),
                      expect=ExpectRelease(AGENT), staging_dir=staging, clock=lambda: NOW)
    assert staging_entries(staging) == []


def test_a_fifo_is_refused_at_once_not_waited_on(trust: TrustKit, tmp_path: Path,
                                                  staging: Path) -> None:
    """'bundle verify', 'bundle inspect' and 'agent apply' of a FIFO blocked for ever in
    open() (nothing writes to it), seen by hand; each is now refused as not a regular file
    at once (a split bundle's FIFO "part" is no candidate: its first part is missing), and
    nothing is staged."""
    from bundle.errors import PartsError

    fifo = tmp_path / "pipe.tgb"
    os.mkfifo(fifo)
    with pytest.raises(BundleFormatError, match=r"^bundle pipe\.tgb is not a regular file$"):
        inspect(fifo)
    with pytest.raises(BundleFormatError, match=r"^bundle pipe\.tgb is not a regular file$"):
        verify(fifo, trust, staging)
    os.rename(fifo, tmp_path / "pipe.tgb.part000")
    with pytest.raises(PartsError, match=r"the first part .* is missing"):  # not a candidate
        verify([tmp_path / "pipe.tgb.part000"], trust, staging)
    assert staging_entries(staging) == []
