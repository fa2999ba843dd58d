"""Rollouts with real ``tiangong hub`` processes and real agents reached by media
(docs/rollouts.md): a canary → batches rollout with a manual gate, the hub killed between
batches (crash point ``hub.rollout-batch-queued``) on the confirmation and on the result
import that ends a batch — the rollout goes on without queueing or exporting anything twice;
a failing batch that pauses the rollout, resumed, then cancelled: the exported bundle of
its second batch is withdrawn."""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent
from hub.db import AuditEvent, Deployment, Release
from hub.services.approvals import approve_release
from hub.services.audit import verify_database
from hub.services.releases import create_release, submit_release
from hub.services.users import create_user, grant_role
from tests.hub.conftest import write_release
from tests.hub.realhub import ENV, HELLO, RealHub

ROLLOUT_POINTS = ["hub.rollout-batch-queued"]
AGENTS = ("site-01", "site-02", "site-03")


def _hub(tmp_path: Path) -> tuple[RealHub, dict[str, Agent]]:
    """A hub with three real agents (enrolled from their request files), a second
    operator ``op2``, hello 1.0.0 approved (nothing queued)."""
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    with hub.ctx() as admin:
        create_user(admin, "op2")
        grant_role(admin, "op2", "operator")
    requests = tmp_path / "enroll"
    requests.mkdir()
    homes = {}
    for agent_id in AGENTS:
        home = tmp_path / agent_id
        _, request = init_home(home, root_file=hub.data / "root.json", agent_id=agent_id,
                               environment=ENV)
        shutil.copy(request, requests)
        homes[agent_id] = home
    out = hub.cli("import", str(requests))
    assert out.returncode == 0 and "3 enrolled" in out.stdout, out
    _approve(hub, HELLO)
    return hub, {a: Agent(load_config(h)) for a, h in homes.items()}


def _approve(hub: RealHub, source: Path) -> None:
    with hub.ctx("dev") as dev:
        release = create_release(dev, source, create_missing_product=True)
        submit_release(dev, release)
        release_id = release.id
    with hub.ctx("appr") as appr:
        approve_release(appr, appr.session.get(Release, release_id))


def _ok(hub: RealHub, *args: str, user: str = "op") -> dict:  # type: ignore[type-arg]
    out = hub.cli(*args, "--json", user=user)
    assert out.returncode == 0, out
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _export_and_run(hub: RealHub, agents: dict[str, Agent], tmp_path: Path, name: str,
                    status: dict[str, str] | None = None) -> list[str]:
    """Export to a fresh stick, run each bundle at its site, bring the results back and
    import them; returns the agents that got a bundle."""
    usb = tmp_path / f"usb-{name}"
    out = hub.cli("export", "--environment", ENV, "--out", str(usb))
    assert out.returncode == 0, out
    back = tmp_path / f"back-{name}"
    back.mkdir()
    reached = []
    for bundle in sorted(usb.glob("*.tgb")):
        agent_id = next(a for a in agents if a in bundle.name)
        reached.append(agent_id)
        agent = agents[agent_id]
        dest = agent.config.inbox / bundle.name
        shutil.copyfile(bundle, dest)
        done = agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single",
                                       0.0))
        assert done.status == (status or {}).get(agent_id, "succeeded"), done.summary
        for result in agent.config.outbox.glob("*.tgr"):
            shutil.copy(result, back)
    imp = hub.cli("import", str(back))
    assert imp.returncode == 0, imp
    return reached


def _killed(hub: RealHub, *args: str, user: str = "op") -> None:
    out = hub.cli(*args, user=user, extra_env={"TIANGONG_CRASH_AT": ROLLOUT_POINTS[0]})
    assert out.returncode == -signal.SIGKILL, out


def _written_once(hub: RealHub) -> int:
    """Every deployment's bundle written exactly once; the audit chain verifies."""
    with hub.ctx() as ctx:
        written = Counter(ctx.session.scalars(select(AuditEvent.object_id).where(
            AuditEvent.action == "bundle.written")))
        assert set(written.values()) <= {1}, written
        assert hub.keys is not None and verify_database(ctx.session, hub.keys).ok
        return len(written)


def _rollout_deployments(hub: RealHub) -> list[tuple[str, str]]:
    with hub.ctx() as ctx:
        return sorted((d.agent.agent_id, d.state) for d in ctx.session.scalars(
            select(Deployment)) if d.agent is not None)


def test_canary_then_batches_with_manual_gate_killed_between_batches(tmp_path: Path) -> None:
    hub, agents = _hub(tmp_path)
    try:
        view = _ok(hub, "rollouts", "start", "hello", "1.0.0", "--environment", ENV,
                   "--canary", "1", "--batch", "2", "--manual")
        rid = str(view["id"])
        assert [[a["agent"] for a in b["agents"]] for b in view["batches"]] == [
            ["site-01"], ["site-02", "site-03"]]
        assert _export_and_run(hub, agents, tmp_path, "1") == ["site-01"]
        view = _ok(hub, "rollouts", "show", rid)
        assert view["batches"][0]["done_at"] is not None
        assert any("manual confirmation" in w for w in view["batches"][0]["waiting_for"])

        # The starter may not confirm: refused, nothing changed.
        refused = hub.cli("rollouts", "confirm", rid)
        assert refused.returncode == 1 and "another operator must" in refused.stderr
        assert _rollout_deployments(hub) == [("site-01", "succeeded")]

        # Killed while queueing batch 2: nothing of it survives; run again, queued once.
        _killed(hub, "rollouts", "confirm", rid, user="op2")
        assert _rollout_deployments(hub) == [("site-01", "succeeded")]
        assert _ok(hub, "rollouts", "show", rid)["current_batch"] == 1
        view = _ok(hub, "rollouts", "confirm", rid, user="op2")
        assert view["current_batch"] == 2 and view["batches"][0]["confirmed_by"] == "op2"
        assert _export_and_run(hub, agents, tmp_path, "2") == ["site-02", "site-03"]
        view = _ok(hub, "rollouts", "show", rid)
        assert view["state"] == "succeeded"
        assert _rollout_deployments(hub) == [(a, "succeeded") for a in AGENTS]
        assert _written_once(hub) == 3
        fleet = _ok(hub, "fleet")
        assert [a["runs"] for a in fleet[0]["agents"]] == [{"hello": "1.0.0"}] * 3
    finally:
        hub.close()


def test_import_killed_starting_the_next_batch_then_a_failing_batch_pauses_and_cancel(
    tmp_path: Path,
) -> None:
    hub, agents = _hub(tmp_path)
    try:
        rid = str(_ok(hub, "rollouts", "start", "hello", "1.0.0", "--environment", ENV,
                      "--canary", "1")["id"])
        usb = tmp_path / "usb"
        assert hub.cli("export", "--environment", ENV, "--out", str(usb)).returncode == 0
        (bundle,) = usb.glob("*.tgb")
        agent = agents["site-01"]
        shutil.copyfile(bundle, agent.config.inbox / bundle.name)
        dest = agent.config.inbox / bundle.name
        agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single", 0.0))
        back = tmp_path / "back"
        back.mkdir()
        for result in agent.config.outbox.glob("*.tgr"):
            shutil.copy(result, back)
        # The import that ends batch 1 is killed while it queues batch 2: the result is
        # not imported either (one transaction); imported again, everything happens once.
        _killed(hub, "import", str(back))
        assert _rollout_deployments(hub) == [("site-01", "exported")]
        assert hub.cli("import", str(back)).returncode == 0
        assert _rollout_deployments(hub) == [("site-01", "succeeded"), ("site-02", "queued"),
                                             ("site-03", "queued")]
        assert sorted(_export_and_run(hub, agents, tmp_path, "2")) == ["site-02", "site-03"]
        assert _ok(hub, "rollouts", "show", rid)["state"] == "succeeded"
        assert _written_once(hub) == 3

        # A release whose step fails: the canary fails, the rollout pauses, nothing more.
        _approve(hub, write_release(tmp_path / "src", version="2.0.0",
                                    steps={"break": "exit 3\n"}))
        rid = str(_ok(hub, "rollouts", "start", "hello", "2.0.0", "--environment", ENV,
                      "--canary", "1", "--batch", "1")["id"])
        _export_and_run(hub, agents, tmp_path, "3", {"site-01": "failed"})
        view = _ok(hub, "rollouts", "show", rid)
        assert view["state"] == "paused" and "site-01 (failed)" in view["reason"]
        assert [a["state"] for a in view["batches"][1]["agents"]] == ["not queued"]
        with hub.ctx() as ctx:
            paused = ctx.session.scalars(select(AuditEvent).where(
                AuditEvent.action == "rollout.paused")).all()
            assert len(paused) == 1 and paused[0].actor == "system:rollout"
        # Resumed (the failure accepted): batch 2 goes to the media, then the rollout is
        # cancelled before the stick reaches site-02: its bundle is withdrawn (declared
        # lost, the decision travels with the next bundle to it) and batch 3 never starts.
        view = _ok(hub, "rollouts", "resume", rid)
        assert view["state"] == "running" and view["current_batch"] == 2
        usb = tmp_path / "usb-4"
        assert hub.cli("export", "--environment", ENV, "--out", str(usb)).returncode == 0
        (bundle,) = usb.glob("*.tgb")
        assert "site-02" in bundle.name
        row = _ok(hub, "rollouts", "show", rid)["batches"][1]["agents"][0]
        assert row["state"] == "exported" and row["owes_result_since"] is not None
        refused = hub.cli("rollouts", "cancel", rid, user="aud")
        assert refused.returncode == 1 and "may not" in refused.stderr
        assert _ok(hub, "rollouts", "show", rid)["state"] == "running"
        view = _ok(hub, "rollouts", "cancel", rid, "--reason", "broken step")
        assert view["state"] == "cancelled" and any("withdrawn" in d for d in view["did"])
        with hub.ctx() as ctx:
            (decision,) = ctx.session.scalars(select(AuditEvent).where(
                AuditEvent.action == "bundle.declared_lost")).all()
            assert decision.object_id == "agent:site-02" and "broken step" in str(
                decision.details)
        assert [a["state"] for b in view["batches"] for a in b["agents"]] == [
            "failed", "lost", "not queued"]
        assert _export_and_run(hub, agents, tmp_path, "5") == []
    finally:
        hub.close()
