"""The agent's state as a node-exporter textfile (docs/agent.md, "Metrics").

An agent is no server: it publishes its figures the way node-exporter's *textfile collector*
reads them — a ``*.prom`` file in the Prometheus text format, in the directory node-exporter
is started with (``--collector.textfile.directory``). ``agent.toml``::

    [metrics]
    textfile = "/var/lib/node_exporter/textfile_collector/tiangong-agent.prom"

``agent run`` rewrites it after every pass that did something, and at least every
:data:`WRITE_EVERY_S` seconds, **atomically**: a temporary file in the same directory whose
name does not end in ``.prom`` (the collector never reads it), flushed and fsynced, then
renamed over the old file, so a scrape sees the old file or the new one, never half of one.

Deliberately not here: an HTTP endpoint (sites are often dark; node-exporter is what they
run), and anything secret (no paths of secrets, no step output).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WRITE_EVERY_S", "AgentFigures", "render", "write_textfile"]

WRITE_EVERY_S = 15.0  # seconds between two writes of the textfile when nothing happens


@dataclass(frozen=True)
class AgentFigures:
    """What the textfile says about one agent (collected by :mod:`agent.service`)."""

    agent_id: str
    environment: str
    hub_id: str
    sequence: int | None  # the newest accepted sequence (None: nothing accepted)
    root_version: int | None
    bundles: Mapping[str, int]  # journal state -> bundles in it
    inbox_waiting: int  # files settling or waiting for their other parts
    inbox_held: int  # bundles held for a predecessor or for space
    quarantined: int  # files refused into quarantine/ (still there)
    results_waiting: int  # result files in outbox/ not yet carried away
    live_connected: bool | None  # None: no live channel configured
    problems: Iterable[str] = field(default_factory=tuple)  # areas failing now (disk, journal…)
    written_at: float = 0.0  # Unix time of this write


def _label(value: str) -> str:
    """A label value, escaped as the text format says (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(f: AgentFigures) -> str:
    """The Prometheus text format of ``f`` (every family with HELP and TYPE)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {_number(value)}" if text
                       else f"{name} {_number(value)}")

    family("tiangong_agent_info", "gauge", "The agent's identity (value always 1)",
           [({"agent_id": f.agent_id, "environment": f.environment, "hub_id": f.hub_id}, 1)])
    family("tiangong_agent_sequence", "gauge",
           "Newest bundle sequence accepted (NaN: none yet)",
           [({}, float("nan") if f.sequence is None else f.sequence)])
    family("tiangong_agent_root_version", "gauge", "Version of the pinned trusted root",
           [({}, float("nan") if f.root_version is None else f.root_version)])
    family("tiangong_agent_bundles", "gauge", "Bundles in the journal by state",
           [({"state": state}, n) for state, n in sorted(f.bundles.items())])
    family("tiangong_agent_inbox_waiting", "gauge",
           "Inbox files settling or waiting for their other parts", [({}, f.inbox_waiting)])
    family("tiangong_agent_inbox_held", "gauge",
           "Bundles held for a predecessor or for disk space", [({}, f.inbox_held)])
    family("tiangong_agent_quarantined", "gauge", "Refused files kept in quarantine/",
           [({}, f.quarantined)])
    family("tiangong_agent_results_waiting", "gauge",
           "Result files in outbox/ not yet carried to the hub", [({}, f.results_waiting)])
    if f.live_connected is not None:
        family("tiangong_agent_live_connected", "gauge",
               "1 while the live channel to the hub is authenticated",
               [({}, 1 if f.live_connected else 0)])
    family("tiangong_agent_problem", "gauge",
           "1 for each area that keeps failing now (the agent log says why)",
           [({"area": area}, 1) for area in sorted(f.problems)])
    family("tiangong_agent_textfile_written_timestamp_seconds", "gauge",
           "When the agent wrote this file (Unix time): an old value means a stopped agent",
           [({}, f.written_at)])
    return "\n".join(out) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file in the same directory, not
    ending in ``.prom``; fsync; rename; fsync of the directory).

    Raises:
        OSError: the directory is missing or not writable (the caller logs it once).
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # node-exporter runs as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
