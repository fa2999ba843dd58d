"""The web "Run…" form in real Chromium (Debian's, driven by Playwright) against a real
`hub serve` with its live server and a real live agent: carol (developer and operator) opens
the agent's page, clicks "Run…", types a shell script and a reason, and lands on the
deployment's page, whose live log shows the script's output as the agent streams it; the
environment's ad-hoc policy ("no second person", set by the admin) let it go at once, and
the script ran exactly once at the site."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.conftest import TIANGONG, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site
from tests.e2e.test_live_processes import site as site  # the fixture
from tests.fixtures.dbservers import free_port
from tests.web.browser import Shots, chromium, new_context

__all__ = ["chromium", "site"]  # fixtures used by this module

PASSWORD = "carol-browser-password"


@pytest.fixture
def served(site: Site) -> Iterator[tuple[Site, str]]:
    """The site's hub with local sign-in for carol, served with its live server, and the
    agent online."""
    cfg = site.data / "hub.toml"
    cfg.write_text(cfg.read_text() + "\n[web]\nsecure_cookies = false\nlocal_login = true\n")
    site.hub("users", "grant", "carol", "developer")
    subprocess.run([*TIANGONG, "hub", "--data-dir", str(site.data), "--local-admin", "admin",
                    "users", "set-password", "carol", "--password-stdin"],
                   input=PASSWORD + "\n", text=True, capture_output=True, check=True,
                   timeout=DEADLINE, env={**site.env})
    site.hub("environments", "adhoc-policy", "plant-a", "--required", "0")
    port = free_port()
    site.start_hub("hub.log", http_port=port)
    site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to connect to the live server")
    yield site, f"http://127.0.0.1:{port}"


def test_run_a_script_from_the_agent_page_and_watch_it_live(
        served: tuple[Site, str], chromium: Browser) -> None:
    site, url = served
    shots = Shots("browser-run")
    page = new_context(chromium).new_page()
    page.goto(f"{url}/login/local")
    page.get_by_label("User name").fill("carol")
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("#sign-in-button").click()
    page.wait_for_url(f"{url}/")

    page.goto(f"{url}/agents/site-01")
    page.locator("#run-link").click()
    expect(page.locator("#run-policy")).to_have_text("In plant-a, ad-hoc runs need no approval.")
    page.locator("#run-kind").select_option("shell")
    page.locator("#run-text").fill(f'echo "hello from the browser"\necho ran >> "{site.marker}"\n')
    page.locator("#run-reason").fill("check the site answers")
    shots.take(page, "run-form")
    page.locator("#run-button").click()

    page.wait_for_url(re.compile(re.escape(url) + r"/deployments/\d+$"))
    expect(page.locator("#live-log")).to_contain_text("hello from the browser",
                                                      timeout=DEADLINE * 1000)
    expect(page.locator("#live-finished")).to_be_visible(timeout=DEADLINE * 1000)
    shots.take(page, "run-followed")
    wait_for(lambda: site.state_is("succeeded"), DEADLINE, "the run's result to be imported")
    assert site.runs() == 1
    [dep] = site.hub_json("deployments", "list")
    assert dep["agent"] == "site-01" and dep["release"].startswith("adhoc ")
    [created] = site.audit("release.create")
    assert created["actor"] == "carol"
    [approved] = site.audit("release.policy_approve")
    assert approved["actor"] == "carol"
