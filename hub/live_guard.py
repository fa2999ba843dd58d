"""What the live server allows a network peer before and around authentication
(docs/live-protocol.md §5.3, §8.1): the limits as one value, the admission of
unauthenticated connections, the back-off after failed logins, and the aggregation of
refused logins for the audit log.

* :class:`LiveLimits`: every limit of the hub's live layer, named, with its unit; built from
  the ``[live]`` table of hub.toml (:meth:`LiveLimits.from_config`).
* :class:`Admission`: counts unauthenticated connections per source address and in total;
  a connection over either cap is refused (``busy``) before anything is read from it.
* :class:`LoginGuard`: failed logins per source address within a window; past the threshold
  the address is refused (``backoff``) without a key look-up for a back-off time that
  doubles with every further failure, up to a ceiling. It also counts every refusal per
  ``(source, agent id, code)``: the first of a key in an interval is audited at once, the
  rest once per interval as one event with a count — never one audit event per attempt.

Sans-I/O: no sockets, no database, no timers; the clock is injected (monotonic seconds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["MIN_POLL_S", "WAKE_GAP_SECONDS", "Admission", "LiveLimits", "LoginGuard",
           "RefusalCount", "default_export_processes"]

Clock = Callable[[], float]
ZERO_ALLOWED = frozenset({"export_processes"})  # settings of LiveLimits that may be 0
#: seconds at least between the starts of two polls that wake-ups started (PostgreSQL
#: NOTIFY, hub.live_notify; SQLite datagrams, hub.live_wake): a wake-up starts a
#: poll at once, but one that comes sooner after the last woken poll waits for the rest of
#: this gap (the wake-ups meanwhile join it), so a flood of wake-ups — a script queueing
#: deployments one commit at a time, a local user sending datagrams — costs at most 20 polls
#: a second (besides the timed ones), and a wake-up waits at most this long instead of up to
#: a whole poll interval
WAKE_GAP_SECONDS = 0.05
#: seconds at least between two timed looks at the database ([live] poll_s): as often as
#: wake-ups may start them; less spun the push loop
MIN_POLL_S = WAKE_GAP_SECONDS

MiB = 1024 * 1024
GiB = 1024 * MiB


def default_export_processes() -> int:
    """``[live] export_processes`` when hub.toml does not say: 2 where this process may run
    on two or more CPUs (its affinity mask; the CPU count where there is none), so that a
    burst's exports take the cores beside the event loop, two export calls at once
    (:data:`hub.live_hub.BURST_CALLS`): on two cores a burst to 1,000 agents ended 12 %
    sooner than with one worker, to 10,000 10 % (docs/benchmarks.md, "Session 12: two
    export workers"); 0 on one CPU, where a worker process would only compete with the
    event loop for it (docs/live.md, "Limits")."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 0


@dataclass(frozen=True)
class LiveLimits:
    """The live server's limits (hub.toml ``[live]``, docs/live.md "Limits").

    Every field is a setting of the same name in ``[live]`` (environment variable
    ``TIANGONG_HUB_LIVE_<NAME>``); the suffix says the unit.
    """

    handshake_timeout_s: float = 10.0  # seconds from connect to a verified AUTH
    max_unauthenticated_per_address: int = 16  # connections not yet authenticated, per source
    max_unauthenticated: int = 256  # connections not yet authenticated, all sources
    login_failures_before_backoff: int = 10  # failed logins per address within the window
    login_failure_window_s: float = 300.0  # seconds a failed login counts towards back-off
    login_backoff_s: float = 30.0  # seconds the first back-off lasts; doubles each failure
    login_backoff_max_s: float = 900.0  # seconds a back-off lasts at most
    refused_audit_interval_s: float = 60.0  # seconds between aggregated live.refused events
    send_timeout_s: float = 60.0  # seconds a write may make no progress before the peer
    #                               is closed as stuck
    send_buffer_bytes: int = 4 * MiB  # bytes queued for one peer before file chunks wait
    send_buffer_max_bytes: int = 16 * MiB  # bytes queued for one peer before it is closed
    max_result_bytes: int = 1 * GiB  # bytes of one result file an agent may offer
    partial_max_age_s: float = 86_400.0  # seconds an abandoned partial upload is kept
    log_quota_agent_bytes: int = 256 * MiB  # bytes of stored live logs per agent
    log_quota_total_bytes: int = 8 * GiB  # bytes of stored live logs, all agents
    # seconds between two looks at the database for queued work and revocations that nothing
    # woke (PostgreSQL NOTIFY, a local datagram on SQLite: then it is a safety net); at least
    # MIN_POLL_S
    poll_s: float = 0.25
    heartbeat_s: int = 30  # seconds between an agent's heartbeats (announced in WELCOME);
    #                        presence counts an agent offline one interval after its last
    # processes exporting a burst's bundles beside the event loop (hub.live_exports); 0: in
    # the live server's own threads; default 1 on two or more CPUs, else 0
    export_processes: int = default_export_processes()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name in ZERO_ALLOWED else 1e-9
            if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
                raise ValueError(f"[live] {f.name} must be a "
                                 f"{'number >= 0' if least == 0 else 'positive number'}, "
                                 f"not {value!r}")
        if self.poll_s < MIN_POLL_S:
            raise ValueError(f"[live] poll_s must be at least {MIN_POLL_S} seconds (each look "
                             f"is a query for every connected agent), not {self.poll_s!r}")
        if self.send_buffer_max_bytes < self.send_buffer_bytes:
            raise ValueError(f"[live] send_buffer_max_bytes ({self.send_buffer_max_bytes}) "
                             f"is below send_buffer_bytes ({self.send_buffer_bytes})")

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, config: Any) -> LiveLimits:
        """The limits of a :class:`hub.config.HubConfig` (its ``live_<name>`` settings).

        Raises:
            ValueError: a limit is not a positive number.
        """
        return cls(**{name: getattr(config, f"live_{name}") for name in cls.setting_names()})


class Admission:
    """Unauthenticated connections per source address and in total (§8.1)."""

    def __init__(self, limits: LiveLimits) -> None:
        self.limits = limits
        self._per_source: dict[str, int] = {}
        self.total = 0

    def admit(self, source: str) -> bool:
        """Count one new connection from ``source``; False (and not counted) over a cap."""
        if (self.total >= self.limits.max_unauthenticated
                or self._per_source.get(source, 0)
                >= self.limits.max_unauthenticated_per_address):
            return False
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self.total += 1
        return True

    def release(self, source: str) -> None:
        """The connection authenticated or ended: it no longer counts."""
        n = self._per_source.get(source, 0)
        if n <= 0:
            return
        if n == 1:
            del self._per_source[source]
        else:
            self._per_source[source] = n - 1
        self.total -= 1


@dataclass
class RefusalCount:
    """Refused logins of one ``(source, agent id, code)`` not audited yet."""

    source: str
    agent_id: str
    code: str
    count: int = 0
    reason: str = ""

    def details(self, interval_s: float) -> dict[str, Any]:
        """Audit details (strict JSON: integers only)."""
        return {"code": self.code, "source": self.source, "count": self.count,
                "interval_s": max(1, round(interval_s)), "reason": self.reason[:500]}


@dataclass
class _Source:
    failures: list[float] = field(default_factory=list)  # monotonic times within the window
    blocked_until: float = 0.0
    backoffs: int = 0  # back-offs in a row (each doubles the next)


MAX_TRACKED_KEYS = 10_000  # (source, agent, code) keys counted per interval; more are folded


class LoginGuard:
    """Failed logins: back-off per source address, refusals counted per interval."""

    def __init__(self, limits: LiveLimits, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._sources: dict[str, _Source] = {}
        self._pending: dict[tuple[str, str, str], RefusalCount] = {}
        self._audited: set[tuple[str, str, str]] = set()  # keys audited in this interval
        self._interval_start = clock()

    def blocked(self, source: str) -> float:
        """Seconds ``source`` is still refused without a look-up (0.0: not blocked)."""
        state = self._sources.get(source)
        if state is None:
            return 0.0
        return max(0.0, state.blocked_until - self.clock())

    def failed(self, source: str) -> None:
        """One failed login from ``source`` (unknown agent, revoked, bad signature)."""
        now = self.clock()
        state = self._sources.setdefault(source, _Source())
        window = self.limits.login_failure_window_s
        state.failures = [t for t in state.failures if now - t < window]
        state.failures.append(now)
        if len(state.failures) >= self.limits.login_failures_before_backoff:
            seconds = min(self.limits.login_backoff_max_s,
                          self.limits.login_backoff_s * 2.0 ** state.backoffs)
            state.backoffs += 1
            state.blocked_until = max(state.blocked_until, now + seconds)
            state.failures.clear()
        self._forget_old(now)

    def succeeded(self, source: str) -> None:
        """A login from ``source`` succeeded: its failures no longer count."""
        state = self._sources.get(source)
        if state is not None and state.blocked_until <= self.clock():
            del self._sources[source]

    def _forget_old(self, now: float) -> None:
        if len(self._sources) < MAX_TRACKED_KEYS:
            return
        window = self.limits.login_failure_window_s
        for source, state in list(self._sources.items()):
            if state.blocked_until <= now and all(now - t >= window for t in state.failures):
                del self._sources[source]

    def count_refusal(self, source: str, agent_id: str, code: str,
                      reason: str) -> RefusalCount | None:
        """Count one refused login. Returns a count to audit **now** when this is the
        first refusal of its key in the current interval; otherwise None (it is audited
        with the others by :meth:`due`)."""
        key = (source, agent_id, code)
        if key not in self._audited and len(self._audited) < MAX_TRACKED_KEYS:
            self._audited.add(key)
            return RefusalCount(source, agent_id, code, 1, reason)
        if key not in self._pending and len(self._pending) >= MAX_TRACKED_KEYS:
            key = (source, "*", code)  # too many distinct ids: fold them per source
        entry = self._pending.setdefault(key, RefusalCount(*key))
        entry.count += 1
        entry.reason = reason
        return None

    def due(self, *, force: bool = False) -> list[RefusalCount]:
        """The aggregated counts to audit once an interval has passed (or ``force``: at
        shutdown); starts a new interval."""
        now = self.clock()
        if not force and now - self._interval_start < self.limits.refused_audit_interval_s:
            return []
        out = sorted(self._pending.values(), key=lambda r: (r.source, r.agent_id, r.code))
        self._pending = {}
        self._audited = set()
        self._interval_start = now
        return out
