"""Approval rules at the hub: how many, from which groups, from how many groups, per
environment and per channel; queueing refuses a release that does not meet them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import ApprovalRule, AuditEvent, Deployment, Release
from hub.errors import (
    ConflictError,
    NotEnoughApprovalsError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services.approval_rules import (
    check_rule,
    clear_channel_rule,
    max_distinct_groups,
    rule_for,
    rules_of,
    set_channel_rule,
    set_environment_rule,
)
from hub.services.approvals import approve_release
from hub.services.approvers import add_group, remove_group, set_groups
from hub.services.channels import add_channel
from hub.services.deployments import queue_deployment
from hub.services.environments import get_environment
from hub.services.releases import create_product, create_release, submit_release
from hub.services.users import create_user, grant_role
from tests.hub.conftest import World


def _submitted(world: World, release_dir: Callable[..., Path]) -> Release:
    ctx = world.ctx("dev")
    create_product(ctx, "hello")
    rel = create_release(ctx, release_dir())
    submit_release(ctx, rel)
    return rel


def _people(world: World, groups: dict[str, tuple[str, ...]]) -> None:
    admin = world.ctx("admin")
    for name, names in groups.items():
        if name not in ("appr1", "appr2", "dev"):
            create_user(admin, name)
            grant_role(admin, name, "approver")
        for g in names:
            add_group(admin, name, g)
    world.session.commit()


def _events(world: World, action: str) -> int:
    return world.session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
    ) or 0


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([], 0),
        ([["dba"]], 1),
        ([["dba"], ["dba"]], 1),
        ([["dba", "ops"], ["dba"]], 2),  # needs the matching: the first stands for ops
        ([["a", "b"], ["a", "b"], ["a", "b"]], 2),
        ([[], ["x"]], 1),
    ],
)
def test_max_distinct_groups(members: list[list[str]], expected: int) -> None:
    assert max_distinct_groups(members) == expected


def test_two_groups_rule_needs_approvers_from_two_groups(
    world: World, release_dir: Callable[..., Path]
) -> None:
    _people(world, {"appr1": ("dba",), "appr2": ("dba",), "carol": ("ops",)})
    set_environment_rule(world.ctx("admin"), "prod", required=2, min_groups=2)
    rel = _submitted(world, release_dir)
    prod = get_environment(world.session, "prod")
    approve_release(world.ctx("appr1"), rel)
    approve_release(world.ctx("appr2"), rel)
    check = check_rule(rel, prod)
    assert not check.met
    assert check.summary() == (
        "environment prod needs 2 approvals from 2 groups; found 2 (appr1/dba, appr2/dba) "
        "from 1 group"
    )
    with pytest.raises(NotEnoughApprovalsError, match="from 2 groups; found 2"):
        queue_deployment(world.ctx("op"), rel, "prod")
    assert world.session.scalar(select(func.count()).select_from(Deployment)) == 0
    approve_release(world.ctx("carol"), rel)
    assert check_rule(rel, prod).met
    assert len(queue_deployment(world.ctx("op"), rel, "prod")) == 1


def test_only_listed_groups_count_and_author_never(
    world: World, release_dir: Callable[..., Path]
) -> None:
    _people(world, {"appr1": ("dba",), "appr2": ("web",), "dev": ("dba",)})
    grant_role(world.ctx("admin"), "dev", "approver")
    set_environment_rule(world.ctx("admin"), "test", required=1, groups=["dba", "ops"])
    rel = _submitted(world, release_dir)
    test = get_environment(world.session, "test")
    approve_release(world.ctx("appr2"), rel)
    check = check_rule(rel, test)
    assert not check.met
    assert check.summary() == (
        "environment test needs 1 approval (from dba, ops); found 0 (none); "
        "not counted: appr2: not in group dba or ops"
    )
    # a group change takes effect at once, and is audited
    set_groups(world.ctx("admin"), "appr2", ["ops"])
    assert check_rule(rel, test).met
    assert _events(world, "user.group_add") == 4 and _events(world, "user.group_remove") == 1


def test_channel_rule_replaces_the_environment_rule(
    world: World, release_dir: Callable[..., Path]
) -> None:
    admin = world.ctx("admin")
    set_channel_rule(admin, "test", "stable", required=2)
    rel = _submitted(world, release_dir)
    test = get_environment(world.session, "test")
    approve_release(world.ctx("appr1"), rel)
    assert check_rule(rel, test).met
    assert not check_rule(rel, test, channel="stable").met
    assert check_rule(rel, test, channel="canary").met  # no rule for it: the environment's
    assert [r.to_json() for r in rules_of(admin, "test")] == [
        {"environment": "test", "channel": None, "required": 1, "groups": [], "min_groups": 1},
        {"environment": "test", "channel": "stable", "required": 2, "groups": [],
         "min_groups": 1},
    ]
    clear_channel_rule(admin, "test", "stable")
    assert check_rule(rel, test, channel="stable").met
    assert _events(world, "environment.approval_rule") == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"required": 0}, "required approvals must be 1..10, not 0"),
        ({"required": 11}, "required approvals must be 1..10, not 11"),
        ({"required": 2, "min_groups": 3}, "min groups must be 1..2"),
        ({"required": 2, "min_groups": 2, "groups": ["dba"]},
         "only 1 group\\(s\\) count \\(dba\\)"),
        ({"required": 1, "groups": ["Bad Name"]}, "group name 'Bad Name'"),
    ],
)
def test_bad_rules_are_refused_and_change_nothing(
    world: World, kwargs: dict[str, object], message: str
) -> None:
    before = rule_for(get_environment(world.session, "prod"))
    with pytest.raises(ValidationError, match=message):
        set_environment_rule(world.ctx("admin"), "prod", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=message):
        set_channel_rule(world.ctx("admin"), "prod", "stable", **kwargs)  # type: ignore[arg-type]
    world.session.rollback()
    assert rule_for(get_environment(world.session, "prod")) == before
    assert world.session.scalar(select(func.count()).select_from(ApprovalRule)) == 0
    assert _events(world, "environment.approval_rule") == 0


def test_only_admins_change_rules_and_groups(world: World) -> None:
    with pytest.raises(PermissionDeniedError):
        set_environment_rule(world.ctx("appr1"), "prod", required=1)
    with pytest.raises(PermissionDeniedError):
        add_group(world.ctx("appr1"), "appr1", "dba")
    with pytest.raises(NotFoundError, match="not in group 'dba'"):
        remove_group(world.ctx("admin"), "appr1", "dba")
    add_group(world.ctx("admin"), "appr1", "dba")
    with pytest.raises(ConflictError, match="already in group dba"):
        add_group(world.ctx("admin"), "appr1", "dba")
    assert world.user("appr1").group_names == ["dba"]
    assert rule_for(get_environment(world.session, "prod")).required == 2


def test_required_approvals_cannot_drop_below_min_groups(world: World) -> None:
    from hub.services.environments import set_required_approvals

    set_environment_rule(world.ctx("admin"), "prod", required=2, min_groups=2)
    world.session.commit()
    before = (rule_for(get_environment(world.session, "prod")),
              _events(world, "environment.required_approvals"))
    with pytest.raises(ValidationError, match="approvers from 2 groups, which 1 approver"):
        set_required_approvals(world.ctx("admin"), "prod", 1)
    world.session.rollback()
    assert (rule_for(get_environment(world.session, "prod")),
            _events(world, "environment.required_approvals")) == before


def test_a_channel_rule_takes_the_channel_as_the_channel_commands_spell_it(
    world: World, release_dir: Callable[..., Path]
) -> None:
    admin = world.ctx("admin")
    set_channel_rule(admin, "test", "STABLE", required=2)  # as `hub channels` prints it
    rel = _submitted(world, release_dir)
    approve_release(world.ctx("appr1"), rel)
    assert not check_rule(rel, get_environment(world.session, "test"), channel="stable").met
    assert [r.channel for r in rules_of(admin, "test")] == [None, "stable"]
    with pytest.raises(ValidationError, match="channel name 'BE TA' must be"):
        set_channel_rule(admin, "test", "BE TA", required=1)
    clear_channel_rule(admin, "test", "Stable")
    assert [r.channel for r in rules_of(admin, "test")] == [None]


def test_a_rule_for_a_channel_no_product_has_is_refused_and_nothing_changes(
    world: World, release_dir: Callable[..., Path]
) -> None:
    admin = world.ctx("admin")
    _submitted(world, release_dir)  # a product with the default channels
    world.session.commit()
    before = (rules_of(admin, "prod"), _events(world, "environment.approval_rule"))
    with pytest.raises(ValidationError, match=(
            r"no product has a channel 'stabel' \(channels: canary, release, stable\); .*"
            r"tiangong hub channels add PRODUCT NAME")):
        set_channel_rule(admin, "prod", "STABEL", required=2)
    world.session.rollback()
    assert (rules_of(admin, "prod"), _events(world, "environment.approval_rule")) == before
    add_channel(admin, "hello", "HOTFIX")  # a channel of one product is enough
    set_channel_rule(admin, "prod", "HOTFIX", required=1)
    assert [r.channel for r in rules_of(admin, "prod")] == [None, "hotfix"]
