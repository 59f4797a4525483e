"""History requirements of a rulebook, and the metrics a new rulebook starts without."""

from __future__ import annotations

from lang_helpers import book
from rule_helpers import DAY

from tagger.rules.history import history_gaps, history_requirements
from tagger.rules.rulebook import Rulebook


def test_requirements_of_default(default_rulebook: Rulebook) -> None:
    requirements = history_requirements(default_rulebook)

    assert requirements == {
        "customer: lifetime purchase": None,
        "customer: window purchase": 180 * DAY,
        "customer: lifetime activity": None,
        "customer: window spend": 180 * DAY,
        "customer: attribute member_level": None,
        "customer: cart": None,
        "per category: window page_view": 7 * DAY,
        "customer: window campaign_join": 30 * DAY,
        "customer: window activity": 30 * DAY,
    }


def test_requirements_of_new_metrics() -> None:
    rulebook = book(
        'count(page_view where category matches "beauty.*", 30d) >= 1',
        "avg(purchase.amount, this_month) >= 1.00",
        "not_followed_by(add_to_cart, purchase, 30m)",
        'last(page_view.category) == "a"',
        "count_distinct(page_view.category, 7d) >= 2",
    )

    assert history_requirements(rulebook) == {
        'customer: window page_view where category matches "beauty.*"': 30 * DAY,
        "customer: window purchase.amount": 32 * DAY,
        "customer: window count purchase.amount": 32 * DAY,
        "customer: sequence add_to_cart -> purchase": None,
        "customer: latest page_view.category": None,
        "customer: distinct page_view.category": 7 * DAY,
    }


def test_new_filter_starts_empty() -> None:
    old = book("count(page_view, 30d) >= 1")
    new = book('count(page_view where category matches "beauty.*", 30d) >= 1')

    assert history_gaps(old, new) == [
        '`count(page_view where category matches "beauty.*", 30d)` starts empty: '
        "it is complete after 30 days of events or a replay"
    ]


def test_longer_window_is_short() -> None:
    old = book("count(purchase, 7d) >= 1")
    new = book("count(purchase, 30d) >= 1")

    assert history_gaps(old, new) == [
        "`count(purchase, 30d)` holds only the last 7 days: "
        "it is complete after 23 days of events or a replay"
    ]


def test_shorter_window_no_gap() -> None:
    assert history_gaps(book("count(purchase, 30d) >= 1"), book("count(purchase, 7d) >= 1")) == []


def test_same_rulebook_no_gap(default_rulebook: Rulebook) -> None:
    assert history_gaps(default_rulebook, default_rulebook) == []


def test_lifetime_needs_replay() -> None:
    old = book("count(purchase, 30d) >= 1")
    new = book("count(purchase) >= 1", "since(refund) >= 1d")

    assert history_gaps(old, new) == [
        "`count(purchase)` starts empty: it is complete only after a replay of each "
        "customer's history",
        "`since(refund)` starts empty: it is complete only after a replay of each "
        "customer's history",
    ]


def test_calendar_gap_names_period() -> None:
    old = book("count(purchase, 7d) >= 1")
    new = book("count(purchase, this_month) >= 1", header="timezone: Asia/Shanghai\n")

    assert history_gaps(old, new) == [
        "`count(purchase, this_month)` holds only the last 7 days: it is complete from "
        "the start of the next month (Asia/Shanghai) or after a replay"
    ]


def test_attribute_gap() -> None:
    new = book('attribute("tier") == "gold"')

    assert history_gaps(book("count(purchase) >= 1"), new) == [
        '`attribute("tier")` starts empty: it is complete after the next customer_update '
        "that sets it, or a replay"
    ]
