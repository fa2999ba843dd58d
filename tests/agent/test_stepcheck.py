"""Every step is checked before a bundle is accepted: a signed bundle that this site cannot
run is refused with a signed result, nothing runs, and its sequence is not consumed."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.home import init_home
from agent.inbox import ReadyItem
from agent.service import Agent
from bundle.manifest import Target
from bundle.reader import ExpectResult, VerifierState, verify_path
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import Clock
from tests.fixtures.trust import NOW, TrustKit, make_trust

SQL = {"name": "migrate", "kind": "sql", "timeout_s": 600, "on_failure": "stop",
       "secrets": [], "engine": "postgres", "connection": "billing-db", "script": "b.sh"}
HTTP = {"name": "call", "kind": "http", "timeout_s": 600, "on_failure": "stop", "secrets": [],
        "method": "GET", "url": "https://127.0.0.1/", "connection": "legacy", "headers": {},
        "secret_headers": {}, "expect": ["2xx"], "retries": 0, "retry_delay_s": 1,
        "request_timeout_s": 30}


def _release(tmp: Path) -> Path:
    d = tmp / "two-1.0.0"
    d.mkdir()
    ran = tmp.parent / "ran" if tmp.name == "fixed" else tmp / "ran"
    (d / "a.sh").write_text(f'echo ran >> "{ran}"\n')
    (d / "b.sh").write_text(f'echo ran >> "{ran}"\n')
    (d / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "two"\nversion = "1.0.0"\n\n'
        '[[steps]]\nname = "one"\nkind = "shell"\nscript = "a.sh"\n\n'
        '[[steps]]\nname = "two"\nkind = "shell"\nscript = "b.sh"\n')
    return d


def _second(change: Callable[[dict[str, Any]], dict[str, Any]]
            ) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda steps: [steps[0], change(dict(steps[1]))]


# (what is wrong with the signed steps, words the refusal must contain)
CASES = [
    (_second(lambda s: {**s, "script": "missing.sh"}), "'missing.sh', which is not a file"),
    (_second(lambda s: {**s, "script": "../../bin/sh"}), "'..'"),
    (_second(lambda s: {**s, "interpreter": "zsh"}), "interpreter"),
    (_second(lambda s: {**s, "kind": "ftp"}), "kind"),
    (_second(lambda s: SQL), "connection 'billing-db', which is not defined"),
    (_second(lambda s: {**SQL, "connection": "legacy"}),
     "needs a connection of type 'postgres', but 'legacy'"),
    (_second(lambda s: HTTP), "needs a connection of type 'http', but 'legacy'"),
]


@pytest.fixture
def site(tmp_path: Path) -> Any:
    kit = make_trust()
    home = tmp_path / "home"
    init_home(home, root_file=kit.write_root(tmp_path), agent_id="site-01",
              environment="plant-a", now=NOW)
    with (home / "agent.toml").open("a") as fh:
        fh.write('\n[connections.legacy]\ntype = "mysql"\ndsn = "mysql://u@127.0.0.1/x"\n')
    agent = Agent(load_config(home), clock=Clock())
    yield agent, kit
    agent.close()


def _signed(kit: TrustKit, tmp: Path, steps_change: Any, seq: int = 1) -> Path:
    manifest, files = release_manifest(
        load_release(_release(tmp)), bundle_id=str(uuid.uuid4()),
        issuer=kit.release_key.key_id, target=Target(agents=("site-01",), environment="plant-a"),
        root_version=1, sequence=seq, created=NOW - 60, expires=NOW + 86400, counter=1,
        author="alice")
    if steps_change is not None:
        manifest = replace(manifest, steps=tuple(steps_change([dict(s) for s in manifest.steps])))
    return write_bundle(tmp / f"b{seq}.tgb", manifest, files, [kit.release_key]).paths[0]


def _process(agent: Agent, bundle: Path) -> Any:
    dest = agent.config.inbox / bundle.name
    shutil.copyfile(bundle, dest)
    return agent.process(ReadyItem(dest.name, (dest,), dest.stat().st_size, "single", 0.0))


@pytest.mark.parametrize(("change", "words"), CASES, ids=[w[:30] for _, w in CASES])
def test_a_bundle_whose_steps_cannot_run_here_is_refused_before_acceptance(
    site: Any, tmp_path: Path, change: Any, words: str
) -> None:
    agent, kit = site
    out = _process(agent, _signed(kit, tmp_path, change))
    assert out.status == "rejected", out.summary
    assert words in out.summary and "its sequence is not used up" in out.summary, out.summary
    # Nothing ran, nothing was accepted, the sequence is untouched, nothing left in staging.
    assert not (tmp_path / "ran").exists()
    assert agent.journal.bundles() == []
    assert agent.journal.trust(kit.hub_id).sequence == 0
    assert not list(agent.config.staging.iterdir())
    assert (agent.config.quarantine / "b1.tgb.reason.txt").exists()
    staging = tmp_path / "hub-staging"
    staging.mkdir()
    vb = verify_path(out.result, trusted_root=kit.trusted, state=VerifierState(),
                     expect=ExpectResult(hub_id=kit.hub_id, agent_id="site-01",
                                         agent_key=agent.keys.identity.public),
                     staging_dir=staging, clock=lambda: NOW)
    assert vb.manifest.result is not None and vb.manifest.result.status == "rejected"
    assert vb.manifest.result.body["check"] == "steps"
    # Refused after it verified: the result names the bundle (its signature vouches for it).
    assert vb.manifest.result.bundle_id == out.bundle_id is not None
    assert vb.manifest.result.bundle_envelope_sha256 is not None
    # The hub's corrected bundle may reuse the sequence: it was not consumed.
    (tmp_path / "fixed").mkdir()
    fixed = _process(agent, _signed(kit, tmp_path / "fixed", None))
    assert fixed.status == "succeeded", fixed.summary
    assert agent.journal.trust(kit.hub_id).sequence == 1
    assert (tmp_path / "ran").read_text().split() == ["ran", "ran"]
