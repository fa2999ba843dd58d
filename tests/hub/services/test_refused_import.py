"""A real agent's refusal of a bundle after it verified (step or approval check) names the
bundle (bundle_id, bundle_envelope_sha256); the hub imports it: attached to the deployment
when the hub exported that bundle to this agent, otherwise imported, flagged and audited
with no deployment (a bundle made by hand with the release key must not hide its refusal)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from hub.db import AuditEvent
from hub.services.approvals import approve_release
from hub.services.deployments import get_deployment, queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.releases import create_release, submit_release
from tests.hub.conftest import World
from tests.hub.services.test_exchange import _agent

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"
NEEDS_DB = ('\n[[steps]]\nname = "migrate"\nkind = "sql"\nengine = "postgres"\n'
            'connection = "billing-db"\nscript = "scripts/write-greeting.sh"\n')


def _drop(path: Path, inbox: Path, now: float) -> None:
    dest = inbox / path.name
    shutil.copyfile(path, dest)
    os.utime(dest, (now - 3600, now - 3600))


def _results(agent_outbox: Path, tmp: Path) -> Path:
    back = tmp / f"back-{time.monotonic_ns()}"
    back.mkdir()
    for result in agent_outbox.glob("*.tgr"):
        shutil.copy(result, back)
    return back


def _needs_db(tmp: Path) -> Path:
    """hello plus an SQL step on a connection the test site does not define."""
    src = tmp / "hello-db"
    shutil.copytree(HELLO, src)
    (src / "release.toml").write_text((src / "release.toml").read_text() + NEEDS_DB)
    return src


def test_refusal_of_a_hand_made_bundle_is_imported_flagged_and_audited(
        world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    now = world.clock().timestamp()
    manifest, files = release_manifest(
        load_release(_needs_db(tmp_path)), bundle_id="hand-made-1",
        issuer=world.keys.release.key_id,
        target=Target(agents=("site-01",), environment="test"), root_version=1, sequence=1,
        created=int(now) - 60, expires=int(now) + 86400, counter=1, author="mallory")
    bundle = write_bundle(tmp_path / "hand.tgb", manifest, files, [world.keys.release]).paths[0]
    _drop(bundle, agent.config.inbox, now)
    (out,) = agent.run_once()
    assert out.status == "rejected" and out.bundle_id == "hand-made-1", out.summary
    back = _results(agent.config.outbox, tmp_path)
    agent.close()
    rows = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    (row,) = rows
    assert row.status == "imported" and row.deployment_id is None, row
    assert any("bundle hand-made-1 was not exported by this hub to site-01" in f
               for f in row.flags), row.flags
    details = [json.loads(d) for d in world.session.scalars(
        select(AuditEvent.details).where(AuditEvent.action == "result.import"))]
    assert [(d["status"], d["bundle_id"], d["deployment"]) for d in details] == [
        ("rejected", "hand-made-1", None)]
    flags = [json.loads(d)["flag"] for d in world.session.scalars(
        select(AuditEvent.details).where(AuditEvent.action == "result.flag"))]
    assert len(flags) == 1 and "connection 'billing-db'" in flags[0]


def test_refusal_of_an_exported_bundle_is_attached_to_its_deployment(
        world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    now = world.clock().timestamp()
    release = create_release(world.ctx("dev"), _needs_db(tmp_path),
                             create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    (dep,) = queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    world.clock.advance(60)
    (written,) = export_environment(world.ctx("op"), "test", tmp_path / "usb").written
    # The hub cannot know the site has no connection billing-db: the agent refuses it.
    _drop(written.paths[0], agent.config.inbox, now)
    (out,) = agent.run_once()
    assert out.status == "rejected" and out.bundle_id == dep.bundle_id, out.summary
    back = _results(agent.config.outbox, tmp_path)
    agent.close()
    rows = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    (row,) = rows
    assert row.status == "imported" and row.deployment_id == dep.id and row.flags == (), row
    assert get_deployment(world.session, dep.id).state == "rejected"
    assert "connection 'billing-db'" in row.reason
