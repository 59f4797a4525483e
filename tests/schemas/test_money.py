"""Money parsing into integer minor units, ISO 4217 exponents and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagger.errors import InvalidEvent
from tagger.schemas.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    currency_exponent,
    format_money,
    parse_money,
)

VALID = [
    ("1399.80", "CNY", 139980),
    ("1399.8", "CNY", 139980),
    ("0.05", "USD", 5),
    ("0", "USD", 0),
    ("007.50", "EUR", 750),
    ("-12.50", "USD", -1250),
    ("100.00", "JPY", 100),
    ("1500", "JPY", 1500),
    ("1.234", "BHD", 1234),
    ("1.5", "KWD", 1500),
    ("99999999999.99", "USD", 9_999_999_999_999),
    ("9999999999999", "JPY", 9_999_999_999_999),
    ("100000000000.00", "USD", MAX_MINOR_UNITS),
    (0.1, "USD", 10),
    (1399.8, "CNY", 139980),
    (1e3, "USD", 100000),
    (2.50, "GBP", 250),
    (-0.0, "USD", 0),
    (42, "USD", 4200),
    (42, "JPY", 42),
    (0, "CNY", 0),
]


@pytest.mark.parametrize(("value", "currency", "expected"), VALID)
def test_parse_money_valid(value: object, currency: str, expected: int) -> None:
    assert parse_money(value, currency) == expected


INVALID = [
    ("1,399.80", "USD", "invalid_amount"),
    ("abc", "USD", "invalid_amount"),
    ("", "USD", "invalid_amount"),
    ("1e3", "USD", "invalid_amount"),
    ("NaN", "USD", "invalid_amount"),
    ("Infinity", "USD", "invalid_amount"),
    (" 12", "USD", "invalid_amount"),
    ("12 ", "USD", "invalid_amount"),
    ("+5", "USD", "invalid_amount"),
    (".5", "USD", "invalid_amount"),
    ("5.", "USD", "invalid_amount"),
    ("1_000", "USD", "invalid_amount"),
    ("١٢", "USD", "invalid_amount"),
    ("1" * 65, "USD", "invalid_amount"),
    (True, "USD", "invalid_amount"),
    (None, "USD", "invalid_amount"),
    ([1], "USD", "invalid_amount"),
    ({"value": 1}, "USD", "invalid_amount"),
    (float("nan"), "USD", "invalid_amount"),
    (float("inf"), "USD", "invalid_amount"),
    (1e20, "USD", "invalid_amount"),
    (10**30, "USD", "invalid_amount"),
    (1e15, "USD", "invalid_amount"),
    ("100000000000.01", "USD", "invalid_amount"),
    ("1" + "0" * 40, "USD", "invalid_amount"),
    (12345678901234567890, "USD", "amount_precision"),
    ("12345678901234567890", "USD", "amount_precision"),
    (123456789012345678901234.0, "USD", "invalid_amount"),
    ("1234567890.123456", "BHD", "amount_precision"),
    (0.123, "USD", "amount_precision"),
    ("0.123", "USD", "amount_precision"),
    (0.1 + 0.2, "USD", "amount_precision"),
    ("1.5", "JPY", "amount_precision"),
    (1.5, "KRW", "amount_precision"),
    ("1.2345", "KWD", "amount_precision"),
    (1e-300, "USD", "amount_precision"),
    ("10.00", "XYZ", "invalid_field"),
    ("10.00", "usd", "invalid_field"),
]


@pytest.mark.parametrize(("value", "currency", "reason"), INVALID)
def test_parse_money_invalid(value: object, currency: str, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_money(value, currency, field="price")

    assert caught.value.reason == reason


def test_parse_money_detail_names_field() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_money("1,399.80", "USD", field="price")

    assert caught.value.detail.startswith("price:")
    assert "'1,399.80'" in caught.value.detail


def test_decimal_strings_sum_exactly() -> None:
    total = sum(parse_money(text, "USD") for text in ("0.10", "0.20", "0.30"))

    assert total == 60


def test_floats_sum_exactly() -> None:
    total = sum(parse_money(number, "USD") for number in (0.1, 0.2, 0.3))

    assert total == 60


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("CNY", 2),
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("HKD", 2),
        ("TWD", 2),
        ("SGD", 2),
        ("AUD", 2),
        ("CAD", 2),
        ("CHF", 2),
        ("INR", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("VND", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("TND", 3),
    ],
)
def test_currency_exponent(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["XYZ", "cny", "", "CNY ", "XAU", "XXX"])
def test_currency_exponent_unknown(code: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        currency_exponent(code)

    assert caught.value.reason == "invalid_field"


def test_currency_codes_are_iso_shaped() -> None:
    malformed = [code for code in CURRENCY_EXPONENTS if not (code.isalpha() and code.isupper())]

    assert malformed == []
    assert all(len(code) == 3 for code in CURRENCY_EXPONENTS)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (139980, "CNY", "1399.80"),
        (5, "USD", "0.05"),
        (0, "USD", "0.00"),
        (-150, "USD", "-1.50"),
        (1400, "JPY", "1400"),
        (1500, "BHD", "1.500"),
        (MAX_MINOR_UNITS, "USD", "100000000000.00"),
    ],
)
def test_format_money(minor: int, currency: str, text: str) -> None:
    assert format_money(minor, currency) == text


@given(
    minor=st.integers(min_value=-MAX_MINOR_UNITS, max_value=MAX_MINOR_UNITS),
    currency=st.sampled_from(["USD", "JPY", "KWD", "CNY"]),
)
def test_format_then_parse_round_trips(minor: int, currency: str) -> None:
    assert parse_money(format_money(minor, currency), currency) == minor
