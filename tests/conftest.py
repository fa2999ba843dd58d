"""Root conftest: pytest only honours ``pytest_plugins`` here, so shared fixture plugins are
registered in this one list.

It also orders the test files longest first (``tests/file_costs.json``, see
``tests/file_costs.py``): ``make test`` hands whole files to two pytest-xdist workers in
collection order (``--dist loadfile --no-loadscope-reorder``), so the few long end-to-end
files start early and the two workers finish together instead of one running a long file
alone at the end. Tests inside a file keep their order; only the order of files changes."""

from __future__ import annotations

import pytest

from tests.file_costs import order_by_cost

pytest_plugins = ["tests.fixtures.databases", "tests.fixtures.kube", "tests.fixtures.saml_idp"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = order_by_cost(items)
