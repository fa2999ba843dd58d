"""Export to media and import from it, with a real agent (in-process) in between."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.results import write_result
from agent.service import Agent
from hub.errors import PermissionDeniedError
from hub.services.approvals import approve_release
from hub.services.deployments import list_deployments, queue_deployment
from hub.services.exchange import export_environment, import_directory
from hub.services.releases import create_release, submit_release
from signing.keys import SigningKey
from tests.hub.conftest import World

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"


def _agent(world: World, tmp: Path, agent_id: str = "site-01") -> Agent:
    root = tmp / f"root-{agent_id}.json"
    root.write_bytes(world.keys.hub.root_envelope)
    now = int(world.clock().timestamp())
    _, request = init_home(
        tmp / agent_id, root_file=root, agent_id=agent_id, environment="test", now=now
    )
    media = tmp / f"enroll-{agent_id}"
    media.mkdir()
    shutil.copy(request, media)
    report = import_directory(world.ctx("op"), media, results_dir=tmp / "results")
    assert [r.status for r in report.rows] == ["enrolled"], report.rows
    assert (media / f"enrollment-response-{agent_id}.json").exists()
    return Agent(load_config(tmp / agent_id), clock=lambda: world.clock().timestamp())


def _result(agent: Agent, status: str, summary: str, bundle_id: str | None = None,
            envelope_sha256: str | None = None, release: object = None,
            steps: list[object] | None = None, **extra: object) -> Path:
    """A signed result file written by ``agent`` (as its own service would write one)."""
    return write_result(agent.config, agent.journal, agent.keys.identity, status=status,
                        summary=summary, bundle_id=bundle_id,
                        bundle_envelope_sha256=envelope_sha256, release=release or {},
                        steps=steps or [], extra=extra.get("extra"),  # type: ignore[arg-type]
                        now=int(agent.clock()))


def _approved_release(world: World):  # type: ignore[no-untyped-def]
    release = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    return release


def _deliver(agent: Agent, usb: Path) -> None:
    for f in sorted(usb.glob("*.tgb")):
        dest = agent.config.inbox / f.name
        shutil.copyfile(f, dest)
        out = agent.process(ReadyItem(f.name, (dest,), dest.stat().st_size, "single", 0.0))
        assert out.status == "succeeded", out.summary


def test_export_run_import_round_trip(world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    usb = tmp_path / "usb"
    report = export_environment(world.ctx("op"), "test", usb)
    assert len(report.written) == 1 and not report.failed
    assert report.index is not None and "site-01" in report.index.read_text()
    # Nothing new to export: nothing new written.
    again = export_environment(world.ctx("op"), "test", usb)
    assert again.written == [] and again.index is None
    assert len(list(usb.glob("*.tgb"))) == 1

    _deliver(agent, usb)
    back = tmp_path / "usb-back"
    shutil.copytree(agent.config.outbox, back)
    rows = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    results = [r for r in rows if r.file.endswith(".tgr")]
    assert [r.status for r in results] == ["imported"], rows
    (dep,) = list_deployments(world.session, "test")
    assert dep.state == "succeeded"
    assert dep.result_summary and dep.result_summary["status"] == "succeeded"
    assert list((tmp_path / "results").glob("*.tgr"))
    # Importing the same files again changes nothing.
    rows2 = import_directory(world.ctx("op"), back, results_dir=tmp_path / "results").rows
    assert [r.status for r in rows2 if r.file.endswith(".tgr")] == ["duplicate"]
    agent.close()


def test_import_refuses_forged_and_foreign_results(world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    other = _agent(world, tmp_path, "site-02")
    release = _approved_release(world)
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    usb = tmp_path / "usb"
    export_environment(world.ctx("op"), "test", usb)
    mine = [f for f in usb.glob("*.tgb") if "site-01" in f.name]
    only = tmp_path / "usb1"
    only.mkdir()
    for f in mine:
        shutil.copy(f, only)
    _deliver(agent, only)
    result = next(agent.config.outbox.glob("*.tgr"))

    # Forged: same content, signed by a key that is not the agent's.
    forged_agent = Agent(
        agent.config,
        keys=type(agent.keys)(SigningKey.generate(), agent.keys.box),
        clock=lambda: world.clock().timestamp(),
    )
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forged = _result(forged_agent, "succeeded", "all good (forged)")
    shutil.move(str(forged), forged_dir / forged.name)
    rows = import_directory(world.ctx("op"), forged_dir, results_dir=tmp_path / "r").rows
    assert [r.status for r in rows] == ["rejected"]
    assert "signature" in rows[0].reason

    # Foreign: site-02 reports on a bundle addressed to site-01 — refused even though the
    # signature is site-02's own valid key.
    foreign_dir = tmp_path / "foreign"
    foreign_dir.mkdir()
    rec = agent.journal.bundles()[0]
    f2 = _result(other, "succeeded", "not mine", rec.bundle_id, rec.envelope_sha256)
    shutil.move(str(f2), foreign_dir / f2.name)
    rows = import_directory(world.ctx("op"), foreign_dir, results_dir=tmp_path / "r").rows
    assert [r.status for r in rows] == ["rejected"] and "not addressed" in rows[0].reason

    # The genuine one still imports.
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(result, good)
    rows = import_directory(world.ctx("op"), good, results_dir=tmp_path / "r").rows
    assert [r.status for r in rows] == ["imported"]
    agent.close()
    other.close()
    forged_agent.close()


def test_export_requires_operator(world: World, tmp_path: Path) -> None:
    with pytest.raises(PermissionDeniedError):
        export_environment(world.ctx("dev"), "test", tmp_path / "usb")
    assert not (tmp_path / "usb").exists()


def test_gap_in_result_sequence_is_flagged_and_audited(world: World, tmp_path: Path) -> None:
    agent = _agent(world, tmp_path)
    paths = [_result(agent, "rejected", f"report {i}",
                           extra={"rejected_file": f"x{i}.tgb", "check": "target"})
             for i in (1, 2, 3)]
    media = tmp_path / "partial"
    media.mkdir()
    for p in (paths[0], paths[2]):  # result 2 never reached the hub
        shutil.copy(p, media)
    rows = import_directory(world.ctx("op"), media, results_dir=tmp_path / "r").rows
    assert [r.status for r in rows] == ["imported", "imported"]
    assert rows[0].flags == ()
    assert any("gap: results 2..2" in f for f in rows[1].flags)
    from sqlalchemy import select

    from hub.db import AuditEvent

    flagged = world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "result.flag")).all()
    assert len(flagged) == 1 and "gap" in flagged[0].details
    agent.close()


def test_operator_of_one_environment_exports_there_with_its_checkpoint(
        world: World, tmp_path: Path) -> None:
    """The signed audit checkpoint in every bundle is part of exporting: an operator@test
    needs no global audit.checkpoint grant, and it still may not export elsewhere."""
    from hub.errors import PermissionDeniedError
    from hub.services.audit import write_checkpoint
    from hub.services.users import create_user, grant_role

    create_user(world.ctx("admin"), "op-test")
    grant_role(world.ctx("admin"), "op-test", "operator", "test")
    _agent(world, tmp_path)
    queue_deployment(world.ctx("op"), _approved_release(world), "test")
    world.session.commit()
    report = export_environment(world.ctx("op-test"), "test", tmp_path / "usb")
    assert len(report.written) == 1 and not report.failed
    with pytest.raises(PermissionDeniedError):
        export_environment(world.ctx("op-test"), "prod", tmp_path / "usb2")
    with pytest.raises(PermissionDeniedError):
        write_checkpoint(world.ctx("op-test"))


def test_export_with_nothing_queued_writes_nothing_and_signs_no_checkpoint(
        world: World, tmp_path: Path) -> None:
    """The live server asks for an export at every connection: an empty one must not grow
    the audit log with checkpoints."""
    from hub.db import AuditCheckpoint

    before = world.session.query(AuditCheckpoint).count()
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert report.written == [] and report.failed == [] and report.index is None
    assert world.session.query(AuditCheckpoint).count() == before


def test_files_with_odd_names_are_imported_and_audited_escaped(world: World,
                                                                tmp_path: Path) -> None:
    """A name with a byte that is not UTF-8 made its audit event unwritable: the whole
    import failed (a raw traceback; no file of the directory imported). Odd names — such
    bytes, a newline, ESC, a leading dash, spaces — are imported or refused like any other;
    the audit log names them escaped as the agent's inbox and the CLI's tables do."""
    from sqlalchemy import select

    from hub.db import AuditEvent
    from hub.services.audit import verify_database

    agent = _agent(world, tmp_path)
    media = tmp_path / "odd"
    media.mkdir()
    names = [os.fsdecode(n) for n in (b"a \xff\xfe.tgr", b"b new\nline.tgr",
                                      b"c \x1b[31mred.tgr", b"-d --json.tgr")]
    for i, name in enumerate(names):
        shutil.move(_result(agent, "succeeded", f"report {i}"), media / name)
    garbage, request = os.fsdecode(b"e \xff garbage.tgr"), os.fsdecode(b"enrollment-\xff.json")
    (media / garbage).write_bytes(b"not a bundle\n")
    (media / request).write_bytes(b"{}")
    rows = import_directory(world.ctx("op"), media, results_dir=tmp_path / "r").rows
    assert [(r.file, r.status) for r in rows] == [
        (names[3], "imported"), (names[0], "imported"), (names[1], "imported"),
        (names[2], "imported"), (garbage, "rejected"), (request, "rejected")]
    audited = {e.object_id: e.details for e in world.session.scalars(select(AuditEvent).where(
        AuditEvent.action == "result.rejected"))}
    assert sorted(audited) == ["e \\xff garbage.tgr", "enrollment-\\xff.json"]
    assert "bundle e \\\\xff garbage.tgr is truncated" in audited["e \\xff garbage.tgr"]
    files = sorted(json.loads(d)["file"] for d in world.session.scalars(
        select(AuditEvent.details).where(AuditEvent.action == "result.import")))
    assert files == ["-d --json.tgr", "a \\xff\\xfe.tgr", "b new\\x0aline.tgr",
                     "c \\x1b[31mred.tgr"]
    assert verify_database(world.session, world.keys.hub).ok
    agent.close()
