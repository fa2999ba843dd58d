"""A real agent process: file drop → verified run → result that verifies; crash safety."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from bundle.reader import ExpectResult, VerifierState, verify_path
from signing.keyfile import load_public_key
from tests.e2e.conftest import TIANGONG, HubKeys, run, set_fast_inbox, wait_for

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
PASS = {"TIANGONG_KEY_PASSPHRASE": "test-pass"}


def _init_agent(tmp: Path, keys: HubKeys) -> Path:
    home = tmp / "agent"
    run("agent", "init", str(home), "--root", str(keys.root_json), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    return home


def _create(keys: HubKeys, release: Path, out: Path, seq: int) -> Path:
    run("bundle", "create", str(release), "--key", str(keys.release_key), "--root",
        str(keys.root_json), "--agent", "site-01", "--environment", "plant-a", "--sequence",
        str(seq), "-o", str(out), "--no-progress", env=PASS)
    return out


def _drop(bundle: Path, home: Path) -> None:
    tmp = home / "inbox" / (bundle.name + ".part")
    shutil.copyfile(bundle, tmp)
    os.replace(tmp, home / "inbox" / bundle.name)


def _results(home: Path) -> list[Path]:
    return sorted((home / "outbox").glob("*.tgr"))


def _verify_result(path: Path, keys: HubKeys, home: Path, tmp: Path) -> dict[str, object]:
    pub = load_public_key(home / "keys" / "identity.key.pub")
    staging = tmp / f"hub-{path.stem}"
    staging.mkdir(mode=0o700)
    vb = verify_path(path, trusted_root=keys.kit.trusted, state=VerifierState(),
                     expect=ExpectResult(hub_id=keys.kit.hub_id, agent_id="site-01",
                                         agent_key=pub.ed25519_public()),
                     staging_dir=staging)
    assert vb.manifest.result is not None
    return vb.manifest.result.to_json()


def _start_agent(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                                stdout=fh, stderr=subprocess.STDOUT)


def test_dropped_bundle_runs_and_result_verifies(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = _init_agent(tmp_path, hub_keys)
    bundle = _create(hub_keys, HELLO, tmp_path / "hello.tgb", seq=1)
    agent = _start_agent(home, tmp_path / "agent.log")
    try:
        _drop(bundle, home)
        wait_for(lambda: len(_results(home)) >= 1, 60, "a result in the outbox")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
    result = _verify_result(_results(home)[0], hub_keys, home, tmp_path)
    assert result["status"] == "succeeded"
    assert (home / "archive" / "hello.tgb").exists()
    status = run("agent", "status", "--home", str(home), "--json")
    assert '"state": "succeeded"' in status.stdout


def _set_settle(home: Path, seconds: float) -> None:
    cfg = home / "agent.toml"
    text = cfg.read_text()
    start = text.index("settle_seconds = ")
    end = text.index("\n", start)
    cfg.write_text(text[:start] + f"settle_seconds = {seconds}" + text[end:])


def test_partial_copy_is_not_picked_up_early(tmp_path: Path, hub_keys: HubKeys) -> None:
    home = _init_agent(tmp_path, hub_keys)
    _set_settle(home, 600)  # the copy below is seconds old, far from settled
    bundle = _create(hub_keys, HELLO, tmp_path / "hello.tgb", seq=1)
    data = bundle.read_bytes()
    # The first half lands under the final name (as a slow USB copy does); the agent's
    # one-shot pass must leave it alone, and nothing is quarantined.
    (home / "inbox" / "hello.tgb").write_bytes(data[: len(data) // 2])
    out = run("agent", "run", "--home", str(home), "--once")
    assert out.stdout.strip() == ""
    assert not list((home / "quarantine").iterdir())
    assert _results(home) == []
    status = run("agent", "status", "--home", str(home))
    assert "hello.tgb: settling" in status.stdout


def test_once_from_a_timer_picks_up_a_file_that_sat_unchanged(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    """cron / systemd timers: each run is a fresh process; settling is the file's age."""
    home = _init_agent(tmp_path, hub_keys)
    _set_settle(home, 60)
    bundle = _create(hub_keys, HELLO, tmp_path / "hello.tgb", seq=1)
    _drop(bundle, home)
    old = bundle.stat().st_mtime - 120  # copied two minutes ago, unchanged since
    os.utime(home / "inbox" / "hello.tgb", (old, old))
    out = run("agent", "run", "--home", str(home), "--once")
    assert out.stdout.strip() == "hello.tgb: succeeded: 3 step(s) succeeded"
    assert len(_results(home)) == 1
    assert (home / "archive" / "hello.tgb").exists()


def test_once_takes_a_file_dated_in_the_future_after_watching_it_unchanged(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    """Media written where the clock is ahead: the file's age is unknown, so ``--once``
    watches it for settle_seconds within its run, warns with the clock difference and takes
    it; ``agent status`` says so instead of "size still changing"."""
    home = _init_agent(tmp_path, hub_keys)
    _set_settle(home, 1)
    bundle = _create(hub_keys, HELLO, tmp_path / "hello.tgb", seq=1)
    _drop(bundle, home)
    ahead = bundle.stat().st_mtime + 3600  # written on a machine an hour ahead
    os.utime(home / "inbox" / "hello.tgb", (ahead, ahead))
    status = run("agent", "status", "--home", str(home))
    assert re.search(r"hello\.tgb: hello\.tgb is dated 3[56]\d\d s in the future by this "
                     r"machine's clock: age unknown, taken once seen unchanged for 1 s",
                     status.stdout), status.stdout
    assert "size still changing" not in status.stdout
    assert _results(home) == [] and list((home / "inbox").iterdir())  # status takes nothing
    out = run("agent", "run", "--home", str(home), "--once")
    assert out.stdout.strip() == "hello.tgb: succeeded: 3 step(s) succeeded", out.stderr
    assert re.search(r"WARNING .*hello\.tgb: modification time is 3[56]\d\d s ahead of this "
                     r"machine's clock", out.stderr), out.stderr
    assert len(_results(home)) == 1
    assert (home / "archive" / "hello.tgb").exists()
    assert not list((home / "inbox").iterdir())


def test_killed_mid_step_reports_interrupted_and_does_not_rerun(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    release = tmp_path / "slow-1.0.0"
    (release / "scripts").mkdir(parents=True)
    marker = tmp_path / "step-started"
    (release / "scripts" / "slow.sh").write_text(
        f'echo "$$" >> "{marker}"\nexec sleep 1000\n')
    (release / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "slow"\nversion = "1.0.0"\n\n'
        '[[steps]]\nname = "long migration"\nkind = "shell"\nscript = "scripts/slow.sh"\n'
        'timeout = "1h"\n\n'
        '[[steps]]\nname = "after"\nkind = "shell"\nscript = "scripts/slow.sh"\n')
    home = _init_agent(tmp_path, hub_keys)
    bundle = _create(hub_keys, release, tmp_path / "slow.tgb", seq=1)
    agent = _start_agent(home, tmp_path / "agent.log")
    try:
        _drop(bundle, home)
        wait_for(lambda: marker.exists() and marker.read_text().strip() != "", 60,
                 "the step to start")
    finally:
        agent.send_signal(signal.SIGKILL)  # power loss, as far as the agent can tell
        agent.wait(timeout=30)
    step_pid = int(marker.read_text().split()[0])
    os.killpg(step_pid, signal.SIGKILL)  # the orphaned step dies with the "power"
    assert _results(home) == []

    out = run("agent", "run", "--home", str(home), "--once")
    assert _results(home), out.stdout + out.stderr
    result = _verify_result(_results(home)[0], hub_keys, home, tmp_path)
    assert result["status"] == "interrupted"
    steps = result["body"]["steps"]  # type: ignore[index]
    assert [s["status"] for s in steps] == ["interrupted", "skipped"]
    # Nothing was re-run: the step started exactly once.
    assert len(marker.read_text().split()) == 1
    # A deliberate retry is possible and recorded (from step 2, which is quick to fail).
    status = run("agent", "status", "--home", str(home))
    assert "interrupted" in status.stdout
