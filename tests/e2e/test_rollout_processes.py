"""A rollout over a live site and a media site, all real processes on 127.0.0.1
(docs/rollouts.md): ``tiangong hub serve`` with its live server, ``tiangong agent run`` for
the live agent ``site-01``, ``tiangong agent run --once`` for the media agent ``site-02``,
and every other step the ``tiangong hub`` CLI in its own process.

The canary (the live site) is pushed, run, and its result imported by the live server,
which ends batch 1; the manual gate holds batch 2 until another operator confirms; batch 2
(the media site) goes out with ``hub export``, and the rollout page says the site owes a
result and since when; its result imported by ``hub import`` ends the rollout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import drop_settled, run, set_fast_inbox, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site
from tests.e2e.test_live_processes import site as live_site  # noqa: F401 - a fixture


@pytest.fixture
def fleet(live_site: Site) -> Iterator[Site]:  # noqa: F811 - the fixture imported above
    """The live site of ``test_live_processes`` (``site-01`` with a ``hub_url``), plus
    ``site-02`` reached by media only, and a second operator ``dave``."""
    home = live_site.tmp / "media-agent"
    run("agent", "init", str(home), "--root", str(live_site.data / "root.json"), "--id",
        "site-02", "--environment", "plant-a")
    set_fast_inbox(home)
    request = next((home / "outbox").glob("enrollment-*.json"))
    live_site.hub("agents", "enroll", str(request), user="carol")
    request.unlink()
    live_site.hub("users", "create", "dave")
    live_site.hub("users", "grant", "dave", "operator")
    yield live_site


def _rollout(site: Site, rid: str) -> dict:  # type: ignore[type-arg]
    return site.hub_json("rollouts", "show", rid)  # type: ignore[no-any-return]


def _batch_done(site: Site, number: int) -> bool:
    rows = site.sql("SELECT done_at FROM rollout_batches WHERE number = ?", number)
    return bool(rows) and rows[0][0] is not None


def test_canary_live_then_media_batch_behind_a_manual_gate(fleet: Site) -> None:
    site = fleet
    site.release("1.0.0")
    site.start_hub("hub.log")
    site.start_agent()
    wait_for(site.seen, DEADLINE, "the live agent to come online")

    started = site.hub_json("rollouts", "start", "relay", "1.0.0", "--environment",
                            "plant-a", "--canary", "site-01", "--manual")
    rid = str(started["id"])
    assert [[a["agent"] for a in b["agents"]] for b in started["batches"]] == [
        ["site-01"], ["site-02"]]
    assert started["batches"][0]["agents"][0]["reached"] == "live"

    # The live server pushes the canary, imports its result and the rollout moves on.
    wait_for(lambda: _batch_done(site, 1), DEADLINE,
             "the canary to be pushed, run and its result imported by the live server")
    view = _rollout(site, rid)
    assert view["batches"][0]["agents"][0]["state"] == "succeeded", site.log("agent.log")
    assert site.runs() == 1
    assert any("manual confirmation" in w for w in view["batches"][0]["waiting_for"])
    assert view["batches"][1]["agents"][0]["state"] == "not queued"

    # The starter cannot open the gate; another operator does.
    refused = site.hub("rollouts", "confirm", rid, user="carol", check=False)
    assert refused.returncode == 1 and "another operator must" in refused.stderr
    assert _rollout(site, rid)["current_batch"] == 1
    site.hub("rollouts", "confirm", rid, user="dave")

    usb = site.tmp / "usb"
    out = site.hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    (bundle,) = usb.glob("*.tgb")
    assert "site-02" in bundle.name, out.stdout
    view = _rollout(site, rid)
    media = view["batches"][1]["agents"][0]
    assert media["reached"] == "media" and media["state"] == "exported"
    assert media["owes_result_since"] is not None

    # The stick reaches the media site; its result comes home.
    home = site.tmp / "media-agent"
    drop_settled(bundle, home)
    run("agent", "run", "--home", str(home), "--once")
    back = site.tmp / "back"
    back.mkdir()
    for result in (home / "outbox").glob("*.tgr"):
        shutil.copy(result, back)
    site.hub("import", str(back), user="carol")
    view = _rollout(site, rid)
    assert view["state"] == "succeeded"
    assert [a["state"] for b in view["batches"] for a in b["agents"]] == [
        "succeeded", "succeeded"]
    assert site.runs() == 2  # the marker file counts both sites' runs (it is shared)
    fleet_view = site.hub_json("fleet")
    assert [(a["agent"], a["runs"]) for a in fleet_view[0]["agents"]] == [
        ("site-01", {"relay": "1.0.0"}), ("site-02", {"relay": "1.0.0"})]
    assert len(site.audit("rollout.confirm")) == 1
