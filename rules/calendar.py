"""Calendar windows: the UTC bounds of today, this week and this month in an IANA time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tagger.rules.expression import CalendarPeriod

__all__ = [
    "CALENDAR_PERIODS",
    "DEFAULT_TIMEZONE",
    "MAX_PERIOD_MS",
    "is_timezone",
    "period_bounds",
]

CALENDAR_PERIODS: Final[tuple[CalendarPeriod, ...]] = ("today", "this_week", "this_month")
DEFAULT_TIMEZONE: Final = "UTC"
_DAY_MS: Final = 86_400_000
# The longest span each period can have, in ms: how long a series read by a
# calendar window keeps its entries. A zone can move its clocks by a whole
# day (Pacific/Apia skipped 2011-12-30), so each bound has a day to spare.
MAX_PERIOD_MS: Final[dict[CalendarPeriod, int]] = {
    "today": 2 * _DAY_MS,
    "this_week": 8 * _DAY_MS,
    "this_month": 32 * _DAY_MS,
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def is_timezone(name: str) -> bool:
    """Return whether `name` is an IANA time zone name that zoneinfo can load."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def period_bounds(period: CalendarPeriod, time: int, timezone: str) -> tuple[int, int]:
    """Return the half-open [start, end) in epoch ms of the period of `timezone` holding `time`.

    Days start at local midnight, or at the first instant after it when a
    clock change skips midnight. Weeks are ISO weeks, from Monday. Every
    bound comes from zoneinfo, so a day across a DST change lasts 23 or 25
    hours.
    """
    zone = ZoneInfo(timezone)
    today = (_EPOCH + time * _MS).astimezone(zone).date()
    if period == "today":
        first = today
        following = today + timedelta(days=1)
    elif period == "this_week":
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return _start_of(first, zone), _start_of(following, zone)


def _start_of(day: date, zone: ZoneInfo) -> int:
    # fold=0 resolves a skipped local midnight with the offset in force before
    # the change, which gives the instant of the change itself, and a repeated
    # midnight to its first occurrence.
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    return (local - _EPOCH) // _MS
