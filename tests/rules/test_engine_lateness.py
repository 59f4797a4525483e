"""Allowed lateness: pending events apply in time order; late events follow the late policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rule_helpers import MINUTE, NOW, T0, TOPIC, Customer

from tagger.rules.engine import MAX_PENDING_EVENTS, Engine, Position
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import decode_state, encode_state
from tagger.schemas.events import Event

RULES = """\
  - id: hesitant
    group: test
    labels: {zh: 犹豫, en: Hesitant}
    description: Cart for 30 minutes.
    when: cart_age >= 30m
  - id: viewer
    group: test
    labels: {zh: 浏览, en: Viewer}
    description: Two views in 30 minutes.
    when: count(page_view, 30m) >= 2
  - id: buyer
    group: test
    labels: {zh: 买家, en: Buyer}
    description: Bought once.
    when: count(purchase) >= 1
"""


@pytest.fixture
def late_customer(rulebook_from: Callable[..., Rulebook]) -> Callable[[str], Customer]:
    """A customer under RULES with 10 minutes of allowed lateness and the given late policy."""

    def build(policy: str) -> Customer:
        header = f"allowed_lateness: 10m\nlate_policy: {policy}\n"
        return Customer(Engine(rulebook_from(RULES, header=header)))

    return build


def _event(event_id: str, ts: int, type: str = "page_view", **fields: object) -> Event:
    return Event(event_id=event_id, customer_id="c1", type=type, ts=ts, **fields)  # type: ignore[arg-type]


def _timeline(customer: Customer) -> list[tuple[str, str, int]]:
    return [(change.tag, change.action, change.at) for change in customer.changes]


def test_event_within_lateness_pending(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")

    outcome = customer.send("purchase", T0, amount=100, currency="CNY")

    assert outcome.changes == ()
    assert not outcome.late
    assert [event.event_id for _, event in customer.state.pending] == ["e1"]
    assert customer.state.due == T0


def test_pending_event_applies_at_its_time(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("purchase", T0, amount=100, currency="CNY")

    changes = customer.tick(T0 + 10 * MINUTE)

    assert [(change.tag, change.at) for change in changes] == [("buyer", T0)]
    assert customer.state.pending == []


def test_pending_event_waits_for_watermark(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("purchase", T0, amount=100, currency="CNY")

    changes = customer.tick(T0 + 10 * MINUTE - 1)

    assert changes == ()


def test_arrival_order_within_lateness_ignored(late_customer: Callable[[str], Customer]) -> None:
    """A remove that arrives before its add, both within the lateness, still empties the cart."""
    in_order = late_customer("apply")
    in_order.send("add_to_cart", T0, product_id="p1")
    in_order.send("remove_from_cart", T0 + 2 * MINUTE, product_id="p1")
    in_order.tick(T0 + 2 * 60 * MINUTE)
    swapped = late_customer("apply")
    swapped.send("remove_from_cart", T0 + 2 * MINUTE, product_id="p1")
    swapped.send("add_to_cart", T0, product_id="p1")
    swapped.tick(T0 + 2 * 60 * MINUTE)

    assert _timeline(swapped) == _timeline(in_order)
    assert "hesitant" not in swapped.tags


def test_window_counts_pending_in_order(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("page_view", T0 + 5 * MINUTE, category="a")
    customer.send("page_view", T0, category="a")

    customer.tick(T0 + 60 * MINUTE)

    assert _timeline(customer) == [
        ("viewer", "added", T0 + 5 * MINUTE),
        ("viewer", "removed", T0 + 30 * MINUTE),
    ]


def test_due_fires_before_pending_event(
    late_customer: Callable[[str], Customer],
) -> None:
    customer = late_customer("apply")
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("purchase", T0 + 30 * MINUTE, amount=100, currency="CNY")

    customer.tick(T0 + 60 * MINUTE)

    assert _timeline(customer) == [
        ("hesitant", "added", T0 + 30 * MINUTE),
        ("hesitant", "removed", T0 + 30 * MINUTE),
        ("buyer", "added", T0 + 30 * MINUTE),
    ]


def test_next_event_applies_pending(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("purchase", T0, amount=100, currency="CNY")

    outcome = customer.send("page_view", T0 + 10 * MINUTE, category="a")

    assert [(change.tag, change.at) for change in outcome.changes] == [("buyer", T0)]


def test_event_at_watermark_applies_at_once(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("page_view", T0 + 10 * MINUTE, category="a")

    outcome = customer.send("purchase", T0, amount=100, currency="CNY")

    assert not outcome.late
    assert [(change.tag, change.at) for change in outcome.changes] == [("buyer", T0)]


def test_future_event_pending_at_clock(late_customer: Callable[[str], Customer]) -> None:
    """An event stamped after the clock stays pending until the watermark reaches the clock."""
    customer = late_customer("apply")
    event = _event("e1", T0 + 60 * MINUTE, "purchase", amount=100, currency="CNY")

    customer.engine.apply(customer.state, event, position=None, clock=T0, now=NOW)

    assert [time for time, _ in customer.state.pending] == [T0]


def test_zero_lateness_nothing_pending(customer: Customer) -> None:
    event = _event("e1", T0 + 60 * MINUTE, "purchase", amount=100, currency="CNY")

    outcome = customer.engine.apply(customer.state, event, position=None, clock=T0, now=NOW)

    assert customer.state.pending == []
    assert {change.at for change in outcome.changes} == {T0}


def test_redelivered_pending_event_no_change(
    late_customer: Callable[[str], Customer],
) -> None:
    customer = late_customer("apply")
    engine = customer.engine
    event = _event("e1", T0, "purchase", amount=100, currency="CNY")
    engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)
    before = encode_state(customer.state)

    again = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)

    assert again.duplicate
    assert encode_state(customer.state) == before


def test_pending_event_id_deduplicated(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("purchase", T0, event_id="same", amount=100, currency="CNY")

    outcome = customer.send("purchase", T0 + 1, event_id="same", amount=100, currency="CNY")

    assert outcome.duplicate
    assert len(customer.state.pending) == 1


def test_pending_events_survive_encoding(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("customer_update", T0, attributes={"member_level": "vip", "score": 3})
    customer.send("add_to_cart", T0 + 1, product_id="p1")
    customer.send("purchase", T0 + 2, amount=100, currency="CNY")

    restored = decode_state(encode_state(customer.state))

    assert restored == customer.state
    assert restored.pending == customer.state.pending


def test_pending_cap_applies_earliest(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    for index in range(MAX_PENDING_EVENTS):
        customer.send("page_view", T0 + 10 + index, category="a")

    outcome = customer.send("page_view", T0 + 10 + MAX_PENDING_EVENTS, category="a")

    assert len(customer.state.pending) == MAX_PENDING_EVENTS
    assert customer.state.pending[0][0] == T0 + 11
    assert [(change.tag, change.at) for change in outcome.changes] == []
    assert customer.state.totals.series["page_view"] == [[T0 + 10, 1]]


def test_event_before_overflowed_clock_applies_at_it(
    late_customer: Callable[[str], Customer],
) -> None:
    customer = late_customer("apply")
    for index in range(MAX_PENDING_EVENTS + 1):
        customer.send("page_view", T0 + 10 + index, category="a")

    outcome = customer.send("purchase", T0 + 5, amount=100, currency="CNY")

    assert [(change.tag, change.at) for change in outcome.changes] == [("buyer", T0 + 10)]


def test_late_apply_evaluates_at_watermark(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("apply")
    customer.send("page_view", T0 + 60 * MINUTE, category="a")

    outcome = customer.send("purchase", T0, amount=100, currency="CNY")

    assert outcome.late
    assert outcome.late_policy == "apply"
    assert [(c.tag, c.at, c.source) for c in outcome.changes] == [
        ("buyer", T0 + 50 * MINUTE, "rule")
    ]


def test_late_correction_names_event(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("late_correction")
    customer.send("page_view", T0 + 60 * MINUTE, category="a")

    outcome = customer.send("purchase", T0, event_id="old", amount=100, currency="CNY")

    buyer = outcome.changes[0]
    assert outcome.late_policy == "late_correction"
    assert (buyer.tag, buyer.at, buyer.source) == ("buyer", T0 + 50 * MINUTE, "late_correction")
    assert buyer.reason["late_event"] == {"event_id": "old", "ts": T0}
    assert buyer.reason["rule"] == "buyer"


def test_late_correction_only_for_late_changes(
    late_customer: Callable[[str], Customer],
) -> None:
    customer = late_customer("late_correction")
    customer.send("purchase", T0, amount=100, currency="CNY")

    outcome = customer.send("page_view", T0 + 60 * MINUTE, category="a")

    assert [(change.tag, change.source) for change in outcome.changes] == [("buyer", "rule")]
    assert "late_event" not in outcome.changes[0].reason


def test_late_ignore_changes_nothing(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("ignore")
    customer.send("page_view", T0 + 60 * MINUTE, category="a")
    customer.tick(T0 + 70 * MINUTE)
    before = decode_state(encode_state(customer.state))

    outcome = customer.send("purchase", T0, event_id="old", amount=100, currency="CNY")

    assert outcome.late
    assert outcome.late_policy == "ignore"
    assert outcome.changes == ()
    assert customer.state.totals == before.totals
    assert customer.state.tags == {}


def test_late_ignore_records_position_and_id(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("ignore")
    customer.send("page_view", T0 + 60 * MINUTE, category="a")
    customer.send("purchase", T0, event_id="old", amount=100, currency="CNY")

    again = customer.send("purchase", T0, event_id="old", amount=100, currency="CNY")

    assert customer.state.applied[f"{TOPIC}:0"] == 3
    assert again.duplicate


def test_on_time_event_has_no_policy(late_customer: Callable[[str], Customer]) -> None:
    customer = late_customer("ignore")

    outcome = customer.send("purchase", T0, amount=100, currency="CNY")

    assert outcome.late_policy == ""
