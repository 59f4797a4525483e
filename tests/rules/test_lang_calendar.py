"""Calendar windows: today, this_week and this_month in a time zone, exact across DST changes."""

from __future__ import annotations

from datetime import datetime

import pytest
from lang_helpers import HEADER, Folded, book, rule_yaml
from rule_helpers import Customer

from tagger.errors import RulebookError
from tagger.rules.calendar import period_bounds
from tagger.rules.engine import Engine
from tagger.rules.rulebook import parse_rulebook

HOUR = 3_600_000


def _ms(text: str) -> int:
    """Return epoch ms of an ISO 8601 time with its offset."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# (zone, an instant inside the day, expected start, expected end, hours in the day).
DST_DAYS = [
    (
        "Europe/London",
        "2024-03-31T12:00:00+01:00",
        "2024-03-31T00:00:00+00:00",
        "2024-04-01T00:00:00+01:00",
        23,
    ),
    (
        "Europe/London",
        "2024-10-27T12:00:00+00:00",
        "2024-10-27T00:00:00+01:00",
        "2024-10-28T00:00:00+00:00",
        25,
    ),
    (
        "America/New_York",
        "2024-03-10T12:00:00-04:00",
        "2024-03-10T00:00:00-05:00",
        "2024-03-11T00:00:00-04:00",
        23,
    ),
    (
        "America/New_York",
        "2024-11-03T12:00:00-05:00",
        "2024-11-03T00:00:00-04:00",
        "2024-11-04T00:00:00-05:00",
        25,
    ),
    (
        "Asia/Shanghai",
        "2024-03-31T12:00:00+08:00",
        "2024-03-31T00:00:00+08:00",
        "2024-04-01T00:00:00+08:00",
        24,
    ),
]


@pytest.mark.parametrize(("zone", "inside", "start", "end", "hours"), DST_DAYS)
def test_day_bounds_across_dst(zone: str, inside: str, start: str, end: str, hours: int) -> None:
    bounds = period_bounds("today", _ms(inside), zone)

    assert bounds == (_ms(start), _ms(end))
    assert bounds[1] - bounds[0] == hours * HOUR


@pytest.mark.parametrize(("zone", "inside", "start", "end", "hours"), DST_DAYS)
def test_day_edges_belong_to_their_day(
    zone: str, inside: str, start: str, end: str, hours: int
) -> None:
    del inside, hours

    assert period_bounds("today", _ms(start), zone)[0] == _ms(start)
    assert period_bounds("today", _ms(end) - 1, zone)[1] == _ms(end)
    assert period_bounds("today", _ms(end), zone)[0] == _ms(end)


def test_week_starts_monday() -> None:
    # 2024-03-31 is a Sunday; its ISO week began on Monday 2024-03-25.
    bounds = period_bounds("this_week", _ms("2024-03-31T23:59:59+01:00"), "Europe/London")

    assert bounds == (_ms("2024-03-25T00:00:00+00:00"), _ms("2024-04-01T00:00:00+01:00"))


def test_week_across_fall_back() -> None:
    bounds = period_bounds("this_week", _ms("2024-11-01T12:00:00-04:00"), "America/New_York")

    assert bounds[1] - bounds[0] == 7 * 24 * HOUR + HOUR


@pytest.mark.parametrize(
    ("inside", "start", "end"),
    [
        ("2024-02-29T12:00:00+00:00", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
        ("2024-03-15T12:00:00+00:00", "2024-03-01T00:00:00+00:00", "2024-04-01T00:00:00+01:00"),
        ("2024-12-31T23:59:59+00:00", "2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
    ],
)
def test_month_bounds(inside: str, start: str, end: str) -> None:
    assert period_bounds("this_month", _ms(inside), "Europe/London") == (_ms(start), _ms(end))


def _london_book(when: str) -> Folded:
    return Folded(book(when, header="timezone: Europe/London\n"))


def test_today_count_resets_at_local_midnight() -> None:
    folded = _london_book("count(purchase, today) >= 1")
    folded.add("purchase", _ms("2024-03-31T22:30:00+01:00"), amount=100, currency="CNY")
    midnight = _ms("2024-04-01T00:00:00+01:00")

    assert folded.holds(midnight - 1)
    assert folded.due(midnight - 1) == midnight
    assert not folded.holds(midnight)


def test_today_includes_period_start() -> None:
    folded = _london_book("count(purchase, today) >= 1")
    start = _ms("2024-10-27T00:00:00+01:00")
    folded.add("purchase", start, amount=100, currency="CNY")

    assert folded.holds(_ms("2024-10-27T23:59:59+00:00"))


def test_today_due_on_25_hour_day() -> None:
    folded = _london_book("count(page_view, today) >= 1")
    folded.add("page_view", _ms("2024-10-27T00:30:00+01:00"))

    assert folded.due(_ms("2024-10-27T00:30:00+01:00")) == _ms("2024-10-28T00:00:00+00:00")


def test_this_month_sum() -> None:
    folded = _london_book("sum(purchase.amount, this_month) >= 10.00")
    folded.add("purchase", _ms("2024-03-01T00:00:00+00:00"), amount=600, currency="CNY")
    folded.add("purchase", _ms("2024-03-31T23:59:59+01:00"), amount=400, currency="CNY")
    end = _ms("2024-04-01T00:00:00+01:00")

    assert folded.holds(end - 1)
    assert folded.due(end - 1) == end
    assert not folded.holds(end)


def test_this_week_count_distinct() -> None:
    folded = _london_book("count_distinct(page_view.category, this_week) >= 2")
    folded.add("page_view", _ms("2024-03-25T00:00:00+00:00"), category="a")
    folded.add("page_view", _ms("2024-03-31T23:00:00+01:00"), category="b")
    end = _ms("2024-04-01T00:00:00+01:00")

    assert folded.holds(end - 1)
    assert folded.due(end - 1) == end
    assert not folded.holds(end)


def test_no_due_with_empty_period() -> None:
    folded = _london_book("count(purchase, today) >= 1")
    folded.add("purchase", _ms("2024-03-30T12:00:00+00:00"), amount=100, currency="CNY")

    assert folded.due(_ms("2024-03-31T12:00:00+01:00")) is None


def test_rule_timezone_overrides() -> None:
    rules = "rules:\n" + rule_yaml(
        "r0", "count(purchase, today) >= 1", extra="    timezone: America/New_York\n"
    )
    folded = Folded(parse_rulebook(HEADER + "timezone: Asia/Shanghai\n" + rules, file="t.yaml"))
    folded.add("purchase", _ms("2024-03-10T23:30:00-04:00"), amount=100, currency="CNY")

    assert folded.due(_ms("2024-03-10T23:30:00-04:00")) == _ms("2024-03-11T00:00:00-04:00")


def test_default_timezone_is_utc() -> None:
    rulebook = book("count(purchase, today) >= 1")

    assert rulebook.timezone == "UTC"


@pytest.mark.parametrize(
    ("header", "extra", "message"),
    [
        ("timezone: Europe/Londn\n", "", "did you mean 'Europe/London'"),
        ("timezone: Mars/Olympus\n", "", "expected an IANA time zone"),
        ("", "    timezone: America/New_Yrok\n", "did you mean 'America/New_York'"),
        ("", "    timezone: 5\n", "expected a string"),
    ],
)
def test_timezone_errors(header: str, extra: str, message: str) -> None:
    rules = "rules:\n" + rule_yaml("r0", "count(purchase, today) >= 1", extra=extra)

    with pytest.raises(RulebookError, match=message):
        parse_rulebook(HEADER + header + rules, file="t.yaml")


def test_engine_fires_at_local_midnight() -> None:
    customer = Customer(
        Engine(book("count(purchase, today) >= 1", header="timezone: America/New_York\n"))
    )
    customer.send("purchase", _ms("2024-11-03T23:00:00-05:00"), amount=100, currency="CNY")
    midnight = _ms("2024-11-04T00:00:00-05:00")

    assert customer.state.due == midnight
    assert [(change.tag, change.action, change.at) for change in customer.tick(midnight)] == [
        ("r0", "removed", midnight)
    ]
