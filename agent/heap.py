"""The C heap of the agent's process while bundles come in over the live connection.

Every CHUNK arrives as a 1 MiB WebSocket message that ``websockets`` assembles in fresh
buffers (its read buffer's slice, then the message), which the agent's file worker frees
once the bytes are hashed and written. With glibc's default settings most of that memory
goes back to the kernel between two messages (the top of the heap is trimmed past a
threshold of about twice the largest freed block, and a block over the adaptive mmap
threshold is unmapped), so the next messages fault their pages in again, zeroed: about one
page fault per 4 KiB received, a quarter of the agent's CPU per MiB received
(docs/benchmarks.md "Session 10: live transfer").

:func:`keep_freed_blocks` (when an incoming transfer begins) keeps blocks up to
:data:`MMAP_THRESHOLD_BYTES` in the heap and up to :data:`TRIM_THRESHOLD_BYTES` of free
memory at its top, so a transfer's buffers are reused; when the last incoming transfer
ended, :func:`stop_keeping` lowers the trim threshold to glibc's default again and
:func:`give_back` returns the free memory to the kernel, so an idle agent holds no more than
it did. Both are needed: the live client's event loop runs in a thread of its own, whose
messages live in that thread's arena, and ``malloc_trim`` trims the top of the main arena
only (of the others it returns the free blocks inside, not the free top): that arena gives
its top back at its next large free (the next read of the socket) once the threshold is
low again.

Only with glibc (``mallopt``, ``malloc_trim``); elsewhere both do nothing and say so.
Nothing here changes what is received or checked: only where the buffers come from.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

__all__ = ["DEFAULT_TRIM_THRESHOLD_BYTES", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES",
           "give_back", "keep_freed_blocks", "stop_keeping"]

log = logging.getLogger("tiangong.agent.heap")

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # blocks up to this come from the heap (a message: 1 MiB)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024  # free bytes kept at the heap's top between messages
DEFAULT_TRIM_THRESHOLD_BYTES = 128 * 1024  # glibc's own (DEFAULT_TRIM_THRESHOLD), when idle
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

_libc: Any = None
_kept = False


def _glibc() -> Any:
    """The C library if it is glibc (it has ``malloc_trim``, which musl and others lack),
    else None. The process's own symbols (``dlopen(NULL)``): the allocator in use, found
    without ``ctypes.util.find_library``, which runs ``ldconfig`` (or a compiler) in a
    child process — on the live client's event loop, at the first transfer."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)
            _libc = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def keep_freed_blocks() -> bool:
    """Keep the live connection's message buffers in the heap for reuse (see the module);
    True when the C library took both settings. Calling it again changes nothing until
    :func:`stop_keeping`."""
    global _kept
    libc = _glibc()
    if libc is None:
        log.debug("heap: not glibc; the C heap keeps its defaults")
        return False
    _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    return _kept


def stop_keeping() -> None:
    """No transfer is coming in: every arena gives its free top back again at its next
    large free (glibc's default trim threshold; blocks up to :data:`MMAP_THRESHOLD_BYTES`
    still come from the heap). A few microseconds: call it on the live client's thread, in
    order with :func:`keep_freed_blocks`."""
    libc = _glibc()
    if libc is not None and _kept:
        libc.mallopt(_M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD_BYTES)


def give_back() -> bool:
    """Return the heap's free memory to the kernel (after the last incoming transfer);
    True when some was returned."""
    libc = _glibc()
    return bool(libc is not None and _kept and libc.malloc_trim(0) == 1)
