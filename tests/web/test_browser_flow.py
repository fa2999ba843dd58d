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

import re
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect

from tests.fixtures.saml_idp import SamlIdP
from tests.web.browser import (
    AGENT_ID,
    ENVIRONMENT,
    HELLO_STEPS,
    TABLET,
    LiveHub,
    Shots,
    chromium,
    csrf_token,
    live_hub,
    new_context,
    release_archive,
    run_agent_on,
    sign_in,
)

__all__ = ["chromium", "live_hub"]  # fixtures used by this module


def watch_console(page: Page, hub: LiveHub, problems: list[str]) -> None:
    """Collect what goes wrong on ``page``: script errors, console errors (the browser
    logs Content-Security-Policy violations there) and hub responses of 400 or more (the
    IdP's own pages are not the hub's business; ``/favicon.ico``, asked for by the browser
    itself, is not served by the hub)."""

    def console(m: ConsoleMessage) -> None:
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            problems.append(f"{page.url}: console error: {m.text}")

    def response(r: Response) -> None:
        if (r.status >= 400 and r.url.startswith(hub.base_url)
                and not r.url.endswith("/favicon.ico")):
            problems.append(f"{page.url}: {r.request.method} {r.url}: {r.status}")

    page.on("console", console)
    page.on("response", response)
    page.on("pageerror", lambda e: problems.append(f"{page.url}: page error: {e}"))


def force_approve(page: Page, hub: LiveHub) -> int:
    """POST the approval form's fields with the session's cookies and CSRF token, as a
    hand-made form would; the status of the answer."""
    resp = page.request.post(
        f"{hub.base_url}/releases/hello/1.0.0/approve",
        form={"csrf_token": csrf_token(page), "comment": "my own", "environment": ""},
        max_redirects=0,
    )
    return resp.status


def queue_deployment(carol: Page, hub: LiveHub, shots: Shots) -> None:
    """carol queues hello 1.0.0 for plant-a with the release page's Deploy form."""
    carol.goto(f"{hub.base_url}/releases/hello/1.0.0")
    expect(carol.locator("#release-state")).to_have_text("approved")
    deploy = carol.get_by_role("region", name="Deploy")
    deploy.get_by_label("Environment").select_option(ENVIRONMENT)
    shots.take(carol, "release-deploy")
    carol.locator("#queue-button").click()
    expect(carol.get_by_role("status").filter(has_text="Queued release")).to_be_visible()
    carol.get_by_role("link", name="Deployments").click()
    expect(carol.locator("#deployments-table")).to_contain_text("hello 1.0.0")
    expect(carol.locator("#deployments-table")).to_contain_text("queued")
    shots.take(carol, "deployments-queued")


def test_release_flow_in_the_browser(
    live_hub: LiveHub, saml_idp: SamlIdP, chromium: Browser, tmp_path: Path
) -> None:
    hub, shots = live_hub, Shots("release-flow")

    # Each person has a browser profile of their own; signing in creates their hub user
    # with the roles their IdP groups map to.
    pages = {}
    problems: list[str] = []  # console errors (CSP violations among them), page errors
    for who, role in (("alice", "developer"), ("bob", "approver"), ("carol", "operator"),
                      ("dave", None)):
        # bob approves on a tablet, with the keyboard only.
        page = new_context(chromium, TABLET if who == "bob" else None).new_page()
        watch_console(page, hub, problems)
        sign_in(page, hub, saml_idp, who)
        if role is None:
            expect(page.locator("#roles")).to_contain_text("none yet")
        else:
            expect(page.locator("#roles")).to_have_text(role)
        shots.take(page, f"home-{who}")
        pages[who] = page
    alice, bob, carol, dave = (pages[w] for w in ("alice", "bob", "carol", "dave"))

    # dave has no IdP group: an administrator grants him auditor by hand.
    hub.cli("users", "grant", "dave", "auditor")
    dave.reload()
    expect(dave.locator("#roles")).to_have_text("auditor")

    # alice uploads a release archive: a draft; she submits it.
    alice.get_by_role("link", name="Releases").click()
    alice.locator("#archive").set_input_files(release_archive(tmp_path))
    shots.take(alice, "releases-upload")
    alice.locator("#upload-button").click()
    alice.wait_for_url(f"{hub.base_url}/releases/hello/1.0.0")
    expect(alice.locator("#release-state")).to_have_text("draft")
    shots.take(alice, "release-draft")
    alice.locator("#files-table").get_by_role("link").first.click()
    expect(alice.locator(".highlight")).to_be_visible()  # syntax-highlighted source
    shots.take(alice, "release-file")
    alice.go_back()
    alice.locator("#submit-button").click()
    expect(alice.locator("#release-state")).to_have_text("submitted")

    # She cannot approve her own release: no button, and a forced POST is refused — as a
    # developer (403), and still when an admin makes her an approver too (four eyes: 409).
    expect(alice.locator("#author-cannot-approve")).to_be_visible()
    expect(alice.locator("#approve-button")).to_have_count(0)
    shots.take(alice, "release-submitted-author")
    assert force_approve(alice, hub) == 403
    hub.cli("users", "grant", "alice", "approver")
    alice.reload()
    expect(alice.locator("#author-cannot-approve")).to_be_visible()
    expect(alice.locator("#approve-button")).to_have_count(0)
    assert force_approve(alice, hub) == 409
    alice.reload()
    expect(alice.locator("#release-state")).to_have_text("submitted")
    expect(alice.locator("#no-approvals")).to_be_visible()

    # bob approves it for every environment, on a tablet, from the keyboard: the comment
    # field, then Tab to the Approve button, then Enter.
    bob.goto(f"{hub.base_url}/releases/hello/1.0.0")
    expect(bob.locator("#release-state")).to_have_text("submitted")
    bob.get_by_label("Approve for").select_option(label="every environment")
    bob.get_by_label("Comment").fill("Reviewed in the browser")
    shots.take(bob, "release-approve-tablet")
    bob.get_by_label("Comment").press("Tab")
    expect(bob.locator("#approve-button")).to_be_focused()
    bob.keyboard.press("Enter")
    expect(bob.locator("#release-state")).to_have_text("approved")
    expect(bob.locator("#approvals-table")).to_contain_text("bob")
    shots.take(bob, "release-approved")

    # carol queues it for plant-a.
    queue_deployment(carol, hub, shots)

    # carol exports plant-a's media as a download.
    carol.get_by_role("link", name="Media").click()
    expect(carol.locator(f"#export-button-{ENVIRONMENT}")).to_be_visible()
    shots.take(carol, "media")
    carol.locator(f"#export-button-{ENVIRONMENT}").click()
    expect(carol.locator("#download-export")).to_be_visible()
    shots.take(carol, "media-export")
    with carol.expect_download() as info:
        carol.locator("#download-export").click()
    tar_path = tmp_path / info.value.suggested_filename
    info.value.save_as(tar_path)

    # The stick reaches the site: a real agent process runs the bundle from its file drop.
    results = run_agent_on(hub, tar_path, tmp_path)
    assert len(results) == 1, results

    # carol imports the result file by upload.
    carol.get_by_role("link", name="Media").click()
    carol.locator("#import-files").set_input_files(results)
    carol.locator("#import-button").click()
    expect(carol.locator("#import-summary")).to_contain_text("1 imported")
    shots.take(carol, "media-import")

    # The deployment page shows every step succeeded.
    carol.locator("#import-table").get_by_role("link", name=re.compile(r"^#\d+$")).click()
    expect(carol.locator("#deployment-state")).to_have_text("succeeded")
    statuses = carol.locator("#steps-table tbody tr[data-step] td:nth-child(3)")
    expect(statuses).to_have_text(["succeeded"] * HELLO_STEPS)
    shots.take(carol, "deployment")

    # The environment, its agent (heard from through the imported result) and the
    # dashboard's deployed version.
    carol.goto(f"{hub.base_url}/environments/{ENVIRONMENT}")
    expect(carol.locator("#environment-name")).to_have_text(ENVIRONMENT)
    shots.take(carol, "environment")
    carol.goto(f"{hub.base_url}/agents/{AGENT_ID}")
    expect(carol.locator("#agent-status")).to_have_text("enrolled")
    expect(carol.locator("#agent-last-seen")).not_to_contain_text("never")
    shots.take(carol, "agent")
    carol.get_by_role("link", name="Dashboard").click()
    expect(carol.locator("#deployed-table")).to_contain_text("1.0.0")
    shots.take(carol, "dashboard")

    # dave (auditor) verifies the audit chain: valid.
    dave.get_by_role("link", name="Audit").click()
    dave.locator("#verify-button").click()
    expect(dave.locator("#verify-result")).to_have_attribute("data-result", "valid")
    expect(dave.locator("#verify-result")).to_contain_text("valid")
    shots.take(dave, "audit")

    for page in pages.values():
        page.context.close()
    assert not problems, "the browser reported:\n" + "\n".join(problems)
