"""``hub serve``'s gunicorn settings (the control socket is one per hub data directory) and
the children it keeps running (:class:`hub.serve.ChildProcess`)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import hub.serve as serve_mod
from hub.config import HubConfig
from hub.serve import CONTROL_SOCKET, MAX_SOCKET_PATH_BYTES, gunicorn_options
from tests.fixtures.dbservers import wait_for


def test_control_socket_is_in_the_data_directory(tmp_path: Path) -> None:
    a = gunicorn_options(HubConfig(data_dir=tmp_path / "a"))
    b = gunicorn_options(HubConfig(data_dir=tmp_path / "b"))
    assert a["control_socket"] == str(tmp_path / "a" / CONTROL_SOCKET)
    assert b["control_socket"] == str(tmp_path / "b" / CONTROL_SOCKET)
    assert a["control_socket_mode"] == 0o600
    assert "control_socket_disable" not in a


def test_a_data_directory_too_long_for_a_socket_gets_none(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (MAX_SOCKET_PATH_BYTES - len(str(tmp_path))))
    options = gunicorn_options(HubConfig(data_dir=deep))
    assert options["control_socket_disable"] is True
    assert "control_socket" not in options


def test_a_child_that_cannot_be_started_again_is_retried_with_the_back_off(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A child that exits is started again; when that start fails (no memory for the fork,
    the interpreter moved by an upgrade) it is logged and tried again after the back-off,
    instead of the watching thread dying and the child staying down for good."""
    monkeypatch.setattr(serve_mod, "RESTART_FIRST_S", 0.01)
    monkeypatch.setattr(serve_mod, "RESTART_MAX_S", 0.04)
    real = serve_mod.ChildProcess._spawn
    spawns: list[int] = []
    commands = [[sys.executable, "-c", "raise SystemExit(3)"], None,
                [sys.executable, "-c", "import signal; signal.pause()"]]  # runs until stopped

    def spawn(self: serve_mod.ChildProcess) -> subprocess.Popen[bytes]:
        command = commands[min(len(spawns), len(commands) - 1)]
        spawns.append(1)
        if command is None:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        self.command = command
        return real(self)

    monkeypatch.setattr(serve_mod.ChildProcess, "_spawn", spawn)
    caplog.set_level(logging.INFO, logger="tiangong.hub.serve")
    child = serve_mod.ChildProcess(["unused"], "live server", "agents cannot connect")
    child.start()
    try:
        wait_for(lambda: len(spawns) >= 3, 30, "the third start")
    finally:
        child.stop()
    pid = child.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(pid, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited with code 3" in m for m in messages), messages
    assert any("could not be started again" in m and "Cannot allocate memory" in m
               and "trying again in" in m for m in messages), messages


def test_stopping_during_the_back_off_starts_no_child_and_ends_the_watch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM to hub serve while a child waits to be started again (bad config: it exits
    at once): stop() returns, no child is started after it, the watching thread ends."""
    monkeypatch.setattr(serve_mod, "RESTART_FIRST_S", 3600.0)
    spawned: list[int] = []
    real = serve_mod.ChildProcess._spawn

    def spawn(self: serve_mod.ChildProcess) -> subprocess.Popen[bytes]:
        proc = real(self)
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(serve_mod.ChildProcess, "_spawn", spawn)
    caplog.set_level(logging.INFO, logger="tiangong.hub.serve")
    child = serve_mod.ChildProcess([sys.executable, "-c", "raise SystemExit(2)"], "scheduler",
                                   "windows and freezes are not acted on")
    child.start()
    wait_for(lambda: any("starting it again in 3600 s" in r.getMessage()
                         for r in caplog.records), 30, "the exit to be logged")
    child.stop()
    wait_for(lambda: not any(t.name == "tiangong-watch-scheduler"
                             for t in threading.enumerate()), 30, "the watch to end")
    assert len(spawned) == 1


class _SpyEvent(threading.Event):
    """An Event that says when someone waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


@pytest.mark.parametrize("code", [0, -15])
def test_a_child_stopped_with_hub_serve_logs_no_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int) -> None:
    """systemd's stop signals the whole group: the live child exits 0 (or by SIGTERM)
    before hub serve calls stop(). That is not a crash: no ERROR is logged (monitors alert
    on it) unless the child is still down when its back-off ends."""
    monkeypatch.setattr(serve_mod, "RESTART_FIRST_S", 3600.0)
    caplog.set_level(logging.INFO, logger="tiangong.hub.serve")
    exit_code = ("raise SystemExit(0)" if code == 0
                 else "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    child = serve_mod.ChildProcess([sys.executable, "-c", exit_code])
    spy = child._stopping = _SpyEvent()
    child.start()
    wait_for(spy.waited.is_set, 30, "the watch to wait out the back-off")
    child.stop()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
