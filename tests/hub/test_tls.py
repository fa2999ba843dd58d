"""hub.tls (the live channel's private CA and server certificate), the TLS part of
``hub init`` / ``hub tls issue`` / enrollment responses, and the ``[live]`` settings."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hub.config import load_config
from hub.errors import ConfigError
from hub.tls import TlsFiles, create_ca, issue_server_certificate, load_server_tls
from tests.e2e.conftest import run

NOW = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)


def _names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def test_ca_and_server_certificate(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    ca = create_ca(files, "hub-test", NOW)
    cert = issue_server_certificate(files, ["hub.example", "10.0.0.5", "localhost"], NOW)
    assert _names(cert) == ["hub.example", "10.0.0.5", "localhost"]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=730)
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    tls = load_server_tls(files.server_cert, files.server_key)
    assert tls.binding == hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_ca_is_never_replaced(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    create_ca(files, "hub-test", NOW)
    before = files.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match="never replaced"):
        create_ca(files, "hub-test", NOW)
    assert files.ca_cert.read_bytes() == before


def test_reissue_keeps_the_ca_and_changes_key_and_names(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "tls")
    ca = create_ca(files, "hub-test", NOW)
    issue_server_certificate(files, ["old.example"], NOW)
    old_key = files.server_key.read_bytes()
    cert = issue_server_certificate(files, ["new.example"], NOW, days=10)
    assert _names(cert) == ["new.example"]
    assert files.server_key.read_bytes() != old_key
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=10)


@pytest.mark.parametrize(("names", "message"), [
    ([], "at least one name"),
    (["bad name"], "neither a host name nor an IP address"),
    (["-lead.example"], "neither a host name"),
    (["ex\u00e4mple.com"], "neither a host name"),
])
def test_bad_names_are_refused_and_nothing_is_written(tmp_path: Path, names: list[str],
                                                      message: str) -> None:
    files = TlsFiles(tmp_path / "tls")
    create_ca(files, "hub-test", NOW)
    with pytest.raises(ConfigError, match=message):
        issue_server_certificate(files, names, NOW)
    assert not files.server_cert.exists() and not files.server_key.exists()


def test_issue_without_a_ca_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hub init"):
        issue_server_certificate(TlsFiles(tmp_path / "tls"), ["localhost"], NOW)


def test_a_key_that_does_not_match_the_certificate_names_both_files(tmp_path: Path) -> None:
    a, b = TlsFiles(tmp_path / "a"), TlsFiles(tmp_path / "b")
    for files in (a, b):
        create_ca(files, "hub-test", NOW)
        issue_server_certificate(files, ["localhost"], NOW)
    with pytest.raises(ConfigError, match=f"{a.server_cert}.*{b.server_key}"):
        load_server_tls(a.server_cert, b.server_key)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.crt'}.*hub tls issue"):
        load_server_tls(tmp_path / "nope.crt", a.server_key)


# -- [live] settings


def test_live_table_and_environment(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text(
        '[hub]\nhub_id = "hub-x"\n\n[live]\nbind = "0.0.0.0:8401"\n'
        'tls_cert_file = "certs/live.crt"\ntls_key_file = "/etc/tiangong/live.key"\n')
    cfg = load_config(tmp_path, environ={})
    assert cfg.live_bind == "0.0.0.0:8401"
    assert cfg.live_tls_cert == tmp_path / "certs" / "live.crt"
    assert cfg.live_tls_key == Path("/etc/tiangong/live.key")
    assert not cfg.live_allow_insecure_loopback
    cfg = load_config(tmp_path, environ={"TIANGONG_HUB_LIVE_BIND": "127.0.0.1:9",
                                         "TIANGONG_HUB_LIVE_ALLOW_INSECURE_LOOPBACK": "true"})
    assert cfg.live_bind == "127.0.0.1:9" and cfg.live_allow_insecure_loopback


def test_live_defaults_are_the_files_hub_init_creates(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.live_bind == ""
    assert cfg.live_tls_cert == tmp_path / "tls" / "server.crt"
    assert cfg.live_tls_key == tmp_path / "tls" / "server.key"


def test_unknown_live_setting_is_named(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('[live]\nbind = "127.0.0.1:1"\nport = 8401\n')
    with pytest.raises(ConfigError, match=r"unknown \[live\] setting\(s\) port"):
        load_config(tmp_path, environ={})


# -- the CLI, as real processes


def test_init_issue_and_the_enrollment_response_carry_the_ca(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data)}
    out = run("hub", "init", "--admin", "admin", "--insecure-no-passphrase",
              "--tls-name", "hub.example", "--tls-name", "192.0.2.7", env=env)
    assert "live TLS cert" in out.stdout and "hub.example, 192.0.2.7" in out.stdout
    files = TlsFiles(data / "tls")
    ca_pem = files.ca_cert.read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    first = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert _names(first) == ["hub.example", "192.0.2.7"]

    out = run("hub", "tls", "issue", "--name", "hub2.example", "--days", "30", env=env)
    assert "hub2.example" in out.stdout and "restart" in out.stdout
    second = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert _names(second) == ["hub2.example"]
    second.verify_directly_issued_by(ca)
    assert files.ca_cert.read_bytes() == ca_pem  # agents keep their pin

    # An agent enrolled now gets the CA in its signed response and pins it.
    home = tmp_path / "agent"
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01")
    run("hub", "--local-admin", "admin", "environments", "create", "plant-a", env=env)
    request = next((home / "outbox").glob("enrollment-*.json"))
    response = tmp_path / "response.json"
    run("hub", "--local-admin", "admin", "agents", "enroll", str(request),
        "--environment", "plant-a", "--out", str(response), env=env)
    payload = json.loads(base64.b64decode(json.loads(response.read_bytes())["payload"]))
    assert payload["tls_ca"].encode() == ca_pem
    out = run("agent", "enroll-response", str(response), "--home", str(home))
    assert "live TLS CA pinned" in out.stdout
    assert (home / "trust" / "hub-ca.pem").read_bytes() == ca_pem

    bad = run("hub", "tls", "issue", "--name", "not a name", env=env, check=False)
    assert bad.returncode == 2 and "neither a host name" in bad.stderr
    assert x509.load_pem_x509_certificate(files.server_cert.read_bytes()) == second


def test_the_binding_is_the_certificate_agents_see(tmp_path: Path) -> None:
    """Own certificate by default; a TLS-terminating proxy's when binding_cert_file says so
    (then the live server may listen in plain ws:// on loopback behind it)."""
    from hub.config import with_overrides
    from hub.live import start_configured

    data = tmp_path / "hub"
    run("hub", "init", "--admin", "admin", "--insecure-no-passphrase", "--tls-name",
        "127.0.0.1", env={"TIANGONG_HUB_DATA_DIR": str(data)})
    own = x509.load_pem_x509_certificate((data / "tls" / "server.crt").read_bytes())
    proxy = TlsFiles(tmp_path / "proxy")
    create_ca(proxy, "proxy", NOW)
    proxy_cert = issue_server_certificate(proxy, ["hub.example"], NOW)
    cfg = with_overrides(load_config(data, environ={}), live_bind="127.0.0.1:0")
    for changes, cert in (({}, own),
                          ({"live_binding_cert_file": str(proxy.server_cert),
                            "live_allow_insecure_loopback": True}, proxy_cert)):
        server = start_configured(with_overrides(cfg, **changes))
        try:
            assert server.hub.binding == hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
        finally:
            server.stop()
    with pytest.raises(ConfigError, match="only"):
        start_configured(with_overrides(cfg, live_bind="0.0.0.0:0"),
                         allow_insecure_loopback=True)


def test_tls_init_for_a_hub_initialised_before_it_had_a_ca(tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data)}
    run("hub", "init", "--admin", "admin", "--insecure-no-passphrase", env=env)
    shutil.rmtree(data / "tls")  # as a hub made by an older version
    missing = run("hub", "tls", "issue", env=env, check=False)
    assert missing.returncode == 2 and "hub tls init" in missing.stderr
    out = run("hub", "tls", "init", "--name", "hub.example", env=env)
    assert "hub.example" in out.stdout
    files = TlsFiles(data / "tls")
    ca_pem = files.ca_cert.read_bytes()
    x509.load_pem_x509_certificate(files.server_cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_pem))
    again = run("hub", "tls", "init", env=env, check=False)
    assert again.returncode == 2 and "never replaced" in again.stderr
    assert files.ca_cert.read_bytes() == ca_pem
