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
