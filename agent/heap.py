"""The C heap of the agent's process while bundles come in over the live connection.

Every CHUNK arrives as a 1 MiB WebSocket message that ``websockets`` assembles in fresh
buffers (its read buffer's slice, then the message), which the agent's file worker frees
once the bytes are hashed and written. With glibc's default settings most of that memory
goes back to the kernel between two messages (the top of the heap is trimmed past a
threshold of about twice the largest freed block, and a block over the adaptive mmap
threshold is unmapped), so the next messages fault their pages in again, zeroed: about one
page fault per 4 KiB received, a quarter of the agent's CPU per MiB received
(docs/benchmarks.md "Session 10: live transfer").

:func:`keep_freed_blocks` (once, when the live client starts) keeps blocks up to
:data:`MMAP_THRESHOLD_BYTES` in the heap and up to :data:`TRIM_THRESHOLD_BYTES` of free
memory at its top, so a transfer's buffers are reused; :func:`give_back` (when the last
incoming transfer ended) returns the free memory to the kernel as before, so an idle agent
holds no more than it did.

Only with glibc (``mallopt``, ``malloc_trim``); elsewhere both do nothing and say so.
Nothing here changes what is received or checked: only where the buffers come from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "give_back", "keep_freed_blocks"]

log = logging.getLogger("tiangong.agent.heap")

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024  # blocks up to this come from the heap (a message: 1 MiB)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024  # free bytes kept at the heap's top between messages
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

_libc: Any = None
_kept = False


def _glibc() -> Any:
    """The C library if it is glibc (it has ``malloc_trim``, which musl and others lack),
    else None."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def keep_freed_blocks() -> bool:
    """Keep the live connection's message buffers in the heap for reuse (see the module);
    True when the C library took both settings. Idempotent."""
    global _kept
    if _kept:
        return True
    libc = _glibc()
    if libc is None:
        log.debug("heap: not glibc; the C heap keeps its defaults")
        return False
    _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    return _kept


def give_back() -> bool:
    """Return the heap's free memory to the kernel (after the last incoming transfer);
    True when some was returned."""
    libc = _glibc()
    return bool(libc is not None and _kept and libc.malloc_trim(0) == 1)
