"""Event times: RFC 3339 with an offset or epoch milliseconds, within 1990 to 2100."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagger.errors import InvalidEvent
from tagger.schemas.timestamps import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    format_timestamp,
    parse_timestamp,
)

OCT_1_2019 = 1_569_888_000_000  # 2019-10-01T00:00:00Z

VALID = [
    ("2019-10-01T00:00:00Z", OCT_1_2019),
    ("2019-10-01t00:00:00z", OCT_1_2019),
    ("2019-10-01T08:00:00+08:00", OCT_1_2019),
    ("2019-09-30T19:00:00-05:00", OCT_1_2019),
    ("2019-10-01T00:00:00+00:00", OCT_1_2019),
    ("2019-10-01T00:00:00-00:00", OCT_1_2019),
    ("2019-10-01T00:00:00.5Z", OCT_1_2019 + 500),
    ("2019-10-01T00:00:00.25Z", OCT_1_2019 + 250),
    ("2019-10-01T00:00:00.123456789Z", OCT_1_2019 + 123),
    ("2019-10-01T00:00:00.999999Z", OCT_1_2019 + 999),
    ("2020-02-29T00:00:00Z", 1_582_934_400_000),
    ("1990-01-01T00:00:00Z", MIN_TIMESTAMP_MS),
    ("2099-12-31T23:59:59.999Z", MAX_TIMESTAMP_MS - 1),
    ("1990-01-01T01:00:00+01:00", MIN_TIMESTAMP_MS),
    (OCT_1_2019, OCT_1_2019),
    (float(OCT_1_2019), OCT_1_2019),
    (MIN_TIMESTAMP_MS, MIN_TIMESTAMP_MS),
    (MAX_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS - 1),
]


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_parse_timestamp_valid(value: object, expected: int) -> None:
    assert parse_timestamp(value) == expected


INVALID = [
    "2019-10-01T00:00:00",
    "2019-10-01 00:00:00Z",
    "2019-10-01 00:00:00 UTC",
    "2019-10-01",
    "2019-10-01T00:00Z",
    "2019-10-01T00:00:00+0800",
    "2019-10-01T00:00:00+08",
    "2019-10-01T00:00:00 Z",
    " 2019-10-01T00:00:00Z",
    "2019-10-01T00:00:00Z\n",
    "2019-10-01T00:00:00.Z",
    "2019-10-01T00:00:00.1234567890Z",
    "2019-10-01T24:00:00Z",
    "2016-12-31T23:59:60Z",
    "2019-13-01T00:00:00Z",
    "2019-02-30T00:00:00Z",
    "2019-02-29T00:00:00Z",
    "2019-04-31T00:00:00Z",
    "2019-10-01T00:00:00+24:00",
    "２０１９-10-01T00:00:00Z",
    "1569888000000",
    "",
    True,
    False,
    None,
    1569888000000.5,
    [OCT_1_2019],
    {"ms": OCT_1_2019},
]


@pytest.mark.parametrize("value", INVALID)
def test_parse_timestamp_invalid(value: object) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_timestamp(value)

    assert caught.value.reason == "invalid_timestamp"


OUT_OF_RANGE = [
    1_569_888_000,
    1_569_888_000_000_000,
    MIN_TIMESTAMP_MS - 1,
    MAX_TIMESTAMP_MS,
    0,
    -1,
    "1989-12-31T23:59:59.999Z",
    "2100-01-01T00:00:00Z",
    "1990-01-01T00:30:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    1e300,
]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_parse_timestamp_out_of_range(value: object) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_timestamp(value)

    assert caught.value.reason == "timestamp_out_of_range"


def test_epoch_seconds_get_a_hint() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_timestamp(1_569_888_000)

    assert "epoch seconds" in caught.value.detail


def test_detail_names_field() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_timestamp("yesterday", field="ts")

    assert caught.value.detail.startswith("ts:")
    assert "'yesterday'" in caught.value.detail


def test_format_timestamp() -> None:
    assert format_timestamp(OCT_1_2019 + 5) == "2019-10-01T00:00:00.005Z"


@given(st.integers(min_value=MIN_TIMESTAMP_MS, max_value=MAX_TIMESTAMP_MS - 1))
def test_format_then_parse_round_trips(epoch_ms: int) -> None:
    assert parse_timestamp(format_timestamp(epoch_ms)) == epoch_ms
