"""The writer (docs/bundle-format.md §12): framing, determinism, limits, clean failure."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from bundle import writer as writer_mod
from bundle.errors import (
    BundleFormatError,
    DigestMismatchError,
    LimitExceededError,
    ManifestError,
    ReleaseFormatError,
)
from bundle.inspect import verify_written
from bundle.limits import Limits
from bundle.manifest import Approval, Target
from bundle.writer import PayloadFile, release_manifest, write_bundle
from signing.envelope import TYPE_RELEASE, verify_envelope
from signing.keys import SigningKey
from tests.bundle.kit import NOW, device_flipping_byte, make_files, release_draft
from tests.fixtures.trust import TrustKit


def _mixed(size: int, seed: int = 1) -> bytes:
    """Half compressible text, half random bytes: zstd takes both kinds of block."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"row %d, status ok, value %d\n" % (len(out), rnd.randrange(1000)) * 50
        out += rnd.randbytes(4096)
    return bytes(out[:size])


def _listing(path: Path) -> list[tuple[str, int, int, int, str]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.size, m.mode, m.mtime, m.uname) for m in tar.getmembers()]


def _spools_and_temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def test_members_in_the_fixed_order(trust: TrustKit, src: Path, out: Path) -> None:
    files = make_files(src, {"sql/001_schema.sql": b"create table t (id int);\n",
                             "empty.txt": b"", "k8s/app.yaml": b"kind: Deployment\n" * 100})
    written = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert written.paths == (out / "b.tgb",)
    assert written.size == (out / "b.tgb").stat().st_size
    names = [entry[0] for entry in _listing(out / "b.tgb")]
    assert names == ["tiangong-bundle", "roots.json", "envelope.json", "payload/000001.zst",
                     "payload/000002.zst", "payload/000003.zst"]
    assert {(e[2], e[3], e[4]) for e in _listing(out / "b.tgb")} == {(0o644, 0, "")}
    entries = written.manifest.files
    assert [e.name for e in entries] == ["sql/001_schema.sql", "empty.txt", "k8s/app.yaml"]
    assert entries[1].size == 0
    assert entries[0].sha256 == hashlib.sha256(b"create table t (id int);\n").hexdigest()
    # The envelope signs the manifest the writer returns, with the release role's key.
    payload = verify_envelope(written.envelope, payload_type=TYPE_RELEASE,
                              trusted=[trust.release_key.public], threshold=1).payload
    assert payload == written.manifest.to_bytes()
    assert _spools_and_temps(out) == []


def test_each_member_is_one_checked_zstd_frame(trust: TrustKit, src: Path, out: Path) -> None:
    data = _mixed(300_000)
    write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": data}),
                 [trust.release_key])
    with tarfile.open(out / "b.tgb") as tar:
        member = tar.extractfile("payload/000001.zst")
        assert member is not None
        frame = member.read()
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == len(data) and params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(frame) == data


def test_same_inputs_give_the_same_bytes(trust: TrustKit, src: Path, tmp_path: Path) -> None:
    files = make_files(src, {"a.sql": b"select 1;\n" * 1000, "b.bin": _mixed(200_000),
                             "c": b""})
    paths = []
    for i in range(2):
        (tmp_path / f"o{i}").mkdir()
        w = write_bundle(tmp_path / f"o{i}" / "b.tgb", release_draft(trust), files,
                         [trust.release_key])
        paths.append(w.paths[0])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_output_does_not_depend_on_threads_or_the_threshold(
    trust: TrustKit, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§12.2: libzstd's multi-threaded mode gives the same frame for 1, 2 or N workers, so a
    bundle is identical on a 2-core edge box and a 64-core hub."""
    files = make_files(src, {"big.bin": _mixed(12 * 1024 * 1024), "small": b"x" * 1000})
    digests = set()
    for i, (threads, threshold) in enumerate([(1, 4 << 20), (2, 4 << 20), (4, 0),
                                              (-1, 1 << 40)]):
        monkeypatch.setattr(writer_mod, "MT_THRESHOLD_BYTES", threshold)
        (tmp_path / f"o{i}").mkdir()
        w = write_bundle(tmp_path / f"o{i}" / "b.tgb", release_draft(trust), files,
                         [trust.release_key], threads=threads, verify=False)
        digests.add(hashlib.sha256(w.paths[0].read_bytes()).hexdigest())
    assert len(digests) == 1


def test_small_files_compressed_in_parallel_give_the_same_bytes(
    trust: TrustKit, src: Path, tmp_path: Path
) -> None:
    """Small members are compressed several at a time; scheduling must not change a byte."""
    rng = random.Random(7)
    contents = {f"sql/{i:03d}.sql": _mixed(rng.randrange(1, 300_000), seed=i)
                for i in range(40)}
    files = make_files(src, contents)
    digests = set()
    for i, threads in enumerate([1, 2, -1, 8]):
        (tmp_path / f"p{i}").mkdir()
        w = write_bundle(tmp_path / f"p{i}" / "b.tgb", release_draft(trust), files,
                         [trust.release_key], threads=threads, verify=False)
        digests.add(hashlib.sha256(w.paths[0].read_bytes()).hexdigest())
    assert len(digests) == 1


def test_libzstd_thread_modes_pinned() -> None:
    """Pins the finding behind §12.2: threads=0 (single-threaded API) and threads>=1 differ
    for larger payloads, while every threads>=1 value gives the same bytes. If this ever fails,
    determinism across machines must be re-examined before upgrading python-zstandard."""
    data = _mixed(12 * 1024 * 1024)

    def frame(threads: int) -> bytes:
        cctx = zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True,
                                        write_content_size=True)
        out = io.BytesIO()
        cctx.copy_stream(io.BytesIO(data), out, size=len(data))
        return out.getvalue()

    multi = {frame(t) for t in (1, 2, 3, 8)}
    assert len(multi) == 1
    assert frame(0) not in multi


def test_max_window_size_is_in_bytes() -> None:
    """python-zstandard documents ``max_window_size`` in kibibytes; it is bytes (it is passed
    to ZSTD_DCtx_setMaxWindowSize). Limits.max_window_bytes relies on that."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=20, write_checksum=1,
                                                            write_content_size=1)
    frame = zstandard.ZstdCompressor(compression_params=params).compress(os.urandom(1 << 20) * 3)
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 20

    def opens(max_window: int) -> bool:
        try:
            zstandard.ZstdDecompressor(max_window_size=max_window).stream_reader(
                io.BytesIO(frame)).read(10)
        except zstandard.ZstdError:
            return False
        return True

    assert opens(1 << 20)
    assert not opens((1 << 20) - 1)
    assert not opens(1024)  # would be 1 MiB if the unit were KiB


def test_many_small_files(trust: TrustKit, src: Path, out: Path) -> None:
    contents = {f"sql/{i:04d}.sql": b"insert into t values (%d);\n" % i for i in range(300)}
    w = write_bundle(out / "b.tgb", release_draft(trust), make_files(src, contents),
                     [trust.release_key])
    assert len(w.manifest.files) == 300
    assert w.manifest.files[-1].member == "payload/000300.zst"


def test_no_files(trust: TrustKit, out: Path) -> None:
    w = write_bundle(out / "b.tgb", release_draft(trust), [], [trust.release_key])
    assert w.manifest.files == ()
    assert [e[0] for e in _listing(out / "b.tgb")] == ["tiangong-bundle", "roots.json",
                                                       "envelope.json"]


def test_progress_reports_every_phase(trust: TrustKit, src: Path, out: Path) -> None:
    seen: dict[str, list[tuple[int, int]]] = {}
    files = make_files(src, {"a": _mixed(3 * 1024 * 1024), "b": b"b" * 10})
    write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                 progress=lambda phase, done, total: seen.setdefault(phase, []).append(
                     (done, total)))
    assert set(seen) == {"compress", "write", "verify"}
    for calls in seen.values():
        dones = [d for d, _ in calls]
        assert dones == sorted(dones)
        assert calls[-1][0] == calls[-1][1]
    assert seen["compress"][-1][1] == 3 * 1024 * 1024 + 10
    assert seen["write"][-1][1] == (out / "b.tgb").stat().st_size


@dataclass(frozen=True)
class _File:
    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class _Source:
    product: str
    version: str
    description: str
    steps: tuple[dict[str, Any], ...]
    files: tuple[_File, ...]
    content_hash: str
    root: Path


def _source(src: Path, contents: dict[str, bytes]) -> _Source:
    files = []
    for name, data in sorted(contents.items()):
        path = src / name.replace("/", "_")
        path.write_bytes(data)
        files.append(_File(name, path, len(data), hashlib.sha256(data).hexdigest()))
    return _Source("billing", "2.4.0", "Billing", ({"name": "schema", "kind": "sql"},),
                   tuple(files), "cd" * 32, src)


def _release_manifest(trust: TrustKit, source: _Source) -> Any:
    return release_manifest(
        source, bundle_id="billing-2.4.0-3", issuer=trust.release_key.key_id,
        target=Target(environment="prod"), root_version=1, sequence=3, created=NOW,
        expires=NOW + 86400, counter=3, author="alice", approvals=[Approval("bob", NOW, "ok")],
    )


def test_release_manifest(trust: TrustKit, src: Path, out: Path) -> None:
    source = _source(src, {"sql/001.sql": b"select 1;", "k8s/app.yaml": b"kind: x"})
    manifest, payloads = _release_manifest(trust, source)
    assert [p.name for p in payloads] == ["k8s/app.yaml", "sql/001.sql"]
    assert manifest.release.content_hash == "cd" * 32
    assert manifest.steps == ({"name": "schema", "kind": "sql"},)
    w = write_bundle(out / "b.tgb", manifest, payloads, [trust.release_key])
    assert [f.name for f in w.manifest.files] == ["k8s/app.yaml", "sql/001.sql"]


def test_a_release_file_changed_since_loading(trust: TrustKit, src: Path, out: Path) -> None:
    source = _source(src, {"a.sql": b"select 1;"})
    manifest, payloads = _release_manifest(trust, source)
    payloads[0].path.write_bytes(b"select 2;")  # same size, other content
    with pytest.raises(ReleaseFormatError, match=r"no longer has the SHA-256"):
        write_bundle(out / "b.tgb", manifest, payloads, [trust.release_key])
    payloads[0].path.write_bytes(b"drop table t;")
    with pytest.raises(ReleaseFormatError, match=r"the file changed"):
        write_bundle(out / "b.tgb", manifest, payloads, [trust.release_key])
    assert os.listdir(out) == []


def test_symlinked_payload_is_refused(trust: TrustKit, src: Path, out: Path) -> None:
    (src / "real").write_bytes(b"x")
    (src / "link").symlink_to(src / "real")
    with pytest.raises(ReleaseFormatError, match=r"symbolic link"):
        write_bundle(out / "b.tgb", release_draft(trust), [PayloadFile("a", src / "link")],
                     [trust.release_key])
    assert os.listdir(out) == []


@pytest.mark.timeout(60)  # before: opening the FIFO waited for a writer for ever
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_payload_replaced_by_a_fifo_or_a_directory_is_refused(
        trust: TrustKit, src: Path, out: Path, kind: str) -> None:
    """Replaced after the release was loaded (scan_release refuses them): refused by name,
    not waited on, and nothing is left in the output directory."""
    files = make_files(src, {"a": b"a" * 5000, "b": b"b"})
    files[1].path.unlink()
    if kind == "fifo":
        os.mkfifo(files[1].path)
    else:
        files[1].path.mkdir()
    with pytest.raises(ReleaseFormatError, match=r"payload 'b': .* is not a regular file"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    assert os.listdir(out) == []


def test_spools_removed_when_a_late_file_fails(trust: TrustKit, src: Path, out: Path) -> None:
    files = make_files(src, {"a": b"a" * 5000, "b": b"b"})
    missing = PayloadFile("c", src / "does-not-exist")
    with pytest.raises(FileNotFoundError):
        write_bundle(out / "b.tgb", release_draft(trust), [*files, missing],
                     [trust.release_key])
    assert os.listdir(out) == []


def test_limits_are_enforced_by_the_writer(trust: TrustKit, src: Path, out: Path) -> None:
    files = make_files(src, {f"f{i}": b"xx" for i in range(5)})
    with pytest.raises(LimitExceededError, match=r"max_files"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     limits=Limits(max_files=4))
    with pytest.raises(LimitExceededError, match=r"max_envelope_bytes"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     limits=Limits(max_envelope_bytes=2000))
    with pytest.raises(LimitExceededError, match=r"max_file_bytes"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     limits=Limits(max_file_bytes=1))
    with pytest.raises(LimitExceededError, match=r"max_total_bytes"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                     limits=Limits(max_total_bytes=9))
    with pytest.raises(ValueError, match=r"window"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key], level=22)
    assert _spools_and_temps(out) == []


def test_bad_arguments(trust: TrustKit, src: Path, out: Path) -> None:
    files = make_files(src, {"a": b"x"})
    with pytest.raises(ValueError, match=r"issuer"):
        write_bundle(out / "b.tgb", release_draft(trust), files, [SigningKey.generate()])
    w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    with pytest.raises(ValueError, match=r"leave manifest.files"):
        write_bundle(out / "c.tgb", w.manifest, files, [trust.release_key])
    with pytest.raises(ManifestError, match=r"collides"):
        write_bundle(out / "c.tgb", release_draft(trust), [*files, PayloadFile("A", files[0].path)],
                     [trust.release_key])


def test_verify_written_notices_a_changed_byte(trust: TrustKit, src: Path, out: Path) -> None:
    w = write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": _mixed(50_000)}),
                     [trust.release_key])
    data = bytearray(w.paths[0].read_bytes())
    data[-1024 - 600] ^= 0x40  # inside the payload member
    w.paths[0].write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=r"reads back differently"):
        verify_written(w)


def test_overwrites_atomically(trust: TrustKit, src: Path, out: Path) -> None:
    (out / "b.tgb").write_bytes(b"old")
    write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": b"x"}),
                 [trust.release_key])
    assert (out / "b.tgb").read_bytes()[:15] == b"tiangong-bundle"
    assert _spools_and_temps(out) == []


def test_roots_are_carried(trust: TrustKit, src: Path, out: Path) -> None:
    w = write_bundle(out / "b.tgb", release_draft(trust), [], [trust.release_key],
                     roots=[trust.root_envelope])
    with tarfile.open(w.paths[0]) as tar:
        member = tar.extractfile("roots.json")
        assert member is not None
        assert member.read().startswith(b'["')


def test_a_failed_read_back_of_parts_removes_them(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bundle.inspect

    def broken(written: Any, **kwargs: Any) -> None:
        raise DigestMismatchError("simulated: reads back differently")

    monkeypatch.setattr(bundle.inspect, "verify_written", broken)
    with pytest.raises(DigestMismatchError):
        write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": b"x"}),
                     [trust.release_key], split_size=writer_mod.DEFAULT_SPLIT_SIZE)
    assert os.listdir(out) == []


@pytest.mark.parametrize(("where", "error", "message"), [
    (lambda size: size - 1024 - 600, DigestMismatchError, r"reads back differently"),
    (lambda size: 3, BundleFormatError, r"container structure"),
    (lambda size: size - 1, BundleFormatError, r"container structure"),
])
def test_a_device_returning_other_bytes_removes_the_output(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
    where: Callable[[int], int], error: type[Exception], message: str,
) -> None:
    device_flipping_byte(monkeypatch, where)
    with pytest.raises(error, match=message):
        write_bundle(out / "b.tgb", release_draft(trust),
                     make_files(src, {"a": _mixed(50_000)}), [trust.release_key])
    assert os.listdir(out) == []


def test_bundles_made_durable_together_are_the_same_bytes(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``durable=False`` leaves a small bundle under its temporary name (not yet fsynced
    nor re-read); :func:`make_durable` fsyncs and re-reads a batch of them, then renames
    them: the files are byte for byte what a durable write gives, with the whole file's
    SHA-256 reported. One that reads back differently is removed, the others land."""
    files = make_files(src, {"a": b"small", "b": _mixed(50_000)})
    ref = write_bundle(out / "ref.tgb", release_draft(trust), files, [trust.release_key])
    assert ref.pending is None
    assert ref.file_sha256 == hashlib.sha256((out / "ref.tgb").read_bytes()).hexdigest()
    batch = [write_bundle(out / f"b{i}.tgb", release_draft(trust), files,
                          [trust.release_key], durable=False) for i in range(3)]
    for w in batch:
        assert w.pending is not None and w.pending.is_file() and not w.paths[0].exists()
        assert w.pending.name.endswith(".tmp") and w.file_sha256 == ref.file_sha256
    synced: list[list[str]] = []
    errors = writer_mod.make_durable(batch, synced=lambda: synced.append(
        sorted(p.name for p in out.glob("*.tgb"))))
    assert errors == [None] * 3 and synced == [["ref.tgb"]]  # none renamed before it
    for w in batch:
        assert w.paths[0].read_bytes() == (out / "ref.tgb").read_bytes()
        verify_written(w)
    assert _spools_and_temps(out) == []

    again = [write_bundle(out / f"c{i}.tgb", release_draft(trust), files,
                          [trust.release_key], durable=False) for i in range(2)]
    device_flipping_byte(monkeypatch, lambda size: size - 1024 - 600)
    first, second = writer_mod.make_durable(again, threads=1)  # both damaged on re-read
    assert isinstance(first, DigestMismatchError) and "reads back differently" in str(first)
    assert isinstance(second, DigestMismatchError)
    assert not (out / "c0.tgb").exists() and not (out / "c1.tgb").exists()
    assert _spools_and_temps(out) == []


@pytest.mark.parametrize("syncfs_works", [True, False])
def test_a_batch_in_many_directories_is_made_durable_by_one_syncfs(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
    syncfs_works: bool,
) -> None:
    """From SYNCFS_FROM bundles (each in its own directory, as a live burst's), make_durable
    syncs their file system once for the files and once for the directories (with the new
    directories' parent) instead of an fsync each; each file is still re-read from the
    device (a damaged one is removed). Where syncfs fails, every file and directory is
    fsynced as before. Either way the bundles land whole under their final names."""
    files = make_files(src, {"a": b"small", "b": _mixed(50_000)})
    count = writer_mod.SYNCFS_FROM
    dirs = [out / f"agent-{i}" for i in range(count)]
    for directory in dirs:
        directory.mkdir()
    batch = [write_bundle(d / "b.tgb", release_draft(trust), files, [trust.release_key],
                          durable=False) for d in dirs]
    calls: list[list[str]] = []
    real = writer_mod.syncfs_each

    def syncfs_each(paths: list[Path]) -> bool:
        calls.append(sorted(str(p) for p in paths))
        return real(paths) if syncfs_works else False

    fsynced_dirs: list[Path] = []
    real_fsync_dir = writer_mod.fsync_dir

    def fsync_dir(directory: Path) -> None:
        fsynced_dirs.append(Path(directory))
        real_fsync_dir(directory)

    monkeypatch.setattr(writer_mod, "syncfs_each", syncfs_each)
    monkeypatch.setattr(writer_mod, "fsync_dir", fsync_dir)
    errors = writer_mod.make_durable(batch, new_dirs=set(dirs[:2]))
    assert errors == [None] * count
    assert calls[0] == sorted(str(w.pending) for w in batch)  # the files, then ...
    assert calls[1] == sorted([*map(str, dirs), str(out)])  # their directories, new ones' parent
    if syncfs_works:
        assert fsynced_dirs == []
    else:  # failed: each file fsynced (in make_durable's threads), and each directory
        assert sorted(fsynced_dirs) == sorted([*dirs, out])
    for w in batch:
        verify_written(w)
        assert _spools_and_temps(w.paths[0].parent) == []

    again = [write_bundle(d / "c.tgb", release_draft(trust), files, [trust.release_key],
                          durable=False) for d in dirs]
    device_flipping_byte(monkeypatch, lambda size: size - 1024 - 600)
    errors = writer_mod.make_durable(again)
    assert all(isinstance(e, DigestMismatchError) for e in errors)
    assert not [d for d in dirs if (d / "c.tgb").exists()]


def test_a_batch_on_two_file_systems_is_made_durable_by_a_syncfs_of_each(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """make_durable's batch half in ``out``, half on /dev/shm (tmpfs): the real syncfs of
    each file system, once for the files and once for the directories, and no fsync; the
    bundles land whole. Then /dev/shm's syncfs fails: every file and every directory (on
    either file system) is fsynced instead, and the bundles land whole all the same."""
    import shutil
    import tempfile

    from signing import fileio

    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert shm.stat().st_dev != out.stat().st_dev
        files = make_files(src, {"a": b"small"})
        count = writer_mod.SYNCFS_FROM
        dirs = [(out if i % 2 else shm) / f"agent-{i}" for i in range(count)]
        synced: list[int] = []
        fsynced_dirs: list[Path] = []
        real_syncfs, real_fsync_dir = fileio.syncfs, writer_mod.fsync_dir
        failing: set[int] = set()

        def syncfs(fd: int) -> bool:
            device = os.fstat(fd).st_dev
            synced.append(device)
            return device not in failing and real_syncfs(fd)

        def fsync_dir(directory: Path) -> None:
            fsynced_dirs.append(Path(directory))
            real_fsync_dir(directory)

        file_fsyncs: list[int] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                file_fsyncs.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(fileio, "syncfs", syncfs)
        monkeypatch.setattr(writer_mod, "fsync_dir", fsync_dir)
        monkeypatch.setattr(os, "fsync", fsync)
        devices = {out.stat().st_dev, shm.stat().st_dev}
        for name, fails in (("b.tgb", set()), ("c.tgb", {shm.stat().st_dev})):
            for d in dirs:
                d.mkdir(exist_ok=True)
            batch = [write_bundle(d / name, release_draft(trust), files, [trust.release_key],
                                  durable=False) for d in dirs]
            synced.clear()
            fsynced_dirs.clear()
            file_fsyncs.clear()
            failing.clear()
            failing.update(fails)
            assert writer_mod.make_durable(batch) == [None] * count
            for w in batch:
                verify_written(w)
                assert _spools_and_temps(w.paths[0].parent) == []
            if not fails:
                assert sorted(synced) == sorted([*devices, *devices])  # files, directories
                assert fsynced_dirs == [] and file_fsyncs == []
            else:  # the files' syncfs failed, then the directories': fsync each
                assert synced.count(shm.stat().st_dev) == 2 and len(synced) <= 4
                assert len(file_fsyncs) == count
                assert sorted(fsynced_dirs) == sorted(dirs)
    finally:
        shutil.rmtree(shm)


def test_read_back_spans_many_windows(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small windows: the re-read runs behind the writer through many sync_file_range
    steps and still sees every byte (a byte changed late in the file is caught)."""
    import bundle.writer

    monkeypatch.setattr(bundle.writer, "_READBACK_WINDOW", 64 * 1024)
    files = make_files(src, {f"f{i}": _mixed(300_000 + i) for i in range(4)})
    w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key])
    verify_written(w)
    # The file is still growing while it is re-read: name the byte by the final size.
    device_flipping_byte(monkeypatch, lambda size: w.size - 1024 - 700)
    with pytest.raises(DigestMismatchError, match=r"f3"):
        write_bundle(out / "c.tgb", release_draft(trust), files, [trust.release_key])
    assert not (out / "c.tgb").exists()


def test_colliding_names_refused_before_compressing(trust: TrustKit, src: Path,
                                                     out: Path) -> None:
    files = make_files(src, {"sql/a.sql": b"x"})
    with pytest.raises(ManifestError, match=r"collides"):
        write_bundle(out / "b.tgb", release_draft(trust),
                     [*files, PayloadFile("SQL/A.sql", src / "missing")], [trust.release_key])


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("delta", [+10, -1])
def test_a_file_changing_size_while_read(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch, delta: int,
    large: bool,
) -> None:
    """Read whole (small) or streamed through reused buffers (large): refused either way."""
    real = writer_mod._open_source

    def lying(pf: PayloadFile) -> tuple[int, int]:
        fd, size = real(pf)
        return fd, size + delta  # as if the file grew or shrank after fstat

    monkeypatch.setattr(writer_mod, "_open_source", lying)
    if large:
        monkeypatch.setattr(writer_mod, "MT_THRESHOLD_BYTES", 50)
        monkeypatch.setattr(writer_mod, "BUFFER_BYTES", 64)  # several reads into the ring
    with pytest.raises(ReleaseFormatError, match=r"changed size while it was being read"):
        write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": b"x" * 1000}),
                     [trust.release_key])
    assert os.listdir(out) == []


@pytest.mark.parametrize("how", ["assembled", "streamed", "split", "pending", "prepared"])
def test_a_directory_that_cannot_be_synced_after_the_rename_leaves_no_bundle(
    trust: TrustKit, src: Path, out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The bundle is whole, verified and under its final name when its directory's fsync
    fails (EIO): write_bundle and write_prepared raised the bare OSError ("Input/output
    error", no file named) and left the file, which the hub then reported failed and
    'bundle create' reported not written. Now every writer does what make_durable did:
    the file (every part) is removed and the error names it, the directory and the
    reason; the same write succeeds once the directory syncs."""
    from bundle.prepared import prepare_payloads, write_prepared

    files = make_files(src, {"a": _mixed(40_000), "b": b"small"})
    if how == "streamed":
        monkeypatch.setattr(writer_mod, "ASSEMBLE_BYTES", 1000)
    prepared = prepare_payloads(files, tmp_path) if how == "prepared" else None

    def write() -> tuple[Path, ...]:
        if prepared is not None:
            return write_prepared(out / "b.tgb", release_draft(trust, files=prepared.entries),
                                  prepared, [trust.release_key]).paths
        w = write_bundle(out / "b.tgb", release_draft(trust), files, [trust.release_key],
                         split_size=20_000 if how == "split" else None,
                         durable=how != "pending")
        if how == "pending":
            (error,) = writer_mod.make_durable([w])
            if error is not None:
                raise error
        return w.paths

    real = writer_mod.fsync_dir

    def eio(directory: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod, "fsync_dir", eio)
    with pytest.raises(OSError, match=r"b\.tgb.* written and verified, but its directory "
                       rf"{re.escape(str(out))} cannot be synced \(Input/output error\): "
                       "removed") as caught:
        write()
    assert caught.value.errno == errno.EIO
    assert os.listdir(out) == []
    monkeypatch.setattr(writer_mod, "fsync_dir", real)
    paths = write()
    assert len(paths) == (3 if how == "split" else 1) and all(p.is_file() for p in paths)
    assert _spools_and_temps(out) == []


@pytest.mark.parametrize("name", ["y" * 251 + ".tgb", "\u00e9" * 125 + "e.tgb"])
def test_a_bundle_named_as_long_as_the_file_system_allows_is_written(
    trust: TrustKit, src: Path, out: Path, name: str,
) -> None:
    """A 255-byte file name is legal, but the temporary name ``.NAME.<12 hex>.tmp`` is 18
    bytes longer: 'bundle create -o <255-byte name>' failed with "File name too long"
    (seen by hand). The temporary name is now cut short with a digest of the name, and
    the bundle lands under the name asked for."""
    import os

    assert len(os.fsencode(name)) == 255
    files = make_files(src, {"a": _mixed(40_000), "b": b"small"})
    w = write_bundle(out / name, release_draft(trust), files, [trust.release_key])
    assert w.paths == (out / name,)
    verify_written(w)
    assert os.listdir(out) == [name]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_an_output_that_is_not_a_regular_file_is_never_replaced(
    trust: TrustKit, src: Path, out: Path, tmp_path: Path, kind: str,
) -> None:
    """'bundle create -o /dev/null' (as root) renamed the bundle over the device node:
    /dev/null became a regular file (seen by hand on a device node made for it). An output
    that exists and is not a regular file (a device, a FIFO, a directory, a symbolic link;
    a FIFO and a link stand in here) is refused before anything is written, and left."""
    import os

    target = out / "b.tgb"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        (tmp_path / "elsewhere.tgb").write_bytes(b"kept")
        target.symlink_to(tmp_path / "elsewhere.tgb")
    files = make_files(src, {"a": b"small"})
    with pytest.raises(OSError, match=rf"{re.escape(str(target))} exists and is not a regular "
                       "file .*: refusing to replace it with the bundle"):
        write_bundle(target, release_draft(trust), files, [trust.release_key])
    assert os.listdir(out) == ["b.tgb"]
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    else:
        assert target.is_symlink() and target.read_bytes() == b"kept"


def test_a_directory_that_cannot_be_synced_names_an_odd_bundle_on_one_line(
    trust: TrustKit, src: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error for a directory that cannot be synced names the bundle: a name holding a
    new line (the operator's ``-o``) is escaped, so it cannot start a line of its own."""
    from bundle import writer as writer_mod

    def eio(directory: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod, "fsync_dir", eio)
    manifest, payloads = _release_manifest(trust, _source(src, {"a.sql": b"select 1;"}))
    with pytest.raises(OSError) as caught:
        write_bundle(out / "a.tgb\nVERIFIED a.tgb", manifest, payloads, [trust.release_key])
    assert "\n" not in str(caught.value)
    assert "a.tgb\\x0aVERIFIED a.tgb written and verified, but its directory" in str(caught.value)
    assert os.listdir(out) == []
