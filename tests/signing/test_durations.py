"""signing.durations: the duration forms operators type and the UTC times they read."""

from __future__ import annotations

import pytest

from signing.durations import MAX_DURATION_SECONDS, format_duration, format_utc, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("90s", 90), ("90m", 5400), ("12h", 43200), ("365d", 31_536_000),
     ("2w", 1_209_600), (" 7d ", 604_800), ("36500d", 36500 * 86400)],
)
def test_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "d", "0d", "07d", "-1d", "1.5d", "1y", "1mo", "1D", "1 d", "1d2h", "365", "٣d",
     "99999999999d", f"{MAX_DURATION_SECONDS + 1}s"],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (3600, "1h"), (90061, "1d 1h"), (31_535_999, "364d 23h"),
     (-120, "-2m")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [(0, "1970-01-01T00:00:00Z"), (1_800_000_000, "2027-01-15T08:00:00Z"),
     (10**20, "@" + str(10**20))],
)
def test_format_utc(timestamp: int, text: str) -> None:
    assert format_utc(timestamp) == text


def test_a_zero_duration_is_refused_as_not_positive() -> None:
    with pytest.raises(ValueError, match="use a positive whole number"):
        parse_duration("0s")
