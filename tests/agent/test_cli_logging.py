"""One configured logger for ``agent run``: the agent's, the inbox's, Python warnings and
other libraries' warnings all come out with a timestamp and a level, as JSON with
``--json-logs``; nothing prints bare."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from agent.cli import setup_logging


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    # An earlier in-process command may have left logging's capture flag set while pytest
    # restored warnings.showwarning: start from a clean state.
    logging.captureWarnings(False)
    yield
    logging.captureWarnings(False)
    root.handlers[:] = before[0]
    root.setLevel(before[1])
    logging.getLogger("tiangong").setLevel(logging.NOTSET)


@pytest.mark.usefixtures("configured")
def test_every_source_goes_through_one_json_handler(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(True, False)
    logging.getLogger("tiangong.agent").info("accepted b1")
    logging.getLogger("tiangong.agent.inbox").info("notes.txt: ignored: not a bundle")
    logging.getLogger("tiangong.agent").debug("not shown without -v")
    logging.getLogger("watchdog.observers").warning("a library's warning")
    warnings.showwarning("something is deprecated", DeprecationWarning, "x.py", 1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["logger"], r["level"]) for r in lines] == [
        ("tiangong.agent", "info"), ("tiangong.agent.inbox", "info"),
        ("watchdog.observers", "warning"), ("py.warnings", "warning")]
    assert all(r["ts"].endswith("Z") for r in lines)
    assert "something is deprecated" in lines[-1]["msg"]


@pytest.mark.usefixtures("configured")
def test_text_lines_have_time_and_level_and_verbose_adds_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(False, True)
    setup_logging(False, True)  # configuring twice does not print twice
    logging.getLogger("tiangong.agent.runner").debug("step 1 started")
    (line,) = capsys.readouterr().err.splitlines()
    stamp, level, rest = line.split(" ", 2)
    assert stamp[:4].isdigit() and stamp.endswith("+0000") and level == "DEBUG"
    assert rest == "tiangong.agent.runner: step 1 started"
