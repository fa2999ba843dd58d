"""The crash-point test hook shared by the agent and the hub (``TIANGONG_CRASH_AT``).

``TIANGONG_CRASH_AT=<point>[:<nth>]``: the ``nth`` time (default 1) a process reaches crash
point ``point``, it kills itself with ``SIGKILL`` — no ``finally``, no flush, no rollback: a
power cut as far as it can tell. The hub's points start with ``hub.``, the agent's do not;
each side ignores a value naming the other's points, so one environment can drive both
(``agent.faults``, ``hub.faults`` hold the lists).

This module reads no environment itself and keeps no global state: each side builds one
:class:`CrashHook` at import. Unset, :meth:`CrashHook.hit` is one comparison with ``None``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

__all__ = ["HUB_PREFIX", "CrashHook"]

#: Crash points of the hub start with this; the agent's never do.
HUB_PREFIX = "hub."


class CrashHook:
    """One process's crash point, parsed from the value of ``TIANGONG_CRASH_AT``.

    Raises (from the constructor):
        SystemExit: the value names a point of this side that is not in ``points``, or its
            ``nth`` is not a positive whole number — a test that would silently never crash.
    """

    def __init__(self, value: str | None, points: Mapping[str, str], *, hub: bool) -> None:
        self._target: tuple[str, int] | None = None
        self._reached = 0
        if not value:
            return
        point, _, nth = value.partition(":")
        if point.startswith(HUB_PREFIX) != hub:
            return  # the other side's point
        side = "hub" if hub else "agent"
        if point not in points:
            raise SystemExit(f"TIANGONG_CRASH_AT={value}: unknown {side} crash point {point!r} "
                             f"(known: {', '.join(points)})")
        if nth and (not nth.isdecimal() or int(nth) < 1):
            raise SystemExit(f"TIANGONG_CRASH_AT={value}: {nth!r} is not a count of 1 or more")
        self._target = (point, int(nth) if nth else 1)

    def hit(self, point: str) -> None:
        """The process has reached ``point``: die there if this is the asked-for time."""
        if self._target is None or self._target[0] != point:
            return
        self._reached += 1
        if self._reached == self._target[1]:
            os.kill(os.getpid(), signal.SIGKILL)
