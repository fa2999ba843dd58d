"""Fixtures shared by the agent's in-process tests: an agent home with an injected clock."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent
from bundle.reader import ExpectResult, VerifierState, verify_path
from tests.fixtures.trust import NOW, TrustKit, make_trust


class Clock:
    """A settable wall clock, starting at ``NOW``."""

    def __init__(self) -> None:
        self.t = float(NOW)

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Agent, TrustKit, Clock]]:
    """An initialised agent ``site-01`` in ``plant-a`` trusting a fresh test hub."""
    kit = make_trust()
    init_home(tmp_path / "home", root_file=kit.write_root(tmp_path), agent_id="site-01",
              environment="plant-a", now=NOW)
    clock = Clock()
    agent = Agent(load_config(tmp_path / "home"), clock=clock)
    yield agent, kit, clock
    agent.close()


def drop(agent: Agent, bundle: Path) -> ReadyItem:
    """Copy ``bundle`` into the agent's inbox; the inbox item it makes."""
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    return ReadyItem(name=dest.name, paths=(dest,), size=dest.stat().st_size, kind="single",
                     first_seen=0.0)


def verified_result(agent: Agent, kit: TrustKit, path: Path, tmp: Path) -> dict[str, Any]:
    """The result file ``path`` verified as the hub does (the agent's key, ``kit``'s hub);
    its ``result`` as JSON."""
    staging = tmp / f"hub-staging-{uuid.uuid4().hex[:6]}"
    staging.mkdir(mode=0o700)
    vb = verify_path(path, trusted_root=kit.trusted, state=VerifierState(),
                     expect=ExpectResult(hub_id=kit.hub_id, agent_id="site-01",
                                         agent_key=agent.keys.identity.public),
                     staging_dir=staging, clock=lambda: NOW)
    assert vb.manifest.result is not None
    return vb.manifest.result.to_json()
