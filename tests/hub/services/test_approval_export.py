"""Export and the root's approval delegations: the hub puts every stored approval envelope
covering the target environment into the bundle (plus, in mode ``hub``, an attestation
signed by its approval key), refuses to export — with the agent's own message, no sequence
used, audited — when a site would refuse, and a real agent (in-process) runs what it
exports."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from agent.inbox import ReadyItem
from agent.service import Agent
from bundle.inspect import inspect
from hub.db import AuditEvent, Deployment, Release, SequenceCounter
from hub.services.approvals import approval_request, approve_release, approve_with_signature
from hub.services.approvers import add_group
from hub.services.deployments import queue_deployment
from hub.services.exchange import export_environment
from hub.services.export import utc_text
from hub.services.releases import create_release, submit_release
from signing.approvals import AttestationDocument, peek_approval, sign_approval
from signing.delegations import Delegation
from signing.keys import SigningKey
from tests.hub.conftest import World
from tests.hub.services.approval_helpers import register, signed, with_delegations
from tests.hub.services.test_exchange import HELLO, _agent


def _approve_and_queue(world: World, rel: Release, key: SigningKey,
                       expires: Callable[[int], int]) -> AttestationDocument:
    """appr1 approves ``rel`` for environment test with a signature that ends at
    ``expires(approval time)``, and the release is queued there (committed); the signed
    document."""
    request = approval_request(world.ctx("appr1"), rel, environment="test")
    document = dataclasses.replace(request.document, expires=expires(request.document.at))
    approve_with_signature(world.ctx("appr1"), rel, sign_approval(document, key))
    queue_deployment(world.ctx("op"), rel, "test")
    world.session.commit()
    return document


def _release(world: World) -> Release:
    rel = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    submit_release(world.ctx("dev"), rel)
    world.session.commit()
    return rel


def _sign(world: World, rel: Release, who: str, key: SigningKey) -> None:
    request = approval_request(world.ctx(who), rel, environment="test")
    approve_with_signature(world.ctx(who), rel, sign_approval(request.document, key))
    world.session.commit()


def _counters(world: World) -> list[tuple[str, int]]:
    world.session.expire_all()
    return [(c.target, c.next_sequence) for c in world.session.scalars(
        select(SequenceCounter).order_by(SequenceCounter.target))]


def _failed_events(world: World) -> list[str]:
    rows = world.session.scalars(select(AuditEvent.details).where(
        AuditEvent.action == "bundle.export_failed"))
    return [json.loads(r)["reason"] for r in rows]


def _run(agent: Agent, usb: Path) -> str:
    (bundle,) = sorted(usb.glob("*.tgb"))
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    done = agent.process(ReadyItem(bundle.name, (dest,), dest.stat().st_size, "single", 0.0))
    return f"{done.status}: {done.summary}"


def test_two_signed_approvals_travel_and_one_is_refused_before_export(
    world: World, tmp_path: Path
) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"test": signed(2, 2, {"appr1": (alice, "dba"), "appr2": (bob, "ops")})},
        {"appr1": alice, "appr2": bob})
    agent = _agent(world, tmp_path)
    register(world, "appr1", alice)
    register(world, "appr2", bob)
    rel = _release(world)
    _sign(world, rel, "appr1", alice)
    queue_deployment(world.ctx("op"), rel, "test")  # the hub's own rule: 1 approval
    world.session.commit()
    usb = tmp_path / "usb"
    counters = _counters(world)
    report = export_environment(world.ctx("op"), "test", usb)
    # refused with the agent's message; no sequence used; nothing on the media; audited
    assert report.written == [] and len(report.failed) == 1
    reason = report.failed[0][1]
    assert ("environment test needs 2 approvals from 2 groups; found 1 valid "
            "(appr1/dba)") in reason
    assert _counters(world) == counters
    assert world.session.scalar(select(Deployment.state)) == "queued"
    assert not list(usb.glob("*.tgb"))
    assert any("found 1 valid (appr1/dba)" in r for r in _failed_events(world))
    # bob signs too: the bundle carries both envelopes and the agent runs it
    _sign(world, rel, "appr2", bob)
    report = export_environment(world.ctx("op"), "test", usb)
    assert len(report.written) == 1 and not report.failed
    (bundle,) = report.written[0].paths
    manifest = inspect(bundle).manifest
    assert len(manifest.approvals) == 2
    assert report.written[0].sequence == dict(counters).get("agent:site-01", 1)
    assert _run(agent, usb).startswith("succeeded"), _run
    agent.close()


def test_hub_attested_mode_signs_an_attestation(world: World, tmp_path: Path) -> None:
    approval_key = SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"*": Delegation("hub", 1, 1, {})}, {}, approval_key=approval_key)
    agent = _agent(world, tmp_path)
    add_group(world.ctx("admin"), "appr1", "dba")
    rel = _release(world)
    approve_release(world.ctx("appr1"), rel, comment="looks right")
    queue_deployment(world.ctx("op"), rel, "test")
    world.session.commit()
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert len(report.written) == 1, report.failed
    (bundle,) = report.written[0].paths
    (envelope,) = inspect(bundle).manifest.approvals
    _, doc = peek_approval(envelope)
    assert isinstance(doc, AttestationDocument)
    assert [(a.name, a.group, a.comment) for a in doc.approvers] == [
        ("appr1", "dba", "looks right")]
    assert doc.environments == ("test",) and doc.content_hash == rel.content_hash
    assert _run(agent, tmp_path / "usb").startswith("succeeded")
    agent.close()


@pytest.mark.parametrize("without", ["approval key", "a second group"])
def test_hub_attested_mode_refusals(world: World, tmp_path: Path, without: str) -> None:
    approval_key = SigningKey.generate()
    delegation = Delegation("hub", 1, 1 if without == "approval key" else 2, {})
    if without == "a second group":
        delegation = Delegation("hub", 2, 2, {})
    world.keys.hub = with_delegations(
        world.keys, {"test": delegation}, {}, approval_key=approval_key)
    if without == "approval key":
        from dataclasses import replace

        world.keys.hub = replace(world.keys.hub, approval_key=None)
    for who in ("appr1", "appr2"):
        add_group(world.ctx("admin"), who, "dba")
    rel = _release(world)
    approve_release(world.ctx("appr1"), rel)
    approve_release(world.ctx("appr2"), rel)
    queue_deployment(world.ctx("op"), rel, "test")
    world.session.commit()
    counters = _counters(world)
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert report.written == [] and len(report.failed) == 1
    expected = {"approval key": "hub keys approval-key",
                "a second group": "needs 2 approvals from 2 groups; found 2 valid"}[without]
    assert expected in report.failed[0][1]
    assert _counters(world) == counters


def test_a_rollback_approved_by_inheritance_carries_an_attestation_of_the_original(
        world: World, tmp_path: Path) -> None:
    """Mode ``hub``: the bundle of a rollback release approved by inheritance carries the
    hub's attestation of the ORIGINAL release (its approvers, its content hash) and none of
    the rollback's own (nobody approved it); the check before export passes as a site's
    inherited check would."""
    from hub.services.approval_export import bundle_approvals
    from hub.services.environments import get_environment
    from tests.hub.conftest import write_undoable_release

    approval_key = SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"*": Delegation("hub", 1, 1, {})}, {}, approval_key=approval_key)
    add_group(world.ctx("admin"), "appr1", "dba")
    original = create_release(world.ctx("dev"), write_undoable_release(tmp_path / "a"),
                              create_missing_product=True)
    submit_release(world.ctx("dev"), original)
    approve_release(world.ctx("appr1"), original)
    rollback = create_release(world.ctx("dev"), write_undoable_release(
        tmp_path / "b", version="2.0.0-rollback-1"))
    rollback.approvals_from = original
    rollback.state = "approved"
    world.session.flush()
    env = get_environment(world.session, "test")
    (envelope,) = bundle_approvals(world.ctx("op"), rollback, env, created=1_900_000_000,
                                   expires=1_900_086_400)
    _, doc = peek_approval(envelope)
    assert isinstance(doc, AttestationDocument)
    assert (doc.version, doc.content_hash) == ("2.0.0", original.content_hash)
    assert [a.name for a in doc.approvers] == ["appr1"]


def test_a_bundle_never_outlives_the_approvals_it_carries(world: World, tmp_path: Path) -> None:
    """An approval signed for 2 days (`keys approve` gives 7 by default), a bundle valid for
    14 (the export's default): a stick that reached the site on day 3 was refused there for
    an expired approval, although the hub had said the site would accept it. The bundle
    expires when its approvals stop meeting the site's rule, so the site says the plain
    "expired" — and a bundle that arrives in time runs."""

    alice = SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"test": signed(1, 1, {"appr1": (alice, "dba")})}, {"appr1": alice})
    agent = _agent(world, tmp_path)
    register(world, "appr1", alice)
    rel = _release(world)
    short = _approve_and_queue(world, rel, alice, lambda at: at + 2 * 86400)
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert len(report.written) == 1, report.failed
    manifest = inspect(report.written[0].paths[0]).manifest
    assert manifest is not None
    assert manifest.expires <= short.expires < manifest.created + 14 * 86400
    assert manifest.expires >= short.expires - 1
    assert report.capped == [(report.written[0].deployment_id, manifest.expires)]
    assert report.capped_lines("--expires 14d") == [  # what `hub export` prints
        f"deployment {report.written[0].deployment_id}: its bundle expires "
        f"{utc_text(manifest.expires)}, before --expires 14d: its release's approvals stop "
        "counting then"]
    assert _run(agent, tmp_path / "usb").startswith("succeeded")
    agent.close()


def test_a_bundle_cut_short_by_its_approvals_is_reported_and_refused_under_an_hour(
        world: World, tmp_path: Path) -> None:
    """The cut is not silent: the report names each bundle whose approvals end before the
    asked expiry, with that expiry. An approval ending in 30 minutes would give a bundle
    that expires on the way to the site: refused (the message names the release, the time
    and the minimum), nothing written, the deployment stays queued, no sequence used."""

    alice = SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"test": signed(1, 1, {"appr1": (alice, "dba")})}, {"appr1": alice})
    _agent(world, tmp_path).close()
    register(world, "appr1", alice)
    rel = _release(world)
    _approve_and_queue(world, rel, alice, lambda at: int(world.clock().timestamp()) + 1800)
    usb = tmp_path / "usb"
    report = export_environment(world.ctx("op"), "test", usb)
    assert not report.written and not report.capped
    ((dep_id, reason),) = report.failed
    assert "stop counting at" in reason and "minimum of 60 min" in reason, reason
    assert not list(usb.glob("*.tgb"))
    world.session.expire_all()
    dep = world.session.get(Deployment, dep_id)
    assert dep is not None and dep.state == "queued" and dep.sequence is None
    assert dep.claimed_by is None

    # Asked for 20 minutes: the approval's 30 are enough, nothing is cut.
    report = export_environment(world.ctx("op"), "test", usb, expires_in=timedelta(minutes=20))
    assert len(report.written) == 1 and not report.capped, report.failed


def test_a_resumed_export_past_its_expiry_carries_the_approvals_that_count_now(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export killed after its bundle reached the media, resumed once that bundle (and
    the approval it carried) expired: the bundle written again took a fresh validity but the
    intent's old approval envelopes, expired — every site refused it for an expired
    approval. Now the approvals are checked again as for a new export: with none that
    counts it fails (claim released, nothing written); once one is given, it is carried."""

    from hub.services import export as export_service
    from hub.services.export_claims import STALE_CLAIM

    class Killed(BaseException):
        pass

    def crash(point: str) -> None:
        if point == "hub.export-renamed":
            raise Killed(point)

    alice, bob = SigningKey.generate(), SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"test": signed(1, 1, {"appr1": (alice, "dba"), "appr2": (bob, "dba")})},
        {"appr1": alice, "appr2": bob})
    _agent(world, tmp_path).close()
    register(world, "appr1", alice)
    register(world, "appr2", bob)
    rel = _release(world)
    _approve_and_queue(world, rel, alice, lambda at: at + 2 * 86400)
    usb = tmp_path / "usb"
    monkeypatch.setattr(export_service, "crash_point", crash)
    with pytest.raises(Killed):
        export_environment(world.ctx("op"), "test", usb)
    monkeypatch.undo()
    world.session.rollback()
    (old,) = usb.glob("*.tgb")
    before = old.read_bytes()

    def stale() -> None:
        for dep in world.session.scalars(select(Deployment)):
            dep.claimed_by = "gone-host:1:1"
            dep.claimed_at = world.clock() - STALE_CLAIM * 2
        world.session.commit()

    world.clock.advance(3 * 86400)
    stale()
    report = export_environment(world.ctx("op"), "test", usb)
    assert not report.written and len(report.failed) == 1, report.written
    assert old.read_bytes() == before  # nothing written
    world.session.expire_all()
    (dep,) = world.session.scalars(select(Deployment)).all()
    assert dep.state == "exporting" and dep.claimed_by is None
    assert dep.sequence == 1

    # A new approval: the next export completes it, carrying that one.
    _sign(world, rel, "appr2", bob)
    report = export_environment(world.ctx("op"), "test", usb)
    assert len(report.written) == 1 and report.recovered == [dep.id], report.failed
    manifest = inspect(report.written[0].paths[0]).manifest
    assert manifest is not None and manifest.sequence == 1
    now = int(world.clock().timestamp())
    assert manifest.expires > now + 86400
    assert max(peek_approval(e)[1].expires for e in manifest.approvals) > manifest.expires
