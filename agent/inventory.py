"""What this agent is and can do, for the hub's preflight (issue 14 §3; docs/agent.md,
"Inventory").

:func:`collect` gathers: the agent's version, the OS, free disk space of the agent's home,
CPU count and memory, the NAMES of the connections ``agent.toml`` defines with their types,
the step kinds this agent can run, the time zone, and the maintenance windows it last received
(the newest accepted bundle's policy, as text). It goes into every result body
(``agent.results``) and into the live channel's STATE message (``agent.live``,
docs/live-protocol.md §3.1), whose rules (:mod:`bundle.sync.state`) bound every value: the
strings here are cut to those bounds, and connection names a STATE cannot carry are left out.

It deliberately never includes a connection's details (DSNs, kubeconfig paths, hosts) or any
secret: only names and types, which the release itself names too.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

from agent.config import AgentConfig

__all__ = ["INVENTORY_FORMAT", "collect", "step_kinds"]

INVENTORY_FORMAT = 1
_PRINTABLE_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")  # bundle.sync.state's rule


def step_kinds() -> list[str]:
    """The step kinds whose executor this agent can load (a missing optional library, say
    the Kubernetes client, leaves its kind out)."""
    from agent.executors import KINDS, get_executor
    from agent.executors.errors import UnknownStepKindError

    out = []
    for kind in KINDS:
        try:
            get_executor(kind)
        except UnknownStepKindError:
            continue
        out.append(kind)
    return out


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _free_disk(config: AgentConfig) -> int | None:
    try:
        return int(shutil.disk_usage(config.home).free)
    except OSError:
        return None


def _time_zone() -> str:
    tz = os.environ.get("TZ")
    if tz:
        return tz
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            return link.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return time.tzname[0]


def collect(config: AgentConfig, version: str, window: str | None = None
            ) -> dict[str, Any]:
    """The inventory as a JSON-safe dict (docs/agent.md, "Inventory"). ``window``: the
    windows of the newest accepted bundle's policy (``Policy.describe_windows``), None when
    no bundle brought one."""
    connections: Mapping[str, Mapping[str, Any]] = config.connections
    return {
        "format": INVENTORY_FORMAT,
        "agent_version": version[:64],
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})"[:200],
        "free_disk_bytes": _free_disk(config),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "connections": {name: str(spec.get("type"))[:64] for name, spec in
                        sorted(connections.items())[:256]
                        if _PRINTABLE_NAME.fullmatch(name)},
        "step_kinds": step_kinds(),
        "time_zone": _time_zone()[:64],
        "window": None if window is None else window[:200],
    }
