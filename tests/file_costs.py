"""What each test file costs, to start the long ones first (see ``tests/conftest.py``).

``tests/file_costs.json`` maps a test file (``tests/e2e/test_hub_flow.py``) to the seconds its
tests took in a measured run of the suite. Only the ORDER of files depends on it: a file
missing from the table (a new one) is costed at :data:`SECONDS_PER_UNKNOWN_TEST` per test,
and a stale figure makes the run a little longer, never wrong. Refresh it from a run's JUnit
report after adding or reshaping slow tests::

    .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder \\
        --junitxml=/tmp/suite.xml -o junit_family=xunit1
    .venv/bin/python -m tests.file_costs /tmp/suite.xml   # rewrites tests/file_costs.json
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest

COSTS_FILE = Path(__file__).with_name("file_costs.json")
SECONDS_PER_UNKNOWN_TEST = 0.2  # about the suite's median for a unit-level test

Item = TypeVar("Item", bound=pytest.Item)


def load_costs(path: Path = COSTS_FILE) -> dict[str, float]:
    """The table, or an empty one when the file is missing or unreadable (order only)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def order_by_cost(items: Sequence[Item], costs: dict[str, float] | None = None) -> list[Item]:
    """``items`` grouped by file, the costliest file first (ties: collection order); the
    tests of one file keep their order."""
    table = load_costs() if costs is None else costs
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(file_of(item), []).append(item)

    def cost(name: str) -> float:
        known = table.get(name)
        return known if known is not None else SECONDS_PER_UNKNOWN_TEST * len(groups[name])

    ordered = sorted(groups, key=lambda name: -cost(name))  # sorted() is stable
    return [item for name in ordered for item in groups[name]]


def costs_from_junit(report: Path) -> dict[str, float]:
    """Seconds per test file in a JUnit report (``-o junit_family=xunit1``: each test case's
    time covers its setup, call and teardown)."""
    totals: dict[str, float] = {}
    # the report is one pytest just wrote on this machine, not untrusted input
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        parts = case.get("classname", "").split(".")
        module = next((i for i, p in enumerate(parts) if p.startswith("test_")), None)
        if module is None:
            continue
        name = "/".join(parts[: module + 1]) + ".py"
        totals[name] = totals.get(name, 0.0) + float(case.get("time") or 0.0)
    return {name: round(s, 1) for name, s in sorted(totals.items())}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.file_costs JUNIT.xml  (rewrites tests/file_costs.json)",
              file=sys.stderr)
        return 2
    costs = costs_from_junit(Path(argv[0]))
    if not costs:
        print(f"{argv[0]}: no test cases found; {COSTS_FILE} left as it was", file=sys.stderr)
        return 1
    COSTS_FILE.write_text(json.dumps(costs, indent=1) + "\n")
    print(f"{COSTS_FILE}: {len(costs)} files, {sum(costs.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
