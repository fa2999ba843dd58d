"""tiangong.stopsignals: a stop signal that arrives while the main thread holds a lock the
stop callback needs no longer deadlocks the process (the agent hung 30 s and was killed by its
supervisor when a second SIGTERM landed inside ``threading.Event``)."""

from __future__ import annotations

import signal
import threading

from tiangong.stopsignals import stop_signals


def test_the_callback_runs_in_another_thread_even_when_the_main_thread_holds_its_lock() -> None:
    lock = threading.Lock()  # like the lock inside threading.Event: not reentrant
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def callback(signum: int) -> None:
        with lock:
            seen.append((signum, threading.current_thread().name))
            if len(seen) == 2:
                done.set()

    with stop_signals(callback):
        with lock:
            # The Python-level handler runs right here, in this thread, with the lock held.
            # A handler that took the lock itself would never return.
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
        assert done.wait(30)
    assert [s for s, _ in seen] == [signal.SIGTERM, signal.SIGINT]
    assert all(name == "stop-signals" for _, name in seen)


def test_handlers_are_put_back_or_ignored_after_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals(lambda signum: None):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    try:
        with stop_signals(lambda signum: None, restore=False):
            pass
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
