"""Several hub processes on one PostgreSQL (docs/scale.md): two ``tiangong hub serve`` on a
throwaway PostgreSQL and one shared data directory — two web processes (gunicorn, one
worker each) and two live servers (their children) — and two ``tiangong agent run``, one
connected to each live server. Every step an operator takes is the CLI, another process.

* One rollout queued for both agents reaches each agent once, is run once and imported once;
  each live server was woken by PostgreSQL NOTIFY (its ``/metrics``), not by a poll.
* Presence and the live logs are the same from either web process: an operator signed in on
  web A reads, on web B, both agents online, the live log each agent streamed to *its* live
  server, and after one agent stops, that agent offline on both.

Every wait polls with a deadline; nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import TIANGONG, run, set_fast_inbox, wait_for
from tests.e2e.test_live_serve import _accepts, _healthy, free_port
from tests.e2e.test_metrics import scrape, value
from tests.hub.conftest import write_release

DEADLINE = 120.0  # seconds for anything that crosses process boundaries on a shared machine
PASSWORD = "carol's long scale-test password"
AGENTS = ("site-01", "site-02")


@dataclass
class Cluster:
    tmp: Path
    data: Path
    env: dict[str, str]
    web_ports: list[int] = field(default_factory=list)
    live_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def hub(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=self.env)

    def hub_json(self, *args: str) -> Any:
        return json.loads(self.hub(*args, "--json", user="carol").stdout)

    def start_hub(self, name: str) -> None:
        web, live = free_port(), free_port()
        with (self.tmp / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                [*TIANGONG, "hub", "--data-dir", str(self.data), "serve",
                 "--bind", f"127.0.0.1:{web}", "--workers", "1",
                 "--live-bind", f"127.0.0.1:{live}", "--live-insecure-loopback"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: proc.poll() is not None or (_healthy(web) and _accepts(live)),
                 DEADLINE, f"{name} to answer /healthz and its live server to listen",
                 interval_s=0.2)
        assert proc.poll() is None, (self.tmp / f"{name}.log").read_text()
        self.web_ports.append(web)
        self.live_ports.append(live)

    def start_agent(self, agent_id: str) -> None:
        with (self.tmp / f"{agent_id}.log").open("ab") as out:
            self.agents[agent_id] = subprocess.Popen(
                [*TIANGONG, "agent", "run", "--home", str(self.tmp / agent_id)],
                stdout=out, stderr=subprocess.STDOUT)

    def stop_all(self) -> None:
        for proc in [*self.agents.values(), *reversed(self.procs)]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(DEADLINE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, pg_db: str) -> Iterator[Cluster]:
    """A hub on PostgreSQL (alice develops, bob approves, carol operates with a web
    password, environment ``plant-a``) and two enrolled agents, ``site-01`` pointed at the
    first live server and ``site-02`` at the second (their ports chosen now)."""
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass",
           "TIANGONG_HUB_DATABASE_URL": pg_db}
    c = Cluster(tmp_path, data, env)
    c.hub("init", "--admin", "admin", "--hub-id", "hub-scale")
    with (data / "hub.toml").open("a") as fh:
        fh.write("\n[web]\nlocal_login = true\nsecure_cookies = false  # plain http on loopback\n")
    for name, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator")):
        c.hub("users", "create", name)
        c.hub("users", "grant", name, role)
    subprocess.run([*TIANGONG, "hub", "--local-admin", "admin", "users", "set-password", "carol",
                    "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True, env={**os.environ, **env}, timeout=120)
    c.hub("environments", "create", "plant-a")
    try:
        yield c
    finally:
        c.stop_all()


def _enroll(c: Cluster, agent_id: str, live_port: int) -> None:
    home = c.tmp / agent_id
    run("agent", "init", str(home), "--root", str(c.data / "root.json"), "--id", agent_id,
        "--environment", "plant-a", "--hub-url", f"ws://127.0.0.1:{live_port}/live",
        "--insecure-loopback")
    set_fast_inbox(home)
    request = next((home / "outbox").glob("enrollment-*.json"))
    c.hub("agents", "enroll", str(request), user="carol")
    request.unlink()


def _sign_in(port: int) -> requests.Session:
    s = requests.Session()
    page = s.get(f"http://127.0.0.1:{port}/login/local", timeout=30)
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"')[0]
    done = s.post(f"http://127.0.0.1:{port}/login/local", timeout=30,
                  data={"username": "carol", "password": PASSWORD, "csrf_token": token})
    assert done.status_code == 200 and "Signed in as" in done.text, done.status_code
    return s


def _presence(s: requests.Session, port: int) -> dict[str, str]:
    """Agent id → presence, as one web process's agents page shows it."""
    page = s.get(f"http://127.0.0.1:{port}/agents/", timeout=30)
    assert page.status_code == 200
    shown = {}
    for agent_id in AGENTS:
        row = page.text.split(f'<tr data-agent="{agent_id}">', 1)[1].split("</tr>", 1)[0]
        shown[agent_id] = row.split('data-testid="presence">', 1)[1].split("<", 1)[0]
    return shown


def _live_lines(s: requests.Session, port: int, deployment: int) -> list[dict[str, Any]]:
    answer = s.get(f"http://127.0.0.1:{port}/deployments/{deployment}/logs?after=-1",
                   timeout=30)
    assert answer.status_code == 200, answer.text
    lines: list[dict[str, Any]] = answer.json()["lines"]
    return lines


def test_two_web_and_two_live_processes_on_one_postgresql(cluster: Cluster) -> None:
    c = cluster
    marker = c.tmp / "runs.txt"
    src = write_release(c.tmp / "src", "relay", "1.0.0",
                        {"count the run": f'echo "ran on $(hostname)" >> "{marker}"\n'
                                          'echo "a line for the live log"\n'})
    c.hub("releases", "create", str(src), "--create-product", user="alice")
    c.hub("releases", "submit", "relay", "1.0.0", user="alice")
    c.hub("releases", "approve", "relay", "1.0.0", user="bob")
    c.start_hub("hub-a")
    c.start_hub("hub-b")
    for agent_id, live_port in zip(AGENTS, c.live_ports, strict=True):
        _enroll(c, agent_id, live_port)
        c.start_agent(agent_id)
    web_a, web_b = c.web_ports
    operator = _sign_in(web_a)  # signed in on A, the session works on B too
    wait_for(lambda: set(_presence(operator, web_b).values()) == {"online"}, DEADLINE,
             "both agents to show online on web B", interval_s=0.5)
    notified = {}
    for live_port in c.live_ports:
        figures = scrape(f"http://127.0.0.1:{live_port}/metrics")
        assert value(figures, "tiangong_live_connected_agents") == 1
        notified[live_port] = value(figures, "tiangong_live_wakeups_total", by="notify")

    c.hub("deployments", "queue", "relay", "1.0.0", "--environment", "plant-a", user="carol")
    wait_for(lambda: [d["state"] for d in c.hub_json("deployments", "list")]
             == ["succeeded", "succeeded"], DEADLINE, "both deployments to succeed",
             interval_s=1.0)

    # Exactly once: one bundle per agent, each run once, each delivered once.
    assert len(marker.read_text().splitlines()) == 2
    for agent_id in AGENTS:
        status = json.loads(run("agent", "status", "--home", str(c.tmp / agent_id),
                                "--json").stdout)
        assert [b["state"] for b in status["bundles"]] == ["succeeded"], agent_id
    delivered = [e for e in json.loads(c.hub("audit", "show", "--last", "500",
                                             "--json").stdout)
                 if e["action"] == "live.delivered"]
    assert sorted(json.loads(e["details"])["agent_id"] for e in delivered) == list(AGENTS)
    for live_port in c.live_ports:
        figures = scrape(f"http://127.0.0.1:{live_port}/metrics")
        assert value(figures, "tiangong_live_bundles_exported_total") == 1
        # Woken by the queueing's NOTIFY (the 5 s safety-net polls count as by="poll").
        assert value(figures, "tiangong_live_wakeups_total", by="notify") > notified[live_port]

    # The live logs each agent streamed to its own live server, read from either web process.
    deployments = {d["agent"]: d["id"] for d in c.hub_json("deployments", "list")}
    for agent_id in AGENTS:
        for port in (web_a, web_b):
            texts = [line["text"] for line in _live_lines(operator, port,
                                                          deployments[agent_id])]
            assert "a line for the live log" in texts, (agent_id, port, texts)

    # One agent stops: both web processes show it offline.
    c.agents["site-02"].terminate()
    assert c.agents["site-02"].wait(DEADLINE) == 0
    for port in (web_a, web_b):
        wait_for(lambda p=port: _presence(operator, p) == {"site-01": "online",
                                                           "site-02": "offline"},
                 DEADLINE, f"site-02 to show offline on port {port}", interval_s=0.5)
