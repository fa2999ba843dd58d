"""Results are recorded before they are written, and writing one is repeatable: the same
bytes after a crash, written later when the outbox was full."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from agent import faults, service
from agent.journal import JournalWriteError
from agent.results import flush_results, result_intent
from agent.runner import StepReport
from tests.fixtures.trust import NOW


def _intent(agent: Any, summary: str = "1 step(s) succeeded") -> Any:
    steps = [StepReport(0, 1, "one", "shell", "succeeded", "exit 0", 0, NOW, NOW, {},
                        "[stdout] hello\n")]
    return result_intent(agent.config, status="succeeded", summary=summary, steps=steps,
                         now=NOW)


def test_a_result_written_again_after_a_crash_has_the_same_bytes(
    site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _, _ = site
    seq = agent.journal.add_result(_intent(agent))

    def crash(*args: object) -> None:
        raise JournalWriteError("power cut before the journal recorded the file")

    monkeypatch.setattr(agent.journal, "result_written", crash)
    with pytest.raises(JournalWriteError):
        flush_results(agent.config, agent.journal, agent.keys.identity)
    (path,) = agent.config.outbox.glob("*.tgr")
    first = path.read_bytes()
    monkeypatch.undo()
    assert [p.result_seq for p in agent.journal.pending_results()] == [seq]
    assert flush_results(agent.config, agent.journal, agent.keys.identity) == [path]
    assert path.read_bytes() == first
    assert agent.journal.pending_results() == []
    assert list(agent.config.outbox.glob("*.tgr")) == [path]


def test_a_full_outbox_keeps_results_pending_until_space_returns(
    site: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agent, _, _ = site
    monkeypatch.setattr(faults, "_FAULT", ("outbox", errno.ENOSPC, None))
    monkeypatch.setattr(service, "RETRY_SECONDS", 0.0)
    for i in range(2):
        agent.journal.add_result(_intent(agent, f"result {i}"))
    with caplog.at_level(logging.ERROR, logger="tiangong.agent"):
        assert agent.flush() == []
        assert agent.flush() == []
    errors = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert len(errors) == 1  # logged once, not on every pass
    assert list(agent.config.outbox.glob("*.tgr")) == []
    assert len(agent.journal.pending_results()) == 2
    monkeypatch.setattr(faults, "_FAULT", None)  # space returns
    written = agent.flush()
    assert [p.name for p in written] == ["site-01-000001-succeeded.tgr",
                                         "site-01-000002-succeeded.tgr"]
    assert agent.journal.pending_results() == []


def test_result_files_are_private(site: Any) -> None:
    agent, _, _ = site
    agent.journal.add_result(_intent(agent))
    (path,) = flush_results(agent.config, agent.journal, agent.keys.identity)
    assert Path(path).stat().st_mode & 0o777 == 0o600
