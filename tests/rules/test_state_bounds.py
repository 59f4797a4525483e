"""A customer's state stays bounded under many categories, without losing the top ones."""

from __future__ import annotations

from rule_helpers import MINUTE, T0, Customer

from tagger.rules.aggregates import MAX_PER_VALUES
from tagger.rules.state import encode_state

# Views per category: enough for browsing_interest (3 in 7 days) several times over.
_VIEWS_PER_CATEGORY = 10


def _view_round_robin(customer: Customer, categories: int) -> None:
    for view in range(_VIEWS_PER_CATEGORY * categories):
        customer.send("page_view", T0 + view * MINUTE, category=f"c.c{view % categories:03d}")
        if view % 20 == 0:
            # The worker publishes a customer's outbox at least every 64
            # changes; ties in rank here flip about two tags a view.
            customer.engine.start_batch(customer.state)


def test_tracked_categories_capped(customer: Customer) -> None:
    _view_round_robin(customer, MAX_PER_VALUES + 6)

    assert len(customer.state.per["category"]) <= MAX_PER_VALUES
    assert len(encode_state(customer.state)) < 64 * 1024


def test_round_robin_categories_keep_interest(customer: Customer) -> None:
    _view_round_robin(customer, MAX_PER_VALUES + 6)

    interests = [tag for tag in customer.state.tags if tag.startswith("browsing_interest:")]
    assert len(interests) == 5


def test_categories_within_cap_keep_interest(customer: Customer) -> None:
    _view_round_robin(customer, MAX_PER_VALUES)

    interests = [tag for tag in customer.state.tags if tag.startswith("browsing_interest:")]
    assert len(interests) == 5
