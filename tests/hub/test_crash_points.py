"""A real ``tiangong hub export`` / ``tiangong hub import`` killed at every hub crash point
(``TIANGONG_CRASH_AT``, hub/faults.py), then run again: each deployment exported once, no
sequence used twice, every imported result exactly one audit event, the audit chain and
every MAC verify, nothing left behind on the media (issue 9 §2, docs/hub.md "Crash points").
With the same real processes: a deployment a killed export left ``exporting`` declared lost,
and a lost bundle's refusal imported (docs/hub.md "Lost bundles").
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent
from bundle.inspect import inspect
from bundle.release import load_release
from hub.db import AuditEvent, Deployment, SequenceCounter
from hub.faults import CRASH_POINTS
from hub.services.audit import verify_database
from hub.services.chain import DECLARED_LOST
from tests.hub.realhub import ENV, HELLO, RealHub

EXPORT_POINTS = ["hub.export-claimed", "hub.export-frame-caching", "hub.export-writing",
                 "hub.export-synced", "hub.export-renamed",
                 "hub.export-recorded", "hub.export-indexing", "hub.audit-appended",
                 "hub.checkpoint-signed"]
PLAN_POINTS = ["hub.plan-written"]
IMPORT_POINTS = ["hub.import-copies-synced", "hub.import-stored", "hub.import-committed"]
AGENTS = ("site-01", "site-02")


def test_every_crash_point_is_tested() -> None:
    from tests.hub.test_auto_rollback_processes import ROLLBACK_POINTS
    from tests.hub.test_hub_schedules import SCHEDULE_POINTS
    from tests.hub.test_live_delivered_crash import LIVE_POINTS
    from tests.hub.test_notifications_processes import NOTIFY_POINTS
    from tests.hub.test_rollouts_processes import ROLLOUT_POINTS
    from tests.hub.test_root_install_crash import ROOT_POINTS

    assert (set(EXPORT_POINTS) | set(IMPORT_POINTS) | set(PLAN_POINTS) | set(ROOT_POINTS)
            | set(ROLLOUT_POINTS) | set(NOTIFY_POINTS) | set(ROLLBACK_POINTS)
            | set(SCHEDULE_POINTS) | set(LIVE_POINTS)) == set(CRASH_POINTS)


def _hub(tmp_path: Path) -> tuple[RealHub, dict[str, Agent]]:
    """A hub with two real agents (enrolled from their request files) and hello 1.0.0
    queued for both."""
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    requests = tmp_path / "enroll"
    requests.mkdir()
    agents = {}
    for agent_id in AGENTS:
        home = tmp_path / agent_id
        _, request = init_home(home, root_file=hub.data / "root.json", agent_id=agent_id,
                               environment=ENV)
        shutil.copy(request, requests)
        agents[agent_id] = home
    out = hub.cli("import", str(requests))
    assert out.returncode == 0 and "2 enrolled" in out.stdout, out
    hub.queue()
    return hub, {a: Agent(load_config(h)) for a, h in agents.items()}


def _killed(hub: RealHub, point: str, *args: str) -> None:
    out = hub.cli(*args, extra_env={"TIANGONG_CRASH_AT": point})
    assert out.returncode == -signal.SIGKILL, (point, out)


def _run_at_site(agent: Agent, bundle: Path, status: str = "succeeded") -> None:
    """Copy ``bundle`` into the real agent's inbox and process it; it ends in ``status``."""
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    done = agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single", 0.0))
    assert done.status == status, done.summary


def _results_of(agent: Agent, back: Path) -> Path:
    """Copy the agent's result files into ``back`` (the stick going home)."""
    back.mkdir(exist_ok=True)
    for result in agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)
    return back


def _check(hub: RealHub, usb: Path, states: set[str]) -> None:
    assert hub.keys is not None
    with hub.ctx() as ctx:
        s = ctx.session
        deps = list(s.scalars(select(Deployment)))
        assert {d.state for d in deps} == states
        written = Counter(s.scalars(select(AuditEvent.object_id).where(
            AuditEvent.action == "bundle.written")))
        assert written == Counter(str(d.id) for d in deps)  # exported once each
        assert sorted(d.sequence for d in deps) == [1, 1]  # one sequence per agent, no reuse
        assert set(s.scalars(select(SequenceCounter.next_sequence))) == {2}
        report = verify_database(s, hub.keys)
        assert report.ok and report.macs_checked, report.summary()
    bundles = sorted(p.name for p in usb.glob("*.tgb"))
    assert len(bundles) == len(set(bundles)) == 2, bundles
    # Nothing hidden left on the media: no spool, no temporary file, no index lock.
    assert sorted(p.name for p in usb.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("point", EXPORT_POINTS)
def test_export_killed_at(point: str, tmp_path: Path) -> None:
    hub, _ = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        _killed(hub, point, "export", "--environment", ENV, "--out", str(usb))
        again = hub.cli("export", "--environment", ENV, "--out", str(usb))
        assert again.returncode == 0, again
        if point in ("hub.export-writing", "hub.export-synced", "hub.export-indexing"):
            assert "by an export that was killed" in again.stdout
        if point == "hub.export-indexing":
            assert f"removed .INDEX-{ENV}.txt.lock " in again.stdout
        if point in ("hub.export-claimed", "hub.export-frame-caching", "hub.export-writing",
                     "hub.export-synced", "hub.export-renamed"):
            assert "completing an export that was interrupted" in again.stdout
        if point == "hub.export-frame-caching":
            # Killed with a frame fsynced under its temporary name: the next export removed
            # it and made the entries; every bundle carries the cached frames.
            frames = hub.data / "releases" / ".frames"
            assert not [p.name for p in frames.iterdir() if p.name.endswith(".tmp")]
            assert len(list(frames.glob("*.zst"))) == len(load_release(HELLO).files)
        _check(hub, usb, {"exported"})
    finally:
        hub.close()


def test_a_plan_killed_after_writing_its_file_never_lends_its_sequence_to_the_next(
        tmp_path: Path) -> None:
    """On SQLite a rolled-back id is handed out again: the plan's sequence is committed before
    its file is written, so the file a killed run left and the next plan differ."""
    hub, _ = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        plan = ("releases", "plan", "hello", "1.0.0", "--agent", AGENTS[0], "--out", str(usb))
        _killed(hub, PLAN_POINTS[0], *plan)
        (orphan,) = [inspect(p).manifest for p in usb.glob("*.tgb")]
        again = hub.cli(*plan, "--json")
        assert again.returncode == 0, again
        made = json.loads(again.stdout)
        assert made["sequence"] > orphan.sequence, (made, orphan.sequence)
        assert made["bundle_id"] != orphan.bundle_id
        seqs = sorted(inspect(p).manifest.sequence for p in usb.glob("*.tgb"))
        assert seqs == [orphan.sequence, made["sequence"]]
        listed = json.loads(hub.cli("releases", "plans", "hello", "1.0.0", "--json").stdout)
        assert sorted(p["plan"] for p in listed) == seqs  # the killed one is listed, unanswered
    finally:
        hub.close()


@pytest.mark.parametrize("point", [*IMPORT_POINTS, *(f"{p}:2" for p in IMPORT_POINTS)])
def test_import_killed_at(point: str, tmp_path: Path) -> None:
    """Killed at an import point, then run again: each result imported exactly once. With
    ``:2`` the import runs one file per batch, so the kill comes with the first batch
    recorded or committed and the second one verified ahead of it (the pipeline)."""
    hub, agents = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        assert hub.cli("export", "--environment", ENV, "--out", str(usb)).returncode == 0
        back = tmp_path / "back"
        for agent_id, agent in agents.items():
            (bundle,) = usb.glob(f"*{agent_id}*.tgb")
            _run_at_site(agent, bundle)
            _results_of(agent, back)
        one_per_batch = ["--batch-size", "1"] if point.endswith(":2") else []
        _killed(hub, point, "import", *one_per_batch, str(back))
        again = hub.cli("import", str(back))
        assert again.returncode == 0, again
        with hub.ctx() as ctx:
            imported = Counter(ctx.session.scalars(select(AuditEvent.object_id).where(
                AuditEvent.action == "result.import")))
        assert len(imported) == 2 and set(imported.values()) == {1}  # exactly once each
        _check(hub, usb, {"succeeded"})
        # The stored results are the imported ones; a kill leaves at most private copies
        # (removed by a later import once a day old).
        stored = {p.name for p in (hub.data / "results").iterdir()}
        assert {n for n in stored if not n.startswith(".incoming-")} == {
            f"{sha}.tgr" for sha in imported}
    finally:
        hub.close()


def test_result_of_a_bundle_from_a_killed_export_is_accepted(tmp_path: Path) -> None:
    """Killed the instant the bundle's final name appeared (issue 9 §1): the stick goes to
    the site as it is, and the result comes back before anyone exports again."""
    hub, agents = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        _killed(hub, "hub.export-renamed", "export", "--environment", ENV, "--out", str(usb))
        # A batch's bundles are renamed together, after all of them are durable: both
        # reached the media, complete; the stick takes the first to its site.
        bundle, _ = sorted(usb.glob("*.tgb"))
        agent = next(a for n, a in agents.items() if n in bundle.name)
        _run_at_site(agent, bundle)
        imp = hub.cli("import", str(_results_of(agent, tmp_path / "back")))
        assert imp.returncode == 0 and "1 imported" in imp.stdout, imp
        with hub.ctx() as ctx:
            states = sorted(d.state for d in ctx.session.scalars(select(Deployment)))
        # Both deployments were claimed in one batch (one transaction): the other one is
        # left ``exporting`` by the killed export, and the next export completes it.
        assert states == ["exporting", "succeeded"]
        # The next export writes only the other deployment and leaves this one alone.
        again = hub.cli("export", "--environment", ENV, "--out", str(usb))
        assert again.returncode == 0 and again.stdout.count("wrote ") == 1, again
        with hub.ctx() as ctx:
            assert hub.keys is not None
            assert verify_database(ctx.session, hub.keys).ok
    finally:
        hub.close()


def test_a_killed_export_never_resumed_is_declared_lost_and_not_exported_again(
    tmp_path: Path,
) -> None:
    """``hub deployments declare-lost`` on a deployment left ``exporting`` by a killed
    export (issue 9): the decision is audited and signed into the next bundle for that
    agent, which a real agent then runs without the lost one; the lost deployment is never
    exported again."""
    hub, agents = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        _killed(hub, "hub.export-claimed", "export", "--environment", ENV, "--out", str(usb))
        with hub.ctx() as ctx:
            # Both deployments were claimed in one batch; the first is declared lost.
            both = ctx.session.scalars(select(Deployment).where(
                Deployment.state == "exporting").order_by(Deployment.id)).all()
            assert len(both) == 2
            claimed = both[0]
            lost_id, lost_seq = claimed.id, claimed.sequence
            assert claimed.agent is not None
            agent_id = claimed.agent.agent_id
            events = len(ctx.session.scalars(select(AuditEvent.seq)).all())
        assert lost_seq == 1 and not list(usb.glob("*.tgb"))

        # Refused without a reason: nothing changes.
        refused = hub.cli("deployments", "declare-lost", str(lost_id), "--reason", "  ")
        assert refused.returncode != 0 and "say why the bundle is lost" in refused.stderr
        with hub.ctx() as ctx:
            assert ctx.session.get(Deployment, lost_id).state == "exporting"  # type: ignore[union-attr]
            assert len(ctx.session.scalars(select(AuditEvent.seq)).all()) == events

        reason = "export killed on the old laptop, never resumed"
        out = hub.cli("deployments", "declare-lost", str(lost_id), "--reason", reason,
                      "--requeue")
        assert out.returncode == 0 and "declared lost" in out.stdout, out
        with hub.ctx() as ctx:
            assert ctx.session.get(Deployment, lost_id).state == "lost"  # type: ignore[union-attr]
            decided = ctx.session.scalars(select(AuditEvent).where(
                AuditEvent.action == DECLARED_LOST)).one()
            assert decided.object_id == f"agent:{agent_id}" and reason in decided.details

        again = hub.cli("export", "--environment", ENV, "--out", str(usb))
        assert again.returncode == 0, again
        assert f"deployment {lost_id}:" not in again.stdout  # neither completed nor taken
        assert again.stdout.count("wrote ") == 2, again.stdout
        (bundle,) = usb.glob(f"*-{agent_id}-*.tgb")
        assert bundle.name.endswith("-000002.tgb")  # sequence 1 stays lost: never reused
        manifest = inspect(bundle).manifest  # the hub's own bundle: looked at, not trusted
        assert manifest is not None and manifest.chain is not None
        chain = manifest.chain
        (decision,) = chain.lost
        assert (decision.bundle.sequence, decision.reason, decision.by) == (1, reason, "op")

        # A real agent that never saw sequence 1 runs sequence 2: the signed decision says
        # it will not come.
        _run_at_site(agents[agent_id], bundle)

        # The next export writes nothing: the lost deployment is not exported again.
        last = hub.cli("export", "--environment", ENV, "--out", str(usb))
        assert last.returncode == 0 and "nothing to export" in last.stdout, last
        with hub.ctx() as ctx:
            assert ctx.session.get(Deployment, lost_id).state == "lost"  # type: ignore[union-attr]
            written = ctx.session.scalars(select(AuditEvent.object_id).where(
                AuditEvent.action == "bundle.written")).all()
            assert str(lost_id) not in written and len(written) == 2
            assert hub.keys is not None
            assert verify_database(ctx.session, hub.keys).ok
        assert len(list(usb.glob("*.tgb"))) == 2
        assert sorted(p.name for p in usb.iterdir() if p.name.startswith(".")) == []
    finally:
        hub.close()


def test_refusal_of_a_lost_bundle_shows_in_deployments_show(tmp_path: Path) -> None:
    """The lost stick turns up after all: a real agent refuses its bundle (the next bundle
    carried the decision), and ``hub import`` attaches the signed refusal to the lost
    deployment, which ``hub deployments show`` lists as ``rejected: declared lost``."""
    hub, agents = _hub(tmp_path)
    usb, usb2 = tmp_path / "usb", tmp_path / "usb2"
    try:
        assert hub.cli("export", "--environment", ENV, "--out", str(usb)).returncode == 0
        agent_id = AGENTS[0]
        (lost_bundle,) = usb.glob(f"*-{agent_id}-*.tgb")
        with hub.ctx() as ctx:
            lost_id = ctx.session.scalars(select(Deployment.id).where(
                Deployment.bundle_id.is_not(None), Deployment.bundle_path.contains(agent_id)
            )).one()
        out = hub.cli("deployments", "declare-lost", str(lost_id), "--reason",
                      "stick lost in transit", "--requeue")
        assert out.returncode == 0, out
        assert hub.cli("export", "--environment", ENV, "--out", str(usb2)).returncode == 0
        (next_bundle,) = usb2.glob("*.tgb")
        agent = agents[agent_id]
        _run_at_site(agent, next_bundle)
        _run_at_site(agent, lost_bundle, "rejected")
        imp = hub.cli("import", str(_results_of(agent, tmp_path / "back")))
        assert imp.returncode == 0 and "2 imported" in imp.stdout, imp
        show = hub.cli("deployments", "show", str(lost_id), "--json")
        assert show.returncode == 0, show
        shown = json.loads(show.stdout)
        assert shown["state"] == "lost"
        assert [(a["attempt"], a["status"]) for a in shown["attempts"]] == [
            (1, "rejected: declared lost")]
    finally:
        hub.close()


def test_a_resumed_export_writes_the_policy_its_claim_recorded(tmp_path: Path) -> None:
    """Killed after its claims (both deployments, one batch), with a window that applies;
    the window is removed; the next export completes both bundles with the policy recorded
    at the claim (the bytes the killed one would have written), not today's rules."""
    hub, _ = _hub(tmp_path)
    usb = tmp_path / "usb"
    try:
        out = hub.cli("windows", "add", "sat 01:00-05:00 Europe/Berlin", "--environment", ENV,
                      "--json", user="admin")
        assert out.returncode == 0, out
        window = json.loads(out.stdout)
        _killed(hub, "hub.export-claimed", "export", "--environment", ENV, "--out", str(usb))
        out = hub.cli("windows", "remove", str(window["id"]), user="admin")
        assert out.returncode == 0, out
        again = hub.cli("export", "--environment", ENV, "--out", str(usb))
        assert again.returncode == 0 and "completing an export" in again.stdout, again
        policies = [inspect(b).manifest.policy for b in usb.glob("*.tgb")]
        assert len(policies) == 2
        for policy in policies:  # both claimed in the killed batch: the recorded policy
            assert policy is not None
            assert [w.to_json() for w in policy.windows] == [window["spec"]]
        _check(hub, usb, {"exported"})
    finally:
        hub.close()
