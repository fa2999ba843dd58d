"""An approver approves a release in real Chromium by signing with WebCrypto Ed25519.

A real ``tiangong hub serve`` (local password sign-in) serves the release page; Chromium
(Debian's, driven by Playwright) signs in as alice, registers her approver public key on
"My keys", picks her private key file on the release page, and signs. The page fetches the
bytes to sign from the hub and posts only the payload and the signature: the test records
every request the page sends and checks that the private key's secret is in none of them.
The hub stores an envelope that verifies with alice's key, over this release's content hash.
A key file protected by a passphrase is refused in the page, and nothing is stored.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from signing.approvals import peek_approval
from signing.envelope import count_valid, parse_envelope
from signing.keys import SigningKey
from tests.e2e.conftest import TIANGONG, run, wait_for
from tests.hub.services.approval_helpers import private_file, public_file
from tests.web.browser import (
    HELLO,
    REPO,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Shots,
    chromium,
    new_context,
)

__all__ = ["chromium"]  # fixture used by this module

PASSWORD = "alice-browser-password"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with local sign-in, alice (approver), dev's submitted hello 1.0.0, served by
    ``tiangong hub serve`` on a free loopback port."""
    data = tmp_path / "hub"
    run("hub", "--data-dir", str(data), "init", "--admin", "admin", "--insecure-no-passphrase")
    cfg = data / "hub.toml"
    cfg.write_text(cfg.read_text() + "\n[web]\nsecure_cookies = false\nlocal_login = true\n")
    port = _free_port()
    h = Hub(f"http://127.0.0.1:{port}", data)
    h.cli("environments", "create", "plant-a")
    for name, role in (("dev", "developer"), ("alice", "approver")):
        h.cli("users", "create", name)
        h.cli("users", "grant", name, role)
    h.cli("users", "set-password", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    h.cli("releases", "create", str(HELLO), "--create-product", user="dev")
    h.cli("releases", "submit", "hello", "1.0.0", user="dev")
    log = (tmp_path / "hub.log").open("wb")
    proc = subprocess.Popen(
        [*TIANGONG, "hub", "--data-dir", str(data), "serve", "--bind", f"127.0.0.1:{port}",
         "--workers", "1"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the hub exited with {proc.returncode}: "
                                     + (tmp_path / "hub.log").read_text(errors="replace"))
            return _healthy(f"{h.url}/healthz")

        wait_for(up, START_TIMEOUT_S, f"the hub to answer {h.url}/healthz")
        yield h
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
        log.close()


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
    key = SigningKey.generate()
    (tmp_path / "alice.key.pub").write_bytes(public_file(key, label="alice"))
    (tmp_path / "alice.key").write_bytes(private_file(key))
    locked = tmp_path / "alice-locked.key"
    run("keys", "generate", "--role", "approver", "-o", str(locked), "--kdf-profile",
        "interactive", env={"TIANGONG_KEY_PASSPHRASE": "a passphrase"})
    secret_b64 = json.loads((tmp_path / "alice.key").read_text())["secret"]
    secret = base64.b64decode(secret_b64)
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
    # a passphrase-protected key file cannot be opened in the page: said, nothing sent
    page.locator("#sign-environment").select_option("plant-a")
    page.locator("#sign-key-file").set_input_files(str(locked))
    page.locator("#sign-button").click()
    expect(page.locator("#sign-status")).to_contain_text("protected by a passphrase")
    assert _approvals(hub) == []

    page.locator("#sign-key-file").set_input_files(str(tmp_path / "alice.key"))
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
