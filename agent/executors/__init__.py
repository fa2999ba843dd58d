"""Step executors: one interface (``base.Executor``), one registry (here), one file each.

Adding a kind means adding one module and one line in ``_MODULES``. Executor modules are
imported lazily, so a site without, say, the kubernetes client can still run SQL and shell
steps; asking for a kind whose module cannot be imported raises ``UnknownStepKindError`` with
the reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.executors.base import Executor
from agent.executors.errors import UnknownStepKindError

__all__ = ["KINDS", "get_executor"]

# kind -> "module:ClassName"
_MODULES: dict[str, str] = {
    "sql": "agent.executors.sql:SqlExecutor",
    "k8s": "agent.executors.k8s:KubernetesExecutor",
    "shell": "agent.executors.shell:ShellExecutor",
    "agent-upgrade": "agent.executors.upgrade:AgentUpgradeExecutor",
    "file": "agent.executors.file:FileExecutor",
    "undo": "agent.executors.undo:UndoExecutor",
    "http": "agent.executors.http:HttpExecutor",
}
KINDS: tuple[str, ...] = tuple(sorted(_MODULES))

_cache: dict[str, Executor] = {}


def get_executor(kind: str) -> Executor:
    """Return the (shared, stateless) executor for ``kind``.

    Raises:
        UnknownStepKindError: ``kind`` is not registered, or its module cannot be imported.
    """
    if kind in _cache:
        return _cache[kind]
    target = _MODULES.get(kind)
    if target is None:
        raise UnknownStepKindError(f"unknown step kind {kind!r}; known kinds: {', '.join(KINDS)}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStepKindError(
            f"step kind {kind!r} is not available on this agent: {exc}"
        ) from exc
    cls: Any = getattr(module, cls_name)
    executor: Executor = cls()
    _cache[kind] = executor
    return executor
