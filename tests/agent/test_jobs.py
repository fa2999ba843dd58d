"""Scheduled site jobs (agent.jobs): installed by a signed bundle, run on the agent's clock
while no hub is reachable, journaled, and reported in the next signed result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.jobs import ScheduleError, parse_schedule
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import drop, verified_result
from tests.fixtures.trust import NOW, TrustKit

HOUR = 3600
# NOW is 2027-01-15 08:00:00 UTC: an hourly job is due at 09:00, 10:00, 11:00 ...
NEXT_HOUR = NOW + HOUR


def _release(tmp: Path, name: str, schedule: str | None, script: str = "echo ok\n") -> Path:
    d = tmp / name
    (d / "jobs").mkdir(parents=True)
    (d / "step.sh").write_text("echo step\n")
    (d / "jobs" / "job.sh").write_text(script)
    (d / "release.toml").write_text(
        f'format = 1\n[release]\nproduct = "ops"\nversion = "{name}"\n\n[[steps]]\n'
        'name = "step"\nkind = "shell"\nscript = "step.sh"\n')
    if schedule is not None:
        (d / "schedule.toml").write_text(schedule)
    return d


def _bundle(kit: TrustKit, release: Path, out: Path, seq: int) -> Path:
    manifest, files = release_manifest(
        load_release(release), bundle_id=str(uuid.uuid4()), issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1,
        sequence=seq, created=NOW - 60, expires=NOW + 30 * 86400, counter=1, author="alice")
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


def _count(marker: Path) -> int:
    return marker.read_text().count("ran") if marker.exists() else 0


def _hourly(marker: Path, *, retries: int = 0, timeout: int = 60, name: str = "count") -> str:
    return (f'[[schedule]]\nname = "{name}"\ncron = "0 * * * *"\ntimezone = "Europe/Berlin"\n'
            f'retries = {retries}\ntimeout = {timeout}\nscript = "jobs/job.sh"\n')


def _install(agent: Any, kit: TrustKit, tmp: Path, schedule: str | None, script: str,
             seq: int = 1) -> Any:
    rel = _release(tmp, f"1.0.{seq}", schedule, script)
    out = agent.process(drop(agent, _bundle(kit, rel, tmp / f"b{seq}.tgb", seq)))
    return out


def test_a_job_runs_three_times_offline_and_the_next_result_carries_the_runs(
        site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    out = _install(agent, kit, tmp_path, _hourly(marker), f'echo ran >> "{marker}"\necho done\n')
    assert out.status == "succeeded", out.summary
    assert "schedule installed: 1 job(s)" in out.summary
    results_before = sorted(agent.config.outbox.glob("*.tgr"))
    assert agent.run_once() == [] and not marker.exists()  # 08:00: nothing due yet
    for hour in (1, 2, 3):
        clock.t = NOW + hour * HOUR + 5
        agent.run_once()
        assert marker.read_text().count("ran") == hour
        agent.run_once()  # the same hour again: no second run
        assert marker.read_text().count("ran") == hour
    status = agent.status()
    assert [j["name"] for j in status["schedule"]["jobs"]] == ["count"]
    assert [r["state"] for r in status["job_runs"]] == ["succeeded"] * 3
    # Three runs, no hub, no new result file yet (batched into the next result).
    assert sorted(agent.config.outbox.glob("*.tgr")) == results_before
    runs = agent.journal.job_runs()
    assert [r["state"] for r in runs] == ["succeeded"] * 3
    assert sorted(r["due_at"] for r in runs) == [NOW + h * HOUR for h in (1, 2, 3)]
    # The next bundle (no schedule.toml: the schedule stays) carries the three outcomes.
    nxt = _install(agent, kit, tmp_path, None, "echo unused\n", seq=2)
    assert nxt.status == "succeeded"
    body = verified_result(agent, kit, nxt.result, tmp_path)["body"]
    jobs = body["scheduled_jobs"]  # type: ignore[index]
    assert [(j["job"], j["state"], j["attempts"], j["exit_code"]) for j in jobs] == [
        ("count", "succeeded", 1, 0)] * 3
    assert [j["due_at"] for j in jobs] == [NOW + h * HOUR for h in (1, 2, 3)]
    assert "done" in jobs[0]["summary"]
    clock.t = NOW + 4 * HOUR + 5
    agent.run_once()
    assert marker.read_text().count("ran") == 4  # still installed


def test_a_newer_bundle_changes_and_an_empty_schedule_removes_the_jobs(
        site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    _install(agent, kit, tmp_path, _hourly(marker), f'echo a >> "{marker}"\n')
    daily = ('[[schedule]]\nname = "daily"\ncron = "0 3 * * *"\nscript = "jobs/job.sh"\n')
    out = _install(agent, kit, tmp_path, daily, f'echo b >> "{marker}"\n', seq=2)
    assert out.status == "succeeded"
    clock.t = NOW + 3 * HOUR + 5  # 11:00: the hourly job is gone
    agent.run_once()
    assert not marker.exists()
    clock.t = NOW + 19 * HOUR + 5  # 03:00 UTC the next day
    agent.run_once()
    assert marker.read_text() == "b\n"
    assert len(list((agent.config.home / "jobs").iterdir())) == 1  # old scripts removed
    out = _install(agent, kit, tmp_path, "# no jobs\n", "echo unused\n", seq=3)
    assert out.status == "succeeded" and "0 job(s)" in out.summary
    clock.t = NOW + 43 * HOUR + 5
    agent.run_once()
    assert marker.read_text() == "b\n"


def test_retries_then_failure_and_timeout_are_reported(site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    count = tmp_path / "attempts"
    script = (f'n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n+1)) > "{count}"\n'
              'echo "attempt $((n+1))"; test "$n" -ge 1\n')
    _install(agent, kit, tmp_path, _hourly(count, retries=2), script)
    clock.t = NEXT_HOUR
    agent.run_once()
    (run,) = agent.journal.job_runs()
    assert (run["state"], run["attempts"], run["exit_code"]) == ("succeeded", 2, 0)
    assert "attempt 2" in run["summary"]
    _install(agent, kit, tmp_path, _hourly(count, timeout=1, name="slow"),
             "echo started; exec sleep 600\n", seq=2)
    clock.t = NEXT_HOUR + HOUR
    agent.run_once()
    run = agent.journal.job_runs()[0]
    assert (run["job"], run["state"], run["exit_code"]) == ("slow", "failed", None)
    assert "timed out after 1 s" in run["summary"] and "started" in run["summary"]


def test_missed_fire_times_are_coalesced_into_one_run(site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    _install(agent, kit, tmp_path, _hourly(marker), f'echo ran >> "{marker}"\n')
    clock.t = NOW + 10 * HOUR + 5  # the agent was stopped for ten hours
    agent.run_once()
    (run,) = agent.journal.job_runs()
    assert run["due_at"] == NOW + 10 * HOUR and run["missed"] == 9
    assert marker.read_text() == "ran\n"


def test_a_job_report_result_when_no_bundle_comes(site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    _install(agent, kit, tmp_path, _hourly(marker), f'echo ran >> "{marker}"\n')
    before = set(agent.config.outbox.glob("*.tgr"))
    for hour in range(1, 8):
        clock.t = NOW + hour * HOUR + 5
        agent.run_once()
    (report,) = set(agent.config.outbox.glob("*.tgr")) - before
    result = verified_result(agent, kit, report, tmp_path)
    assert result["bundle_id"] is None and result["status"] == "succeeded"
    body: Any = result["body"]
    assert body["summary"] == "job report: 7 scheduled job run(s)"
    assert len(body["scheduled_jobs"]) == 7


@pytest.mark.parametrize(("text", "rule"), [
    ('[[schedule]]\nname = "x"\ncron = "61 * * * *"\nscript = "jobs/job.sh"\n', "cron"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\ntimezone = "Mars/Base"\n'
     'script = "jobs/job.sh"\n', "unknown time zone 'Mars/Base'"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nscript = "nope.sh"\n',
     "script 'nope.sh' is not a file of the release"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nretries = 11\nscript = "jobs/job.sh"\n',
     "'retries' must be a whole number from 0 to 10"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nscript = "jobs/job.sh"\nuser = "root"\n',
     "unknown key 'user'"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nscript = "jobs/job.sh"\n'
     'scripts = ["jobs/job.sh"]\n', "give 'script' (one file) or 'scripts'"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\n', "not both or neither"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nscripts = []\n',
     "'scripts' must be a list of 1 to 20 file names"),
    ('[[schedule]]\nname = "x"\ncron = "0 * * * *"\nscripts = ["jobs/job.sh", "gone.sh"]\n',
     "script 'gone.sh' is not a file of the release"),
])
def test_an_invalid_schedule_fails_the_bundle_and_keeps_the_installed_one(
        site: Any, tmp_path: Path, text: str, rule: str) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    _install(agent, kit, tmp_path, _hourly(marker), f'echo ran >> "{marker}"\n')
    installed = agent.journal.schedule()
    with pytest.raises(ScheduleError, match="entry 1"):
        parse_schedule(text.encode(), ["jobs/job.sh"])
    out = _install(agent, kit, tmp_path, text, "echo bad\n", seq=2)
    assert out.status == "failed"
    assert "schedule.toml: [[schedule]] entry 1" in out.summary and rule in out.summary
    assert agent.journal.schedule() == installed  # nothing changed
    clock.t = NEXT_HOUR
    agent.run_once()
    assert marker.read_text() == "ran\n"


def test_a_job_of_several_scripts_runs_them_in_order_and_stops_at_the_first_failure(
        site: Any, tmp_path: Path) -> None:
    agent, kit, clock = site
    marker = tmp_path / "steps.txt"
    rel = _release(tmp_path, "1.0.1", (
        '[[schedule]]\nname = "backup"\ncron = "0 * * * *"\nretries = 1\ntimeout = 60\n'
        'scripts = ["jobs/job.sh", "jobs/rotate.sh", "jobs/report.sh"]\n'),
        f'echo dump >> "{marker}"\necho dumped\n')
    flag = tmp_path / "rotate-fails"
    (rel / "jobs" / "rotate.sh").write_text(
        f'echo rotate >> "{marker}"\nif [ -e "{flag}" ]; then echo "disk full"; exit 4; fi\n')
    (rel / "jobs" / "report.sh").write_text(f'echo report >> "{marker}"\n')
    out = agent.process(drop(agent, _bundle(kit, rel, tmp_path / "b1.tgb", 1)))
    assert out.status == "succeeded" and "1 job(s)" in out.summary
    clock.t = NEXT_HOUR
    agent.run_once()
    assert marker.read_text().split() == ["dump", "rotate", "report"]
    (run,) = agent.journal.job_runs()
    assert (run["state"], run["attempts"], run["exit_code"]) == ("succeeded", 1, 0)
    assert "step 1/3 jobs/job.sh: exit 0. dumped" in run["summary"]
    assert "step 3/3 jobs/report.sh: exit 0" in run["summary"]

    marker.unlink()
    flag.touch()
    clock.t = NEXT_HOUR + HOUR
    agent.run_once()
    # two attempts, each from the first step; the step after the failing one never ran
    assert marker.read_text().split() == ["dump", "rotate", "dump", "rotate"]
    run = agent.journal.job_runs()[0]
    assert (run["state"], run["attempts"], run["exit_code"]) == ("failed", 2, 4)
    assert "step 2/3 jobs/rotate.sh: exit 4. disk full" in run["summary"]
    assert "step 3/3" not in run["summary"]


@pytest.mark.parametrize(("point", "ran"), [("job-started", 0), ("job-ran", 1)])
def test_a_crash_while_a_job_runs_reports_it_interrupted_and_does_not_rerun_it(
        site: Any, tmp_path: Path, point: str, ran: int) -> None:
    agent, kit, clock = site
    marker = tmp_path / "runs.txt"
    _install(agent, kit, tmp_path, _hourly(marker), f'echo ran >> "{marker}"\n')
    clock_file = tmp_path / "clock"
    clock_file.write_text(str(NEXT_HOUR + 5))
    code = ("from agent.config import load_config\nfrom agent.service import Agent\n"
            f"Agent(load_config({str(agent.config.home)!r})).run_once()\n")
    env = {**os.environ, "TIANGONG_CRASH_AT": point,
           "TIANGONG_CLOCK_FILE": str(clock_file)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert _count(marker) == ran
    (run,) = agent.journal.job_runs()
    assert run["state"] == "running"
    clock.t = NEXT_HOUR + 10
    agent.recover()
    agent.run_once()
    (run,) = agent.journal.job_runs()
    assert run["state"] == "interrupted" and _count(marker) == ran  # not run again
    clock.t = NEXT_HOUR + HOUR + 5
    agent.run_once()
    assert _count(marker) == ran + 1
    nxt = _install(agent, kit, tmp_path, None, "echo unused\n", seq=2)
    jobs: Any = verified_result(agent, kit, nxt.result, tmp_path)["body"]
    assert [j["state"] for j in jobs["scheduled_jobs"]] == ["interrupted", "succeeded"]


def test_a_job_gets_none_of_the_agents_environment_and_a_bounded_output(
        site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job runs as a shell step does: its environment built from nothing (the agent's may
    hold a key passphrase, a proxy password: a job used to inherit all of it) and its output
    kept as a bounded tail (it used to be read whole into the agent's memory: a chatty
    backup of an hour could take the agent down)."""
    import tracemalloc

    agent, kit, clock = site
    monkeypatch.setenv("AGENT_KEY_PASSPHRASE", "s3cret-pass")
    seen = tmp_path / "env.txt"
    out = _install(agent, kit, tmp_path, _hourly(seen, timeout=600),
                   f'env > "{seen}"\nfor i in $(seq 64); do head -c 1048576 /dev/zero '
                   "| tr '\\0' x; echo; done\necho end\n")
    assert out.status == "succeeded", out.summary
    clock.t = NEXT_HOUR
    tracemalloc.start()
    try:
        agent.run_once()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (run,) = agent.journal.job_runs()
    assert (run["state"], run["exit_code"]) == ("succeeded", 0), run["summary"]
    assert run["summary"].startswith("exit 0. ") and run["summary"].endswith("end")
    assert len(run["summary"]) <= 2000
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert "AGENT_KEY_PASSPHRASE" not in env and "s3cret-pass" not in seen.read_text()
    assert env["HOME"] == str(agent.config.home / "jobs" / out.bundle_id)
    assert peak < 16 * 1024 * 1024, peak  # 64 MiB of output went through


def test_a_job_that_leaves_a_daemon_holding_its_output_does_not_hold_the_agent(
        site: Any, tmp_path: Path) -> None:
    """A job that starts something in a session of its own (``setsid``) which keeps the
    job's stdout open: the agent used to wait for that pipe to close — past the job's
    timeout, for as long as the daemon lived (the agent took no bundle meanwhile) — and
    then report the job killed. It ends when the script exits, like a shell step."""
    agent, kit, clock = site
    pidfile = tmp_path / "daemon.pid"
    _install(agent, kit, tmp_path, _hourly(pidfile, timeout=2),
             f'setsid sleep 30 &\necho $! > "{pidfile}"\necho started\n')
    clock.t = NEXT_HOUR
    try:
        agent.run_once()
        (run,) = agent.journal.job_runs()
        assert (run["state"], run["exit_code"]) == ("succeeded", 0), run["summary"]
        assert "started" in run["summary"]
    finally:
        if pidfile.exists():
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
