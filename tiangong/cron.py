"""Cron expressions as people write them, for APScheduler's ``CronTrigger``: scheduled site
jobs (``agent.jobs``) and the hub's own schedules (``hub.services.hub_schedules``).

APScheduler 3's ``CronTrigger.from_crontab`` numbers the days of the week from Monday
(0 = Monday … 6 = Sunday), while cron numbers them from Sunday (0 or 7 = Sunday, 1 =
Monday): ``0 2 * * 1`` would run on Tuesdays. :func:`cron_trigger` reads the day-of-week
field the cron way — numbers, ranges, lists and steps (``1-5``, ``0,6``, ``*/2``) become
day names — and passes names (``mon-fri``) through. One difference from cron remains:
when both day-of-month and day-of-week are restricted, a fire time must match both
(cron runs when either matches).

Five fields (minute hour day-of-month month day-of-week), or six with seconds first.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

__all__ = ["cron_trigger"]

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day_of_week(field: str) -> str:
    """The cron day-of-week ``field`` in APScheduler's terms (day names).

    Raises:
        ValueError: a number outside 0-7, a backwards range or a bad step.
    """
    if field in ("*", "?"):
        return "*"
    out: list[str] = []
    for token in field.split(","):
        base, _, step = token.partition("/")
        if any(c.isalpha() for c in base):
            if step:
                raise ValueError(f"day of week {token!r}: a step needs numbers")
            out.append(base.lower())
            continue
        try:
            if base == "*":
                low, high = 0, 6
            elif "-" in base:
                first, _, last = base.partition("-")
                low, high = int(first), int(last)
            else:
                low = high = int(base)
                if step:
                    high = 6
            every = int(step) if step else 1
        except ValueError:
            raise ValueError(f"day of week {token!r} is not a number, range or list") from None
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high and every >= 1):
            raise ValueError(f"day of week {token!r}: days are 0-7 (0 and 7 are Sunday), "
                             "ranges go upwards, steps are at least 1")
        out.extend(_DAYS[n % 7] for n in range(low, high + 1, every))
    return ",".join(dict.fromkeys(out))


def cron_trigger(expression: str, zone: tzinfo) -> Any:
    """APScheduler's ``CronTrigger`` for ``expression`` in ``zone``.

    Raises:
        ValueError: not 5 or 6 fields, or a field APScheduler or :func:`_day_of_week`
            refuses.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(f"{len(fields)} fields: give 5 (minute hour day-of-month month "
                         "day-of-week) or 6 (seconds first)")
    second, minute, hour, day, month, dow = fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_day_of_week(dow), timezone=zone)
