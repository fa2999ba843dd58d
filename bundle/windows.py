"""Maintenance windows and change freezes: the ``policy`` a release bundle carries (§6.9).

A policy says *when* an agent may run a bundle's steps: inside one of its windows (no
windows = any time) and outside every freeze, by the agent's own clock (never below its time
floor). This module parses and validates the strict-JSON objects of docs/bundle-format.md
§6.9 and the short command-line specs of ``tiangong bundle create --window/--freeze``, and
answers the questions the agent and the hub ask of a policy at an instant:

* :meth:`Policy.is_open` — may a step start now?
* :meth:`Policy.next_open` — the first instant ≥ now when it may (None: never again);
* :meth:`Policy.frozen_until` — the end of the freeze holding now, and why;
* :meth:`Policy.hold` — the operator's sentence ("window opens Sat 2027-01-02 01:00
  Europe/Berlin", "frozen until Tue 2027-01-05 00:00 UTC (year end)").

Wall-clock rules (§6.9): weekly windows and annual freezes are in their IANA time zone
(``zoneinfo``; the ``tzdata`` wheel supplies the database where the system has none). A
window whose end is not after its start crosses midnight ("22:00"–"02:00"); ``24:00`` is the
end of the day. On the night clocks change, a wall time that does not exist (02:30 when
clocks jump from 02:00 to 03:00) means the same instant as the time that far after the jump
(03:30), and a wall time that happens twice means its first occurrence — so a window of
01:00–05:00 lasts three real hours on the spring night and five on the autumn night.
Intervals are half-open: a window ``01:00–05:00`` is open at 01:00:00 and closed at 05:00:00.

This module does no I/O apart from reading the time-zone database, keeps no clock (every
question takes ``now`` as integer Unix seconds) and does not decide about overrides: an
agent honours ``override`` (or the operator's ``run-now``) itself.

Raises :class:`PolicyError` (a :class:`~bundle.errors.ManifestError`) for every rule, with
the field's path in the message (``windows[1].timezone: ...``).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from bundle.errors import ManifestError
from signing.durations import format_utc

__all__ = [
    "DAYS",
    "LATEST_NOW",
    "MAX_FREEZES",
    "MAX_WINDOWS",
    "Annual",
    "Freeze",
    "Hold",
    "Once",
    "Override",
    "Policy",
    "PolicyError",
    "Weekly",
    "format_instant",
    "parse_freeze_spec",
    "parse_window_spec",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
MAX_WINDOWS = 64  # windows one policy carries
MAX_FREEZES = 64  # freezes one policy carries
MAX_REASON_CHARS = 256  # a freeze's reason (single line)
MAX_OVERRIDE_REASON_CHARS = 4096  # an override's reason (may span lines)
MAX_TIME = 253402214400  # 9999-12-31T00:00:00Z: once-periods end no later
SEARCH_YEARS = 10  # years next_open looks ahead before it answers "never"
LATEST_NOW = MAX_TIME - 2 * 366 * 86400  # the latest instant a policy is asked about (9997)
_CHUNK = 28 * 86400  # seconds of occurrences the searches generate at a time
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
_MONTH_DAY = re.compile(r"(\d\d)-(\d\d)")
_DAY_SECONDS = 86400
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class PolicyError(ManifestError):
    """A window, freeze, override or policy breaks a rule of §6.9 (or a spec is malformed)."""


def _fail(what: str | None, rule: str) -> PolicyError:
    return PolicyError(rule if what is None else f"{what}: {rule}")


@contextmanager
def _within(where: str, *, path: bool = True) -> Iterator[None]:
    """Prefix the PolicyErrors raised inside with ``where`` (a field path, or a spec)."""
    try:
        yield
    except PolicyError as exc:
        msg = str(exc)
        sep = "." if path and re.match(r"[a-z_]+(\[\d+\])?: ", msg) else ": "
        raise PolicyError(f"{where}{sep}{msg}") from None


def _fields(value: object, names: Sequence[str], what: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(what, "must be a JSON object")
    missing = [n for n in names if n not in value]
    if missing:
        raise _fail(what, f"field {missing[0]!r} is missing")
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise _fail(what, f"field {unknown[0][:80]!r} is not allowed")
    return value


def _text(value: object, what: str, max_chars: int, multiline: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(what, "must be a non-empty string")
    if len(value) > max_chars:
        raise _fail(what, f"is {len(value)} characters, over the limit of {max_chars}")
    for ch in value:
        o = ord(ch)
        if (o < 0x20 and not (multiline and ch in "\n\t")) or 0x7F <= o <= 0x9F or (
                0xD800 <= o <= 0xDFFF):
            raise _fail(what, "contains control characters")
    return value


def _seconds(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(what, "must be an integer (Unix seconds)")
    if not 0 <= value <= MAX_TIME:
        raise _fail(what, f"must be between 0 and {MAX_TIME} (9999-12-31)")
    return value


def _zone(name: object, what: str = "timezone") -> tzinfo:
    if not isinstance(name, str) or not name:
        raise _fail(what, "must be an IANA time zone name such as 'Europe/Berlin' or 'UTC'")
    if len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name):
        raise _fail(what, f"{name[:80]!r} is not an IANA time zone name (such as "
                    "'Europe/Berlin' or 'UTC')")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise _fail(what, f"unknown time zone {name!r} (not in the time-zone database; "
                    "names look like 'Europe/Berlin', 'America/New_York', 'UTC')") from None


def _clock_time(value: object, what: str, *, end: bool) -> int:
    """``"HH:MM"`` → minutes after midnight (``24:00`` only as an end)."""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _fail(what, f"{str(value)[:40]!r} is not a time of day HH:MM (00:00 to 23:59"
                    + (", or 24:00 for the end of the day)" if end else ")"))
    if value == "24:00" and not end:
        raise _fail(what, "24:00 is only allowed as an end (use 00:00 to start at midnight)")
    return int(value[:2]) * 60 + int(value[3:])


def _month_day(value: object, what: str) -> tuple[int, int]:
    m = _MONTH_DAY.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _fail(what, f"{str(value)[:40]!r} is not a date of the year MM-DD (such as "
                    "'12-20')")
    month, day = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        raise _fail(what, f"{value!r}: there is no month {month}")
    if not 1 <= day <= _DAYS_IN_MONTH[month - 1]:
        raise _fail(what, f"{value!r}: {_MONTHS[month - 1]} has no day {day}")
    if (month, day) == (2, 29):
        raise _fail(what, "02-29 exists only in leap years; use 02-28 or 03-01")
    return month, day


def _utc(local: datetime) -> int:
    """Unix seconds of a wall time (fold=0: a skipped time moves forward by the gap; a
    repeated one is its first occurrence)."""
    return int(local.timestamp())


def _wall(day: date, minutes: int, zone: tzinfo) -> int:
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    if minutes == 0:
        return _utc(start)
    return _utc(start.replace(hour=minutes // 60, minute=minutes % 60))


def _local_date(t: int, zone: tzinfo) -> date:
    return datetime.fromtimestamp(t, zone).date()


def format_instant(t: int, zone: str = "UTC") -> str:
    """``Sat 2027-01-02 01:00 Europe/Berlin``: an instant as a person at the site reads it."""
    local = datetime.fromtimestamp(t, zoneinfo.ZoneInfo(zone))
    hm = local.strftime("%H:%M") if local.second == 0 else local.strftime("%H:%M:%S")
    return f"{DAYS[local.weekday()].capitalize()} {local.strftime('%Y-%m-%d')} {hm} {zone}"


# -- periods ----------------------------------------------------------------------------


Interval = tuple[int, int]  # [start, end) in Unix seconds


@dataclass(frozen=True)
class Weekly:
    """Every listed weekday from ``start`` to ``end`` (wall time in ``timezone``)."""

    days: tuple[str, ...]
    start: str
    end: str
    timezone: str
    #: (start, end) in minutes after midnight, and the weekdays (0 = Monday): parsed once.
    _minutes: tuple[int, int] = field(init=False, repr=False, compare=False, default=(0, 0))
    _weekdays: frozenset[int] = field(init=False, repr=False, compare=False,
                                      default=frozenset())

    def __post_init__(self) -> None:
        if not isinstance(self.days, tuple) or not self.days:
            raise _fail("days", "must list at least one day (mon, tue, wed, thu, fri, sat, "
                        "sun)")
        for i, d in enumerate(self.days):
            if d not in DAYS:
                raise _fail(f"days[{i}]", f"unknown day {str(d)[:20]!r} (use mon, tue, wed, "
                            "thu, fri, sat, sun)")
        if len(set(self.days)) != len(self.days):
            raise _fail("days", "lists a day twice")
        s = _clock_time(self.start, "start", end=False)
        e = _clock_time(self.end, "end", end=True)
        if s == e:
            raise _fail("end", f"equals start ({self.start}): a window needs a length (an end "
                        "before the start crosses midnight; 00:00 to 24:00 is the whole day)")
        _zone(self.timezone)
        object.__setattr__(self, "_minutes", (s, e))
        object.__setattr__(self, "_weekdays", frozenset(DAYS.index(d) for d in self.days))

    def _intervals(self, day: date, zone: tzinfo | None = None) -> Iterable[Interval]:
        if day.weekday() not in self._weekdays:
            return ()
        zone = zone or zoneinfo.ZoneInfo(self.timezone)
        s_min, e_min = self._minutes
        s = _wall(day, s_min, zone)
        if e_min == 24 * 60:
            e = _wall(day + timedelta(days=1), 0, zone)
        elif e_min <= s_min:
            e = _wall(day + timedelta(days=1), e_min, zone)
        else:
            e = _wall(day, e_min, zone)
        return ((s, e),) if e > s else ()

    def intervals(self, lo: int, hi: int) -> list[Interval]:
        """Every occurrence overlapping ``[lo, hi)``, in order."""
        zone = zoneinfo.ZoneInfo(self.timezone)
        day, last = _local_date(lo, zone) - timedelta(days=1), _local_date(hi, zone)
        out: list[Interval] = []
        while day <= last:
            out += [(s, e) for s, e in self._intervals(day, zone) if e > lo and s < hi]
            day += timedelta(days=1)
        return out

    def containing(self, t: int) -> Interval | None:
        """The occurrence holding instant ``t``, or None."""
        today = _local_date(t, zoneinfo.ZoneInfo(self.timezone))
        for back in (1, 0):
            for s, e in self._intervals(today - timedelta(days=back)):
                if s <= t < e:
                    return (s, e)
        return None

    def next_start(self, t: int) -> int | None:
        """The first occurrence starting after ``t``."""
        today = _local_date(t, zoneinfo.ZoneInfo(self.timezone))
        for ahead in range(-1, 9):
            for s, _ in self._intervals(today + timedelta(days=ahead)):
                if s > t:
                    return s
        return None  # pragma: no cover - a listed weekday comes within a week

    def describe(self) -> str:
        days = ", ".join(d.capitalize() for d in DAYS if d in self.days)
        if len(self.days) == 7:
            days = "daily"
        return f"{days} {self.start}–{self.end} {self.timezone}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "weekly", "days": list(self.days), "start": self.start,
                "end": self.end, "timezone": self.timezone}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Weekly:
        days = doc["days"]
        if not isinstance(days, list):
            raise _fail("days", "must be a list of days (mon … sun)")
        return cls(tuple(days), doc["start"], doc["end"], doc["timezone"])


@dataclass(frozen=True)
class Once:
    """One period from ``start`` to ``end`` (Unix seconds, end excluded)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        _seconds(self.start, "start")
        _seconds(self.end, "end")
        if self.end <= self.start:
            raise _fail("end", f"{self.end} must be later than start {self.start} "
                        f"({format_utc(self.end)} is not after {format_utc(self.start)})")

    def intervals(self, lo: int, hi: int) -> list[Interval]:
        return [(self.start, self.end)] if self.end > lo and self.start < hi else []

    def containing(self, t: int) -> Interval | None:
        return (self.start, self.end) if self.start <= t < self.end else None

    def next_start(self, t: int) -> int | None:
        return self.start if self.start > t else None

    def describe(self) -> str:
        a = datetime.fromtimestamp(self.start, UTC)
        b = datetime.fromtimestamp(self.end, UTC)
        if a.date() == b.date():
            return f"{a:%Y-%m-%d %H:%M}–{b:%H:%M} UTC"
        return f"{a:%Y-%m-%d %H:%M} – {b:%Y-%m-%d %H:%M} UTC"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "once", "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Once:
        return cls(doc["start"], doc["end"])


@dataclass(frozen=True)
class Annual:
    """Every year from 00:00 on ``start`` (MM-DD) to 24:00 on ``end``, both days included; an
    end before the start crosses the new year."""

    start: str
    end: str
    timezone: str

    def __post_init__(self) -> None:
        _month_day(self.start, "start")
        _month_day(self.end, "end")
        _zone(self.timezone)

    def _interval(self, year: int) -> Interval:
        zone = zoneinfo.ZoneInfo(self.timezone)
        sm, sd = _month_day(self.start, "start")
        em, ed = _month_day(self.end, "end")
        end_year = year if (em, ed) >= (sm, sd) else year + 1
        last = date(end_year, em, ed) + timedelta(days=1)
        return (_wall(date(year, sm, sd), 0, zone), _wall(last, 0, zone))

    def _years(self, t: int) -> int:
        return _local_date(t, zoneinfo.ZoneInfo(self.timezone)).year

    def intervals(self, lo: int, hi: int) -> list[Interval]:
        out = []
        for year in range(self._years(lo) - 1, self._years(hi) + 1):
            s, e = self._interval(year)
            if e > lo and s < hi:
                out.append((s, e))
        return out

    def containing(self, t: int) -> Interval | None:
        y = self._years(t)
        for year in (y - 1, y):
            s, e = self._interval(year)
            if s <= t < e:
                return (s, e)
        return None

    def next_start(self, t: int) -> int | None:
        y = self._years(t)
        for year in (y, y + 1):
            s, _ = self._interval(year)
            if s > t:
                return s
        return None  # pragma: no cover - next year's start is always later

    def describe(self) -> str:
        sm, sd = _month_day(self.start, "start")
        em, ed = _month_day(self.end, "end")
        return (f"every year {_MONTHS[sm - 1]} {sd} – {_MONTHS[em - 1]} {ed} "
                f"{self.timezone}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": "annual", "start": self.start, "end": self.end,
                "timezone": self.timezone}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Annual:
        return cls(doc["start"], doc["end"], doc["timezone"])


Period = Weekly | Once | Annual
_PERIOD_FIELDS: dict[str, tuple[str, ...]] = {
    "weekly": ("kind", "days", "start", "end", "timezone"),
    "once": ("kind", "start", "end"),
    "annual": ("kind", "start", "end", "timezone"),
}


def _period_from_json(value: object, kinds: tuple[str, ...], extra: tuple[str, ...] = ()
                      ) -> tuple[Period, dict[str, Any]]:
    if not isinstance(value, dict):
        raise _fail(None, "must be a JSON object")
    kind = value.get("kind")
    if kind not in kinds:
        raise _fail("kind", f"{str(kind)[:40]!r} is not one of {', '.join(kinds)}")
    doc = _fields(value, _PERIOD_FIELDS[kind] + extra)
    period: Period
    if kind == "weekly":
        period = Weekly.from_json(doc)
    elif kind == "once":
        period = Once.from_json(doc)
    else:
        period = Annual.from_json(doc)
    return period, doc


@dataclass(frozen=True)
class Freeze:
    """A period in which no step starts, with its reason (shown to operators)."""

    period: Period
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.period, Weekly | Once | Annual):
            raise _fail(None, "must be a weekly, once or annual period")
        _text(self.reason, "reason", MAX_REASON_CHARS)

    def describe(self) -> str:
        return f"{self.period.describe()} ({self.reason})"

    def to_json(self) -> dict[str, Any]:
        return {**self.period.to_json(), "reason": self.reason}

    @classmethod
    def from_json(cls, value: object) -> Freeze:
        period, doc = _period_from_json(value, ("once", "annual", "weekly"), ("reason",))
        return cls(period, doc["reason"])


@dataclass(frozen=True)
class Override:
    """The hub's decision to run this bundle in spite of windows and freezes: why, who asked,
    who seconded (another person), when (§6.9)."""

    reason: str
    by: str
    second: str
    at: int

    def __post_init__(self) -> None:
        _text(self.reason, "reason", MAX_OVERRIDE_REASON_CHARS, multiline=True)
        _text(self.by, "by", MAX_REASON_CHARS)
        _text(self.second, "second", MAX_REASON_CHARS)
        if self.second == self.by:
            raise _fail("second", f"{self.by!r} cannot second their own override")
        _seconds(self.at, "at")

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "second": self.second, "at": self.at}

    @classmethod
    def from_json(cls, value: object) -> Override:
        doc = _fields(value, ("reason", "by", "second", "at"))
        return cls(doc["reason"], doc["by"], doc["second"], doc["at"])


@dataclass(frozen=True)
class Hold:
    """Why a step may not start now and when it may (``until`` None: no time found)."""

    kind: str  # "window" | "freeze"
    until: int | None
    text: str


def _check_now(now: int) -> None:
    if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now <= LATEST_NOW:
        raise PolicyError(f"the time {str(now)[:30]} is outside what windows and freezes are "
                          f"judged for (0 to {LATEST_NOW}, {format_instant(LATEST_NOW)})")


def _merged(intervals: list[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals joined."""
    out: list[Interval] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _zone_of(period: Period) -> str:
    return "UTC" if isinstance(period, Once) else period.timezone


@dataclass(frozen=True)
class Policy:
    """When a release bundle's steps may start (§6.9). Empty windows = any time."""

    windows: tuple[Weekly | Once, ...] = ()
    freezes: tuple[Freeze, ...] = ()
    override: Override | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.windows, tuple) or not all(
                isinstance(w, Weekly | Once) for w in self.windows):
            raise _fail("windows", "must be a list of weekly or once windows")
        if len(self.windows) > MAX_WINDOWS:
            raise _fail("windows", f"lists {len(self.windows)} windows, over the limit of "
                        f"{MAX_WINDOWS}")
        if not isinstance(self.freezes, tuple) or not all(
                isinstance(f, Freeze) for f in self.freezes):
            raise _fail("freezes", "must be a list of freezes")
        if len(self.freezes) > MAX_FREEZES:
            raise _fail("freezes", f"lists {len(self.freezes)} freezes, over the limit of "
                        f"{MAX_FREEZES}")
        if self.override is not None and not isinstance(self.override, Override):
            raise _fail("override", "must be an override or null")
        for name, items in (("windows", self.windows), ("freezes", self.freezes)):
            if len(set(items)) != len(items):
                raise _fail(name, "lists the same entry twice")

    @property
    def empty(self) -> bool:
        """No windows, no freezes and no override: the policy says nothing (omitted, §6.1)."""
        return not self.windows and not self.freezes and self.override is None

    # -- questions ------------------------------------------------------------------------

    def _frozen_by(self, t: int) -> list[tuple[Freeze, Interval]]:
        out = []
        for f in self.freezes:
            iv = f.period.containing(t)
            if iv is not None:
                out.append((f, iv))
        return out

    def _window_at(self, t: int) -> bool:
        return not self.windows or any(w.containing(t) is not None for w in self.windows)

    def is_open(self, now: int) -> bool:
        """True when a step may start at ``now``: inside a window (or none) and no freeze.

        Raises:
            PolicyError: ``now`` is outside 0 … :data:`LATEST_NOW` (every question says so).
        """
        _check_now(now)
        return self._window_at(now) and not self._frozen_by(now)

    def frozen_until(self, now: int) -> tuple[int, Freeze] | None:
        """When the freeze holding ``now`` ends (following freezes that overlap or touch it),
        and the freeze that holds it last; None when nothing is frozen at ``now``. An end
        beyond :data:`SEARCH_YEARS` years is returned as the first instant found past that."""
        _check_now(now)
        t, last = now, None
        limit = self._limit(now)
        while t <= limit:
            end = t + _CHUNK
            found = sorted(((iv, f) for f in self.freezes for iv in f.period.intervals(t, end)),
                           key=lambda h: h[0])
            for (s, e), f in found:  # by start: extend the coverage while there is no gap
                if s > t:
                    break
                if e > t:
                    t, last = e, f
            if last is None or t < end:
                break
        return None if last is None else (t, last)

    @staticmethod
    def _limit(now: int) -> int:
        return min(now + SEARCH_YEARS * 366 * _DAY_SECONDS, LATEST_NOW)

    def next_open(self, now: int) -> int | None:
        """The first instant ≥ ``now`` when :meth:`is_open` holds; None when there is none in
        the next :data:`SEARCH_YEARS` years (every window is over, or always frozen).

        Looks ahead one chunk of :data:`_CHUNK` seconds at a time: the windows' and freezes'
        occurrences in it, merged, then the first window instant no freeze covers."""
        _check_now(now)
        start, limit = now, self._limit(now)
        while start <= limit:
            end = start + _CHUNK
            frozen = _merged([iv for f in self.freezes for iv in f.period.intervals(start, end)])
            windows = (_merged([iv for w in self.windows for iv in w.intervals(start, end)])
                       if self.windows else [(start, end)])
            for s, e in windows:
                t = max(s, start)
                for fs, fe in frozen:
                    if fe <= t:
                        continue
                    if fs > t:
                        break
                    t = fe
                if t < e and t < end:
                    return t
            start = end
        return None

    def _window_opening(self, t: int) -> tuple[int, str] | None:
        found: tuple[int, str] | None = None
        for w in self.windows:
            s = w.next_start(t)
            if s is not None and (found is None or s < found[0]):
                found = (s, _zone_of(w))
        return found

    def hold(self, now: int) -> Hold | None:
        """None when a step may start at ``now``; else why not and when it may, in words an
        operator reads: ``frozen until Tue 2027-01-05 00:00 UTC (year end)`` or ``window
        opens Sat 2027-01-02 01:00 Europe/Berlin``."""
        if self.is_open(now):
            return None
        frozen = self.frozen_until(now)
        if frozen is not None and frozen[0] > self._limit(now):
            return Hold("freeze", None, f"frozen ({frozen[1].reason}), with no end in the "
                        f"next {SEARCH_YEARS} years")
        until = self.next_open(now)
        if frozen is not None:
            end, freeze = frozen
            text = (f"frozen until {format_instant(end, _zone_of(freeze.period))} "
                    f"({freeze.reason})")
            kind, first = "freeze", end
        else:
            opening = self._window_opening(now)
            if opening is None:
                return Hold("window", None, "outside every window, and no window opens "
                            f"again (windows: {self.describe_windows()})")
            first = opening[0]
            text = f"window opens {format_instant(first, opening[1])}"
            kind = "window"
        if until is None:
            text += f"; no time to run in the next {SEARCH_YEARS} years"
        elif until != first:
            text += f"; it can run from {self._describe_open(until)}"
        return Hold(kind, until, text)

    def _describe_open(self, t: int) -> str:
        zones = [_zone_of(w) for w in self.windows if w.containing(t) is not None]
        return format_instant(t, zones[0] if zones else "UTC")

    def describe_windows(self) -> str:
        return "; ".join(w.describe() for w in self.windows) or "any time"

    def describe(self) -> list[str]:
        """One line per rule, for ``bundle inspect`` and ``agent status``."""
        lines = [f"window: {w.describe()}" for w in self.windows]
        lines += [f"freeze: {f.describe()}" for f in self.freezes]
        if self.override is not None:
            o = self.override
            lines.append(f"override: by {o.by}, seconded by {o.second} at "
                         f"{format_instant(o.at)}: {o.reason}")
        return lines

    # -- JSON -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"windows": [w.to_json() for w in self.windows],
                "freezes": [f.to_json() for f in self.freezes],
                "override": None if self.override is None else self.override.to_json()}

    @classmethod
    def from_json(cls, value: object) -> Policy:
        """Build a policy from its strict-JSON value (§6.9).

        Raises:
            PolicyError: a field is missing, unknown, of the wrong type or breaks a rule.
        """
        doc = _fields(value, ("windows", "freezes", "override"))
        windows: list[Weekly | Once] = []
        if not isinstance(doc["windows"], list):
            raise _fail("windows", "must be a list")
        if not isinstance(doc["freezes"], list):
            raise _fail("freezes", "must be a list")
        for i, w in enumerate(doc["windows"]):
            with _within(f"windows[{i}]"):
                period, _ = _period_from_json(w, ("weekly", "once"))
            assert isinstance(period, Weekly | Once)
            windows.append(period)
        freezes = []
        for i, f in enumerate(doc["freezes"]):
            with _within(f"freezes[{i}]"):
                freezes.append(Freeze.from_json(f))
        override = None
        if doc["override"] is not None:
            with _within("override"):
                override = Override.from_json(doc["override"])
        return cls(tuple(windows), tuple(freezes), override)


# -- command-line specs -------------------------------------------------------------------


def _spec_days(text: str) -> tuple[str, ...]:
    if text.lower() in ("daily", "*"):
        return DAYS
    out: list[str] = []
    for part in text.lower().split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS:
                raise _fail(None, f"unknown day range {part!r} (use mon … sun, e.g. mon-fri)")
            i, j = DAYS.index(a), DAYS.index(b)
            out += [DAYS[k % 7] for k in range(i, j + 1 if j >= i else j + 8)]
        else:
            out.append(part)
    return tuple(out)


def _spec_instant(text: str) -> int:
    if re.fullmatch(r"\d{1,12}", text):
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(None, f"{text[:60]!r} is neither Unix seconds nor an ISO 8601 time such "
                    "as 2027-01-02T01:00+01:00") from None
    if when.tzinfo is None:
        raise _fail(None, f"{text[:60]!r} has no UTC offset: add Z or +01:00")
    return int(when.timestamp())


def _spec_period(spec: str, kinds: tuple[str, ...]) -> Period:
    text = spec.strip()
    if "/" in text and " " not in text:
        a, _, b = text.partition("/")
        return Once(_spec_instant(a), _spec_instant(b))
    parts = text.split()
    if "annual" in kinds and len(parts) == 2 and ".." in parts[0]:
        a, _, b = parts[0].partition("..")
        return Annual(a, b, parts[1])
    if len(parts) == 3 and "-" in parts[1]:
        start, _, end = parts[1].partition("-")
        return Weekly(_spec_days(parts[0]), start, end, parts[2])
    forms = ["'DAYS HH:MM-HH:MM ZONE' (sat,sun 01:00-05:00 Europe/Berlin)",
             "'START/END' (2027-01-02T01:00Z/2027-01-02T05:00Z)"]
    if "annual" in kinds:
        forms.append("'MM-DD..MM-DD ZONE' (12-20..01-05 UTC)")
    raise _fail(None, f"{text[:80]!r} is not one of " + ", ".join(forms))


def parse_window_spec(spec: str) -> Weekly | Once:
    """A window from ``--window``: a JSON object, ``sat,sun 01:00-05:00 Europe/Berlin``
    (days: names, ranges like ``mon-fri``, or ``daily``) or ``START/END`` (Unix seconds or
    ISO 8601 with an offset).

    Raises:
        PolicyError: the spec is malformed or breaks a rule (the message says which).
    """
    if spec.lstrip().startswith("{"):
        return Policy.from_json({"windows": [_spec_json(spec)], "freezes": [],
                                 "override": None}).windows[0]
    with _within(f"window {spec[:80]!r}", path=False):
        period = _spec_period(spec, ("weekly", "once"))
    assert isinstance(period, Weekly | Once)
    return period


def parse_freeze_spec(spec: str) -> Freeze:
    """A freeze from ``--freeze``: a JSON object, or a window spec or ``MM-DD..MM-DD ZONE``
    (every year, both days included) followed by ``: REASON``.

    Raises:
        PolicyError: the spec is malformed, has no reason, or breaks a rule.
    """
    if spec.lstrip().startswith("{"):
        return Policy.from_json({"windows": [], "freezes": [_spec_json(spec)],
                                 "override": None}).freezes[0]
    period_text, sep, reason = spec.partition(": ")
    if not sep:
        raise _fail(f"freeze {spec[:80]!r}", "needs a reason after ': ' (such as "
                    "'12-20..01-05 UTC: year end')")
    with _within(f"freeze {spec[:80]!r}", path=False):
        return Freeze(_spec_period(period_text, ("weekly", "once", "annual")), reason.strip())


def _spec_json(spec: str) -> object:
    import json

    try:
        return json.loads(spec)
    except ValueError as exc:
        raise _fail(None, f"{spec[:80]!r} is not valid JSON ({exc})") from None
