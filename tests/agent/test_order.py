"""Order never depends on copying: bundles apply in chain order, wait for a missing
predecessor, and proceed past a bundle the hub declared lost (docs/agent.md "Order")."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.service import Agent
from bundle.manifest import ChainInfo, ChainLink, LostBundle, Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import verified_result
from tests.fixtures.trust import NOW, TrustKit

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"
DAY = 1_796_083_200  # 2026-12-01T00:00:00Z


def link(seq: int, version: str | None = None) -> ChainLink:
    return ChainLink(root_version=1, sequence=seq, bundle_id=f"hello-{seq}",
                     product="hello", version=version or f"1.0.{seq}", exported_at=DAY,
                     exported_by="carol")


def make(kit: TrustKit, out: Path, seq: int, *, previous: int | None = None,
         lost: tuple[LostBundle, ...] = (), chain: bool = True) -> Path:
    src = load_release(HELLO)
    info = None
    if chain:
        info = ChainInfo(previous=link(previous) if previous else None, lost=lost)
    manifest, files = release_manifest(
        src, bundle_id=f"hello-{seq}", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1,
        sequence=seq, created=NOW - 60, expires=NOW + 86400, counter=1, author="alice",
        chain=info,
    )
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


def lost(seq: int, previous: int | None, reason: str = "the stick fell overboard") -> LostBundle:
    return LostBundle(bundle=link(seq), previous=link(previous) if previous else None,
                      reason=reason, by="carol", at=DAY + 3600)


def drop(agent: Agent, bundle: Path, name: str | None = None) -> Path:
    """Copy into the inbox with an mtime far in the past: settled at first sight."""
    dest = agent.config.inbox / (name or bundle.name)
    shutil.copyfile(bundle, dest)
    os.utime(dest, (NOW - 3600, NOW - 3600))
    return dest


def applied(agent: Agent) -> list[int]:
    return [b.sequence for b in sorted(agent.journal.bundles(), key=lambda b: b.received_at)]


def order_of_acceptance(agent: Agent) -> list[str]:
    return [b.bundle_id for b in agent.journal.bundles()]


@pytest.mark.parametrize("chain", [True, False], ids=["chained", "legacy-no-chain"])
def test_name_order_does_not_decide(site, tmp_path: Path, chain: bool) -> None:  # type: ignore[no-untyped-def]
    """``x-1.0.10`` sorts before ``x-1.0.9``: 9 must still run first, and 10 after it."""
    agent, kit, _ = site
    drop(agent, make(kit, tmp_path / "x-1.0.9-site-01-000009.tgb", 9, previous=None,
                     chain=chain))
    drop(agent, make(kit, tmp_path / "x-1.0.10-site-01-000010.tgb", 10, previous=9,
                     chain=chain))
    outcomes = agent.run_once()
    assert [(o.name, o.status) for o in outcomes] == [
        ("x-1.0.9-site-01-000009.tgb", "succeeded"),
        ("x-1.0.10-site-01-000010.tgb", "succeeded"),
    ]
    assert order_of_acceptance(agent) == ["hello-9", "hello-10"]
    assert agent.journal.rejections() == []
    assert not list(agent.config.quarantine.iterdir())


def test_missing_predecessor_holds_and_names_it(site, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                caplog: pytest.LogCaptureFixture) -> None:
    agent, kit, _ = site
    assert agent.run_once() == []
    drop(agent, make(kit, tmp_path / "b.tgb", 1))
    assert [o.status for o in agent.run_once()] == ["succeeded"]
    results_before = sorted(agent.config.outbox.glob("*.tgr"))

    ten = drop(agent, make(kit, tmp_path / "hello-1.0.10.tgb", 10, previous=9))
    with caplog.at_level(logging.INFO, logger="tiangong.agent.inbox"):
        outs = agent.run_once()
        agent.run_once()  # a second pass does not log it again
    assert [o.status for o in outs] == ["held"]
    want = "waiting for sequence 9, hello 1.0.9, exported 2026-12-01 by carol"
    assert want in outs[0].summary
    held_lines = [r.getMessage() for r in caplog.records if "holding" in r.getMessage()]
    assert len(held_lines) == 1 and want in held_lines[0]
    # Nothing changed: still in the inbox, not accepted, no result, sequence unchanged.
    assert ten.exists()
    assert applied(agent) == [1]
    assert agent.journal.trust(kit.hub_id).sequence == 1  # type: ignore[union-attr]
    assert sorted(agent.config.outbox.glob("*.tgr")) == results_before
    assert not [p for p in agent.config.staging.iterdir()
                if p.name.startswith((".verifying", "ready-")) and "hello-10" in str(p)]
    status = agent.status()
    assert [h["name"] for h in status["inbox_held"]] == ["hello-1.0.10.tgb"]
    assert want in status["inbox_held"][0]["reason"]

    # The predecessor arrives (under any name): both run, in order.
    drop(agent, make(kit, tmp_path / "zz.tgb", 9, previous=1))
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [("zz.tgb", "succeeded"),
                                                  ("hello-1.0.10.tgb", "succeeded")]
    assert applied(agent) == [1, 9, 10]
    assert agent.status()["inbox_held"] == []


def test_declared_lost_lets_the_chain_proceed_and_refuses_the_lost_one(  # type: ignore[no-untyped-def]
        site, tmp_path: Path) -> None:
    agent, kit, _ = site
    drop(agent, make(kit, tmp_path / "a.tgb", 8))
    drop(agent, make(kit, tmp_path / "c.tgb", 10, previous=9))
    outs = agent.run_once()
    assert [o.status for o in outs] == ["succeeded", "held"]
    # The hub declares 9 lost; the next bundle exported carries the signed decision.
    drop(agent, make(kit, tmp_path / "d.tgb", 11, previous=10, lost=(lost(9, 8),)))
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [("c.tgb", "succeeded"),
                                                  ("d.tgb", "succeeded")]
    assert applied(agent) == [8, 10, 11]
    # The lost bundle turns up after all: refused, with the hub's reason and a signed result.
    drop(agent, make(kit, tmp_path / "b.tgb", 9, previous=8))
    outs = agent.run_once()
    assert [o.status for o in outs] == ["rejected"]
    assert "declared lost by carol" in outs[0].summary
    assert "the stick fell overboard" in outs[0].summary
    reason = (agent.config.quarantine / "b.tgb.reason.txt").read_text()
    assert "check: lost" in reason
    assert applied(agent) == [8, 10, 11]
    result = verified_result(agent, kit, outs[0].result, tmp_path)
    assert result["status"] == "rejected"
    assert result["body"]["check"] == "lost"  # type: ignore[index]


def test_lost_bundle_arriving_before_the_chain_moved_on_is_refused(  # type: ignore[no-untyped-def]
        site, tmp_path: Path) -> None:
    """9 and the decision that 9 is lost arrive together: 9 is refused, 10 and 11 run."""
    agent, kit, _ = site
    drop(agent, make(kit, tmp_path / "a.tgb", 8))
    assert [o.status for o in agent.run_once()] == ["succeeded"]
    drop(agent, make(kit, tmp_path / "n9.tgb", 9, previous=8))
    drop(agent, make(kit, tmp_path / "n10.tgb", 10, previous=9))
    drop(agent, make(kit, tmp_path / "n11.tgb", 11, previous=10, lost=(lost(9, 8),)))
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [
        ("n9.tgb", "rejected"), ("n10.tgb", "succeeded"), ("n11.tgb", "succeeded")]
    assert applied(agent) == [8, 10, 11]


def test_a_lost_predecessor_whose_own_predecessor_is_missing_still_waits(  # type: ignore[no-untyped-def]
        site, tmp_path: Path) -> None:
    """The decision says 9 came after 8; 8 never arrived and is not declared lost: wait."""
    agent, kit, _ = site
    drop(agent, make(kit, tmp_path / "a.tgb", 7))
    drop(agent, make(kit, tmp_path / "c.tgb", 10, previous=9, lost=(lost(9, 8),)))
    outs = agent.run_once()
    assert [o.status for o in outs] == ["succeeded", "held"]
    assert "waiting for sequence 8" in outs[1].summary
    assert applied(agent) == [7]


def test_a_decision_from_a_bundle_never_accepted_is_kept_across_restarts(  # type: ignore[no-untyped-def]
        site, tmp_path: Path) -> None:
    """11 carries "9 is lost" and lets 10 through, but 11 itself is damaged and refused:
    after a restart, 9 turning up is still refused for the hub's reason."""
    from agent.config import load_config

    agent, kit, clock = site
    drop(agent, make(kit, tmp_path / "a.tgb", 8))
    drop(agent, make(kit, tmp_path / "c.tgb", 10, previous=9))
    eleven = make(kit, tmp_path / "d.tgb", 11, previous=10, lost=(lost(9, 8),))
    data = bytearray(eleven.read_bytes())
    data[-2000] ^= 0x01  # a payload byte: the head (and the decision) still verify
    eleven.write_bytes(bytes(data))
    drop(agent, eleven)
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [
        ("a.tgb", "succeeded"), ("c.tgb", "succeeded"), ("d.tgb", "rejected")]
    agent.close()

    again = Agent(load_config(agent.config.home), clock=clock)
    try:
        drop(again, make(kit, tmp_path / "b.tgb", 9, previous=8))
        (out,) = again.run_once()
        assert out.status == "rejected"
        assert "declared lost by carol" in out.summary
    finally:
        again.close()


def test_a_full_disk_while_staging_ends_the_pass_so_a_later_bundle_cannot_overtake(
        site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Bundles 1 and 2 (no chain: nothing else holds 2) wait while staging fails with ENOSPC;
    the disk recovers between bundle 1's failed staging and bundle 2's: 2 must not be
    accepted before 1 (which would then be refused as an old sequence). The pass ends at the
    full disk, and the next one applies 1 then 2."""
    agent, kit, _ = site
    drop(agent, make(kit, tmp_path / "disk-1.tgb", 1, chain=False))
    drop(agent, make(kit, tmp_path / "disk-2.tgb", 2, chain=False))
    real = agent._verify
    calls: list[str] = []

    def verify(item, admit):  # type: ignore[no-untyped-def]
        calls.append(item.name)
        if len(calls) <= 3:  # peek 1, peek 2, stage 1: the disk is full; then it recovers
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(item, admit)

    monkeypatch.setattr(agent, "_verify", verify)
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [("disk-1.tgb", "deferred")]
    assert calls == ["disk-1.tgb", "disk-2.tgb", "disk-1.tgb"]
    assert applied(agent) == []
    assert sorted(p.name for p in agent.config.inbox.iterdir()) == ["disk-1.tgb", "disk-2.tgb"]

    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [("disk-1.tgb", "succeeded"),
                                                  ("disk-2.tgb", "succeeded")]
    assert applied(agent) == [1, 2]
    assert agent.journal.rejections() == []
    assert not list(agent.config.quarantine.iterdir())


def test_an_unreadable_inbox_file_does_not_stop_the_others(
        site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A read error on one file (EIO from a failing stick) is that file's problem: the rest
    of the pass goes on, and the file stays in the inbox."""
    agent, kit, _ = site
    bad = drop(agent, make(kit, tmp_path / "a-bad.tgb", 1, chain=False))
    drop(agent, make(kit, tmp_path / "b-good.tgb", 2, chain=False))
    real = agent._verify

    def verify(item, admit):  # type: ignore[no-untyped-def]
        if item.name == "a-bad.tgb":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(item, admit)

    monkeypatch.setattr(agent, "_verify", verify)
    outs = agent.run_once()
    assert [(o.name, o.status) for o in outs] == [("a-bad.tgb", "deferred"),
                                                  ("b-good.tgb", "succeeded")]
    assert bad.exists()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_file_given_to_apply_that_cannot_be_staged_or_read_is_said_to_stay_where_it_is(
        site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:  # type: ignore[no-untyped-def]
    """'agent apply FILE' (a file outside the inbox) on a full staging disk (seen on a real
    full tmpfs) said "deferred: cannot read: No space left on device" and logged that it
    "stays in the inbox and is tried again": it was never in the inbox and nothing tries it
    again. Now the outcome says whether staging or the read failed, and where the file
    stays; an inbox file keeps its "stays in the inbox" wording."""
    from agent.inbox import ReadyItem

    agent, kit, _ = site
    outside = make(kit, tmp_path / "given.tgb", 1, chain=False)
    before = outside.read_bytes()
    dest = drop(agent, make(kit, tmp_path / "dropped.tgb", 1, chain=False))
    inboxed = ReadyItem(name=dest.name, paths=(dest,), size=dest.stat().st_size,
                        kind="single", first_seen=0.0)

    def verify(item, admit):  # type: ignore[no-untyped-def]
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(agent, "_verify", verify)
    given = agent.process(ReadyItem(name=outside.name, paths=(outside,),
                                    size=len(before), kind="single", first_seen=0.0))
    dropped = agent.process(inboxed)
    what = (f"cannot stage it in {agent.config.staging}" if error == errno.ENOSPC
            else "cannot read it")
    assert (given.status, given.summary) == (
        "deferred", f"{what}: {os.strerror(error)}; {outside} is left where it is; run "
        "'tiangong agent apply' on it again")
    assert (dropped.status, dropped.summary) == (
        "deferred", f"{what}: {os.strerror(error)}; it stays in the inbox and is tried again")
    assert outside.read_bytes() == before and inboxed.paths[0].exists()
    assert applied(agent) == [] and agent.journal.rejections() == []
