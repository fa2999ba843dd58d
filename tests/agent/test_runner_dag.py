"""Runner with a step graph (docs/release-format.md §3.7): order, parallel branches, a
failure skipping only what depends on it, holds and resuming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.agent.test_runner import _setup, _shell


def _order(tmp_path: Path) -> list[str]:
    return (tmp_path / "home" / "runs" / "b1" / "order").read_text().split()


def _mark(name: str) -> str:
    return f"echo {name} >> ../order\n"


def test_failure_skips_only_its_dependants(tmp_path: Path) -> None:
    steps = [
        _shell("schema", "a.sh"),
        _shell("migrate", "bad.sh", after=["schema"]),
        _shell("static files", "c.sh", after=[]),
        _shell("restart api", "d.sh", after=["migrate", "static files"]),
        _shell("warm cache", "e.sh", after=["static files"]),
    ]
    runner, journal, files = _setup(tmp_path, steps, {
        "a.sh": _mark("schema"), "bad.sh": _mark("migrate") + "exit 4\n",
        "c.sh": _mark("static"), "d.sh": _mark("restart"), "e.sh": _mark("warm")})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "failed"
    assert [r.state for r in out.steps] == ["succeeded", "failed", "succeeded", "skipped",
                                            "succeeded"]
    assert out.steps[3].summary == "not run: step 2 (migrate) failed"
    # One at a time (the default), lowest ready step first.
    assert _order(tmp_path) == ["schema", "migrate", "static", "warm"]
    assert [s.state for s in journal.steps("b1")] == [r.state for r in out.steps]
    assert "step 2 (migrate) failed" in out.summary


def test_skip_propagates_down_a_chain(tmp_path: Path) -> None:
    steps = [_shell("a", "bad.sh", after=[]), _shell("b", "x.sh", after=["a"]),
             _shell("c", "x.sh", after=["b"]), _shell("d", "x.sh", after=[])]
    runner, _, files = _setup(tmp_path, steps, {"bad.sh": "exit 1\n", "x.sh": _mark("x")})
    out = runner.run("b1", {"steps": steps}, files)
    assert [r.state for r in out.steps] == ["failed", "skipped", "skipped", "succeeded"]
    assert out.steps[2].summary == "not run: step 1 (a) failed"


def test_continue_lets_dependants_run(tmp_path: Path) -> None:
    steps = [_shell("a", "bad.sh", on_failure="continue"), _shell("b", "x.sh", after=["a"])]
    runner, _, files = _setup(tmp_path, steps, {"bad.sh": "exit 1\n", "x.sh": "true\n"})
    out = runner.run("b1", {"steps": steps}, files)
    assert [r.state for r in out.steps] == ["failed", "succeeded"]


# Each waits (bounded) until the other has started: both succeed only when run at once.
_MEET = """touch ../{me}.started
for i in $(seq 1 300); do [ -e ../{other}.started ] && exit 0; sleep 0.1; done
exit 9
"""


def test_independent_branches_run_at_once_up_to_the_limit(tmp_path: Path) -> None:
    steps = [_shell("left", "l.sh", after=[]), _shell("right", "r.sh", after=[]),
             _shell("join", "j.sh", after=["left", "right"])]
    runner, _, files = _setup(tmp_path, steps, {
        "l.sh": _MEET.format(me="left", other="right"),
        "r.sh": _MEET.format(me="right", other="left"), "j.sh": _mark("join")},
        max_parallel_steps=2)
    out = runner.run("b1", {"steps": steps}, files)
    assert [r.state for r in out.steps] == ["succeeded", "succeeded", "succeeded"], out.summary
    assert _order(tmp_path) == ["join"]


def test_hold_before_a_step_keeps_the_rest_pending(tmp_path: Path) -> None:
    steps = [_shell("a", "x.sh", after=[]), _shell("b", "x.sh", after=["a"]),
             _shell("c", "x.sh", after=[])]
    runner, journal, files = _setup(tmp_path, steps, {"x.sh": _mark("x")})
    answers = iter([None, "window closed"])
    out = runner.run("b1", {"steps": steps}, files, gate=lambda: next(answers))
    assert out.status == "held"
    assert [s.state for s in journal.steps("b1")] == ["succeeded", "pending", "pending"]
    # Later (window open): the rest runs, step 1 is not run again.
    out = runner.run("b1", {"steps": steps}, files, gate=lambda: None)
    assert [r.state for r in out.steps] == ["succeeded"] * 3
    assert _order(tmp_path) == ["x", "x", "x"]


def test_resume_keeps_an_earlier_failure_stopping_dependants(tmp_path: Path) -> None:
    steps = [_shell("a", "x.sh", after=[]), _shell("b", "x.sh", after=["a"]),
             _shell("c", "x.sh", after=[])]
    runner, journal, files = _setup(tmp_path, steps, {"x.sh": _mark("x")})
    journal.step_running("b1", 0, 1, "log")
    journal.step_finished("b1", 0, 1, "failed", "exit 1")
    out = runner.run("b1", {"steps": steps}, files)
    assert [r.state for r in out.steps] == ["failed", "skipped", "succeeded"]
    assert _order(tmp_path) == ["x"]


def test_invalid_graph_runs_nothing(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [_shell("a", "x.sh", after=["b"]),
                                   _shell("b", "x.sh", after=["a"])]
    runner, journal, files = _setup(tmp_path, steps, {"x.sh": _mark("x")})
    out = runner.run("b1", {"steps": steps}, files)
    assert out.status == "failed"
    assert "cycle" in out.summary
    assert [s.state for s in journal.steps("b1")] == ["skipped", "skipped"]
    assert not (tmp_path / "home" / "runs" / "b1" / "order").exists()

