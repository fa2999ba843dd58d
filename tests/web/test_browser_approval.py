"""An approver approves a release in real Chromium by signing with WebCrypto Ed25519.

A real ``tiangong hub serve`` (local password sign-in) serves the release page; Chromium
(Debian's, driven by Playwright) signs in as alice, registers her approver public key on
"My keys", picks her private key file on the release page, and signs. The page fetches the
bytes to sign from the hub and posts only the payload and the signature: the test records
every request the page sends and checks that the private key's secret is in none of them.
The hub stores an envelope that verifies with alice's key, over this release's content hash.
The key is alice's real approver key (Argon2id-protected, which a browser cannot open),
exported with ``tiangong keys export-web`` to a web key file the page opens with WebCrypto
(PBKDF2 + AES-GCM) and its passphrase; the Argon2id file and a wrong passphrase are refused
in the page, and nothing is stored.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from signing.approvals import peek_approval
from signing.envelope import count_valid, parse_envelope
from signing.webkey import decode_web_key
from tests.e2e.conftest import TIANGONG, run
from tests.fixtures.dbservers import free_port
from tests.web.browser import (
    HELLO,
    Shots,
    chromium,
    new_context,
    served_hub,
)

__all__ = ["chromium"]  # fixture used by this module

PASSWORD = "alice-browser-password"
WEB_PASSPHRASE = "Grüße, alice"  # non-ASCII: the page must NFC-encode it as the CLI does


@dataclass
class Hub:
    url: str
    data: Path

    def cli(self, *args: str, user: str = "admin", stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*TIANGONG, "hub", "--data-dir", str(self.data), "--local-admin", user, *args],
            input=stdin, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with local sign-in, alice (approver), dev's submitted hello 1.0.0, served by
    ``tiangong hub serve`` on a free loopback port."""
    data = tmp_path / "hub"
    run("hub", "--data-dir", str(data), "init", "--admin", "admin", "--insecure-no-passphrase")
    cfg = data / "hub.toml"
    cfg.write_text(cfg.read_text() + "\n[web]\nsecure_cookies = false\nlocal_login = true\n")
    port = free_port()
    h = Hub(f"http://127.0.0.1:{port}", data)
    h.cli("environments", "create", "plant-a")
    for name, role in (("dev", "developer"), ("alice", "approver")):
        h.cli("users", "create", name)
        h.cli("users", "grant", name, role)
    h.cli("users", "set-password", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    h.cli("releases", "create", str(HELLO), "--create-product", user="dev")
    h.cli("releases", "submit", "hello", "1.0.0", user="dev")
    with served_hub(data, port, tmp_path / "hub.log", workers=1):
        yield h


def _sign_in(page: Page, hub: Hub) -> None:
    page.goto(f"{hub.url}/login/local")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("#sign-in-button").click()
    page.wait_for_url(f"{hub.url}/")


def _approvals(hub: Hub) -> list[dict[str, object]]:
    shown = json.loads(hub.cli("releases", "show", "hello", "1.0.0", "--json").stdout)
    return shown["approvals"]  # type: ignore[no-any-return]


def test_browser_signs_an_approval_with_webcrypto(
    hub: Hub, chromium: Browser, tmp_path: Path
) -> None:
    # alice's approver key, made and exported for the browser with the real CLI
    env = {"TIANGONG_KEY_PASSPHRASE": "alice's key passphrase"}
    run("keys", "generate", "--role", "approver", "--label", "alice", "-o",
        str(tmp_path / "alice.key"), "--kdf-profile", "interactive", env=env)
    (tmp_path / "web-pass").write_text(WEB_PASSPHRASE + "\n")
    run("keys", "export-web", str(tmp_path / "alice.key"), "-o", str(tmp_path / "alice.webkey"),
        "--web-passphrase-file", str(tmp_path / "web-pass"), env=env)
    key = decode_web_key((tmp_path / "alice.webkey").read_bytes(), WEB_PASSPHRASE)
    secret = key.seed
    secret_b64 = base64.b64encode(secret).decode()
    sent: list[bytes] = []

    def record(request: Request) -> None:
        sent.append((request.url + (request.post_data or "")).encode("utf-8", "replace")
                    + (request.post_data_buffer or b""))

    shots = Shots("browser-approval")
    page = new_context(chromium).new_page()
    page.on("request", record)
    _sign_in(page, hub)
    page.locator("#my-keys-link").click()
    page.locator("#public-key-file").set_input_files(str(tmp_path / "alice.key.pub"))
    page.locator("#add-key-button").click()
    expect(page.locator(f'tr[data-key="{key.key_id}"]')).to_be_visible()
    shots.take(page, "my-keys")

    page.goto(f"{hub.url}/releases/hello/1.0.0")
    # the Argon2id-protected key file cannot be opened in the page, nor the web key file
    # with a wrong passphrase: said on the page, nothing stored
    page.locator("#sign-environment").select_option("plant-a")
    page.locator("#sign-key-file").set_input_files(str(tmp_path / "alice.key"))
    page.locator("#sign-button").click()
    expect(page.locator("#sign-status")).to_contain_text("tiangong keys export-web")
    page.locator("#sign-key-file").set_input_files(str(tmp_path / "alice.webkey"))
    page.locator("#sign-passphrase").fill("not the passphrase")
    page.locator("#sign-button").click()
    expect(page.locator("#sign-status")).to_contain_text("wrong passphrase")
    assert _approvals(hub) == []

    page.locator("#sign-passphrase").fill(WEB_PASSPHRASE)
    page.locator("#sign-comment").fill("checked in the browser")
    page.locator("#sign-button").click()
    expect(page.locator(".flash")).to_contain_text(
        f"You approved release hello 1.0.0 for plant-a, signed by key {key.key_id[:16]}")
    expect(page.locator(f'[data-signed="{key.key_id}"]')).to_be_visible()
    shots.take(page, "approved")

    (row,) = _approvals(hub)
    assert row["by"] == "alice" and row["environment"] == "plant-a"
    assert row["signed_by"] == key.key_id and row["comment"] == "checked in the browser"
    # the private key never left the page, in any encoding
    for blob in sent:
        for form in (secret, secret_b64.encode(), secret.hex().encode(),
                     base64.urlsafe_b64encode(secret).rstrip(b"=")):
            assert form not in blob
    # what the hub stored verifies with alice's key, over this release
    envelope = _stored_envelope(hub)
    parsed, doc = peek_approval(envelope)
    assert count_valid(parse_envelope(envelope), [key.public])
    shown = json.loads(hub.cli("releases", "show", "hello", "1.0.0", "--json").stdout)
    assert doc.content_hash == shown["content_hash"]
    assert parsed.signatures[0].keyid == key.key_id


def _stored_envelope(hub: Hub) -> bytes:
    from sqlalchemy import select

    from hub.config import load_config
    from hub.db import Approval, make_engine

    engine = make_engine(load_config(hub.data).database_url)
    try:
        with engine.connect() as conn:
            envelope = conn.execute(select(Approval.envelope)).scalar_one()
    finally:
        engine.dispose()
    assert envelope is not None
    return bytes(envelope)
