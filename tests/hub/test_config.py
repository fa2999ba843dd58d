"""Configuration: TOML file, TIANGONG_HUB_* variables, precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import DEFAULT_BUNDLE_EXPIRY_S, HubConfig, load_config
from hub.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.data_dir == tmp_path
    assert cfg.database_url == f"sqlite:///{tmp_path / 'hub.db'}"
    assert cfg.bundle_expiry_s == DEFAULT_BUNDLE_EXPIRY_S
    assert cfg.releases_dir == tmp_path / "releases"


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text(
        '[hub]\nsecret_key = "from-file"\nbundle_expiry_s = 60\nbind = "0.0.0.0:1"\n'
    )
    env = {"TIANGONG_HUB_BUNDLE_EXPIRY_S": "120", "TIANGONG_HUB_DATA_DIR": str(tmp_path)}
    cfg = load_config(environ=env, overrides={"bind": "127.0.0.1:2"})
    assert cfg.secret_key == "from-file"
    assert cfg.bundle_expiry_s == 120
    assert cfg.bind == "127.0.0.1:2"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "data_dir is required"),
        ({"data_dir": "/x", "colour": "red"}, "unknown hub setting"),
        ({"data_dir": "/x", "bundle_expiry_s": "soon"}, "not a valid int"),
        ({"data_dir": "/x", "bundle_expiry_s": 0}, "must be positive"),
    ],
)
def test_bad_settings(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HubConfig.from_mapping(values)


def test_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text("[hub\n")
    with pytest.raises(ConfigError, match=r"hub\.toml"):
        load_config(tmp_path, environ={})
