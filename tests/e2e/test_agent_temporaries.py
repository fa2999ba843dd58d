"""Temporaries a killed agent leaves behind are its own to remove: a real ``agent run`` is
killed (SIGKILL, the ``result-built`` crash point) while its result sits built in
``outbox/.result-*/``; the next start removes that directory (and the hidden temp files of an
interrupted copy or atomic write in archive/, quarantine/ and the home), then writes the
result once, from the journal, private (0600)."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

from tests.e2e.agent_site import (
    assert_chain,
    init_site,
    make_bundle,
    start_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, drop_settled, run


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_result_killed_while_built_leaves_no_temporaries_and_is_written_once(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    home = init_site(tmp_path, hub_keys)
    release = write_release(tmp_path / "rel", "tmpx", "1.0.1",
                            ['name = "one"\nkind = "shell"\nscript = "s.sh"'],
                            {"s.sh": 'echo "$TIANGONG_STEP_NAME" >> "$0.runs"\necho hello\n'})
    bundle, bid = make_bundle(hub_keys, release, tmp_path / "tmpx-1.0.1.tgb", 1)
    drop_settled(bundle, home)
    log = tmp_path / "agent.log"
    proc = start_agent(home, log, {"TIANGONG_CRASH_AT": "result-built"})
    proc.wait(timeout=90)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]

    outbox = home / "outbox"
    (built,) = [p for p in outbox.iterdir() if p.name.startswith(".result-")]
    assert _mode(built) == 0o700
    inside = [p for p in built.rglob("*") if p.is_file()]
    (built_result,) = [p for p in inside if p.name.endswith(".tgr")]  # signed, not in place
    built_bytes = built_result.read_bytes()
    assert any(p.name.endswith(".log") for p in inside), inside  # the step log copy
    assert all(_mode(p) == 0o600 for p in inside), [(p.name, oct(_mode(p))) for p in inside]
    assert not list(outbox.glob("*.tgr"))
    # What other interrupted writes leave (a cross-device copy, a reason file, a state file),
    # beside files of the same shape that are not the agent's temporaries.
    planted = [home / "archive" / ".x.tgb.a1b2c3d4.tmp",
               home / "quarantine" / ".y.tgb.reason.txt.zz_99xyz.tmp",
               home / "archive" / "duplicates" / ".z.tgb.abcdefgh.tmp",
               home / ".inbox-taken.json.k3j4h5g6.tmp"]
    kept = [home / "archive" / ".keep", home / "quarantine" / "not-temp.tmp",
            outbox / ".results-notes"]
    for path in planted + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left over")
    (outbox / ".tiangong-spool-abc123").mkdir()
    (outbox / ".tiangong-spool-abc123" / "000001.zst").write_bytes(b"spool")

    out = run("agent", "run", "--once", "-v", "--home", str(home))
    assert "removed " in out.stderr and ".result-" in out.stderr, out.stderr
    hidden = sorted(p.name for p in outbox.iterdir() if p.name.startswith("."))
    assert hidden == [".results-notes"]
    assert not any(p.exists() for p in planted)
    assert all(p.read_bytes() == b"left over" for p in kept)
    (result,) = outbox.glob("*.tgr")
    assert _mode(result) == 0o600
    found = verified_results(home, hub_keys, tmp_path)
    assert_chain(found)
    assert [(r["bundle_id"], r["status"]) for r in found] == [(bid, "succeeded")]
    first = result.read_bytes()
    assert first == built_bytes  # written again from the journal: the very same bytes

    again = run("agent", "run", "--once", "--home", str(home))  # nothing left to do
    assert "removed " not in again.stderr
    assert [p.name for p in outbox.glob("*.tgr")] == [result.name]
    assert result.read_bytes() == first
