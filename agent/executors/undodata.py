"""Undo data on disk: what a step records before it changes anything (docs/agent.md, "Undo
data"), and reading it back for a rollback.

One directory per step of a bundle, ``<home>/undo/<bundle id>/<step number, 3 digits>/``,
holding ``undo.json`` (a JSON object with at least ``kind``) and, for file steps, ``previous``
(the replaced bytes). Every file is written to a temporary name, fsynced, renamed into place
and the directory fsynced. A record is written once: if it exists, it is kept, so it always
describes the state before the bundle first touched anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.executors.base import StepContext, StepOutcome
from agent.faults import crash_point
from signing.fileio import fsync_dir

__all__ = ["UNDO_PREVIOUS", "UNDO_RECORD", "read_record", "record_script_undo", "step_undo_dir",
           "write_durably", "write_record"]

UNDO_RECORD = "undo.json"
UNDO_PREVIOUS = "previous"


def step_undo_dir(undo_root: Path, bundle_id: str, number: int) -> Path:
    """Where step ``number`` (1-based) of ``bundle_id`` keeps its undo data."""
    return undo_root / bundle_id / f"{number:03d}"


def write_durably(dest: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Temp file in dest's directory, mode/owner set, fsynced, renamed over dest, dir fsynced.

    Raises:
        OSError: the write failed; dest is unchanged and no temporary file is left.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tiangong-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
            if uid != -1 or gid != -1:
                os.fchown(fh.fileno(), uid, gid)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def write_record(undo_dir: Path, doc: Mapping[str, Any], previous: bytes | None = None) -> bool:
    """Record ``doc`` (and ``previous``) in ``undo_dir`` unless a record exists there; then
    reach crash point ``undo-recorded``. Returns True when written now.

    Raises:
        OSError: it could not be written (the step must then change nothing).
    """
    record = undo_dir / UNDO_RECORD
    fresh = not record.exists()
    if fresh:
        undo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if previous is not None:
            write_durably(undo_dir / UNDO_PREVIOUS, previous, 0o600)
        write_durably(record, json.dumps(doc, sort_keys=True).encode("utf-8"), 0o600)
    crash_point("undo-recorded")
    return fresh


def record_script_undo(ctx: StepContext, key: str) -> StepOutcome | None:
    """For a sql or shell step: record, before it runs, that it ran here and its ``down`` or
    ``rollback`` script (``key``; None when it has none), so a rollback runs that script on
    this agent only, or says plainly that the step ran here and cannot be undone.
    Returns the failed outcome to report when the record cannot be written (then the step
    must not run), else None.
    """
    if ctx.undo_dir is None:
        return None
    try:
        write_record(ctx.undo_dir, {"kind": str(ctx.step["kind"]),
                                    "script": ctx.step.get(key)})
    except OSError as exc:
        message = (f"cannot record undo data in {ctx.undo_dir}: {exc.strerror or exc}; "
                   "nothing was run")
        ctx.log.write(message, "tiangong")
        return StepOutcome("failed", message)
    return None


def read_record(undo_dir: Path) -> dict[str, Any] | None:
    """The record in ``undo_dir``, or None when there is none.

    Raises:
        ValueError: the record exists but cannot be read or is not a JSON object.
    """
    try:
        doc = json.loads((undo_dir / UNDO_RECORD).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{undo_dir / UNDO_RECORD} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise ValueError(f"{undo_dir / UNDO_RECORD} is not an undo record")
    return doc
