"""Conditions evaluated directly: comparison semantics, null, arithmetic and attributes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tagger.rules.evaluate import Context, evaluate
from tagger.rules.expression import ExpressionError, parse_duration, parse_expression
from tagger.rules.state import CustomerState, Scope
from tagger.rules.typecheck import check_condition

TIME = 1_700_000_000_000


def _state(**attributes: str | int | bool | None) -> CustomerState:
    state = CustomerState(customer_id="c1")
    state.attributes = {name: (value, TIME) for name, value in attributes.items()}
    state.totals = Scope(
        series={"purchase": [[TIME - 10, 1], [TIME, 1]], "spend": [[TIME, 1234]]},
        counts={"purchase": 2},
        last={"purchase": TIME},
    )
    return state


def _holds(when: str, state: CustomerState) -> bool:
    checked = check_condition(parse_expression(when), when, per=None)
    value = evaluate(checked, Context(state, state.totals, TIME, "CNY", 2))
    assert isinstance(value, bool)
    return value


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("count(purchase) == 2", True),
        ("count(purchase, 10ms) == 1", True),
        ("count(purchase, 11ms) == 2", True),
        ("count(purchase) + count(refund) - 1 == 1", True),
        ("net_spend(1d) == 12.34", True),
        ("net_spend(1d) > 12.339", True),
        ("net_spend(1d) + 0.66 == 13", True),
        ("since(purchase) == 0ms", True),
        ("since(refund) == null", True),
        ("since(refund) != null", False),
        ("since(refund) >= 0ms", False),
        ("not since(refund) >= 0ms", True),
        ('attribute("level") == "vip"', True),
        ('attribute("level") != "gold"', True),
        ('attribute("points") >= 100', True),
        ('attribute("points") == "100"', False),
        ('attribute("points") != "100"', True),
        ('attribute("opt_in") == true', True),
        ('attribute("opt_in") == 1', False),
        ('attribute("level") > 1', False),
        ('attribute("missing") == "vip"', False),
        ('attribute("missing") != "vip"', False),
        ('attribute("missing") == null', True),
        ("count(purchase) >= 1 and (count(refund) >= 1 or true)", True),
        ("false or not true", False),
    ],
)
def test_condition_value(when: str, expected: bool) -> None:
    state = _state(level="vip", points=100, opt_in=True)

    assert _holds(when, state) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", 1_800_000), ("90d", 7_776_000_000), ("5ms", 5), ("2h", 7_200_000), ("1.5h", None)],
)
def test_parse_duration(text: str, expected: int | None) -> None:
    assert parse_duration(text) == expected


def test_number_literal_is_exact() -> None:
    node = parse_expression("0.1 == 0.10")

    assert node.left.value == Decimal("0.1")  # type: ignore[union-attr]


def test_string_escapes() -> None:
    node = parse_expression(r'attribute("a\"b\\c") == null')

    assert node.left.args[0].value == 'a"b\\c'  # type: ignore[union-attr]


def test_invalid_escape_offset() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(r'attribute("a\nb") == null')

    assert caught.value.offset == 12
