"""Customer state: encoding round trip, versioning and bounded size."""

from __future__ import annotations

import zlib
from importlib.resources import files

import pytest
import zstandard
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.rules.aggregates import MAX_CART_ITEMS, MAX_PER_VALUES, MAX_SERIES_ENTRIES
from tagger.rules.state import (
    COMPRESS_ABOVE_BYTES,
    STATE_DICTIONARY_FILE,
    STATE_DICTIONARY_ID,
    STATE_VERSION,
    CustomerState,
    decode_state,
    encode_state,
    state_json,
    state_to_json,
)

# Upper bound for one customer's encoded state after a flood of events. The
# scenario below measured 60,045 bytes: 64 tracked categories, each with the
# views of its last 7 days (about 5), beside the customer-wide series
# (3.8 KB). Far below the broker's 1 MiB record limit.
MAX_ENCODED_BYTES = 64 * 1024


def test_round_trip_new_state(customer: Customer) -> None:
    assert decode_state(encode_state(customer.state)) == customer.state


def test_round_trip_busy_state(customer: Customer) -> None:
    customer.send("customer_update", T0, attributes={"member_level": "vip"})
    customer.send("add_to_cart", T0 + 1, product_id="p1")
    for offset in range(3):
        customer.send("page_view", T0 + 2 + offset, category="shoes")
    customer.send("purchase", T0 + 10, amount=100, currency="CNY")
    customer.send("refund", T0 + 11, amount=50, currency="CNY")
    customer.send("tag_assign", T0 + 12, tag="key_account")
    customer.state.mirrored_seq = 3
    customer.state.pseq = 9

    restored = decode_state(encode_state(customer.state))

    assert restored == customer.state


def test_encoded_state_has_version(customer: Customer) -> None:
    assert encode_state(customer.state).startswith(b'{"v":%d' % STATE_VERSION)


def test_large_state_stored_compressed(customer: Customer) -> None:
    for offset in range(40):
        customer.send("page_view", T0 + offset * MINUTE, category=f"cat{offset % 4}")

    encoded = encode_state(customer.state)
    restored = decode_state(encoded)
    frame = zstandard.get_frame_parameters(encoded[1:])

    assert encoded.startswith(b"\x02")
    assert frame.dict_id == STATE_DICTIONARY_ID
    assert len(encoded) < len(state_to_json(customer.state)) / 2
    assert state_json(encoded) == state_to_json(customer.state)
    assert restored == customer.state
    assert encode_state(restored) == encoded


def test_small_state_stays_json() -> None:
    state = CustomerState(customer_id="c1", seq=2, clock=T0, tags={"active": T0})

    encoded = encode_state(state)

    assert len(encoded) <= COMPRESS_ABOVE_BYTES
    assert encoded.startswith(b'{"v":%d' % STATE_VERSION)


def test_deflated_state_still_read(customer: Customer) -> None:
    """Pins the format of earlier workers: states above 960 bytes deflated behind 0x01."""
    for offset in range(40):
        customer.send("page_view", T0 + offset * MINUTE, category=f"cat{offset % 4}")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -11, 4)
    text = state_to_json(customer.state)
    deflated = b"\x01" + deflate.compress(text) + deflate.flush()

    assert decode_state(deflated) == customer.state
    assert state_json(deflated) == text


def test_shipped_dictionary_has_expected_id() -> None:
    raw = (files("tagger.rules") / STATE_DICTIONARY_FILE).read_bytes()

    assert zstandard.ZstdCompressionDict(raw).dict_id() == STATE_DICTIONARY_ID


def test_version_2_state_still_read() -> None:
    state = decode_state(b'{"v":2,"c":"c1","s":3,"t":{"active":1700000000000}}')

    assert (state.seq, state.tags) == (3, {"active": 1_700_000_000_000})


def test_unknown_version_rejected() -> None:
    with pytest.raises(ValueError, match="unknown customer state version 99"):
        decode_state(b'{"v":99,"c":"c1"}')


def test_decoded_state_keeps_working(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.state = decode_state(encode_state(customer.state))

    changes = customer.tick(T0 + 30 * MINUTE)

    assert [change.tag for change in changes] == ["hesitant"]


def test_state_bounded_under_flood(customer: Customer) -> None:
    # 20,000 events over 2,000 categories, one a minute (about two weeks).
    for index in range(20_000):
        kind = "purchase" if index % 50 == 0 else "page_view"
        fields: dict[str, object] = {"category": f"cat{index % 2_000}"}
        if kind == "purchase":
            fields.update(amount=1_000, currency="CNY")
        customer.send(kind, T0 + index * MINUTE, **fields)
        if index % 100 == 0:
            customer.engine.start_batch(customer.state)

    size = len(encode_state(customer.state))

    assert size < MAX_ENCODED_BYTES
    assert len(customer.state.per["category"]) <= MAX_PER_VALUES
    assert all(
        len(entries) <= MAX_SERIES_ENTRIES for entries in customer.state.totals.series.values()
    )


def test_series_merge_keeps_total(customer: Customer) -> None:
    for index in range(MAX_SERIES_ENTRIES + 50):
        customer.send("page_view", T0 + index, product_id="p1")

    activity = customer.state.totals.series["activity"]

    assert len(activity) == MAX_SERIES_ENTRIES
    assert sum(value for _, value in activity) == MAX_SERIES_ENTRIES + 50


def test_cart_bounded(customer: Customer) -> None:
    for index in range(MAX_CART_ITEMS + 20):
        customer.send("add_to_cart", T0 + index, product_id=f"p{index}")

    assert len(customer.state.cart) == MAX_CART_ITEMS


def test_old_entries_pruned(customer: Customer) -> None:
    customer.send("page_view", T0, category="shoes")

    customer.send("page_view", T0 + 31 * DAY, product_id="p1")

    assert customer.state.totals.series["activity"] == [[T0 + 31 * DAY, 1]]
    assert "category" not in customer.state.per


def test_held_category_survives_eviction(customer: Customer) -> None:
    for offset in range(3):
        customer.send("page_view", T0 + offset, category="kept")
    for index in range(MAX_PER_VALUES + 5):
        customer.send("page_view", T0 + 10 + index, category=f"other{index}")

    assert "kept" in customer.state.per["category"]


def test_state_is_plain_dataclass() -> None:
    state = CustomerState(customer_id="c1")

    assert decode_state(encode_state(state)) == state
