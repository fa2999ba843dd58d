"""Stop signals (SIGTERM, SIGINT) handled outside the signal handler.

A Python signal handler runs in the main thread *between two bytecodes of whatever it was
doing*. If that was inside ``threading.Event.wait``/``set``/``clear`` (which hold the event's
non-reentrant lock for a few bytecodes), a handler that calls ``Event.set`` on the same event
waits for a lock its own thread holds: the process hangs and is killed (this happened to the
agent under its supervisor: two SIGTERMs, then SIGKILL after 30 s). The same goes for any
lock a handler might take (logging's stream, queues).

So the handler here only writes the signal number into a pipe (``os.write`` takes no Python
lock) and a daemon thread reads it and calls the real callback, where taking locks is safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals(callback: Callable[[int], None],
                 signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *,
                 restore: bool = True) -> Iterator[None]:
    """Call ``callback(signum)`` from a helper thread for each of ``signals`` received while
    the block runs. After it the previous handlers are put back, or with ``restore=False``
    the signals are ignored (a process that is on its way out after a stop request must not
    die of a second one). Must be entered in the main thread, like :func:`signal.signal`."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A full pipe (hundreds of signals unread) or a closed one: drop the signal.
        with contextlib.suppress(OSError):
            os.write(write_fd, bytes((signum,)))

    def relay() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # the write end closed: the block is over
                return
            for signum in data:
                callback(signum)

    thread = threading.Thread(target=relay, name="stop-signals", daemon=True)
    thread.start()
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if restore else signal.SIG_IGN)
        os.close(write_fd)
        thread.join(timeout=5)
        if not thread.is_alive():
            os.close(read_fd)
