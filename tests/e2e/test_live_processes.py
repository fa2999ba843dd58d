"""Live delivery between real processes on 127.0.0.1: ``tiangong hub serve --live-bind …
--live-insecure-loopback`` (gunicorn + the live server as its child) and ``tiangong agent
run`` with ``hub_url`` in its agent.toml. Every other step is the ``tiangong hub`` CLI, as an
operator would type it, in its own process: nobody calls ``push_pending``.

(a) a deployment queued after the agent connected is pushed by the hub's push loop, run,
    and its result imported; presence and the audit log show it. The live server polls the
    database only once an hour (``[live] poll_s``), so only the wake-up the queueing CLI
    process sends after its commit (hub/live_wake.py, SQLite) explains the push;
(b) the whole hub is killed (SIGKILL of its process group) in the middle of a large
    transfer, restarted, and the agent resumes from the bytes it holds — the restarted hub's
    log names the non-zero offset it sent from — and runs the bundle once;
(c) an offline agent gets its bundle by file drop (``tiangong hub export``) and runs it;
    when it comes online nothing runs again, even when the same bundle also waited at the
    hub for live delivery (it arrives, is recognised as a copy, and the hub records it
    delivered);
(d) a revoked agent's live connection is dropped and refused on reconnect (an hour's poll
    interval too: the revoking CLI's wake-up drops it).

Each step of a release appends a line to a marker file outside the agent: its line count is
the number of times the bundle ran. Every wait has a deadline; nothing sleeps to synchronise.
Waits poll the hub's SQLite file read-only (a CLI process per poll would load the shared
machine); what is asserted is read through the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import TIANGONG, run, set_fast_inbox, wait_for
from tests.e2e.test_live_serve import _accepts, _healthy, free_port
from tests.hub.conftest import write_release

DEADLINE = 90.0  # seconds for anything that crosses a process boundary (the machine is shared)
#: ``[live] poll_s`` where only a wake-up may explain what the live server did: no test waits
#: an hour (DEADLINE is far shorter)
HOUR_POLL = {"TIANGONG_HUB_LIVE_POLL_S": "3600"}
# Random, so incompressible: the bundle is as large, and the transfer takes a while. The live
# transfer now runs at ~650 MB/s here, so 96 MiB gave the test's poll only ~0.15 s to see the
# partial file, which a loaded machine can miss; 256 MiB widens that window to ~0.4 s.
PAYLOAD_MIB = 256


@dataclass
class Site:
    """One hub data directory, one enrolled agent home, and the processes started on them."""

    tmp: Path
    data: Path
    env: dict[str, str]
    home: Path
    live_port: int
    marker: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- the hub CLI

    def hub(self, *args: str, user: str = "admin",
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env=self.env, check=check)

    def hub_json(self, *args: str, user: str = "carol") -> Any:
        return json.loads(self.hub(*args, "--json", user=user).stdout)

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        """A read-only query on the hub's database (for polling)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.data / 'hub.db'}?mode=ro",
                                                uri=True, timeout=10)) as db:
            return db.execute(query, args).fetchall()

    def state_is(self, *states: str) -> bool:
        return any(s in states for (s,) in self.sql("SELECT state FROM deployments"))

    def seen(self) -> bool:
        """The live server wrote last_seen (it does when the agent authenticates)."""
        return bool(self.sql("SELECT 1 FROM agents WHERE agent_id = 'site-01' "
                             "AND last_seen IS NOT NULL"))

    def count(self, action: str) -> int:
        (n,), = self.sql("SELECT count(*) FROM audit_events WHERE action = ?", action)
        return int(n)

    def deployment_state(self) -> str:
        (dep,) = self.hub_json("deployments", "list")
        return str(dep["state"])

    def presence(self) -> str:
        (agent,) = self.hub_json("agents", "list")
        return str(agent["presence"])

    def audit(self, action: str) -> list[dict[str, Any]]:
        events = self.hub_json("audit", "show", "--last", "500", user="admin")
        return [e for e in events if e["action"] == action]

    def release(self, version: str, payload_mib: int = 0) -> None:
        """Create, submit and approve ``relay <version>``; ``payload_mib`` MiB of random
        bytes ride along as an (unreferenced) release file."""
        src = write_release(self.tmp / "src", "relay", version,
                            {"count the run": f'echo "ran {version}" >> "{self.marker}"\n'})
        if payload_mib:
            (src / "data").mkdir()
            with (src / "data" / "blob.bin").open("wb") as fh:
                for _ in range(payload_mib):
                    fh.write(os.urandom(1024 * 1024))
        # An unreferenced file is a warning, which the create command reports.
        self.hub("releases", "create", str(src), "--create-product", user="alice", check=False)
        self.hub("releases", "submit", "relay", version, user="alice")
        self.hub("releases", "approve", "relay", version, user="bob")

    def queue(self, version: str) -> None:
        self.hub("deployments", "queue", "relay", version, "--environment", "plant-a",
                 user="carol")

    def runs(self) -> int:
        return len(self.marker.read_text().splitlines()) if self.marker.exists() else 0

    # -- processes

    def start_hub(self, log_name: str, *, http_port: int | None = None,
                  workers: int = 1, env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
        """``hub serve`` with the live server on :attr:`live_port`, in a process group of its
        own (so a hard kill takes gunicorn, its workers and the live child together); ``env``:
        more of its environment (settings)."""
        http_port = http_port or free_port()
        with (self.tmp / log_name).open("wb") as out:
            proc = subprocess.Popen(
                [*TIANGONG, "hub", "--data-dir", str(self.data), "serve",
                 "--bind", f"127.0.0.1:{http_port}", "--workers", str(workers),
                 "--live-bind", f"127.0.0.1:{self.live_port}", "--live-insecure-loopback"],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: proc.poll() is not None or (_healthy(http_port)
                                                     and _accepts(self.live_port)),
                 DEADLINE, "hub serve to answer /healthz and its live server to listen")
        assert proc.poll() is None, (self.tmp / log_name).read_text()
        return proc

    def start_agent(self) -> subprocess.Popen[bytes]:
        with (self.tmp / "agent.log").open("ab") as out:
            proc = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(self.home)],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(DEADLINE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(DEADLINE)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """An initialised hub (alice develops, bob approves, carol operates, environment
    ``plant-a``) and agent ``site-01`` enrolled there, its ``hub_url`` on a loopback port
    where no hub listens yet."""
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data), "TIANGONG_KEY_PASSPHRASE": "root-pass"}
    live_port = free_port()
    s = Site(tmp_path, data, env, tmp_path / "agent", live_port, tmp_path / "runs.txt")
    s.hub("init", "--admin", "admin", "--hub-id", "hub-live-proc")
    for name, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator")):
        s.hub("users", "create", name)
        s.hub("users", "grant", name, role)
    s.hub("environments", "create", "plant-a")
    run("agent", "init", str(s.home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a", "--hub-url", f"ws://127.0.0.1:{live_port}/live",
        "--insecure-loopback")
    set_fast_inbox(s.home)
    request = next((s.home / "outbox").glob("enrollment-*.json"))
    s.hub("agents", "enroll", str(request), user="carol")
    request.unlink()  # carried to the hub; the outbox is for results
    try:
        yield s
    finally:
        s.stop_all()


def _journal(site: Site) -> list[dict[str, Any]]:
    status = json.loads(run("agent", "status", "--home", str(site.home), "--json").stdout)
    bundles: list[dict[str, Any]] = status["bundles"]
    return bundles


def test_deployment_queued_after_the_agent_connected_is_pushed_run_and_imported(
        site: Site) -> None:
    site.release("1.0.0")
    hub = site.start_hub("hub.log", env=HOUR_POLL)
    agent = site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to come online")
    assert site.presence() == "online"
    assert site.hub_json("deployments", "list") == []
    # The push loop's first round polls once (the hour counts from there); then only
    # wake-ups.
    wait_for(lambda: _wakeups(site, "poll") == 1, DEADLINE, "the push loop's first poll")

    site.queue("1.0.0")  # another process; its commit wakes the hub's push loop
    wait_for(lambda: site.state_is("succeeded", "failed"), DEADLINE,
             "the pushed bundle to run and its result to be imported")
    assert site.deployment_state() == "succeeded", site.log("agent.log")
    assert site.runs() == 1
    assert [b["state"] for b in _journal(site)] == ["succeeded"]

    delivered = site.audit("live.delivered")
    assert [json.loads(e["details"])["how"] for e in delivered] == ["received"]
    assert {e["actor"] for e in delivered} == {"system:live"}
    assert len(site.audit("deployment.delivered")) == 1
    assert len(site.audit("result.import")) == 1
    # (a small bundle's "sending … from byte 0" is a DEBUG line: its INFO line is this one)
    assert "live: site-01 holds relay-1.0.0-site-01-000001.tgb (received)" in site.log(
        "hub.log")
    assert site.presence() == "online"
    assert _wakeups(site, "local") >= 1 and _wakeups(site, "poll") == 1
    assert _stop(agent) == 0
    assert _stop(hub) == 0


def _wakeups(site: Site, by: str) -> float:
    """The live server's rounds of its push loop started ``by`` (its ``/metrics``)."""
    from tests.e2e.test_metrics import scrape, value  # it imports this module's fixture

    return value(scrape(f"http://127.0.0.1:{site.live_port}/metrics"),
                 "tiangong_live_wakeups_total", by=by)


def _partial(site: Site) -> Path | None:
    return next(iter(sorted((site.home / "staging").glob("live-*.part"))), None)


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def test_hub_killed_mid_transfer_agent_resumes_from_its_offset_and_runs_once(
        site: Site) -> None:
    site.release("2.0.0", payload_mib=PAYLOAD_MIB)
    site.start_hub("hub-1.log")
    agent = site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to come online")
    site.queue("2.0.0")

    # Kill the whole hub as soon as the agent holds part of the bundle. The transfer of
    # ~100 MiB takes a fraction of a second, so this poll is tighter than the default.
    wait_for(lambda: _size(_partial(site)) > 0, DEADLINE, "a partial bundle at the agent",
             interval_s=0.002)
    first = site.procs[0]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(DEADLINE)
    held = _size(_partial(site))
    (spooled,) = (site.data / "live-outbox" / "site-01").glob("*.tgb")
    size = spooled.stat().st_size
    assert 0 < held < size, f"the transfer was not interrupted: {held} of {size} bytes held"
    assert site.runs() == 0 and not list((site.home / "inbox").glob("*.tgb"))

    site.start_hub("hub-2.log")
    wait_for(lambda: site.state_is("succeeded", "failed"), DEADLINE,
             "the resumed bundle to run and its result to be imported")
    assert site.deployment_state() == "succeeded", site.log("agent.log")
    assert site.runs() == 1
    assert [b["state"] for b in _journal(site)] == ["succeeded"]

    name = spooled.name
    assert f"live: sending {name} to site-01 from byte 0 of {size}" in site.log("hub-1.log")
    again = [int(n) for n in re.findall(
        rf"live: sending {re.escape(name)} to site-01 from byte (\d+) of {size}",
        site.log("hub-2.log"))]
    # The restarted hub sent only what the agent did not hold: from at least what it held
    # when the first hub died (it may have read a little more from its socket afterwards).
    assert len(again) == 1 and again[0] >= held > 0, again
    assert f"live: resuming {name} at byte {again[0]} of {size}" in site.log("agent.log")
    assert (site.data / "live-outbox" / "site-01" / "sent" / name).exists()
    assert _stop(agent) == 0


def test_offline_agent_runs_the_file_drop_and_the_later_live_connection_runs_nothing_again(
        site: Site) -> None:
    site.release("3.0.0")
    agent = site.start_agent()  # no hub listens: the site is offline
    site.queue("3.0.0")
    usb = site.tmp / "usb"
    exported = site.hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "sequence 1" in exported.stdout
    (bundle,) = usb.glob("*.tgb")
    inbox = site.home / "inbox"
    shutil.copyfile(bundle, inbox / (bundle.name + ".part"))
    os.replace(inbox / (bundle.name + ".part"), inbox / bundle.name)
    wait_for(lambda: any((site.home / "outbox").glob("*.tgr")), DEADLINE,
             "the dropped bundle to run")
    assert site.runs() == 1
    assert site.deployment_state() == "exported"  # the result has not travelled yet
    assert site.presence() == "never"

    # The same bundle also waits at the hub for live delivery (as when an operator carried
    # a bundle from the live spool to a site that had gone dark).
    spool = site.data / "live-outbox" / "site-01"
    spool.mkdir(parents=True)
    shutil.copyfile(bundle, spool / bundle.name)

    site.start_hub("hub.log")  # the site comes online
    wait_for(lambda: site.state_is("succeeded"), DEADLINE,
             "the result to travel back live and be imported")
    wait_for(lambda: (spool / "sent" / bundle.name).exists(), DEADLINE,
             "the hub to record the spooled copy as delivered")
    # The agent already holds those bytes (its archive): it answers have-it instead of
    # downloading them again, so no second (duplicate) result exists.
    (delivered,) = site.audit("live.delivered")
    assert json.loads(delivered["details"])["file"] == bundle.name
    assert json.loads(delivered["details"])["how"] == "have-it"
    statuses = [json.loads(e["details"])["status"] for e in site.audit("result.import")]
    assert statuses == ["succeeded"]
    assert site.runs() == 1  # not run again
    assert [b["state"] for b in _journal(site)] == ["succeeded"]
    assert site.deployment_state() == "succeeded"
    assert not list(spool.glob("*.tgb"))  # never offered again
    assert site.presence() == "online"
    assert _stop(agent) == 0


def test_revoked_agent_is_dropped_and_refused_on_reconnect(site: Site) -> None:
    site.start_hub("hub.log", env=HOUR_POLL)
    agent = site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to come online")

    site.hub("agents", "revoke", "site-01", "--reason", "laptop stolen", user="carol")
    wait_for(lambda: site.count("live.revoked") > 0, DEADLINE,
             "the hub to drop the revoked agent's connection")
    (dropped,) = site.audit("live.revoked")
    assert dropped["object"] == "agent:site-01"
    assert json.loads(dropped["details"])["code"] == "revoked"
    # The agent tries again (backoff) and is refused at once, with an audit event.
    wait_for(lambda: site.count("live.refused") > 0, DEADLINE, "the reconnect refusal")
    refused = site.audit("live.refused")
    assert {json.loads(e["details"])["code"] for e in refused} == {"revoked"}
    assert "the hub closed the connection: revoked" in site.log("agent.log")
    assert site.presence() == "revoked"
    assert agent.poll() is None  # a refused agent keeps running (files still work)
    assert _stop(agent) == 0
