"""Failed password sign-ins counted per user name and per source address, in the hub
database (table ``login_throttle``, migration 0003) so that every hub process counts the
same ones.

A counter starts at the first failure and lasts ``web.login_window_s``; once it holds
``web.login_max_failures_per_user`` (for ``user:<name>``) or
``web.login_max_failures_per_address`` (for ``addr:<ip>``) failures, sign-ins with that
name or from that address are refused without looking at the password until the window
ends. A successful sign-in clears the user's counter (not the address's). Counters whose
window ended are deleted at each failure, so the table stays small.

Used by :mod:`web.auth` for the local sign-in and break-glass alike. This module decides
nothing about passwords and writes no audit event (the caller does, from what
:func:`record_failure` returns).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from hub.db import LoginThrottle
from web.config import LoginLimits

__all__ = ["Failure", "address_key", "blocked_for", "clear", "record_failure", "user_key"]

MAX_KEY_CHARS = 200  # characters of a counter's key (the column's size)


def user_key(username: str) -> str:
    return f"user:{username[:64]}"


def address_key(address: str) -> str:
    return f"addr:{address[:64]}"


def _limit(key: str, limits: LoginLimits) -> int:
    return limits.max_failures_per_user if key.startswith("user:") else (
        limits.max_failures_per_address)


def _live(row: LoginThrottle | None, now: datetime, limits: LoginLimits) -> bool:
    return row is not None and now < row.window_start + timedelta(seconds=limits.window_s)


def blocked_for(session: Session, keys: list[str], now: datetime, limits: LoginLimits) -> int:
    """Seconds until the longest block among ``keys`` ends (0: not blocked)."""
    wait = 0.0
    for key in keys:
        row = session.get(LoginThrottle, key)
        if row is not None and _live(row, now, limits) and row.failures >= _limit(key, limits):
            end = row.window_start + timedelta(seconds=limits.window_s)
            wait = max(wait, (end - now).total_seconds())
    return int(wait + 0.999)


@dataclass(frozen=True)
class Failure:
    """A counter after one more failure: ``first`` of its window, or ``now_blocked``."""

    key: str
    failures: int
    first: bool
    now_blocked: bool


def record_failure(
    session: Session, keys: list[str], now: datetime, limits: LoginLimits
) -> list[Failure]:
    """Count one failed sign-in for each of ``keys`` (flushed; the caller commits)."""
    session.execute(delete(LoginThrottle).where(
        LoginThrottle.window_start <= now - timedelta(seconds=limits.window_s)))
    out = []
    for key in keys:
        row = session.get(LoginThrottle, key[:MAX_KEY_CHARS])
        if row is None or not _live(row, now, limits):
            if row is None:
                row = LoginThrottle(key=key[:MAX_KEY_CHARS], failures=0, window_start=now)
                session.add(row)
            row.failures, row.window_start = 0, now
        row.failures += 1
        out.append(Failure(key, row.failures, row.failures == 1,
                           row.failures == _limit(key, limits)))
    session.flush()
    return out


def clear(session: Session, key: str, now: datetime, limits: LoginLimits) -> int:
    """Forget ``key``'s failures (after a successful sign-in); returns how many there were
    in the current window."""
    row = session.get(LoginThrottle, key[:MAX_KEY_CHARS])
    if row is None:
        return 0
    failures = row.failures if _live(row, now, limits) else 0
    session.delete(row)
    session.flush()
    return failures
