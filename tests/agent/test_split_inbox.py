"""Split bundles in the agent's inbox: every missing and damaged part is named at once, only a
damaged part is quarantined, and re-copying just that part completes the bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agent.config import load_config
from agent.service import Agent
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import Clock
from tests.fixtures.trust import NOW, TrustKit

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def _split(kit: TrustKit, tmp: Path) -> list[Path]:
    out = tmp / "src" / "hello.tgb"
    out.parent.mkdir()
    manifest, files = release_manifest(
        load_release(HELLO), bundle_id="hello-split", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1, sequence=1,
        created=NOW - 60, expires=NOW + 86400, counter=1, author="alice")
    paths = list(write_bundle(out, manifest, files, [kit.release_key], split_size=2048).paths)
    assert len(paths) >= 4  # part000 and at least three data parts
    return paths


def _copy(path: Path, inbox: Path, data: bytes | None = None) -> Path:
    dest = inbox / path.name
    if data is None:
        shutil.copyfile(path, dest)
    else:
        dest.write_bytes(data)
    os.utime(dest, (NOW - 3600, NOW - 3600))
    return dest


def test_missing_and_damaged_parts_named_then_only_the_damaged_one_recopied(
    site: tuple[Agent, TrustKit, Clock], tmp_path: Path
) -> None:
    agent, kit, _ = site
    parts = _split(kit, tmp_path)
    inbox = agent.config.inbox
    good2 = parts[2].read_bytes()
    bad2 = bytes([good2[0] ^ 0xFF]) + good2[1:]  # same size, one byte changed
    for i, p in enumerate(parts):
        if i == 3:
            continue  # part 3 has not arrived
        _copy(p, inbox, bad2 if i == 2 else None)

    assert agent.run_once() == []
    agent.survey()
    (waiting,) = [w for w in agent.status()["inbox_waiting"] if w["name"] == "hello.tgb"]
    assert waiting["reason"].startswith(f"waiting for parts 3 of {len(parts) - 1}")
    assert f"part 2 of {len(parts)} (hello.tgb.part002) is damaged" in waiting["reason"]
    assert f"part 3 of {len(parts)} (hello.tgb.part003) is missing" in waiting["reason"]
    assert not list(agent.config.quarantine.iterdir())  # nothing acted on yet

    _copy(parts[3], inbox)
    (out,) = agent.run_once()
    assert out.status == "held"
    assert "hello.tgb.part002" in out.summary
    quarantined = sorted(p.name for p in agent.config.quarantine.iterdir())
    assert quarantined == ["hello.tgb.part002", "hello.tgb.reason.txt"]  # only that part
    reason = (agent.config.quarantine / "hello.tgb.reason.txt").read_text()
    assert "check: parts" in reason and "hello.tgb.part002" in reason
    assert sorted(p.name for p in inbox.iterdir()) == sorted(
        p.name for i, p in enumerate(parts) if i != 2)
    assert agent.journal.bundles() == []
    assert not list(agent.config.outbox.glob("*.tgr"))  # no verdict yet: it waits

    _copy(parts[2], inbox)  # re-copy just that part
    (out,) = agent.run_once()
    assert out.status == "succeeded", out.summary
    assert not list(inbox.iterdir())
    assert len(list(agent.config.outbox.glob("*.tgr"))) == 1


def test_no_staging_space_keeps_a_good_bundle_waiting_in_the_inbox(
    site: tuple[Agent, TrustKit, Clock], tmp_path: Path
) -> None:
    """A 1 MiB file system as staging: the bundle needs its size plus the 16 MiB reserve."""
    agent, kit, _ = site
    parts = _split(kit, tmp_path)
    for p in parts:
        _copy(p, agent.config.inbox)
    staging = str(agent.config.staging)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", staging],
                   check=True)
    try:
        (out,) = agent.run_once()
        assert out.status == "held"
        assert "waiting for staging space" in out.summary
        assert "needs 16 MiB free" in out.summary and "only 1.0 MiB is free" in out.summary
        assert sorted(p.name for p in agent.config.inbox.iterdir()) == [p.name for p in parts]
        assert not list(agent.config.quarantine.iterdir())
        assert not list(agent.config.outbox.glob("*.tgr"))
        assert agent.journal.bundles() == [] and agent.journal.rejections() == []
        held = agent.status()["inbox_held"]
        assert [h["name"] for h in held] == ["hello.tgb"]
        other = Agent(load_config(agent.config.home), clock=agent.clock)  # 'agent status'
        try:
            other.survey()
            (seen,) = other.status()["inbox_held"]
            assert seen["name"] == "hello.tgb"
            assert "waiting for staging space: it needs 16 MiB free" in seen["reason"]
        finally:
            other.close()
    finally:
        subprocess.run(["umount", staging], check=True)
    (out,) = agent.run_once()  # space is back: it runs, without a restart
    assert out.status == "succeeded", out.summary
