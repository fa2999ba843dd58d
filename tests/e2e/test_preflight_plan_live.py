"""A preflight plan travels live between real processes: ``hub releases plan --agent`` (no
``--out``) writes it into the agent's live spool, the running ``hub serve`` offers it to the
connected agent on its next poll, the agent checks and answers live, and the hub imports the
answer — nothing ran, and the real deployment that follows is pushed as sequence 1.
"""

from __future__ import annotations

import json

from tests.e2e.conftest import run, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site, site

__all__ = ["site"]  # the live site fixture, used by name


def test_a_plan_is_offered_live_answered_and_imported(site: Site) -> None:
    site.release("1.0.0")
    hub = site.start_hub("hub.log")
    agent = site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to come online")

    made = site.hub_json("releases", "plan", "relay", "1.0.0", "--agent", "site-01")
    assert [p.split("/")[-2] for p in made["files"]] == ["site-01"]  # its live spool
    wait_for(lambda: bool(site.sql("SELECT 1 FROM plan_outcomes")), DEADLINE,
             "the plan to be offered, checked and its answer imported")
    [plan] = site.hub_json("releases", "plans", "relay", "1.0.0")
    [outcome] = plan["outcomes"]
    assert outcome["agent"] == "site-01" and outcome["status"] == "passed", outcome
    assert site.runs() == 0  # a plan runs no step
    delivered = [json.loads(e["details"]) for e in site.audit("live.delivered")]
    assert [d["file"] for d in delivered] == [f"{made['bundle_id']}.tgb"]
    assert len(site.audit("plan.outcome")) == 1

    site.queue("1.0.0")
    wait_for(lambda: site.state_is("succeeded", "failed"), DEADLINE,
             "the deployment to be pushed, run and imported")
    assert site.deployment_state() == "succeeded" and site.runs() == 1
    status = json.loads(run("agent", "status", "--home", str(site.home), "--json").stdout)
    assert [(b["sequence"], b["state"]) for b in status["bundles"]] == [(1, "succeeded")]
    agent.terminate()
    assert agent.wait(DEADLINE) == 0
    hub.terminate()
    assert hub.wait(DEADLINE) == 0
