"""Durations and instants as operators type and read them.

``parse_duration("365d")`` turns the short forms used on the command line (``90s``, ``90m``,
``12h``, ``365d``, ``2w``) into integer seconds; ``format_utc`` shows a Unix time as an ISO 8601
UTC instant (``2027-11-23T11:00:00Z``) for messages.

Calendar units (months, years) are deliberately not offered: their length varies, and an
expiry must mean the same number of seconds on the hub and on every agent.
"""

from __future__ import annotations

import datetime as _dt
import re

__all__ = ["MAX_DURATION_SECONDS", "format_duration", "format_utc", "parse_duration"]

MAX_DURATION_SECONDS = 100 * 366 * 86400  # seconds; anything longer is a typo
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"([1-9][0-9]{0,9})([smhdw])")


def parse_duration(text: str) -> int:
    """Seconds in ``text``: a positive integer followed by one unit of s, m, h, d, w.

    Raises:
        ValueError: not of that form, zero, or longer than :data:`MAX_DURATION_SECONDS`.
    """
    match = _PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text[:40]!r} is not a duration; use a positive whole number and one unit, "
            "e.g. 90m, 12h, 365d, 2w (s, m, h, d, w)"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return seconds


def format_duration(seconds: int) -> str:
    """A short human form of ``seconds`` (``"364d 23h"``, ``"12m"``, ``"0s"``)."""
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return sign + (" ".join(parts) if parts else "0s")


def format_utc(timestamp: int) -> str:
    """``timestamp`` (Unix seconds) as ``YYYY-MM-DDTHH:MM:SSZ``; out-of-range values as-is."""
    try:
        instant = _dt.datetime.fromtimestamp(timestamp, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"@{timestamp}"
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")
