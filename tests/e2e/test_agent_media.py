"""Real ``tiangong agent`` processes against awkward media: copy order, missing predecessors,
hostile file names, read-only media, oversized junk (docs/agent.md)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bundle.manifest import ChainInfo, ChainLink, Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.e2e.conftest import HubKeys, run, set_fast_inbox

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
DAY = 1_796_083_200  # 2026-12-01T00:00:00Z


def init_agent(tmp: Path, keys: HubKeys) -> Path:
    home = tmp / "agent"
    run("agent", "init", str(home), "--root", str(keys.root_json), "--id", "site-01",
        "--environment", "plant-a")
    set_fast_inbox(home)
    return home


def chained(keys: HubKeys, out: Path, seq: int, previous: int | None,
            *, split_size: int | None = None) -> list[Path]:
    """A release bundle as the hub exports it: with its chain (§6.8)."""
    now = int(time.time())
    link = None if previous is None else ChainLink(
        root_version=1, sequence=previous, bundle_id=f"hello-{previous}", product="hello",
        version=f"1.0.{previous}", exported_at=DAY, exported_by="carol")
    manifest, files = release_manifest(
        load_release(HELLO), bundle_id=f"hello-{seq}", issuer=keys.kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1,
        sequence=seq, created=now - 60, expires=now + 86400, counter=1, author="alice",
        chain=ChainInfo(previous=link),
    )
    written = write_bundle(out, manifest, files, [keys.kit.release_key], split_size=split_size)
    return list(written.paths)


def copy_in(paths: list[Path], home: Path, names: list[str] | None = None,
            age: float = 120) -> list[Path]:
    """Copy into the inbox, dated ``age`` seconds ago (settled for a fresh process)."""
    out = []
    for i, p in enumerate(paths):
        dest = home / "inbox" / (names[i] if names else p.name)
        shutil.copyfile(p, dest)
        t = time.time() - age
        os.utime(dest, (t, t))
        out.append(dest)
    return out


def once(home: Path) -> list[str]:
    proc = run("agent", "run", "--home", str(home), "--once")
    return proc.stdout.splitlines()


def test_once_applies_in_sequence_order_and_status_names_what_is_missing(
    tmp_path: Path, hub_keys: HubKeys
) -> None:
    home = init_agent(tmp_path, hub_keys)
    src = tmp_path / "src"
    src.mkdir()
    b9 = chained(hub_keys, src / "x-1.0.9-site-01-000009.tgb", 9, None)
    b10 = chained(hub_keys, src / "x-1.0.10-site-01-000010.tgb", 10, 9)
    b12 = chained(hub_keys, src / "x-1.0.12-site-01-000012.tgb", 12, 11)
    copy_in(b10 + b9 + b12, home)
    lines = once(home)
    assert lines[:2] == ["x-1.0.9-site-01-000009.tgb: succeeded: 3 step(s) succeeded",
                         "x-1.0.10-site-01-000010.tgb: succeeded: 3 step(s) succeeded"]
    assert lines[2].startswith("x-1.0.12-site-01-000012.tgb: held: sequence 12 is waiting for "
                               "sequence 11, hello 1.0.11, exported 2026-12-01 by carol")
    assert (home / "inbox" / "x-1.0.12-site-01-000012.tgb").exists()
    assert not list((home / "quarantine").iterdir())
    status = run("agent", "status", "--home", str(home)).stdout
    assert "last sequence 10" in status
    assert ("x-1.0.12-site-01-000012.tgb: sequence 12 is waiting for sequence 11, hello "
            "1.0.11, exported 2026-12-01 by carol") in status
