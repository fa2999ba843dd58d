#!/usr/bin/env python3
"""Live wire: CPU per MiB of the live protocol's hot paths, in this process.

Prints figures; asserts nothing. A live transfer runs in two processes (the hub sends, the
agent receives), so the slower side sets the rate; this measures each side's protocol work
without the network, the disk or the event loop, with ``time.process_time`` (best of
``--reps``), so the figures hold on a loaded machine where wall-clock MB/s do not:

* *send*: ``encode_message`` of a 1 MiB CHUNK already in memory (the hub did this per chunk
  before session 7);
* *send from file*: what the hub does per chunk now (``hub/live_hub.py`` ``_send_file``):
  ``encode_chunk`` reading the spooled file (here a temporary file, in the page cache)
  straight into the message with ``os.preadv``, reusing a message already sent; against
  *read + encode*, the way before (``read`` of a fresh 1 MiB, then ``encode_message``);
* *receive*: ``decode_message`` of that CHUNK and :class:`bundle.sync.TransferReceiver`
  ``write`` into a sink that drops the bytes (what an agent does per chunk: checks, SHA-256);
* *receive on the event loop*: what is left in the agent's event loop since the checks and
  the SHA-256 run in :class:`bundle.live_file.FileReceiver`'s worker thread: ``decode_message``
  and handing the chunk over (``time.thread_time`` of the loop's thread only; the worker's
  CPU is the *receive* figure's hashing, now beside the reading instead of in its way).

Usage::

    .venv/bin/python bench/live_wire.py [--mib 256] [--reps 5]
    .venv/bin/python <other checkout>/bench/live_wire.py   # the same on other code
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

from bundle.live_file import FileReceiver
from bundle.sync.messages import (
    MessageType,
    Offer,
    decode_message,
    encode_chunk,
    encode_message,
)
from bundle.sync.transfer import TransferReceiver

MiB = 1024 * 1024


class _Drop:
    def write(self, part: int, data: bytes | memoryview) -> None:
        pass


def _best(run: Callable[[], None], reps: int,
          clock: Callable[[], float] = time.process_time) -> float:
    times = []
    for _ in range(reps):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB per repetition")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    payload = os.urandom(MiB)
    wire = [encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, payload)
            for i in range(args.mib)]

    def send() -> None:
        for i in range(args.mib):
            encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, payload)

    def receive() -> None:
        receiver = TransferReceiver(Offer("big", "big.tgb", args.mib * MiB, "0" * 64), _Drop())
        for message in wire:
            decoded = decode_message(message)
            receiver.write(decoded.header["offset"], decoded.body)

    def receive_loop() -> None:
        file = FileReceiver.open(None, Offer("big", "big.tgb", args.mib * MiB, "0" * 64))
        for message in wire:
            decoded = decode_message(message)
            file.write(decoded.header["offset"], decoded.body)
        file.close()  # waits for the worker (its CPU is not this thread's)

    spool = tempfile.NamedTemporaryFile(prefix="live-wire-")  # noqa: SIM115 - closed below
    for _ in range(args.mib):
        spool.write(payload)
    spool.flush()
    fd = spool.fileno()

    def fill_from(offset: int) -> Callable[[memoryview], None]:
        def fill(view: memoryview) -> None:
            while view:
                got = os.preadv(fd, [view], offset + MiB - len(view))
                view = view[got:]
        return fill

    def send_from_file() -> None:
        spare: bytearray | None = None
        for i in range(args.mib):
            spare = encode_chunk(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB}, MiB,
                                 fill_from(i * MiB), buffer=spare)

    def read_then_encode() -> None:
        for i in range(args.mib):
            encode_message(MessageType.CHUNK, {"transfer": "big", "offset": i * MiB},
                           os.pread(fd, MiB, i * MiB))

    send_ms = _best(send, args.reps) / args.mib * 1000
    file_ms = _best(send_from_file, args.reps) / args.mib * 1000
    read_encode_ms = _best(read_then_encode, args.reps) / args.mib * 1000
    spool.close()
    receive_ms = _best(receive, args.reps) / args.mib * 1000
    loop_ms = _best(receive_loop, args.reps, time.thread_time) / args.mib * 1000
    print(f"live_wire ({Path(sys.path[0]).name}): send from file {file_ms:.3f} ms per MiB "
          f"(read + encode, as before: {read_encode_ms:.3f} ms)")
    print(f"live_wire ({Path(sys.path[0]).name}): send {send_ms:.3f} ms per MiB, receive "
          f"{receive_ms:.3f} ms per MiB (receive = {MiB / receive_ms / 1e3:.0f} MB/s of one "
          f"CPU), of which {loop_ms:.3f} ms per MiB in the agent's event loop (checks and "
          f"SHA-256 in the worker thread); load average {os.getloadavg()[0]:.2f}")
    print(f"RESULT live_wire send_ms_per_mib={send_ms:.3f} send_from_file_ms_per_mib={file_ms:.3f} "
          f"read_encode_ms_per_mib={read_encode_ms:.3f} receive_ms_per_mib={receive_ms:.3f} "
          f"receive_loop_ms_per_mib={loop_ms:.3f} load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
