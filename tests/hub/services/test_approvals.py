"""Approvals: four eyes, environment scopes, rejection, manifest form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import Approval, Release
from hub.errors import (
    ConflictError,
    InvalidStateError,
    PermissionDeniedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services.approvals import (
    approvals_for_manifest,
    approve_release,
    distinct_approvers,
    reject_release,
)
from hub.services.environments import get_environment
from hub.services.releases import create_product, create_release, submit_release
from hub.services.users import grant_role
from tests.hub.conftest import World


def submitted(world: World, release_dir: Callable[..., Path], author: str = "dev") -> Release:
    ctx = world.ctx(author)
    if author == "dev":
        create_product(ctx, "hello")
    rel = create_release(ctx, release_dir())
    submit_release(ctx, rel)
    return rel


def _approvals(world: World) -> int:
    return world.session.scalar(select(func.count()).select_from(Approval)) or 0


def test_author_never_approves_own_release(world: World, release_dir: Callable[..., Path]) -> None:
    grant_role(world.ctx("admin"), "dev", "approver")
    rel = submitted(world, release_dir)
    with pytest.raises(SeparationOfDutiesError, match="dev is its author"):
        approve_release(world.ctx("dev"), rel)
    with pytest.raises(SeparationOfDutiesError):
        reject_release(world.ctx("dev"), rel, comment="no")
    assert rel.state == "submitted"
    assert _approvals(world) == 0


def test_admin_author_is_bound_by_four_eyes_too(
    world: World, release_dir: Callable[..., Path]
) -> None:
    admin = world.ctx("admin")
    create_product(admin, "hello")
    rel = create_release(admin, release_dir())
    submit_release(admin, rel)
    with pytest.raises(SeparationOfDutiesError):
        approve_release(admin, rel)


def test_approve_flow(world: World, release_dir: Callable[..., Path]) -> None:
    rel = submitted(world, release_dir)
    world.clock.advance(60)
    approve_release(world.ctx("appr1"), rel, comment="looks good")
    assert rel.state == "approved"
    approve_release(world.ctx("appr2"), rel)
    with pytest.raises(ConflictError, match="already approved"):
        approve_release(world.ctx("appr1"), rel)
    prod = get_environment(world.session, "prod")
    assert distinct_approvers(rel, prod) == {"appr1", "appr2"}
    manifest = approvals_for_manifest(rel, prod)
    assert manifest == [
        {"by": "appr1", "at": "2026-11-23T09:01:00.000000Z", "comment": "looks good"},
        {"by": "appr2", "at": "2026-11-23T09:01:00.000000Z", "comment": ""},
    ]


def test_environment_scoped_approver(world: World, release_dir: Callable[..., Path]) -> None:
    rel = submitted(world, release_dir)
    with pytest.raises(PermissionDeniedError):
        approve_release(world.ctx("appr-prod"), rel)  # global approval needs a global grant
    with pytest.raises(PermissionDeniedError):
        approve_release(world.ctx("appr-prod"), rel, environment="test")
    approve_release(world.ctx("appr-prod"), rel, environment="prod")
    assert distinct_approvers(rel, get_environment(world.session, "prod")) == {"appr-prod"}
    assert distinct_approvers(rel, get_environment(world.session, "test")) == set()


@pytest.mark.parametrize("who", ["dev2", "op", "aud", "view"])
def test_non_approvers_refused(world: World, release_dir: Callable[..., Path], who: str) -> None:
    rel = submitted(world, release_dir)
    with pytest.raises(PermissionDeniedError):
        approve_release(world.ctx(who), rel)
    assert _approvals(world) == 0


def test_draft_and_rejected_cannot_be_approved(
    world: World, release_dir: Callable[..., Path]
) -> None:
    dev = world.ctx("dev")
    create_product(dev, "hello")
    rel = create_release(dev, release_dir())
    with pytest.raises(InvalidStateError, match="draft"):
        approve_release(world.ctx("appr1"), rel)
    submit_release(dev, rel)
    with pytest.raises(ValidationError, match="needs a comment"):
        reject_release(world.ctx("appr1"), rel, comment="  ")
    reject_release(world.ctx("appr1"), rel, comment="breaks billing")
    assert rel.state == "rejected"
    with pytest.raises(InvalidStateError, match="rejected"):
        approve_release(world.ctx("appr2"), rel)
    assert approvals_for_manifest(rel) == []
