"""Helpers for end-to-end tests of a real ``tiangong agent run`` process: a site home, bundles
written in-process with the test hub's keys, and reading the outbox back."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bundle.errors import BundleError
from bundle.inspect import inspect as inspect_path
from bundle.manifest import Manifest, Target
from bundle.reader import ExpectResult, VerifierState, verify_path
from bundle.release import load_release
from bundle.windows import Policy
from bundle.writer import release_manifest, write_bundle
from signing.keyfile import load_public_key
from tests.e2e.conftest import TIANGONG, HubKeys, run, set_fast_inbox, wait_for

AGENT_ID = "site-01"
ENVIRONMENT = "plant-a"


def init_site(tmp: Path, keys: HubKeys, connections: Mapping[str, Mapping[str, str]] = {},
              name: str = "agent") -> Path:
    """``agent init`` a home with fast inbox timings and the given site connections."""
    home = tmp / name
    run("agent", "init", str(home), "--root", str(keys.root_json), "--id", AGENT_ID,
        "--environment", ENVIRONMENT)
    set_fast_inbox(home)
    cfg = home / "agent.toml"
    text = cfg.read_text()
    for cname, spec in connections.items():
        body = "".join(f'{k} = "{v}"\n' for k, v in spec.items())
        text += f"\n[connections.{cname}]\n{body}"
    cfg.write_text(text.replace("[connections]\n", ""))
    return home


def write_release(directory: Path, product: str, version: str, steps: list[str],
                  files: Mapping[str, str]) -> Path:
    """A release directory: ``steps`` are ``[[steps]]`` TOML bodies, ``files`` its files."""
    directory.mkdir(parents=True)
    for name, body in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(body)
    toml = f'format = 1\n[release]\nproduct = "{product}"\nversion = "{version}"\n'
    for step in steps:
        toml += f"\n[[steps]]\n{step}\n"
    (directory / "release.toml").write_text(toml)
    return directory


def make_bundle(keys: HubKeys, release: Path, out: Path, seq: int, *,
                bundle_id: str | None = None, expires_in: int = 86400,
                policy: Policy | None = None) -> tuple[Path, str]:
    """Sign ``release`` for the site as sequence ``seq`` (with maintenance windows and
    freezes: ``policy``); returns (path, bundle id)."""
    now = int(time.time())
    bid = bundle_id or f"b{seq}-{uuid.uuid4().hex[:8]}"
    manifest, files = release_manifest(
        load_release(release), bundle_id=bid, issuer=keys.kit.release_key.key_id,
        target=Target(agents=(AGENT_ID,), environment=ENVIRONMENT), root_version=1,
        sequence=seq, created=now - 60, expires=now + expires_in, counter=seq, author="alice",
        policy=policy)
    return write_bundle(out, manifest, files, [keys.kit.release_key]).paths[0], bid


def drop(bundle: Path, home: Path) -> None:
    tmp = home / "inbox" / (bundle.name + ".part")
    shutil.copyfile(bundle, tmp)
    os.replace(tmp, home / "inbox" / bundle.name)


def start_agent(home: Path, log: Path, env: Mapping[str, str] | None = None,
                *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([*TIANGONG, "agent", "run", "--home", str(home), *args],
                                stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def holds_lock(home: Path, proc: subprocess.Popen[bytes]) -> bool:
    """The agent process took the home's lock (its stop signal handler is installed by
    then)."""
    try:
        return f"pid {proc.pid}:" in (home / "agent.lock").read_text()
    except FileNotFoundError:
        return False


def stop_agent(proc: subprocess.Popen[bytes], log: Path, home: Path | None = None) -> None:
    if home is not None:
        wait_for(lambda: proc.poll() is not None or holds_lock(home, proc), 60,
                 "the agent to start")
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-4000:]


def settled(home: Path) -> bool:
    """The journal has nothing left to do: no pending result, no bundle waiting or running,
    no file still to move out of the inbox."""
    db = sqlite3.connect(f"file:{home / 'journal.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return not any(db.execute(q).fetchone()[0] for q in (
            "SELECT COUNT(*) FROM results WHERE state != 'written'",
            "SELECT COUNT(*) FROM bundles WHERE state IN ('waiting', 'running') OR archived=0",
            "SELECT COUNT(*) FROM disposals WHERE done=0",
        ))
    finally:
        db.close()


def results(home: Path) -> list[dict[str, Any]]:
    """The results in the outbox, read *unverified* (for polling); see verified_results."""
    out = []
    for path in sorted((home / "outbox").glob("*.tgr")):
        m = _manifest(path)
        if m is not None and m.result is not None:
            out.append({"path": path, **m.result.to_json()})
    return out


def _manifest(path: Path) -> Manifest | None:
    try:
        return inspect_path(path).manifest
    except (BundleError, OSError):  # renamed away meanwhile
        return None


def verified_results(home: Path, keys: HubKeys, tmp: Path) -> list[dict[str, Any]]:
    """Every result in the outbox, each verified as the hub would (signature by the agent's
    key, addressed to the hub), ordered by result sequence."""
    pub = load_public_key(home / "keys" / "identity.key.pub").ed25519_public()
    out = []
    for path in sorted((home / "outbox").glob("*.tgr")):
        staging = tmp / f"verify-{uuid.uuid4().hex}"
        staging.mkdir(mode=0o700)
        vb = verify_path(path, trusted_root=keys.kit.trusted, state=VerifierState(),
                         expect=ExpectResult(hub_id=keys.kit.hub_id, agent_id=AGENT_ID,
                                             agent_key=pub),
                         staging_dir=staging)
        assert vb.manifest.result is not None
        out.append({"path": path, "envelope_sha256": vb.envelope_sha256,
                    **vb.manifest.result.to_json()})
        shutil.rmtree(staging)
    return sorted(out, key=lambda r: int(r["result_seq"]))


def assert_chain(found: list[dict[str, Any]]) -> None:
    """Result sequences are 1..N, each used once, each pointing at the one before."""
    assert [r["result_seq"] for r in found] == list(range(1, len(found) + 1)), \
        [(r["result_seq"], r["path"].name) for r in found]
    prev = None
    for r in found:
        assert r["prev_result_sha256"] == prev, r["path"].name
        prev = r["envelope_sha256"]
