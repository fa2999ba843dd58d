"""A personal API token from the browser to a CI-like process: alice signs in through the
real IdP in Debian's Chromium, issues a token on the API tokens page (shown once), a real
``tiangong remote`` process uploads a release with it to the real ``hub serve``, her own
browser cookies get nothing from the API, and once she revokes it the token is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import TIANGONG
from tests.fixtures.saml_idp import SamlIdP
from tests.web.browser import (
    HELLO,
    LiveHub,
    Shots,
    chromium,
    live_hub,
    new_context,
    sign_in,
)

__all__ = ["chromium", "live_hub"]  # fixtures used by this module

CLI_TIMEOUT_S = 120.0  # seconds per tiangong remote process


def _remote(hub: LiveHub, token_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIANGONG, "remote", "--url", hub.base_url, "--token-file", str(token_file), *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def test_token_issued_in_the_browser_works_for_a_process_until_revoked(
    live_hub: LiveHub, saml_idp: SamlIdP, chromium: Browser, tmp_path: Path
) -> None:
    hub, shots = live_hub, Shots("api-tokens")
    page = new_context(chromium).new_page()
    sign_in(page, hub, saml_idp, "alice")
    page.get_by_role("link", name="API tokens").click()
    page.locator("#token-name").fill("ci-hello")
    page.locator("#scope-read").check()
    page.locator("#scope-releases-write").check()
    page.locator("#token-days").fill("7")
    page.locator("#issue-button").click()
    expect(page.locator("#new-token")).to_contain_text("shown only this once")
    secret = page.locator("#token-secret").inner_text().strip()
    assert secret.startswith("tgp_")
    shots.take(page, "token-issued")

    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    made = _remote(hub, token_file, "releases", "upload", str(HELLO), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["author"] == "alice"

    # The signed-in browser's cookies are worth nothing to the API.
    answer = page.request.get(f"{hub.base_url}/api/v1/me")
    assert answer.status == 401 and answer.json()["error"] == "unauthorized"

    page.goto(f"{hub.base_url}/tokens/")
    assert secret not in page.content()  # shown once, never again
    row = page.locator(f"#my-tokens tr[data-token='{secret.split('_')[0]}_"
                       f"{secret.split('_')[1]}']")
    expect(row.locator(".token-state")).to_have_text("active")
    row.get_by_role("button", name="Revoke token ci-hello").click()
    expect(row.locator(".token-state")).to_contain_text("revoked")
    shots.take(page, "token-revoked")
    refused = _remote(hub, token_file, "whoami")
    assert refused.returncode == 1 and "was revoked at" in refused.stderr
