"""Sequences: followed_by and not_followed_by, their timeout, equal times and due instants."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from lang_helpers import Folded, book
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.errors import RulebookError
from tagger.rules.aggregates import MAX_SEQUENCE_TIMES
from tagger.rules.engine import Engine

ABANDONED = "not_followed_by(add_to_cart, purchase, 30m)"
CONVERTED = "followed_by(add_to_cart, purchase, 2d)"
PURCHASE: dict[str, Any] = {"amount": 100, "currency": "CNY"}


def test_not_followed_true_at_timeout() -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0, product_id="p1")

    assert not folded.holds(T0 + 30 * MINUTE - 1)
    assert folded.holds(T0 + 30 * MINUTE)


def test_not_followed_due_at_timeout() -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0, product_id="p1")

    assert folded.due(T0) == T0 + 30 * MINUTE


@pytest.mark.parametrize(
    ("purchase_at", "holds"),
    [
        (T0 - 1, True),
        (T0, False),
        (T0 + 30 * MINUTE - 1, False),
        (T0 + 30 * MINUTE, False),
        (T0 + 40 * MINUTE, False),
    ],
)
def test_not_followed_purchase_times(purchase_at: int, holds: bool) -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0, product_id="p1")
    folded.add("purchase", purchase_at, **PURCHASE)

    assert folded.holds(T0 + 40 * MINUTE) is holds


def test_purchase_after_timeout_clears() -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0, product_id="p1")

    assert folded.holds(T0 + 30 * MINUTE)
    folded.add("purchase", T0 + 31 * MINUTE, **PURCHASE)
    assert not folded.holds(T0 + 31 * MINUTE)


def test_latest_first_event_counts() -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0, product_id="p1")
    folded.add("purchase", T0 + MINUTE, **PURCHASE)
    folded.add("add_to_cart", T0 + 2 * MINUTE, product_id="p2")

    assert not folded.holds(T0 + 32 * MINUTE - 1)
    assert folded.holds(T0 + 32 * MINUTE)


def test_older_first_event_ignored() -> None:
    folded = Folded(book(ABANDONED))
    folded.add("add_to_cart", T0 + 2 * MINUTE, product_id="p2")
    folded.add("purchase", T0 + 3 * MINUTE, **PURCHASE)
    folded.add("add_to_cart", T0, product_id="p1")

    assert not folded.holds(T0 + 60 * MINUTE)


@pytest.mark.parametrize("order", list(itertools.permutations(["cart", "buy", "cart2"])))
def test_equal_times_any_arrival_order(order: tuple[str, ...]) -> None:
    folded = Folded(book(ABANDONED, CONVERTED))
    for name in order:
        if name == "buy":
            folded.add("purchase", T0, **PURCHASE)
        else:
            folded.add("add_to_cart", T0, product_id=name)

    assert not folded.holds(T0 + DAY, rule=0)
    assert folded.holds(T0 + DAY, rule=1)


@pytest.mark.parametrize(
    ("purchase_at", "holds"),
    [
        (None, False),
        (T0 - 1, False),
        (T0, True),
        (T0 + 2 * DAY, True),
        (T0 + 2 * DAY + 1, False),
    ],
)
def test_followed_by_within_timeout(purchase_at: int | None, holds: bool) -> None:
    folded = Folded(book(CONVERTED))
    folded.add("add_to_cart", T0, product_id="p1")
    if purchase_at is not None:
        folded.add("purchase", purchase_at, **PURCHASE)

    assert folded.holds(T0 + 3 * DAY) is holds


def test_followed_by_future_second_event() -> None:
    folded = Folded(book(CONVERTED))
    folded.add("add_to_cart", T0, product_id="p1")
    folded.add("purchase", T0 + DAY, **PURCHASE)
    folded.clock = T0

    assert not folded.holds(T0)
    assert folded.due(T0) == T0 + DAY
    assert folded.holds(T0 + DAY)


def test_filters_on_both_sides() -> None:
    when = (
        'not_followed_by(add_to_cart where category matches "beauty.*", '
        'purchase where category matches "beauty.*", 1h)'
    )
    folded = Folded(book(when))
    folded.add("add_to_cart", T0, product_id="p1", category="beauty.lipstick")
    folded.add("add_to_cart", T0 + 1, product_id="p2", category="books")
    folded.add("purchase", T0 + 2, category="books", **PURCHASE)

    assert folded.holds(T0 + 60 * MINUTE)


def test_late_first_event_finds_later_second() -> None:
    folded = Folded(book(CONVERTED))
    folded.add("purchase", T0 + DAY, **PURCHASE)
    folded.add("add_to_cart", T0, product_id="p1")

    assert folded.holds(T0 + DAY)


def test_second_event_times_capped() -> None:
    folded = Folded(book(CONVERTED))
    folded.add("add_to_cart", T0, product_id="p1")
    for index in range(MAX_SEQUENCE_TIMES + 10):
        folded.add("purchase", T0 + index, **PURCHASE)

    kept = folded.state.totals.sequences["add_to_cart -> purchase"][1]

    assert len(kept) == MAX_SEQUENCE_TIMES
    assert kept[0] == T0


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("not_followed_by(add_to_cart, add_to_cart, 30m)", "two different kinds of event"),
        ("not_followed_by(add_to_cart, purchase)", "takes 3 arguments"),
        ("not_followed_by(add_to_cart, purchase, 30)", "needs a timeout such as 30m"),
        ("not_followed_by(add_to_cart, purchase, 0m)", "longer than 0"),
        ("followed_by(add_to_cart, purchse, 2d)", "did you mean 'purchase'"),
        ("followed_by(add_to_cart, purchase, 2d) >= 1", "cannot compare"),
    ],
)
def test_sequence_errors(when: str, message: str) -> None:
    with pytest.raises(RulebookError, match=message):
        book(when)


def test_sequence_in_boolean_logic() -> None:
    folded = Folded(book(f"{ABANDONED} and not {CONVERTED}"))
    folded.add("add_to_cart", T0, product_id="p1")

    assert folded.holds(T0 + 30 * MINUTE)


def test_engine_fires_at_timeout() -> None:
    customer = Customer(Engine(book(ABANDONED)))
    customer.send("add_to_cart", T0, product_id="p1")

    assert customer.state.due == T0 + 30 * MINUTE
    assert customer.tick(T0 + 30 * MINUTE - 1) == ()
    assert [(change.tag, change.at) for change in customer.tick(T0 + DAY)] == [
        ("r0", T0 + 30 * MINUTE)
    ]
