"""Presence between real processes: ``hub serve`` with its live child, ``agent run``, and
``tiangong hub agents list --json`` (another process) as the operator reads it.

* A clean disconnect (SIGTERM: the agent closes its WebSocket) and a killed agent (SIGKILL:
  the kernel closes its socket) show ``offline`` at once. The heartbeat interval is set to
  10 minutes, so only the disconnect itself can make the agent offline within the test's
  deadline — the heartbeat window would keep it ``online`` for 11.
* A connection lost without any close (the agent frozen with SIGSTOP: its socket stays open,
  its heartbeats stop) shows ``offline`` once one heartbeat interval (2 s here) and the grace
  have passed, and ``online`` again when the agent resumes.

Every wait polls with a deadline; nothing is timed.
"""

from __future__ import annotations

import os
import signal

from tests.e2e.conftest import wait_for
from tests.e2e.test_live_processes import DEADLINE, Site
from tests.e2e.test_live_processes import site as site  # the fixture


def _held_by(site: Site) -> str | None:
    ((conn,),) = site.sql("SELECT live_conn FROM agents WHERE agent_id = 'site-01'")
    return str(conn) if conn is not None else None


def test_clean_and_killed_disconnects_show_offline_at_once(site: Site) -> None:
    site.env["TIANGONG_HUB_LIVE_HEARTBEAT_S"] = "600"
    site.start_hub("hub.log")
    for how in (signal.SIGTERM, signal.SIGKILL):
        agent = site.start_agent()
        wait_for(lambda: site.presence() == "online", DEADLINE, "the agent to show online",
                 interval_s=0.5)
        assert _held_by(site) is not None
        agent.send_signal(how)
        agent.wait(DEADLINE)
        wait_for(lambda: site.presence() == "offline", DEADLINE,
                 f"the agent to show offline after {how.name}", interval_s=0.5)
        assert _held_by(site) is None
    assert "live: agent site-01 offline" in site.log("hub.log")


def test_a_connection_lost_without_a_close_shows_offline_after_one_heartbeat(
        site: Site) -> None:
    site.env["TIANGONG_HUB_LIVE_HEARTBEAT_S"] = "2"
    site.start_hub("hub.log")
    agent = site.start_agent()
    wait_for(lambda: site.presence() == "online", DEADLINE, "the agent to show online",
             interval_s=0.5)
    os.kill(agent.pid, signal.SIGSTOP)  # its socket stays open; it sends nothing
    try:
        wait_for(lambda: site.presence() == "offline", DEADLINE,
                 "the silent agent to show offline", interval_s=0.5)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    wait_for(lambda: site.presence() == "online", DEADLINE,
             "the resumed agent to show online again", interval_s=0.5)
    assert agent.poll() is None
