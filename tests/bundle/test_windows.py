"""Windows and freezes (bundle/windows.py, docs/bundle-format.md §6.9): parsing, strict
validation, wall-clock arithmetic across midnight, the new year and DST, and the policy's
questions (is_open, next_open, frozen_until, hold)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.errors import ManifestError
from bundle.manifest import Manifest
from bundle.windows import (
    LATEST_NOW,
    SEARCH_YEARS,
    Annual,
    Freeze,
    Once,
    Override,
    Policy,
    PolicyError,
    Weekly,
    format_instant,
    parse_freeze_spec,
    parse_window_spec,
)
from signing.strictjson import dumps_canonical
from tests.bundle.kit import release_draft, result_draft
from tests.fixtures.trust import TrustKit

BERLIN = "Europe/Berlin"


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, zone: str = "UTC") -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(zone)).timestamp())


SAT_NIGHT = Weekly(("sat",), "01:00", "05:00", BERLIN)
YEAR_END = Freeze(Annual("12-20", "01-05", "UTC"), "year end")


# -- parsing and validation -------------------------------------------------------------


def test_specs_parse_to_the_json_forms() -> None:
    assert parse_window_spec("sat 01:00-05:00 Europe/Berlin") == SAT_NIGHT
    assert parse_window_spec("mon-fri 22:00-02:00 UTC").days == (
        "mon", "tue", "wed", "thu", "fri")
    assert parse_window_spec("fri-mon 00:00-24:00 UTC").days == ("fri", "sat", "sun", "mon")
    assert parse_window_spec("daily 03:00-04:00 UTC").describe() == "daily 03:00–04:00 UTC"
    assert parse_window_spec("2027-01-02T01:00+01:00/2027-01-02T05:00+01:00") == Once(
        at(2027, 1, 2, 0), at(2027, 1, 2, 4))
    assert parse_window_spec("1800000000/1800014400") == Once(1800000000, 1800014400)
    assert parse_freeze_spec("12-20..01-05 UTC: year end") == YEAR_END
    assert parse_freeze_spec("sat,sun 00:00-24:00 UTC: weekend").period == Weekly(
        ("sat", "sun"), "00:00", "24:00", "UTC")
    as_json = json.dumps({"kind": "once", "start": 5, "end": 9, "reason": "audit"})
    assert parse_freeze_spec(as_json) == Freeze(Once(5, 9), "audit")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sat 01:00-05:00 Mars/Olympus", "timezone: unknown time zone 'Mars/Olympus'"),
        ("sat 01:00-05:00 ../etc/passwd", "is not an IANA time zone name"),
        ("sa 01:00-05:00 UTC", "days[0]: unknown day 'sa'"),
        ("sat,sat 01:00-05:00 UTC", "days: lists a day twice"),
        ("sat 1:00-05:00 UTC", "start: '1:00' is not a time of day HH:MM"),
        ("sat 01:00-25:00 UTC", "end: '25:00' is not a time of day"),
        ("sat 01:60-05:00 UTC", "start: '01:60' is not a time of day"),
        ("sat 24:00-05:00 UTC", "24:00 is only allowed as an end"),
        ("sat 03:00-03:00 UTC", "end: equals start (03:00)"),
        ("1800000000/1800000000", "end: 1800000000 must be later than start"),
        ("2027-01-02T05:00Z/2027-01-02T01:00Z",
         "(2027-01-02T01:00:00Z is not after 2027-01-02T05:00:00Z)"),
        ("2027-01-02T01:00/2027-01-02T05:00", "has no UTC offset"),
        ("tomorrow", "is not one of 'DAYS HH:MM-HH:MM ZONE'"),
        ('{"kind": "annual", "start": "12-20", "end": "01-05", "timezone": "UTC"}',
         "windows[0].kind: 'annual' is not one of weekly, once"),
        ('{"kind": "once", "start": 1, "end": 2, "reason": "x"}',
         "windows[0]: field 'reason' is not allowed"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_windows_are_refused_with_the_rule(spec: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_window_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("12-20..01-05 UTC", "needs a reason after ': '"),
        ("12-20..01-05 UTC:  ", "reason: must be a non-empty string"),
        ("02-30..03-01 UTC: x", "start: '02-30': Feb has no day 30"),
        ("13-01..01-05 UTC: x", "there is no month 13"),
        ("02-29..03-01 UTC: x", "02-29 exists only in leap years"),
        ("12-20..01-05 Europe/Nowhere: x", "unknown time zone 'Europe/Nowhere'"),
        ("12-20..01-05 UTC: line\nbreak", "reason: contains control characters"),
        ('{"kind": "once", "start": 1, "end": 2}', "freezes[0]: field 'reason' is missing"),
    ],
)
def test_bad_freezes_are_refused_with_the_rule(spec: str, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_freeze_spec(spec)


def _policy_doc(**changes: Any) -> dict[str, Any]:
    override = Override("outage", "carol", "dave", 1800000000)
    doc = Policy((SAT_NIGHT,), (YEAR_END,), override).to_json()
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"windows": {}}, "windows: must be a list"),
        ({"extra": 1}, "field 'extra' is not allowed"),
        ({"override": {"reason": "x", "by": "carol", "second": "carol", "at": 5}},
         "override.second: 'carol' cannot second their own override"),
        ({"override": {"reason": "", "by": "carol", "second": "dave", "at": 5}},
         "override.reason: must be a non-empty string"),
        ({"override": {"reason": "x", "by": "carol", "second": "dave", "at": -1}},
         "override.at: must be between 0"),
        ({"windows": [SAT_NIGHT.to_json(), SAT_NIGHT.to_json()]},
         "windows: lists the same entry twice"),
        ({"windows": [{"kind": "once", "start": 0, "end": 1}] * 65}, "over the limit of 64"),
        ({"freezes": [{"kind": "weekly", "days": "sat", "start": "01:00", "end": "02:00",
                       "timezone": "UTC", "reason": "x"}]}, "freezes[0].days: must be a list"),
        ({"windows": [{"kind": "once", "start": True, "end": 2}]},
         "windows[0].start: must be an integer"),
    ],
)
def test_bad_policies_are_refused_with_the_path(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        Policy.from_json(_policy_doc(**changes))


def test_policy_json_round_trip() -> None:
    doc = _policy_doc()
    assert Policy.from_json(doc).to_json() == doc
    assert Policy.from_json(json.loads(json.dumps(doc))) == Policy.from_json(doc)


# -- the manifest field -----------------------------------------------------------------


def test_a_manifest_without_policy_keeps_its_bytes(trust: TrustKit) -> None:
    m = release_draft(trust)
    assert b'"policy"' not in m.to_bytes()
    assert Manifest.from_bytes(m.to_bytes(), 1 << 20).policy is None


def test_a_manifest_carries_its_policy(trust: TrustKit) -> None:
    policy = Policy.from_json(_policy_doc())
    m = release_draft(trust, policy=policy)
    back = Manifest.from_bytes(m.to_bytes(), 1 << 20)
    assert back.policy == policy
    assert back.to_bytes() == m.to_bytes()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "policy: is omitted when there is none, never null"),
        ({"windows": [], "freezes": [], "override": None},
         "policy: is omitted when it has no windows, freezes or override"),
        ({"windows": [{"kind": "weekly", "days": ["sat"], "start": "01:00", "end": "05:00",
                       "timezone": "Atlantis/Capital"}], "freezes": [], "override": None},
         "policy.windows[0].timezone: unknown time zone 'Atlantis/Capital'"),
    ],
)
def test_bad_policy_fields_in_a_manifest_are_refused(trust: TrustKit, value: Any,
                                                     message: str) -> None:
    doc = json.loads(release_draft(trust).to_bytes())
    doc["policy"] = value
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_bytes(dumps_canonical(doc), 1 << 20)


def test_only_release_bundles_have_a_policy(trust: TrustKit) -> None:
    result = result_draft(trust.release_key)
    with pytest.raises(ManifestError, match="only a release bundle has a policy"):
        dataclasses.replace(result, policy=Policy((SAT_NIGHT,)))


# -- wall clock -------------------------------------------------------------------------


def test_weekly_window_opens_and_closes_on_the_minute() -> None:
    p = Policy((SAT_NIGHT,))
    opens = at(2027, 1, 2, 1, 0, BERLIN)  # a Saturday
    assert not p.is_open(opens - 1)
    assert p.is_open(opens)
    assert p.is_open(at(2027, 1, 2, 4, 59, BERLIN))
    assert not p.is_open(at(2027, 1, 2, 5, 0, BERLIN))
    assert p.next_open(at(2026, 12, 28, 12, 0, "UTC")) == opens
    assert p.next_open(opens + 60) == opens + 60


def test_a_window_crossing_midnight_belongs_to_its_start_day() -> None:
    p = Policy((Weekly(("fri",), "22:00", "02:00", "UTC"),))
    assert p.is_open(at(2027, 1, 1, 23, 0))  # Friday night
    assert p.is_open(at(2027, 1, 2, 1, 59))  # Saturday morning, same window
    assert not p.is_open(at(2027, 1, 2, 2, 0))
    assert not p.is_open(at(2027, 1, 1, 1, 0))  # Friday morning: Thursday was not listed
    assert p.next_open(at(2027, 1, 2, 2, 0)) == at(2027, 1, 8, 22, 0)


@pytest.mark.parametrize(
    ("day", "hours"),
    [((2027, 3, 28), 3), ((2027, 10, 31), 5), ((2027, 4, 4), 4)],
    ids=["spring-forward", "fall-back", "ordinary"],
)
def test_a_window_on_the_night_clocks_change_keeps_its_wall_times(
        day: tuple[int, int, int], hours: int) -> None:
    w = Weekly(("sun",), "01:00", "05:00", BERLIN)
    inside = at(*day, 1, 30, BERLIN)
    interval = w.containing(inside)
    assert interval is not None
    assert interval[0] == at(*day, 1, 0, BERLIN)
    assert interval[1] == at(*day, 5, 0, BERLIN)
    assert interval[1] - interval[0] == hours * 3600


def test_a_wall_time_skipped_by_dst_means_the_same_time_after_the_jump() -> None:
    # 2027-03-28 02:00 → 03:00 in Berlin: "02:30" opens at 03:30 CEST (01:30 UTC).
    w = Weekly(("sun",), "02:30", "04:00", BERLIN)
    assert w.next_start(at(2027, 3, 27, 12)) == at(2027, 3, 28, 1, 30, "UTC")
    # And a window that falls in the repeated hour opens at its first occurrence (CEST).
    autumn = Weekly(("sun",), "02:30", "04:00", BERLIN)
    assert autumn.next_start(at(2027, 10, 30, 12)) == at(2027, 10, 31, 0, 30, "UTC")


def test_an_annual_freeze_crosses_the_new_year_and_includes_its_last_day() -> None:
    p = Policy((), (YEAR_END,))
    assert p.is_open(at(2026, 12, 19, 23, 59))
    assert not p.is_open(at(2026, 12, 20))
    assert not p.is_open(at(2027, 1, 1, 12))
    assert not p.is_open(at(2027, 1, 5, 23, 59))
    assert p.is_open(at(2027, 1, 6))
    found = p.frozen_until(at(2026, 12, 31))
    assert found is not None and found == (at(2027, 1, 6), YEAR_END)
    assert p.frozen_until(at(2027, 1, 6)) is None


def test_an_annual_freeze_in_a_time_zone() -> None:
    p = Policy((), (Freeze(Annual("03-31", "03-31", "Asia/Tokyo"), "quarter close"),))
    assert not p.is_open(at(2027, 3, 31, 0, 0, "Asia/Tokyo"))
    assert p.is_open(at(2027, 3, 30, 14, 59, "UTC"))  # 23:59 in Tokyo
    assert p.next_open(at(2027, 3, 31, 12, 0, "Asia/Tokyo")) == at(2027, 4, 1, 0, 0,
                                                                      "Asia/Tokyo")


def test_touching_freezes_are_followed_to_their_common_end() -> None:
    a = Freeze(Once(at(2027, 1, 1), at(2027, 1, 2)), "first")
    b = Freeze(Once(at(2027, 1, 2), at(2027, 1, 3)), "second")
    p = Policy((), (a, b))
    assert p.frozen_until(at(2027, 1, 1, 6)) == (at(2027, 1, 3), b)
    assert p.next_open(at(2027, 1, 1, 6)) == at(2027, 1, 3)


# -- holding: the operator's sentence ---------------------------------------------------


def test_hold_outside_the_window_says_when_it_opens() -> None:
    hold = Policy((SAT_NIGHT,)).hold(at(2026, 12, 28, 12))
    assert hold is not None
    assert hold.kind == "window"
    assert hold.text == "window opens Sat 2027-01-02 01:00 Europe/Berlin"
    assert hold.until == at(2027, 1, 2, 1, 0, BERLIN)


def test_hold_in_a_freeze_says_until_when_and_why_and_when_it_can_run() -> None:
    hold = Policy((SAT_NIGHT,), (YEAR_END,)).hold(at(2026, 12, 24))
    assert hold is not None and hold.kind == "freeze"
    assert hold.text == ("frozen until Wed 2027-01-06 00:00 UTC (year end); it can run from "
                         "Sat 2027-01-09 01:00 Europe/Berlin")
    assert hold.until == at(2027, 1, 9, 1, 0, BERLIN)


def test_hold_when_no_window_opens_again() -> None:
    hold = Policy((Once(100, 200),)).hold(300)
    assert hold is not None and hold.until is None
    assert "no window opens again" in hold.text
    always = Policy((), (Freeze(Weekly(("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
                                       "00:00", "24:00", "UTC"), "never"),))
    hold = always.hold(at(2027, 1, 1))
    assert hold is not None and hold.until is None
    assert hold.kind == "freeze"
    assert hold.text == "frozen (never), with no end in the next 10 years"


def test_open_policy_has_no_hold() -> None:
    assert Policy((SAT_NIGHT,)).hold(at(2027, 1, 2, 2, 0, BERLIN)) is None
    assert Policy().hold(0) is None


def test_format_and_describe() -> None:
    assert format_instant(at(2027, 1, 2, 1, 0, BERLIN), BERLIN) == (
        "Sat 2027-01-02 01:00 Europe/Berlin")
    p = Policy.from_json(_policy_doc())
    assert p.describe() == [
        "window: Sat 01:00–05:00 Europe/Berlin",
        "freeze: every year Dec 20 – Jan 5 UTC (year end)",
        "override: by carol, seconded by dave at Fri 2027-01-15 08:00 UTC: outage",
    ]
    assert Once(at(2027, 1, 2, 1), at(2027, 1, 2, 5)).describe() == (
        "2027-01-02 01:00–05:00 UTC")


# -- properties of next_open ------------------------------------------------------------

_ZONES = st.sampled_from(["UTC", BERLIN, "America/New_York", "Australia/Lord_Howe",
                          "Asia/Kathmandu"])
_HM = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45])).map(
    lambda t: f"{t[0]:02d}:{t[1]:02d}")
_DAYSET = st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
                  min_size=1).map(lambda s: tuple(sorted(s, key="montuewedthufrisatsun".index)))
_WEEKLY_ANY = st.tuples(_DAYSET, _HM, _HM, _ZONES).filter(lambda t: t[1] != t[2]).map(
    lambda t: Weekly(*t))
_NOW = st.integers(at(2024, 1, 1), at(2040, 1, 1))
_ONCE = st.tuples(_NOW, st.integers(60, 40 * 86400)).map(lambda t: Once(t[0], t[0] + t[1]))
_FREEZE = st.one_of(
    st.builds(Freeze, _ONCE, st.just("f")),
    st.builds(Freeze, _WEEKLY_ANY, st.just("w")),
    st.builds(Freeze, st.sampled_from([Annual("12-20", "01-05", "UTC"),
                                       Annual("03-25", "04-02", BERLIN)]), st.just("a")),
)
_POLICY = st.builds(Policy, st.lists(st.one_of(_WEEKLY_ANY, _ONCE), max_size=3, unique=True)
                    .map(tuple),
                    st.lists(_FREEZE, max_size=3, unique=True).map(tuple))


@settings(max_examples=150, deadline=None)
@given(_POLICY, _NOW)
def test_next_open_is_open_and_nothing_earlier_is(policy: Policy, now: int) -> None:
    t = policy.next_open(now)
    if t is None:
        # Never open: no sampled instant in the next weeks is open either.
        assert not any(policy.is_open(now + k * 1800) for k in range(0, 14 * 48))
        return
    assert t >= now
    assert policy.is_open(t)
    assert policy.is_open(now) == (t == now)
    # Nothing before it is open: every half hour and the minute before it.
    for probe in range(now, t, max(60, (t - now) // 500)):
        assert not policy.is_open(probe)
    if t > now:
        assert not policy.is_open(t - 1)


@settings(max_examples=120, deadline=None)
@given(_POLICY, _NOW)
def test_hold_agrees_with_next_open(policy: Policy, now: int) -> None:
    hold = policy.hold(now)
    assert (hold is None) == policy.is_open(now)
    if hold is not None:
        assert hold.until == policy.next_open(now)
        frozen = policy.frozen_until(now)
        assert (hold.kind == "freeze") == (frozen is not None)
        if frozen is not None:
            assert frozen[0] > now
            assert policy.frozen_until(frozen[0] - 1) is not None
            if frozen[0] <= now + SEARCH_YEARS * 366 * 86400:
                assert policy.frozen_until(frozen[0]) is None  # the freezes end there
            else:  # frozen past the search: no time to run is found
                assert hold.until is None


def _exists(local: datetime) -> bool:
    """A wall time that the clock shows (not skipped by a DST jump)."""
    back = datetime.fromtimestamp(local.timestamp(), local.tzinfo)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


@settings(max_examples=120, deadline=None)
@given(_WEEKLY_ANY, _NOW)
def test_weekly_occurrences_start_at_their_wall_time(w: Weekly, now: int) -> None:
    start = w.next_start(now)
    assert start is not None and now < start <= now + 8 * 86400
    zone = ZoneInfo(w.timezone)
    local = datetime.fromtimestamp(start, zone)
    assert local.strftime("%a").lower() in w.days
    wall = local.replace(hour=int(w.start[:2]), minute=int(w.start[3:]), second=0)
    if _exists(wall):
        assert local.strftime("%H:%M") == w.start
    else:  # skipped by the jump: the same time after it
        assert start == int(wall.timestamp())
    interval = w.containing(start)
    assert interval is not None and interval[0] == start
    assert w.containing(start - 1) != interval


@pytest.mark.parametrize("now", [-1, LATEST_NOW + 1, 2**63 - 1, True])
def test_questions_about_a_time_out_of_range_are_refused(now: int) -> None:
    p = Policy((SAT_NIGHT,), (YEAR_END,))
    for ask in (p.is_open, p.next_open, p.frozen_until, p.hold):
        with pytest.raises(PolicyError, match="is outside what windows and freezes are judged"):
            ask(now)  # type: ignore[operator]
    assert p.hold(LATEST_NOW) is not None  # the last instant is still answered
