"""Site secrets on the hub (hub.services.site_secrets): write-only, encrypted under a key in
the data directory, bound to environment and name, sealed to an agent's box key; every
refusal changes nothing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.services.context import ServiceContext
from hub.services.site_secrets import (
    KEY_FILE,
    delete_secret,
    list_secrets,
    seal_for_agents,
    sealed_names,
    set_secret,
)
from signing.keys import BoxKeyPair
from signing.sealed import open_secret
from tests.hub.conftest import World

VALUE = "pg-Pa55word!"


def _ctx(world: World, tmp_path: Path, user: str = "admin") -> ServiceContext:
    keys = dataclasses.replace(world.keys.hub, data_dir=tmp_path / "data")
    return dataclasses.replace(world.ctx(user), keys=keys)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() \
        else {}


def test_a_secret_is_stored_encrypted_listed_without_its_value_and_sealed(
        world: World, tmp_path: Path) -> None:
    ctx = _ctx(world, tmp_path)
    info = set_secret(ctx, "prod", "db-password", VALUE)

    assert info.name == "db-password" and info.set_by == "admin"
    data = tmp_path / "data"
    assert (data / "keys" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    for content in _files(data).values():
        assert VALUE.encode() not in content
    assert [i.to_json()["name"] for i in list_secrets(ctx, "prod")] == ["db-password"]
    assert "value" not in list_secrets(ctx, "prod")[0].to_json()
    assert list_secrets(ctx, "test") == []

    steps = [{"secrets": ["db-password", "site-only"]}, {"secrets": []}]
    names = sealed_names(ctx, "prod", steps)
    assert names == ["db-password"]  # a name the environment does not store is the site's
    box = BoxKeyPair.generate()
    (entry,) = seal_for_agents(ctx, "prod", names, [("site-01", box.public.raw.hex())], "b-1")
    assert open_secret(entry.sealed, bundle_id="b-1", agent_id="site-01",
                       name="db-password", keypair=box) == VALUE


def test_refusals_change_nothing(world: World, tmp_path: Path) -> None:
    ctx = _ctx(world, tmp_path)
    set_secret(ctx, "prod", "db-password", VALUE)
    before = _files(tmp_path / "data")

    cases: list[tuple[type[Exception], str, ServiceContext, str, str, str]] = [
        (ValidationError, "secret name '../x' is not valid", ctx, "prod", "../x", "v"),
        (ValidationError, "the value must not be empty", ctx, "prod", "db-password", ""),
        (NotFoundError, "nowhere", ctx, "nowhere", "a", "v"),
        (PermissionDeniedError, "op", _ctx(world, tmp_path, "op"), "prod", "db-password",
         "other"),
    ]
    for error, words, who, env, name, value in cases:
        with pytest.raises(error) as info:
            set_secret(who, env, name, value)
        assert words in str(info.value)
    with pytest.raises(NotFoundError, match="stores no secret 'nope'"):
        delete_secret(ctx, "prod", "nope")
    assert _files(tmp_path / "data") == before


def test_a_file_moved_to_another_name_does_not_open(world: World, tmp_path: Path) -> None:
    ctx = _ctx(world, tmp_path)
    set_secret(ctx, "prod", "db-password", VALUE)
    folder = tmp_path / "data" / "secrets" / "prod"
    doc = json.loads((folder / "db-password.json").read_text())
    (folder / "api-token.json").write_text(json.dumps({**doc, "name": "api-token"}))
    box = BoxKeyPair.generate()

    with pytest.raises(ValidationError, match="does not open with the hub's secrets key as "
                       "secret 'api-token' of prod"):
        seal_for_agents(ctx, "prod", ["api-token"], [("site-01", box.public.raw.hex())], "b")


def test_delete_forgets_the_secret(world: World, tmp_path: Path) -> None:
    ctx = _ctx(world, tmp_path)
    set_secret(ctx, "prod", "db-password", VALUE)
    delete_secret(ctx, "prod", "db-password")
    assert list_secrets(ctx, "prod") == []
    assert sealed_names(ctx, "prod", [{"secrets": ["db-password"]}]) == []


def test_rotation_a_new_value_is_what_the_next_bundle_carries(world: World,
                                                              tmp_path: Path) -> None:
    ctx = _ctx(world, tmp_path)
    box = BoxKeyPair.generate()
    agents = [("site-01", box.public.raw.hex())]
    set_secret(ctx, "prod", "db-password", VALUE)
    (old,) = seal_for_agents(ctx, "prod", ["db-password"], agents, "b-1")
    set_secret(ctx, "prod", "db-password", VALUE + "-rotated")
    (new,) = seal_for_agents(ctx, "prod", ["db-password"], agents, "b-2")

    assert open_secret(new.sealed, bundle_id="b-2", agent_id="site-01", name="db-password",
                       keypair=box) == VALUE + "-rotated"
    # the bundle exported before keeps the value sealed then
    assert open_secret(old.sealed, bundle_id="b-1", agent_id="site-01", name="db-password",
                       keypair=box) == VALUE
    assert [i.name for i in list_secrets(ctx, "prod")] == ["db-password"]
