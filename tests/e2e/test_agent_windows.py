"""Maintenance windows and freezes at a real site: ``tiangong agent run`` processes, bundles
made by ``tiangong bundle create --window/--freeze/--policy`` and in-process, and the agent's
policy clock moved through the documented test hook ``TIANGONG_CLOCK_FILE`` (no sleeps: every
wait polls a condition with a deadline).

Covered (docs/agent.md, "Windows and freezes"): a bundle outside its window is accepted and
held, ``agent status`` says when it will run, it survives a restart while held, a later bundle
waits behind it, and both run in order once the window opens; a freeze that begins between two
steps stops before the second; ``agent run-now`` (by id or by file, with the daemon running or
not) runs a held bundle and its reason is in the signed result; a hub override in the manifest
runs at once; and the two new crash points (``held``, ``override-recorded``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.holds import CLOCK_FILE_ENV
from bundle.windows import Freeze, Once, Policy, format_instant
from tests.e2e.agent_site import (
    AGENT_ID,
    ENVIRONMENT,
    drop,
    holds_lock,
    init_site,
    make_bundle,
    results,
    settled,
    start_agent,
    stop_agent,
    verified_results,
    write_release,
)
from tests.e2e.conftest import HubKeys, run, wait_for

#: Crash points this module kills a real agent at (test_agent_crashpoints checks that every
#: point is covered somewhere).
WINDOW_CRASH_POINTS = ("held", "override-recorded")

BERLIN = "Europe/Berlin"
PASS = {"TIANGONG_KEY_PASSPHRASE": "test-pass"}


def _next_saturday_night(after: int) -> int:
    """01:00 Europe/Berlin on the first Saturday after ``after``."""
    day = datetime.fromtimestamp(after, ZoneInfo(BERLIN)).date() + timedelta(days=1)
    while day.weekday() != 5:
        day += timedelta(days=1)
    return int(datetime(day.year, day.month, day.day, 1, 0, tzinfo=ZoneInfo(BERLIN)).timestamp())


def _set_clock(path: Path, t: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{t}\n")
    os.replace(tmp, path)


def _status(home: Path, env: dict[str, str]) -> dict[str, Any]:
    out = run("agent", "status", "--home", str(home), "--json", env=env)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _bundle_row(home: Path, env: dict[str, str], bid: str) -> dict[str, Any] | None:
    for row in _status(home, env)["bundles"]:
        if row["bundle_id"] == bid:
            return row  # type: ignore[no-any-return]
    return None


def _held(home: Path, env: dict[str, str], bid: str) -> dict[str, Any] | None:
    row = _bundle_row(home, env, bid)
    return None if row is None or row["state"] != "held" else row


def _counting_release(tmp: Path, name: str, steps: list[tuple[str, str]]) -> Path:
    """A release of shell steps; each step appends its name to ``runs.txt`` (then runs its
    extra shell text)."""
    runs = tmp / "runs.txt"
    bodies = [f'name = "{step}"\nkind = "shell"\nscript = "{step}.sh"' for step, _ in steps]
    files = {f"{step}.sh": f'echo "{name}:{step}" >> "{runs}"\n{extra}' for step, extra in steps}
    return write_release(tmp / f"rel-{name}", name, "1.0", bodies, files)


def _runs(tmp: Path, name: str, step: str) -> int:
    path = tmp / "runs.txt"
    return path.read_text().split().count(f"{name}:{step}") if path.exists() else 0


def _result_of(home: Path, keys: HubKeys, tmp: Path, bid: str) -> dict[str, Any]:
    mine = [r for r in verified_results(home, keys, tmp) if r["bundle_id"] == bid]
    assert len(mine) == 1, mine
    return mine[0]


def _has_result(home: Path, bid: str) -> bool:
    return settled(home) and any(r["bundle_id"] == bid for r in results(home))


def test_a_bundle_outside_its_window_is_held_across_a_restart_and_runs_when_it_opens(
        tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    clock = tmp_path / "clock"
    opens = _next_saturday_night(int(time.time()) + 2 * 86400)
    _set_clock(clock, opens - 86400)
    env = {CLOCK_FILE_ENV: str(clock)}
    release = _counting_release(tmp_path, "hello", [("one", "")])
    first = tmp_path / "hello-1.tgb"
    created = run("bundle", "create", str(release), "--key", str(hub_keys.release_key),
                  "--root", str(hub_keys.root_json), "--agent", AGENT_ID, "--environment",
                  ENVIRONMENT, "--sequence", "1", "--window", "sat 01:00-05:00 Europe/Berlin",
                  "-o", str(first), "--no-progress", "--json", env=PASS)
    made = json.loads(created.stdout)
    assert made["policy"]["windows"] == [{"kind": "weekly", "days": ["sat"], "start": "01:00",
                                          "end": "05:00", "timezone": BERLIN}]
    bid1 = made["bundle_id"]
    log = tmp_path / "agent.log"
    agent = start_agent(home, log, env)
    try:
        drop(first, home)
        wait_for(lambda: _held(home, env, bid1) is not None, 60, "the bundle to be held")
        row = _held(home, env, bid1)
        assert row is not None
        expected = f"window opens {format_instant(opens, BERLIN)}"
        assert row["hold"] == {"kind": "window", "reason": expected, "until": opens}
        assert [s["state"] for s in row["steps"]] == ["pending"]
        text = run("agent", "status", "--home", str(home), env=env).stdout
        assert f"held: {bid1} (hello 1.0, sequence 1) — {expected}" in text
        assert f"tiangong agent run-now {bid1} --reason TEXT" in text
    finally:
        stop_agent(agent, log, home)
    assert results(home) == [] and _runs(tmp_path, "hello", "one") == 0

    # Restarted while held: still held; a later bundle waits behind it (which also shows
    # that the restarted agent made its passes).
    agent = start_agent(home, log, env)
    try:
        second, bid2 = make_bundle(hub_keys, _counting_release(tmp_path, "later", [("two", "")]),
                                   tmp_path / "later-2.tgb", 2)
        drop(second, home)
        wait_for(lambda: _held(home, env, bid2) is not None, 60, "the later bundle to wait")
        row2 = _held(home, env, bid2)
        assert row2 is not None
        assert row2["hold"]["kind"] == "chain"
        assert row2["hold"]["reason"] == (f"after bundle {bid1} (sequence 1, hello 1.0), which "
                                          f"is held: {expected}")
        assert _held(home, env, bid1) is not None
        assert results(home) == []
        text = run("agent", "status", "--home", str(home), env=env).stdout
        assert f"run-now {bid1} " in text and f"run-now {bid2} " not in text  # it waits for 1
        _set_clock(clock, opens + 60)
        wait_for(lambda: _has_result(home, bid1) and _has_result(home, bid2), 60,
                 "both bundles to run once the window opens")
    finally:
        stop_agent(agent, log, home)
    found = verified_results(home, hub_keys, tmp_path)
    assert [(r["bundle_id"], r["status"]) for r in found] == [(bid1, "succeeded"),
                                                              (bid2, "succeeded")]
    assert (_runs(tmp_path, "hello", "one"), _runs(tmp_path, "later", "two")) == (1, 1)


def test_a_freeze_between_two_steps_run_now_and_a_hub_override(tmp_path: Path,
                                                               hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    clock = tmp_path / "clock"
    base = int(time.time()) + 86400
    freeze_at, thaw = base + 3600, base + 7200
    _set_clock(clock, base)
    env = {CLOCK_FILE_ENV: str(clock)}
    # Step "first" moves the agent's clock into the freeze: the freeze begins mid-run.
    midrun = _counting_release(tmp_path, "midrun", [
        ("first", f'echo {freeze_at} > "{clock}.tmp" && mv "{clock}.tmp" "{clock}"\n'),
        ("second", "")])
    policy = Policy((), (Freeze(Once(freeze_at, thaw), "quarter close"),))
    bundle1, bid1 = make_bundle(hub_keys, midrun, tmp_path / "midrun.tgb", 1, policy=policy)
    log = tmp_path / "agent.log"
    agent = start_agent(home, log, env)
    try:
        drop(bundle1, home)
        wait_for(lambda: _held(home, env, bid1) is not None, 60, "the freeze to hold step 2")
        row = _held(home, env, bid1)
        assert row is not None
        assert row["hold"]["reason"] == (f"frozen until {format_instant(thaw)} "
                                         "(quarter close)")
        assert [s["state"] for s in row["steps"]] == ["succeeded", "pending"]
        assert (_runs(tmp_path, "midrun", "first"), _runs(tmp_path, "midrun", "second")) == (
            1, 0)
        assert results(home) == []

        # run-now while the daemon runs: recorded, and the daemon runs it on its next pass.
        reason = "change 4711, approved by phone"
        out = run("agent", "run-now", bid1, "--reason", reason, "--home", str(home), "--json",
                  env=env)
        answer = json.loads(out.stdout)
        assert answer["ran"] is False and answer["status"] == "released"
        user = answer["override"]["by"]
        assert user and answer["override"]["reason"] == reason
        wait_for(lambda: _has_result(home, bid1), 60, "the released bundle's result")

        # A hub override in the manifest (bundle create --policy): runs at once in a freeze.
        policy_file = tmp_path / "policy.json"
        policy_file.write_text(json.dumps({
            "windows": [], "freezes": [{"kind": "once", "start": base, "end": thaw,
                                        "reason": "year end"}],
            "override": {"reason": "security fix", "by": "carol", "second": "dave",
                         "at": base}}))
        hot = tmp_path / "hot-2.tgb"
        run("bundle", "create", str(_counting_release(tmp_path, "hot", [("fix", "")])),
            "--key", str(hub_keys.release_key), "--root", str(hub_keys.root_json), "--agent",
            AGENT_ID, "--sequence", "2", "--policy", str(policy_file), "-o", str(hot),
            "--no-progress", env=PASS)
        drop(hot, home)
        wait_for(lambda: sum(1 for _ in results(home)) == 2 and settled(home), 60,
                 "the hub-overridden bundle's result")
    finally:
        stop_agent(agent, log, home)
    r1 = _result_of(home, hub_keys, tmp_path, bid1)
    assert r1["status"] == "succeeded"
    assert [s["status"] for s in r1["body"]["steps"]] == ["succeeded", "succeeded"]
    site = r1["body"]["override"]["site"]
    assert (site["reason"], site["by"]) == (reason, user)
    assert (_runs(tmp_path, "midrun", "first"), _runs(tmp_path, "midrun", "second")) == (1, 1)
    hot_result = [r for r in verified_results(home, hub_keys, tmp_path)
                  if r["bundle_id"] != bid1]
    assert [r["status"] for r in hot_result] == ["succeeded"]
    assert hot_result[0]["body"]["override"] == {"hub": {
        "reason": "security fix", "by": "carol", "second": "dave", "at": base}}
    assert _runs(tmp_path, "hot", "fix") == 1


def _killed(proc: subprocess.Popen[bytes] | subprocess.CompletedProcess[str], log: Path,
            point: str) -> None:
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"crash point {point} was never reached:\n"
                                 f"{log.read_text()[-3000:]}") from None
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def test_power_cuts_at_the_hold_and_at_run_now(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = init_site(tmp_path, hub_keys)
    clock = tmp_path / "clock"
    base = int(time.time()) + 86400
    _set_clock(clock, base)
    env = {CLOCK_FILE_ENV: str(clock)}
    frozen = Policy((), (Freeze(Once(base - 60, base + 86400), "maintenance freeze"),))
    bundle1, bid1 = make_bundle(hub_keys, _counting_release(tmp_path, "one", [("a", "")]),
                                tmp_path / "one.tgb", 1, policy=frozen)
    log = tmp_path / "agent.log"
    drop(bundle1, home)
    # Killed right after the hold is committed.
    _killed(start_agent(home, log, {**env, "TIANGONG_CRASH_AT": "held"}), log, "held")
    row = _held(home, env, bid1)
    assert row is not None and "(maintenance freeze)" in row["hold"]["reason"]
    assert [s["state"] for s in row["steps"]] == ["pending"]
    # run-now killed right after its override is committed (no agent running).
    cut = run("agent", "run-now", bid1, "--reason", "urgent", "--home", str(home),
              env={**env, "TIANGONG_CRASH_AT": "override-recorded"}, check=False)
    with log.open("a") as fh:
        fh.write(cut.stdout + cut.stderr)
    _killed(cut, log, "override-recorded")
    assert _runs(tmp_path, "one", "a") == 0 and results(home) == []
    # The restarted agent finds the override and runs the bundle, once.
    agent = start_agent(home, log, env)
    try:
        wait_for(lambda: _has_result(home, bid1), 60, "the overridden bundle's result")
        assert holds_lock(home, agent)
        # A second held bundle, released by run-now given the bundle FILE, with no agent
        # running: run-now runs it itself.
        bundle2, bid2 = make_bundle(hub_keys, _counting_release(tmp_path, "two", [("b", "")]),
                                    tmp_path / "two.tgb", 2, policy=frozen)
        drop(bundle2, home)
        wait_for(lambda: _held(home, env, bid2) is not None, 60, "the second bundle held")
    finally:
        stop_agent(agent, log, home)
    out = run("agent", "run-now", str(home / "archive" / "two.tgb"), "--reason",
              "second urgent fix", "--home", str(home), env=env)
    assert f"override recorded for bundle {bid2}" in out.stdout
    assert f"{bid2}: succeeded" in out.stdout
    found = verified_results(home, hub_keys, tmp_path)
    assert [(r["bundle_id"], r["status"]) for r in found] == [(bid1, "succeeded"),
                                                              (bid2, "succeeded")]
    assert found[0]["body"]["override"]["site"]["reason"] == "urgent"
    assert found[1]["body"]["override"]["site"]["reason"] == "second urgent fix"
    assert (_runs(tmp_path, "one", "a"), _runs(tmp_path, "two", "b")) == (1, 1)


def test_bundle_create_refuses_a_bad_window_freeze_or_policy_and_writes_nothing(
        tmp_path: Path, hub_keys: HubKeys) -> None:
    from click.testing import CliRunner

    from tiangong.cli import root

    release = _counting_release(tmp_path, "hello", [("one", "")])
    bad_policy = tmp_path / "bad-policy.json"
    bad_policy.write_text(json.dumps({"windows": [], "freezes": [], "override": {
        "reason": "x", "by": "carol", "second": "carol", "at": 1}}))
    cases = [
        (["--window", "sat 25:00-05:00 Europe/Berlin"],
         "window 'sat 25:00-05:00 Europe/Berlin': start: '25:00' is not a time of day"),
        (["--window", "sat 01:00-05:00 Europe/Atlantis"], "unknown time zone 'Europe/Atlantis'"),
        (["--freeze", "12-20..01-05 UTC"], "needs a reason after ': '"),
        (["--policy", str(bad_policy)],
         "override.second: 'carol' cannot second their own override"),
    ]
    for extra, message in cases:
        out = tmp_path / "never.tgb"
        result = CliRunner(env=PASS).invoke(root, [
            "bundle", "create", str(release), "--key", str(hub_keys.release_key), "--root",
            str(hub_keys.root_json), "--agent", AGENT_ID, "--sequence", "1", *extra, "-o",
            str(out), "--no-progress"])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert not out.exists() and list(tmp_path.glob("never*")) == []


def test_the_daemon_wakes_by_itself_when_the_real_window_opens(tmp_path: Path,
                                                                hub_keys: HubKeys) -> None:
    """Production path (no TIANGONG_CLOCK_FILE): ``agent apply`` accepts and holds a bundle
    whose window opens a few seconds from now; the daemon, configured so that nothing else
    wakes it for half an hour (settle and rescan intervals of an hour, an empty inbox), runs
    it when the window opens — it computed that moment itself — inside the window."""
    home = init_site(tmp_path, hub_keys)
    cfg = home / "agent.toml"
    cfg.write_text(cfg.read_text().replace("settle_seconds = 0.2", "settle_seconds = 3600.0")
                   .replace("rescan_seconds = 0.5", "rescan_seconds = 3600.0"))
    opens = int(time.time()) + 6
    policy = Policy((Once(opens, opens + 3600),))
    bundle, bid = make_bundle(hub_keys, _counting_release(tmp_path, "soon", [("a", "")]),
                              tmp_path / "soon.tgb", 1, policy=policy)
    applied = run("agent", "apply", str(bundle), "--home", str(home))
    assert "on-hold: window opens" in applied.stdout
    log = tmp_path / "agent.log"
    agent = start_agent(home, log)
    try:
        wait_for(lambda: _has_result(home, bid), 120, "the daemon to run the bundle when its "
                 "window opens (it would otherwise sleep for 1800 s)")
    finally:
        stop_agent(agent, log, home)
    result = _result_of(home, hub_keys, tmp_path, bid)
    assert result["status"] == "succeeded"
    assert [s["started_at"] >= opens for s in result["body"]["steps"]] == [True]
    assert _runs(tmp_path, "soon", "a") == 1
