"""Windows, freezes and hub overrides at the hub: rules, permissions, the export gate, the
live server's hold, and the four-eyes override (hub.services.windows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, DeploymentOverride, PolicyRule
from hub.errors import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    SeparationOfDutiesError,
    ValidationError,
)
from hub.services.agents import EnrollmentRequest, enroll_agent
from hub.services.approvals import approve_release
from hub.services.deployments import queue_deployment
from hub.services.exchange import export_environment
from hub.services.presence import live_work
from hub.services.releases import create_release, submit_release
from hub.services.windows import (
    FOREVER,
    OVERRIDE_REQUEST_TTL,
    active_override,
    add_rule,
    confirm_override,
    end_freeze,
    expire_freezes,
    expire_overrides,
    gate_for,
    gates_for,
    list_rules,
    policy_for,
    refresh_holds,
    remove_rule,
    request_override,
)
from signing.keys import BoxKeyPair, SigningKey
from tests.hub.conftest import World

HELLO = Path(__file__).resolve().parents[3] / "examples" / "releases" / "hello-1.0.0"
# The world's clock starts on Monday 2026-11-23 09:00 UTC.
SAT_BERLIN = "sat 01:00-05:00 Europe/Berlin"
SAT_OPENS = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)  # 01:00 in Berlin (UTC+1)


def _unix(at: datetime) -> int:
    return int(at.timestamp())


def _queued(world: World, env: str = "test") -> Deployment:
    release = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    approve_release(world.ctx("appr2"), release)
    (dep,) = queue_deployment(world.ctx("op"), release, env)
    world.session.commit()
    return dep


def _freeze(world: World, hours: int = 48, reason: str = "quarter close",
            env: str | None = "test") -> PolicyRule:
    now = _unix(world.clock())
    return add_rule(world.ctx("admin"), "freeze",
                    {"kind": "once", "start": now - 3600, "end": now + hours * 3600,
                     "reason": reason}, environment=env)


def _events(world: World, action: str) -> list[AuditEvent]:
    return list(world.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _count(world: World, model: Any) -> int:
    return world.session.scalar(select(func.count()).select_from(model)) or 0


# --- rules ---------------------------------------------------------------------------------


def test_add_list_remove_window_with_short_spec_and_json(world: World) -> None:
    admin = world.ctx("admin")
    w = add_rule(admin, "window", SAT_BERLIN, environment="prod")
    assert w.spec == {"kind": "weekly", "days": ["sat"], "start": "01:00", "end": "05:00",
                      "timezone": "Europe/Berlin"}
    o = add_rule(admin, "window", {"kind": "once", "start": 1800000000, "end": 1800014400},
                 product=None)
    assert [r.id for r in list_rules(admin, "window", environment="prod")] == [w.id, o.id]
    assert [r.id for r in list_rules(admin, "window", environment="test")] == [o.id]
    assert [e.object_id for e in _events(world, "window.add")] == [str(w.id), str(o.id)]
    remove_rule(admin, "window", w.id)
    assert [r.id for r in list_rules(admin, "window")] == [o.id]
    assert [e.object_id for e in _events(world, "window.remove")] == [str(w.id)]


@pytest.mark.parametrize(("kind", "spec", "message"), [
    ("window", "sat 01:00-05:00 Mars/Olympus", "unknown time zone"),
    ("window", "someday 01:00-05:00 UTC", "unknown day"),
    ("window", {"kind": "weekly", "days": ["sat"], "start": "01:00", "end": "01:00",
                "timezone": "UTC"}, "equals start"),
    ("window", {"kind": "annual", "start": "12-20", "end": "01-05", "timezone": "UTC"},
     "is not one of weekly, once"),
    ("freeze", "12-20..01-05 UTC", "needs a reason"),
    ("freeze", {"kind": "once", "start": 10, "end": 5, "reason": "x"}, "later than start"),
    ("freeze", {"kind": "once", "start": 1, "end": 5, "reason": "x", "extra": 1},
     "not allowed"),
])
def test_bad_specs_are_refused_and_nothing_is_stored(world: World, kind: str, spec: Any,
                                                     message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        add_rule(world.ctx("admin"), kind, spec, environment="test")
    assert _count(world, PolicyRule) == 0
    assert _events(world, f"{kind}.add") == []


@pytest.mark.parametrize("who", ["op", "appr1", "dev", "view", "aud"])
def test_only_admins_manage_rules(world: World, who: str) -> None:
    with pytest.raises(PermissionDeniedError, match=r"environment\.update"):
        add_rule(world.ctx(who), "freeze", "12-20..01-05 UTC: year end", environment="test")
    assert _count(world, PolicyRule) == 0
    rule = _freeze(world)
    with pytest.raises(PermissionDeniedError):
        remove_rule(world.ctx(who), "freeze", rule.id)
    with pytest.raises(PermissionDeniedError):
        end_freeze(world.ctx(who), rule.id, "done early")
    assert world.session.get(PolicyRule, rule.id) is not None and rule.ended_at is None


def test_unknown_scope_and_rule(world: World) -> None:
    with pytest.raises(NotFoundError, match="environment 'nope'"):
        add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="nope")
    with pytest.raises(NotFoundError, match="product 'nope'"):
        add_rule(world.ctx("admin"), "window", SAT_BERLIN, product="nope")
    with pytest.raises(NotFoundError, match="window 99"):
        remove_rule(world.ctx("admin"), "window", 99)
    rule = _freeze(world)
    with pytest.raises(NotFoundError, match=f"window {rule.id} does not exist"):
        remove_rule(world.ctx("admin"), "window", rule.id)  # it is a freeze
    assert _count(world, PolicyRule) == 1


def test_product_rules_apply_to_that_product_only(world: World) -> None:
    dep = _queued(world)
    from hub.services.releases import create_product

    create_product(world.ctx("dev"), "other")
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, product="other")
    assert not gate_for(world.session, dep, world.clock()).outside_window
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, product="hello")
    assert gate_for(world.session, dep, world.clock()).outside_window
    # A rule for another environment does not apply.
    add_rule(world.ctx("admin"), "freeze", "12-01..12-31 UTC: not here", environment="prod")
    assert not gate_for(world.session, dep, world.clock()).frozen


def test_gates_of_many_deployments_are_each_their_own_and_read_afresh(world: World) -> None:
    """gates_for works the gate of one (environment, product) out once for the deployments
    without an override: one with a confirmed override still gets its own, and a freeze
    ended between two calls is seen by the next (nothing is kept between calls)."""
    for agent_id in ("a1", "a2", "a3"):
        enroll_agent(world.ctx("op"), "test", EnrollmentRequest(
            hostname=agent_id, ed25519_public=SigningKey.generate().public.raw.hex(),
            x25519_public=BoxKeyPair.generate().public.raw.hex(), agent_id=agent_id,
            environment="test", hub_id=world.keys.hub.hub_id))
    world.session.commit()
    deps = _queued_many(world)
    assert len(deps) == 3
    rule = _freeze(world)
    request_override(world.ctx("op"), deps[1], "security fix")
    confirm_override(world.ctx("admin"), deps[1])
    gates = gates_for(world.session, deps, world.clock())
    assert [gates[d.id][0].frozen for d in deps] == [True, False, True]
    assert [gates[d.id][1].override is not None for d in deps] == [False, True, False]
    assert gates[deps[0].id][0].freeze == gate_for(world.session, deps[2], world.clock()).freeze
    end_freeze(world.ctx("admin"), rule.id, "the close finished early")
    gates = gates_for(world.session, deps, world.clock())
    assert [gates[d.id][0].frozen for d in deps] == [False, False, False]
    assert [gates[d.id][1] is None for d in deps] == [True, False, True]


def _queued_many(world: World) -> list[Deployment]:
    release = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    approve_release(world.ctx("appr2"), release)
    deps = queue_deployment(world.ctx("op"), release, "test")
    world.session.commit()
    return sorted(deps, key=lambda d: d.id)


# --- the gate at export ----------------------------------------------------------------------


def test_frozen_deployment_is_not_exported_until_the_freeze_ends(world: World,
                                                                 tmp_path: Path) -> None:
    dep = _queued(world)
    rule = _freeze(world, hours=2)
    usb = tmp_path / "usb"
    report = export_environment(world.ctx("op"), "test", usb)
    assert report.written == [] and [d for d, _ in report.held] == [dep.id]
    assert "frozen until" in report.held[0][1] and "quarter close" in report.held[0][1]
    assert dep.state == "queued" and dep.sequence is None
    assert not list(usb.glob("*.tgb"))
    world.clock.advance(2 * 3600)
    expire_freezes(world.ctx("admin"))
    assert rule.ended_at is not None
    report = export_environment(world.ctx("op"), "test", usb)
    assert [b.deployment_id for b in report.written] == [dep.id] and report.held == []


def test_ending_a_freeze_early_releases_it(world: World, tmp_path: Path) -> None:
    dep = _queued(world)
    rule = _freeze(world)
    with pytest.raises(ValidationError, match="needs a reason"):
        end_freeze(world.ctx("admin"), rule.id, "  ")
    assert rule.ended_at is None
    end_freeze(world.ctx("admin"), rule.id, "the close finished early")
    assert rule.ended_by == "admin"
    with pytest.raises(InvalidStateError, match="already ended"):
        end_freeze(world.ctx("admin"), rule.id, "again")
    assert [e.object_id for e in _events(world, "freeze.end")] == [str(rule.id)]
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert [b.deployment_id for b in report.written] == [dep.id]


def test_outside_window_media_export_goes_early_live_waits(world: World,
                                                          tmp_path: Path) -> None:
    """Media: exported at once (the agent holds it); live: held until the window opens."""
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    gate = gate_for(world.session, dep, world.clock())
    assert gate.window_opens == SAT_OPENS and gate.runs_from == SAT_OPENS
    assert gate.window == "window opens Sat 2026-11-28 01:00 Europe/Berlin"
    report = export_environment(world.ctx("op"), "test", tmp_path / "spool", live=True)
    assert report.written == [] and [d for d, _ in report.held] == [dep.id]
    assert dep.state == "queued" and dep.hold_until == SAT_OPENS
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert [b.deployment_id for b in report.written] == [dep.id]


def test_live_work_counts_only_deployments_not_held(world: World) -> None:
    from hub.services.agents import enroll_agent
    from tests.hub.services.test_deployments import request

    enroll_agent(world.ctx("op"), "test", request("a1", "agent-1"))
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    world.session.commit()
    assert dep.hold_until == SAT_OPENS  # the rule's change refreshed it
    (work,) = live_work(world.session, ["agent-1"], now=world.clock())
    assert work.queued == 0
    (work,) = live_work(world.session, ["agent-1"], now=SAT_OPENS)
    assert work.queued == 1  # at the opening the live server pushes it on its own
    (work,) = live_work(world.session, ["agent-1"])
    assert work.queued == 1


def test_freeze_inside_the_window_pushes_back_the_hold(world: World) -> None:
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    add_rule(world.ctx("admin"), "freeze",
             {"kind": "once", "start": _unix(SAT_OPENS) - 60,
              "end": _unix(SAT_OPENS) + 3600, "reason": "storage migration"},
             environment="test")
    assert dep.hold_until == SAT_OPENS + timedelta(hours=1)


def test_freeze_without_end_holds_forever(world: World) -> None:
    dep = _queued(world)
    add_rule(world.ctx("admin"), "freeze", "daily 00:00-24:00 UTC: incident",
             environment="test")
    gate = gate_for(world.session, dep, world.clock())
    assert gate.frozen and dep.hold_until == FOREVER


def test_refresh_holds_reports_lifted(world: World) -> None:
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    assert refresh_holds(world.session, world.clock()) == []
    assert refresh_holds(world.session, SAT_OPENS) == [dep]
    assert dep.hold_until is None


def test_policy_for_carries_the_rules_that_apply(world: World) -> None:
    dep = _queued(world)
    assert policy_for(world.session, dep, world.clock()) is None
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    add_rule(world.ctx("admin"), "freeze", "12-20..01-05 UTC: year end", product="hello")
    old = _freeze(world, hours=1, reason="over soon")
    world.clock.advance(2 * 3600)  # the one-off freeze is over: no longer carried
    policy = policy_for(world.session, dep, world.clock())
    assert policy.to_json() == {
        "windows": [{"kind": "weekly", "days": ["sat"], "start": "01:00", "end": "05:00",
                     "timezone": "Europe/Berlin"}],
        "freezes": [{"kind": "annual", "start": "12-20", "end": "01-05", "timezone": "UTC",
                     "reason": "year end"}],
        "override": None,
    }
    assert old.ended_at is None


# --- overrides ---------------------------------------------------------------------------


def test_override_needs_a_second_person_and_lifts_the_freeze(world: World,
                                                             tmp_path: Path) -> None:
    dep = _queued(world)
    _freeze(world)
    with pytest.raises(ValidationError, match="needs a reason"):
        request_override(world.ctx("op"), dep, " ")
    assert _count(world, DeploymentOverride) == 0
    request_override(world.ctx("op"), dep, "security fix CVE-2026-1")
    with pytest.raises(ConflictError, match="already has an override requested by op"):
        request_override(world.ctx("admin"), dep, "again")
    with pytest.raises(SeparationOfDutiesError, match="op requested this override"):
        confirm_override(world.ctx("op"), dep)
    assert gate_for(world.session, dep, world.clock()).frozen
    for who in ("dev", "appr1", "view"):
        with pytest.raises(PermissionDeniedError):
            confirm_override(world.ctx(who), dep)
    assert export_environment(world.ctx("op"), "test", tmp_path / "usb").written == []
    row = confirm_override(world.ctx("admin"), dep)
    assert (row.state, row.requested_by, row.confirmed_by) == ("confirmed", "op", "admin")
    assert not gate_for(world.session, dep, world.clock()).frozen
    policy = policy_for(world.session, dep, world.clock())
    assert policy.override is not None and policy.override.to_json() == {
        "reason": "security fix CVE-2026-1", "by": "op", "second": "admin",
        "at": _unix(world.clock())}
    assert [e.actor for e in _events(world, "override.request")] == ["op"]
    assert [e.actor for e in _events(world, "override.confirm")] == ["admin"]
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    assert [b.deployment_id for b in report.written] == [dep.id]


def test_override_request_expires_unconfirmed(world: World) -> None:
    dep = _queued(world)
    _freeze(world)
    request_override(world.ctx("op"), dep, "hotfix")
    world.clock.advance(OVERRIDE_REQUEST_TTL.total_seconds())
    assert expire_overrides(world.ctx("admin")) != []
    with pytest.raises(NotFoundError, match="request expired"):
        confirm_override(world.ctx("admin"), dep)
    assert gate_for(world.session, dep, world.clock()).frozen
    assert len(_events(world, "override.expire")) == 1


def test_override_only_for_queued(world: World) -> None:
    from hub.services.deployments import transition

    dep = _queued(world)
    transition(world.ctx("op"), dep, "exported")
    with pytest.raises(InvalidStateError, match="only a queued deployment"):
        request_override(world.ctx("op"), dep, "late")
    assert _count(world, DeploymentOverride) == 0


def test_bundle_carries_the_policy_and_the_override(world: World, tmp_path: Path) -> None:
    from bundle.inspect import inspect

    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    _freeze(world)
    request_override(world.ctx("op"), dep, "security fix")
    confirm_override(world.ctx("admin"), dep)
    world.session.commit()
    report = export_environment(world.ctx("op"), "test", tmp_path / "usb")
    (written,) = report.written
    policy = inspect(written.paths[0]).manifest.policy
    assert policy is not None
    assert [w.to_json()["kind"] for w in policy.windows] == ["weekly"]
    assert [f.reason for f in policy.freezes] == ["quarter close"]
    assert policy.override is not None
    assert (policy.override.by, policy.override.second) == ("op", "admin")
    assert dep.export_intent is not None and dep.export_intent["policy"] == policy.to_json()


def test_bundle_without_rules_has_no_policy(world: World, tmp_path: Path) -> None:
    from bundle.inspect import inspect

    _queued(world)
    (written,) = export_environment(world.ctx("op"), "test", tmp_path / "usb").written
    assert inspect(written.paths[0]).manifest.policy is None


def test_a_confirmed_override_is_not_confirmed_twice(world: World) -> None:
    dep = _queued(world)
    _freeze(world)
    request_override(world.ctx("op"), dep, "hotfix")
    confirm_override(world.ctx("admin"), dep)
    with pytest.raises(ConflictError, match=r"already confirmed by admin \(requested by op\)"):
        confirm_override(world.ctx("admin"), dep)
    assert [e.actor for e in _events(world, "override.confirm")] == ["admin"]
    row = active_override(world.session, dep)
    assert row is not None and (row.state, row.confirmed_by) == ("confirmed", "admin")
