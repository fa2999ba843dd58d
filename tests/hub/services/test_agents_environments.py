"""Environments and agent enrollment."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hub.errors import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from hub.services.agents import EnrollmentRequest, enroll_agent, list_agents, revoke_agent
from hub.services.environments import create_environment, set_required_approvals
from signing.envelope import (
    TYPE_ENROLLMENT,
    TYPE_ENROLLMENT_RESPONSE,
    sign_envelope,
    verify_envelope,
)
from signing.keys import BoxKeyPair, SigningKey
from signing.roots import TrustedRoot
from signing.strictjson import dumps_canonical
from tests.hub.conftest import World


def _request_doc() -> dict[str, object]:
    return {
        "hostname": "plant-a-01",
        "labels": ["plant-a"],
        "ed25519_public": SigningKey.generate().public.raw.hex(),
        "x25519_public": BoxKeyPair.generate().public.raw.hex(),
        "agent_version": "0.1.0",
    }


def test_environment_rules(world: World) -> None:
    admin = world.ctx("admin")
    with pytest.raises(PermissionDeniedError):
        create_environment(world.ctx("op"), "staging")
    with pytest.raises(ConflictError):
        create_environment(admin, "prod")
    with pytest.raises(ValidationError):
        create_environment(admin, "Bad Name")
    with pytest.raises(ValidationError, match="between 1 and"):
        create_environment(admin, "staging", required_approvals=0)
    assert set_required_approvals(admin, "prod", 3).required_approvals == 3


def test_enroll_returns_response_with_root(world: World) -> None:
    op = world.ctx("op")
    req = EnrollmentRequest.from_json(_request_doc())
    resp = enroll_agent(op, "test", req)
    assert resp.agent_id.startswith("plant-a-01-")
    data = resp.to_json()
    assert data["hub_id"] == "hub-test" and data["environment"] == "test"
    TrustedRoot.pin(base64.b64decode(data["root"]))
    (agent,) = list_agents(world.session, "test")
    assert agent.status == "enrolled" and agent.labels == {"plant-a": ""}
    with pytest.raises(ConflictError, match="already enrolled"):
        enroll_agent(op, "prod", req)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ed25519_public": "zz" * 32}, "ed25519_public"),
        ({"x25519_public": "ab"}, "x25519_public"),
        ({"hostname": "../etc"}, "hostname"),
        ({"agent_id": "Bad Id"}, "agent id"),
        ({"agent_id": "enroll"}, "reserved by the hub"),  # /agents/enroll is a page
        ({"extra": 1}, "unknown field"),
        ({"labels": "x"}, "labels"),
    ],
)
def test_bad_enrollment_requests(world: World, change: dict[str, object], message: str) -> None:
    doc = {**_request_doc(), **change}
    with pytest.raises(ValidationError, match=message):
        EnrollmentRequest.from_json(doc)


def test_enroll_and_revoke_permissions(world: World) -> None:
    req = EnrollmentRequest.from_json({**_request_doc(), "agent_id": "a-1"})
    with pytest.raises(PermissionDeniedError):
        enroll_agent(world.ctx("dev"), "test", req)
    with pytest.raises(NotFoundError):
        enroll_agent(world.ctx("op"), "nowhere", req)
    enroll_agent(world.ctx("op"), "test", req)
    with pytest.raises(PermissionDeniedError):
        revoke_agent(world.ctx("appr1"), "a-1")
    revoke_agent(world.ctx("op"), "a-1", reason="box stolen")
    with pytest.raises(InvalidStateError, match="already revoked"):
        revoke_agent(world.ctx("op"), "a-1")


def test_signed_request_from_agent_init(world: World, tmp_path: Path) -> None:
    from agent.home import init_home

    root_file = tmp_path / "root.json"
    root_file.write_bytes(world.keys.hub.root_envelope)
    _config, req_path = init_home(
        tmp_path / "agent",
        root_file=root_file,
        agent_id="plant-a-01",
        environment="test",
        labels={"line": "1"},
    )
    request = EnrollmentRequest.from_bytes(req_path.read_bytes())
    assert request.agent_id == "plant-a-01" and request.environment == "test"
    with pytest.raises(ValidationError, match="asked to join environment 'test', not 'prod'"):
        enroll_agent(world.ctx("op"), "prod", request)
    resp = enroll_agent(world.ctx("op"), "test", request)
    envelope = resp.to_envelope(world.keys.release)
    role = TrustedRoot.pin(world.keys.hub.root_envelope).document.role_keys("release")
    payload = verify_envelope(
        envelope, payload_type=TYPE_ENROLLMENT_RESPONSE, trusted=role.keys, threshold=role.threshold
    ).payload
    assert json.loads(payload)["agent_id"] == "plant-a-01"
    (agent,) = list_agents(world.session, "test")
    assert agent.labels == {"line": "1"}


def test_request_signed_by_another_key_is_refused(world: World) -> None:
    doc = {**_request_doc(), "type": "tiangong/enrollment-request"}
    forged = sign_envelope(TYPE_ENROLLMENT, dumps_canonical(doc), [SigningKey.generate()])
    with pytest.raises(ValidationError, match="does not verify"):
        EnrollmentRequest.from_bytes(forged)
    assert list_agents(world.session) == []


def test_request_for_another_hub_is_refused(world: World) -> None:
    request = EnrollmentRequest.from_json({**_request_doc(), "hub_id": "hub-other"})
    with pytest.raises(ValidationError, match="is for hub 'hub-other'"):
        enroll_agent(world.ctx("op"), "test", request)
