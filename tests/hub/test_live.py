"""hub.live: where plain ws:// may be served (the connection work is in tests/e2e/test_live.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.errors import ConfigError
from hub.live import LiveHub, start_live
from tests.hub.conftest import Keys


def _hub(keys: Keys, tmp_path: Path) -> LiveHub:
    def no_db() -> Any:
        raise AssertionError("no database work expected")

    return LiveHub(session_factory=no_db, keys=keys.hub, data_dir=tmp_path, actor="op")


@pytest.mark.parametrize(("host", "allow", "why"), [
    ("127.0.0.1", False, "needs TLS"),
    ("0.0.0.0", True, "only loopback"),  # noqa: S104 - the address being refused
    ("hub.example", True, "only loopback"),
])
def test_plain_ws_is_refused_unless_allowed_on_loopback(keys: Keys, tmp_path: Path, host: str,
                                                       allow: bool, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        start_live(_hub(keys, tmp_path), host, 0, allow_insecure_loopback=allow)


def test_plain_ws_on_loopback_when_allowed(keys: Keys, tmp_path: Path) -> None:
    server = start_live(_hub(keys, tmp_path), "127.0.0.1", 0, allow_insecure_loopback=True)
    try:
        assert server.port > 0 and server.online == frozenset()
    finally:
        server.stop()
    assert not server.thread.is_alive()
