"""Can this site run every step of a verified bundle? Checked before the bundle is accepted.

For each step of the verified manifest, in order (docs/agent.md, "What is checked before a
bundle is accepted"):

1. the step rules of docs/release-format.md §3 (``bundle.steps.validate_step``): known kind,
   exactly the normalized fields, file names without ``..``, absolute paths or hidden parts;
2. the executor's own rules (``Executor.validate``);
3. every file the step names (its script, or its manifests) is a payload of the bundle;
4. the connection it names is defined in ``agent.toml``, with the type its kind needs
   (``sql`` + ``postgres`` → ``type = "postgres"``, ``mysql`` → ``"mysql"``, ``k8s`` →
   ``"kubernetes"``).

A bundle that fails any of these is refused *before* its sequence is consumed and before any
step runs, so the hub can send a corrected bundle with the next sequence and nothing at the
site has changed. Secrets are not checked here: a bundle may carry them sealed, and a missing
one fails its step without running it.

This module only reads the manifest and the config; it does not touch files or the journal.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent.config import AgentConfig
from agent.executors import get_executor
from agent.executors.errors import ExecutorError
from bundle.dag import check_graph
from bundle.errors import ReleaseFormatError
from bundle.steps import needed_connection_type, referenced_files, validate_step

__all__ = ["check_steps"]


def check_steps(config: AgentConfig, steps: Sequence[Mapping[str, Any]],
                file_names: Collection[str]) -> str | None:
    """The first reason this agent cannot run ``steps``, or None when all can run."""
    try:
        check_graph(steps)  # ``after`` names steps of the bundle, no cycle (§3.7)
    except ReleaseFormatError as exc:
        return f"the step graph is invalid: {exc}"
    for idx, step in enumerate(steps):
        where = f"step {idx + 1} ({str(step.get('name'))[:100]!r})"
        try:
            validate_step(step, idx)
            get_executor(str(step.get("kind"))).validate(step)
        except (ReleaseFormatError, ExecutorError) as exc:
            return f"{where} is invalid: {exc}"
        for name in referenced_files(step):
            if name not in file_names:
                return f"{where} names {name!r}, which is not a file of the bundle"
        connection = step.get("connection")
        if connection is None:
            continue
        spec = config.connections.get(str(connection))
        if spec is None:
            known = ", ".join(sorted(config.connections)) or "none"
            return (f"{where} uses connection {connection!r}, which is not defined in "
                    f"{config.home / 'agent.toml'} (defined: {known})")
        needed = needed_connection_type(step)
        if needed is not None and spec.get("type") != needed:
            return (f"{where} needs a connection of type {needed!r}, but {connection!r} in "
                    f"{config.home / 'agent.toml'} has type {spec.get('type')!r}")
    return None
