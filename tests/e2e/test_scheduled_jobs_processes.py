"""Scheduled site jobs (issue 16 §2 "Done when") with real processes only: a release carrying
``schedule.toml`` goes through a real hub (`tiangong hub releases …`, `deployments queue`,
`export`) to a real `tiangong agent run` by media; the hub's first result comes back with
`hub import`; then, disconnected, the agent runs the job three times on its own clock — moved
through the documented test hook ``TIANGONG_CLOCK_FILE``, no sleeps — and writes no result
for them; the next bundle's signed result carries the three outcomes, `hub import` audits
each (`job.run`); that bundle's empty ``schedule.toml`` removes the job, and a later pass of
`agent run --once` past the next fire time runs nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from agent.holds import CLOCK_FILE_ENV
from tests.e2e.agent_site import drop, results, settled, start_agent, stop_agent
from tests.e2e.conftest import media_site, run, wait_for

HOUR = 3600
DEADLINE = 60.0  # seconds a real process gets to act


def _set_clock(path: Path, t: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{t}\n")
    os.replace(tmp, path)


def _release(tmp: Path, version: str, marker: Path, schedule: str) -> Path:
    d = tmp / f"ops-{version}"
    (d / "jobs").mkdir(parents=True)
    (d / "step.sh").write_text("echo step\n")
    (d / "jobs" / "cleanup.sh").write_text(f'echo cleaned >> "{marker}"\necho "cleaned up"\n')
    (d / "jobs" / "report.sh").write_text('echo "report written"\n')
    (d / "release.toml").write_text(
        f'format = 1\n[release]\nproduct = "ops"\nversion = "{version}"\n\n[[steps]]\n'
        'name = "step"\nkind = "shell"\nscript = "step.sh"\n')
    (d / "schedule.toml").write_text(schedule)
    return d


HALF_PAST = ('[[schedule]]\nname = "cleanup"\ncron = "30 * * * *"\ntimezone = "Asia/Shanghai"\n'
             'retries = 1\ntimeout = 60\nscripts = ["jobs/cleanup.sh", "jobs/report.sh"]\n')


def _runs(home: Path) -> list[dict[str, Any]]:
    out = run("agent", "status", "--home", str(home), "--json")
    rows: list[dict[str, Any]] = json.loads(out.stdout)["job_runs"]
    return rows


def test_three_runs_while_disconnected_arrive_in_the_next_result(tmp_path: Path) -> None:
    hub, _data, home = media_site(tmp_path)

    def ship(version: str, schedule: str, usb: Path) -> Path:
        hub("releases", "create", str(_release(tmp_path, version, marker, schedule)),
            "--create-product", user="dev")
        hub("releases", "submit", "ops", version, user="dev")
        hub("releases", "approve", "ops", version, user="bob")
        hub("deployments", "queue", "ops", version, "--environment", "plant-a", user="carol")
        hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
        [bundle] = usb.glob("*.tgb")
        return bundle

    marker = tmp_path / "cleaned.txt"
    clock = tmp_path / "clock"
    base = (int(time.time()) // HOUR + 2) * HOUR  # a whole hour ahead of the hub's times
    _set_clock(clock, base)
    agent_env = {CLOCK_FILE_ENV: str(clock)}
    log = tmp_path / "agent.log"
    proc = start_agent(home, log, agent_env)
    try:
        drop(ship("1.0.0", HALF_PAST, tmp_path / "usb1"), home)
        wait_for(lambda: len(results(home)) == 1 and settled(home), DEADLINE,
                 "the first bundle's result")
        [first] = results(home)
        assert first["status"] == "succeeded"
        assert "schedule installed: 1 job(s)" in first["body"]["summary"]
        back1 = tmp_path / "back1"
        shutil.copytree(home / "outbox", back1)
        assert "1 imported" in hub("import", str(back1), user="carol").stdout
        # Disconnected from here on: three half-past fire times pass on the agent's clock.
        for n in (1, 2, 3):
            _set_clock(clock, base + n * HOUR)
            wait_for(lambda n=n: len(_runs(home)) == n, DEADLINE, f"scheduled run {n}")
            assert marker.read_text().count("cleaned") == n
        assert len(results(home)) == 1  # batched: no result of their own yet
        runs = _runs(home)
        assert [(r["state"], r["attempts"]) for r in runs] == [("succeeded", 1)] * 3
        assert "step 2/2 jobs/report.sh: exit 0. report written" in runs[0]["summary"]
        # The next bundle, by media; its empty schedule.toml removes the job.
        drop(ship("1.0.1", "# no jobs any more\n", tmp_path / "usb2"), home)
        wait_for(lambda: len(results(home)) == 2 and settled(home), DEADLINE,
                 "the second bundle's result")
        second = results(home)[1]
        assert "0 job(s)" in second["body"]["summary"]
        assert [j["due_at"] for j in second["body"]["scheduled_jobs"]] == [
            base + n * HOUR - HOUR // 2 for n in (1, 2, 3)]
    finally:
        stop_agent(proc, log, home)
    _set_clock(clock, base + 5 * HOUR)  # past the next two fire times
    run("agent", "run", "--home", str(home), "--once", env=agent_env)
    assert marker.read_text().count("cleaned") == 3 and len(_runs(home)) == 3

    back2 = tmp_path / "back2"
    shutil.copytree(home / "outbox", back2)
    out = hub("import", str(back2), user="carol").stdout
    assert "1 imported" in out, out
    events = [e for e in json.loads(hub("audit", "show", "--last", "50", "--json").stdout)
              if e["action"] == "job.run"]
    details = [json.loads(e["details"]) for e in events]
    assert sorted(d["due_at"] for d in details) == [
        base + n * HOUR - HOUR // 2 for n in (1, 2, 3)]
    assert {(d["job"], d["state"], d["attempts"], d["result_seq"]) for d in details} == {
        ("cleanup", "succeeded", 1, 2)}
    assert {e["object"] for e in events} == {"agent:site-01"}
    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert sorted(d["state"] for d in deps) == ["succeeded", "succeeded"]
