"""Releases: creation from a directory, immutability after submission, diff."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Release
from hub.errors import (
    ConflictError,
    ImmutableReleaseError,
    InvalidStateError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services.releases import (
    create_product,
    create_release,
    diff_releases,
    get_release,
    submit_release,
    update_release,
)
from tests.hub.conftest import World


def _events(world: World) -> int:
    return world.session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_create_release_stores_files_and_audits(
    world: World, release_dir: Callable[..., Path]
) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    rel = create_release(dev, release_dir())
    assert rel.state == "draft"
    assert rel.author.username == "dev"
    assert [s["name"] for s in rel.steps] == ["greet"]
    assert rel.files[0]["name"] == "step0.sh"
    stored = Path(rel.stored_path)
    assert stored.name == rel.content_hash
    assert (stored / "release.toml").is_file() and (stored / "step0.sh").is_file()
    last = world.session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert last is not None and last.action == "release.create" and last.actor == "dev"


def test_create_release_refusals(world: World, release_dir: Callable[..., Path]) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    path = release_dir()
    with pytest.raises(PermissionDeniedError):
        create_release(world.ctx("appr1"), path)
    with pytest.raises(ValidationError, match="names product 'hello', not 'other'"):
        create_release(dev, path, product="other")
    create_release(dev, path)
    before = _events(world)
    with pytest.raises(ConflictError, match="already exists"):
        create_release(dev, path)
    bad = path.parent / "broken"
    bad.mkdir()
    (bad / "release.toml").write_text("format = 1\n")
    with pytest.raises(ValidationError, match="release"):
        create_release(dev, bad)
    assert _events(world) == before


def test_submitted_release_is_immutable(world: World, release_dir: Callable[..., Path]) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    rel = create_release(dev, release_dir())
    update_release(dev, rel, description="draft edits are fine")
    submit_release(dev, rel)
    world.session.commit()
    recorded = rel.content_hash
    with pytest.raises(ImmutableReleaseError, match="cannot change"):
        update_release(dev, rel, description="sneaky")
    # Even bypassing the service, the flush guard refuses.
    rel.content_hash = "0" * 64
    with pytest.raises(ImmutableReleaseError, match="content_hash cannot change"):
        world.session.flush()
    world.session.rollback()
    assert get_release(world.session, "hello", "1.0.0").content_hash == recorded
    with pytest.raises(InvalidStateError, match="not draft"):
        submit_release(dev, rel)


def test_submit_rehashes_stored_copy(world: World, release_dir: Callable[..., Path]) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    rel = create_release(dev, release_dir())
    (Path(rel.stored_path) / "step0.sh").write_text("rm -rf /\n")
    with pytest.raises(ValidationError, match="hash to"):
        submit_release(dev, rel)
    assert rel.state == "draft"


def test_diff(world: World, release_dir: Callable[..., Path]) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    a = create_release(dev, release_dir(steps={"one": "a\n", "two": "b\n", "three": "c\n"}))
    b = create_release(
        dev,
        release_dir(version="1.1.0", steps={"two": "b\n", "one": "changed\n", "four": "d\n"}),
    )
    d = diff_releases(a, b)
    assert d.steps_added == ("four",)
    assert d.steps_removed == ("three",)
    assert d.steps_changed == ("one", "two")  # both now use another script file name
    assert d.steps_reordered
    assert d.files_changed == ("step0.sh", "step1.sh", "step2.sh")
    assert d.files_added == d.files_removed == ()
    c = create_release(dev, release_dir(version="1.2.0", steps={"one": "a\n"}))
    d2 = diff_releases(a, c)
    assert d2.files_removed == ("step1.sh", "step2.sh")
    assert d2.steps_removed == ("two", "three")
    assert diff_releases(c, a).files_added == ("step1.sh", "step2.sh")
    assert diff_releases(a, a).empty
    assert world.session.scalar(select(func.count()).select_from(Release)) == 3


@pytest.mark.parametrize("fmt", ["gztar", "zip"])
def test_create_release_from_archive(
    world: World, release_dir: Callable[..., Path], tmp_path: Path, fmt: str
) -> None:
    import shutil

    dev = world.ctx("dev")
    create_product(dev, "hello")
    src = release_dir()
    archive = Path(shutil.make_archive(str(tmp_path / "hello-1.0.0"), fmt, src.parent, src.name))
    rel = create_release(dev, archive)
    from bundle.release import load_release

    assert rel.content_hash == load_release(src).content_hash
    assert (Path(rel.stored_path) / "step0.sh").read_text() == "echo hello\n"
    assert not [p for p in Path(rel.stored_path).parent.iterdir() if p.name.startswith(".")]


def test_bad_archive_refused(world: World, tmp_path: Path) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ValidationError, match=r"junk\.tgz"):
        create_release(dev, junk)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValidationError, match="not a release archive"):
        create_release(dev, other)
