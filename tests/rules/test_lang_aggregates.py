"""Aggregates over event fields: sum, min, max, avg, count_distinct and last, in windows or not."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from lang_helpers import HEADER, Folded, book
from rule_helpers import DAY, T0

from tagger.errors import RulebookError
from tagger.rules.aggregates import MAX_DISTINCT_VALUES
from tagger.rules.rulebook import parse_rulebook


def _purchases(folded: Folded, *amounts: int, step: int = DAY) -> None:
    for index, amount in enumerate(amounts):
        folded.add("purchase", T0 + index * step, amount=amount, currency="CNY")


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("sum(purchase.amount, 30d)", Decimal("60.00")),
        ("sum(purchase.amount, lifetime)", Decimal("60.00")),
        ("sum(purchase.amount)", Decimal("60.00")),
        ("min(purchase.amount, 30d)", Decimal("10.00")),
        ("max(purchase.amount, 30d)", Decimal("30.00")),
        ("min(purchase.amount)", Decimal("10.00")),
        ("max(purchase.amount, lifetime)", Decimal("30.00")),
        ("avg(purchase.amount, 30d)", Fraction(20)),
        ("last(purchase.amount)", Decimal("20.00")),
    ],
)
def test_money_field_values(metric: str, expected: object) -> None:
    nullable = metric.startswith(("min", "max", "avg", "last"))
    folded = Folded(book(f"{metric} != null" if nullable else f"{metric} >= 0"))
    _purchases(folded, 1_000, 3_000, 2_000)

    assert folded.value(metric, T0 + 2 * DAY) == expected


def test_sum_window_edges() -> None:
    folded = Folded(book("sum(purchase.amount, 30d) >= 30.00"))
    _purchases(folded, 1_000, 2_000)

    assert folded.value("sum(purchase.amount, 30d)", T0 + 30 * DAY - 1) == Decimal("30.00")
    assert folded.value("sum(purchase.amount, 30d)", T0 + 30 * DAY) == Decimal("20.00")


def test_sum_money_is_exact() -> None:
    folded = Folded(book("sum(purchase.amount, 30d) == 0.60"))
    _purchases(folded, 10, 20, 30, step=1)

    assert folded.holds(T0 + 2)


def test_sum_with_filter() -> None:
    metric = 'sum(purchase.amount where category matches "beauty.*", 90d)'
    folded = Folded(book(f"{metric} >= 100.00"))
    folded.add("purchase", T0, amount=6_000, currency="CNY", category="beauty.lipstick")
    folded.add("purchase", T0 + 1, amount=9_000, currency="CNY", category="books")
    folded.add("purchase", T0 + 2, amount=5_000, currency="CNY", category="beauty")

    assert folded.value(metric, T0 + 2) == Decimal("110.00")


def test_quantity_sum_is_number() -> None:
    folded = Folded(book("sum(add_to_cart.quantity, 7d) >= 5"))
    folded.add("add_to_cart", T0, product_id="p1", quantity=2)
    folded.add("add_to_cart", T0 + 1, product_id="p2")
    folded.add("add_to_cart", T0 + 2, product_id="p3", quantity=3)

    assert folded.value("sum(add_to_cart.quantity, 7d)", T0 + 2) == 5


def test_avg_counts_only_events_with_field() -> None:
    folded = Folded(book("avg(add_to_cart.quantity, 7d) > 2"))
    folded.add("add_to_cart", T0, product_id="p1", quantity=2)
    folded.add("add_to_cart", T0 + 1, product_id="p2")
    folded.add("add_to_cart", T0 + 2, product_id="p3", quantity=3)

    assert folded.value("avg(add_to_cart.quantity, 7d)", T0 + 2) == Fraction(5, 2)


def test_avg_compares_exactly() -> None:
    folded = Folded(book("avg(purchase.amount, 30d) > 0.33"))
    folded.add("purchase", T0, amount=100, currency="CNY")
    folded.add("purchase", T0 + 1, amount=1, currency="CNY")
    folded.add("purchase", T0 + 2, amount=1, currency="CNY")

    # (1.00 + 0.01 + 0.01) / 3 = 0.34, exactly above 0.33.
    assert folded.holds(T0 + 2)


def test_min_window_leaves() -> None:
    folded = Folded(book("min(purchase.amount, 30d) < 15.00"))
    _purchases(folded, 1_000, 2_000)

    assert folded.holds(T0 + 30 * DAY - 1)
    assert not folded.holds(T0 + 30 * DAY)


@pytest.mark.parametrize(
    "metric", ["min(purchase.amount, 30d)", "avg(purchase.amount, 30d)", "last(purchase.amount)"]
)
def test_empty_is_null(metric: str) -> None:
    folded = Folded(book(f"{metric} == null"))

    assert folded.holds(T0)


def test_empty_sum_is_zero() -> None:
    folded = Folded(book("sum(purchase.amount, 30d) == 0"))

    assert folded.holds(T0)


def test_count_distinct_window() -> None:
    metric = "count_distinct(page_view.category, 7d)"
    folded = Folded(book(f"{metric} >= 2"))
    folded.add("page_view", T0, category="a")
    folded.add("page_view", T0 + DAY, category="b")
    folded.add("page_view", T0 + 2 * DAY, category="a")
    folded.add("page_view", T0 + 2 * DAY + 1)

    assert folded.value(metric, T0 + 2 * DAY) == 2
    assert folded.value(metric, T0 + 8 * DAY - 1) == 2
    assert folded.value(metric, T0 + 8 * DAY) == 1
    assert folded.value(metric, T0 + 9 * DAY) == 0


def test_count_distinct_due() -> None:
    folded = Folded(book("count_distinct(page_view.category, 7d) >= 2"))
    folded.add("page_view", T0, category="a")
    folded.add("page_view", T0 + DAY, category="b")

    assert folded.due(T0 + DAY) == T0 + 7 * DAY


def test_count_distinct_cap() -> None:
    metric = "count_distinct(page_view.product_id, 30d)"
    folded = Folded(book(f"{metric} >= 1"))
    for index in range(MAX_DISTINCT_VALUES + 20):
        folded.add("page_view", T0 + index, product_id=f"p{index}")

    assert folded.value(metric, T0 + MAX_DISTINCT_VALUES + 20) == MAX_DISTINCT_VALUES
    assert "p0" not in folded.state.totals.distinct["page_view.product_id"]


def test_count_distinct_lifetime() -> None:
    metric = "count_distinct(purchase.order_id)"
    folded = Folded(book(f"{metric} >= 2"))
    folded.add("purchase", T0, amount=1, currency="CNY", order_id="o1")
    folded.add("purchase", T0 + 1, amount=1, currency="CNY", order_id="o1")
    folded.add("purchase", T0 + 400 * DAY, amount=1, currency="CNY", order_id="o2")

    assert folded.value(metric, T0 + 400 * DAY) == 2


def test_count_distinct_future_event_enters_later() -> None:
    metric = "count_distinct(page_view.category, 7d)"
    folded = Folded(book(f"{metric} >= 1"))
    folded.add("page_view", T0, category="a")
    folded.clock = T0
    folded.add("page_view", T0 + DAY, category="b")
    folded.clock = T0

    assert folded.value(metric, T0) == 1
    assert folded.due(T0) == T0 + DAY


def test_last_value() -> None:
    folded = Folded(book('last(page_view.category) == "b"'))
    folded.add("page_view", T0, category="a")
    folded.add("page_view", T0 + 2, category="b")
    folded.add("page_view", T0 + 1, category="c")
    folded.add("page_view", T0 + 3)

    assert folded.holds(T0 + 3)


@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_last_equal_time_any_order(order: tuple[str, str]) -> None:
    folded = Folded(book('last(page_view.category) == "y"'))
    for category in order:
        folded.add("page_view", T0, category=category)

    assert folded.holds(T0)


def test_last_with_filter() -> None:
    folded = Folded(book('last(purchase.category where amount >= 100.00) == "tv"'))
    folded.add("purchase", T0, amount=50_000, currency="CNY", category="tv")
    folded.add("purchase", T0 + 1, amount=500, currency="CNY", category="socks")

    assert folded.holds(T0 + 1)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("sum(purchase.category, 30d) >= 1", "needs a numeric field"),
        ("sum(purchase, 30d) >= 1", "needs an event field such as purchase.amount"),
        ("sum(page_view.amount, 30d) >= 1", "page_view events have no amount"),
        ("sum(purchase.amout, 30d) >= 1", "did you mean 'amount'"),
        ("sum(purchase.amount, 30d) >= count(purchase)", "money with a count"),
        ('count_distinct(page_view.category, 7d) == "a"', "cannot compare"),
        ("last(page_view.category) > 1", "compares only with == and !="),
        ('last(page_view.category, 7d) == "a"', "last takes 1 argument"),
        ("count(purchase, 30days) >= 1", "invalid duration"),
        ("count(purchase, lifetim) >= 1", "did you mean 'lifetime'"),
        ("sum(purchase.amount, 0d) >= 1", "longer than 0"),
        ("purchase.amount >= 1", "is an event field, not a metric"),
        ("sum(purchase.amount, 30d) == null", "never null"),
    ],
)
def test_field_metric_errors(when: str, message: str) -> None:
    with pytest.raises(RulebookError, match=message):
        book(when)


def test_nullable_rank_rejected() -> None:
    rules = (
        "rules:\n  - id: top\n    group: test\n    labels: {zh: '{param}', en: '{param}'}\n"
        "    description: A test rule.\n    per: category\n"
        "    when: count(page_view, 7d) >= 1\n    rank_by: max(page_view.price, 7d)\n"
    )
    with pytest.raises(RulebookError, match="rank_by must have a value"):
        parse_rulebook(HEADER + rules, file="t.yaml")
