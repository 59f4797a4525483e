"""Filters on event fields: `where` in counts and `since`, its checks and its canonical keys."""

from __future__ import annotations

import pytest
from lang_helpers import HEADER, Folded, book, rule_yaml
from rule_helpers import DAY, T0

from tagger.errors import RulebookError
from tagger.rules.aggregates import make_plan
from tagger.rules.rulebook import parse_rulebook

ELECTRONICS = 'count(page_view where category matches "electronics.*", 7d) >= 1'


@pytest.mark.parametrize(
    ("category", "counted"),
    [
        ("electronics", True),
        ("electronics.smartphone", True),
        ("electronics.audio.headphones", True),
        ("electronicsx", False),
        ("home.electronics", False),
        (None, False),
    ],
)
def test_matches_subtree(category: str | None, counted: bool) -> None:
    folded = Folded(book(ELECTRONICS))

    folded.add("page_view", T0, category=category)

    assert folded.holds(T0) is counted


@pytest.mark.parametrize(
    ("category", "counted"),
    [("electronics", True), ("electronics.smartphone", False)],
)
def test_matches_without_wildcard_is_exact(category: str, counted: bool) -> None:
    folded = Folded(book('count(page_view where category matches "electronics", 7d) >= 1'))

    folded.add("page_view", T0, category=category)

    assert folded.holds(T0) is counted


@pytest.mark.parametrize(
    ("amount", "counted"),
    [(9_999, False), (10_000, True), (49_999, True), (50_000, False)],
)
def test_money_filter_edges(amount: int, counted: bool) -> None:
    folded = Folded(book("count(purchase where amount >= 100.00 and amount < 500.00, 90d) >= 1"))

    folded.add("purchase", T0, amount=amount, currency="CNY")

    assert folded.holds(T0) is counted


def test_money_filter_uses_currency_decimals() -> None:
    header = "currency: JPY\n"
    text = HEADER.replace("currency: CNY\n", header) + "rules:\n"
    rulebook = parse_rulebook(
        text + rule_yaml("r0", "count(purchase where amount >= 100, 30d) >= 1"), file="t.yaml"
    )
    folded = Folded(rulebook)

    folded.add("purchase", T0, amount=100, currency="JPY")

    assert folded.holds(T0)


@pytest.mark.parametrize(
    ("condition", "fields", "counted"),
    [
        ('campaign_id == "spring_sale"', {"campaign_id": "spring_sale"}, True),
        ('campaign_id == "spring_sale"', {"campaign_id": "autumn"}, False),
        ('campaign_id != "spring_sale"', {"campaign_id": "autumn"}, True),
        ("not (campaign_id == null)", {"campaign_id": "autumn"}, True),
    ],
)
def test_string_filters(condition: str, fields: dict[str, str], counted: bool) -> None:
    folded = Folded(book(f"count(campaign_join where {condition}, 30d) >= 1"))

    folded.add("campaign_join", T0, **fields)

    assert folded.holds(T0) is counted


@pytest.mark.parametrize(
    ("condition", "counted"),
    [
        ("quantity >= 2", False),
        ("quantity == null", True),
        ("quantity != null", False),
        ("not quantity >= 2", True),
        ('product_id == "p1" or quantity >= 2', True),
    ],
)
def test_missing_field(condition: str, counted: bool) -> None:
    folded = Folded(book(f"count(add_to_cart where {condition}, 30d) >= 1"))

    folded.add("add_to_cart", T0, product_id="p1")

    assert folded.holds(T0) is counted


def test_filtered_window_edges() -> None:
    folded = Folded(book(ELECTRONICS))
    folded.add("page_view", T0, category="electronics.tv")

    assert folded.holds(T0 + 7 * DAY - 1)
    assert not folded.holds(T0 + 7 * DAY)


def test_filtered_window_due() -> None:
    folded = Folded(book(ELECTRONICS))
    folded.add("page_view", T0, category="electronics.tv")

    assert folded.due(T0) == T0 + 7 * DAY


def test_filtered_since() -> None:
    folded = Folded(book('since(purchase where category matches "beauty.*") >= 30d'))
    folded.add("purchase", T0, amount=100, currency="CNY", category="beauty.lipstick")
    folded.add("purchase", T0 + DAY, amount=100, currency="CNY", category="books")

    assert folded.value('since(purchase where category matches "beauty.*")', T0 + DAY) == DAY
    assert folded.holds(T0 + 30 * DAY)


def test_filtered_lifetime_count() -> None:
    folded = Folded(book('count(page_view where category == "a") >= 2'))
    folded.add("page_view", T0, category="a")
    folded.add("page_view", T0 + 1, category="b")
    folded.add("page_view", T0 + 400 * DAY, category="a")

    assert folded.holds(T0 + 400 * DAY)


def test_activity_filter() -> None:
    folded = Folded(book('count(activity where category matches "toys.*", 30d) >= 2'))
    folded.add("page_view", T0, category="toys.lego")
    folded.add("add_to_cart", T0 + 1, product_id="p1", category="toys.dolls")
    folded.add("campaign_join", T0 + 2, campaign_id="toys")

    assert folded.holds(T0 + 2)


def test_same_filter_one_series() -> None:
    rulebook = book(
        'count(page_view where category matches "a.*"  and price > 1.00, 7d) >= 1',
        'count(page_view where (category matches "a.*") and price>1.00, 30d) >= 3',
    )

    windows = make_plan(rulebook.rules).totals.windows

    assert windows == {'page_view where category matches "a.*" and price > 1.00': 30 * DAY}


def test_filters_and_plain_counts_apart() -> None:
    rulebook = book("count(page_view, 7d) >= 1", 'count(page_view where category == "a", 7d) >= 1')

    windows = make_plan(rulebook.rules).totals.windows

    assert set(windows) == {"page_view", 'page_view where category == "a"'}


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ('count(page_view where categroy == "a", 7d) >= 1', "did you mean 'category'"),
        (
            "count(campaign_join where amount > 1.00, 7d) >= 1",
            "campaign_join events have no amount",
        ),
        ('count(purchase where amount > "1", 7d) >= 1', "amount is an amount of money"),
        ("count(purchase where category > 1, 7d) >= 1", "category is a string"),
        ('count(purchase where category < "a", 7d) >= 1', "compares only with ==, != or matches"),
        ('count(purchase where product_id matches "a.*", 7d) >= 1', "matches applies to category"),
        ('count(page_view where category matches "Electronics", 7d) >= 1', "invalid category"),
        ('count(page_view where category matches "a.*.b", 7d) >= 1', "invalid category"),
        ("count(page_view where price > null, 7d) >= 1", "null compares only with"),
        ("count(page_view where price > count(purchase), 7d) >= 1", "with a literal"),
        ("count(page_view where 1 == price, 7d) >= 1", "an event field"),
        ('count(page_view, 7d) >= 1 where category == "a"', "`where` filters the first"),
        ('count(page_view.category where category == "a", 7d) >= 1', "not the field"),
    ],
)
def test_filter_errors(when: str, message: str) -> None:
    with pytest.raises(RulebookError, match=message):
        book(when)


def test_filter_error_position() -> None:
    when = 'count(page_view where categroy == "a", 7d) >= 1'

    with pytest.raises(RulebookError) as caught:
        book(when)

    # The rule's `when:` is on line 11; its text starts at column 12, after the quote.
    assert caught.value.line == 11
    assert caught.value.column == 12 + when.index("categroy")
