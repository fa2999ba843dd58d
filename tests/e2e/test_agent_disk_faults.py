"""A full or read-only disk at each place the agent writes: a real ``tiangong agent run`` logs
one clear error, keeps running, and once the disk accepts writes again (the fault is lifted
while it runs: ``TIANGONG_FAULT_AT=<point>:<ERRNO>:<flag file>``) writes what it could not —
each bundle ends with exactly one signed result, no step ran twice — without a restart."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.faults import WRITE_POINTS
from tests.e2e.agent_site import (
    assert_chain,
    drop,
    init_site,
    make_bundle,
    results,
    settled,
    start_agent,
    stop_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, wait_for

# (write point, injected error, the second bundle is refused by the agent's checks): both
# errors at every write point; a refused bundle makes the quarantine point meet a write.
CASES = [(point, error, point == "quarantine")
         for point in WRITE_POINTS for error in ("ENOSPC", "EROFS")]


def _release(tmp: Path, seq: int, effects: Path, *, refused: bool) -> Path:
    step = 'name = "effect"\nkind = "shell"\nscript = "effect.sh"'
    if refused:  # names a connection this site does not define: refused before acceptance
        step = ('name = "effect"\nkind = "sql"\nengine = "postgres"\nconnection = "nowhere"\n'
                'script = "effect.sh"')
    return write_release(tmp / f"disk-1.0.{seq}", "disk", f"1.0.{seq}", [step],
                         {"effect.sh": f'echo "b{seq}" >> "{effects}"\n'})


@pytest.mark.parametrize(("point", "error", "refused"), CASES,
                         ids=[f"{p}-{e}" for p, e, _ in CASES])
def test_disk_fault_is_reported_and_repaired_without_restart(
    tmp_path: Path, hub_keys: HubKeys, point: str, error: str, refused: bool
) -> None:
    home = init_site(tmp_path, hub_keys)
    effects = tmp_path / "effects.txt"
    effects.touch()
    flag = tmp_path / "disk-is-full"
    flag.touch()
    log = tmp_path / "agent.log"
    agent = start_agent(home, log, {"TIANGONG_FAULT_AT": f"{point}:{error}:{flag}"})
    try:
        names = []
        for seq in (1, 2):
            bundle, _ = make_bundle(hub_keys, _release(tmp_path, seq, effects,
                                                       refused=refused and seq == 2),
                                    tmp_path / f"disk-{seq}.tgb", seq)
            names.append(bundle.name)
            drop(bundle, home)
        message = os.strerror(getattr(errno, error))
        wait_for(lambda: "ERROR tiangong.agent" in log.read_text()
                 and message in log.read_text(), 60, f"the agent to log {message}")
        assert agent.poll() is None, log.read_text()
        errors = [ln for ln in log.read_text().splitlines() if " ERROR " in ln]
        # One clear error per thing that fails, not one per pass of the loop.
        assert len(errors) <= 4, errors
        assert all(line[:4].isdigit() for line in errors), errors  # timestamped
        flag.unlink()  # space returns

        def done() -> bool:
            return settled(home) and len(results(home)) == 2 and not any(
                (home / "inbox").iterdir())

        wait_for(done, 60, "both results after the disk recovered")
        assert agent.poll() is None
    finally:
        stop_agent(agent, log, home)
    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    statuses = [r["status"] for r in found]
    assert statuses == ["succeeded", "rejected" if refused else "succeeded"], statuses
    ran = effects.read_text().split()
    assert ran == (["b1"] if refused else ["b1", "b2"]), ran  # each step once
    assert (home / "archive" / names[0]).exists()
    if refused:
        assert (home / "quarantine" / f"{names[1]}.reason.txt").exists()
