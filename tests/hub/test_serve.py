"""``hub serve``'s gunicorn settings: the control socket is one per hub data directory."""

from __future__ import annotations

from pathlib import Path

from hub.config import HubConfig
from hub.serve import CONTROL_SOCKET, MAX_SOCKET_PATH_BYTES, gunicorn_options


def test_control_socket_is_in_the_data_directory(tmp_path: Path) -> None:
    a = gunicorn_options(HubConfig(data_dir=tmp_path / "a"))
    b = gunicorn_options(HubConfig(data_dir=tmp_path / "b"))
    assert a["control_socket"] == str(tmp_path / "a" / CONTROL_SOCKET)
    assert b["control_socket"] == str(tmp_path / "b" / CONTROL_SOCKET)
    assert a["control_socket_mode"] == 0o600
    assert "control_socket_disable" not in a


def test_a_data_directory_too_long_for_a_socket_gets_none(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH_BYTES - len(str(tmp_path))))
    options = gunicorn_options(HubConfig(data_dir=deep))
    assert options["control_socket_disable"] is True
    assert "control_socket" not in options
