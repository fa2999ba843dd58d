"""The [web] and [saml] settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub.config import HubConfig
from hub.errors import ConfigError
from web.config import WebConfig, load_web_config


def test_defaults_have_no_saml_and_no_break_glass(tmp_path: Path) -> None:
    cfg = load_web_config(HubConfig(data_dir=tmp_path), environ={})
    assert cfg.saml is None
    assert cfg.break_glass.enabled is False
    assert cfg.secure_cookies is True


def test_reads_the_hub_toml_tables(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text(
        '[hub]\nsecret_key = "x"\n'
        "[web]\nidle_timeout_s = 60\nabsolute_timeout_s = 120\n"
        '[saml]\nsp_base_url = "https://hub.example.org/"\n'
        '[saml.attributes]\ngroups = "memberOf"\n'
        '[saml.group_roles]\nops = ["operator", "auditor"]\n'
    )
    cfg = load_web_config(HubConfig(data_dir=tmp_path), environ={})
    assert cfg.saml is not None
    assert cfg.saml.sp_entity_id == "https://hub.example.org/saml/metadata"
    assert cfg.saml.idp_metadata_file == tmp_path / "idp-metadata.xml"
    assert cfg.saml.attributes.groups == "memberOf"
    assert cfg.saml.group_roles["ops"] == ("operator", "auditor")
    assert cfg.saml.want_messages_signed is True
    assert (cfg.idle_timeout_s, cfg.absolute_timeout_s) == (60, 120)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"web": {"colour": "red"}}, "unknown web setting"),
        ({"saml": {}}, "sp_base_url is required"),
        ({"saml": {"sp_base_url": "ftp://x"}}, "http"),
        ({"saml": {"sp_base_url": "https://x", "group_roles": {"g": ["root"]}}}, "unknown role"),
        ({"saml": {"sp_base_url": "https://x", "sp_cert_file": "c.pem"}}, "go together"),
        ({"web": {"idle_timeout_s": 100, "absolute_timeout_s": 50}}, "at most"),
        ({"web": {"break_glass": {"enabled": True}}}, "password_hash is empty"),
    ],
)
def test_invalid_settings_are_refused(tmp_path: Path, doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebConfig.from_mapping(doc, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        (b"<html/>", "no IdP entity"),
        (b"not xml at all", "not IdP metadata"),
        (b"<x>" + b" " * (1024 * 1024) + b"</x>", "over"),
    ],
)
def test_unusable_idp_metadata_is_a_config_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    from web.config import SamlConfig
    from web.saml import build_settings

    path = tmp_path / "idp.xml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        build_settings(SamlConfig(sp_base_url="https://hub.example.org", idp_metadata_file=path))


def test_upload_and_login_caps_are_hub_toml_settings(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text(
        "[web]\nmax_upload_bytes = 1048576\nmax_unpack_ratio = 20\nmax_unpacked_files = 50\n"
        "local_login = true\nlogin_max_failures_per_user = 3\n"
    )
    cfg = load_web_config(HubConfig(data_dir=tmp_path), environ={})
    assert cfg.uploads.max_upload_bytes == 1048576 and cfg.uploads.max_unpack_ratio == 20
    assert cfg.uploads.max_unpacked_files == 50
    assert cfg.uploads.max_unpacked_total_bytes == 1024**3  # the default
    assert cfg.local_login is True and cfg.login_limits.max_failures_per_user == 3


@pytest.mark.parametrize(("line", "says"), [
    ("max_unpack_ratio = 0", "web.max_unpack_ratio must be positive, not 0"),
    ('max_upload_bytes = "lots"', "web.max_upload_bytes must be a whole number"),
    ("login_window_s = -5", "web.login_window_s must be positive, not -5"),
    ("local_login = 3", "web.local_login must be true or false"),
])
def test_bad_caps_are_refused_naming_the_setting(tmp_path: Path, line: str, says: str) -> None:
    (tmp_path / "hub.toml").write_text(f"[web]\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_web_config(HubConfig(data_dir=tmp_path), environ={})
