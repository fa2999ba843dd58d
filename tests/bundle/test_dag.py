"""Step graph (docs/release-format.md §3.7): ``after`` in release.toml, its checks, the
normalized step, the schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bundle.dag import Schedule, check_graph, dependencies, graph_of
from bundle.errors import ReleaseFormatError
from bundle.release import load_release, parse_release_toml
from bundle.steps import validate_step

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "releases"


def _toml(*steps: dict[str, Any]) -> bytes:
    doc = {"format": 1, "release": {"product": "billing", "version": "1"},
           "steps": [{"kind": "shell", "script": "s.sh", **s} for s in steps]}
    return tomli_w.dumps(doc).encode()


def test_examples_keep_their_content_hash() -> None:
    # Measured with main before `after` existed: a release without it hashes as before.
    assert load_release(EXAMPLES / "billing-2.4.0").content_hash == (
        "9bc8a12213491c79bddf859ff7dc1aee226643e14992bf56f7e404f200cde832")
    assert load_release(EXAMPLES / "hello-1.0.0").content_hash == (
        "9f318276ac8605591d8b532557ae22875b67c0a1943d2b5b091ea5ec0a372ca6")


def test_after_is_normalized_only_when_given() -> None:
    spec = parse_release_toml(_toml({"name": "a"}, {"name": "b", "after": []},
                                    {"name": "c", "after": ["A", "b"]}), {"s.sh"})
    assert "after" not in spec.steps[0]
    assert spec.steps[1]["after"] == []
    assert spec.steps[2]["after"] == ["A", "b"]  # as written; matched ignoring case
    for i, step in enumerate(spec.steps):
        validate_step(step, i)
    assert dependencies(spec.steps) == [[], [], [0, 1]]
    assert graph_of(spec.steps)[2] == {"index": 3, "name": "c", "after": ["a", "b"]}


def test_after_may_name_a_later_step() -> None:
    spec = parse_release_toml(_toml({"name": "a", "after": ["b"]}, {"name": "b", "after": []}),
                              {"s.sh"})
    sched = Schedule.of(spec.steps)
    assert sched.ready() == [1]


@pytest.mark.parametrize(("steps", "message"), [
    ([{"name": "a", "after": ["nope"]}],
     "x/release.toml: step 1 ('a'), field after: item 1: no step is named 'nope' "
     "(the steps are 'a')"),
    ([{"name": "a"}, {"name": "b", "after": ["b"]}],
     "x/release.toml: step 2 ('b'), field after: item 1: a step cannot run after itself"),
    ([{"name": "a", "after": ["c"]}, {"name": "b", "after": ["a"]}, {"name": "c",
                                                                      "after": ["b"]}],
     "x/release.toml: step 1 ('a'), field after: the steps wait for each other in a cycle "
     "('a' waits for 'c' waits for 'b' waits for 'a'); none of them could ever start"),
    ([{"name": "a"}, {"name": "b", "after": ["a", "A"]}],
     "x/release.toml: step 2 ('b'), field after: 'A' is listed twice (step names "
     "ignore letter case)"),
    ([{"name": "a", "after": "b"}],
     "x/release.toml: step 1 ('a'), field after: must be a list, not a string"),
    ([{"name": "a", "after": [3]}],
     "x/release.toml: step 1 ('a'), field after: item 1: must be a string, not an integer"),
    ([{"name": "a", "afterr": ["b"]}],
     "x/release.toml: step 1 ('a'): 'afterr' is not a known field of a shell step; did you "
     "mean 'after'?"),
])
def test_bad_after_is_refused(steps: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ReleaseFormatError) as info:
        parse_release_toml(_toml(*steps), {"s.sh"}, "x/release.toml")
    assert str(info.value) == message


def test_manifest_graph_is_checked_again() -> None:
    # The agent checks a verified manifest's graph too (agent/stepcheck.py).
    steps = [{"name": "a", "after": ["b"]}, {"name": "b", "after": ["a"]}]
    with pytest.raises(ReleaseFormatError, match="cycle"):
        check_graph(steps)


def test_long_chain_does_not_recurse() -> None:
    steps = [{"name": f"s{i}", "after": [f"s{i + 1}"] if i < 1999 else []}
             for i in range(2000)]
    check_graph(steps)
    steps[1999]["after"] = ["s0"]
    with pytest.raises(ReleaseFormatError, match="cycle"):
        check_graph(steps)


def test_schedule_skips_dependants_of_a_stopping_failure() -> None:
    steps = [{"name": "a", "after": []}, {"name": "b", "after": ["a"]},
             {"name": "c", "after": ["b"]}, {"name": "d", "after": []}]
    sched = Schedule.of(steps)
    assert sched.ready() == [0, 3]
    sched.start(0)
    sched.finished(0, "failed")
    assert sched.blocked() == [(1, 0)]
    sched.finished(1, "skipped", 0)
    assert sched.blocked() == [(2, 0)]
    assert sched.ready() == [3]
