"""Event times: RFC 3339 strings with an offset, or integer epoch milliseconds, to epoch ms UTC."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Final

from tagger.errors import InvalidEvent

from .reasons import show_value

__all__ = [
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "TIMESTAMP_PATTERN",
    "format_timestamp",
    "parse_timestamp",
]

# 1990-01-01T00:00:00Z. Older than any e-commerce history worth replaying, and it
# rejects epoch seconds sent where milliseconds are expected (they land in 1970).
MIN_TIMESTAMP_MS: Final = 631_152_000_000

# 2100-01-01T00:00:00Z, exclusive. It rejects epoch microseconds and nanoseconds.
MAX_TIMESTAMP_MS: Final = 4_102_444_800_000

# RFC 3339 date-time with a required offset. The JSON Schema files use this exact
# pattern. Two limits are narrower than RFC 3339 and on purpose: a leap second (:60)
# is rejected, and at most 9 fraction digits (nanoseconds) are accepted.
TIMESTAMP_PATTERN: Final = (
    r"^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\.[0-9]{1,9})?"
    r"([Zz]|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))$"
)

_TIMESTAMP = re.compile(TIMESTAMP_PATTERN, re.ASCII)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(value: object, *, field: str = "ts") -> int:
    """Convert an event time to epoch milliseconds UTC.

    Accepts an RFC 3339 string with an explicit offset ("2019-10-01T08:00:00+08:00",
    "2019-10-01T00:00:00.250Z") or an integer count of epoch milliseconds. A number
    with a zero fraction such as 1.57e12 counts as an integer, as in JSON Schema.
    Fraction digits beyond milliseconds are truncated. Raises InvalidEvent with reason
    "invalid_timestamp" for anything else, and "timestamp_out_of_range" outside
    [`MIN_TIMESTAMP_MS`, `MAX_TIMESTAMP_MS`).
    """
    if isinstance(value, str):
        epoch_ms = _parse_rfc3339(value, field)
    elif isinstance(value, int) and not isinstance(value, bool):
        epoch_ms = value
    elif isinstance(value, float) and value.is_integer():
        epoch_ms = int(value)
    else:
        raise InvalidEvent(
            "invalid_timestamp",
            f"{field}: expected an RFC 3339 string with an offset or integer epoch"
            f" milliseconds, got {show_value(value)}",
        )

    if not MIN_TIMESTAMP_MS <= epoch_ms < MAX_TIMESTAMP_MS:
        hint = " (epoch seconds instead of milliseconds?)" if 0 < epoch_ms < 10**11 else ""
        raise InvalidEvent(
            "timestamp_out_of_range",
            f"{field}: {show_value(value)} is outside 1990-01-01T00:00:00Z to"
            f" 2100-01-01T00:00:00Z{hint}",
        )

    return epoch_ms


def format_timestamp(epoch_ms: int) -> str:
    """Write epoch milliseconds as RFC 3339 in UTC with milliseconds: "2019-10-01T00:00:00.000Z"."""
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_rfc3339(text: str, field: str) -> int:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise InvalidEvent(
            "invalid_timestamp",
            f"{field}: expected RFC 3339 with an offset such as '2019-10-01T08:00:00+08:00'"
            f" or '2019-10-01T00:00:00Z', got {show_value(text)}",
        )

    groups = match.groups()
    year, month, day = int(groups[0]), int(groups[1]), int(groups[2])
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise InvalidEvent(
            "invalid_timestamp", f"{field}: {show_value(text)} is not a calendar date"
        ) from None

    hour, minute, second = int(groups[3]), int(groups[4]), int(groups[5])
    fraction = groups[6]
    millis = int((fraction[1:] + "00")[:3]) if fraction else 0
    offset_minutes = 0
    if groups[8] is not None:
        offset_minutes = int(groups[9]) * 60 + int(groups[10])
        if groups[8] == "-":
            offset_minutes = -offset_minutes

    seconds = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60 + second
    return seconds * 1000 + millis
