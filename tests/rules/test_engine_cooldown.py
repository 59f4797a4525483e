"""Re-entry cooldown: a tag added at t is not added again before t + cooldown."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rule_helpers import DAY, HOUR, T0, Customer

from tagger.errors import RulebookError
from tagger.rules.aggregates import MAX_PER_VALUES
from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook

BUYER = """\
  - id: buyer
    group: test
    labels: {zh: 买家, en: Buyer}
    description: A purchase in the last day; not again within 7 days of being added.
    when: count(purchase, 1d) >= 1
    cooldown: 7d
"""


def _buy(customer: Customer, ts: int) -> None:
    customer.send("purchase", ts, amount=100, currency="CNY")


def _timeline(customer: Customer) -> list[tuple[str, str, int]]:
    return [(change.tag, change.action, change.at) for change in customer.changes]


def test_readd_blocked_during_cooldown(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER)))
    _buy(customer, T0)

    _buy(customer, T0 + 2 * DAY)
    customer.tick(T0 + 30 * DAY)

    assert _timeline(customer) == [("buyer", "added", T0), ("buyer", "removed", T0 + DAY)]


def test_readd_at_cooldown_end(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER)))
    _buy(customer, T0)
    _buy(customer, T0 + 6 * DAY + 12 * HOUR)

    customer.tick(T0 + 30 * DAY)

    assert _timeline(customer)[2] == ("buyer", "added", T0 + 7 * DAY)


def test_cooldown_end_is_due(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER)))
    _buy(customer, T0)

    _buy(customer, T0 + 6 * DAY + 12 * HOUR)

    assert customer.state.due == T0 + 7 * DAY


def test_readd_after_cooldown(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER)))
    _buy(customer, T0)

    _buy(customer, T0 + 8 * DAY)

    assert _timeline(customer)[2] == ("buyer", "added", T0 + 8 * DAY)


def test_without_cooldown_readds_at_once(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER.replace("    cooldown: 7d\n", ""))))
    _buy(customer, T0)

    _buy(customer, T0 + 2 * DAY)

    assert _timeline(customer)[2] == ("buyer", "added", T0 + 2 * DAY)


def test_add_time_forgotten_after_cooldown(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(BUYER)))
    _buy(customer, T0)
    added = dict(customer.state.last_added)

    customer.tick(T0 + 7 * DAY)

    assert added == {"buyer": T0}
    assert customer.state.last_added == {}


def test_cooldown_in_exclusive_group(rulebook_from: Callable[..., Rulebook]) -> None:
    """While the higher rule cools down, the lower rule of the group takes the place."""
    rules = """\
  - id: fresh
    group: tier
    labels: {zh: 新, en: Fresh}
    description: A purchase in the last day, at most once a week.
    when: count(purchase, 1d) >= 1
    cooldown: 7d
  - id: known
    group: tier
    labels: {zh: 老, en: Known}
    description: Bought ever.
    when: count(purchase) >= 1
"""
    customer = Customer(Engine(rulebook_from(rules)))
    _buy(customer, T0)
    _buy(customer, T0 + 6 * DAY + 12 * HOUR)

    customer.tick(T0 + 30 * DAY)

    assert _timeline(customer) == [
        ("fresh", "added", T0),
        ("fresh", "removed", T0 + DAY),
        ("known", "added", T0 + DAY),
        ("known", "removed", T0 + 7 * DAY),
        ("fresh", "added", T0 + 7 * DAY),
        ("fresh", "removed", T0 + 7 * DAY + 12 * HOUR),
        ("known", "added", T0 + 7 * DAY + 12 * HOUR),
    ]


PER_RULE = """\
  - id: fan
    group: test
    labels: {zh: "粉丝：{param}", en: "Fan: {param}"}
    description: A view in the last hour, at most once a day per category.
    per: category
    when: count(page_view, 1h) >= 1
    cooldown: 1d
"""


def test_per_rule_cooldown_per_value(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(PER_RULE)))
    customer.send("page_view", T0, category="shoes")
    customer.send("page_view", T0 + 2 * HOUR, category="shoes")

    customer.send("page_view", T0 + 2 * HOUR + 1, category="hats")

    assert customer.tags == {"fan:hats"}


def test_per_rule_add_times_bounded(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(PER_RULE)))

    for index in range(MAX_PER_VALUES + 10):
        customer.send("page_view", T0 + index, category=f"c{index}")

    assert len(customer.state.last_added) == MAX_PER_VALUES


@pytest.mark.parametrize(("value", "message"), [("0s", "longer than 0"), ("7", "a duration")])
def test_bad_cooldown_rejected(
    rulebook_from: Callable[..., Rulebook], value: str, message: str
) -> None:
    with pytest.raises(RulebookError, match=message) as raised:
        rulebook_from(BUYER.replace("cooldown: 7d", f"cooldown: {value}"))

    assert (raised.value.line, raised.value.column) == (12, 15)
