"""A rollout's automatic rollback with real ``tiangong hub`` processes and real agents
reached by media (docs/rollouts.md, "Automatic rollback"): the canary's deployment fails
after its file step changed a file; the ``hub import`` that brings its result back is killed
(crash point ``hub.rollback-created``) after the rollback release was created and before it
was approved by inheritance and queued — nothing of it survives, and the import done again
creates it once, approves it by inheritance (audited with the original's approvals and the
rollout) and queues it for that agent only; a third import is a duplicate and adds nothing.
The next export carries it to the site, the agent puts the file back, and the rollback's
result comes home. The other agent never gets anything."""

from __future__ import annotations

import json
import shutil
import signal
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
from hub.services.users import grant_role
from tests.hub.realhub import ENV, RealHub

ROLLBACK_POINTS = ["hub.rollback-created"]


def _release(tmp: Path, conf: Path) -> Path:
    d = tmp / "app-2.0"
    d.mkdir()
    (d / "app.conf").write_text("port=8080\n")
    (d / "check.sh").write_text("echo 'port 8080 is taken' >&2; exit 1\n")
    (d / "uncheck.sh").write_text(f'echo undone >> "{conf}.undone"\n')
    (d / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "app"\nversion = "2.0"\n\n'
        f'[[steps]]\nname = "config"\nkind = "file"\nsource = "app.conf"\npath = "{conf}"\n\n'
        '[[steps]]\nname = "check"\nkind = "shell"\nscript = "check.sh"\n'
        'rollback = "uncheck.sh"\n')
    return d


def _site(hub: RealHub, tmp: Path, agent_id: str) -> Agent:
    _, request = init_home(tmp / agent_id, root_file=hub.data / "root.json",
                           agent_id=agent_id, environment=ENV)
    stick = tmp / f"enroll-{agent_id}"
    stick.mkdir()
    shutil.copy(request, stick)
    assert hub.cli("import", str(stick)).returncode == 0
    return Agent(load_config(tmp / agent_id))


def _run(agent: Agent, usb: Path, back: Path, status: str) -> None:
    """The site runs every bundle of ``usb`` meant for it; its results go to ``back``."""
    back.mkdir(exist_ok=True)
    for bundle in sorted(usb.glob("*.tgb")):
        if agent.config.agent_id not in bundle.name:
            continue
        dest = agent.config.inbox / bundle.name
        shutil.copyfile(bundle, dest)
        done = agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single",
                                       0.0))
        assert done.status == status, done.summary
    for result in agent.config.outbox.glob("*.tgr"):
        shutil.copy(result, back)


def _state(hub: RealHub) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """(deployments as (release version, state)), (releases (version, state)), the number
    of release.approve_inherited events; and the audit chain verifies."""
    with hub.ctx() as ctx:
        deps = sorted((d.release.version, d.state)
                      for d in ctx.session.scalars(select(Deployment)))
        rels = sorted((r.version, r.state) for r in ctx.session.scalars(select(Release)))
        inherited = len(list(ctx.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "release.approve_inherited"))))
        assert hub.keys is not None and verify_database(ctx.session, hub.keys).ok
        return deps, rels, inherited


def test_killed_between_creating_and_queueing_the_rollback_it_happens_once(
        tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    hub.seed_people()
    with hub.ctx() as admin:  # the starter creates the rollback releases in their name
        grant_role(admin, "op", "developer")
    sites = {a: _site(hub, tmp_path, a) for a in ("site-01", "site-02")}
    conf = tmp_path / "app.conf"
    conf.write_text("port=80\n")
    try:
        with hub.ctx("dev") as dev:
            release = create_release(dev, _release(tmp_path, conf), create_missing_product=True)
            submit_release(dev, release)
            release_id = release.id
        with hub.ctx("appr") as appr:
            approve_release(appr, appr.session.get(Release, release_id))
        out = hub.cli("rollouts", "start", "app", "2.0", "--environment", ENV, "--canary", "1",
                      "--auto-rollback", "--json")
        assert out.returncode == 0, out
        rid = str(json.loads(out.stdout)["id"])
        assert hub.cli("export", "--environment", ENV, "--out",
                       str(tmp_path / "usb-1")).returncode == 0
        _run(sites["site-01"], tmp_path / "usb-1", tmp_path / "back-1", "failed")
        assert conf.read_text() == "port=8080\n"  # the file step ran before the failure

        killed = hub.cli("import", str(tmp_path / "back-1"),
                         extra_env={"TIANGONG_CRASH_AT": ROLLBACK_POINTS[0]})
        assert killed.returncode == -signal.SIGKILL, killed
        assert _state(hub) == ([("2.0", "exported")], [("2.0", "approved")], 0)

        assert hub.cli("import", str(tmp_path / "back-1")).returncode == 0
        after = _state(hub)
        assert after == ([("2.0", "failed"), ("2.0-rollback-1", "queued")],
                         [("2.0", "approved"), ("2.0-rollback-1", "approved")], 1)
        again = hub.cli("import", str(tmp_path / "back-1"))
        assert again.returncode == 0 and "duplicate" in again.stdout, again
        assert _state(hub) == after

        shown = json.loads(hub.cli("releases", "show", "app", "2.0-rollback-1", "--json").stdout)
        assert (shown["rollback_of"], shown["approved_by_inheritance_from"]) == (1, "app 2.0")
        assert shown["approvals"] == []  # nobody approved it: it inherits
        view = json.loads(hub.cli("rollouts", "show", rid, "--json").stdout)
        assert view["state"] == "paused" and view["rolled_back"]
        assert view["rollbacks"] == [{
            "rolls_back": 1, "release": "app 2.0-rollback-1", "state": "approved",
            "inherited_from": "app 2.0",
            "deployments": [{"id": 2, "state": "queued", "agent": "site-01"}]}]
        with hub.ctx() as ctx:
            (event,) = ctx.session.scalars(select(AuditEvent).where(
                AuditEvent.action == "release.approve_inherited"))
            details = json.loads(event.details) if isinstance(event.details, str) \
                else event.details
            assert event.actor == "system:rollout"
            assert details["inherited_from"] == "app 2.0" and details["rollout"] == int(rid)
            assert [a["approver"] for a in details["approvals"]] == ["appr"]

        # The rollback reaches the site that ran the release, and only it.
        assert hub.cli("export", "--environment", ENV, "--out",
                       str(tmp_path / "usb-2")).returncode == 0
        (bundle,) = (tmp_path / "usb-2").glob("*.tgb")
        assert "site-01" in bundle.name
        _run(sites["site-01"], tmp_path / "usb-2", tmp_path / "back-2", "succeeded")
        assert conf.read_text() == "port=80\n"
        assert Path(f"{conf}.undone").read_text() == "undone\n"  # the rollback script ran
        assert hub.cli("import", str(tmp_path / "back-2")).returncode == 0
        assert _state(hub)[0] == [("2.0", "failed"), ("2.0-rollback-1", "succeeded")]
    finally:
        for agent in sites.values():
            agent.close()
        hub.close()
