"""Hysteresis: `leave_when` keeps a held tag until its own condition, also in exclusive groups."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rule_helpers import DAY, T0, Customer

from tagger.errors import RulebookError
from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook

SPENDER = """\
  - id: spender
    group: test
    labels: {zh: 消费, en: Spender}
    description: Enters at 500.00 in 180 days, leaves below 450.00.
    when: net_spend(180d) >= 500.00
    leave_when: net_spend(180d) < 450.00
"""

TIERS = """\
  - id: platinum
    group: tier
    labels: {zh: 铂金, en: Platinum}
    description: At least 5000.00.
    when: net_spend(180d) >= 5000.00
  - id: gold
    group: tier
    labels: {zh: 黄金, en: Gold}
    description: Enters at 1000.00, leaves below 900.00.
    when: net_spend(180d) >= 1000.00
    leave_when: net_spend(180d) < 900.00
  - id: silver
    group: tier
    labels: {zh: 白银, en: Silver}
    description: Above 0.
    when: net_spend(180d) > 0
"""


def _money(customer: Customer, kind: str, ts: int, yuan: int) -> None:
    customer.send(kind, ts, amount=yuan * 100, currency="CNY")


def _changes(customer: Customer) -> list[tuple[str, str]]:
    return [(change.tag, change.action) for change in customer.changes]


def test_tag_stays_between_thresholds(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(SPENDER)))
    _money(customer, "purchase", T0, 500)

    _money(customer, "refund", T0 + 1, 30)

    assert customer.tags == {"spender"}


def test_tag_leaves_on_leave_when(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(SPENDER)))
    _money(customer, "purchase", T0, 500)
    _money(customer, "refund", T0 + 1, 30)

    _money(customer, "refund", T0 + 2, 30)

    assert _changes(customer) == [("spender", "added"), ("spender", "removed")]


def test_tag_enters_only_on_when(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(SPENDER)))

    _money(customer, "purchase", T0, 470)

    assert customer.tags == set()


def test_without_leave_when_leaves_on_not_when(rulebook_from: Callable[..., Rulebook]) -> None:
    rules = SPENDER.replace("    leave_when: net_spend(180d) < 450.00\n", "")
    customer = Customer(Engine(rulebook_from(rules)))
    _money(customer, "purchase", T0, 500)

    _money(customer, "refund", T0 + 1, 30)

    assert customer.tags == set()


def test_both_conditions_true_keeps_tag(rulebook_from: Callable[..., Rulebook]) -> None:
    rules = SPENDER.replace("< 450.00", "< 600.00")
    customer = Customer(Engine(rulebook_from(rules)))

    _money(customer, "purchase", T0, 500)

    assert customer.tags == {"spender"}


def test_leave_when_fires_on_time(rulebook_from: Callable[..., Rulebook]) -> None:
    rules = """\
  - id: regular
    group: test
    labels: {zh: 常客, en: Regular}
    description: Two purchases in 30 days; leaves when none is left in 30 days.
    when: count(purchase, 30d) >= 2
    leave_when: count(purchase, 30d) == 0
"""
    customer = Customer(Engine(rulebook_from(rules)))
    _money(customer, "purchase", T0, 1)
    _money(customer, "purchase", T0 + DAY, 1)

    customer.tick(T0 + 100 * DAY)

    assert [(c.tag, c.action, c.at) for c in customer.changes] == [
        ("regular", "added", T0 + DAY),
        ("regular", "removed", T0 + 31 * DAY),
    ]


def test_reasons_name_deciding_condition(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(SPENDER)))
    _money(customer, "purchase", T0, 500)
    _money(customer, "refund", T0 + 1, 60)

    added, removed = customer.changes

    assert added.reason == {
        "rule": "spender",
        "when": "net_spend(180d) >= 500.00",
        "leave_when": "net_spend(180d) < 450.00",
        "decided_by": "when",
        "values": {"net_spend(180d)": "500.00"},
    }
    assert removed.reason["decided_by"] == "leave_when"
    assert removed.reason["values"] == {"net_spend(180d)": "440.00"}


def test_held_tag_keeps_group_place(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(TIERS)))
    _money(customer, "purchase", T0, 1000)

    _money(customer, "refund", T0 + 1, 60)

    assert customer.tags == {"gold"}


def test_lower_rule_takes_place_after_leave(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(TIERS)))
    _money(customer, "purchase", T0, 1000)

    _money(customer, "refund", T0 + 1, 200)

    assert _changes(customer) == [("gold", "added"), ("gold", "removed"), ("silver", "added")]
    assert customer.changes[1].reason["decided_by"] == "leave_when"


def test_higher_rule_replaces_held_tag(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = Customer(Engine(rulebook_from(TIERS)))
    _money(customer, "purchase", T0, 1000)

    _money(customer, "purchase", T0 + 1, 4000)

    removed = customer.changes[1]
    assert _changes(customer) == [("gold", "added"), ("gold", "removed"), ("platinum", "added")]
    assert removed.reason["decided_by"] == "group"
    assert removed.reason["replaced_by"] == "platinum"


def test_lower_held_tag_gives_way(rulebook_from: Callable[..., Rulebook]) -> None:
    """A lower rule's hysteresis does not keep a higher rule that now matches out."""
    rules = TIERS.replace(
        "    when: net_spend(180d) > 0\n",
        "    when: net_spend(180d) > 0\n    leave_when: net_spend(180d) == 0\n",
    )
    customer = Customer(Engine(rulebook_from(rules)))
    _money(customer, "purchase", T0, 100)

    _money(customer, "purchase", T0 + 1, 900)

    assert customer.tags == {"gold"}


def test_per_rule_value_stays(rulebook_from: Callable[..., Rulebook]) -> None:
    rules = """\
  - id: fan
    group: test
    labels: {zh: "粉丝：{param}", en: "Fan: {param}"}
    description: Three views in 7 days; leaves when none is left.
    per: category
    when: count(page_view, 7d) >= 3
    leave_when: count(page_view, 7d) == 0
"""
    customer = Customer(Engine(rulebook_from(rules)))
    for offset in range(3):
        customer.send("page_view", T0 + offset * DAY, category="shoes")

    customer.tick(T0 + 8 * DAY)
    held = set(customer.tags)
    customer.tick(T0 + 10 * DAY)

    assert held == {"fan:shoes"}
    assert [(c.action, c.at) for c in customer.changes] == [
        ("added", T0 + 2 * DAY),
        ("removed", T0 + 9 * DAY),
    ]


def test_per_rule_limit_counts_staying_values(rulebook_from: Callable[..., Rulebook]) -> None:
    rules = """\
  - id: fan
    group: test
    labels: {zh: "粉丝：{param}", en: "Fan: {param}"}
    description: Two views in 7 days; one category; leaves when none is left.
    per: category
    when: count(page_view, 7d) >= 2
    leave_when: count(page_view, 7d) == 0
    rank_by: count(page_view, 7d)
    limit: 1
"""
    customer = Customer(Engine(rulebook_from(rules)))
    for offset in range(3):
        customer.send("page_view", T0 + offset, category="shoes")
    customer.send("page_view", T0 + 6 * DAY, category="hats")

    customer.send("page_view", T0 + 7 * DAY + 1, category="hats")

    removed = customer.changes[1]
    assert [(c.tag, c.action) for c in customer.changes] == [
        ("fan:shoes", "added"),
        ("fan:shoes", "removed"),
        ("fan:hats", "added"),
    ]
    assert removed.reason["decided_by"] == "limit"


@pytest.mark.parametrize(
    ("extra", "message", "column"),
    [
        ("    leave_when: net_spend(180d)\n", "must be true or false", 17),
        ("    leave_when: coutn(purchase) == 0\n", "did you mean 'count'", 17),
        ("    leave_wen: count(purchase) == 0\n", "did you mean 'leave_when'", 5),
    ],
)
def test_bad_leave_when_rejected(
    rulebook_from: Callable[..., Rulebook], extra: str, message: str, column: int
) -> None:
    rule = SPENDER.replace("    leave_when: net_spend(180d) < 450.00\n", extra)

    with pytest.raises(RulebookError, match=message) as raised:
        rulebook_from(rule)

    assert raised.value.line == 12
    assert raised.value.column == column
