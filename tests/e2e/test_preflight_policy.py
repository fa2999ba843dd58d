"""An environment's preflight policy with real processes (docs/rollouts.md, "Preflight policy
of an environment"): with `hub environments preflight-policy plant-a --within 24`, a
deployment queued by hand — `hub deployments queue`, the web Deploy form, the API — is
refused until a preflight plan of the release passed on the agent: each refusal names the
release, the agent and the command to run, is audited (`deployment.refused`) and queues
nothing. A real `agent run --once` answers the plan; then the API queues it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    HubCli,
    approved_release,
    carry_home,
    drop_settled,
    media_site,
    run,
    web_site,
)
from tests.web.api.conftest import Api, token_for

MISSING = ("no preflight plan of app 1.0 has been answered "
           "(tiangong hub releases plan app 1.0 --agent site-01)")


def _state(hub: HubCli) -> tuple[list[Any], list[Any]]:
    """(every deployment, every deployment.refused event)."""
    deps = json.loads(hub("deployments", "list", "--json").stdout)
    events = json.loads(hub("audit", "show", "--last", "200", "--json").stdout)
    refused = [e for e in events if e["action"] == "deployment.refused"]
    for e in refused:
        e["details"] = json.loads(e["details"])
    return deps, refused


def test_a_hand_queued_deployment_waits_for_a_passed_plan(tmp_path: Path) -> None:
    hub, data, home = media_site(tmp_path)
    approved_release(hub, tmp_path)
    set_ = json.loads(hub("environments", "preflight-policy", "plant-a", "--within", "24",
                          "--json").stdout)
    assert set_["preflight_within_h"] == 24 and "within 24 h" in set_["policy"]
    # Only an admin sets it (carol operates plant-a): refused, unchanged.
    denied = hub("environments", "preflight-policy", "plant-a", "--clear", user="carol",
                 check=False)
    assert denied.returncode == 1 and "carol" in denied.stderr, denied.stderr
    assert json.loads(hub("environments", "preflight-policy", "plant-a", "--json").stdout)[
        "preflight_within_h"] == 24

    # 1. The CLI.
    refused = hub("deployments", "queue", "app", "1.0", "--environment", "plant-a",
                  user="carol", check=False)
    assert refused.returncode == 1, refused.stdout
    assert ("environment plant-a requires a preflight plan of app 1.0 passed on every target "
            "agent within 24 h: site-01: " + MISSING) in refused.stderr
    assert "nothing queued" in refused.stderr and "Traceback" not in refused.stderr
    deps, events = _state(hub)
    assert deps == [] and len(events) == 1
    assert events[0]["actor"] == "carol"
    assert events[0]["details"]["agents"] == ["site-01"]
    assert events[0]["details"]["missing"] == [f"site-01: {MISSING}"]

    with web_site(data) as site:
        # 2. The web Deploy form.
        c = site.client("carol")
        page = site.post(c, "/releases/app/1.0/queue", {"environment": "plant-a"})
        assert page.status_code == 409
        assert "requires a preflight plan of app 1.0" in page.get_data(as_text=True)
        assert "site-01: no preflight plan of app 1.0 has been answered" in \
            page.get_data(as_text=True)
        deps, events = _state(hub)
        assert deps == [] and len(events) == 2

        # 3. The API.
        api = Api(site, token_for(site, "carol", ["read", "deploy"]))
        body = api.post("/releases/app/1.0/deployments", 409, json={"environment": "plant-a"})
        assert body["error"] == "conflict" and f"site-01: {MISSING}" in body["message"], body
        deps, events = _state(hub)
        assert deps == [] and len(events) == 3
        assert [e["details"].get("via", "") for e in events][2].startswith("api-token:")

        # 4. A plan passes at the site (a real agent, by media); the API queues it now.
        usb = tmp_path / "usb"
        made = json.loads(hub("releases", "plan", "app", "1.0", "--environment", "plant-a",
                              "--out", str(usb), "--json", user="carol").stdout)
        drop_settled(Path(made["files"][0]), home)
        run("agent", "run", "--home", str(home), "--once")
        hub("import", str(carry_home(home, tmp_path / "back")), user="carol")
        [plan] = json.loads(hub("releases", "plans", "app", "1.0", "--json").stdout)
        assert [o["status"] for o in plan["outcomes"]] == ["passed"]
        [dep] = api.post("/releases/app/1.0/deployments", 201,
                         json={"environment": "plant-a"})["deployments"]
        assert dep["agent"] == "site-01" and dep["state"] == "queued"
        deps, events = _state(hub)
        assert [d["id"] for d in deps] == [dep["id"]] and len(events) == 3
