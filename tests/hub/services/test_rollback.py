"""hub.services.rollback: the plan of undo steps, and the refusals of create_rollback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Release
from hub.errors import InvalidStateError, ValidationError
from hub.services.deployments import queue_deployment
from hub.services.rollback import create_rollback, plan_rollback
from tests.hub.conftest import World
from tests.hub.services.test_deployments import approved

SQL = {"name": "schema", "kind": "sql", "timeout_s": 60, "on_failure": "stop", "secrets": ["pw"],
       "engine": "postgres", "connection": "db", "script": "up.sql", "down": "down.sql"}
KUBE = {"name": "deploy", "kind": "k8s", "timeout_s": 600, "on_failure": "stop", "secrets": [],
        "connection": "kube", "manifests": ["app.yaml"], "wait": False}
SHELL = {"name": "smoke", "kind": "shell", "timeout_s": 60, "on_failure": "stop",
         "secrets": [], "script": "smoke.sh", "interpreter": "bash", "env": {},
         "secrets_via": "env", "args": []}


def test_the_plan_reverses_the_steps_and_names_what_cannot_be_undone() -> None:
    plan = plan_rollback([SQL, KUBE, SHELL], "b-42",
                         [{"index": 1, "status": "succeeded"}, {"index": 2, "status": "failed"},
                          {"index": 3, "status": "skipped"}])

    assert [(s["name"], s["step"]) for s in plan.steps] == [("undo 2: deploy", 2),
                                                            ("undo 1: schema", 1)]
    assert plan.steps[0] == {"name": "undo 2: deploy", "kind": "undo", "bundle": "b-42",
                             "step": 2, "timeout": 600, "on_failure": "continue",
                             "connection": "kube"}
    assert plan.steps[1]["script"] == "down.sql" and plan.steps[1]["secrets"] == ["pw"]
    assert plan.files == ["down.sql"]
    assert plan.not_undone == []  # the shell step was skipped: nothing to undo
    unknown = plan_rollback([SHELL], "b-42")  # no result yet: it may have run
    assert [s["name"] for s in unknown.steps] == ["undo 1: smoke"]  # the agent says if it ran
    assert "script" not in unknown.steps[0]
    assert unknown.not_undone == [
        {"step": 1, "name": "smoke", "ran": False,
         "why": "a shell step without a rollback script cannot be undone"}]


def _events(world: World) -> int:
    return world.session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def _releases(world: World) -> int:
    return world.session.scalar(select(func.count()).select_from(Release)) or 0


def test_a_rollback_is_refused_without_reason_export_or_anything_to_undo(
        world: World, release_dir: Callable[..., Path]) -> None:
    rel = approved(world, release_dir, "appr1")
    (dep,) = queue_deployment(world.ctx("op"), rel, "test")
    before = (_events(world), _releases(world))

    with pytest.raises(ValidationError, match="needs a reason"):
        create_rollback(world.ctx("dev"), dep.id, "  ")
    with pytest.raises(InvalidStateError, match="was never exported"):
        create_rollback(world.ctx("dev"), dep.id, "broken")
    dep.bundle_id = "b-1"  # as an export would
    with pytest.raises(ValidationError, match=r"none of its steps can be undone: step 1 "
                                              r"\(greet\): a shell step without a rollback"):
        create_rollback(world.ctx("dev"), dep.id, "broken")

    assert (_events(world), _releases(world)) == before
