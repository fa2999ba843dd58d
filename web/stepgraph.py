"""The step graph of a release (docs/release-format.md §3.7) as rows for the release and
deployment pages: a table, no script.

Each row: the step's number, name, kind, the steps it runs after (by number and name), its
depth (how many steps wait before it on the longest path, for indentation) and, on a
deployment page, the state the signed result reports. The graph itself comes from
``bundle.dag``; this module only shapes it for templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bundle.dag import dependencies, has_after

__all__ = ["graph_rows"]


def graph_rows(steps: Sequence[Mapping[str, Any]],
               states: Mapping[int, str] | None = None) -> list[dict[str, Any]] | None:
    """Rows for the "Step graph" table, or None when the release gives no ``after`` (its
    steps are a plain list, shown as such). ``states``: step number → reported state."""
    if not steps or not has_after(steps):
        return None
    deps = dependencies(steps)
    depth: dict[int, int] = {}
    pending = list(range(len(steps)))
    while pending:  # the graph is acyclic (checked when the release was created)
        rest = []
        for i in pending:
            if all(d in depth for d in deps[i]):
                depth[i] = 1 + max((depth[d] for d in deps[i]), default=-1)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            break
        pending = rest
    return [
        {"n": i + 1, "name": str(step.get("name")), "kind": str(step.get("kind")),
         "after": [(d + 1, str(steps[d].get("name"))) for d in deps[i]],
         "depth": depth.get(i, 0),
         "state": (states or {}).get(i + 1)}
        for i, step in enumerate(steps)
    ]
