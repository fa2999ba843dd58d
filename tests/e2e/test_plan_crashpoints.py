"""Power cuts at the crash points of a plan (preflight) bundle, with a real agent process
killed by SIGKILL (docs/agent.md, "Crash points"): after the restart the plan has exactly one
signed result, the result chain is unbroken, nothing of the check ran twice, and the real
deployment bundle still applies as sequence 1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.faults import PLAN_CRASH_POINTS
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import plan_manifest, write_bundle
from tests.e2e.agent_site import (
    AGENT_ID,
    ENVIRONMENT,
    assert_chain,
    init_site,
    make_bundle,
    start_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, drop_settled, run

# crash point -> the plan's one result after the restart (status, words in its summary)
CASES = {
    # The plan state was written, the file still in the inbox: the copy is a replay of its
    # own sequence; nothing was checked.
    "plan-accepted": ("rejected", "sequence 1 is not newer than 1 already accepted"),
    # Checked and recorded: the restart only writes the result.
    "plan-recorded": ("plan-passed", "plan passed"),
}


def test_every_plan_crash_point_is_covered() -> None:
    assert set(CASES) == set(PLAN_CRASH_POINTS)


def _plan(keys: HubKeys, release: Path, out: Path, seq: int) -> Path:
    now = int(time.time())
    manifest, files = plan_manifest(
        load_release(release), bundle_id=f"plan-{seq}", issuer=keys.kit.release_key.key_id,
        target=Target(agents=(AGENT_ID,), environment=ENVIRONMENT), root_version=1,
        sequence=seq, created=now - 60, expires=now + 3600, counter=1, author="alice")
    return write_bundle(out, manifest, files, [keys.kit.release_key]).paths[0]


@pytest.mark.parametrize("point", sorted(CASES))
def test_power_cut_during_a_plan(tmp_path: Path, hub_keys: HubKeys, point: str) -> None:
    home = init_site(tmp_path, hub_keys)
    checks = tmp_path / "checks.txt"
    effects = tmp_path / "effects.txt"
    release = write_release(
        tmp_path / "rel", "crash", "1.0.0",
        ['name = "shell"\nkind = "shell"\nscript = "do.sh"\ncheck = "check.sh"'],
        {"do.sh": f'echo ran >> "{effects}"\n',
         "check.sh": f'echo "$TIANGONG_PLAN" >> "{checks}"\n'})
    drop_settled(_plan(hub_keys, release, tmp_path / "plan-1.tgb", 1), home)
    log = tmp_path / "agent.log"
    proc = start_agent(home, log, {"TIANGONG_CRASH_AT": point}, "--once")
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"crash point {point} was never reached:\n"
                             f"{log.read_text()[-3000:]}") from None
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    run("agent", "run", "--home", str(home), "--once")

    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    status, words = CASES[point]
    assert [r["status"] for r in found] == [status], found
    assert words in found[0]["body"]["summary"]
    # The check ran at most once (never after a restart), the step itself never.
    lines = checks.read_text().splitlines() if checks.exists() else []
    assert lines == ([] if point == "plan-accepted" else ["1"])
    assert not effects.exists()
    assert json.loads((home / "plan-state.json").read_text())["sequence"] == 1

    # The real deployment is sequence 1: the plan used none, and does not block it.
    bundle, _ = make_bundle(hub_keys, release, tmp_path / "dep-1.tgb", 1)
    drop_settled(bundle, home)
    run("agent", "run", "--home", str(home), "--once")
    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    assert [r["status"] for r in found] == [status, "succeeded"]
    assert effects.read_text() == "ran\n"
