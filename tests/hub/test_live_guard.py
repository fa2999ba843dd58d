"""hub.live_guard: the limits as settings, admission of unauthenticated connections, the
back-off after failed logins and the aggregation of refusals — with an injected clock (the
whole path against a real `hub live` is tests/e2e/test_live_hostile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import load_config
from hub.errors import ConfigError
from hub.live_guard import Admission, LiveLimits, LoginGuard, default_export_processes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_limit_is_a_live_setting_of_hub_toml_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text("[live]\nmax_result_bytes = 1048576\n"
                                       "handshake_timeout_s = 2.5\n")
    config = load_config(tmp_path, environ={"TIANGONG_HUB_LIVE_SEND_TIMEOUT_S": "7"})
    limits = LiveLimits.from_config(config)
    assert limits.max_result_bytes == 1048576
    assert limits.handshake_timeout_s == 2.5
    assert limits.send_timeout_s == 7.0
    assert limits.log_quota_agent_bytes == LiveLimits().log_quota_agent_bytes
    # every name ends in its unit
    assert all(name.endswith(("_s", "_bytes", "_processes"))
               or name.startswith(("max_", "login_failures"))
               for name in LiveLimits.setting_names())


@pytest.mark.parametrize(("cpus", "processes"), [(1, 0), (2, 2), (16, 2)])
def test_exports_leave_the_event_loop_for_a_worker_process_where_there_is_a_second_cpu(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpus: int, processes: int) -> None:
    """``export_processes`` unset: two worker processes on two or more CPUs this process may
    use, none on one; what hub.toml says wins either way."""
    # the default of this machine, as the live server reads it (hub.config's default too)
    assert LiveLimits().export_processes == default_export_processes()
    assert load_config(tmp_path).live_export_processes == default_export_processes()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    assert default_export_processes() == processes
    (tmp_path / "hub.toml").write_text("[live]\nexport_processes = 0\n")
    assert LiveLimits.from_config(load_config(tmp_path)).export_processes == 0
    (tmp_path / "hub.toml").write_text("[live]\nexport_processes = 2\n")
    assert LiveLimits.from_config(load_config(tmp_path)).export_processes == 2


@pytest.mark.parametrize(("text", "why"), [
    ("send_timeout_s = 0", "send_timeout_s must be a positive number"),
    ("max_unauthenticated = -1", "max_unauthenticated must be a positive number"),
    ("export_processes = -1", "export_processes must be a number >= 0"),
    # a look at the database for all agents every round of the push loop: 0.001 spun the
    # loop a thousand times a second, each round a query
    ("poll_s = 0.001", "poll_s must be at least 0.05 seconds"),
    ("send_buffer_bytes = 100\nsend_buffer_max_bytes = 10", "below send_buffer_bytes"),
    ("no_such_limit = 1", "unknown [live] setting(s) no_such_limit"),
])
def test_a_bad_limit_is_refused_naming_it(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "hub.toml").write_text(f"[live]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, environ={})
    assert why in str(err.value)


def test_admission_caps_per_address_and_in_total() -> None:
    admission = Admission(LiveLimits(max_unauthenticated_per_address=2, max_unauthenticated=3))
    assert [admission.admit("10.0.0.1") for _ in range(3)] == [True, True, False]
    assert admission.admit("10.0.0.2") is True
    assert admission.admit("10.0.0.3") is False  # total reached
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.3") is True
    assert admission.total == 3
    admission.release("10.0.0.9")  # never admitted: nothing changes
    assert admission.total == 3


def test_back_off_after_failures_doubles_and_is_bounded() -> None:
    clock = Clock()
    guard = LoginGuard(LiveLimits(login_failures_before_backoff=3, login_backoff_s=10,
                                  login_backoff_max_s=25, login_failure_window_s=60), clock)
    for _ in range(2):
        guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") == 0.0
    guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") == 10.0
    assert guard.blocked("10.0.0.2") == 0.0  # per address
    clock.now += 10
    assert guard.blocked("10.0.0.1") == 0.0
    for _ in range(3):
        guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") == 20.0  # doubled
    clock.now += 20
    for _ in range(3):
        guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") == 25.0  # the ceiling


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    guard = LoginGuard(LiveLimits(login_failures_before_backoff=2,
                                  login_failure_window_s=60), clock)
    guard.failed("10.0.0.1")
    clock.now += 61
    guard.failed("10.0.0.1")
    assert guard.blocked("10.0.0.1") == 0.0


def test_refusals_are_audited_once_at_once_then_once_per_interval_with_a_count() -> None:
    clock = Clock()
    guard = LoginGuard(LiveLimits(refused_audit_interval_s=60), clock)
    first = guard.count_refusal("10.0.0.1", "ghost", "unknown-agent", "no such agent")
    assert first is not None and first.count == 1
    for _ in range(99):
        assert guard.count_refusal("10.0.0.1", "ghost", "unknown-agent", "no such agent") is None
    other = guard.count_refusal("10.0.0.2", "ghost", "unknown-agent", "no such agent")
    assert other is not None  # another source is another key
    assert guard.due() == []  # the interval has not ended
    clock.now += 60
    (due,) = guard.due()
    assert (due.source, due.agent_id, due.code, due.count) == (
        "10.0.0.1", "ghost", "unknown-agent", 99)
    assert due.details(60.0)["count"] == 99 and due.details(60.0)["interval_s"] == 60
    # a new interval: the next refusal is audited at once again
    assert guard.count_refusal("10.0.0.1", "ghost", "unknown-agent", "x") is not None
    assert guard.due(force=True) == []
