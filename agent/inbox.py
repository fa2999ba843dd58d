"""The agent's inbox: decide when a dropped bundle file is complete enough to pick up.

The inbox is a directory that an operator fills by copying files onto it, or that is a USB stick
or a network share mounted there. Copies take minutes, parts arrive one by one, sticks are pulled
out mid-copy: a file that merely *exists* is not ready (watchdog #586, USER-PAINS.md).

Rules, applied by :meth:`Inbox.scan` on every call:

* Candidates are ``NAME.tgb`` (one-file bundle) and ``NAME.tgb.partNNN`` (split bundle, NNN is
  3 or more digits; part 0 holds the signed header, parts 1.. the data).
* Temp names are skipped silently: ``*.part``, ``*.tmp``, ``*.partial``, ``*.crdownload`` and
  names starting with ``.`` or ``~``. Directories are skipped. Anything else is logged once as
  ``ignored: not a bundle`` and left where it is.
* A file is *settled* when its ``(size, mtime_ns)`` has not changed for ``settle_seconds``: by
  its age (its modification time is at least ``settle_seconds`` in the past by the wall clock,
  and a second look shows the same size and time), or, when the file's time cannot be trusted
  (dated more than ``FUTURE_MTIME_TOLERANCE_SECONDS`` in the future: written where the clock
  is ahead), as observed over successive scans — logged once as a warning naming the file and
  the clock difference, and reported as such by ``agent status``; ``agent run --once`` watches
  such a file within its run (:meth:`Inbox.age_unknown_until`, at most ``settle_seconds``).
  So a file that has sat unchanged for minutes is picked up by the first scan of a fresh
  process (``agent run --once`` from cron or a systemd timer), and ``agent status`` tells
  settling files from ready ones.
* A split bundle is ready when every one of its parts is settled and part 0 says (via the
  injected ``parts_needed``) how many data parts there are and all of them are present.
  Until then it is reported as e.g. ``waiting for parts 3, 5 of 7``; it is never quarantined
  for missing parts, which may still arrive. Parts beyond the count (stale leftovers) are
  included in the ready item, so they are moved with it and the verifier can name them.
* On NFS, attributes may be cached for up to ``acregmax`` (60 s by default): choose
  ``settle_seconds`` above the share's attribute cache time, or mount it with a low
  ``actimeo``, or a file still being written elsewhere can look settled.

The decision logic is pure apart from ``os.scandir``/``os.stat`` (and ``parts_needed``), takes
the time as an argument and never sleeps. :class:`InboxWatcher` is the thin I/O layer that
*wakes* the agent's loop on filesystem events and on a periodic timer; the loop then calls
:meth:`Inbox.scan`.

This module deliberately does *not* verify, parse or trust bundles (``parts_needed`` reads an
unverified count only to decide whether to keep waiting; the bundle verifier checks every part
against the signed manifest later), never deletes a file, and is not thread-safe: one agent loop
owns one :class:`Inbox`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bundle.printable import printable
from signing.errors import KeyFileError
from signing.fileio import NAME_MAX_BYTES, fit_name, fsync_dir, write_file_atomic

__all__ = [
    "Inbox",
    "InboxWatcher",
    "PartsNeeded",
    "ReadyItem",
    "WaitingItem",
    "default_parts_needed",
    "move_to",
    "write_reason",
]

log = logging.getLogger("tiangong.agent.inbox")  # agent run routes it into its log

DEFAULT_SETTLE_SECONDS = 5.0  # seconds a file's size and mtime must stay unchanged
DEFAULT_RESCAN_SECONDS = 10.0  # seconds between wake-ups when no filesystem event arrives
WATCHER_JOIN_SECONDS = 5.0  # seconds to wait for watcher threads on stop()
COPY_CHUNK_BYTES = 1024 * 1024  # bytes per read when copying across filesystems
MAX_INBOX_ENTRIES = 10_000  # directory entries considered per scan (stat calls are per entry)
REASON_HASH_CAP = 64 * 1024 * 1024  # bytes of one file hashed for its reason-file line
QUARANTINE_COPY_CAP = 64 * 1024 * 1024  # bytes: a refused file is never copied beyond this
MAX_TAKEN = 10_000  # files remembered as taken from read-only media
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
RESULT_SUFFIX = ".tgr"

BUNDLE_SUFFIX = ".tgb"
TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
TEMP_PREFIXES = (".", "~")
_PART_RE = re.compile(r"^(?P<base>.+\.tgb)\.part(?P<index>\d{3,})$", re.IGNORECASE)

SETTLING = "settling (size still changing)"
#: Seconds a file's modification time may lie ahead of this machine's clock and still count
#: as "just written" (time stamp granularity, a share's clock a little ahead). Further ahead,
#: its age is unknown: it settles by being watched unchanged for ``settle_seconds``.
FUTURE_MTIME_TOLERANCE_SECONDS = 2.0

PartsNeeded = Callable[[Path], "int | None"]
"""``parts_needed(part000_path) -> number of data parts, or None if it cannot be told``."""


@dataclass(frozen=True)
class ReadyItem:
    """A complete bundle in the inbox, ready to be verified.

    ``name`` is the bundle's base name (``billing-2.4.0.tgb`` for both a single file and a split
    group), ``paths`` the single file or every part in index order, ``size`` their total bytes,
    ``first_seen`` the scan time at which the inbox first saw (any part of) it.
    """

    name: str
    paths: tuple[Path, ...]
    size: int
    kind: Literal["single", "split"]
    first_seen: float = field(compare=False)


@dataclass(frozen=True)
class WaitingItem:
    """Something in the inbox that is not ready yet, with the reason, for ``agent status``."""

    name: str
    reason: str


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    first_seen: float
    changed_at: float


@dataclass(frozen=True)
class _Taken:
    name: str
    size: int
    mtime_ns: int
    sha256: str  # of the first REASON_HASH_CAP bytes


@dataclass(frozen=True)
class _Candidate:
    kind: Literal["single", "split"]
    base: str
    index: int  # part index, 0 for a single file


def _classify(name: str) -> _Candidate | Literal["temp", "other"]:
    """Tell what a directory entry's *name* is. Pure."""
    lower = name.lower()
    if name.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES):
        return "temp"
    m = _PART_RE.match(name)
    if m:
        return _Candidate("split", m.group("base"), int(m.group("index")))
    if lower.endswith(BUNDLE_SUFFIX) and len(name) > len(BUNDLE_SUFFIX):
        return _Candidate("single", name, 0)
    return "other"


def _ignored(name: str, mode: int, kind: _Candidate | Literal["temp", "other"]) -> str | None:
    """Why an inbox entry is not a candidate ("" to skip it silently), or None. Pure."""
    if stat.S_ISDIR(mode):
        return "a directory: ignored (the inbox is not searched recursively)" if isinstance(
            kind, _Candidate) else ""
    if stat.S_ISLNK(mode):
        return ("a symbolic link: ignored (the agent reads only regular files; copy the file "
                "itself)")
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe): ignored"
    if not stat.S_ISREG(mode):
        return "a device or socket, not a regular file: ignored"
    if kind == "other":
        if name.lower().endswith(RESULT_SUFFIX):
            return ("a result file (.tgr): ignored — results go to the hub ('tiangong hub "
                    "import'), not into an agent's inbox")
        return "not a bundle (NAME.tgb or NAME.tgb.partNNN): ignored"
    return None


def default_parts_needed(part0: Path) -> int | None:
    """Read the number of data parts from part 0, *unverified*, using the bundle package.

    Expects ``bundle.inspect.read_manifest_unverified(path) -> Mapping`` and reads
    ``manifest["parts"]["count"]``. Returns None when the bundle package cannot tell (module or
    function missing, header unreadable or malformed): the group then keeps waiting.
    """
    try:
        from bundle import inspect as bundle_inspect
    except ImportError:
        return None
    read = getattr(bundle_inspect, "read_manifest_unverified", None)
    if read is None:
        return None
    try:
        manifest = read(part0)
        count = manifest["parts"]["count"]
    except Exception as e:  # any unreadable header means "cannot tell yet"
        log.info("inbox: cannot read the part count from %s: %s", part0.name, e)
        return None
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return None


# I/O hooks, module-level so tests can simulate a pulled stick or a permission error.
def _listdir(directory: Path) -> list[str]:
    with os.scandir(directory) as it:
        return [entry.name for entry in it]


def _lstat(path: Path) -> os.stat_result:
    return os.stat(path, follow_symlinks=False)


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def _describe(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or type(e).__name__


class Inbox:
    """Watches one inbox directory by being scanned; reports what is ready and what is waiting.

    Args:
        directory: the inbox; it may be missing (unmounted) at any time.
        settle_seconds: how long a file must stay unchanged before it counts as complete.
        parts_needed: tells the number of data parts of a split bundle from its part 0.
        clock: used by :meth:`scan` when no time is passed (monotonic seconds).
        wall_clock: the time files' modification times are compared with (Unix seconds).
        taken_file: where files that were taken but could not be removed (read-only media)
            are remembered, by name, size, time and SHA-256, so they are never taken again,
            even by a new process; None keeps them in memory only.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        parts_needed: PartsNeeded = default_parts_needed,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        taken_file: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._wall_clock = wall_clock
        self._taken_file = taken_file
        self._taken: list[_Taken] = self._load_taken()
        self._digests: dict[tuple[str, int, int], str] = {}
        self._checked: dict[str, tuple[tuple[tuple[str, int, int], ...], str | None]] = {}
        self.part_problems: Callable[[list[Path]], str | None] | None = None
        """Optional: given the present files of a split bundle that still misses parts,
        names the present ones that are damaged (the agent checks them against the signed
        manifest), so missing and damaged parts are named at once."""
        self.settle_seconds = settle_seconds
        self._parts_needed = parts_needed
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._errors: dict[str, str] = {}
        self._handled: dict[str, tuple[int, int]] = {}
        self._logged: set[str] = set()
        self._counts: dict[str, tuple[tuple[int, int], int | None]] = {}
        self._waiting: list[WaitingItem] = []
        self._notes: set[str] = set()
        self._future_logged: dict[str, int] = {}  # name -> mtime_ns warned about
        self._age_unknown: dict[str, float] = {}  # name -> scan time it can settle at
        self.problem: str | None = None
        """Why the inbox cannot be read right now (``inbox unavailable: ...``), or None."""

    # -- scanning (I/O) ---------------------------------------------------------------------

    def scan(self, now: float | None = None) -> list[ReadyItem]:
        """List the directory, update what was seen, and return the ready items.

        Items are ordered by first-seen time, then name: the inbox cannot know bundle sequences
        without parsing, so the caller re-orders by sequence after verifying if it needs to.
        Call :meth:`forget` once an item is handled (moved away), so it is not offered again.
        Never raises for a missing inbox or an unreadable file: see :meth:`waiting` and
        :attr:`problem`.
        """
        if now is None:
            now = self._clock()
        try:
            names = _listdir(self.directory)
        except OSError as e:
            self._unavailable(e)
            return []
        if self.problem is not None:
            log.warning("inbox %s: available again", self.directory)
            self.problem = None
        notes: list[WaitingItem] = []
        if len(names) > MAX_INBOX_ENTRIES:
            note = (
                f"inbox holds {len(names)} entries; only the first {MAX_INBOX_ENTRIES} "
                "by name are considered"
            )
            if note not in self._notes:
                log.warning("inbox %s: %s", self.directory, note)
            notes.append(WaitingItem(str(self.directory), note))
            names = sorted(names)[:MAX_INBOX_ENTRIES]
        self._notes = {n.reason for n in notes}

        observed: dict[str, tuple[int, int]] = {}
        errors: dict[str, str] = {}
        for name in names:
            kind = _classify(name)
            if kind == "temp":
                continue
            path = self.directory / name
            try:
                st = _lstat(path)
            except FileNotFoundError:
                continue  # vanished between listing and stat: the stick was pulled
            except OSError as e:
                if isinstance(kind, _Candidate):
                    errors[name] = _describe(e)
                continue
            ignored = _ignored(name, st.st_mode, kind)
            if ignored is not None:
                if ignored:
                    self._log_once(name, ignored)
                continue
            if self._was_taken(name, st):
                self._log_once(name, "already taken from this inbox (it could not be removed, "
                               "e.g. read-only media): left alone")
                continue
            observed[name] = (st.st_size, st.st_mtime_ns)
        ready = self._update(now, set(names), observed, errors)
        self._waiting = notes + self._waiting
        return ready

    def _unavailable(self, e: OSError) -> None:
        problem = f"inbox unavailable: {_describe(e)}"
        if self.problem != problem:
            log.warning("inbox %s: %s", self.directory, problem)
        self.problem = problem
        # Files may be rewritten while unmounted: every clock restarts when it comes back.
        self._seen.clear()
        self._errors.clear()
        self._counts.clear()
        self._waiting = [WaitingItem(str(self.directory), problem)]

    def _log_once(self, name: str, message: str) -> None:
        if name not in self._logged:
            self._logged.add(name)
            log.warning("inbox %s: %s: %s", self.directory, printable(name), message)

    # -- files taken from media that cannot be changed (read-only sticks) -------------------

    def _load_taken(self) -> list[_Taken]:
        if self._taken_file is None:
            return []
        try:
            rows = json.loads(self._taken_file.read_text(encoding="utf-8"))
            return [_Taken(str(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, IndexError) as e:
            log.warning("inbox: %s is unreadable (%s); files left on read-only media may be "
                        "taken again", self._taken_file, e)
            return []

    def _save_taken(self) -> None:
        if self._taken_file is None:
            return
        rows = [[t.name, t.size, t.mtime_ns, t.sha256] for t in self._taken[-MAX_TAKEN:]]
        data = json.dumps(rows, ensure_ascii=True).encode("ascii")
        try:
            write_file_atomic(self._taken_file, data, overwrite=True)
        except KeyFileError as e:
            raise OSError(str(e)) from e

    def _was_taken(self, name: str, st: os.stat_result) -> bool:
        """Whether this file (by name and times, or by content under another name) was
        already taken; hashes only a file whose size and time match a taken one."""
        matches = [t for t in self._taken if (t.size, t.mtime_ns) == (st.st_size, st.st_mtime_ns)]
        if not matches:
            return False
        if any(t.name == name for t in matches):
            return True
        key = (name, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            try:
                self._digests[key] = _sha256_prefix(self.directory / name, REASON_HASH_CAP)[0]
            except OSError:
                return False
        return any(t.sha256 == self._digests[key] for t in matches)

    def _remember_taken(self, path: Path, seen: _Seen) -> bool:
        """Remember *path* if it is still there unchanged (it could not be moved); True then."""
        try:
            st = _lstat(path)
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                return False  # replaced meanwhile: a new file, track it afresh
            digest = _sha256_prefix(path, REASON_HASH_CAP)[0]
        except OSError:
            return False  # gone: moved as it should be
        self._taken.append(_Taken(path.name, seen.size, seen.mtime_ns, digest))
        try:
            self._save_taken()
        except OSError as e:
            log.warning("inbox: cannot record that %s was taken (%s)", printable(path.name), e)
        return True

    # -- deciding (pure apart from parts_needed and the readability check) -------------------

    def _update(
        self,
        now: float,
        listed: set[str],
        observed: Mapping[str, tuple[int, int]],
        errors: Mapping[str, str],
    ) -> list[ReadyItem]:
        self._logged &= listed
        for name, fingerprint in list(self._handled.items()):
            if name in errors:
                continue
            if observed.get(name) != fingerprint:
                del self._handled[name]  # gone, or replaced by a new copy: track it afresh
        for name in list(self._seen):
            if name not in observed:
                del self._seen[name]
        for name, (size, mtime_ns) in observed.items():
            if self._handled.get(name) == (size, mtime_ns):
                continue
            seen = self._seen.get(name)
            if seen is None:
                self._seen[name] = _Seen(size, mtime_ns, now, now)
            elif (seen.size, seen.mtime_ns) != (size, mtime_ns):
                seen.size, seen.mtime_ns, seen.changed_at = size, mtime_ns, now
        for name in errors.keys() - self._errors.keys():
            log.warning("inbox %s: cannot read %s: %s", self.directory, name, errors[name])
        self._errors = dict(errors)

        singles: list[str] = []
        groups: dict[str, dict[int, list[str]]] = {}
        for name in [*self._seen, *self._errors]:
            cand = _classify(name)
            assert isinstance(cand, _Candidate)
            if cand.kind == "single":
                singles.append(name)
            else:
                groups.setdefault(cand.base, {}).setdefault(cand.index, []).append(name)
        self._counts = {b: c for b, c in self._counts.items() if b in groups}
        self._future_logged = {n: t for n, t in self._future_logged.items() if n in self._seen}
        self._age_unknown = {}

        ready: list[ReadyItem] = []
        waiting: list[WaitingItem] = []
        for name in singles:
            item_or_reason = self._decide_single(now, name)
            if isinstance(item_or_reason, ReadyItem):
                ready.append(item_or_reason)
            else:
                waiting.append(WaitingItem(name, item_or_reason))
        for base, parts in groups.items():
            item_or_reason = self._decide_group(now, base, parts)
            if isinstance(item_or_reason, ReadyItem):
                ready.append(item_or_reason)
            else:
                waiting.append(WaitingItem(base, item_or_reason))
        ready.sort(key=lambda i: (i.first_seen, i.name, i.kind))
        waiting.sort(key=lambda w: (w.name, w.reason))
        self._waiting = waiting
        return ready

    def _settled(self, now: float, name: str) -> bool:
        seen = self._seen[name]
        if now - seen.changed_at >= self.settle_seconds:
            return True
        age = self._wall_clock() - seen.mtime_ns / 1e9
        if age < self.settle_seconds:
            return False
        # Old enough by its own time: look once more, so a file appended to right now (its
        # time not yet updated on some file systems) is not taken.
        try:
            st = _lstat(self.directory / name)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (seen.size, seen.mtime_ns)

    def _ahead(self, name: str) -> float:
        """Seconds the file's modification time lies ahead of this machine's clock (<= 0:
        not ahead)."""
        return self._seen[name].mtime_ns / 1e9 - self._wall_clock()

    def _settling(self, now: float, names: Iterable[str]) -> str | None:
        """None when every file of *names* is settled, else why the first one is not.

        A file dated more than ``FUTURE_MTIME_TOLERANCE_SECONDS`` in the future (written on
        a machine whose clock is ahead — ordinary for media) has no age this machine can
        tell: it settles once watched unchanged for ``settle_seconds`` (see
        :meth:`age_unknown_until`), with a warning naming it and the clock difference."""
        for name in names:
            if self._settled(now, name):
                continue
            ahead = self._ahead(name)
            if ahead <= FUTURE_MTIME_TOLERANCE_SECONDS:
                return SETTLING
            seen = self._seen[name]
            self._age_unknown[name] = seen.changed_at + self.settle_seconds
            if self._future_logged.get(name) != seen.mtime_ns:
                self._future_logged[name] = seen.mtime_ns
                log.warning("inbox %s: %s: modification time is %.0f s ahead of this "
                            "machine's clock (written where the clock is ahead?): its age "
                            "is unknown, so it is taken once seen unchanged for %g s",
                            self.directory, printable(name), ahead, self.settle_seconds)
            watched = max(0.0, now - seen.changed_at)
            return (f"{printable(name)} is dated {ahead:.0f} s in the future by this "
                    f"machine's clock: age unknown, taken once seen unchanged for "
                    f"{self.settle_seconds:g} s (unchanged for {watched:.0f} s so far)")
        return None

    def age_unknown_until(self) -> float | None:
        """When (in :meth:`scan`'s time) every file the last scan held back only because
        it is dated in the future will have been watched unchanged for ``settle_seconds``;
        None when there is none. ``agent run --once`` waits until then (never longer than
        ``settle_seconds``) and looks again, so such a file is taken within one run."""
        return max(self._age_unknown.values()) if self._age_unknown else None

    def _unreadable(self, names: Iterable[str]) -> str | None:
        for name in names:
            if name in self._errors:
                return f"cannot read {name}: {self._errors[name]}"
        return None

    def _decide_single(self, now: float, name: str) -> ReadyItem | str:
        problem = self._unreadable([name])
        if problem:
            return problem
        settling = self._settling(now, [name])
        if settling:
            return settling
        path = self.directory / name
        if not _readable(path):
            return f"cannot read {name}: permission denied"
        seen = self._seen[name]
        return ReadyItem(name, (path,), seen.size, "single", seen.first_seen)

    def _decide_group(self, now: float, base: str, parts: dict[int, list[str]]) -> ReadyItem | str:
        names = [n for i in sorted(parts) for n in sorted(parts[i])]
        problem = self._unreadable(names)
        if problem:
            return problem
        for index in sorted(parts):
            if len(parts[index]) > 1:
                return f"conflicting files for part {index}: {', '.join(sorted(parts[index]))}"
        if 0 not in parts:
            return "waiting for part 0 (the header)"
        part0 = parts[0][0]
        settling = self._settling(now, [part0])
        if settling:
            return settling
        count = self._count(base, part0)
        if count is None:
            return "waiting for part 0 to be readable (cannot tell the number of parts)"
        missing = [i for i in range(1, count + 1) if i not in parts]
        if missing:
            waiting = f"waiting for parts {', '.join(map(str, missing))} of {count}"
            if all(self._settled(now, n) for n in names):
                damaged = self._part_problems(base, names)
                if damaged:
                    return f"{waiting}: {damaged}"
            return waiting
        settling = self._settling(now, names)
        if settling:
            return settling
        paths = tuple(self.directory / n for n in names)
        for path in paths:
            if not _readable(path):
                return f"cannot read {path.name}: permission denied"
        seen = [self._seen[n] for n in names]
        return ReadyItem(
            base, paths, sum(s.size for s in seen), "split", min(s.first_seen for s in seen)
        )

    def _part_problems(self, base: str, names: list[str]) -> str | None:
        """What :attr:`part_problems` says about the present parts (cached per fingerprint)."""
        if self.part_problems is None:
            return None
        fingerprint = tuple((n, self._seen[n].size, self._seen[n].mtime_ns) for n in names)
        cached = self._checked.get(base)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            text = self.part_problems([self.directory / n for n in names])
        except Exception as e:  # a plug-in failure must not stop the agent's loop
            log.warning("inbox %s: cannot check the parts of %s: %s", self.directory,
                        printable(base), e)
            text = None
        self._checked[base] = (fingerprint, text)
        return text

    def _count(self, base: str, part0: str) -> int | None:
        seen = self._seen[part0]
        fingerprint = (seen.size, seen.mtime_ns)
        cached = self._counts.get(base)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            count = self._parts_needed(self.directory / part0)
        except Exception as e:  # a plug-in failure must not stop the agent's loop
            log.warning("inbox %s: cannot tell the parts of %s: %s", self.directory, base, e)
            count = None
        self._counts[base] = (fingerprint, count)
        return count

    # -- reporting and bookkeeping ----------------------------------------------------------

    def waiting(self) -> list[WaitingItem]:
        """What the last :meth:`scan` found not ready, with reasons (for ``agent status``)."""
        return list(self._waiting)

    def forget(self, item: ReadyItem) -> None:
        """Mark *item* handled: it is not offered again unless its files change or reappear.

        Call after moving the item's files to the archive or quarantine; if a file is still in
        the inbox unchanged (the move failed), it is not picked up again in a loop.
        """
        for path in item.paths:
            seen = self._seen.pop(path.name, None)
            if seen is not None and self._remember_taken(path, seen):
                self._handled[path.name] = (seen.size, seen.mtime_ns)
        self._counts.pop(item.name, None)


# -- moving files out of the inbox -----------------------------------------------------------


#: What a temp name adds to a name (``.`` + name + ``.XXXXXXXX.tmp``, signing.fileio), in bytes.
_TEMP_NAME_BYTES = 16  # bytes


def _with_suffix_number(name: str, n: int) -> str:
    """``billing-2.4.0.tgb.part001`` → ``billing-2.4.0-1.tgb.part001`` (the part before the
    number cut short when the name would not fit a file system). Pure."""
    if n == 0:
        return name
    at = name.lower().rfind(BUNDLE_SUFFIX)
    if at <= 0:
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, "." + ext) if dot and stem else (name, "")
    else:
        stem, ext = name[:at], name[at:]
    return fit_name(stem, f"-{n}{ext}")


def _free_names(dest_dir: Path, names: Sequence[str]) -> list[Path]:
    """Target paths for *names* in *dest_dir*, all with the same ``-N`` suffix, none existing."""
    n = 0
    while True:
        targets = [dest_dir / _with_suffix_number(name, n) for name in names]
        if not any(os.path.lexists(t) for t in targets):
            return targets
        n += 1


def _same_filesystem(src: Path, dest_dir: Path) -> bool:
    return os.stat(src).st_dev == os.stat(dest_dir).st_dev


def _copy_chunks(src: Any, dst: Any) -> None:
    while chunk := src.read(COPY_CHUNK_BYTES):
        dst.write(chunk)


def _copy_to_temp(src: Path, dest_dir: Path) -> Path:
    """Copy *src* into a hidden temp file in *dest_dir*, fsynced. Removes the temp on failure."""
    prefix = "." + fit_name(src.name, ".", NAME_MAX_BYTES - _TEMP_NAME_BYTES)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            expected = os.fstat(fin.fileno()).st_size
            _copy_chunks(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
            copied = os.fstat(fout.fileno()).st_size
            if copied != expected or os.fstat(fin.fileno()).st_size != expected:
                raise OSError(
                    errno.EIO,
                    f"copy of {src.name} is incomplete: {copied} of {expected} bytes "
                    "(source changed or could not be read completely)",
                )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def move_to(item: ReadyItem, dest_dir: Path | str, *,
            max_copy_bytes: int | None = None) -> list[Path]:
    """Move all of *item*'s files into *dest_dir* (created if needed); return the new paths.

    Within one filesystem each file is renamed (``os.replace``). Across filesystems (a USB stick
    is one) every file is first copied to a hidden temp name in *dest_dir* and fsynced, then all
    are renamed into place, the directory is fsynced, and only then are the sources removed: an
    interruption at any point leaves each file in the inbox, in *dest_dir*, or in both, never in
    neither. Clashing names get one common suffix for the whole item (``x-1.tgb.part000`` ...).

    Media that cannot be changed (a read-only stick or directory) are only read: the file is
    copied and the original is left where it is (logged once; :meth:`Inbox.forget` then
    remembers it so it is never taken again). A file that would have to be copied and is over
    *max_copy_bytes* is not copied at all: its returned "new path" is the original.

    Raises:
        OSError: a file could not be copied or renamed; files not yet moved are still in the
            inbox and no temp file is left behind.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    targets = _free_names(dest, [p.name for p in item.paths])
    copies: dict[Path, Path] = {}  # source -> fsynced temp copy in dest
    left: set[Path] = set()

    def too_big(src: Path) -> bool:
        if max_copy_bytes is None or os.stat(src).st_size <= max_copy_bytes:
            return False
        log.warning("inbox: %s is %d bytes, over the copy cap of %d bytes: not copied, left "
                    "where it is", printable(src.name), os.stat(src).st_size, max_copy_bytes)
        left.add(src)
        return True

    try:
        for src in item.paths:
            if not _same_filesystem(src, dest) and not too_big(src):
                copies[src] = _copy_to_temp(src, dest)
        for i, (src, target) in enumerate(zip(item.paths, targets, strict=True)):
            if src in left:
                targets[i] = src
                continue
            if src in copies:
                os.replace(copies[src], target)
                copies[src] = target  # now only the source remains to be removed
                continue
            try:
                os.replace(src, target)
            except OSError as e:
                # EXDEV: e.g. bind mounts on one device; EROFS/EACCES/EPERM: media we may
                # not change — copy instead, and leave the original.
                if e.errno != errno.EXDEV and e.errno not in _READ_ONLY_ERRNOS:
                    raise
                if too_big(src):
                    targets[i] = src
                    continue
                os.replace(_copy_to_temp(src, dest), target)
                copies[src] = target
        fsync_dir(dest)
    except BaseException:
        for tmp in copies.values():
            if tmp not in targets:
                tmp.unlink(missing_ok=True)
        raise
    removed = False
    for src in copies:
        try:
            src.unlink(missing_ok=True)
            removed = True
        except OSError as e:
            if e.errno not in _READ_ONLY_ERRNOS:
                raise
            log.warning("inbox: cannot remove %s (%s; read-only media?): copied to %s and "
                        "left where it is; it will not be taken again", printable(src.name),
                        _describe(e), dest)
    if removed:
        with contextlib.suppress(OSError):  # some network shares refuse fsync on directories
            fsync_dir(item.paths[0].parent)
    return targets


def _item_files(dest_dir: Path, name: str) -> list[Path]:
    found = []
    for entry in sorted(_listdir(dest_dir)):
        cand = _classify(entry)
        if entry == name or (isinstance(cand, _Candidate) and cand.base == name):
            found.append(dest_dir / entry)
    return found


def _file_line(path: Path, dest: Path) -> str:
    size = path.stat().st_size
    digest, hashed = _sha256_prefix(path, REASON_HASH_CAP)
    line = f"sha256:{digest}  {size}  {printable(path.name)}"
    if hashed < size:
        line += f"  (SHA-256 of the first {hashed} bytes only)"
    if path.parent != dest:
        line += f"  (left in {printable(str(path.parent))}, not copied)"
    return line


def _sha256_prefix(path: Path, cap: int) -> tuple[str, int]:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while done < cap and (chunk := f.read(min(COPY_CHUNK_BYTES, cap - done))):
            h.update(chunk)
            done += len(chunk)
    return h.hexdigest(), done


def write_reason(
    dest_dir: Path | str,
    name: str,
    check: str,
    reason: str,
    *,
    files: Sequence[Path] | None = None,
    now: datetime | None = None,
) -> Path:
    """Write ``<name>.reason.txt`` in *dest_dir* atomically, beside a quarantined item (a name
    too long for the file system is cut short and marked by its digest, :func:`fit_name`).

    The file names the check that failed, the reason, the time (UTC) and the SHA-256 of each of
    the item's files: *files* if given, else ``name`` and ``name.partNNN`` found in *dest_dir*.
    Every name and reason line is passed through :func:`printable` (a reason's backslashes
    kept: the names in it are escaped already, and are shown escaped once), so a hostile file
    name cannot break the file or write lines of its own. A file over ``REASON_HASH_CAP`` bytes is
    hashed over its first ``REASON_HASH_CAP`` bytes only, and the line says so.

    Raises:
        ValueError: *name* is not a plain file name.
        OSError: the file could not be written (no partial reason file is left).
    """
    if not name or "/" in name or os.sep in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    dest = Path(dest_dir)
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    paths = list(files) if files is not None else _item_files(dest, name)
    # The agent's messages name files already escaped by printable(): escaped once more only
    # what could still fake or hide a line, never their backslashes (one escape, not two).
    reason_lines = [printable(line, double_backslash=False)
                    for line in reason.strip().split("\n")]
    lines = [
        f"bundle: {printable(name)}",
        f"check: {printable(check)}",
        "reason: " + "\n  ".join(reason_lines),
        f"time: {when}",
        "files:",
        *(f"  {_file_line(p, dest)}" for p in paths),
    ]
    # Beside the item, under a name the file system takes (the file names it in full).
    target = dest / fit_name(name, ".reason.txt", NAME_MAX_BYTES - _TEMP_NAME_BYTES)
    try:
        write_file_atomic(target, ("\n".join(lines) + "\n").encode("utf-8"), overwrite=True)
    except KeyFileError as e:
        raise OSError(str(e)) from e
    return target


# -- the watcher: only wakes the agent's loop ------------------------------------------------


class InboxWatcher:
    """Calls *on_change* on filesystem events in the inbox and every *rescan_seconds*.

    Events only *wake* the agent (pass e.g. ``threading.Event().set``); the agent's loop then
    calls :meth:`Inbox.scan`, which decides. The periodic call matters: USB mounts and network
    shares often deliver no events. On each periodic tick the watch is re-established if the
    inbox was missing or was remounted (its device or inode changed). Set ``polling=True`` for
    filesystems where inotify does not work (``PollingObserver``); the watcher also switches to
    polling by itself when native events cannot be set up. One watcher is started once.
    """

    def __init__(
        self,
        inbox_dir: Path | str,
        on_change: Callable[[], None],
        rescan_seconds: float = DEFAULT_RESCAN_SECONDS,
        *,
        polling: bool = False,
    ) -> None:
        self.inbox_dir = Path(inbox_dir)
        self.on_change = on_change
        self.rescan_seconds = rescan_seconds
        self.polling = polling
        self._stop = threading.Event()
        self._observer: Any = None
        self._watched: tuple[int, int] | None = None
        self._timer: threading.Thread | None = None
        self._handler: Any = None
        self._last_warning = ""

    def start(self) -> None:
        """Start the observer and the rescan timer. A missing inbox is not an error."""
        from watchdog.events import FileSystemEventHandler

        wake = self._wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                # Our own reads (opened / closed without writing) must not wake us in a loop.
                if event.event_type not in ("opened", "closed_no_write"):
                    wake()

        self._handler = _Handler()
        self._observer = self._new_observer()
        self._observer.start()
        self._rewatch()
        self._timer = threading.Thread(target=self._tick, name="inbox-rescan", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        """Stop both threads; waits at most a few seconds for each."""
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=WATCHER_JOIN_SECONDS)
        if self._timer is not None:
            self._timer.join(timeout=WATCHER_JOIN_SECONDS)

    def __enter__(self) -> InboxWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _new_observer(self) -> Any:
        if self.polling:
            from watchdog.observers.polling import PollingObserver

            return PollingObserver(timeout=min(self.rescan_seconds, 1.0))
        from watchdog.observers import Observer

        return Observer()

    def _wake(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("inbox watcher: on_change failed")

    def _rewatch(self) -> None:
        try:
            st = os.stat(self.inbox_dir)
        except OSError:
            identity = None
        else:
            identity = (st.st_dev, st.st_ino)
        if identity == self._watched:
            return
        self._observer.unschedule_all()
        self._watched = None
        if identity is None:
            return
        try:
            self._observer.schedule(self._handler, str(self.inbox_dir), recursive=False)
        except FileNotFoundError:
            return  # unmounted meanwhile; the next tick tries again
        except OSError as e:
            if self.polling:
                self._warn_once(f"cannot watch {self.inbox_dir}: {e}; relying on rescans")
                return
            # inotify unavailable or out of watches (fs.inotify.max_user_watches)
            self._warn_once(f"cannot watch {self.inbox_dir} with native events ({e}); polling")
            self.polling = True
            self._observer.stop()
            self._observer.join(timeout=WATCHER_JOIN_SECONDS)
            self._observer = self._new_observer()
            self._observer.start()
            self._rewatch()
            return
        self._watched = identity

    def _warn_once(self, message: str) -> None:
        if message != self._last_warning:
            self._last_warning = message
            log.warning("inbox watcher: %s", message)

    def _tick(self) -> None:
        while not self._stop.wait(self.rescan_seconds):
            try:
                self._rewatch()
            except Exception:
                log.exception("inbox watcher: cannot re-establish the watch")
            self._wake()
