"""The step graph of a release: which step waits for which (docs/release-format.md §3.7).

A step may name the steps it runs after (``after = ["create schema", ...]``). A step that
gives no ``after`` runs after the step before it, exactly as releases without ``after`` always
ran; ``after = []`` says "after nothing" (a root). So a release without any ``after`` is one
chain, and its graph and order are unchanged.

* :func:`check_graph` — for the hub (``release.toml``) and the agent (a verified manifest):
  every name in ``after`` is a step of the release, not the step itself, and there is no
  cycle. Raises :class:`ReleaseFormatError` naming the step.
* :func:`dependencies` — each step's effective predecessors, by index.
* :func:`graph_of` — a JSON-safe description for results and pages.
* :class:`Schedule` — the sans-I/O scheduler the agent's runner feeds with outcomes: which
  steps may start now, and which are skipped because a step they depend on failed.

This module deliberately does not run anything, know about threads or the journal, or decide
how many steps run at once (the caller's limit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bundle.errors import ReleaseFormatError

__all__ = ["Schedule", "check_graph", "dependencies", "graph_of", "has_after"]


def _label(index: int, steps: Sequence[Mapping[str, Any]]) -> str:
    return f"step {index + 1} ({steps[index].get('name')!r})"


def has_after(steps: Sequence[Mapping[str, Any]]) -> bool:
    """True when any step gives ``after`` (the release is a graph, not only a chain)."""
    return any("after" in step for step in steps)


def dependencies(steps: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Each step's predecessors (indexes, in the order ``after`` names them).

    A step without ``after`` follows the step before it. Assumes :func:`check_graph` passed.
    """
    by_name = {str(step["name"]).casefold(): i for i, step in enumerate(steps)}
    out: list[list[int]] = []
    for i, step in enumerate(steps):
        if "after" in step:
            out.append([by_name[str(name).casefold()] for name in step["after"]])
        else:
            out.append([i - 1] if i > 0 else [])
    return out


def check_graph(steps: Sequence[Mapping[str, Any]]) -> None:
    """Check the ``after`` lists of normalized steps (names exist, no self, no cycle).

    Names are matched ignoring letter case, like step names' uniqueness (§3.1).

    Raises:
        ReleaseFormatError: ``step 3 ('migrate'), field after: ...`` naming the rule.
    """
    by_name = {str(step.get("name")).casefold(): i for i, step in enumerate(steps)}
    for i, step in enumerate(steps):
        for pos, name in enumerate(step.get("after", ()), 1):
            j = by_name.get(str(name).casefold())
            if j is None:
                known = ", ".join(repr(s.get("name")) for s in steps[:8])
                more = ", ..." if len(steps) > 8 else ""
                raise ReleaseFormatError(
                    f"{_label(i, steps)}, field after: item {pos}: no step is named "
                    f"{name!r} (the steps are {known}{more})"
                )
            if j == i:
                raise ReleaseFormatError(
                    f"{_label(i, steps)}, field after: item {pos}: a step cannot run after "
                    "itself"
                )
    deps = dependencies(steps)
    cycle = _find_cycle(deps)
    if cycle is not None:
        path = " waits for ".join(repr(steps[k].get("name")) for k in cycle)
        raise ReleaseFormatError(
            f"{_label(cycle[0], steps)}, field after: the steps wait for each other in a "
            f"cycle ({path}); none of them could ever start"
        )


def _find_cycle(deps: Sequence[Sequence[int]]) -> list[int] | None:
    """A cycle as indexes, each waiting for the next, the first repeated at the end; or None.

    Iterative depth-first search (a 1000-step chain must not hit the recursion limit).
    """
    white, grey, black = 0, 1, 2
    colour = [white] * len(deps)
    for start in range(len(deps)):
        if colour[start] != white:
            continue
        stack: list[tuple[int, int]] = [(start, 0)]
        colour[start] = grey
        while stack:
            node, pos = stack[-1]
            if pos < len(deps[node]):
                stack[-1] = (node, pos + 1)
                nxt = deps[node][pos]
                if colour[nxt] == grey:
                    path = [n for n, _ in stack]
                    return [*path[path.index(nxt):], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
            else:
                colour[node] = black
                stack.pop()
    return None


def graph_of(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{"index": 1, "name": ..., "after": [names]}, ...]``: every step's effective
    predecessors by name (a step without ``after`` lists the step before it)."""
    deps = dependencies(steps)
    return [
        {"index": i + 1, "name": str(step["name"]), "after": [str(steps[j]["name"]) for j in d]}
        for i, (step, d) in enumerate(zip(steps, deps, strict=True))
    ]


@dataclass
class Schedule:
    """Which steps may start, given what has finished (sans-I/O).

    ``stopping[i]`` is True when a failure of step ``i`` stops what depends on it
    (``on_failure = "stop"``). Feed outcomes with :meth:`finished`; ask :meth:`ready` for the
    steps that may start now (lowest index first) and :meth:`blocked` for the steps that can
    never start because a step they depend on failed, with that step's index.
    """

    deps: list[list[int]]
    stopping: list[bool]
    done: dict[int, str] = field(default_factory=dict)  # index -> succeeded|failed|skipped...
    started: set[int] = field(default_factory=set)
    causes: dict[int, int] = field(default_factory=dict)  # skipped index -> failed index

    @classmethod
    def of(cls, steps: Sequence[Mapping[str, Any]]) -> Schedule:
        return cls(dependencies(steps),
                   [step.get("on_failure", "stop") == "stop" for step in steps])

    def start(self, index: int) -> None:
        self.started.add(index)

    def finished(self, index: int, state: str, cause: int | None = None) -> None:
        """Record step ``index``'s final state; ``cause``: for ``skipped``, the step whose
        failure stopped it."""
        self.started.add(index)
        self.done[index] = state
        if cause is not None:
            self.causes[index] = cause

    def cause(self, index: int) -> int | None:
        """The step whose failure (or skip) stops step ``index``, or None: it may run."""
        for dep in self.deps[index]:
            state = self.done.get(dep)
            if state in ("failed", "interrupted") and self.stopping[dep]:
                return dep
            if state in ("skipped", "cancelled"):
                return self.causes.get(dep, dep)
        return None

    def blocked(self) -> list[tuple[int, int]]:
        """``(index, failed step index)`` for unstarted steps a failure stops."""
        out = []
        for i in range(len(self.deps)):
            if i in self.started:
                continue
            cause = self.cause(i)
            if cause is not None:
                out.append((i, cause))
        return out

    def ready(self) -> list[int]:
        """Unstarted steps whose predecessors have all finished without a stopping failure."""
        return [
            i for i in range(len(self.deps))
            if i not in self.started
            and all(d in self.done for d in self.deps[i])
            and self.cause(i) is None
        ]
