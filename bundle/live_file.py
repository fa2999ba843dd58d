"""One incoming live transfer written to a file, its checks and writes off the event loop.

The I/O companion of :class:`bundle.sync.TransferReceiver` (docs/live-protocol.md §4.4,
§10), shared by the agent's live client (bundles in) and the hub's live server (results in).
The asyncio layer hands each CHUNK's bytes over in order (:meth:`FileReceiver.write`) and
goes back to reading the socket; a worker thread of the receiver's own then, in order:

* checks the offset and the size, hashes the bytes **once** into the whole-file SHA-256
  (and, for a split offer, the part's SHA-256, comparing it when the part's last byte is
  in: a bad part is refused at once), and appends them to the partial file;
* on :meth:`FileReceiver.sync` notes how many bytes it has written so far and hands an
  fsync of them to a second thread, the receiver's *syncer*, and goes on with the next
  chunks: the sync's future says how many bytes are durable (what an ACK may claim) once
  that fsync returned — every chunk written before the fsync began, which may be more than
  that sync's (a syncer behind a slow disk catches up in one fsync, and a sync an earlier
  fsync covered needs none), never a byte written after the fsync began;
* on :meth:`FileReceiver.finish` compares the size and the whole SHA-256 with the offer,
  waits for the syncer's fsyncs, fsyncs and closes the file.

``hashlib``, ``write`` and ``fsync`` release the GIL, so hashing and the disk overlap the
receiving of the next chunks instead of stopping it (an fsync of 8 MiB stalled the whole
event loop). The fsyncs have a thread of their own because an fsync in the worker stopped
the hashing and writing behind it: up to ``max_pending`` received chunks then waited in
memory (fresh pages the reading had to fault in) while the disk flushed, and the disk sat
idle while the worker caught up (docs/benchmarks.md "Session 8: live transfer").

Nothing is checked less than before: every byte is hashed, every part and the whole file
compared with the offer, and the caller still moves the file to its destination
only after :meth:`~FileReceiver.finish` succeeded (the agent's bundle verifier and the hub's
importer follow as before).

A transfer of at most :data:`INLINE_BYTES` still to come is handled in the caller's thread
(no thread for the small result files a hub receives by the thousand); the interface is the
same, its futures are simply done already.

Bounded: :meth:`~FileReceiver.room` lets the caller stop reading while more than
``max_pending`` bytes wait for the worker (the sender then waits on TCP), so a peer faster
than the disk never fills memory.

Deliberately not here: sockets, the protocol's messages (the caller sends RESUME, ACK,
RECEIVED or CANCEL), where the finished file goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from bundle.sync.errors import SyncError, TransferError
from bundle.sync.messages import Offer
from bundle.sync.transfer import TransferReceiver

__all__ = ["INLINE_BYTES", "MAX_PENDING_BYTES", "READ_BYTES", "FileReceiver"]

READ_BYTES = 1024 * 1024  # bytes per read when re-hashing a partial file on resume
INLINE_BYTES = 1024 * 1024  # bytes still to receive at or under which no thread is used
#: bytes handed over and not yet written (default): beyond it the caller stops reading and
#: TCP holds the sender back. Small: what waits here was read into fresh heap memory (page
#: faults), and a worker far behind hashes its backlog at the end with the other core idle
#: (docs/benchmarks.md "Session 11: live transfer to memory"; it was 32 MiB)
MAX_PENDING_BYTES = 4 * 1024 * 1024

_T = TypeVar("_T")


class _RawSink:
    """Appends whole chunks to an unbuffered file: nothing waits in a Python buffer, so an
    fsync covers every byte written before it."""

    def __init__(self, fh: IO[bytes] | None) -> None:
        self.fh = fh

    def write(self, part: int, data: bytes | memoryview) -> None:
        if self.fh is None:
            return
        view = memoryview(data)
        while view:
            written = self.fh.write(view)
            if not written:  # pragma: no cover - a regular file never writes nothing
                raise OSError(f"no progress writing to {self.fh.name!r}")
            view = view[written:]


async def _settled(future: Future[Any]) -> None:
    """Return once ``future`` is done, whatever its outcome; cancelling this wait leaves
    the work alone (unlike :func:`asyncio.wrap_future`, which would cancel it)."""
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(_set_done, waiter)

    future.add_done_callback(wake)
    await waiter


def _pass_on(source: Future[Any], target: Future[Any]) -> None:
    """Give ``target`` the outcome of ``source`` (done): its result, its exception, or
    cancelled."""
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class FileReceiver:
    """One incoming file: ``offer``'s bytes checked and appended to ``path``.

    Build it with :meth:`open` (blocking: it fsyncs and re-hashes what a dropped connection
    left in ``path``; call it in a worker thread for large files). :attr:`offset` is then
    what RESUME asks for. ``path=None`` checks the bytes and drops them (measurements).

    Every method is called from one thread (the event loop's); the work runs in order in
    the receiver's worker thread. After the first failure (a part or the whole file not
    matching, a chunk out of order, a disk error) nothing more is written: every later
    call and future raises that same error. Call :meth:`close` when the transfer ends,
    however it ends.
    """

    def __init__(self, path: Path | None, offer: Offer, fh: IO[bytes] | None,
                 receiver: TransferReceiver, *, max_pending: int = MAX_PENDING_BYTES) -> None:
        self.path = path
        self.offer = offer
        self._fh = fh
        self._receiver = receiver
        self.resumed_at = receiver.offset  # bytes found in the partial file (durable)
        self.offset = receiver.offset  # bytes handed over so far (what the next chunk continues)
        self.durable = receiver.offset  # bytes known written and fsynced
        # bytes the worker has written, whole chunks that passed their checks (in the worker)
        self._written = receiver.offset
        self.max_pending = max_pending
        self._pending: deque[tuple[int, Future[None]]] = deque()
        self._pending_bytes = 0
        self._error: BaseException | None = None
        self._closed = False
        self._finishing = False
        inline = offer.size - receiver.offset <= INLINE_BYTES
        self._pool = None if inline else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"live-file-{offer.transfer}"[:40])
        # fsyncs beside the writing (a file in a thread only: inline, an fsync is the
        # caller's anyway, and without a file there is nothing to flush); its thread starts
        # with the first sync() (a hub's result under 8 MiB never has one)
        self._handed_syncs = 0  # fsyncs handed to the syncer (counted in the worker)
        self._syncer = None if inline or fh is None else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"live-sync-{offer.transfer}"[:40])

    @classmethod
    def open(cls, path: Path | None, offer: Offer, *,
             max_pending: int = MAX_PENDING_BYTES) -> FileReceiver:
        """A receiver for ``offer`` appending to ``path``, resumed from the bytes already
        there (fsynced first, so they are what RESUME may claim); a partial file that does
        not fit the offer (another file under this transfer id) is started again from 0.

        Raises:
            OSError: the file cannot be opened, read or fsynced.
        """
        if path is None:
            return cls(None, offer, None, TransferReceiver(offer, _RawSink(None)),
                       max_pending=max_pending)
        fh = path.open("ab+", buffering=0)
        try:
            if os.fstat(fh.fileno()).st_size:
                # Bytes a dropped connection left: durable before RESUME claims them. A new,
                # empty file needs no fsync (RESUME 0 claims nothing); the hub opens one per
                # result offered, on its event loop, where each fsync stalled every agent.
                os.fsync(fh.fileno())
            fh.seek(0)
            sink = _RawSink(fh)
            receiver = TransferReceiver(offer, sink)
            try:
                while block := fh.read(READ_BYTES):
                    receiver.absorb_existing(block)
            except SyncError:  # an older, different offer under this id: start again
                fh.truncate(0)
                os.fsync(fh.fileno())
                receiver = TransferReceiver(offer, sink)
            fh.seek(0, os.SEEK_END)
        except BaseException:
            fh.close()
            raise
        return cls(path, offer, fh, receiver, max_pending=max_pending)

    # -- what the worker does

    def _run(self, job: Callable[[], _T]) -> Future[_T]:
        """``job`` in the worker (now, inline), after every job handed over before it."""
        if self._closed or self._finishing:
            raise ValueError(f"{self.offer.name}: the receiver is closed or finishing")
        if self._error is not None:  # nothing more runs after a failure
            failed: Future[_T] = Future()
            failed.set_exception(self._error)
            return failed

        def guarded() -> _T:
            if self._error is not None:
                raise self._error
            try:
                return job()
            except BaseException as exc:
                self._error = exc
                raise

        if self._pool is not None:
            return self._pool.submit(guarded)
        future: Future[_T] = Future()
        try:
            future.set_result(guarded())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def _write(self, offset: int, data: bytes | memoryview) -> None:
        """In the worker: check, hash and write one chunk; then it counts as written."""
        self._receiver.write(offset, data)
        self._written = self._receiver.offset

    def _fsync(self) -> int:
        if self._fh is not None:
            os.fsync(self._fh.fileno())
        return self._receiver.offset

    def _fsync_written(self, written: int) -> int:
        """In the syncer: make the ``written`` bytes handed over with this sync durable and
        return how many bytes are durable now (what an ACK may claim), which may be more.

        The fsync covers every byte the worker wrote before it began, so it claims those
        (whole chunks written after their checks, counted just before the fsync): a syncer
        behind a slow disk catches up in one fsync instead of one per sync queued, and
        its ACK opens the sender's window by all of it. A sync whose bytes an earlier
        fsync already covered needs no fsync of its own. Never a byte written after the
        fsync began. A failure is the transfer's failure: nothing more is written."""
        if self._error is not None:
            raise self._error
        assert self._fh is not None
        if written <= self.durable:  # covered by an fsync that began after they were written
            return self.durable
        covered = max(written, self._written)
        try:
            os.fsync(self._fh.fileno())
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            raise
        self.durable = max(self.durable, covered)
        return covered

    def _wait_syncer(self) -> None:
        """In the worker: return once every fsync handed to the syncer is done; raises the
        first failure (the syncer runs its fsyncs in order, one at a time)."""
        if self._syncer is not None and self._handed_syncs:  # else it never started
            self._syncer.submit(lambda: None).result()
        if self._error is not None:
            raise self._error

    # -- the caller's side

    @property
    def error(self) -> BaseException | None:
        """The first failure of the worker, if any (a :class:`SyncError` for bad bytes, an
        :class:`OSError` for the disk)."""
        return self._error

    @property
    def pending_bytes(self) -> int:
        """Bytes handed over that the worker has not written yet."""
        while self._pending and self._pending[0][1].done():
            self._pending_bytes -= self._pending.popleft()[0]
        return self._pending_bytes

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Hand over one chunk received at ``offset`` (checked, hashed and written in order).

        Raises:
            SyncError, OSError: an earlier chunk failed (:attr:`error`); with no thread,
                this chunk's own failure.
        """
        if self._error is not None:
            raise self._error
        future = self._run(lambda: self._write(offset, data))
        self.offset = offset + len(data)
        if future.done():
            future.result()  # inline: this chunk's own failure, at once
            return
        self._pending.append((len(data), future))
        self._pending_bytes += len(data)

    async def room(self) -> None:
        """Wait while more than ``max_pending`` bytes wait for the worker (returns at once
        after a failure: the next call raises it)."""
        while self.pending_bytes > self.max_pending and self._error is None:
            await _settled(self._pending[0][1])

    async def wait(self, future: Future[_T]) -> _T:
        """The result of :meth:`sync` or :meth:`finish`, awaited on the event loop. A
        cancelled waiter does not cancel the work (later work relies on its order).

        Raises:
            SyncError, OSError: as the future; work dropped by :meth:`close` raises the
                failure that ended the transfer, or a :class:`TransferError`.
        """
        await _settled(future)
        if future.cancelled():
            if self._error is not None:
                raise self._error
            raise TransferError(f"{self.offer.name}: the transfer ended before these bytes "
                                "were written", remote_text="transfer ended")
        return future.result()

    def sync(self) -> Future[int]:
        """Fsync after every byte handed over so far; the future's result is the number of
        bytes now durable (what an ACK may claim).

        Raises (from the future):
            SyncError, OSError: an earlier chunk or the fsync failed.
        """
        syncer = self._syncer
        if syncer is None:
            def job() -> int:
                self.durable = self._fsync()
                return self.durable

            return self._run(job)
        durable: Future[int] = Future()

        def hand_over() -> None:  # in the worker, after every chunk handed over before
            self._handed_syncs += 1
            flushed = syncer.submit(self._fsync_written, self._receiver.offset)
            flushed.add_done_callback(lambda f: _pass_on(f, durable))

        queued = self._run(hand_over)
        queued.add_done_callback(
            lambda f: _pass_on(f, durable) if f.cancelled() or f.exception() else None)
        return durable

    def finish(self) -> Future[None]:
        """Call on DONE: once every byte handed over is written, check the size and the
        whole SHA-256 against the offer, fsync and close the file. The file may be moved
        to its destination only when this future succeeded.

        Raises (from the future):
            TransferError: bytes missing or the SHA-256 differs from the offer.
            SyncError, OSError: an earlier chunk or the disk failed.
        """
        def job() -> None:
            self._receiver.finish()
            self._wait_syncer()  # no fsync of the syncer's left running on the fd closed here
            self.durable = self._fsync()
            if self._fh is not None:
                self._fh.close()

        future = self._run(job)
        self._finishing = True
        return future

    def close(self) -> None:
        """End the transfer (call it after :meth:`finish` too: it ends the worker thread).
        Work not started is dropped, work running is waited for (at most one write or
        fsync), and the file is closed. What was fsynced stays in the
        partial file for a resume; the caller deletes it if the bytes were bad."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:  # first: a running finish() waits for the syncer
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._syncer is not None:
            self._syncer.shutdown(wait=True, cancel_futures=True)
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
