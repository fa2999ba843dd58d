"""Batched export (docs/hub.md "Batches"): the commits of an export do not grow with the
number of deployments, every deployment keeps its own audit events, one that fails is
rolled back alone, and the release's frames are compressed once for all agents."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, update

from bundle.inspect import inspect as inspect_bundle
from hub.db import Agent as AgentRow
from hub.db import (
    AuditEvent,
    Deployment,
    Release,
    SequenceCounter,
    make_session_factory,
)
from hub.services import export as export_service
from hub.services.agents import EnrollmentRequest, enroll_agent
from hub.services.approvals import approve_release
from hub.services.audit import verify_database
from hub.services.context import ServiceContext
from hub.services.deployments import queue_deployment
from hub.services.export import FRAMES_DIR, export_agents, export_environment
from hub.services.releases import create_release, submit_release
from hub.services.users import get_user
from signing.fileio import fsync_dir
from signing.keys import BoxKeyPair, SigningKey
from tests.e2e import test_live as e2e_live
from tests.hub.conftest import FakeClock, Keys, World, world_on

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"
file_world = e2e_live.file_world  # the fixture: the hub World on a SQLite file


def _enroll(world: World, ids: list[str]) -> None:
    for agent_id in ids:
        enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()


def _queue(world: World, version_dir: Path = HELLO) -> None:
    release = create_release(world.ctx("dev"), version_dir, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()


def _recorded_fsyncs(monkeypatch: pytest.MonkeyPatch, *modules: object) -> list[Path]:
    """The directories ``modules`` fsync from now on (through their ``fsync_dir``, which
    still syncs), in order."""
    synced: list[Path] = []

    def recording(directory: Path) -> None:
        synced.append(Path(directory))
        fsync_dir(directory)

    for module in modules:
        monkeypatch.setattr(module, "fsync_dir", recording)
    return synced


def _commits_of_export(world: World, usb: Path) -> tuple[int, int]:
    """(commits, bundles written) of one export_environment of every queued deployment."""
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    engine = world.session.get_bind()
    event.listen(engine, "commit", count)
    try:
        report = export_environment(world.ctx("op"), "test", usb)
    finally:
        event.remove(engine, "commit", count)
    assert not report.failed, report.failed
    return commits, len(report.written)


def test_commits_do_not_grow_with_the_number_of_deployments(world: World,
                                                            tmp_path: Path) -> None:
    _enroll(world, [f"site-{i:02d}" for i in range(2)])
    _queue(world)
    few, written = _commits_of_export(world, tmp_path / "usb1")
    assert written == 2
    _enroll(world, [f"site-{i:02d}" for i in range(2, 12)])
    steady = tmp_path / "steady"
    (steady / "release.toml").parent.mkdir()
    for item in HELLO.rglob("*"):
        dest = steady / item.relative_to(HELLO)
        if item.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            dest.write_bytes(item.read_bytes().replace(b'version = "1.0.0"', b'version = "1.0.1"'))
    _queue(world, steady)
    many, written = _commits_of_export(world, tmp_path / "usb2")
    assert written == 12
    assert many == few  # two deployments or twelve: the same commits
    events = world.session.scalars(select(AuditEvent)).all()
    deps = world.session.scalars(select(Deployment)).all()
    for action in ("bundle.claimed", "bundle.written"):
        per_dep = Counter(e.object_id for e in events if e.action == action)
        assert per_dep == Counter(str(d.id) for d in deps)  # each its own event, once
    written_events = {e.object_id: json.loads(e.details) for e in events
                      if e.action == "bundle.written"}
    for dep in deps:
        assert dep.state == "exported"
        assert dep.agent is not None
        assert written_events[str(dep.id)]["target"]["agents"] == [dep.agent.agent_id]
    assert verify_database(world.session, world.keys.hub).ok


def _counters(world: World) -> dict[str, int]:
    return {c.target: c.next_sequence
            for c in world.session.scalars(select(SequenceCounter))}


def test_a_deployment_taken_between_the_list_and_the_claim_is_left_to_its_taker(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another export moved a deployment on after this one listed it as queued (the claim
    reads the states again as plain rows): it is reported taken, not failed; nothing of it
    changes (no sequence, no event, no file) and the rest of the batch is written."""
    ids = ["site-01", "site-02", "site-03"]
    _enroll(world, ids)
    _queue(world)
    listed = export_service.hold_back

    def meanwhile(*args: object, **kwargs: object) -> object:
        go, held = listed(*args, **kwargs)  # type: ignore[arg-type]
        world.session.execute(update(Deployment.__table__)
                              .where(Deployment.__table__.c.id == go[1].id)
                              .values(state="exported", claimed_by=None))
        return go, held

    monkeypatch.setattr(export_service, "hold_back", meanwhile)
    events_before = world.session.scalar(select(func.count()).select_from(AuditEvent))
    counters_before = _counters(world)
    report = export_agents(world.ctx("op"), "test", tmp_path / "spool", ids)
    world.session.expire_all()
    deps = {d.agent.agent_id: d for d in world.session.scalars(select(Deployment))
            if d.agent is not None}
    taken = deps["site-02"]
    assert report.taken == [taken.id] and not report.failed
    assert sorted(b.agent_id or "" for b in report.written) == ["site-01", "site-03"]
    assert (taken.state, taken.sequence, taken.export_intent) == ("exported", None, None)
    assert not list((tmp_path / "spool" / "site-02").glob("*.tgb"))
    assert _counters(world)["agent:site-02"] == counters_before["agent:site-02"]  # unused
    touched = {e.object_id for e in world.session.scalars(
        select(AuditEvent).where(AuditEvent.seq > events_before))}
    assert str(taken.id) not in touched


def test_one_failing_deployment_is_rolled_back_alone(world: World, tmp_path: Path) -> None:
    """An agent revoked after its deployment was queued: its claim is refused and rolled
    back (no sequence used, still queued), the others of the batch are exported."""
    ids = ["site-01", "site-02", "site-03"]
    _enroll(world, ids)
    _queue(world)
    revoked = world.session.scalars(select(AgentRow).where(
        AgentRow.agent_id == "site-02")).one()
    revoked.status = "revoked"
    world.session.commit()
    before = _counters(world)
    spool = tmp_path / "spool"
    report = export_agents(world.ctx("op"), "test", spool, ids)
    assert sorted(b.agent_id or "" for b in report.written) == ["site-01", "site-03"]
    ((dep_id, reason),) = report.failed
    assert "site-02 is revoked" in reason and report.failed_agents == {dep_id: "site-02"}
    world.session.expire_all()  # what the database holds
    failed = world.session.get(Deployment, dep_id)
    assert failed is not None and failed.state == "queued" and failed.sequence is None
    after = _counters(world)
    assert {t: n for t, n in after.items() if "site-02" in t} == {
        t: n for t, n in before.items() if "site-02" in t}  # no sequence allocated
    events = world.session.scalars(select(AuditEvent)).all()
    assert not [e for e in events if e.action == "bundle.claimed"
                and e.object_id == str(dep_id)]
    assert [e.object_id for e in events if e.action == "bundle.export_failed"] == [str(dep_id)]
    # Each agent's bundle in its own spool directory; the release's frames made once.
    assert [p.name for p in (spool / "site-01").glob("*.tgb")]
    assert [p.name for p in (spool / "site-03").glob("*.tgb")]
    assert not (spool / "site-02").exists() or not list((spool / "site-02").glob("*.tgb"))
    frames = Path(world.ctx("op").releases_dir or "") / FRAMES_DIR
    assert sorted(p.suffix for p in frames.iterdir()) == [".zst"] * 3
    assert verify_database(world.session, world.keys.hub).ok


def _version(tmp_path: Path, version: str) -> Path:
    """``hello`` under another version (a second release of the same product)."""
    dest = tmp_path / f"hello-{version}"
    for item in HELLO.rglob("*"):
        target = dest / item.relative_to(HELLO)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes().replace(b'version = "1.0.0"',
                                                         f'version = "{version}"'.encode()))
    return dest


def _approved(world: World, tmp_path: Path, version: str) -> Release:
    release = create_release(world.ctx("dev"), _version(tmp_path, version),
                             create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    world.session.commit()
    return release


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def any_world(request: pytest.FixtureRequest, keys: Keys, clock: FakeClock,
              tmp_path: Path) -> Iterator[World]:
    """The hub World on each database the hub supports (the batch's statements: IN lists,
    an executemany UPDATE, a grouped MAX)."""
    url = {"sqlite": lambda: "sqlite://", "postgresql": lambda: request.getfixturevalue("pg_db"),
           "mariadb": lambda: request.getfixturevalue("mysql_db")}[request.param]()
    with world_on(url, clock, keys, tmp_path) as world:
        yield world


def test_a_batch_records_what_one_at_a_time_would(any_world: World, tmp_path: Path) -> None:
    """What a batch works out once (windows, freezes, overrides, approvals, chains, sequence
    counters) gives each deployment's intent exactly what the one-deployment functions
    give it: agents with and without an earlier bundle, one whose earlier bundle was
    declared lost, one with a confirmed override, one with two bundles in the batch."""
    world = any_world
    from hub.services.chain import chain_for, declare_lost
    from hub.services.windows import add_rule, confirm_override, policy_for, request_override

    ids = ["site-01", "site-02", "site-03", "site-04"]
    _enroll(world, ids)
    _queue(world)  # 1.0.0 for every agent: each has an earlier bundle
    first = export_agents(world.ctx("op"), "test", tmp_path / "spool", ids[:3])
    assert len(first.written) == 3 and not first.failed
    lost = next(b for b in first.written if b.agent_id == "site-02")
    declare_lost(world.ctx("op"), lost.deployment_id, "stick lost in transit")
    add_rule(world.ctx("admin"), "window", "sat 01:00-05:00 Europe/Berlin", environment="test")
    world.session.commit()
    queued = queue_deployment(world.ctx("op"), _approved(world, tmp_path, "1.0.1"), "test")
    overridden = next(d for d in queued if d.agent is not None
                      and d.agent.agent_id == "site-03")
    request_override(world.ctx("op"), overridden, "security fix")
    confirm_override(world.ctx("admin"), overridden)
    world.session.commit()
    queue_deployment(world.ctx("op"), _approved(world, tmp_path, "1.0.2"), "test",
                     agent_id="site-01")  # two in the batch
    world.session.commit()

    # live=False: outside its window a bundle is written (the agent holds it), as for media
    report = export_agents(world.ctx("op"), "test", tmp_path / "spool", ids, live=False)
    assert not report.failed, report.failed
    assert len(report.written) == 6  # site-04's 1.0.0 and all four 1.0.1, site-01's 1.0.2
    world.session.expire_all()
    deps = {b.deployment_id: world.session.get(Deployment, b.deployment_id)
            for b in report.written}
    policies = Counter()
    for dep_id, dep in deps.items():
        assert dep is not None and dep.state == "exported" and dep.export_intent
        intent = dep.export_intent
        assert dep.sequence == intent["sequence"] and dep.root_version is not None
        # the previous bundle and the lost decisions, as chain_for finds them now
        assert intent["chain"] == chain_for(world.session, dep, dep.root_version,
                                            dep.sequence).to_json(), dep_id
        policy = policy_for(world.session, dep, world.clock())
        assert intent["policy"] == (policy.to_json() if policy else None), dep_id
        policies["override" if policy and policy.override else "window"] += 1
    assert policies == Counter({"window": 5, "override": 1})
    # per agent: consecutive sequences, each bundle's previous the one before it
    by_agent: dict[str, list[int]] = {}
    for dep in world.session.scalars(select(Deployment).order_by(Deployment.sequence)):
        if dep.sequence is not None and dep.agent is not None:
            by_agent.setdefault(dep.agent.agent_id, []).append(dep.sequence)
    assert by_agent == {"site-01": [1, 2, 3], "site-02": [1, 2], "site-03": [1, 2],
                        "site-04": [1, 2]}
    site02 = next(d for d in deps.values() if d is not None and d.agent is not None
                  and d.agent.agent_id == "site-02")
    assert site02.export_intent is not None
    assert [x["bundle"]["bundle_id"] for x in site02.export_intent["chain"]["lost"]] == [
        lost.bundle_id]
    assert _counters(world) == {f"agent:{a}": n + 1 for a, n in
                                (("site-01", 3), ("site-02", 2), ("site-03", 2),
                                 ("site-04", 2))}
    assert verify_database(world.session, world.keys.hub).ok


def test_two_exports_into_one_spool_root_at_once_both_write(file_world: World,
                                                            tmp_path: Path) -> None:
    """The live server runs two exports at once into one spool root (its two export
    threads). Each has its own scratch directory there: one that finishes and removes its
    own must not remove the other's while that one is still writing. (They shared one named
    after the process, so the export that finished first removed it under the other: its
    bundle failed with FileNotFoundError and waited a minute for the retry — the 73 s
    straggler of the 1,000-agent burst, docs/benchmarks.md.)"""
    world = file_world
    _enroll(world, ["site-01", "site-02", "site-03", "site-04"])
    _queue(world)
    spool = tmp_path / "spool"
    writing = threading.Event()  # the second export is about to frame its payloads (spool)
    go_on = threading.Event()  # the first export is done
    real = export_service.prepare_payloads

    def held_write(*args: object, **kwargs: object) -> object:
        if threading.current_thread().name == "second":
            writing.set()
            assert go_on.wait(120)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    sessions = make_session_factory(world.session.get_bind())  # type: ignore[arg-type]
    reports: dict[str, export_service.ExportReport] = {}

    def second() -> None:
        with sessions() as session:
            ctx = ServiceContext(session, world.clock, get_user(session, "op"),
                                 world.keys.hub, world.releases_dir)
            reports["second"] = export_agents(ctx, "test", spool, ["site-03", "site-04"])

    export_service.prepare_payloads = held_write  # type: ignore[assignment]
    thread = threading.Thread(target=second, name="second")
    try:
        thread.start()
        assert writing.wait(120)
        reports["first"] = export_agents(world.ctx("op"), "test", spool,
                                         ["site-01", "site-02"])
        go_on.set()
        thread.join(120)
    finally:
        go_on.set()
        export_service.prepare_payloads = real
    assert not thread.is_alive()
    for name in ("first", "second"):
        assert not reports[name].failed, reports[name].failed
        assert len(reports[name].written) == 2
    world.session.expire_all()
    assert {d.state for d in world.session.scalars(select(Deployment))} == {"exported"}
    assert not [p.name for p in spool.iterdir() if p.name.startswith(".")]  # nothing left


def test_export_calls_frame_a_release_once_while_its_files_stay_the_same(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live server exports a rollout in many calls: the payload section framed by the
    first is used by the next ones (the same bytes), but not once the release's stored files
    changed on disk (touched: loaded and framed again), and a run that frames nothing makes
    no scratch directory."""
    _enroll(world, ["site-01", "site-02", "site-03"])
    _queue(world)
    spool = tmp_path / "spool"
    real = export_service.prepare_payloads
    framed: list[str] = []

    def counted(*args: object, **kwargs: object) -> object:
        framed.append("framed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export_service, "prepare_payloads", counted)
    made: list[Path] = []
    real_mkdir = Path.mkdir

    def seen_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        made.append(self)
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", seen_mkdir)
    first = export_agents(world.ctx("op"), "test", spool, ["site-01"])
    assert len(first.written) == 1 and framed == ["framed"]
    made.clear()
    second = export_agents(world.ctx("op"), "test", spool, ["site-02"])
    assert len(second.written) == 1 and framed == ["framed"]  # the first call's section
    assert not [p for p in made if p.name.startswith(export_service.SPOOL_PREFIX)]
    release = world.session.scalars(select(Release)).one()
    stored = Path(release.stored_path)
    one = next(p for p in stored.rglob("*") if p.is_file())
    os.utime(one, ns=(one.stat().st_atime_ns, one.stat().st_mtime_ns + 10**9))
    third = export_agents(world.ctx("op"), "test", spool, ["site-03"])
    assert len(third.written) == 1 and framed == ["framed", "framed"]  # loaded afresh
    sections = []
    for report in (first, second, third):
        (bundle,) = report.written
        data = bundle.paths[0].read_bytes()
        sections.append(data[-len(export_service._prepared[(release.stored_path,
                                                            release.content_hash)][1].data):])
        assert inspect_bundle(bundle.paths[0]).manifest.bundle_id == bundle.bundle_id
    assert sections[0] == sections[1] == sections[2]
    assert not [p.name for p in spool.iterdir() if p.name.startswith(".")]


class _Killed(BaseException):
    """Stands for the SIGKILL of a crash point (no except clause of the export catches it)."""


def _export_killed_after_renames(world: World, monkeypatch: pytest.MonkeyPatch,
                                 usb: Path) -> None:
    """Export the environment into ``usb``, killed the instant its bundles have their final
    names (``hub.export-renamed``), and roll the session back as the dead process's was."""

    def crash(point: str) -> None:
        if point == "hub.export-renamed":
            raise _Killed(point)

    monkeypatch.setattr(export_service, "crash_point", crash)
    with pytest.raises(_Killed):
        export_environment(world.ctx("op"), "test", usb)
    world.session.rollback()


def test_a_batch_offers_each_file_digest_and_resume_rereads_what_it_finds(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's bundles are made durable together (written under temporary names, fsynced
    and re-read in one pass, then renamed): each written bundle reports the SHA-256 and size
    of its whole file (kept in its intent for the live server's OFFER). Killed once they
    are under their final names, the next export records a bundle it finds only if it
    reads back whole: a damaged one is written again from the intent, the same bytes."""
    import hashlib

    from hub.services.export_claims import STALE_CLAIM

    ids = ["site-01", "site-02", "site-03"]
    _enroll(world, ids)
    _queue(world)
    usb = tmp_path / "usb"
    _export_killed_after_renames(world, monkeypatch, usb)
    files = sorted(usb.glob("*.tgb"))
    assert len(files) == 3 and not [p for p in usb.iterdir() if p.name.startswith(".")]
    original = {p.name: p.read_bytes() for p in files}
    # The killed process's claims (another host's token, old enough to be taken over).
    for dep in world.session.scalars(select(Deployment)):
        assert dep.state == "exporting"
        dep.claimed_by = "gone-host:1:1"
        dep.claimed_at = world.clock() - STALE_CLAIM * 2
    world.session.commit()
    damaged = bytearray(original[files[1].name])
    damaged[len(damaged) - 1500] ^= 0x01  # inside the last payload frame
    files[1].write_bytes(bytes(damaged))
    files[2].write_bytes(original[files[2].name][:4096])  # cut short

    monkeypatch.undo()
    report = export_environment(world.ctx("op"), "test", usb)
    assert not report.failed, report.failed
    assert len(report.written) == len(report.recovered) == 3
    assert {p.name: p.read_bytes() for p in usb.glob("*.tgb")} == original
    world.session.expire_all()
    for bundle in report.written:
        (path,) = bundle.paths
        data = path.read_bytes()
        assert bundle.sha256 == hashlib.sha256(data).hexdigest()
        assert bundle.size == len(data)
        dep = world.session.get(Deployment, bundle.deployment_id)
        assert dep is not None and dep.state == "exported" and dep.export_intent is not None
        assert dep.export_intent["file_sha256"] == bundle.sha256
        assert dep.export_intent["file_size"] == len(data)
    assert verify_database(world.session, world.keys.hub).ok


def test_resume_writes_again_a_bundle_found_whole_but_expired(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export killed once its bundles are under their final names, resumed after their
    validity ended: a bundle found whole there is not recorded as is (every agent would
    refuse it as expired and the deployment would wait for a result that never comes); it
    is written again with a fresh validity period, as one never written is."""
    from hub.services.export import DEFAULT_EXPIRY
    from hub.services.export_claims import STALE_CLAIM

    _enroll(world, ["site-01", "site-02"])
    _queue(world)
    usb = tmp_path / "usb"
    _export_killed_after_renames(world, monkeypatch, usb)
    original = {p.name: p.read_bytes() for p in usb.glob("*.tgb")}
    assert len(original) == 2
    world.clock.advance(DEFAULT_EXPIRY.total_seconds() + 3600)
    for dep in world.session.scalars(select(Deployment)):
        dep.claimed_by = "gone-host:1:1"
        dep.claimed_at = world.clock() - STALE_CLAIM * 2
    world.session.commit()

    monkeypatch.undo()
    report = export_environment(world.ctx("op"), "test", usb)
    assert not report.failed, report.failed
    assert len(report.written) == len(report.recovered) == 2
    now = int(world.clock().timestamp())
    world.session.expire_all()
    for bundle in report.written:
        (path,) = bundle.paths
        assert path.read_bytes() != original[path.name]
        dep = world.session.get(Deployment, bundle.deployment_id)
        assert dep is not None and dep.state == "exported" and dep.export_intent is not None
        assert dep.export_intent["expires"] > now
    assert verify_database(world.session, world.keys.hub).ok


@pytest.mark.parametrize("count", [1, 2])  # one export alone, and a batch (make_durable)
@pytest.mark.parametrize("fault", ["directory", "full"])
def test_a_bundle_the_media_cannot_hold_fails_named_and_the_next_export_writes_it_again(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int,
        fault: str) -> None:
    """The media's directory cannot be fsynced (EIO) once a bundle is under its final name:
    one export alone left the whole bundle on the media but reported it failed with a bare
    "OSError: [Errno 5] Input/output error". The media is full when the bundle is fsynced
    (ENOSPC, as a real full stick gives it at write or fsync): "OSError: [Errno 28] No
    space left on device", no file named. Now the bundle is removed, the reason names it
    (and for the directory, the directory and the cause), and the next export writes the
    same bundle (same sequence and bundle id; no sequence used twice, none skipped)."""
    import errno
    import os

    from bundle import writer as writer_mod

    ids = [f"site-{i:02d}" for i in range(1, count + 1)]
    _enroll(world, ids)
    _queue(world)
    usb = tmp_path / "usb"
    real_fsync = os.fsync

    def eio(directory: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(usb)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    if fault == "directory":
        monkeypatch.setattr(writer_mod, "fsync_dir", eio)
    else:
        monkeypatch.setattr(os, "fsync", full)
    report = export_agents(world.ctx("op"), "test", usb, ids)
    assert not report.written and len(report.failed) == count
    for _, reason in report.failed:
        if fault == "directory":
            assert "written and verified, but its directory" in reason
            assert "cannot be synced (Input/output error): removed" in reason
        else:
            assert reason.startswith("OSError: [Errno 28] No space left on device: ")
            assert f"{usb}/" in reason and reason.endswith(".tgb'")
    assert not list(usb.rglob("*.tgb"))
    world.session.expire_all()
    deps = world.session.scalars(select(Deployment).order_by(Deployment.id)).all()
    assert [(d.state, d.claimed_by) for d in deps] == [("exporting", None)] * count
    intended = [(d.sequence, d.bundle_id) for d in deps]
    assert all(seq is not None for seq, _ in intended)
    counters = _counters(world)
    monkeypatch.undo()
    again = export_agents(world.ctx("op"), "test", usb, ids)
    assert not again.failed and len(again.written) == count
    world.session.expire_all()
    deps = world.session.scalars(select(Deployment).order_by(Deployment.id)).all()
    assert [d.state for d in deps] == ["exported"] * count
    assert [(d.sequence, d.bundle_id) for d in deps] == intended
    assert _counters(world) == counters
    assert len(list(usb.rglob("*.tgb"))) == count
    assert verify_database(world.session, world.keys.hub).ok


def test_an_agent_directory_made_for_its_first_bundle_is_synced_in_its_parent(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first export to an agent makes ``<spool>/<agent>``: the bundle's directory is
    fsynced after the rename and so is the spool root that holds the new directory (without
    it, a file system with no journal can lose the directory, bundle and all, in a power cut
    while the hub records the bundle exported). The next export into the same directory
    syncs only that directory. If the parent cannot be synced the bundles are removed and
    fail named, with their claims released."""
    import errno

    from bundle import writer as writer_mod

    synced = _recorded_fsyncs(monkeypatch, writer_mod)
    ids = ["site-01", "site-02"]
    _enroll(world, ids)
    spool = tmp_path / "spool"
    _queue(world)
    report = export_agents(world.ctx("op"), "test", spool, ids)
    assert len(report.written) == 2 and not report.failed
    assert synced.count(spool) == 1
    assert sorted(p for p in synced if p != spool) == [spool / "site-01", spool / "site-02"]

    synced.clear()
    _queue(world, _version(tmp_path, "1.0.1"))
    report = export_agents(world.ctx("op"), "test", spool, ids)
    assert len(report.written) == 2
    assert spool not in synced and sorted(synced) == [spool / "site-01", spool / "site-02"]

    def parent_fails(directory: Path) -> None:
        if Path(directory) == spool:
            raise OSError(errno.EIO, "Input/output error")
        fsync_dir(directory)

    monkeypatch.setattr(writer_mod, "fsync_dir", parent_fails)
    _enroll(world, ["site-03"])
    before = sorted(spool.rglob("*.tgb"))
    _queue(world, _version(tmp_path, "1.0.2"))
    report = export_agents(world.ctx("op"), "test", spool, ["site-03"])
    assert not report.written and len(report.failed) == 1
    (_, reason) = report.failed[0]
    assert "the directory holding its new directory," in reason and str(spool) in reason
    assert sorted(spool.rglob("*.tgb")) == before


def test_the_spool_directories_of_agents_connecting_together_are_synced_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents connecting for the first time (a hub that just went live, 10,000 of them) had
    their push wait for one directory fsync after another, about 1 ms each on ext4: the new
    directories are fsynced in parallel (the file system commits them together), then the
    spool root once."""
    real = export_service.fsync_dir
    together = threading.Barrier(2, timeout=60)  # two agents' fsyncs under way at once
    synced: list[Path] = []

    def meeting(directory: Path) -> None:
        if Path(directory).parent.name == "spool":
            together.wait()
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(export_service, "fsync_dir", meeting)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    assert export_service.make_spool_dirs(spool, ["site-01", "site-02"]) == ["site-01",
                                                                               "site-02"]
    assert sorted(synced[:2]) == [spool / "site-01", spool / "site-02"]
    assert synced[2:] == [spool]
    assert all((spool / a / "sent").is_dir() for a in ("site-01", "site-02"))


def test_spool_directories_made_at_connect_are_synced_and_used_by_the_export(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live server makes a connecting agent's spool directory and its ``sent/`` ahead
    (make_spool_dirs): each new directory is fsynced, then the spool root once; existing
    ones are left with what they hold. The export then writes into it and, the directory
    being there already, syncs only that directory. A directory that cannot be synced is
    removed again with everything this call made, so the export makes it itself."""
    import errno

    from bundle import writer as writer_mod

    synced = _recorded_fsyncs(monkeypatch, export_service, writer_mod)
    spool = tmp_path / "data" / "spool"
    (spool / "site-02").mkdir(parents=True)
    (spool / "site-02" / "keep.tgb").write_bytes(b"x")
    assert export_service.make_spool_dirs(spool, ["site-01", "site-02"]) == ["site-01"]
    assert synced == [spool / "site-01", spool]
    assert (spool / "site-01" / "sent").is_dir()
    assert sorted(os.listdir(spool / "site-02")) == ["keep.tgb"]  # left as it was
    synced.clear()
    assert export_service.make_spool_dirs(spool, ["site-01", "site-02"]) == []
    assert synced == []
    fresh = tmp_path / "data" / "fresh"  # a spool root made now: its entry is synced too
    assert export_service.make_spool_dirs(fresh, ["site-05"]) == ["site-05"]
    assert synced == [fresh / "site-05", fresh, fresh.parent]
    synced.clear()

    _enroll(world, ["site-01"])
    _queue(world)
    report = export_agents(world.ctx("op"), "test", spool, ["site-01"])
    assert len(report.written) == 1 and not report.failed
    assert synced == [spool / "site-01"]  # not the spool root: the directory was durable
    assert [b.paths[0].parent for b in report.written] == [spool / "site-01"]

    def root_fails(directory: Path) -> None:
        if Path(directory) == spool:
            raise OSError(errno.EIO, "Input/output error")
        fsync_dir(directory)

    monkeypatch.setattr(export_service, "fsync_dir", root_fails)
    before = sorted(p.relative_to(spool) for p in spool.rglob("*"))
    with pytest.raises(OSError, match="Input/output error"):
        export_service.make_spool_dirs(spool, ["site-03", "site-04", "site-01"])
    assert sorted(p.relative_to(spool) for p in spool.rglob("*")) == before


def test_the_spool_root_is_looked_at_for_leftovers_once_every_few_seconds(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live spool root holds a directory per agent: listing it for every export call of a
    burst cost 6 ms a call at 10,000 agents. A killed export's scratch directory there is
    removed by the first call, one left later by the next call ROOT_CLEAN_SECONDS after
    that (per root and process), and an agent's own directory is still cleaned each call."""
    _enroll(world, ["site-01", "site-02", "site-03"])
    _queue(world)
    spool = tmp_path / "spool"
    spool.mkdir()
    looked = export_service._root_cleaned

    def leftover() -> Path:
        dead = spool / (export_service.SPOOL_PREFIX + "dead+1" + export_service.RUN_MARK + "x")
        dead.mkdir()
        os.utime(dead, (1, 1))  # older than any claim: a killed export's
        return dead

    first = leftover()
    report = export_agents(world.ctx("op"), "test", spool, ["site-01"])
    assert len(report.written) == 1 and first.name in report.cleaned
    assert not first.exists()
    second = leftover()
    # the last look just now, whatever this machine's speed (a clock that never moves on)
    monkeypatch.setitem(looked, str(spool), time.monotonic() + 3600)
    report = export_agents(world.ctx("op"), "test", spool, ["site-02"])
    assert len(report.written) == 1 and report.cleaned == [] and second.exists()
    looked[str(spool)] = time.monotonic() - export_service.ROOT_CLEAN_SECONDS - 1
    report = export_agents(world.ctx("op"), "test", spool, ["site-03"])
    assert len(report.written) == 1 and second.name in report.cleaned
    assert not second.exists()
