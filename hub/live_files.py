"""Files of the hub's live server (:mod:`hub.live`): partial uploads and stored log lines.

* :func:`open_partial`: a :class:`bundle.sync.TransferReceiver` writing to a partial file,
  resumed from the bytes already there.
* :class:`LogStore`: LOG lines as JSON lines in ``<dir>/<bundle_id>.log``, each
  ``(bundle_id, seq)`` stored once (docs/live-protocol.md §3).

No sockets and no database here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bundle.sync import LogReceived, Offer, TransferReceiver
from bundle.sync_errors import SyncError

__all__ = ["LogStore", "fsync_dir", "open_partial", "size_and_sha256"]

READ_BYTES = 1024 * 1024  # bytes per read when hashing or re-reading a partial file


class FileSink:
    """Appends to one open file (part 0 only: the live path moves unsplit files)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    def write(self, part: int, data: bytes) -> None:
        self.fh.write(data)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def size_and_sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def open_partial(path: Path, offer: Offer) -> tuple[TransferReceiver, Any]:
    """A receiver for ``offer`` writing to ``path`` (opened for appending), resumed from the
    bytes already there (fsynced first, so they are what RESUME may claim); a partial file
    that does not fit the offer is started again from 0."""
    fh = path.open("ab+")
    os.fsync(fh.fileno())
    fh.seek(0)
    sink = FileSink(fh)
    receiver = TransferReceiver(offer, sink)
    try:
        while block := fh.read(READ_BYTES):
            receiver.absorb_existing(block)
    except SyncError:
        fh.truncate(0)
        receiver = TransferReceiver(offer, sink)
    fh.seek(0, os.SEEK_END)
    return receiver, fh


class LogStore:
    """Step output received live, one JSON-lines file per bundle."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._seen: dict[str, set[int]] = {}

    def path(self, bundle_id: str) -> Path:
        return self.directory / f"{bundle_id}.log"

    def add(self, event: LogReceived) -> bool:
        """Store one line unless its ``seq`` is stored already; True when stored."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(event.bundle_id)
        seen = self._seen.get(event.bundle_id)
        if seen is None:
            seen = set()
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        seen.add(int(json.loads(line)["seq"]))
            self._seen[event.bundle_id] = seen
        if event.seq in seen:
            return False
        seen.add(event.seq)
        record = {"seq": event.seq, "step": event.step, "stream": event.stream,
                  "text": event.text}
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        return True
