"""Ad-hoc runs (hub.services.adhoc): a shell run for one agent of ``prod`` (2 approvals) is
created and submitted, refused while approvals are missing (nothing queued or written, no
sequence used), and shipped to that agent alone once the rule is met."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.db import Deployment, Release, SequenceCounter
from hub.errors import NotEnoughApprovalsError, ValidationError
from hub.services.adhoc import create_adhoc_release, ship_adhoc
from hub.services.agents import enroll_agent
from hub.services.approvals import approve_release
from tests.hub.conftest import World
from tests.hub.services.test_deployments import request


def _count(world: World, table: type) -> int:
    return world.session.scalar(select(func.count()).select_from(table)) or 0


def _next_sequences(world: World) -> set[int]:
    return set(world.session.scalars(select(SequenceCounter.next_sequence)))


def test_a_shell_run_waits_for_the_rule_then_ships_to_its_agent(
        world: World, tmp_path: Path) -> None:
    admin = world.ctx("admin")
    enroll_agent(admin, "prod", request("p1", "prod-1"))
    enroll_agent(admin, "prod", request("p2", "prod-2"))
    script = tmp_path / "cleanup.sh"
    script.write_text("echo cleaning\n")
    made = create_adhoc_release(admin, "prod-1", {"name": "run cleanup.sh", "kind": "shell",
                                                  "interpreter": "sh"}, script)
    rel = made.release
    assert (rel.product.name, rel.state, made.environment) == ("adhoc", "submitted", "prod")
    assert rel.steps[0]["script"] == "run.sh" and rel.files[0]["name"] == "run.sh"
    assert "ad-hoc shell run of cleanup.sh on agent prod-1 (prod) by admin" in rel.description
    out = tmp_path / "usb"
    for approver, missing in ((None, "2 approvals"), ("appr1", "1 approval")):
        if approver:
            approve_release(world.ctx(approver), rel)
        with pytest.raises(NotEnoughApprovalsError, match=(
                f"environment prod requires 2 approvals, it has {2 - int(missing[0])}; "
                f"waiting for {missing}: `tiangong hub releases approve adhoc {rel.version}`")):
            ship_adhoc(admin, rel, "prod-1", out)
        assert _count(world, Deployment) == 0 and _next_sequences(world) == {1}
        assert not out.exists()
    approve_release(world.ctx("appr2"), rel)
    report = ship_adhoc(admin, rel, "prod-1", out).report
    assert report is not None
    [bundle] = report.written
    assert (bundle.agent_id, bundle.sequence, report.failed) == ("prod-1", 1, [])
    [dep] = world.session.scalars(select(Deployment)).all()
    assert dep.agent is not None and dep.agent.agent_id == "prod-1" and dep.state == "exported"


def test_a_directory_is_not_a_script(world: World, tmp_path: Path) -> None:
    admin = world.ctx("admin")
    enroll_agent(admin, "test", request("t1", "test-1"))
    with pytest.raises(ValidationError, match="must be a regular file"):
        create_adhoc_release(admin, "test-1", {"name": "x", "kind": "shell"}, tmp_path)
    assert _count(world, Deployment) == 0
    script = tmp_path / "x.sh"
    script.write_text("true\n")
    with pytest.raises(ValidationError, match=(
            f"ad-hoc run of {script}: step 1 \\('x'\\), field interpreter: 'zsh' is not one")):
        create_adhoc_release(admin, "test-1", {"name": "x", "kind": "shell",
                                               "interpreter": "zsh"}, script)
    assert _count(world, Deployment) == 0


def test_k8s_and_http_runs_carry_their_file_where_the_step_reads_it(
        world: World, tmp_path: Path) -> None:
    admin = world.ctx("admin")
    enroll_agent(admin, "test", request("t1", "test-1"))
    manifest = tmp_path / "patch.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
    k8s = create_adhoc_release(admin, "test-1", {"name": "apply patch.yaml", "kind": "k8s",
                                                 "connection": "kube"}, manifest).release
    assert k8s.steps[0]["manifests"] == ["run.yaml"]
    assert [f["name"] for f in k8s.files] == ["run.yaml"]
    http = create_adhoc_release(admin, "test-1", {"name": "GET health", "kind": "http",
                                                  "url": "http://127.0.0.1:9/health"},
                                None).release
    assert http.files == [] and "body" not in http.steps[0]
    assert "ad-hoc http run of http://127.0.0.1:9/health" in http.description
    body = tmp_path / "flush.json"
    body.write_text("{}")
    post = create_adhoc_release(admin, "test-1", {"name": "POST flush", "kind": "http",
                                                  "method": "POST", "url": "http://h/flush"},
                                body).release
    assert post.steps[0]["body"] == "run.json"
    releases = _count(world, Release)
    with pytest.raises(ValidationError, match="an ad-hoc k8s run needs a file"):
        create_adhoc_release(admin, "test-1", {"name": "x", "kind": "k8s",
                                               "connection": "kube"}, None)
    with pytest.raises(ValidationError, match="an ad-hoc run is sql, shell, k8s or http"):
        create_adhoc_release(admin, "test-1", {"name": "x", "kind": "file"}, body)
    assert _count(world, Release) == releases and _count(world, Deployment) == 0
