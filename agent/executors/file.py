"""The ``file`` step: place a release file on the agent's machine, recording undo data first.

docs/release-format.md §3.2 (``file``) and docs/agent.md ("Undo data"). In order:

1. The content is read from the staged, digest-checked payload and, with ``render = true``,
   rendered: ``${name}`` is replaced by the step's ``params[name]`` and ``$$`` by ``$``; a name
   that is not a parameter fails the step before anything changes.
2. The destination is checked: a symbolic link there is refused unless
   ``follow_symlink = true`` (then its target is replaced), and anything but a regular file is
   refused. An owner or group that is not the agent's own needs the agent to run as root.
3. **Undo data** is written to the step's undo directory and fsynced: ``undo.json`` (did the
   file exist, its mode, owner and group) and, when it existed, ``previous`` (its bytes). An
   existing record is never overwritten, so it always describes the file as it was before the
   bundle first touched it. Crash point ``undo-recorded``.
4. The new file is written to a temporary file in the destination's directory, given its mode
   and owner, fsynced, renamed over the destination, and the directory is fsynced: a crash
   leaves the old file or the new one, never a mix.

:func:`restore_file` reverses it from the undo directory (used by rollbacks).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from agent.executors.base import StepContext, StepLog, StepOutcome
from agent.executors.errors import StepSpecError
from agent.executors.undodata import (
    UNDO_PREVIOUS,
    UNDO_RECORD,
    read_record,
    write_durably,
    write_record,
)
from bundle.errors import ReleaseFormatError
from bundle.steps import validate_step
from signing.fileio import fsync_dir

__all__ = ["UNDO_PREVIOUS", "UNDO_RECORD", "FileExecutor", "FileStepError", "render",
           "restore_file"]

_PLACEHOLDER_RE = re.compile(r"\$\$|\$\{([^}]*)\}")


class FileStepError(Exception):
    """The step cannot be done; the message is the step's failure summary."""


def render(text: str, params: Mapping[str, str], source: str) -> str:
    """Replace ``${name}`` by ``params[name]`` and ``$$`` by ``$``.

    Raises:
        FileStepError: naming every placeholder that is not a parameter.
    """
    unknown: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in params:
            unknown.append(name)
            return ""
        return params[name]

    out = _PLACEHOLDER_RE.sub(sub, text)
    if unknown:
        names = ", ".join(repr(n) for n in dict.fromkeys(unknown))
        known = ", ".join(repr(n) for n in params) or "none"
        raise FileStepError(f"{source}: placeholder(s) {names} are not parameters of the step "
                            f"(its params: {known}); write $$ for a literal $")
    return out


def _account_id(value: str | None, *, group: bool) -> int:
    if value is None:
        return -1
    if value.isdecimal():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid if group else pwd.getpwnam(value).pw_uid
    except KeyError:
        raise FileStepError(f"{'group' if group else 'user'} {value!r} does not exist on this "
                            "machine") from None


def _destination(path: str, follow: bool) -> tuple[Path, os.stat_result | None]:
    """The file to replace (a followed link's target) and its status (None: absent)."""
    dest = Path(path)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise FileStepError(f"{dest.parent} is not an existing directory; the step does "
                                "not create directories") from None
        return dest, None
    if stat.S_ISLNK(st.st_mode):
        if not follow:
            raise FileStepError(f"{dest} is a symbolic link (to {os.readlink(dest)!r}); the step "
                                "refuses to follow it unless follow_symlink = true")
        return _destination(str(dest.resolve()), follow=False)
    if not stat.S_ISREG(st.st_mode):
        raise FileStepError(f"{dest} exists and is not a regular file; nothing was changed")
    return dest, st


def _record_undo(undo_dir: Path, dest: Path, st: os.stat_result | None) -> bool:
    """Write the undo record for ``dest`` unless one exists; True when written now."""
    if (undo_dir / UNDO_RECORD).exists():
        return write_record(undo_dir, {})
    doc: dict[str, Any] = {"kind": "file", "path": str(dest), "existed": st is not None}
    data = None
    if st is not None:
        data = dest.read_bytes()
        doc.update(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                   sha256=hashlib.sha256(data).hexdigest())
    return write_record(undo_dir, doc, data)


def restore_file(undo_dir: Path, log: StepLog) -> str:
    """Put back the file recorded in ``undo_dir``: the previous bytes, mode and owner, or
    remove the file when there was none. Returns a sentence for the outcome.

    Raises:
        FileStepError: no usable record, or the restore failed (the message says so).
    """
    try:
        doc = read_record(undo_dir)
    except ValueError as exc:
        raise FileStepError(str(exc)) from None
    if doc is None or doc["kind"] != "file":
        raise FileStepError(f"{undo_dir} holds no undo record of a file step")
    dest = Path(str(doc["path"]))
    try:
        if not doc["existed"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
                fsync_dir(dest.parent)
            log.write(f"removed {dest} (it did not exist before)", "file")
            return f"removed {dest}, which the release had created"
        data = (undo_dir / UNDO_PREVIOUS).read_bytes()
        if hashlib.sha256(data).hexdigest() != doc["sha256"]:
            raise FileStepError(f"{undo_dir / UNDO_PREVIOUS} does not match its recorded "
                                "SHA-256; the file was not restored")
        owned = os.geteuid() == 0
        write_durably(dest, data, int(doc["mode"]), int(doc["uid"]) if owned else -1,
                       int(doc["gid"]) if owned else -1)
    except OSError as exc:
        raise FileStepError(f"cannot restore {dest}: {exc.strerror or exc}") from None
    log.write(f"restored {dest} ({len(data)} bytes, mode {int(doc['mode']):04o})", "file")
    return f"restored the previous {dest}"


class SchemaValidated:
    """``validate`` by the rules of ``bundle.steps`` alone (kinds with no agent-side rules)."""

    def validate(self, step: Mapping[str, Any]) -> None:
        """Raises StepSpecError naming the field."""
        try:
            validate_step(step)
        except ReleaseFormatError as exc:
            raise StepSpecError(str(exc)) from None


class FileExecutor(SchemaValidated):
    """Runs ``file`` steps."""

    kind: ClassVar[str] = "file"

    def run(self, ctx: StepContext) -> StepOutcome:
        try:
            return self._run(ctx)
        except FileStepError as exc:
            ctx.log.write(str(exc), "file")
            return StepOutcome("failed", str(exc))
        except OSError as exc:
            message = f"cannot place {ctx.step['path']}: {exc.strerror or exc}"
            ctx.log.write(message, "file")
            return StepOutcome("failed", message)

    def _run(self, ctx: StepContext) -> StepOutcome:
        step = ctx.step
        source = str(step["source"])
        data = ctx.files[source].read_bytes()
        if step["render"]:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise FileStepError(f"{source} is not UTF-8 text and cannot be rendered; "
                                    "nothing was changed") from None
            data = render(text, step["params"], source).encode("utf-8")
        uid = _account_id(step.get("owner"), group=False)
        gid = _account_id(step.get("group"), group=True)
        if os.geteuid() != 0 and (uid not in (-1, os.geteuid()) or
                                  gid not in (-1, *os.getgroups(), os.getegid())):
            raise FileStepError("owner/group other than the agent's own need the agent to run "
                                "as root; nothing was changed")
        dest, st = _destination(str(step["path"]), bool(step["follow_symlink"]))
        if ctx.undo_dir is None:
            raise FileStepError("this agent gives the step no undo directory; nothing changed")
        try:
            fresh = _record_undo(ctx.undo_dir, dest, st)
        except OSError as exc:
            raise FileStepError(f"cannot record undo data in {ctx.undo_dir}: "
                                f"{exc.strerror or exc}; nothing was changed") from None
        ctx.log.write(f"undo data for {dest} {'recorded' if fresh else 'already recorded'} "
                      f"({'previous file kept' if st is not None else 'it did not exist'})",
                      "file")
        write_durably(dest, data, int(str(step["mode"]), 8), uid, gid)
        digest = hashlib.sha256(data).hexdigest()
        ctx.log.write(f"placed {dest}: {len(data)} bytes, mode {step['mode']}, "
                      f"sha256 {digest}", "file")
        return StepOutcome("succeeded", f"placed {dest} ({len(data)} bytes)", details={
            "path": str(dest), "bytes": len(data), "sha256": digest,
            "previous": "replaced" if st is not None else "absent", "undo": "recorded"})
