"""Decoding and validating input records into events, and encoding them back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tagger.errors import InvalidEvent
from tagger.schemas.decode import MAX_EVENT_BYTES, REASONS, KeyMismatch, decode_event, encode_event
from tagger.schemas.events import ClockMessage, Event

OCT_1_2019 = 1_569_888_000_000  # 2019-10-01T00:00:00Z

BASE = {"event_id": "e-1", "customer_id": "c-42", "ts": "2019-10-01T00:00:00Z"}

SAMPLES: dict[str, dict[str, Any]] = {
    "page_view": {
        **BASE,
        "type": "page_view",
        "product_id": "1004237",
        "category": "electronics.smartphone",
        "price": "1081.98",
    },
    "add_to_cart": {
        **BASE,
        "type": "add_to_cart",
        "product_id": "p-1",
        "price": 9.9,
        "quantity": 2,
    },
    "remove_from_cart": {**BASE, "type": "remove_from_cart", "product_id": "p-1"},
    "purchase": {
        **BASE,
        "type": "purchase",
        "order_id": "o-1",
        "amount": "1399.80",
        "currency": "CNY",
    },
    "refund": {**BASE, "type": "refund", "order_id": "o-1", "amount": 100, "currency": "CNY"},
    "campaign_join": {**BASE, "type": "campaign_join", "campaign_id": "double11"},
    "customer_update": {
        **BASE,
        "type": "customer_update",
        "attributes": {"member_level": "vip", "points": 1200, "opted_in": True, "city": None},
    },
    "tag_assign": {**BASE, "type": "tag_assign", "tag": "key_account", "operator": "alice"},
    "tag_unassign": {**BASE, "type": "tag_unassign", "tag": "key_account"},
}


def decode(record: object, *, key: bytes | None = None, currency: str = "CNY") -> Any:
    return decode_event(orjson.dumps(record), key=key, currency=currency)


def reason_of(record: object, *, key: bytes | None = None, currency: str = "CNY") -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode(record, key=key, currency=currency)
    return caught.value.reason


def with_fields(event_type: str, **changes: Any) -> dict[str, Any]:
    """Return the sample of `event_type` with fields replaced. A value of ... removes the field."""
    record = dict(SAMPLES[event_type])
    for field, value in changes.items():
        if value is ...:
            record.pop(field, None)
        else:
            record[field] = value
    return record


@pytest.mark.parametrize("event_type", list(SAMPLES))
def test_sample_decodes(event_type: str) -> None:
    event = decode(SAMPLES[event_type], key=b"c-42")

    assert isinstance(event, Event)
    assert event.type == event_type
    assert event.ts == OCT_1_2019
    assert event.customer_id == "c-42"


def test_page_view_fields() -> None:
    event = decode(SAMPLES["page_view"])

    assert event.product_id == "1004237"
    assert event.category == "electronics.smartphone"
    assert event.price == 108198
    assert event.quantity is None
    assert event.currency is None


def test_purchase_fields() -> None:
    event = decode(SAMPLES["purchase"])

    assert event.amount == 139980
    assert event.currency == "CNY"
    assert event.order_id == "o-1"


def test_purchase_in_yen() -> None:
    record = with_fields("purchase", amount="1500", currency="JPY")

    assert decode(record, currency="JPY").amount == 1500


def test_customer_update_attributes() -> None:
    event = decode(SAMPLES["customer_update"])

    assert event.attributes == {
        "member_level": "vip",
        "points": 1200,
        "opted_in": True,
        "city": None,
    }


def test_tag_assign_fields() -> None:
    event = decode(SAMPLES["tag_assign"])

    assert event.tag == "key_account"
    assert event.operator == "alice"


VALID_VARIANTS = [
    ("page_view", {"category": ..., "product_id": ..., "price": ...}),
    ("page_view", {"category": None, "price": None}),
    ("page_view", {"price": 0}),
    ("page_view", {"price": "0.00"}),
    ("page_view", {"price": -0.0}),
    ("page_view", {"currency": "CNY"}),
    ("page_view", {"quantity": "ignored on a page view"}),
    ("page_view", {"amount": "not checked on a page view"}),
    ("page_view", {"unknown_field": {"nested": [1, 2]}}),
    ("page_view", {"product_id": 1004237}),
    ("page_view", {"product_id": 0}),
    ("page_view", {"category": "a"}),
    ("page_view", {"category": "a_1.b_2.c_3"}),
    ("page_view", {"category": "x" * 256}),
    ("page_view", {"ts": OCT_1_2019}),
    ("page_view", {"ts": 1.569888e12}),
    ("page_view", {"event_id": "e" * 128}),
    ("page_view", {"customer_id": "c" * 128}),
    ("page_view", {"customer_id": "顾客:1"}),
    ("add_to_cart", {"quantity": 1}),
    ("add_to_cart", {"quantity": 2.0}),
    ("add_to_cart", {"quantity": 10**9}),
    ("add_to_cart", {"quantity": None, "price": None, "category": None}),
    ("purchase", {"order_id": ...}),
    ("purchase", {"order_id": 77}),
    ("purchase", {"amount": 0.01}),
    ("purchase", {"product_id": "p-1", "category": "toys", "price": "5.00", "quantity": 3}),
    ("refund", {"order_id": None}),
    ("campaign_join", {"campaign_id": 2019}),
    ("customer_update", {"attributes": {}}),
    ("customer_update", {"attributes": {"level": 3.0}}),
    ("customer_update", {"attributes": {"n": -(2**63)}}),
    ("customer_update", {"attributes": {"s": "v" * 1024}}),
    ("customer_update", {"attributes": {str(i): i for i in range(100)}}),
    ("tag_assign", {"operator": ...}),
    ("tag_assign", {"tag": "a.b_c.9"}),
    ("tag_assign", {"tag": "t" * 64}),
]


@pytest.mark.parametrize(("event_type", "changes"), VALID_VARIANTS)
def test_valid_variant(event_type: str, changes: dict[str, Any]) -> None:
    assert isinstance(decode(with_fields(event_type, **changes)), Event)


def test_integer_ids_become_strings() -> None:
    event = decode(with_fields("purchase", product_id=1004237, order_id=77))

    assert event.product_id == "1004237"
    assert event.order_id == "77"


def test_integral_float_quantity_becomes_int() -> None:
    quantity = decode(with_fields("add_to_cart", quantity=2.0)).quantity

    assert quantity == 2
    assert type(quantity) is int


INVALID_VARIANTS = [
    # Fields every event has.
    ("page_view", {"event_id": ...}, "missing_field"),
    ("page_view", {"event_id": None}, "missing_field"),
    ("page_view", {"event_id": ""}, "invalid_field"),
    ("page_view", {"event_id": "e" * 129}, "invalid_field"),
    ("page_view", {"event_id": 7}, "invalid_field"),
    ("page_view", {"customer_id": ...}, "missing_field"),
    ("page_view", {"customer_id": ""}, "invalid_customer_id"),
    ("page_view", {"customer_id": "c" * 129}, "invalid_customer_id"),
    ("page_view", {"customer_id": "a b"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "a\tb"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "a\u3000b"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "a\u00a0b"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "{c}"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "c\x00"}, "invalid_customer_id"),
    ("page_view", {"customer_id": "c\u200b"}, "invalid_customer_id"),
    ("page_view", {"customer_id": 42}, "invalid_customer_id"),
    ("page_view", {"type": ...}, "missing_field"),
    ("page_view", {"type": "view"}, "unknown_type"),
    ("page_view", {"type": "PAGE_VIEW"}, "unknown_type"),
    ("page_view", {"type": 1}, "invalid_field"),
    ("page_view", {"ts": ...}, "missing_field"),
    ("page_view", {"ts": "2019-10-01T00:00:00"}, "invalid_timestamp"),
    ("page_view", {"ts": True}, "invalid_timestamp"),
    ("page_view", {"ts": 1_569_888_000}, "timestamp_out_of_range"),
    # Product fields.
    ("page_view", {"product_id": ""}, "invalid_field"),
    ("page_view", {"product_id": "p" * 129}, "invalid_field"),
    ("page_view", {"product_id": -1}, "invalid_field"),
    ("page_view", {"product_id": 2**63}, "invalid_field"),
    ("page_view", {"product_id": 1.5}, "invalid_field"),
    ("page_view", {"product_id": True}, "invalid_field"),
    ("page_view", {"category": ""}, "invalid_field"),
    ("page_view", {"category": "Electronics"}, "invalid_field"),
    ("page_view", {"category": "electronics..phone"}, "invalid_field"),
    ("page_view", {"category": ".electronics"}, "invalid_field"),
    ("page_view", {"category": "electronics."}, "invalid_field"),
    ("page_view", {"category": "home-garden"}, "invalid_field"),
    ("page_view", {"category": "x" * 257}, "invalid_field"),
    ("page_view", {"category": "toys\n"}, "invalid_field"),
    ("page_view", {"category": 2053013555631882655}, "invalid_field"),
    ("page_view", {"price": -1}, "invalid_amount"),
    ("page_view", {"price": "-0"}, "invalid_amount"),
    ("page_view", {"price": "1,081.98"}, "invalid_amount"),
    ("page_view", {"price": "abc"}, "invalid_amount"),
    ("page_view", {"price": ""}, "invalid_amount"),
    ("page_view", {"price": True}, "invalid_amount"),
    ("page_view", {"price": "1081.985"}, "amount_precision"),
    ("page_view", {"currency": "USD"}, "currency_mismatch"),
    ("page_view", {"currency": "cny"}, "invalid_field"),
    ("add_to_cart", {"product_id": ...}, "missing_field"),
    ("add_to_cart", {"product_id": None}, "missing_field"),
    ("add_to_cart", {"quantity": 0}, "invalid_field"),
    ("add_to_cart", {"quantity": -2}, "invalid_field"),
    ("add_to_cart", {"quantity": 1.5}, "invalid_field"),
    ("add_to_cart", {"quantity": True}, "invalid_field"),
    ("add_to_cart", {"quantity": "2"}, "invalid_field"),
    ("add_to_cart", {"quantity": 10**9 + 1}, "invalid_field"),
    ("remove_from_cart", {"product_id": ...}, "missing_field"),
    # Orders.
    ("purchase", {"amount": ...}, "missing_field"),
    ("purchase", {"amount": None}, "missing_field"),
    ("purchase", {"currency": ...}, "missing_field"),
    ("purchase", {"amount": 0}, "invalid_amount"),
    ("purchase", {"amount": "0.00"}, "invalid_amount"),
    ("purchase", {"amount": -5}, "invalid_amount"),
    ("purchase", {"amount": "-5.00"}, "invalid_amount"),
    ("purchase", {"amount": "1,399.80"}, "invalid_amount"),
    ("purchase", {"amount": "1e3"}, "invalid_amount"),
    ("purchase", {"amount": 12345678901234567890}, "amount_precision"),
    ("purchase", {"amount": 0.123}, "amount_precision"),
    ("purchase", {"amount": "100000000000.01"}, "invalid_amount"),
    ("purchase", {"currency": "USD"}, "currency_mismatch"),
    ("purchase", {"currency": "XYZ"}, "invalid_field"),
    ("purchase", {"currency": 156}, "invalid_field"),
    ("purchase", {"order_id": ""}, "invalid_field"),
    ("purchase", {"price": -1}, "invalid_amount"),
    ("purchase", {"quantity": 0}, "invalid_field"),
    ("refund", {"amount": ...}, "missing_field"),
    ("refund", {"amount": 0}, "invalid_amount"),
    ("refund", {"currency": "EUR"}, "currency_mismatch"),
    # Other types.
    ("campaign_join", {"campaign_id": ...}, "missing_field"),
    ("campaign_join", {"campaign_id": ""}, "invalid_field"),
    ("customer_update", {"attributes": ...}, "missing_field"),
    ("customer_update", {"attributes": None}, "missing_field"),
    ("customer_update", {"attributes": ["member_level", "vip"]}, "invalid_field"),
    ("customer_update", {"attributes": {"": "x"}}, "invalid_field"),
    ("customer_update", {"attributes": {"k" * 129: "x"}}, "invalid_field"),
    ("customer_update", {"attributes": {"level": 1.5}}, "invalid_field"),
    ("customer_update", {"attributes": {"level": {"nested": 1}}}, "invalid_field"),
    ("customer_update", {"attributes": {"level": [1]}}, "invalid_field"),
    ("customer_update", {"attributes": {"s": "v" * 1025}}, "invalid_field"),
    ("customer_update", {"attributes": {"n": 2**63}}, "invalid_field"),
    ("customer_update", {"attributes": {str(i): i for i in range(101)}}, "invalid_field"),
    ("tag_assign", {"tag": ...}, "missing_field"),
    ("tag_assign", {"tag": "manual:key_account"}, "invalid_field"),
    ("tag_assign", {"tag": "Key_Account"}, "invalid_field"),
    ("tag_assign", {"tag": ""}, "invalid_field"),
    ("tag_assign", {"tag": "t" * 65}, "invalid_field"),
    ("tag_assign", {"operator": ""}, "invalid_field"),
    ("tag_assign", {"operator": 5}, "invalid_field"),
    ("tag_unassign", {"tag": "a b"}, "invalid_field"),
]


@pytest.mark.parametrize(("event_type", "changes", "reason"), INVALID_VARIANTS)
def test_invalid_variant(event_type: str, changes: dict[str, Any], reason: str) -> None:
    assert reason_of(with_fields(event_type, **changes)) == reason


def test_invalid_reasons_are_listed() -> None:
    used = {reason for _, _, reason in INVALID_VARIANTS}

    assert used <= set(REASONS)


def test_key_mismatch_carries_event() -> None:
    with pytest.raises(KeyMismatch) as caught:
        decode(SAMPLES["page_view"], key=b"someone-else")

    assert caught.value.reason == "key_mismatch"
    assert caught.value.event.customer_id == "c-42"
    assert caught.value.key == b"someone-else"


def test_key_mismatch_is_invalid_event() -> None:
    assert reason_of(SAMPLES["page_view"], key=b"") == "key_mismatch"


def test_key_compares_utf8_bytes() -> None:
    record = with_fields("page_view", customer_id="顾客1")

    assert decode(record, key="顾客1".encode()).customer_id == "顾客1"
    assert reason_of(record, key="顾客1".encode("gb18030")) == "key_mismatch"


def test_missing_key_is_accepted() -> None:
    assert decode(SAMPLES["page_view"], key=None).customer_id == "c-42"


def test_key_checked_after_fields() -> None:
    """A record that is invalid and also mis-keyed reports the invalid field."""
    record = with_fields("page_view", category="Bad")

    assert reason_of(record, key=b"someone-else") == "invalid_field"


def test_clock_message() -> None:
    clock = decode({"type": "clock", "ts": "2019-10-01T00:00:00Z"})

    assert clock == ClockMessage(ts=OCT_1_2019)


def test_clock_ignores_extra_fields() -> None:
    clock = decode({"type": "clock", "ts": OCT_1_2019, "customer_id": "c-1", "note": 1})

    assert clock == ClockMessage(ts=OCT_1_2019)


def test_clock_with_key() -> None:
    assert reason_of({"type": "clock", "ts": OCT_1_2019}, key=b"c-1") == "clock_with_key"


def test_clock_without_ts() -> None:
    assert reason_of({"type": "clock"}) == "missing_field"


def test_clock_with_bad_ts() -> None:
    assert reason_of({"type": "clock", "ts": "soon"}) == "invalid_timestamp"


def reason_of_raw(raw: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw, key=None, currency="CNY")
    return caught.value.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty_record"),
        (b"", "empty_record"),
        (b" ", "invalid_json"),
        (b"{", "invalid_json"),
        (b"{'a': 1}", "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": "\\ud800"}', "invalid_json"),
        (b"\xef\xbb\xbf{}", "invalid_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"customer_id": "\xe9"}', "invalid_utf8"),
        (b'{"customer_id": "\xed\xa0\x80"}', "invalid_utf8"),
        (b"[]", "not_an_object"),
        (b'"page_view"', "not_an_object"),
        (b"null", "not_an_object"),
        (b"42", "not_an_object"),
        (b"{}", "missing_field"),
    ],
)
def test_raw_record_rejected(raw: bytes | None, reason: str) -> None:
    assert reason_of_raw(raw) == reason


def test_too_large() -> None:
    raw = orjson.dumps(with_fields("page_view", padding="x" * MAX_EVENT_BYTES))

    assert reason_of_raw(raw) == "too_large"


def test_largest_record_accepted() -> None:
    compact = orjson.dumps(SAMPLES["page_view"])
    raw = compact[:-1] + b" " * (MAX_EVENT_BYTES - len(compact)) + b"}"

    assert len(raw) == MAX_EVENT_BYTES
    assert isinstance(decode_event(raw, key=None, currency="CNY"), Event)


def test_deep_nesting_rejected() -> None:
    raw = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    assert reason_of_raw(raw) == "invalid_json"


def test_detail_shows_field_and_value() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(with_fields("page_view", category="Electronics.Phones"))

    assert caught.value.detail.startswith("category:")
    assert "'Electronics.Phones'" in caught.value.detail


def test_detail_truncates_long_value() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(with_fields("page_view", category="X" * 10_000))

    assert len(caught.value.detail) < 400
    assert caught.value.detail.endswith("XXX'...")


def test_unknown_rulebook_currency_is_config_error() -> None:
    with pytest.raises(ValueError, match="rulebook currency"):
        decode(SAMPLES["page_view"], currency="XYZ")


@pytest.mark.parametrize("event_type", list(SAMPLES))
def test_encode_round_trips(event_type: str) -> None:
    event = decode(SAMPLES[event_type])

    assert decode_event(encode_event(event, currency="CNY"), key=None, currency="CNY") == event


def test_encode_writes_epoch_ms_and_decimal_money() -> None:
    encoded = orjson.loads(encode_event(decode(SAMPLES["page_view"]), currency="CNY"))

    assert encoded["ts"] == OCT_1_2019
    assert encoded["price"] == "1081.98"
    assert "quantity" not in encoded


def test_encode_price_needs_currency() -> None:
    event = decode(SAMPLES["page_view"])

    with pytest.raises(ValueError, match="currency"):
        encode_event(event)


def test_encode_uses_event_currency() -> None:
    event = decode(with_fields("purchase", amount="1500", currency="JPY"), currency="JPY")

    assert orjson.loads(encode_event(event))["amount"] == "1500"
