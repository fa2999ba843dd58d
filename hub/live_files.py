"""Files of the hub's live server (:mod:`hub.live`): partial uploads and stored log lines.

* :class:`LogStore`: LOG lines as JSON lines in ``<dir>/<agent_id>/<bundle_id>.log``, each
  ``(agent, bundle, seq)`` stored once (docs/live-protocol.md §3), within byte quotas.
* :func:`partial_path`, :func:`sweep_partials`: where an upload is received (by
  :class:`bundle.live_file.FileReceiver`), and the clean-up of abandoned ones.
* :class:`SpoolDigests`: size and SHA-256 of spooled bundles for OFFERs, each hashed once.

No sockets and no database here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bundle.sync import LogReceived

__all__ = ["LogQuotaError", "LogStore", "SpoolDigests", "partial_path",
           "size_and_sha256", "sweep_partials"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")  # docs/live-protocol.md §2.3

READ_BYTES = 1024 * 1024  # bytes per read when hashing or re-reading a partial file


def size_and_sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


class SpoolDigests:
    """Size and SHA-256 of spooled bundles for OFFERs, each file hashed once: a bundle
    offered again (the agent reconnected before RECEIVED, or cancelled it for now) is not
    read again while its inode, size and modification time are unchanged. Thread-safe
    enough for the offer pool (a race only hashes a file twice). At most ``limit`` files
    are remembered (the oldest forgotten first). A stale entry could only make the agent
    refuse the bytes as ``corrupt`` (it hashes every byte): never accept other bytes."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        # path -> (its (device, inode, size, mtime) when seen; None: told by its writer and
        # not looked at yet, only its size is known — the first get() binds it), size, digest
        self._known: dict[Path, tuple[tuple[int, int, int, int] | None, int, str]] = {}

    def get(self, path: Path, st: os.stat_result | None = None) -> tuple[int, str]:
        """``(size, sha256)`` of ``path``, hashed unless known for this very file (``st``:
        its ``stat`` as the caller just took it).

        Raises:
            OSError: the file cannot be read.
        """
        st = path.stat() if st is None else st
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._known.get(path)
        if known is not None and (known[0] == key
                                  or (known[0] is None and known[1] == st.st_size)):
            if known[0] is None:
                self._known[path] = (key, known[1], known[2])  # this very file from now on
            return known[1], known[2]
        size, digest = size_and_sha256(path)
        if size != st.st_size:  # written meanwhile: do not remember
            return size, digest
        self._known.pop(path, None)
        while len(self._known) >= self.limit:
            self._known.pop(next(iter(self._known)))
        self._known[path] = (key, size, digest)
        return size, digest

    def remember(self, path: Path, size: int, digest: str) -> None:
        """``(size, sha256)`` of ``path`` as its writer computed them (the export reports
        the whole file's digest): its OFFER reads nothing. Nothing is looked at here (the
        export has just written the file; a ``stat`` per bundle on the event loop was a
        burst's cost): the first :meth:`get` uses it only if the file has that size, and
        binds it to that file's inode and modification time."""
        self._known.pop(path, None)
        while len(self._known) >= self.limit:
            self._known.pop(next(iter(self._known)))
        self._known[path] = (None, size, digest)

    def forget(self, path: Path) -> None:
        """``path`` left the spool (delivered)."""
        self._known.pop(path, None)


@dataclass(frozen=True)
class LogQuotaError:
    """Why a LOG line was not stored: the quota named, its size and whose it is."""

    agent_id: str
    which: str  # "agent" | "total"
    quota: int  # bytes

    def __str__(self) -> str:
        whose = f"of agent {self.agent_id}" if self.which == "agent" else "of all agents"
        return (f"live logs: the quota {whose} ({self.quota} bytes, [live] "
                f"log_quota_{self.which}_bytes) is reached; further lines are not stored "
                "(the result file carries the full log)")


class LogStore:
    """Step output received live: one JSON-lines file per (agent, bundle), in
    ``<dir>/<agent id>/<bundle id>.log``, each ``seq`` stored once, with a byte quota per
    agent and in total.

    Ids follow the protocol's id rule (docs/live-protocol.md §2.3: no ``/``, never starting
    with ``.``), so a directory per agent and a file per bundle never collide and never
    leave ``<dir>``. The store only appends: a stored line is never rewritten, and nobody
    but the agent a bundle was addressed to reaches its file (the hub layer checks that
    before :meth:`add`).
    """

    def __init__(self, directory: Path, *, agent_quota: int = 256 * 1024 * 1024,
                 total_quota: int = 8 * 1024 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.agent_quota = agent_quota
        self.total_quota = total_quota
        self._seen: dict[tuple[str, str], set[int]] = {}
        self._used: dict[str, int] | None = None  # agent -> bytes stored (scanned once)
        self._full: set[tuple[str, str]] = set()  # (agent, bundle) told about the quota

    def path(self, agent_id: str, bundle_id: str) -> Path:
        _check_id(agent_id)
        _check_id(bundle_id)
        return self.directory / agent_id / f"{bundle_id}.log"

    def used(self, agent_id: str | None = None) -> int:
        """Bytes stored for ``agent_id`` (None: all agents)."""
        if self._used is None:
            self._used = {}
            if self.directory.is_dir():
                for sub in self.directory.iterdir():
                    if sub.is_dir():
                        self._used[sub.name] = sum(
                            f.stat().st_size for f in sub.glob("*.log") if f.is_file())
        if agent_id is None:
            return sum(self._used.values())
        return self._used.get(agent_id, 0)

    def forget(self, agent_id: str) -> None:
        """Drop what is remembered of ``agent_id``'s files (its connection ended); read
        again from the files on its next line. Keeps memory bounded by connected agents."""
        for key in [k for k in self._seen if k[0] == agent_id]:
            del self._seen[key]
        self._full = {k for k in self._full if k[0] != agent_id}

    def add(self, agent_id: str, event: LogReceived) -> bool | LogQuotaError:
        """Store one line of ``agent_id`` unless its ``seq`` is stored already; True when
        stored, False when not (a repeat, or over a quota again); a :class:`LogQuotaError`
        the first time a quota stops a line of a bundle (a note saying so is stored in
        its place, so the page shows why the log ends)."""
        path = self.path(agent_id, event.bundle_id)
        key = (agent_id, event.bundle_id)
        seen = self._seen.get(key)
        if seen is None:
            seen = set()
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        seen.add(int(json.loads(line)["seq"]))
            self._seen[key] = seen
        if event.seq in seen:
            return False
        record = {"seq": event.seq, "step": event.step, "stream": event.stream,
                  "text": event.text}
        data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        over: LogQuotaError | None = None
        if self.used(agent_id) + len(data) > self.agent_quota:
            over = LogQuotaError(agent_id, "agent", self.agent_quota)
        elif self.used() + len(data) > self.total_quota:
            over = LogQuotaError(agent_id, "total", self.total_quota)
        if over is not None:
            if key in self._full:
                return False  # told once already (the note is in the file)
            self._full.add(key)
            record = {"seq": event.seq, "step": event.step, "stream": "info",
                      "text": f"[hub] {over}"}
            data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        seen.add(event.seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(data)
        assert self._used is not None
        self._used[agent_id] = self._used.get(agent_id, 0) + len(data)
        return over if over is not None else True


def _check_id(value: str) -> None:
    if not _ID.fullmatch(value):
        raise ValueError(f"{value!r} is not an id (docs/live-protocol.md §2.3)")


def partial_path(inbox: Path, agent_id: str, transfer: str) -> Path:
    """Where ``agent_id``'s upload ``transfer`` is received: ``<inbox>/.partial/<agent id>/
    <transfer>.part`` — one directory per agent, so no two (agent, transfer) pairs share a
    file whatever the ids hold (ids never contain ``/`` nor start with ``.``)."""
    _check_id(agent_id)
    _check_id(transfer)
    return inbox / ".partial" / agent_id / f"{transfer}.part"


def sweep_partials(inbox: Path, max_age_s: float, now: float, keep: set[Path]) -> list[Path]:
    """Delete partial uploads not written to for ``max_age_s`` seconds (``now``: Unix
    time), except ``keep`` (transfers running now); returns what was deleted."""
    removed: list[Path] = []
    root = inbox / ".partial"
    if not root.is_dir():
        return removed
    for agent_dir in root.iterdir():
        if not agent_dir.is_dir():
            continue
        for part in agent_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part not in keep and now - part.stat().st_mtime >= max_age_s:
                    part.unlink()
                    removed.append(part)
        with contextlib.suppress(OSError):
            agent_dir.rmdir()  # only when empty
    return removed
