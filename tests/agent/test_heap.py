"""agent.heap: the live client's 1 MiB message buffers are reused instead of being handed back
to the kernel and faulted in again after every message (glibc), and the free memory goes back
once no transfer is coming in. The live client's calls: tests/agent/test_live_transfer.py."""

from __future__ import annotations

import resource

from agent import heap

MiB = 1024 * 1024


def _faults_while_churning(mib: int) -> int:
    """Minor page faults of this process while ``mib`` messages of 1 MiB are made, kept a
    few at a time (as the agent's file worker holds them) and freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held: list[bytes] = []
    for _ in range(mib):
        held.append(bytes(bytearray(MiB)))  # written: every page touched
        if len(held) > 8:
            held.pop(0)
    held.clear()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_message_buffers_are_reused_and_given_back_at_the_end() -> None:
    glibc = heap._glibc() is not None
    assert heap.keep_freed_blocks() is glibc
    assert heap.keep_freed_blocks() is glibc  # idempotent
    if not glibc:  # nothing to tune: both say so and change nothing
        assert heap.give_back() is False
        return
    _faults_while_churning(32)  # the heap grows to what a transfer needs once
    # Then 64 MiB more of messages take (almost) no page faults: their buffers are reused.
    # With glibc's defaults this was about one per 4 KiB page (16,384 for 64 MiB).
    assert _faults_while_churning(64) < 64 * MiB // 4096 // 8
    heap.give_back()  # returns the free memory; the next transfer grows the heap again
    assert heap.give_back() in (True, False)


def _resident_mib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // MiB


def test_the_live_threads_free_heap_goes_back_after_the_transfer() -> None:
    """The live client runs its event loop in a thread of its own (``tiangong agent``), so
    its messages live in that thread's arena, whose free top ``malloc_trim`` leaves alone:
    up to the trim threshold (64 MiB) stayed resident for good after the first transfer.
    Once the last transfer ended, the arena gives its top back at its next large free (the
    next read of the socket), and the next transfer keeps its buffers again."""
    import asyncio
    import threading

    from agent.live import _give_back_heap

    if heap._glibc() is None:
        assert heap.give_back() is False
        return
    seen: dict[str, int] = {}

    async def live_thread() -> None:
        heap.keep_freed_blocks()  # a transfer begins
        seen["before"] = _resident_mib()
        held: list[bytes] = []
        for _ in range(200):  # its messages, a few held at a time by the file worker
            held.append(bytes(bytearray(MiB)))
            if len(held) > 40:
                held.pop(0)
        held.clear()
        seen["after transfer"] = _resident_mib()
        await _give_back_heap()  # the last transfer ended
        read = bytes(bytearray(256 * 1024))  # the next read of the socket (asyncio: 256 KiB)
        del read
        seen["after the next read"] = _resident_mib()

    thread = threading.Thread(target=asyncio.run, args=(live_thread(),))
    thread.start()
    thread.join()
    assert seen["after transfer"] >= seen["before"] + 32  # kept for reuse meanwhile
    assert seen["after the next read"] <= seen["before"] + 8, seen
