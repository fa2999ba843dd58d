"""An environment's ad-hoc policy (hub.services.adhoc_policy): set by an admin and audited;
it lets one-off runs of ``test`` go out without a second person and runs of ``prod`` with
one approval instead of two, while the normal release path (``queue_deployment`` without an
agent, any other product) keeps the environment's rule; a root that delegates approvals to
the site refuses a policy below its threshold when it is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, Environment, SequenceCounter
from hub.errors import (
    NotEnoughApprovalsError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services.adhoc import AdhocRun, create_adhoc_release, ship_adhoc
from hub.services.adhoc_policy import describe_policy, set_adhoc_policy
from hub.services.agents import enroll_agent
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment
from hub.services.environments import get_environment
from signing.keys import SigningKey
from tests.hub.conftest import World
from tests.hub.services.approval_helpers import signed, with_delegations
from tests.hub.services.test_deployments import approved, request


def _count(world: World, table: type) -> int:
    return world.session.scalar(select(func.count()).select_from(table)) or 0


def _events(world: World, action: str) -> list[dict[str, Any]]:
    """(actor and details) of each event ``action``, in order."""
    rows = world.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                 .order_by(AuditEvent.seq))
    return [{**json.loads(e.details), "actor": e.actor} for e in rows]


def _run(world: World, tmp_path: Path, env: str, agent: str, author: str = "admin") -> AdhocRun:
    enroll_agent(world.ctx("admin"), env, request(agent, agent))
    script = tmp_path / f"{agent}.sh"
    script.write_text("echo hi\n")
    return create_adhoc_release(world.ctx(author), agent,
                                {"name": "hi", "kind": "shell", "interpreter": "sh"}, script)


def test_no_second_person_in_test_yet_the_normal_path_keeps_its_rule(
        world: World, tmp_path: Path) -> None:
    set_adhoc_policy(world.ctx("admin"), "test", 0)
    made = _run(world, tmp_path, "test", "test-1")
    rel = made.release
    report = ship_adhoc(world.ctx("admin"), rel, "test-1", tmp_path / "usb").report
    assert report is not None and [b.agent_id for b in report.written] == ["test-1"]
    assert rel.state == "approved" and rel.approvals == []
    [event] = _events(world, "release.policy_approve")
    assert event["actor"] == "admin" and event["policy"] == "ad-hoc runs need no approval"
    [queued] = _events(world, "deployment.queue")
    assert queued["adhoc_rule"] == "0 approvals" and queued["approvers"] == []
    # The same release through the normal path: the environment's own rule (1 approval).
    deployments = _count(world, Deployment)
    with pytest.raises(NotEnoughApprovalsError, match="which requires 1 approval"):
        queue_deployment(world.ctx("op"), rel, "test")
    assert _count(world, Deployment) == deployments


def test_prod_needs_one_approval_for_a_run_and_two_for_a_release(
        world: World, tmp_path: Path, release_dir: object) -> None:
    set_adhoc_policy(world.ctx("admin"), "prod", 1)
    rel = _run(world, tmp_path, "prod", "prod-1").release
    with pytest.raises(NotEnoughApprovalsError, match="requires 1 approval, it has 0"):
        ship_adhoc(world.ctx("admin"), rel, "prod-1", None)
    assert _count(world, Deployment) == 0 and rel.state == "submitted"
    approve_release(world.ctx("appr1"), rel)
    shipped = ship_adhoc(world.ctx("op"), rel, "prod-1", None)
    assert shipped.report is None  # queued for the live server's push, nothing exported
    [dep] = world.session.scalars(select(Deployment)).all()
    assert shipped.deployment is dep
    assert dep.state == "queued" and dep.agent is not None and dep.agent.agent_id == "prod-1"
    assert set(world.session.scalars(select(SequenceCounter.next_sequence))) <= {1}
    # A normal release with one approval still waits for the second in prod.
    normal = approved(world, release_dir, "appr1")  # type: ignore[arg-type]
    with pytest.raises(NotEnoughApprovalsError, match="which requires 2 approvals"):
        queue_deployment(world.ctx("op"), normal, "prod")
    # And ship_adhoc takes ad-hoc runs only, never a normal release.
    with pytest.raises(ValidationError, match="is not an ad-hoc run"):
        ship_adhoc(world.ctx("op"), normal, "prod-1", None)
    assert _count(world, Deployment) == 1


def test_the_policy_is_an_admins_audited_and_bounded(world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        set_adhoc_policy(world.ctx("op"), "test", 0)
    for bad in (-1, 11):
        with pytest.raises(ValidationError, match=f"0..10 approvals, not {bad}"):
            set_adhoc_policy(world.ctx("admin"), "test", bad)
    env = get_environment(world.session, "test")
    assert env.adhoc_required_approvals is None and _events(world, "environment.adhoc_policy") == []
    assert describe_policy(env) == "ad-hoc runs follow the environment's rule (1 approval)"
    set_adhoc_policy(world.ctx("admin"), "test", 0)
    set_adhoc_policy(world.ctx("admin"), "test", None)
    first, second = _events(world, "environment.adhoc_policy")
    assert (first["from"], first["to"]) == (None, 0)
    assert (second["from"], second["to"]) == (0, None)
    assert second["rule"] == "ad-hoc runs follow the environment's rule (1 approval)"


def test_a_root_that_delegates_approvals_to_the_site_refuses_a_weaker_policy(
        world: World, tmp_path: Path) -> None:
    alice, bob = SigningKey.generate(), SigningKey.generate()
    world.keys.hub = with_delegations(
        world.keys, {"prod": signed(2, 1, {"appr1": (alice, "dba"), "appr2": (bob, "dba")})},
        {"appr1": alice, "appr2": bob})
    for weaker in (0, 1):
        with pytest.raises(ValidationError, match=(
                "environment prod: root version 1 delegates its approvals to the site \\(mode "
                f"signed, 2 approvals\\); its agents refuse a bundle with fewer, so an ad-hoc "
                f"policy of {weaker} approvals? is refused — set at least 2")):
            set_adhoc_policy(world.ctx("admin"), "prod", weaker)
    env = world.session.scalar(select(Environment).where(Environment.name == "prod"))
    assert env is not None and env.adhoc_required_approvals is None
    assert _events(world, "environment.adhoc_policy") == []
    set_adhoc_policy(world.ctx("admin"), "prod", 2)  # as strong as the root: accepted
    set_adhoc_policy(world.ctx("admin"), "test", 0)  # not delegated: the hub decides
    assert env.adhoc_required_approvals == 2


def test_a_release_of_its_own_cannot_take_the_adhoc_product(world: World,
                                                             tmp_path: Path) -> None:
    """A release directory naming product ``adhoc`` (many steps, a schedule.toml, …) would
    ship under the ad-hoc policy's 0 approvals with `tiangong run ship`: refused at create,
    nothing made; an ad-hoc run still creates its release there."""
    from hub.db import Product, Release
    from hub.services.releases import create_release

    set_adhoc_policy(world.ctx("admin"), "test", 0)
    _run(world, tmp_path, "test", "test-1")  # the product exists now
    src = tmp_path / "rel"
    src.mkdir()
    (src / "a.sh").write_text("echo a\n")
    (src / "release.toml").write_text(
        'format = 1\n\n[release]\nproduct = "adhoc"\nversion = "9.9.9"\n\n'
        '[[steps]]\nname = "a"\nkind = "shell"\nscript = "a.sh"\n')
    before = (_count(world, Release), _count(world, Product))
    with pytest.raises(ValidationError, match=r"release\.toml names product 'adhoc', which is "
                       "kept for one-off runs"):
        create_release(world.ctx("dev"), src, create_missing_product=True)
    assert (_count(world, Release), _count(world, Product)) == before


def test_a_run_approved_by_inheritance_is_not_shipped_on_those_approvals(
        world: World, tmp_path: Path) -> None:
    """An automatic rollback of an ad-hoc run inherits its approvals for that rollback only:
    `tiangong run ship` of it (to this or another agent) counts its own approvals."""
    set_adhoc_policy(world.ctx("admin"), "prod", 1)
    original = _run(world, tmp_path, "prod", "prod-1").release
    approve_release(world.ctx("appr1"), original)
    rollback = _run(world, tmp_path, "prod", "prod-2").release
    rollback.approvals_from = original  # as hub.services.rollback records it
    rollback.state = "approved"
    world.session.flush()
    with pytest.raises(NotEnoughApprovalsError, match="requires 1 approval, it has 0"):
        ship_adhoc(world.ctx("op"), rollback, "prod-2", None)
    assert _count(world, Deployment) == 0
