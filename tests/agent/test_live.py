"""agent.live: the reconnect backoff (the connection work is in tests/e2e/test_live.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.live import LiveClient
from signing.keys import SigningKey


class _Keys:
    identity = SigningKey.generate()


def _config(tmp_path: Path, hub_url: str | None = "ws://127.0.0.1:1/live") -> AgentConfig:
    return AgentConfig(home=tmp_path, agent_id="site-01", environment="test",
                       hub_id="hub-test", labels={}, hub_url=hub_url,
                       allow_insecure_loopback=True)


@pytest.mark.parametrize("rng", [0.0, 0.5, 1.0])
def test_backoff_doubles_with_jitter_and_is_bounded(tmp_path: Path, rng: float) -> None:
    client = LiveClient(_config(tmp_path), keys=_Keys(), min_backoff=1.0,  # type: ignore[arg-type]
                        max_backoff=30.0, rng=lambda: rng)
    delays = [client.backoff(n) for n in range(1, 10)]
    ceilings = [min(30.0, 2.0 ** (n - 1)) for n in range(1, 10)]
    assert delays == [c * (0.5 + 0.5 * rng) for c in ceilings]
    assert max(delays) <= 30.0


def test_no_hub_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no hub_url"):
        LiveClient(_config(tmp_path, None), keys=_Keys())  # type: ignore[arg-type]
