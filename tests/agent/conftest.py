"""Fixtures shared by the agent's in-process tests: an agent home with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.service import Agent
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
