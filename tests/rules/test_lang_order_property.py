"""Arrival order leaves the new metrics' final values unchanged, below their caps."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from lang_helpers import Folded, book
from rule_helpers import DAY, MINUTE, T0

METRICS = (
    'count(page_view where category matches "a.*", 7d)',
    "sum(purchase.amount where amount >= 5.00, 30d)",
    "min(purchase.amount, 30d)",
    "max(purchase.amount, this_week)",
    "avg(purchase.amount, 30d)",
    "count_distinct(page_view.category, 7d)",
    "last(page_view.category)",
    "followed_by(add_to_cart, purchase, 1h)",
    "not_followed_by(add_to_cart, purchase, 30m)",
    'since(purchase where category == "a.x")',
)
# Each metric in a rule, so that the state keeps what it reads.
RULEBOOK = book(
    'count(page_view where category matches "a.*", 7d) >= 1',
    "sum(purchase.amount where amount >= 5.00, 30d) >= 1.00",
    "min(purchase.amount, 30d) != null",
    "max(purchase.amount, this_week) != null",
    "avg(purchase.amount, 30d) != null",
    "count_distinct(page_view.category, 7d) >= 1",
    "last(page_view.category) != null",
    "followed_by(add_to_cart, purchase, 1h)",
    "not_followed_by(add_to_cart, purchase, 30m)",
    'since(purchase where category == "a.x") >= 1d',
    header="timezone: Europe/London\n",
)
_CATEGORY = st.sampled_from(["a", "a.x", "a.y", "b"])
_EVENT = st.one_of(
    st.tuples(st.just("page_view"), st.fixed_dictionaries({"category": _CATEGORY})),
    st.tuples(
        st.just("purchase"),
        st.fixed_dictionaries(
            {"amount": st.integers(1, 5_000), "currency": st.just("CNY"), "category": _CATEGORY}
        ),
    ),
    st.tuples(st.just("add_to_cart"), st.fixed_dictionaries({"product_id": st.just("p1")})),
)
# Minutes over 40 days, coarse enough that equal times happen often.
_TIMED_EVENTS = st.lists(
    st.tuples(st.integers(0, 40 * DAY // MINUTE // 30), _EVENT), min_size=1, max_size=12
)


@settings(max_examples=80, deadline=None)
@given(events=_TIMED_EVENTS, order=st.randoms(use_true_random=False))
def test_shuffled_arrival_same_values(
    events: list[tuple[int, tuple[str, dict[str, Any]]]], order: Any
) -> None:
    timed = [(T0 + slot * 30 * MINUTE, kind, fields) for slot, (kind, fields) in events]
    final = max(ts for ts, _, _ in timed) + 10 * MINUTE
    shuffled = list(timed)
    order.shuffle(shuffled)

    results = []
    for arrival in (sorted(timed, key=lambda event: event[0]), shuffled):
        folded = Folded(RULEBOOK)
        for ts, kind, fields in arrival:
            folded.add(kind, ts, **fields)
        results.append([folded.value(metric, final) for metric in METRICS])

    assert results[0] == results[1]
