"""State of the field metrics and sequences: encoding, and states written before they existed."""

from __future__ import annotations

from pathlib import Path

from lang_helpers import Folded, book
from rule_helpers import DAY, T0

from tagger.rules.state import Scope, decode_state, encode_state

# A version 1 state written by the engine before count_distinct, last and
# sequences existed: its scopes have none of their keys.
STATE_V1 = Path(__file__).parent / "fixtures" / "state_v1.json"
# A scope as that engine encoded it, with series, counts and last times.
OLD_SCOPE = (
    b'{"v":1,"c":"c1","g":{"s":{"purchase":[1700000000000],"spend":[[1700000000000,12345]]},'
    b'"n":{"purchase":1},"l":{"purchase":1700000000000}}}'
)


def test_old_state_decodes_empty() -> None:
    state = decode_state(STATE_V1.read_bytes())

    assert state.totals.distinct == {}
    assert state.totals.latest == {}
    assert state.totals.sequences == {}


def test_old_scope_keeps_aggregates() -> None:
    state = decode_state(OLD_SCOPE)

    assert state.totals == Scope(
        series={"purchase": [[T0, 1]], "spend": [[T0, 12345]]},
        counts={"purchase": 1},
        last={"purchase": T0},
        newest=T0,
    )


def test_old_state_feeds_new_metrics() -> None:
    folded = Folded(book("count_distinct(purchase.order_id, 30d) >= 1"))
    folded.state = decode_state(OLD_SCOPE)

    folded.add("purchase", T0 + DAY, amount=100, currency="CNY", order_id="o1")

    assert folded.holds(T0 + DAY)


def test_new_aggregates_round_trip() -> None:
    folded = Folded(
        book(
            "count_distinct(page_view.category, 7d) >= 1",
            'last(page_view.category) == "a"',
            "not_followed_by(add_to_cart, purchase, 30m)",
            "min(purchase.amount, 30d) >= 1.00",
        )
    )
    folded.add("page_view", T0, category="a")
    folded.add("add_to_cart", T0 + 1, product_id="p1")
    folded.add("purchase", T0 + 2, amount=100, currency="CNY")

    restored = decode_state(encode_state(folded.state))

    assert restored == folded.state
    assert restored.totals.sequences == {"add_to_cart -> purchase": [T0 + 1, [T0 + 2]]}


def test_plain_state_encodes_without_new_keys() -> None:
    folded = Folded(book("count(purchase, 30d) >= 1"))
    folded.add("purchase", T0, amount=100, currency="CNY")

    encoded = encode_state(folded.state)

    assert b'"dv"' not in encoded
    assert b'"lv"' not in encoded
    assert b'"sq"' not in encoded
