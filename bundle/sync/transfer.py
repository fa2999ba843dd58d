"""Helpers of the live sync protocol that follow bytes and time, not messages (§4.4, §6.3).

* :class:`TransferReceiver`: one incoming file, written to a caller-provided :class:`Sink`
  while its offsets, part digests and whole SHA-256 are checked as the bytes go by.
* :class:`TokenBucket`: the log-rate budget, with an injected clock.

No files are opened here: the sink is the caller's (the asyncio layer writes and fsyncs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from bundle.sync.errors import OutOfOrderError, OversizedError, TransferError
from bundle.sync.messages import Offer

__all__ = ["Clock", "Sink", "TokenBucket", "TransferReceiver"]

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; the clock is injected."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = max(self._last, now)

    def wait_time(self) -> float:
        """Seconds until one token is available (0.0 when one is available now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Sink(Protocol):
    """Where a :class:`TransferReceiver` writes: part ``part`` (0 when not split) gets
    ``data`` appended. Files, fsync and renames are the caller's business."""

    def write(self, part: int, data: bytes | memoryview) -> None: ...


class TransferReceiver:
    """Follows one incoming file: offsets, part digests and the whole SHA-256 (§4.4).

    After a dropped connection, build a new receiver and feed the bytes already stored with
    :meth:`absorb_existing` (hashed, not written), then resume at :attr:`offset`.

    Raises (from its methods):
        OutOfOrderError: a chunk not at the next offset.
        OversizedError: a chunk past the offered size.
        TransferError: a part or the whole file does not match the offer's SHA-256.
    """

    def __init__(self, offer: Offer, sink: Sink) -> None:
        self.offer = offer
        self._sink = sink
        self._sizes = [p.size for p in offer.parts] or [offer.size]
        self._digests = [p.sha256 for p in offer.parts] or [offer.sha256]
        self._whole = hashlib.sha256()
        self._part_hash = hashlib.sha256()
        self._part = 0
        self._part_offset = 0
        self.offset = 0

    @property
    def part(self) -> int:
        """Index of the part the next byte belongs to."""
        return self._part

    def absorb_existing(self, data: bytes | memoryview) -> None:
        """Account for bytes already stored (before resuming); nothing is written."""
        self._feed(self.offset, data, write=False)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Check and write one chunk received at ``offset``."""
        self._feed(offset, data, write=True)

    def _feed(self, offset: int, data: bytes | memoryview, *, write: bool) -> None:
        name = self.offer.name
        if offset != self.offset:
            raise OutOfOrderError(f"{name}: chunk at offset {offset}, expected {self.offset}")
        if offset + len(data) > self.offer.size:
            raise OversizedError(f"{name}: chunk ends at {offset + len(data)}, past the "
                                 f"offered size of {self.offer.size} bytes")
        if len(self._sizes) == 1:
            # Unsplit: the one part is the whole file, whose SHA-256 finish() compares —
            # one hash, and the chunk goes to the sink as it came (no copy).
            if write:
                self._sink.write(0, data)
            self._whole.update(data)
            self._part_offset += len(data)
            self.offset += len(data)
            if self._part_offset == self._sizes[0]:
                self._finish_part()
            return
        view = memoryview(data)
        while view:
            room = self._sizes[self._part] - self._part_offset
            piece = view[:room]
            if write:
                self._sink.write(self._part, bytes(piece))
            self._whole.update(piece)
            self._part_hash.update(piece)
            self._part_offset += len(piece)
            self.offset += len(piece)
            view = view[len(piece):]
            if self._part_offset == self._sizes[self._part]:
                self._finish_part()

    def _finish_part(self) -> None:
        if len(self._sizes) > 1 and self._part_hash.hexdigest() != self._digests[self._part]:
            raise TransferError(f"{self.offer.name}: part {self._part:03d} does not match the "
                                f"offered SHA-256", remote_text="part digest mismatch")
        self._part += 1
        self._part_offset = 0
        self._part_hash = hashlib.sha256()

    def finish(self) -> None:
        """Call on DONE: every byte is here and the whole file's SHA-256 matches.

        Raises:
            TransferError: bytes missing, or the SHA-256 differs from the offer.
        """
        if self.offset != self.offer.size:
            raise TransferError(f"{self.offer.name}: {self.offset} of {self.offer.size} "
                                f"bytes received", remote_text="transfer incomplete")
        if self._whole.hexdigest() != self.offer.sha256:
            raise TransferError(f"{self.offer.name}: SHA-256 does not match the offer",
                                remote_text="file digest mismatch")
