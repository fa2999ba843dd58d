"""The file executor on a real file system: placing, rendering, refusals, undo data, restore."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.executors import get_executor
from agent.executors.base import StepContext, StepLog, StepOutcome
from agent.executors.file import UNDO_PREVIOUS, UNDO_RECORD, restore_file
from bundle.steps import normalize_step


def _run(tmp: Path, content: bytes, dest: Path, **fields: Any) -> tuple[StepOutcome, Path]:
    source = tmp / "payload" / "conf" / "app.conf"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    step = normalize_step({"name": "config", "kind": "file", "source": "conf/app.conf",
                           "path": str(dest), **fields}, 0, {"conf/app.conf"})
    executor = get_executor("file")
    executor.validate(step)
    undo = tmp / "undo" / "b-1" / dest.name
    ctx = StepContext(bundle_id="b-1", release={}, index=0, step=step,
                      files={"conf/app.conf": source}, workdir=tmp, connection=None,
                      secrets={}, log=StepLog(), deadline=time.monotonic() + 60,
                      cancel=threading.Event(), undo_dir=undo)
    return executor.run(ctx), undo


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_a_file_replaces_the_previous_one_which_is_recorded_and_restored(tmp_path: Path) -> None:
    dest = tmp_path / "etc" / "app.conf"
    dest.parent.mkdir()
    dest.write_bytes(b"old\n")
    dest.chmod(0o640)

    outcome, undo = _run(tmp_path, b"new\n", dest, mode="0600")

    assert outcome.status == "succeeded", outcome.summary
    assert dest.read_bytes() == b"new\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert (undo / UNDO_PREVIOUS).read_bytes() == b"old\n"
    record = json.loads((undo / UNDO_RECORD).read_text())
    assert (record["existed"], record["mode"], record["path"]) == (True, 0o640, str(dest))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["app.conf"]  # no temp left

    log = StepLog()
    assert restore_file(undo, log) == f"restored the previous {dest}"
    assert dest.read_bytes() == b"old\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


def test_a_file_that_did_not_exist_is_removed_by_the_restore(tmp_path: Path) -> None:
    dest = tmp_path / "new.conf"

    outcome, undo = _run(tmp_path, b"x", dest)

    assert outcome.status == "succeeded" and dest.read_bytes() == b"x"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert json.loads((undo / UNDO_RECORD).read_text())["existed"] is False
    restore_file(undo, StepLog())
    assert not dest.exists()


def test_the_first_undo_record_is_kept_when_the_step_runs_again(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"original")

    _run(tmp_path, b"first", dest)
    outcome, undo = _run(tmp_path, b"second", dest)

    assert outcome.status == "succeeded" and dest.read_bytes() == b"second"
    assert (undo / UNDO_PREVIOUS).read_bytes() == b"original"
    restore_file(undo, StepLog())
    assert dest.read_bytes() == b"original"


def test_rendering_substitutes_parameters_and_refuses_unknown_names(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"untouched")

    ok, _ = _run(tmp_path, b"port=${port} cost=$$5\n", tmp_path / "ok.conf", render=True,
                 params={"port": "8080"})
    bad, undo = _run(tmp_path, b"port=${port} host=${host} ${x y}\n", dest, render=True,
                     params={"port": "8080"})

    assert ok.status == "succeeded"
    assert (tmp_path / "ok.conf").read_text() == "port=8080 cost=$5\n"
    assert bad.status == "failed"
    assert "conf/app.conf: placeholder(s) 'host', 'x y' are not parameters" in bad.summary
    assert dest.read_bytes() == b"untouched" and not undo.exists()


def test_a_symlink_at_the_destination_is_refused_unless_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.conf"
    target.write_bytes(b"real")
    link = tmp_path / "link.conf"
    link.symlink_to(target)

    refused, undo = _run(tmp_path, b"new", link)

    assert refused.status == "failed" and "is a symbolic link" in refused.summary
    assert "follow_symlink = true" in refused.summary
    assert target.read_bytes() == b"real" and link.is_symlink() and not undo.exists()

    followed, undo = _run(tmp_path, b"new", link, follow_symlink=True)

    assert followed.status == "succeeded" and link.is_symlink()
    assert target.read_bytes() == b"new"
    restore_file(undo, StepLog())
    assert target.read_bytes() == b"real"


@pytest.mark.parametrize("case", ["directory", "no parent", "foreign owner"])
def test_a_destination_that_cannot_be_placed_changes_nothing(tmp_path: Path, case: str) -> None:
    (tmp_path / "adir").mkdir()
    dest = {"directory": tmp_path / "adir", "no parent": tmp_path / "none" / "x.conf",
            "foreign owner": tmp_path / "x.conf"}[case]
    fields: dict[str, Any] = {}
    if case == "foreign owner":  # as root: a user that does not exist; else: root
        fields = {"owner": "nobody-such-user" if os.geteuid() == 0 else "0"}
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    outcome, undo = _run(tmp_path, b"x", dest, **fields)

    assert outcome.status == "failed"
    words = {"directory": "is not a regular file", "no parent": "is not an existing directory",
             "foreign owner": "need the agent to run as root" if os.geteuid() else
             "does not exist"}[case]
    assert words in outcome.summary
    after = sorted(str(p) for p in tmp_path.rglob("*") if "payload" not in str(p))
    assert after == [p for p in before if "payload" not in p] and not undo.exists()


def test_a_restore_refuses_a_previous_copy_that_does_not_match_its_digest(
        tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old")
    _, undo = _run(tmp_path, b"new", dest)
    (undo / UNDO_PREVIOUS).write_bytes(b"tampered")

    with pytest.raises(Exception, match="does not match its recorded SHA-256"):
        restore_file(undo, StepLog())
    assert dest.read_bytes() == b"new"
    assert _tree(undo)[UNDO_PREVIOUS] == b"tampered"


def test_a_file_step_whose_undo_data_cannot_be_recorded_changes_nothing(
        tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old")
    (tmp_path / "undo").write_text("a file where the undo directory should be")

    outcome, undo = _run(tmp_path, b"new", dest)

    assert outcome.status == "failed"
    assert outcome.summary.startswith(f"cannot record undo data in {undo}")
    assert outcome.summary.endswith("nothing was changed")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf", "payload", "undo"]
