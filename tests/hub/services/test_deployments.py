"""Deployments: queueing rules, one per agent, state transitions, sequences."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import Deployment, Release
from hub.errors import (
    ConflictError,
    InvalidStateError,
    NotEnoughApprovalsError,
    NotFoundError,
    PermissionDeniedError,
)
from hub.services.agents import EnrollmentRequest, agent_target, enroll_agent, revoke_agent
from hub.services.approvals import approve_release
from hub.services.deployments import (
    TRANSITIONS,
    allocate_sequence,
    deployment_target,
    mark_exported,
    pending_exports,
    queue_deployment,
    transition,
)
from hub.services.releases import create_product, create_release, submit_release
from signing.keys import BoxKeyPair, SigningKey
from tests.hub.conftest import World


def request(host: str, agent_id: str | None = None) -> EnrollmentRequest:
    return EnrollmentRequest(
        hostname=host,
        ed25519_public=SigningKey.generate().public.raw.hex(),
        x25519_public=BoxKeyPair.generate().public.raw.hex(),
        agent_id=agent_id,
    )


def approved(world: World, release_dir: Callable[..., Path], *approvers: str) -> Release:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    rel = create_release(dev, release_dir())
    submit_release(dev, rel)
    for who in approvers:
        approve_release(world.ctx(who), rel)
    return rel


def two_agents_and_a_revoked_one(world: World, release_dir: Callable[..., Path]) -> Release:
    """agent-1 and agent-2 enrolled in ``test``, agent-3 revoked; an approved release."""
    op = world.ctx("op")
    enroll_agent(op, "test", request("a1", "agent-1"))
    enroll_agent(op, "test", request("a2", "agent-2"))
    enroll_agent(op, "test", request("a3", "agent-3"))
    revoke_agent(op, "agent-3")
    return approved(world, release_dir, "appr1")


def _deployments(world: World) -> int:
    return world.session.scalar(select(func.count()).select_from(Deployment)) or 0


def test_queue_without_approval_refused(world: World, release_dir: Callable[..., Path]) -> None:
    rel = approved(world, release_dir)
    with pytest.raises(InvalidStateError, match="only an approved release"):
        queue_deployment(world.ctx("op"), rel, "test")
    assert _deployments(world) == 0


def test_too_few_approvers_for_environment(world: World, release_dir: Callable[..., Path]) -> None:
    rel = approved(world, release_dir, "appr1")
    with pytest.raises(NotEnoughApprovalsError, match=r"1 distinct approval.*requires 2"):
        queue_deployment(world.ctx("op"), rel, "prod")
    assert _deployments(world) == 0
    assert len(queue_deployment(world.ctx("op"), rel, "test")) == 1
    approve_release(world.ctx("appr2"), rel)
    assert len(queue_deployment(world.ctx("op"), rel, "prod")) == 1


def test_author_approval_never_counts(world: World, release_dir: Callable[..., Path]) -> None:
    rel = approved(world, release_dir, "appr1")
    # An approval row by the author (inserted behind the services' back) does not count.
    from hub.db import Approval

    world.session.add(
        Approval(release=rel, approver=world.user("dev"), decision="approve", at=world.clock())
    )
    world.session.flush()
    with pytest.raises(NotEnoughApprovalsError):
        queue_deployment(world.ctx("op"), rel, "prod")


def test_queue_permission(world: World, release_dir: Callable[..., Path]) -> None:
    rel = approved(world, release_dir, "appr1")
    for who in ("dev", "appr1", "aud", "view"):
        with pytest.raises(PermissionDeniedError):
            queue_deployment(world.ctx(who), rel, "test")
    assert _deployments(world) == 0


def test_one_deployment_per_enrolled_agent(world: World, release_dir: Callable[..., Path]) -> None:
    op = world.ctx("op")
    rel = two_agents_and_a_revoked_one(world, release_dir)
    deps = queue_deployment(op, rel, "test")
    assert [d.agent.agent_id for d in deps if d.agent] == ["agent-1", "agent-2"]
    assert [deployment_target(d) for d in deps] == ["agent:agent-1", "agent:agent-2"]
    with pytest.raises(ConflictError, match="already queued"):
        queue_deployment(op, rel, "test")
    assert [d.id for d in pending_exports(world.session, "test", "agent-2")] == [deps[1].id]


def test_queue_for_one_agent(world: World, release_dir: Callable[..., Path]) -> None:
    """An ad-hoc run (``tiangong run``) queues for its one agent, never a revoked or unknown
    one; a refusal queues nothing."""
    op = world.ctx("op")
    rel = two_agents_and_a_revoked_one(world, release_dir)
    for who in ("agent-3", "agent-9"):
        with pytest.raises(NotFoundError, match=f"agent '{who}' is not an enrolled agent of "
                                                "environment test"):
            queue_deployment(op, rel, "test", agent_id=who)
        assert _deployments(world) == 0
    (dep,) = queue_deployment(op, rel, "test", agent_id="agent-2")
    assert dep.agent is not None and dep.agent.agent_id == "agent-2"
    assert _deployments(world) == 1


def test_environment_without_agents_gets_one_deployment(
    world: World, release_dir: Callable[..., Path]
) -> None:
    rel = approved(world, release_dir, "appr1")
    (dep,) = queue_deployment(world.ctx("op"), rel, "test")
    assert dep.agent is None and deployment_target(dep) == "env:test"


def test_state_machine(world: World, release_dir: Callable[..., Path]) -> None:
    op = world.ctx("op")
    rel = approved(world, release_dir, "appr1")
    (dep,) = queue_deployment(op, rel, "test")
    with pytest.raises(InvalidStateError, match="queued and cannot become succeeded"):
        transition(op, dep, "succeeded")
    root_version, seq = allocate_sequence(world.session, deployment_target(dep))
    mark_exported(
        op,
        dep,
        bundle_id="b-1",
        bundle_path="/media/x.tgb",
        sequence=seq,
        root_version=root_version,
    )
    assert dep.state == "exported" and dep.exported_at == world.clock()
    with pytest.raises(InvalidStateError):
        mark_exported(op, dep, bundle_id="b-2", bundle_path="", sequence=2, root_version=1)
    transition(op, dep, "running")
    transition(op, dep, "succeeded", summary={"steps": 1, "failed": 0})
    assert dep.result_summary == {"steps": 1, "failed": 0}
    # Only a retry at the site (its result) moves a finished deployment on.
    for state in set(TRANSITIONS) - {"retried"}:
        with pytest.raises(InvalidStateError, match=r"allowed: retried$"):
            transition(op, dep, state)
    with pytest.raises(PermissionDeniedError):
        transition(world.ctx("dev"), dep, "failed")


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (["exported", "running"], "delivered"),
        (["delivered", "running"], "rejected"),
        (["exported", "failed"], "running"),
        (["delivered", "interrupted"], "running"),
    ],
)
def test_invalid_transitions(
    world: World, release_dir: Callable[..., Path], path: list[str], bad: str
) -> None:
    op = world.ctx("op")
    rel = approved(world, release_dir, "appr1")
    (dep,) = queue_deployment(op, rel, "test")
    for state in path:
        transition(op, dep, state)
    with pytest.raises(InvalidStateError):
        transition(op, dep, bad)
    assert dep.state == path[-1]


def test_sequences_are_per_target_and_increase(world: World) -> None:
    op = world.ctx("op")
    enroll_agent(op, "test", request("a1", "agent-1"))
    target = agent_target("agent-1")
    assert [allocate_sequence(world.session, target)[1] for _ in range(3)] == [1, 2, 3]
    assert allocate_sequence(world.session, "env:prod") == (1, 1)
    assert allocate_sequence(world.session, "env:prod") == (1, 2)
