"""Helpers for end-to-end tests: real ``tiangong`` processes talking through files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from signing.keyfile import KdfParams, save_private_key, write_public_key
from tests.fixtures.trust import TrustKit, make_trust

if TYPE_CHECKING:
    from tests.web.pages import Site

TIANGONG = [sys.executable, "-m", "tiangong.cli"]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, *,
             interval_s: float = 0.05) -> None:
    """Poll ``predicate`` every ``interval_s`` until true, or fail after ``timeout_s`` (a
    deadline, not a guess)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run(*args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*TIANGONG, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"tiangong {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


#: One process running several `tiangong` command lines in turn (``run_many``): each goes
#: through the real command line (``tiangong.cli.root``), as `tiangong ARGS` would.
_MANY = r"""
import json, sys
from tiangong.cli import root
for args in json.loads(sys.argv[1]):
    print(f"$ tiangong {' '.join(args)}", flush=True)
    try:
        root.main(args, prog_name="tiangong")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code != 0:
            print(f"tiangong {' '.join(args)} exited {code}", file=sys.stderr)
            sys.exit(code)
"""


def run_many(*commands: Sequence[str], env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``commands`` (each the arguments of one `tiangong` command) one after the other in
    ONE process, stopping at the first that fails (an AssertionError naming it): for setting
    up state with the commands a test is not about, at the cost of one process start instead
    of one per command. The output of each follows a ``$ tiangong ARGS`` line."""
    proc = subprocess.run([sys.executable, "-c", _MANY, json.dumps([list(c) for c in commands])],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"run_many exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def add_people(env: dict[str, str], people: Iterable[tuple[str, str]],
               environments: Iterable[str] = ("plant-a",), *, admin: str = "admin") -> None:
    """Set up a hub's ``people`` — (user, role) pairs; a name twice: two roles — and
    ``environments`` as ``admin`` with `tiangong hub users create|grant` and `environments
    create`, all in one process (:func:`run_many`); ``env`` names the hub
    (``TIANGONG_HUB_DATA_DIR``)."""
    pairs = list(people)
    hub = ("hub", "--local-admin", admin)
    run_many(*[(*hub, "users", "create", name) for name in dict.fromkeys(n for n, _ in pairs)],
             *[(*hub, "users", "grant", name, role) for name, role in pairs],
             *[(*hub, "environments", "create", name) for name in environments], env=env)


@dataclass
class HubKeys:
    kit: TrustKit
    root_json: Path
    release_key: Path


@pytest.fixture
def hub_keys(tmp_path: Path) -> HubKeys:
    kit = make_trust(now=int(time.time()))
    d = tmp_path / "hubkeys"
    d.mkdir()
    info = save_private_key(d / "release.key", kit.release_key, role="release", label="test",
                            passphrase="test-pass", kdf=KdfParams(1, 8192))
    write_public_key(d / "release.key.pub", info)
    return HubKeys(kit, kit.write_root(d), d / "release.key")


def drop_settled(bundle: Path, home: Path) -> Path:
    """Copy ``bundle`` into the agent's inbox as if it had been copied a minute ago and left
    alone since: ``agent run --once`` takes only files that have settled (their modification
    time at least ``settle_seconds`` old), so a pass started right after a plain copy may
    rightly leave it for the next pass."""
    dest = home / "inbox" / bundle.name
    shutil.copyfile(bundle, dest)
    old = time.time() - 60
    os.utime(dest, (old, old))
    return dest


def set_fast_inbox(home: Path) -> None:
    cfg = home / "agent.toml"
    text = cfg.read_text().replace("settle_seconds = 5.0", "settle_seconds = 0.2")
    cfg.write_text(text.replace("rescan_seconds = 10.0", "rescan_seconds = 0.5"))


HubCli = Callable[..., subprocess.CompletedProcess[str]]


#: The people of :func:`media_site` unless a test names its own: (user, role).
SITE_PEOPLE = (("dev", "developer"), ("bob", "approver"), ("carol", "operator"))


def media_site(tmp_path: Path, *, people: tuple[tuple[str, str], ...] = SITE_PEOPLE,
               hub_id: str = "hub-e2e", connections: str = "") -> tuple[HubCli, Path, Path]:
    """A real hub in ``tmp_path/hub`` (`tiangong hub init`, no passphrase) with ``people``
    (default dev developer, bob approver, carol operator; a name twice: two roles),
    environment plant-a, and agent
    site-01 (``tmp_path/agent``, fast inbox, ``connections`` — TOML tables such as
    ``[connections.app-db]`` — added to its agent.toml) enrolled by media; returns
    (``hub(*args, user=, check=, extra=)`` running `tiangong hub --local-admin USER …`
    with ``extra`` environment variables, the hub's data directory, the agent's home)."""
    data = tmp_path / "hub"
    env = {"TIANGONG_HUB_DATA_DIR": str(data)}

    def hub(*args: str, user: str = "admin", check: bool = True,
            extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run("hub", "--local-admin", user, *args, env={**env, **(extra or {})},
                   check=check)

    hub("init", "--admin", "admin", "--hub-id", hub_id, "--insecure-no-passphrase")
    add_people(env, people)
    home = tmp_path / "agent"
    run("agent", "init", str(home), "--root", str(data / "root.json"), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    if connections:
        cfg = home / "agent.toml"
        cfg.write_text(cfg.read_text().replace("[connections]\n", "") + "\n" + connections)
    carry(list((home / "outbox").glob("enrollment-*.json")), tmp_path / "enroll")
    hub("import", str(tmp_path / "enroll"), user="carol")
    return hub, data, home


def carry(files: Iterable[Path], dest: Path) -> Path:
    """Copy ``files`` into ``dest`` (made if missing) the way a finished copy lands: each
    as ``NAME.part``, renamed when complete (an agent's inbox never sees half a file)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        part = dest / (f.name + ".part")
        shutil.copy(f, part)
        part.rename(dest / f.name)
    return dest


def results_of(home: Path) -> set[Path]:
    """The result files in the agent's outbox."""
    return set((home / "outbox").glob("*.tgr"))


def run_agent_until(home: Path, bundles: Iterable[Path], what: str, *, results: int = 1,
                    log: Path | None = None, timeout_s: float = 90) -> list[Path]:
    """Start a real `tiangong agent run` on ``home`` (output to ``log``, else dropped),
    carry ``bundles`` into its inbox, wait until ``results`` new result files are in its
    outbox (``what`` names them on a timeout), stop it (SIGTERM); the new results, sorted."""
    before = results_of(home)
    with (log.open("ab") if log is not None else open(os.devnull, "wb")) as out:
        agent = subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home)],
                                 stdout=out, stderr=subprocess.STDOUT)
        try:
            carry(sorted(bundles), home / "inbox")
            wait_for(lambda: len(results_of(home) - before) >= results, timeout_s, what)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    return sorted(results_of(home) - before)


@contextmanager
def web_site(data: Path) -> Iterator[Site]:
    """The web app over the hub in ``data`` that real `tiangong hub` processes made (its
    database and keys), driven by Flask's test client (``tests.web.pages.Site``: signed-in
    clients, CSRF posts, API tokens), on the real clock: the CLI's rows carry real times."""
    from hub.db import db
    from hub.services.context import utc_now
    from tests.web.pages import Site
    from web.app import create_web_app

    app = create_web_app({"data_dir": data, "secret_key": "test-secret-key-not-for-production"},
                         {"web": {"secure_cookies": False}}, clock=utc_now)
    app.config["TESTING"] = True
    try:
        yield Site(app, utc_now, data)  # type: ignore[arg-type]
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def carry_home(home: Path, to: Path) -> Path:
    """Copy every result in the agent's outbox to ``to`` (the stick back to the hub)."""
    return carry(sorted(results_of(home)), to)


def approved_release(hub: HubCli, tmp_path: Path, product: str = "app", version: str = "1.0",
                     steps: list[str] | None = None,
                     files: dict[str, str] | None = None) -> Path:
    """A release written with ``tests.e2e.agent_site.write_release`` (default: one shell step
    ``hello``), created and submitted by dev and approved by bob (the people of
    :func:`media_site`); its directory."""
    from tests.e2e.agent_site import write_release

    rel = write_release(tmp_path / f"{product}-{version}", product, version,
                        steps or ['name = "hello"\nkind = "shell"\nscript = "hello.sh"'],
                        files if files is not None else {"hello.sh": "#!/bin/sh\necho hello\n"})
    hub("releases", "create", str(rel), "--create-product", user="dev")
    hub("releases", "submit", product, version, user="dev")
    hub("releases", "approve", product, version, user="bob")
    return rel
