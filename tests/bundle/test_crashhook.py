"""bundle.crashhook: the one TIANGONG_CRASH_AT hook of the agent and the hub."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bundle.crashhook import CrashHook

AGENT = {"staged": "", "final": ""}
HUB = {"hub.export-claimed": ""}


@pytest.mark.parametrize(("value", "points", "hub"), [
    ("hub.export-claimed", AGENT, False),  # the hub's point: the agent ignores it
    ("final", HUB, True),                  # the agent's point: the hub ignores it
    (None, AGENT, False),
    ("", HUB, True),
])
def test_the_other_sides_point_or_none_is_ignored(value: str | None,
                                                  points: dict[str, str], hub: bool) -> None:
    hook = CrashHook(value, points, hub=hub)
    for point in (*AGENT, *HUB):
        hook.hit(point)  # never dies


@pytest.mark.parametrize(("value", "points", "hub", "fragment"), [
    ("stagd", AGENT, False, "unknown agent crash point 'stagd'"),
    ("hub.export-claimd", HUB, True, "unknown hub crash point"),
    ("final:0", AGENT, False, "'0' is not a count"),
    ("final:two", AGENT, False, "'two' is not a count"),
])
def test_a_mistyped_value_stops_the_process(value: str, points: dict[str, str], hub: bool,
                                            fragment: str) -> None:
    with pytest.raises(SystemExit, match=fragment):
        CrashHook(value, points, hub=hub)


def test_the_process_dies_the_nth_time_it_reaches_the_point() -> None:
    code = ("from bundle.crashhook import CrashHook\n"
            "h = CrashHook('final:2', {'staged': '', 'final': ''}, hub=False)\n"
            "h.hit('staged'); print('first', flush=True); h.hit('final')\n"
            "print('second', flush=True); h.hit('final'); print('never', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["first", "second"]
