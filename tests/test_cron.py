"""Cron expressions read the cron way (tiangong.cron): APScheduler 3 numbers the days of
the week from Monday, cron from Sunday; ``0 2 * * 1`` must fire on Mondays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tiangong.cron import cron_trigger

SUNDAY = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)  # a Sunday, 00:00


def _days(expression: str, count: int = 7) -> list[str]:
    """The weekdays of the first ``count`` fire times from :data:`SUNDAY`."""
    trigger = cron_trigger(expression, UTC)
    out, fire = [], trigger.get_next_fire_time(None, SUNDAY)
    while fire is not None and len(out) < count:
        out.append(fire.strftime("%a"))
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return out


@pytest.mark.parametrize(("dow", "days"), [
    ("1", ["Mon"]),
    ("0", ["Sun"]),
    ("7", ["Sun"]),
    ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("0,6", ["Sun", "Sat"]),
    ("*/2", ["Sun", "Tue", "Thu", "Sat"]),
    ("5-7", ["Sun", "Fri", "Sat"]),
    ("mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
    ("*", ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]),
])
def test_the_day_of_week_is_read_the_cron_way(dow: str, days: list[str]) -> None:
    found = _days(f"0 2 * * {dow}", 7)
    assert sorted(set(found)) == sorted(days)


def test_six_fields_have_seconds_first() -> None:
    trigger = cron_trigger("*/15 * * * * *", UTC)
    assert trigger.get_next_fire_time(None, SUNDAY.replace(second=1)).second == 15


@pytest.mark.parametrize(("expression", "words"), [
    ("0 2 * *", "4 fields: give 5"),
    ("0 2 * * 8", "days are 0-7"),
    ("0 2 * * 5-1", "ranges go upwards"),
    ("0 2 * * x-y/2", "a step needs numbers"),
    ("61 * * * *", "61"),
])
def test_a_bad_expression_is_refused(expression: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        cron_trigger(expression, UTC)
