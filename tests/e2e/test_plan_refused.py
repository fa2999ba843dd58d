"""A preflight plan the agent refuses after its signature verified — expired, or older than
the newest plan it ran — with real processes by media: the agent's signed `rejected` result
names the plan, `hub import` attaches it to the plan (outcome `refused`, the agent's reason
as summary) and `hub releases plans`, the release page and the API show it; a refused plan
keeps the gate closed, naming it. A copy of a plan the agent already answered is refused
again, and the answer is kept."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    HubCli,
    approved_release,
    carry_home,
    drop_settled,
    media_site,
    run,
    wait_for,
    web_site,
)
from tests.web.api.conftest import Api, token_for


def _plan(hub: HubCli, usb: Path, expires: str = "24h") -> dict[str, Any]:
    made: dict[str, Any] = json.loads(hub(
        "releases", "plan", "app", "1.0", "--agent", "site-01", "--out", str(usb),
        "--expires", expires, "--json", user="carol").stdout)
    return made


def _outcomes(hub: HubCli) -> dict[int, list[tuple[str, str]]]:
    plans = json.loads(hub("releases", "plans", "app", "1.0", "--json").stdout)
    return {p["plan"]: [(o["status"], o["summary"]) for o in p["outcomes"]] for p in plans}


def _answer(home: Path, plan: dict[str, Any]) -> None:
    drop_settled(Path(plan["files"][0]), home)
    run("agent", "run", "--home", str(home), "--once")


def test_a_refused_plan_is_attached_to_the_plan(tmp_path: Path) -> None:
    hub, data, home = media_site(tmp_path)
    approved_release(hub, tmp_path)
    hub("environments", "preflight-policy", "plant-a", "--within", "24")

    # 1. A plan that expires before it reaches the site.
    short = _plan(hub, tmp_path / "usb-1", expires="1s")
    expiry = datetime.fromisoformat(short["expires_at"]).timestamp()
    wait_for(lambda: time.time() >= expiry + 1, 30, "the 1 s plan to expire")
    _answer(home, short)
    imported = hub("import", str(carry_home(home, tmp_path / "back-1")), user="carol")
    assert "flag" not in imported.stdout.lower(), imported.stdout
    [(status, summary)] = _outcomes(hub)[short["sequence"]]
    assert status == "refused" and "expired" in summary, summary
    text = hub("releases", "plans", "app", "1.0").stdout
    assert "site-01: refused at " in text and "expired" in text
    # The refused plan keeps the environment's gate closed, and says so.
    refused = hub("deployments", "queue", "app", "1.0", "--environment", "plant-a",
                  user="carol", check=False)
    assert refused.returncode == 1
    assert f"site-01: preflight plan {short['sequence']} refused at " in refused.stderr
    assert json.loads(hub("deployments", "list", "--json").stdout) == []

    # 2. Two more plans; the newer one runs first, so the older is refused as a replay;
    # then a copy of the newer one is refused too, and its answer is kept.
    older = _plan(hub, tmp_path / "usb-2")
    newer = _plan(hub, tmp_path / "usb-3")
    _answer(home, newer)
    _answer(home, older)
    _answer(home, newer)  # the same file again, from the stick
    imported = hub("import", str(carry_home(home, tmp_path / "back-2")), user="carol")
    assert "refused plan " + str(newer["sequence"]) + " again after it answered passed" in \
        imported.stdout + imported.stderr, imported.stdout
    outcomes = _outcomes(hub)
    [(status, summary)] = outcomes[older["sequence"]]
    assert status == "refused" and f"sequence {older['sequence']} is not newer than " \
        f"{newer['sequence']}" in summary, summary
    assert [s for s, _ in outcomes[newer["sequence"]]] == ["passed"]

    with web_site(data) as site:
        page = site.client("carol").get("/releases/app/1.0")
        html = page.get_data(as_text=True)
        assert page.status_code == 200
        assert f'data-plan="{short["sequence"]}" data-agent="site-01" data-outcome="refused"' \
            in html
        assert "refused by the agent: plan " in html and "expired" in html
        api = Api(site, token_for(site, "carol", ["read"]))
        plans = {p["plan"]: p for p in api.get("/releases/app/1.0/plans")["plans"]}
        assert [o["status"] for o in plans[older["sequence"]]["outcomes"]] == ["refused"]
        assert [o["status"] for o in plans[newer["sequence"]]["outcomes"]] == ["passed"]

    # The newest plan passed: the gate is open now.
    [dep] = json.loads(hub("deployments", "queue", "app", "1.0", "--environment", "plant-a",
                           "--json", user="carol").stdout)
    assert dep["agent"] == "site-01" and dep["state"] == "queued"
