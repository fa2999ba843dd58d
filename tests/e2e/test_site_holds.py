"""What a site holds reaches the hub (issue 13: "held at the site"; docs/live-protocol.md
§3.1), between real processes: ``tiangong hub serve`` with its live server and ``tiangong
agent run`` online.

A deployment outside its one-off maintenance window is exported to media early (the hub's
rule) and dropped into the agent's inbox; the agent accepts it and holds it by its own clock
(moved with the documented test hook ``TIANGONG_CLOCK_FILE``). Its live STATE tells the hub:
``hub agents show`` lists the hold and its inventory (with its window) — the preflight's
inventory now comes without any result — and ``hub deployments why`` says "held at
site-01 … window opens …". When the agent's clock reaches the window the bundle runs, the
result comes back live, and the hold is gone at the hub.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.holds import CLOCK_FILE_ENV
from tests.e2e.conftest import drop_settled, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site, site

__all__ = ["site"]


def _set_clock(path: Path, t: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{t}\n")
    os.replace(tmp, path)


def _holds(s: Site) -> list[dict[str, object]] | None:
    """The holds the hub keeps for site-01 (polled read-only: a CLI per poll is costly)."""
    ((raw,),) = s.sql("SELECT holds FROM agents WHERE agent_id = 'site-01'")
    return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]


def test_a_bundle_held_at_the_site_is_shown_at_the_hub_until_it_runs(site: Site) -> None:
    s = site
    opens = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
    closes = opens + timedelta(hours=2)
    s.hub("windows", "add", f"{opens.isoformat()}/{closes.isoformat()}",
          "--environment", "plant-a")
    s.release("1.0.0")
    s.queue("1.0.0")
    (dep,) = s.hub_json("deployments", "list")
    usb = s.tmp / "usb"
    usb.mkdir()
    s.hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    (bundle,) = usb.glob("*.tgb")

    clock = s.tmp / "agent-clock"
    _set_clock(clock, int((opens - timedelta(days=1)).timestamp()))
    os.environ[CLOCK_FILE_ENV] = str(clock)  # read by the agent process at start
    s.env["TIANGONG_HUB_LIVE_HEARTBEAT_S"] = "2"  # STATE rides on heartbeats
    try:
        s.start_hub("hub.log")
        s.start_agent()
    finally:
        del os.environ[CLOCK_FILE_ENV]
    wait_for(s.seen, DEADLINE, "the agent to come online")
    drop_settled(bundle, s.home)
    wait_for(lambda: bool(_holds(s)), DEADLINE,
             "the agent's STATE to tell the hub what it holds")

    shown = s.hub_json("agents", "show", "site-01")
    (hold,) = shown["holds"]
    assert hold["kind"] == "window" and hold["sequence"] == 1
    assert str(hold["text"]).startswith("window opens ")
    assert shown["inventory"]["window"] is not None  # the bundle's one-off window
    text = s.hub("deployments", "why", str(dep["id"]), user="carol").stdout
    assert "site: held at site-01 (reported " in text and str(hold["text"]) in text
    assert s.runs() == 0

    # The agent's clock reaches the window: it runs, its result comes back live, the hold
    # is gone at the hub.
    _set_clock(clock, int(opens.timestamp()) + 60)
    wait_for(lambda: s.state_is("succeeded", "failed"), DEADLINE,
             "the held bundle to run and its result to be imported")
    assert s.deployment_state() == "succeeded", s.log("agent.log")
    wait_for(lambda: _holds(s) == [], DEADLINE, "the hub to learn that nothing is held")
    assert s.runs() == 1
