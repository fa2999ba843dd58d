"""Holding accepted bundles by their maintenance windows and freezes, in-process with an
injected clock (agent.holds, agent.service; docs/agent.md "Windows and freezes")."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.holds import PolicyClock, decide
from agent.journal import JournalError
from agent.service import Agent
from bundle.manifest import Target
from bundle.release import load_release
from bundle.windows import Freeze, Once, Override, Policy, Weekly
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import Clock, drop, verified_result
from tests.fixtures.trust import NOW, TrustKit

# NOW is Fri 2027-01-15 08:00 UTC.
SAT_NIGHT = Weekly(("sat",), "01:00", "05:00", "Europe/Berlin")
SAT_OPENS = 1_800_000_000 + 16 * 3600  # Sat 2027-01-16 00:00 UTC = 01:00 Berlin
FROZEN_NOW = Freeze(Once(NOW - 3600, NOW + 86400), "quarter close")


def _release(tmp: Path, name: str, steps: list[tuple[str, str]]) -> Path:
    """A release of shell steps ``(name, script text)``."""
    d = tmp / f"rel-{name}-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    toml = f'format = 1\n[release]\nproduct = "{name}"\nversion = "1.0"\n'
    for i, (step, body) in enumerate(steps, 1):
        (d / f"s{i}.sh").write_text(body)
        toml += f'\n[[steps]]\nname = "{step}"\nkind = "shell"\nscript = "s{i}.sh"\n'
    (d / "release.toml").write_text(toml)
    return d


def _bundle(kit: TrustKit, release: Path, out: Path, seq: int,
            policy: Policy | None = None) -> Path:
    manifest, files = release_manifest(
        load_release(release), bundle_id=f"b{seq}-{uuid.uuid4().hex[:6]}",
        issuer=kit.release_key.key_id, target=Target(agents=("site-01",)), root_version=1,
        sequence=seq, created=NOW - 60, expires=NOW + 30 * 86400, counter=seq,
        author="alice", policy=policy)
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


def _result(agent: Agent, kit: TrustKit, path: Path | None, tmp: Path) -> dict[str, Any]:
    assert path is not None
    return verified_result(agent, kit, path, tmp)  # type: ignore[return-value]


def _states(agent: Agent, bundle_id: str) -> list[str]:
    return [s.state for s in agent.journal.steps(bundle_id, latest_only=True)]


def _counter(tmp: Path, tag: str) -> tuple[Path, str]:
    path = tmp / f"{tag}.runs"
    return path, f'echo run >> "{path}"\n'


def _runs(path: Path) -> int:
    return path.read_text().count("run") if path.exists() else 0


Site = tuple[Agent, TrustKit, Clock]


def test_a_bundle_outside_its_window_is_accepted_held_and_runs_when_it_opens(
        site: Site, tmp_path: Path) -> None:
    agent, kit, clock = site
    runs, script = _counter(tmp_path, "w")
    bundle = _bundle(kit, _release(tmp_path, "hello", [("one", script)]), tmp_path / "w.tgb",
                     1, Policy((SAT_NIGHT,)))
    out = agent.process(drop(agent, bundle))
    assert out.status == "on-hold"
    assert out.summary == "window opens Sat 2027-01-16 01:00 Europe/Berlin"
    bid = out.bundle_id or ""
    # Accepted (sequence used, files archived), nothing ran, nothing reported yet.
    assert agent.journal.trust(kit.hub_id).sequence == 1  # type: ignore[union-attr]
    assert (agent.config.archive / bundle.name).exists()
    rec = agent.journal.bundle(bid)
    assert rec is not None and rec.state == "held" and rec.summary == out.summary
    assert _states(agent, bid) == ["pending"] and _runs(runs) == 0
    assert list(agent.config.outbox.glob("*.tgr")) == []
    row = agent.status()["bundles"][0]
    assert row["hold"] == {"kind": "window", "reason": out.summary, "until": SAT_OPENS}
    assert row["policy"] == ["window: Sat 01:00–05:00 Europe/Berlin"]
    # A pass one second before the window: still held, nothing written again.
    clock.t = SAT_OPENS - 1
    assert [o.status for o in agent.run_once()] == ["on-hold"]
    assert _runs(runs) == 0
    clock.t = SAT_OPENS
    done = agent.run_once()
    assert [o.status for o in done] == ["succeeded"]
    assert _runs(runs) == 1
    result = _result(agent, kit, done[0].result, tmp_path)
    assert result["status"] == "succeeded" and "override" not in result["body"]


def test_the_daemon_knows_when_to_look_again(site: Site, tmp_path: Path) -> None:
    agent, kit, clock = site
    bundle = _bundle(kit, _release(tmp_path, "hello", [("one", "true\n")]),
                     tmp_path / "w.tgb", 1, Policy((SAT_NIGHT,)))
    assert agent.next_hold_wake() is None
    agent.process(drop(agent, bundle))
    assert agent.next_hold_wake() == SAT_OPENS - NOW
    clock.t = SAT_OPENS - 10
    assert agent.next_hold_wake() == 10


def test_a_freeze_beginning_between_two_steps_holds_the_rest(site: Site,
                                                             tmp_path: Path) -> None:
    agent, kit, clock = site
    clock_file = tmp_path / "policy-clock"
    clock_file.write_text(str(NOW))
    agent.policy_clock = PolicyClock(clock, lambda: 0, clock_file=str(clock_file))
    freeze_at, thaw = NOW + 3600, NOW + 7200
    first, first_script = _counter(tmp_path, "first")
    second, second_script = _counter(tmp_path, "second")
    release = _release(tmp_path, "midrun", [
        ("first", first_script + f'echo {freeze_at} > "{clock_file}"\n'),
        ("second", second_script)])
    policy = Policy((), (Freeze(Once(freeze_at, thaw), "quarter close"),))
    out = agent.process(drop(agent, _bundle(kit, release, tmp_path / "m.tgb", 1, policy)))
    bid = out.bundle_id or ""
    assert out.status == "on-hold"
    assert out.summary == "frozen until Fri 2027-01-15 10:00 UTC (quarter close)"
    assert _states(agent, bid) == ["succeeded", "pending"]
    assert (_runs(first), _runs(second)) == (1, 0)
    rec = agent.journal.bundle(bid)
    assert rec is not None and rec.state == "held"
    clock_file.write_text(str(thaw - 1))
    assert [o.status for o in agent.run_once()] == ["on-hold"]
    clock_file.write_text(str(thaw))
    done = agent.run_once()
    assert [o.status for o in done] == ["succeeded"]
    assert (_runs(first), _runs(second)) == (1, 1)  # the first step is not run again
    body = _result(agent, kit, done[0].result, tmp_path)["body"]
    assert [s["status"] for s in body["steps"]] == ["succeeded", "succeeded"]


def test_a_held_bundle_holds_the_later_ones(site: Site, tmp_path: Path) -> None:
    agent, kit, clock = site
    first = _bundle(kit, _release(tmp_path, "one", [("a", "true\n")]), tmp_path / "1.tgb", 1,
                    Policy((SAT_NIGHT,)))
    second = _bundle(kit, _release(tmp_path, "two", [("b", "true\n")]), tmp_path / "2.tgb", 2)
    out1 = agent.process(drop(agent, first))
    out2 = agent.process(drop(agent, second))
    assert (out1.status, out2.status) == ("on-hold", "on-hold")
    assert out2.summary == (f"after bundle {out1.bundle_id} (sequence 1, one 1.0), which is "
                            "held: window opens Sat 2027-01-16 01:00 Europe/Berlin")
    # run-now of the later one is refused: bundles apply in order. Nothing is recorded.
    with pytest.raises(ValueError, match="bundles apply in order, so run that one first"):
        agent.run_now(out2.bundle_id or "", "hurry", "alice")
    assert agent.journal.override(out2.bundle_id or "") is None
    assert _states(agent, out2.bundle_id or "") == ["pending"]
    clock.t = SAT_OPENS
    done = agent.run_once()
    assert [(o.bundle_id, o.status) for o in done] == [(out1.bundle_id, "succeeded"),
                                                        (out2.bundle_id, "succeeded")]
    results = [r for r in agent.journal.results()]
    assert [r["bundle_id"] for r in sorted(results, key=lambda r: r["result_seq"])] == [
        out1.bundle_id, out2.bundle_id]


def test_run_now_overrides_a_freeze_and_is_in_the_signed_result(site: Site,
                                                                tmp_path: Path) -> None:
    agent, kit, _ = site
    runs, script = _counter(tmp_path, "r")
    bundle = _bundle(kit, _release(tmp_path, "fix", [("one", script)]), tmp_path / "r.tgb",
                     1, Policy((), (FROZEN_NOW,)))
    out = agent.process(drop(agent, bundle))
    bid = out.bundle_id or ""
    assert out.status == "on-hold" and "(quarter close)" in out.summary
    override = agent.run_now(bid, "payment outage, ticket 4711", "alice")
    assert override == {"reason": "payment outage, ticket 4711", "by": "alice", "at": NOW}
    done = agent.run_accepted(bid)
    assert done.status == "succeeded" and _runs(runs) == 1
    body = _result(agent, kit, done.result, tmp_path)["body"]
    assert body["override"] == {"site": {"reason": "payment outage, ticket 4711",
                                         "by": "alice", "at": NOW,
                                         "command": "tiangong agent run-now"}}
    # Not held any more: a second run-now is refused and changes nothing.
    with pytest.raises(ValueError, match="is not held"):
        agent.run_now(bid, "again", "bob")
    assert agent.journal.override(bid) == override
    with pytest.raises(KeyError, match="no bundle nope"):
        agent.run_now("nope", "x", "bob")


def test_an_interrupted_run_now_bundle_names_the_override_in_its_result(
        site: Site, tmp_path: Path) -> None:
    agent, kit, _ = site
    bundle = _bundle(kit, _release(tmp_path, "cut", [("one", "true\n")]), tmp_path / "c.tgb",
                     1, Policy((), (FROZEN_NOW,)))
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    agent.run_now(bid, "outage", "alice")
    # The power goes while the step runs (journaled running, never finished).
    agent.journal.step_running(bid, 0, 1, str(tmp_path / "log"))
    agent.recover()
    results = sorted(agent.config.outbox.glob("*.tgr"))
    assert len(results) == 1
    result = _result(agent, kit, results[0], tmp_path)
    assert result["status"] == "interrupted"
    assert result["body"]["override"]["site"]["reason"] == "outage"


def test_a_hub_override_in_the_manifest_ignores_windows_and_freezes(site: Site,
                                                                   tmp_path: Path) -> None:
    agent, kit, _ = site
    hub = Override("hotfix for incident 12", "carol", "dave", NOW - 600)
    bundle = _bundle(kit, _release(tmp_path, "hot", [("one", "true\n")]), tmp_path / "h.tgb",
                     1, Policy((SAT_NIGHT,), (FROZEN_NOW,), hub))
    out = agent.process(drop(agent, bundle))
    assert out.status == "succeeded", out.summary
    body = _result(agent, kit, out.result, tmp_path)["body"]
    assert body["override"] == {"hub": hub.to_json()}


def test_a_restart_while_held_keeps_holding(site: Site, tmp_path: Path) -> None:
    agent, kit, clock = site
    runs, script = _counter(tmp_path, "restart")
    bundle = _bundle(kit, _release(tmp_path, "hello", [("one", script)]), tmp_path / "x.tgb",
                     1, Policy((SAT_NIGHT,)))
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    agent.close()
    again = Agent(load_config(agent.config.home), clock=clock)
    try:
        again.recover()
        assert [o.status for o in again.run_once()] == ["on-hold"]
        assert _runs(runs) == 0
        assert again.status()["bundles"][0]["hold"]["until"] == SAT_OPENS
        clock.t = SAT_OPENS + 60
        assert [o.status for o in again.run_once()] == ["succeeded"]
        assert _runs(runs) == 1
        assert again.journal.bundle(bid).state == "succeeded"  # type: ignore[union-attr]
    finally:
        again.close()


def test_retry_respects_a_freeze(site: Site, tmp_path: Path) -> None:
    agent, kit, clock = site
    policy = Policy((), (Freeze(Once(NOW + 3600, NOW + 7200), "audit"),))
    bundle = _bundle(kit, _release(tmp_path, "r", [("one", "true\n")]), tmp_path / "r.tgb",
                     1, policy)
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    clock.t = NOW + 3600
    out = agent.retry(bid, 1)
    assert out.status == "on-hold" and "(audit)" in out.summary
    assert _states(agent, bid) == ["pending"]


def test_retry_of_a_held_bundle_is_refused_and_changes_nothing(site: Site,
                                                                tmp_path: Path) -> None:
    agent, kit, _ = site
    bundle = _bundle(kit, _release(tmp_path, "r", [("one", "true\n"), ("two", "true\n")]),
                     tmp_path / "r.tgb", 1, Policy((SAT_NIGHT,)))
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    with pytest.raises(ValueError, match="is held \\(window opens Sat 2027-01-16 01:00 "
                       "Europe/Berlin\\); its steps have not failed"):
        agent.retry(bid, 2)
    assert [(s.idx, s.attempt, s.state) for s in agent.journal.steps(bid)] == [
        (0, 1, "pending"), (1, 1, "pending")]


def test_a_clock_set_back_does_not_reopen_a_window_that_is_over(site: Site,
                                                                  tmp_path: Path) -> None:
    agent, kit, clock = site
    window = Once(NOW - 7200, NOW - 3600)  # over when the bundle arrives (floor = NOW)
    bundle = _bundle(kit, _release(tmp_path, "late", [("one", "true\n")]), tmp_path / "l.tgb",
                     1, Policy((window,)))
    out = agent.process(drop(agent, bundle))
    assert out.status == "on-hold"
    assert out.summary == ("outside every window, and no window opens again (windows: "
                           "2027-01-15 06:00–07:00 UTC)")
    clock.t = NOW - 5000  # inside the window by the wall clock, below the time floor
    assert [o.status for o in agent.run_once()] == ["on-hold"]
    assert _states(agent, out.bundle_id or "") == ["pending"]


def test_the_policy_clock_never_goes_below_the_time_floor(tmp_path: Path) -> None:
    clock_file = tmp_path / "clock"
    clock_file.write_text("1000\n")
    assert PolicyClock(lambda: 5.0, lambda: 2000, clock_file=str(clock_file))() == 2000
    assert PolicyClock(lambda: 5.0, lambda: 0, clock_file=str(clock_file))() == 1000
    assert PolicyClock(lambda: 5.0, lambda: 0, clock_file=str(tmp_path / "none"))() == 5
    clock_file.write_text("soon")
    assert PolicyClock(lambda: 7.0, lambda: 3, clock_file=str(clock_file))() == 7


def test_record_override_refuses_what_is_not_held(site: Site, tmp_path: Path) -> None:
    agent, kit, _ = site
    bundle = _bundle(kit, _release(tmp_path, "ok", [("one", "true\n")]), tmp_path / "o.tgb", 1)
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    with pytest.raises(JournalError, match="is not held \\(it is succeeded\\)"):
        agent.journal.record_override(bid, "why", "alice")
    assert agent.journal.override(bid) is None


def test_a_clock_beyond_year_9997_holds_with_a_reason_instead_of_failing() -> None:
    frozen = Policy((), (FROZEN_NOW,)).to_json()
    decision = decide({"policy": frozen}, 2**40, None)
    assert decision is not None and decision.kind == "clock" and decision.until is None
    assert decision.text.startswith("cannot judge its windows and freezes: the time "
                                    "1099511627776 is outside what windows and freezes are "
                                    "judged for")


def test_decide_without_policy_or_with_an_override() -> None:
    assert decide({"policy": None}, NOW, None) is None
    frozen = Policy((), (FROZEN_NOW,)).to_json()
    assert decide({"policy": frozen}, NOW, None) is not None
    assert decide({"policy": frozen}, NOW, {"reason": "r", "by": "a", "at": 1}) is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{bid}", "--reason", "  "], 2, "--reason must be 1 to 4096 printable characters"),
        (["{bid}", "--reason", "bell\a"], 2, "--reason must be 1 to 4096 printable"),
        (["nope", "--reason", "x"], 1, "no bundle nope in the journal"),
        (["{other}", "--reason", "x"], 1, "this agent has not accepted that bundle file"),
        (["{junk}", "--reason", "x"], 1, "cannot be read as a bundle file"),
    ],
)
def test_run_now_refusals_change_nothing(site: Site, tmp_path: Path, args: list[str],
                                         code: int, message: str) -> None:
    from click.testing import CliRunner

    from tiangong.cli import root

    agent, kit, _ = site
    bundle = _bundle(kit, _release(tmp_path, "r", [("one", "true\n")]), tmp_path / "r.tgb", 1,
                     Policy((), (FROZEN_NOW,)))
    bid = agent.process(drop(agent, bundle)).bundle_id or ""
    other = _bundle(kit, _release(tmp_path, "o", [("one", "true\n")]), tmp_path / "o.tgb", 2)
    junk = tmp_path / "junk.tgb"
    junk.write_bytes(b"not a bundle")
    argv = [a.format(bid=bid, other=other, junk=junk) for a in args]
    result = CliRunner().invoke(root, ["agent", "run-now", *argv, "--home",
                                       str(agent.config.home)])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert agent.journal.override(bid) is None
    rec = agent.journal.bundle(bid)
    assert rec is not None and rec.state == "held"
    assert _states(agent, bid) == ["pending"]
    assert agent.journal.results() == []


def test_a_schema_2_journal_gains_the_overrides_table(tmp_path: Path) -> None:
    import sqlite3

    from agent.journal import SCHEMA_VERSION, Journal

    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE overrides")
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    j = Journal(path, create=False)
    try:
        assert j.override("b1") is None
        with pytest.raises(JournalError, match="no bundle b1"):
            j.record_override("b1", "why", "alice")
    finally:
        j.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION)
    db.close()
