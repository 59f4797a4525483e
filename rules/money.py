"""Minor-unit money helpers the engine needs: currency exponents, exact decimals, formatting."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

__all__ = ["currency_exponent", "format_money", "to_decimal"]

# ISO 4217 minor-unit exponents of the currencies a rulebook may declare.
# TODO: switch to tagger.schemas.decode.currency_exponent once it exists, so the
# decoder and the rulebook accept exactly the same currencies; until then a
# code missing here is rejected by the rulebook even if the decoder takes it.
_EXPONENTS: Final[dict[str, int]] = {
    "AUD": 2,
    "BHD": 3,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "INR": 2,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "SGD": 2,
    "TWD": 2,
    "USD": 2,
}


def currency_exponent(code: str) -> int | None:
    """Return the number of decimals of a currency's minor unit, or None for an unknown code."""
    return _EXPONENTS.get(code)


def to_decimal(minor: int, exponent: int) -> Decimal:
    """Return an amount in minor units as an exact Decimal in major units."""
    return Decimal(minor).scaleb(-exponent)


def format_money(minor: int, exponent: int) -> str:
    """Format minor units as a plain decimal string with `exponent` decimals: 512340 → "5123.40"."""
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(exponent + 1, "0")
    if exponent == 0:
        return sign + digits
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"
