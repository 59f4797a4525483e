"""Money as integer minor units: exact parsing of decimal strings and JSON numbers."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final

from tagger.errors import InvalidEvent

from .reasons import show_value

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_MINOR_UNITS",
    "MAX_SIGNIFICANT_DIGITS",
    "currency_exponent",
    "format_money",
    "parse_money",
]

# An IEEE 754 double keeps any decimal of up to 15 significant digits exactly through a
# round trip, so a longer number was probably rounded before it reached us.
MAX_SIGNIFICANT_DIGITS: Final = 15

# 100 billion in a currency with 2 decimals: far above any single order, so a larger
# value points to a unit or parsing error upstream. It also keeps money inside 64 bits.
MAX_MINOR_UNITS: Final = 10**13

# Bounds the work spent on one money string. 15 digits, a sign and a point need far less.
MAX_MONEY_STRING_CHARS: Final = 64

# Larger JSON numbers are rejected before any digit counting, whatever the currency.
_MAX_NUMBER_MAGNITUDE: Final = 1e20

_DECIMAL_STRING = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)

_TWO_DECIMALS = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CNY COP CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR
    FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IRR JMD KES
    KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR
    MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB
    SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP
    TRY TTD TWD TZS UAH USD UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL
"""
_NO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"

# ISO 4217 minor units (the "exponent") of the currencies in circulation, from ISO 4217
# list one as mirrored in moneyphp/iso-currencies, plus SLE, VED, XCG and ZWG (all 2),
# which ISO added after that copy. Funds, precious metals and test codes are left out. HRK, SLL,
# CUC and ZWL are withdrawn but kept so that older histories still decode.
# TODO: SLE, VED, XCG and ZWG come from memory, not from a list that was opened; until they
# are checked against the current ISO 4217 list one, their exponent of 2 is unverified.
CURRENCY_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    dict.fromkeys(_TWO_DECIMALS.split(), 2)
    | dict.fromkeys(_NO_DECIMALS.split(), 0)
    | dict.fromkeys(_THREE_DECIMALS.split(), 3)
)


def currency_exponent(code: str) -> int:
    """Return the number of decimals of an ISO 4217 currency: 2 for CNY, 0 for JPY, 3 for KWD.

    Raises InvalidEvent("invalid_field") for a code that is not in `CURRENCY_EXPONENTS`.
    """
    exponent = CURRENCY_EXPONENTS.get(code)
    if exponent is None:
        raise InvalidEvent(
            "invalid_field",
            "currency: expected an ISO 4217 code in upper case such as 'CNY',"
            f" got {show_value(code)}",
        )

    return exponent


def parse_money(value: object, currency: str, *, field: str = "amount") -> int:
    """Convert a decimal string or a JSON number into exact minor units of `currency`.

    A string must look like "1399.80" or "-5": no exponent, no spaces, no thousands
    separator. A float goes through `Decimal(repr(value))`, so 0.1 is exactly ten cents.
    Raises InvalidEvent with reason "amount_precision" when the value has more than 15
    significant digits or more decimals than the currency has, and "invalid_amount" for
    anything else that is not money, or whose size exceeds `MAX_MINOR_UNITS`. The sign
    is kept; callers decide whether zero or a negative value is allowed.
    """
    exponent = currency_exponent(currency)
    text = _decimal_text(value, field)
    match = _DECIMAL_STRING.fullmatch(text)
    if match is None:
        raise InvalidEvent(
            "invalid_amount",
            f"{field}: expected a decimal string such as '1399.80', got {show_value(value)}",
        )

    sign, whole, fraction = match.group(1), match.group(2).lstrip("0"), match.group(3) or ""
    fraction = fraction.rstrip("0")
    significant = len((whole + fraction).strip("0"))
    if significant > MAX_SIGNIFICANT_DIGITS:
        raise InvalidEvent(
            "amount_precision",
            f"{field}: {show_value(value)} has more than {MAX_SIGNIFICANT_DIGITS} significant"
            " digits; send the amount as a decimal string with the currency's decimals",
        )
    if len(fraction) > exponent:
        raise InvalidEvent(
            "amount_precision",
            f"{field}: {show_value(value)} has more than {exponent} decimals, the most {currency}"
            " allows",
        )

    # A whole part this long is far above MAX_MINOR_UNITS, so int() is not even tried.
    if len(whole) > 20:
        raise _too_large(field, value)
    minor = int((whole + fraction.ljust(exponent, "0")) or "0")
    if minor > MAX_MINOR_UNITS:
        raise _too_large(field, value)

    return -minor if sign else minor


def format_money(minor: int, currency: str) -> str:
    """Write minor units as a plain decimal string: 139980 CNY gives "1399.80", 1400 JPY "1400"."""
    exponent = currency_exponent(currency)
    sign = "-" if minor < 0 else ""
    if exponent == 0:
        return f"{sign}{abs(minor)}"

    whole, fraction = divmod(abs(minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def _decimal_text(value: object, field: str) -> str:
    """Return `value` as a plain decimal string, or raise InvalidEvent("invalid_amount")."""
    if isinstance(value, str):
        if len(value) > MAX_MONEY_STRING_CHARS:
            raise InvalidEvent(
                "invalid_amount",
                f"{field}: longer than {MAX_MONEY_STRING_CHARS} characters: {show_value(value)}",
            )
        return value

    # bool is a subclass of int, and true is not an amount.
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= _MAX_NUMBER_MAGNITUDE:
            raise _too_large(field, value)
        return str(value)

    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent("invalid_amount", f"{field}: not a finite number: {value!r}")
        if abs(value) >= _MAX_NUMBER_MAGNITUDE:
            raise _too_large(field, value)
        return format(Decimal(repr(value)), "f")

    raise InvalidEvent(
        "invalid_amount",
        f"{field}: expected a decimal string such as '1399.80' or a JSON number,"
        f" got {show_value(value)}",
    )


def _too_large(field: str, value: object) -> InvalidEvent:
    return InvalidEvent(
        "invalid_amount",
        f"{field}: {show_value(value)} is above the maximum of {MAX_MINOR_UNITS} minor units",
    )
