"""Fuzzing the decoder: no input makes it raise anything but InvalidEvent."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tagger.errors import InvalidEvent
from tagger.schemas.decode import decode_event
from tagger.schemas.events import EVENT_TYPES, ClockMessage, Event

FIELDS = (
    "event_id",
    "customer_id",
    "ts",
    "product_id",
    "category",
    "price",
    "quantity",
    "order_id",
    "amount",
    "currency",
    "campaign_id",
    "attributes",
    "tag",
    "operator",
)

BASE = {"event_id": "e-1", "customer_id": "c-1", "ts": "2019-10-01T00:00:00Z"}
VALID_RECORDS = [
    {**BASE, "type": "page_view", "category": "electronics.smartphone", "price": "1081.98"},
    {**BASE, "type": "add_to_cart", "product_id": "p-1", "quantity": 2},
    {**BASE, "type": "purchase", "amount": "1399.80", "currency": "CNY", "price": 5},
    {**BASE, "type": "refund", "amount": 10, "currency": "CNY"},
    {**BASE, "type": "campaign_join", "campaign_id": "double11"},
    {**BASE, "type": "customer_update", "attributes": {"member_level": "vip"}},
    {**BASE, "type": "tag_assign", "tag": "key_account", "operator": "alice"},
    {**BASE, "type": "page_view", "customer_id": "顾客-ä", "event_id": "事件-1"},
    {"type": "clock", "ts": 1_569_888_000_000},
]
VALID_PAGE_VIEW = orjson.dumps(VALID_RECORDS[0])

# orjson cannot write lone surrogates, so generated text leaves them out.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
# Values close to valid ones reach the checks behind the first field.
near_valid = st.sampled_from(
    [
        "2019-10-01T00:00:00Z",
        "2019-10-01T00:00:00+08:00",
        1_569_888_000_000,
        "1399.80",
        "CNY",
        "USD",
        "electronics.smartphone",
        "c-1",
        "key_account",
        {"member_level": "vip"},
        "顾客1",
        "c-\u00e4",
        0,
        -1,
        1e300,
        "",
    ]
)
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*EVENT_TYPES, "clock", "bogus"]) | json_values},
    optional={field: near_valid | json_values for field in FIELDS},
)
# A valid record with some fields replaced, so that every later check is reached too.
mutated_records = st.builds(
    lambda record, changes: {**record, **changes},
    st.sampled_from(VALID_RECORDS),
    st.dictionaries(st.sampled_from(FIELDS), near_valid | json_values, min_size=1, max_size=3),
)
keys = st.none() | st.binary(max_size=8) | st.just(b"c-1")


def decode_or_reject(raw: bytes | None, key: bytes | None) -> None:
    try:
        result = decode_event(raw, key=key, currency="CNY")
    except InvalidEvent:
        return
    assert isinstance(result, Event | ClockMessage)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), key=keys)
def test_random_bytes(raw: bytes, key: bytes | None) -> None:
    decode_or_reject(raw, key)


@settings(max_examples=200, deadline=None)
@given(value=json_values, key=keys)
def test_random_json(value: Any, key: bytes | None) -> None:
    decode_or_reject(orjson.dumps(value), key)


@settings(max_examples=150, deadline=None)
@given(record=event_like, key=keys)
def test_random_event_objects(record: dict[str, Any], key: bytes | None) -> None:
    decode_or_reject(orjson.dumps(record), key)


@settings(max_examples=200, deadline=None)
@given(record=mutated_records, key=keys)
def test_mutated_valid_records(record: dict[str, Any], key: bytes | None) -> None:
    decode_or_reject(orjson.dumps(record), key)


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(VALID_PAGE_VIEW) - 1), byte=st.integers(0, 255)
)
def test_corrupted_byte(position: int, byte: int) -> None:
    raw = VALID_PAGE_VIEW[:position] + bytes([byte]) + VALID_PAGE_VIEW[position + 1 :]

    decode_or_reject(raw, None)


@settings(max_examples=100, deadline=None)
@given(length=st.integers(min_value=0, max_value=len(VALID_PAGE_VIEW)))
def test_truncated_record(length: int) -> None:
    decode_or_reject(VALID_PAGE_VIEW[:length], b"c-1")
