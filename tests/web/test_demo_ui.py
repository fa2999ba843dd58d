"""``make demo-ui`` as a newcomer uses it: ``examples/demo-ui.sh`` leaves a hub running on
127.0.0.1 and prints the URL and the people's passwords; in Chromium (Playwright, Debian's
``/usr/bin/chromium``) each person signs in with the local password form and the four-eyes
flow works: alice (the author) has no approve button, bob approves, carol queues. A wrong
password is refused on the page. The hub the script left running is stopped by its pid.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import wait_for
from tests.fixtures.dbservers import free_port as _free_port
from tests.web.browser import REPO, STOP_TIMEOUT_S, Shots, chromium, new_context

__all__ = ["chromium"]  # fixture used by this module

SCRIPT_TIMEOUT_S = 180.0  # seconds for demo-ui.sh: init, people, a release, the hub up
_PERSON = re.compile(r"^  (\w+)\s+(\S+-demo-password)\s", re.MULTILINE)


@dataclass
class DemoUI:
    url: str
    passwords: dict[str, str]
    output: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def demo_ui(tmp_path: Path) -> Iterator[DemoUI]:
    out = tmp_path / "demo-ui-out"
    env = {**os.environ, "TIANGONG_DEMO_UI_OUT": str(out),
           "TIANGONG_DEMO_UI_PORT": str(_free_port()),
           "TIANGONG_BIN": str(Path(sys.executable).parent / "tiangong")}
    env.pop("TIANGONG_HUB_CONFIG", None)
    proc = subprocess.run(["bash", "examples/demo-ui.sh"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=SCRIPT_TIMEOUT_S, check=False)
    pid_file = out / "hub.pid"
    try:
        assert proc.returncode == 0, f"demo-ui.sh exited {proc.returncode}:\n{proc.stdout}\n" \
                                     f"{proc.stderr}"
        url = re.search(r"web UI is running: (http://127\.0\.0\.1:\d+)", proc.stdout)
        assert url is not None, proc.stdout
        # gunicorn's control socket is the hub's own, in its data directory (the master
        # opens it beside its workers, so it may come a moment after /healthz answers).
        control = out / "hub" / "gunicorn.ctl"
        wait_for(lambda: control.exists() and stat.S_ISSOCK(control.stat().st_mode),
                 STOP_TIMEOUT_S, f"gunicorn's control socket {control}")
        yield DemoUI(url.group(1), dict(_PERSON.findall(proc.stdout)), proc.stdout)
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not _alive(pid), STOP_TIMEOUT_S, "the demo hub to stop")


def _sign_in(page: Page, demo: DemoUI, who: str) -> None:
    page.goto(f"{demo.url}/login")
    page.wait_for_url(re.compile(re.escape(f"{demo.url}/login/local") + ".*"))
    page.get_by_label("User name").fill(who)
    page.get_by_label("Password").fill(demo.passwords[who])
    page.locator("#sign-in-button").click()
    page.wait_for_url(f"{demo.url}/")
    expect(page.locator("#username")).to_have_text(who)


def test_demo_ui_sign_in_and_four_eyes(demo_ui: DemoUI, chromium: Browser) -> None:
    demo, shots = demo_ui, Shots("demo-ui")
    assert set(demo.passwords) == {"alice", "bob", "carol", "audrey", "admin"}
    assert "Stop it: kill" in demo.output

    # A wrong password is refused on the page, and nobody is signed in.
    stranger = new_context(chromium).new_page()
    stranger.goto(f"{demo.url}/login/local")
    stranger.get_by_label("User name").fill("bob")
    stranger.get_by_label("Password").fill("not bob's password")
    stranger.locator("#sign-in-button").click()
    expect(stranger.locator("#login-error")).to_have_text("Wrong user name or password.")
    shots.take(stranger, "wrong-password")

    pages = {}
    for who in ("alice", "bob", "carol"):
        page = new_context(chromium).new_page()
        _sign_in(page, demo, who)
        pages[who] = page
    alice, bob, carol = pages["alice"], pages["bob"], pages["carol"]
    release = f"{demo.url}/releases/hello/1.0.0"

    alice.goto(release)
    expect(alice.locator("#release-state")).to_have_text("submitted")
    expect(alice.locator("#approve-button")).to_have_count(0)  # her own release
    shots.take(alice, "alice-own-release")

    bob.goto(release)
    bob.locator("#approve-button").click()
    expect(bob.locator("#release-state")).to_have_text("approved")
    shots.take(bob, "bob-approved")

    carol.goto(release)
    carol.locator("#queue-environment").select_option("plant-a")
    carol.locator("#queue-button").click()
    expect(carol.get_by_role("status").filter(has_text="Queued release")).to_be_visible()
    shots.take(carol, "carol-queued")
