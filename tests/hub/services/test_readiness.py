""""Why is this not deploying?" (hub.services.readiness): one test per reason, and none for
a deployment that waits for nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bundle.windows import format_instant
from hub.db import Agent, ChannelEntry, Deployment
from hub.services.approvals import approve_release
from hub.services.channels import subscribe
from hub.services.deployments import transition
from hub.services.readiness import waiting_for
from hub.services.releases import create_release, submit_release
from hub.services.windows import add_rule, confirm_override, request_override
from tests.hub.conftest import World
from tests.hub.services.test_windows import HELLO, SAT_BERLIN, SAT_OPENS, _freeze, _queued


def _kinds(world: World, dep: Deployment) -> list[str]:
    return [r.kind for r in waiting_for(world.session, dep, world.clock())]


def test_nothing_to_wait_for(world: World) -> None:
    dep = _queued(world)
    assert waiting_for(world.session, dep, world.clock()) == []


def test_approvals_one_of_two_on_a_planned_deployment(world: World) -> None:
    """prod needs 2 approvals; a release reaching the channel prod subscribes to with one
    approval is planned there and waits for the second."""
    release = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    subscribe(world.ctx("admin"), "prod", "hello", "RELEASE")
    submit_release(world.ctx("dev"), release)
    approve_release(world.ctx("appr1"), release)
    (dep,) = world.session.scalars(select(Deployment)).all()
    assert dep.state == "planned" and dep.environment.name == "prod"
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.kind == "approvals"
    assert reason.text.startswith("approval 1 of 2: environment prod needs")
    assert "found 1 (appr1" in reason.text
    assert reason.to_json() == {"kind": "approvals", "text": reason.text, "until": None}


def test_channel_not_promoted(world: World) -> None:
    """A planned deployment whose release left the subscribed channel (its entry was
    recalled) says which channel it waits for."""
    release = create_release(world.ctx("dev"), HELLO, create_missing_product=True)
    subscribe(world.ctx("admin"), "test", "hello", "RELEASE")
    submit_release(world.ctx("dev"), release)
    dep = Deployment(release=release, environment=_env(world, "test"), state="planned",
                     queued_by="dev", queued_at=world.clock(), updated_at=world.clock())
    world.session.add(dep)
    world.session.flush()
    kinds = _kinds(world, dep)
    assert kinds == ["approvals", "channel"]
    text = waiting_for(world.session, dep, world.clock())[1].text
    assert text == "not yet promoted to RELEASE (the channel test subscribes to for hello)"
    approve_release(world.ctx("appr1"), release)  # enters RELEASE
    assert world.session.scalars(select(ChannelEntry)).first() is not None
    assert "channel" not in _kinds(world, dep)


def _env(world: World, name: str):  # type: ignore[no-untyped-def]
    from hub.services.environments import get_environment

    return get_environment(world.session, name)


def test_freeze_reason_and_until(world: World) -> None:
    dep = _queued(world)
    _freeze(world, hours=2, reason="quarter close")
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.kind == "freeze"
    assert reason.text == ("frozen until Mon 2026-11-23 11:00 UTC (quarter close); the hub "
                           "does not export it")
    assert reason.until == world.clock() + timedelta(hours=2)


def test_window_reason_names_the_opening(world: World) -> None:
    dep = _queued(world)
    add_rule(world.ctx("admin"), "window", SAT_BERLIN, environment="test")
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.kind == "window" and reason.until == SAT_OPENS
    assert reason.text.startswith("window opens Sat 2026-11-28 01:00 Europe/Berlin; exported")
    transition(world.ctx("op"), dep, "exported")
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.text.endswith("the agent holds it until then")
    world.clock.now = SAT_OPENS
    assert waiting_for(world.session, dep, world.clock()) == []


def test_override_requested_then_confirmed(world: World) -> None:
    dep = _queued(world)
    _freeze(world)
    request_override(world.ctx("op"), dep, "hotfix")
    assert _kinds(world, dep) == ["freeze", "override"]
    text = waiting_for(world.session, dep, world.clock())[1].text
    assert "requested by op (hotfix); needs a second person" in text
    confirm_override(world.ctx("admin"), dep)
    assert _kinds(world, dep) == []


def test_running_and_finished_wait_for_nothing(world: World) -> None:
    dep = _queued(world)
    _freeze(world)
    transition(world.ctx("op"), dep, "exported")
    transition(world.ctx("op"), dep, "running")
    assert _kinds(world, dep) == []
    transition(world.ctx("op"), dep, "succeeded")
    assert _kinds(world, dep) == []


def test_every_reason_at_once_in_order(world: World) -> None:
    dep = _queued(world, env="prod")
    add_rule(world.ctx("admin"), "window", SAT_BERLIN)
    _freeze(world, env=None)
    request_override(world.ctx("op"), dep, "hotfix")
    # An approval is withdrawn behind the services' back: prod's rule is no longer met.
    approval = dep.release.approvals[-1]
    world.session.delete(approval)
    world.session.flush()
    world.session.expire(dep.release)
    assert _kinds(world, dep) == ["approvals", "freeze", "window", "override"]


def test_a_bundle_an_agent_reports_holding_is_held_at_the_site(world: World) -> None:
    """An environment-wide deployment whose bundle one agent of the environment reports
    holding (its newest result or live STATE): "held at site-01 (reported …): …", with the
    time the hold ends; another agent's hold of another bundle is not this one's."""
    dep = _queued(world)
    transition(world.ctx("op"), dep, "exported")
    dep.bundle_id = "b-7"
    env = _env(world, "test")
    text = "window opens Sat 2027-01-16 01:00 Europe/Berlin"
    for n, (agent_id, bundle_id) in enumerate((("site-01", "b-7"), ("site-02", "b-other"))):
        world.session.add(Agent(
            agent_id=agent_id, environment=env, hostname="h", ed25519_public=f"{n}" * 64,
            x25519_public=f"{n}" * 64, enrolled_at=world.clock(), inventory={},
            inventory_at=world.clock(),
            holds=[{"bundle_id": bundle_id, "sequence": 3, "kind": "window", "text": text,
                    "until": 1_800_000_000}]))
    world.session.flush()
    (reason,) = waiting_for(world.session, dep, world.clock())
    assert reason.kind == "site"
    assert reason.text == (f"held at site-01 (reported "
                           f"{format_instant(int(world.clock().timestamp()))}): {text}")
    assert reason.until == datetime.fromtimestamp(1_800_000_000, UTC)
    transition(world.ctx("op"), dep, "running")
    assert waiting_for(world.session, dep, world.clock()) == []
