"""The browser flow's harness: a real hub process behind the real SimpleSAMLphp IdP, a real
agent home enrolled in it, and Playwright driving Debian's Chromium.

* :func:`live_hub` (fixture): ``tiangong hub init`` in a temp data directory, a ``hub.toml``
  whose ``[saml]`` table points at the ``saml_idp`` fixture (``[web] secure_cookies =
  false``: plain http on loopback), environment ``plant-a`` with an agent home enrolled
  through ``tiangong hub import`` (as the e2e tests do), and ``tiangong hub serve``
  (gunicorn) as a separate process on the SP port the IdP trusts (``saml_sp_port``;
  borrowed from ``tests/web/conftest.py``'s in-process ``hub_server`` when that holds it).
* :func:`chromium` (fixture): ``/usr/bin/chromium``, headless. Never a downloaded browser:
  a missing binary fails with the command that installs it (``bash .ci/install-test-deps``).
* :func:`sign_in`: the SAML login as a person would do it (IdP form, password, back).
* :class:`Shots`: full-page screenshots under ``test-artifacts/browser/`` (git-ignored).

Every wait is Playwright's own (``expect``/``wait_for_url`` with a timeout) or a deadline
poll (:func:`tests.e2e.conftest.wait_for`); nothing sleeps.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from werkzeug.serving import make_server

from tests.e2e.conftest import TIANGONG, set_fast_inbox, wait_for
from tests.fixtures.saml_idp import SamlIdP

__all__ = [
    "AGENT_ID",
    "ARTIFACTS",
    "CHROMIUM",
    "ENVIRONMENT",
    "HELLO_STEPS",
    "LAPTOP",
    "TABLET",
    "LiveHub",
    "Shots",
    "chromium",
    "csrf_token",
    "live_hub",
    "new_context",
    "release_archive",
    "run_agent_on",
    "sign_in",
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
ENVIRONMENT = "plant-a"
AGENT_ID = "site-01"
START_TIMEOUT_S = 60.0  # seconds for gunicorn to answer /healthz
STOP_TIMEOUT_S = 30.0  # seconds for gunicorn to stop after SIGTERM
PAGE_TIMEOUT_MS = 30_000  # Playwright's timeout for every wait and action
CLI_TIMEOUT_S = 120.0
AGENT_TIMEOUT_S = 120.0  # seconds for the agent to run the bundles and write results
HELLO = REPO / "examples" / "releases" / "hello-1.0.0"
HELLO_STEPS = 3  # the steps of examples/releases/hello-1.0.0

GROUP_ROLES = """
[saml.group_roles]
developers = ["developer"]
approvers = ["approver"]
operators = ["operator"]
auditors = ["auditor"]
"""


@dataclass
class LiveHub:
    """A hub process serving the web UI, its data directory and its enrolled agent home."""

    base_url: str
    data_dir: Path
    agent_home: Path
    log: Path

    def cli(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        """``tiangong hub --data-dir ... --local-admin USER ARGS`` (fails the test if it fails)."""
        return run_tiangong("hub", "--data-dir", str(self.data_dir), "--local-admin", user, *args)

    def log_tail(self, max_bytes: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-max_bytes:] if self.log.exists() else ""


def run_tiangong(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*TIANGONG, *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        check=False, cwd=REPO,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(
            f"tiangong {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _write_web_config(data_dir: Path, idp: SamlIdP) -> None:
    """Append the ``[web]`` and ``[saml]`` tables to the ``hub.toml`` that init wrote."""
    cfg = data_dir / "hub.toml"
    text = cfg.read_text()
    assert "[saml]" not in text and "[web]" not in text, text
    cfg.write_text(
        text
        + "\n[web]\nsecure_cookies = false  # plain http on loopback (tests only)\n"
        + f'\n[saml]\nsp_base_url = "{idp.sp_base_url}"\n'
        + f'idp_metadata_file = "{idp.metadata_file}"\n'
        + GROUP_ROLES
    )


def _enroll_agent(hub: LiveHub, tmp: Path) -> None:
    """``tiangong agent init`` a home for ``plant-a``; carry its request to ``hub import``."""
    run_tiangong(
        "agent", "init", str(hub.agent_home), "--root", str(hub.data_dir / "root.json"),
        "--id", AGENT_ID, "--environment", ENVIRONMENT,
    )  # fmt: skip
    set_fast_inbox(hub.agent_home)
    stick = tmp / "enroll-stick"
    stick.mkdir()
    shutil.copy(next((hub.agent_home / "outbox").glob("enrollment-*.json")), stick)
    out = hub.cli("import", str(stick))
    assert "1 enrolled" in out.stdout, out.stdout


def _borrow_sp_port(request: pytest.FixtureRequest, port: int) -> Callable[[], None]:
    """Free the SP port if ``tests/web/conftest.py``'s in-process ``hub_server`` (session
    scoped, started by test_saml.py or test_sessions.py earlier in this pytest run) holds
    it; return what gives it back: a new server on the same port and app switch, stopped at
    the end of the session."""
    if _port_is_free(port):
        return lambda: None
    from tests.web.conftest import HubServer

    held: HubServer = request.getfixturevalue("hub_server")
    held.server.shutdown()
    held.server.server_close()

    def give_back() -> None:
        server = make_server("127.0.0.1", port, held.switch, threaded=False)
        thread = threading.Thread(target=server.serve_forever, name="hub-wsgi", daemon=True)
        thread.start()
        held.server = server

        def stop() -> None:
            server.shutdown()
            thread.join(timeout=STOP_TIMEOUT_S)
            server.server_close()

        request.session.addfinalizer(stop)

    return give_back


@pytest.fixture
def live_hub(
    request: pytest.FixtureRequest, saml_idp: SamlIdP, saml_sp_port: int, tmp_path: Path
) -> Iterator[LiveHub]:
    """A hub with the web UI served by gunicorn on the SP port the IdP trusts."""
    give_back = _borrow_sp_port(request, saml_sp_port)
    try:
        yield from _serve_live_hub(saml_idp, saml_sp_port, tmp_path)
    finally:
        give_back()


def _serve_live_hub(saml_idp: SamlIdP, saml_sp_port: int, tmp_path: Path) -> Iterator[LiveHub]:
    data_dir = tmp_path / "hub"
    run_tiangong("hub", "--data-dir", str(data_dir), "init", "--admin", "admin",
                 "--insecure-no-passphrase")
    _write_web_config(data_dir, saml_idp)
    hub = LiveHub(saml_idp.sp_base_url, data_dir, tmp_path / "agent", tmp_path / "hub.log")
    hub.cli("environments", "create", ENVIRONMENT)
    _enroll_agent(hub, tmp_path)
    with served_hub(data_dir, saml_sp_port, hub.log, workers=2):
        yield hub


@contextmanager
def served_hub(data_dir: Path, port: int, log_path: Path, workers: int) -> Iterator[None]:
    """``tiangong hub serve`` on 127.0.0.1:``port`` until the block ends (its output in
    ``log_path``): up once /healthz answers, stopped by SIGTERM (SIGKILL if it hangs)."""
    url = f"http://127.0.0.1:{port}"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*TIANGONG, "hub", "--data-dir", str(data_dir), "serve", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        def up() -> bool:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-4000:]
                raise AssertionError(f"the hub exited with {proc.returncode}:\n{tail}")
            return _healthy(f"{url}/healthz")

        wait_for(up, START_TIMEOUT_S, f"the hub to answer {url}/healthz")
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
        log.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(
            f"{CHROMIUM} is missing: run `bash .ci/install-test-deps` (installs Debian's "
            "chromium); the tests never download a browser"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


LAPTOP = {"width": 1280, "height": 900}  # CSS pixels
TABLET = {"width": 768, "height": 1024}  # CSS pixels, portrait


def new_context(browser: Browser, viewport: dict[str, int] | None = None) -> BrowserContext:
    """A fresh browser profile (cookies of its own), laptop-sized unless told otherwise."""
    context = browser.new_context(viewport=viewport or LAPTOP,  # type: ignore[arg-type]
                                  accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    return context


def sign_in(page: Page, hub: LiveHub, idp: SamlIdP, username: str) -> None:
    """Sign in through the IdP's own login form, and land on the hub's home page."""
    page.goto(f"{hub.base_url}/")
    page.get_by_role("link", name="Sign in with single sign-on").click()
    page.wait_for_url(re.compile(re.escape(idp.base_url) + ".*"))
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(idp.users[username].password)
    page.locator("input[name=password]").press("Enter")
    page.wait_for_url(f"{hub.base_url}/")
    expect(page.locator("#username")).to_have_text(username)


class Shots:
    """Numbered full-page screenshots of one test under ``test-artifacts/browser/``."""

    def __init__(self, name: str) -> None:
        self.dir = ARTIFACTS / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.n = 0

    def take(self, page: Page, what: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{what}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def release_archive(tmp: Path) -> Path:
    """examples/releases/hello-1.0.0 as the .tar.gz a developer uploads."""
    out = tmp / "hello-1.0.0.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(HELLO, arcname=HELLO.name)
    return out


def csrf_token(page: Page) -> str:
    """The CSRF token of the page's forms (every page has the sign-out form)."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token, f"no CSRF token on {page.url}"
    return token


def run_agent_on(hub: LiveHub, media_tar: Path, tmp: Path) -> list[Path]:
    """Unpack the downloaded media, start ``tiangong agent run``, drop the bundles into its
    inbox (``.part`` then rename, as a file drop must), and return the result files the
    agent wrote to its outbox. The agent is stopped with SIGTERM afterwards."""
    usb = tmp / "usb"
    usb.mkdir()
    with tarfile.open(media_tar) as tar:
        tar.extractall(usb, filter="data")
    bundles = sorted(usb.glob("*.tgb"))
    assert bundles, f"no bundle in {media_tar.name}: {sorted(p.name for p in usb.iterdir())}"
    inbox, outbox = hub.agent_home / "inbox", hub.agent_home / "outbox"
    log = (tmp / "agent.log").open("wb")
    agent = subprocess.Popen(
        [*TIANGONG, "agent", "run", "--home", str(hub.agent_home)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for bundle in bundles:
            part = inbox / (bundle.name + ".part")
            shutil.copy(bundle, part)
            part.rename(inbox / bundle.name)

        def done() -> bool:
            if agent.poll() is not None:
                raise AssertionError(f"the agent exited with {agent.returncode}:\n"
                                     + (tmp / "agent.log").read_text(errors="replace"))
            return len(list(outbox.glob("*.tgr"))) >= len(bundles)

        wait_for(done, AGENT_TIMEOUT_S, "the agent's result files")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=STOP_TIMEOUT_S)
        log.close()
    return sorted(outbox.glob("*.tgr"))
