"""A rollout started and followed in the browser (issue 14 §1, §5): carol, an operator, signs
in through the real IdP in Debian's Chromium, starts a rollout of an approved release from its
page's form (CSRF token and all), lands on the rollout page, and — while that page stays
open, never reloaded — the agent runs the bundle and its result is imported by real
processes: the page shows the agent's deployment move from queued to succeeded and the
rollout end, by polling its small JSON state (static/rollout-live.js)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import TIANGONG, wait_for
from tests.fixtures.saml_idp import SamlIdP
from tests.web.browser import (
    AGENT_ID,
    ENVIRONMENT,
    HELLO,
    PAGE_TIMEOUT_MS,
    REPO,
    LiveHub,
    Shots,
    chromium,
    live_hub,
    new_context,
    sign_in,
)

__all__ = ["chromium", "live_hub"]  # fixtures used by this module

AGENT_TIMEOUT_S = 120.0  # seconds for the agent to run the bundle


def test_a_rollout_started_in_the_browser_is_followed_live_until_done(
    live_hub: LiveHub, saml_idp: SamlIdP, chromium: Browser, tmp_path: Path
) -> None:
    hub, shots = live_hub, Shots("rollouts")
    for name, role in (("alice", "developer"), ("bob", "approver")):
        hub.cli("users", "create", name)
        hub.cli("users", "grant", name, role)
    hub.cli("releases", "create", str(HELLO), "--create-product", user="alice")
    hub.cli("releases", "submit", "hello", "1.0.0", user="alice")
    hub.cli("releases", "approve", "hello", "1.0.0", user="bob")

    page = new_context(chromium).new_page()
    sign_in(page, hub, saml_idp, "carol")
    page.goto(f"{hub.base_url}/releases/hello/1.0.0")
    form = page.locator("#rollout-form")
    form.locator("#rollout-environment").select_option(ENVIRONMENT)
    form.locator("#rollout-canary").fill("1")
    form.locator("#rollout-max-failures").fill("0")
    form.locator("#rollout-on-failure").select_option("abort")
    shots.take(page, "rollout-form")
    form.locator("#rollout-button").click()
    page.wait_for_url(f"{hub.base_url}/rollouts/*", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#rollout-state")).to_have_text("running")
    row = page.locator(f"#batch-1 tr[data-agent='{AGENT_ID}']")
    expect(row.locator(".agent-state")).to_have_text("queued")
    page.evaluate("window.__stillTheSamePage = true")  # gone if the page reloads

    # A bad form is refused with the rule, and starts nothing.
    before = hub.cli("rollouts", "list", "--json").stdout
    other = new_context(chromium).new_page()
    sign_in(other, hub, saml_idp, "carol")
    other.goto(f"{hub.base_url}/releases/hello/1.0.0")
    other.locator("#rollout-batch").fill("half")
    other.locator("#rollout-button").click()
    expect(other.locator("body")).to_contain_text("batch 'half': give a number N or a "
                                                  "percentage P%")
    assert hub.cli("rollouts", "list", "--json").stdout == before

    # The site runs it (media here: export, drop, agent, import — all real processes).
    usb = tmp_path / "usb"
    usb.mkdir()
    hub.cli("export", "--environment", ENVIRONMENT, "--out", str(usb), user="carol")
    (bundle,) = usb.glob("*.tgb")
    shutil.copy(bundle, hub.agent_home / "inbox" / (bundle.name + ".part"))
    (hub.agent_home / "inbox" / (bundle.name + ".part")).rename(
        hub.agent_home / "inbox" / bundle.name)
    expect(row.locator(".agent-state")).to_have_text("exported")
    expect(row.locator(".agent-owes")).not_to_have_text("–")
    agent = subprocess.run([*TIANGONG, "agent", "run", "--once", "--home", str(hub.agent_home)],
                           capture_output=True, text=True, timeout=AGENT_TIMEOUT_S, cwd=REPO,
                           check=False)
    assert agent.returncode == 0, agent.stdout + agent.stderr
    results = hub.agent_home / "outbox"
    wait_for(lambda: any(results.glob("*.tgr")), AGENT_TIMEOUT_S, "the agent's result")
    hub.cli("import", str(results), user="carol")

    expect(row.locator(".agent-state")).to_have_text("succeeded", timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#rollout-state")).not_to_have_text("running",
                                                            timeout=PAGE_TIMEOUT_MS)
    expect(page.locator("#rollout-live-status")).to_contain_text("The rollout is ")
    assert page.evaluate("window.__stillTheSamePage === true")
    link = row.locator(".agent-state a")
    assert (link.get_attribute("href") or "").startswith("/deployments/")
    shots.take(page, "rollout-followed")
