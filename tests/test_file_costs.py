"""The suite's file order (tests/file_costs.py): costliest file first, tests of a file kept
together and in their order, unknown files costed by their number of tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.file_costs import SECONDS_PER_UNKNOWN_TEST, costs_from_junit, load_costs, order_by_cost


@dataclass
class FakeItem:
    nodeid: str


def ids(items: list[FakeItem]) -> list[str]:
    return [i.nodeid for i in items]


def test_files_are_ordered_costliest_first_and_keep_their_tests_together() -> None:
    items = [FakeItem(n) for n in (
        "tests/a/test_x.py::t1", "tests/a/test_x.py::t2", "tests/b/test_y.py::t1",
        "tests/c/test_z.py::t1", "tests/a/test_x.py::t3", "tests/b/test_y.py::t2")]
    costs = {"tests/a/test_x.py": 1.0, "tests/b/test_y.py": 30.0}
    ordered = order_by_cost(items, costs)  # type: ignore[type-var]
    assert ids(ordered) == [
        "tests/b/test_y.py::t1", "tests/b/test_y.py::t2",
        "tests/a/test_x.py::t1", "tests/a/test_x.py::t2", "tests/a/test_x.py::t3",
        "tests/c/test_z.py::t1"]  # test_z: unknown, one test
    assert SECONDS_PER_UNKNOWN_TEST < 1.0


def test_unknown_files_cost_by_their_tests_and_ties_keep_collection_order() -> None:
    items = [FakeItem(f"tests/test_{f}.py::t{i}") for f, n in (("a", 1), ("b", 3), ("c", 1))
             for i in range(n)]
    assert ids(order_by_cost(items, {})) == [  # type: ignore[type-var]
        "tests/test_b.py::t0", "tests/test_b.py::t1", "tests/test_b.py::t2",
        "tests/test_a.py::t0", "tests/test_c.py::t0"]


def test_costs_are_summed_per_file_from_a_junit_report(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.e2e.test_flow" name="a" time="10.25"/>'
        '<testcase classname="tests.e2e.test_flow" name="b" time="2"/>'
        '<testcase classname="tests.agent.executors.test_k8s.TestApply" name="c" time="1.5"/>'
        '<testcase classname="" name="collect-error" time="0"/>'
        '</testsuite></testsuites>')
    assert costs_from_junit(report) == {"tests/agent/executors/test_k8s.py": 1.5,
                                        "tests/e2e/test_flow.py": 12.2}


def test_a_missing_or_broken_table_orders_by_test_count(tmp_path: Path) -> None:
    assert load_costs(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert load_costs(tmp_path / "bad.json") == {}
    (tmp_path / "list.json").write_text("[1, 2]")
    assert load_costs(tmp_path / "list.json") == {}
