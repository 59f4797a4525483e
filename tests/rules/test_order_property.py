"""Arrival order leaves a customer's final tags unchanged where the rule language promises it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.rules.engine import Engine
from tagger.rules.rulebook import load_rulebook

RULEBOOK = load_rulebook()

# Event kinds whose effect does not depend on arrival order: cart adds use
# distinct products (an add and a remove of one product apply in arrival
# order), and manual tags are left out for the same reason.
_EVENT = st.one_of(
    st.tuples(
        st.just("page_view"), st.fixed_dictionaries({"category": st.sampled_from(["a", "b"])})
    ),
    st.tuples(
        st.just("purchase"),
        st.fixed_dictionaries({"amount": st.integers(1, 900_000), "currency": st.just("CNY")}),
    ),
    st.tuples(
        st.just("refund"),
        st.fixed_dictionaries({"amount": st.integers(1, 900_000), "currency": st.just("CNY")}),
    ),
    st.tuples(st.just("campaign_join"), st.fixed_dictionaries({"campaign_id": st.just("spring")})),
    st.tuples(st.just("add_to_cart"), st.just({})),
    st.tuples(
        st.just("customer_update"),
        st.fixed_dictionaries(
            {
                "attributes": st.fixed_dictionaries(
                    {"member_level": st.sampled_from(["vip", "gold"])}
                )
            }
        ),
    ),
)
_TIMED_EVENTS = st.lists(
    st.tuples(st.integers(0, 200 * DAY // MINUTE), _EVENT), min_size=1, max_size=20
)


@settings(max_examples=60, deadline=None)
@given(events=_TIMED_EVENTS, order=st.randoms(use_true_random=False))
def test_shuffled_arrival_same_final_tags(
    events: list[tuple[int, tuple[str, dict[str, Any]]]], order: Any
) -> None:
    timed = [
        (T0 + minutes * MINUTE + index, kind, fields)
        for index, (minutes, (kind, fields)) in enumerate(events)
    ]
    final_clock = max(ts for ts, _, _ in timed) + DAY
    shuffled = list(timed)
    order.shuffle(shuffled)

    final_tags = []
    for arrival in (sorted(timed), shuffled):
        customer = Customer(Engine(RULEBOOK))
        for index, (ts, kind, fields) in enumerate(arrival):
            extra = {"product_id": f"p{ts}"} if kind == "add_to_cart" else {}
            customer.send(kind, ts, event_id=f"id{ts}-{index}", **fields, **extra)
        customer.tick(final_clock)
        final_tags.append(customer.tags)

    assert final_tags[0] == final_tags[1]
