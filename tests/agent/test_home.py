"""agent init: the home layout, keys, pinned root and a signed enrollment request."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.config import load_config
from agent.home import HomeError, init_home, load_keys
from agent.journal import Journal
from signing.envelope import TYPE_ENROLLMENT, verify_envelope
from signing.keys import PublicKey
from signing.strictjson import loads_strict
from tests.fixtures.trust import NOW, make_trust


def test_init_creates_everything(tmp_path: Path) -> None:
    kit = make_trust()
    config, request = init_home(tmp_path / "home", root_file=kit.write_root(tmp_path),
                                agent_id="plant-a-01", environment="plant-a",
                                labels={"site": "a"}, now=NOW)
    home = tmp_path / "home"
    for sub in ("inbox", "staging", "archive", "quarantine", "outbox"):
        assert (home / sub).is_dir()
    assert stat.S_IMODE((home / "keys" / "identity.key").stat().st_mode) == 0o600
    assert config.agent_id == "plant-a-01" and config.hub_id == kit.hub_id
    assert load_config(home).environment == "plant-a"
    keys = load_keys(config)
    # The enrollment request is signed by the identity key it announces.
    payload = loads_strict(
        verify_envelope(request.read_bytes(), payload_type=TYPE_ENROLLMENT,
                        trusted=[keys.identity.public], threshold=1).payload, 65536)
    assert PublicKey.from_hex(payload["ed25519_public"]) == keys.identity.public
    assert payload["x25519_public"] == keys.box.public.raw.hex()
    # The root is pinned in the journal.
    trust = Journal(config.journal_path).trust(kit.hub_id)
    assert trust is not None and trust.root_version == 1 and trust.sequence == 0


def test_init_refuses_existing_home(tmp_path: Path) -> None:
    kit = make_trust()
    root = kit.write_root(tmp_path)
    init_home(tmp_path / "home", root_file=root, agent_id="a1", now=NOW)
    before = (tmp_path / "home" / "keys" / "identity.key").read_bytes()
    with pytest.raises(HomeError, match="already holds an agent"):
        init_home(tmp_path / "home", root_file=root, agent_id="a1", now=NOW)
    assert (tmp_path / "home" / "keys" / "identity.key").read_bytes() == before


@pytest.mark.parametrize("mutate", [lambda b: b[:-2] + b"x}", lambda b: b"not json"])
def test_init_refuses_bad_root(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    kit = make_trust()
    bad = tmp_path / "bad.json"
    bad.write_bytes(mutate(kit.root_envelope))
    with pytest.raises(HomeError, match="not a valid hub root document"):
        init_home(tmp_path / "home", root_file=bad, agent_id="a1", now=NOW)
    assert not (tmp_path / "home" / "agent.toml").exists()


def test_init_refuses_expired_root(tmp_path: Path) -> None:
    kit = make_trust(now=NOW - 400 * 86400, days=30)
    with pytest.raises(HomeError, match="expired"):
        init_home(tmp_path / "home", root_file=kit.write_root(tmp_path), agent_id="a1", now=NOW)


def test_bad_agent_id(tmp_path: Path) -> None:
    kit = make_trust()
    with pytest.raises(HomeError, match="agent id"):
        init_home(tmp_path / "home", root_file=kit.write_root(tmp_path), agent_id="Bad Id!",
                  now=NOW)


def test_init_sets_the_time_floor_so_a_clock_set_back_refuses_an_expired_bundle(
    tmp_path: Path,
) -> None:
    import shutil
    import uuid

    from agent.inbox import ReadyItem
    from agent.service import Agent
    from bundle.manifest import Target
    from bundle.release import load_release
    from bundle.writer import release_manifest, write_bundle

    kit = make_trust()
    config, _ = init_home(tmp_path / "home", root_file=kit.write_root(tmp_path),
                          agent_id="site-01", environment="plant-a", now=NOW)
    trust = Journal(config.journal_path).trust(kit.hub_id)
    assert trust is not None and trust.time_floor == NOW  # max(root issued, now)
    # A bundle that expired a day before init; the site's clock is 30 days behind.
    release = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
    manifest, files = release_manifest(
        load_release(release), bundle_id=str(uuid.uuid4()), issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1, sequence=1,
        created=NOW - 10 * 86400, expires=NOW - 86400, counter=1, author="alice")
    bundle = write_bundle(tmp_path / "old.tgb", manifest, files, [kit.release_key]).paths[0]
    agent = Agent(config, clock=lambda: float(NOW - 30 * 86400))
    try:
        dest = config.inbox / bundle.name
        shutil.copyfile(bundle, dest)
        out = agent.process(ReadyItem(dest.name, (dest,), dest.stat().st_size, "single", 0.0))
        assert out.status == "rejected" and "expire" in out.summary, out.summary
        assert agent.journal.bundles() == []
        assert agent.journal.trust(kit.hub_id).sequence == 0  # type: ignore[union-attr]
    finally:
        agent.close()


def test_lock_names_the_holder_and_is_released(tmp_path: Path) -> None:
    from agent.home import lock_home

    kit = make_trust()
    init_home(tmp_path / "home", root_file=kit.write_root(tmp_path), agent_id="a1", now=NOW)
    first = lock_home(tmp_path / "home", "agent run")
    try:
        with pytest.raises(HomeError, match=rf"in use by another process \(pid {os.getpid()}: "
                                            "agent run"):
            lock_home(tmp_path / "home", "agent apply")
    finally:
        first.release()
    lock_home(tmp_path / "home", "agent apply").release()
