"""Split bundles (docs/bundle-format.md §8): layout, join/split, verification from parts."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from bundle.errors import PartsError
from bundle.inspect import inspect
from bundle.parts import (
    DEFAULT_SPLIT_SIZE,
    MAX_PARTS,
    join_parts,
    part_path,
    plan_parts,
    split_bundle,
)
from bundle.writer import WrittenBundle, write_bundle
from tests.bundle.kit import make_files, release_draft, staging_entries, verify
from tests.fixtures.trust import TrustKit

SPLIT = 64 * 1024


def _contents(seed: int = 7) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {
        "bin/a": rnd.randbytes(150_000),
        "empty": b"",
        "sql/b.sql": b"select %d;\n" % seed * 3000,
        "bin/c": rnd.randbytes(70_000),
    }


def _write(trust: TrustKit, src: Path, out: Path, name: str = "billing.tgb",
           split: int = SPLIT, seed: int = 7, **kwargs: object) -> WrittenBundle:
    files = make_files(src, _contents(seed))
    return write_bundle(out / name, release_draft(trust), files, [trust.release_key],
                        split_size=split, **kwargs)  # type: ignore[arg-type]


def test_plan() -> None:
    assert plan_parts(1300, 512) == [512, 512, 276]
    assert plan_parts(1024, 512) == [512, 512]
    assert plan_parts(300, 512) == [300]
    assert DEFAULT_SPLIT_SIZE == 4 * 1024**3 - 1
    with pytest.raises(ValueError, match="at most 999"):
        plan_parts(1000 * 512, 512)
    with pytest.raises(ValueError, match="at least 512"):
        plan_parts(10, 100)
    assert MAX_PARTS == 999
    assert part_path(Path("/m/billing.tgb"), 3) == Path("/m/billing.tgb.part003")


def test_parts_layout(trust: TrustKit, src: Path, out: Path) -> None:
    w = _write(trust, src, out)
    assert w.paths[0] == out / "billing.tgb.part000"
    info = w.manifest.parts
    assert info is not None and info.size == SPLIT
    assert [p.name for p in w.paths[1:]] == [f"billing.tgb.part{i:03d}"
                                             for i in range(1, info.count + 1)]
    assert [p.stat().st_size for p in w.paths[1:]] == [d.size for d in info.digests]
    assert sum(p.stat().st_size for p in w.paths) == w.size
    # The first part is only the head, and authenticates itself.
    assert w.paths[0].read_bytes().startswith(b"tiangong-bundle")
    assert inspect(w.paths[0]).manifest == w.manifest
    assert not (out / "billing.tgb").exists()


@pytest.mark.parametrize("split", [2048, 65_536, 65_537, 10**9])
def test_join_equals_the_unsplit_file(trust: TrustKit, src: Path, tmp_path: Path,
                                      split: int) -> None:
    parts_dir, single_dir = tmp_path / "parts", tmp_path / "single"
    parts_dir.mkdir()
    single_dir.mkdir()
    parts = _write(trust, src, parts_dir, split=split)
    single = _write(trust, src, single_dir, split=split, write_parts=False)
    assert single.paths == (single_dir / "billing.tgb",)
    assert single.manifest == parts.manifest and single.envelope == parts.envelope
    shuffled = list(parts.paths)
    random.Random(split).shuffle(shuffled)
    joined = join_parts(shuffled, tmp_path / "joined.tgb")
    assert joined.read_bytes() == single.paths[0].read_bytes()
    # And back: splitting the single file gives the same parts.
    (tmp_path / "resplit").mkdir()
    again = split_bundle(single.paths[0], tmp_path / "resplit")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in parts.paths]


def test_verify_from_shuffled_parts(trust: TrustKit, src: Path, out: Path,
                                    staging: Path) -> None:
    w = _write(trust, src, out)
    shuffled = list(w.paths)
    random.Random(1).shuffle(shuffled)
    v = verify(shuffled, trust, staging)
    assert {n: p.read_bytes() for n, p in v.files.items()} == _contents()
    assert staging_entries(staging) == [v.staged_dir.name]


def test_joined_file_verifies(trust: TrustKit, src: Path, out: Path, staging: Path) -> None:
    w = _write(trust, src, out)
    joined = join_parts(w.paths, out / "joined.tgb")
    verify(joined, trust, staging)


def test_renamed_parts_are_found(trust: TrustKit, src: Path, out: Path, staging: Path) -> None:
    w = _write(trust, src, out)
    renamed = []
    for i, path in enumerate(w.paths):
        target = out / f"copy {i} of something.bin"
        os.rename(path, target)
        renamed.append(target)
    v = verify(renamed, trust, staging)
    assert set(v.files) == set(_contents())


def _refused_parts(paths: list[Path], trust: TrustKit, staging: Path, match: str) -> str:
    with pytest.raises(PartsError, match=match) as info:
        verify(paths, trust, staging)
    assert staging_entries(staging) == []
    return str(info.value)


def test_missing_part_is_named(trust: TrustKit, src: Path, out: Path, staging: Path) -> None:
    w = _write(trust, src, out)
    total = len(w.paths)
    paths = [p for p in w.paths if not p.name.endswith("part003")]
    _refused_parts(paths, trust, staging,
                   rf"part 3 of {total} \(billing\.tgb\.part003\) is missing — re-copy only "
                   "this part")


def test_several_missing_parts_in_one_message(trust: TrustKit, src: Path, out: Path,
                                              staging: Path) -> None:
    w = _write(trust, src, out)
    message = _refused_parts([w.paths[0], w.paths[2]], trust, staging, "re-copy only these")
    assert "part003" in message and "part001" in message


def test_incomplete_copy_is_named(trust: TrustKit, src: Path, out: Path,
                                  staging: Path) -> None:
    w = _write(trust, src, out)
    os.truncate(w.paths[2], 1000)
    _refused_parts(list(w.paths), trust, staging,
                   r"part 2 of \d+ \(billing\.tgb\.part002\) is 1000 bytes instead of 64 KiB")


def test_stale_part_from_an_older_bundle(trust: TrustKit, src: Path, tmp_path: Path,
                                         staging: Path) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old = _write(trust, src, old_dir, seed=1)
    new = _write(trust, src, new_dir, seed=2)
    shutil.copy(old.paths[1], new.paths[1])  # same name, same size, other bundle
    message = _refused_parts(list(new.paths), trust, staging,
                             r"part 1 of \d+ \(billing\.tgb\.part001\) is damaged or belongs "
                             "to another bundle")
    assert "re-copy only this part" in message


def test_corrupt_part_beats_the_payload_digest(trust: TrustKit, src: Path, out: Path,
                                               staging: Path) -> None:
    # The flipped byte is inside a payload, so the payload digest fails first; the verifier
    # still names the part, which is what the operator can fix.
    w = _write(trust, src, out)
    data = bytearray(w.paths[2].read_bytes())
    data[100] ^= 0xFF
    w.paths[2].write_bytes(bytes(data))
    _refused_parts(list(w.paths), trust, staging, r"part 2 of \d+ .* is damaged")


def test_first_part_is_needed_once(trust: TrustKit, src: Path, tmp_path: Path,
                                   staging: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = _write(trust, src, a_dir)
    b = _write(trust, src, b_dir, name="other.tgb", seed=3)
    _refused_parts(list(a.paths[1:]), trust, staging, "first part .* is missing")
    _refused_parts([*a.paths, b.paths[0]], trust, staging, "several files look like the first")


def test_writer_removes_stale_higher_parts(trust: TrustKit, src: Path, out: Path) -> None:
    many = _write(trust, src, out, split=4096)
    few = _write(trust, src, out, split=SPLIT)
    assert len(many.paths) > len(few.paths)
    left = sorted(p for p in os.listdir(out) if p.startswith("billing.tgb.part"))
    assert left == sorted(p.name for p in few.paths)


def test_split_needs_signed_parts(trust: TrustKit, src: Path, out: Path) -> None:
    w = write_bundle(out / "b.tgb", release_draft(trust), make_files(src, {"a": b"x"}),
                     [trust.release_key])
    with pytest.raises(PartsError, match="lists no parts"):
        split_bundle(w.paths[0])
