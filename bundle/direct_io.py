"""Reading a file from the device past the page cache (``O_DIRECT``), for the writer's re-read.

``bundle create`` re-reads what it wrote from the device (docs/bundle-format.md §12.3).
Through the page cache that costs a device read *and* a copy of every byte from the cache
into the process: on the 2-core machine of docs/benchmarks.md the copy alone took more CPU
than the SHA-256 of the same bytes. With ``O_DIRECT`` the device writes straight into the
reader's buffer, and the read is certain to come from the device, not from cached pages a
``posix_fadvise`` could not drop.

:class:`DeviceReader` opens the very file the writer holds (through ``/proc/self/fd``, the
same inode, never a path that could have been swapped) with ``O_DIRECT`` and reads aligned
blocks into one page-aligned buffer. Where that is unavailable (no ``/proc``, a filesystem
without ``O_DIRECT`` such as tmpfs, a device needing larger alignment) it reads through the
page cache with ``pread``, as before; the caller drops the pages first. The bytes yielded are
the same either way.

This module does no hashing and decides nothing: it hands bytes to the caller.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["DIRECT_CHUNK", "BufferRing", "DeviceReader", "pread_into"]

ALIGN = 4096  # bytes: O_DIRECT offsets, lengths and buffer addresses are multiples of this
DIRECT_CHUNK = 4 * 1024 * 1024  # bytes read per call (a multiple of ALIGN)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` of ``fd``; the byte count (short at the end of the
    file). The one place bytes come from the device (tests replace it to fake a disk)."""
    return os.preadv(fd, [view], offset)


def _open_direct(fd: int) -> int:
    """A new read-only ``O_DIRECT`` descriptor of the file open as ``fd``, or -1."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        new = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | flag)
    except OSError:
        return -1
    a, b = os.fstat(fd), os.fstat(new)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        os.close(new)
        return -1
    return new


class DeviceReader:
    """Reads byte ranges of one open file, from the device where the system allows it.

    Direct reads keep one read ahead: while the caller works on one chunk, a helper thread
    reads the next into a second buffer (a device answers two requests in flight faster
    than one at a time, and the wait overlaps the caller's hashing).

    Not thread-safe: one reader per thread. The views :meth:`read` yields point into the
    reader's buffers and are valid until the next step of the iteration; copy what must be
    kept.
    """

    def __init__(self, fd: int, *, direct: bool = True, chunk: int = DIRECT_CHUNK) -> None:
        self._plain = os.dup(fd)
        self._direct = _open_direct(fd) if direct else -1
        # Page-aligned, as O_DIRECT needs: the one being read from and the one read ahead.
        self._maps = [mmap.mmap(-1, chunk), mmap.mmap(-1, chunk)]
        self._views = [memoryview(m) for m in self._maps]
        self._buf = self._views[0]
        self._start = 0  # self._buf holds the file's bytes [_start, _end)
        self._end = 0
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, int, Future[int]] | None = None  # start, limit, read

    @property
    def direct(self) -> bool:
        """Whether reads bypass the page cache (else the caller must drop cached pages)."""
        return self._direct >= 0

    def read(self, offset: int, count: int, ready: int | None = None) -> Iterator[memoryview]:
        """Yield views covering the file's bytes ``[offset, offset + count)`` in order.

        ``ready``: bytes of the file known to be written (default ``offset + count``);
        a read never keeps bytes past it, so a later call sees what was written meanwhile.

        Raises:
            EOFError: the file ends before ``offset + count``.
            OSError: the read failed.
        """
        end = offset + count
        limit = end if ready is None else max(ready, end)
        while offset < end:
            if not self._start <= offset < self._end:
                self._fill(offset, limit)
                if self._end <= offset:
                    raise EOFError(f"the file ends at {self._end} bytes, before {end}")
            stop = min(end, self._end)
            yield self._buf[offset - self._start:stop - self._start]
            offset = stop

    def _fill(self, offset: int, limit: int) -> None:
        self._start = self._end = 0
        if self._direct >= 0:
            start = offset - offset % ALIGN
            try:
                n = self._take_ahead(start)
                if n < 0:
                    n = self._read_direct(self._buf, start, limit)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This filesystem or device wants other alignment: read through the cache.
                self._drop_direct()
            else:
                self._start, self._end = start, start + min(n, limit - start)
                if n == len(self._buf) and self._end < limit:
                    self._read_ahead(self._end, limit)
                return
        n = pread_into(self._plain, self._buf[:min(len(self._buf), limit - offset)], offset)
        self._start, self._end = offset, offset + n

    def _read_direct(self, buf: memoryview, start: int, limit: int) -> int:
        want = min(len(buf), -(-(limit - start) // ALIGN) * ALIGN)
        return pread_into(self._direct, buf[:want], start)

    def _read_ahead(self, start: int, limit: int) -> None:
        """Start reading from ``start`` (aligned) into the other buffer."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, "bundle-read-ahead")
        other = self._views[1] if self._buf is self._views[0] else self._views[0]
        self._ahead = (start, limit, self._pool.submit(self._read_direct, other, start, limit))

    def _take_ahead(self, start: int) -> int:
        """How many bytes read ahead from ``start`` can be used (the buffers swapped), or -1
        when the read ahead started elsewhere; it is waited for either way (its buffer is
        about to be reused)."""
        if self._ahead is None:
            return -1
        at, until, future = self._ahead
        self._ahead = None
        n = future.result()
        if at != start:
            return -1
        self._buf = self._views[1] if self._buf is self._views[0] else self._views[0]
        return min(n, until - start)  # bytes past its limit may have been written since

    def _drop_direct(self) -> None:
        if self._ahead is not None:
            with contextlib.suppress(OSError):
                self._ahead[2].result()
            self._ahead = None
        os.close(self._direct)
        self._direct = -1

    def close(self) -> None:
        if self._direct >= 0:
            self._drop_direct()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._plain >= 0:
            os.close(self._plain)
            self._plain = -1
        for view, m in zip(self._views, self._maps, strict=True):
            with contextlib.suppress(BufferError):  # a caller still holds a view: GC frees it
                view.release()
                m.close()


class BufferRing:
    """``count`` page-aligned buffers of ``size`` bytes, taken and given back (thread-safe):
    reads into reused memory instead of a fresh allocation per read, bounded."""

    def __init__(self, count: int, size: int) -> None:
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(memoryview(mmap.mmap(-1, size)))

    def take(self) -> memoryview:
        """A free buffer (waits for one to be given back)."""
        return self._free.get()

    def give(self, buf: memoryview) -> None:
        self._free.put(buf)
