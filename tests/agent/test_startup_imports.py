"""What an agent process imports to start: the Kubernetes client, the SQL drivers and
APScheduler are imported by the first step (or schedule) that needs them, not by every
`tiangong agent …` process (the Kubernetes client alone is most of a second of CPU); the
hub's stack never. The steps themselves are tested with real peers in tests/agent/executors."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["kubernetes", "urllib3", "psycopg", "pymysql", "apscheduler", "flask", "sqlalchemy",
         "alembic"]


def test_the_agent_commands_import_no_step_dependency_until_a_step_needs_it() -> None:
    code = ("import json, sys\n"
            "import agent.cli, agent.service, agent.plancheck, agent.jobs, agent.executors.undo\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_importing_one_small_bundle_module_does_not_import_the_rest() -> None:
    code = ("import sys\n"
            "import bundle.crashhook, bundle.errors\n"
            "from bundle import BundleError\n"
            "print(sorted(m for m in sys.modules if m.startswith('bundle.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["['bundle.crashhook',", "'bundle.errors']"]


def test_every_public_name_of_bundle_is_in_its_lazy_table_and_resolves() -> None:
    """``bundle.__all__`` (what mypy and readers see) and ``bundle._EXPORTS`` (what
    ``__getattr__`` imports) name the same things, and each is found where the table says."""
    import importlib

    import bundle

    assert sorted(bundle.__all__) == sorted(bundle._EXPORTS)
    for name, (module, attribute) in bundle._EXPORTS.items():
        assert getattr(bundle, name) is getattr(importlib.import_module(module), attribute)
