"""Undo data survives a power cut between recording it and making the change.

A real ``agent run`` is killed (SIGKILL) at crash point ``undo-recorded`` (the previous file is
recorded and fsynced in ``undo/``, the file step has not written yet) and at ``step-ran`` (the
new file is in place, its outcome not recorded). The next start reports the bundle
``interrupted`` (the step is never run twice), and the undo record still describes the file
as it was before — so a rollback restores the right bytes either way.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from agent.executors.base import StepLog
from agent.executors.file import UNDO_PREVIOUS, UNDO_RECORD, restore_file
from tests.e2e.agent_site import (
    drop,
    init_site,
    make_bundle,
    results,
    settled,
    start_agent,
    stop_agent,
    write_release,
)
from tests.e2e.conftest import HubKeys, wait_for

#: Crash points covered here (tests/e2e/test_agent_crashpoints.py checks all are covered).
UNDO_CRASH_POINTS = ("undo-recorded",)


def _run_to_result(home: Path, log: Path, bid: str) -> dict[str, Any]:
    """Start the agent, wait until the bundle's result is written, stop it; the result."""
    agent = start_agent(home, log)
    try:
        wait_for(lambda: settled(home) and any(r["bundle_id"] == bid for r in results(home)),
                 90, f"the result of {bid}")
    finally:
        stop_agent(agent, log, home)
    (result,) = [r for r in results(home) if r["bundle_id"] == bid]
    return result


@pytest.mark.parametrize(("point", "after_crash"), [
    ("undo-recorded", "port=80\n"),  # recorded, the change not made
    ("step-ran", "port=8080\n"),  # the change made, its outcome not recorded
])
def test_a_power_cut_after_recording_undo_data_leaves_a_correct_rollback(
        tmp_path: Path, hub_keys: HubKeys, point: str, after_crash: str) -> None:
    home = init_site(tmp_path, hub_keys)
    dest = tmp_path / "site" / "app.conf"
    dest.parent.mkdir()
    dest.write_text("port=80\n")
    release = write_release(
        tmp_path / "conf-1.0", "conf", "1.0",
        [f'name = "config"\nkind = "file"\nsource = "app.conf"\npath = "{dest}"\n'
         'render = true\nparams = { port = "8080" }'],
        {"app.conf": "port=${port}\n"})
    bundle, bid = make_bundle(hub_keys, release, tmp_path / "conf.tgb", 1)
    drop(bundle, home)
    log = tmp_path / "agent.log"

    proc = start_agent(home, log, {"TIANGONG_CRASH_AT": point})
    proc.wait(timeout=90)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    undo = home / "undo" / bid / "001"
    assert dest.read_text() == after_crash
    assert (undo / UNDO_PREVIOUS).read_text() == "port=80\n"

    result = _run_to_result(home, log, bid)
    assert result["status"] == "interrupted", result
    assert dest.read_text() == after_crash  # never run twice
    assert json.loads((undo / UNDO_RECORD).read_text())["existed"] is True

    restore_file(undo, StepLog())
    assert dest.read_text() == "port=80\n"


def test_a_file_step_runs_and_its_undo_data_restores_the_previous_file(
        tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    dest = tmp_path / "site" / "app.conf"
    dest.parent.mkdir()
    dest.write_text("port=80\n")
    created = tmp_path / "site" / "extra.conf"
    release = write_release(
        tmp_path / "conf-1.0", "conf", "1.0",
        [f'name = "config"\nkind = "file"\nsource = "app.conf"\npath = "{dest}"\nmode = "0600"',
         f'name = "extra"\nkind = "file"\nsource = "app.conf"\npath = "{created}"'],
        {"app.conf": "port=8080\n"})
    bundle, bid = make_bundle(hub_keys, release, tmp_path / "conf.tgb", 1)
    drop(bundle, home)
    log = tmp_path / "agent.log"

    result = _run_to_result(home, log, bid)
    assert result["status"] == "succeeded", result
    steps = result["body"]["steps"]
    assert [s["details"]["previous"] for s in steps] == ["replaced", "absent"]
    assert dest.read_text() == created.read_text() == "port=8080\n"

    for number in ("002", "001"):  # reverse order, as a rollback does
        restore_file(home / "undo" / bid / number, StepLog())
    assert dest.read_text() == "port=80\n" and not created.exists()
