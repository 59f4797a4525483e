"""The published JSON Schema files: they load as package data and agree with the decoder."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tagger.errors import InvalidEvent
from tagger.schemas.contract import SCHEMA_NAMES, SchemaName, load_schema, schema_errors
from tagger.schemas.decode import decode_event, encode_event
from tagger.schemas.events import EVENT_TYPES, Event
from tagger.schemas.money import CURRENCY_EXPONENTS
from tagger.schemas.reasons import DEAD_LETTER_REASONS
from tagger.schemas.timestamps import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, TIMESTAMP_PATTERN

OCT_1_2019 = 1_569_888_000_000  # 2019-10-01T00:00:00Z
BASE = {"event_id": "e-1", "customer_id": "c-42", "ts": "2019-10-01T00:00:00Z"}


def decoder_accepts(record: object) -> bool:
    try:
        decode_event(orjson.dumps(record), key=None, currency="CNY")
    except InvalidEvent:
        return False
    return True


def schema_accepts(name: SchemaName, record: object) -> bool:
    return not schema_errors(name, record)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_package_data(name: str) -> None:
    text = resources.files("tagger.schemas").joinpath(f"{name}.json").read_text("utf-8")

    Draft202012Validator.check_schema(json.loads(text))


def test_currency_enum_matches_table() -> None:
    currency_enum = load_schema("event")["$defs"]["currency"]["enum"]

    assert sorted(currency_enum) == sorted(CURRENCY_EXPONENTS)


def test_type_enum_matches_event_types() -> None:
    type_enum = load_schema("event")["properties"]["type"]["enum"]

    assert tuple(type_enum) == EVENT_TYPES


@pytest.mark.parametrize(
    ("name", "ts_schema"),
    [
        ("event", load_schema("event")["$defs"]["timestamp"]),
        ("clock", load_schema("clock")["properties"]["ts"]),
    ],
)
def test_timestamp_rules_match_decoder(name: str, ts_schema: dict[str, Any]) -> None:
    integer_rule, string_rule = ts_schema["anyOf"]

    assert string_rule["pattern"] == TIMESTAMP_PATTERN
    assert integer_rule["minimum"] == MIN_TIMESTAMP_MS
    assert integer_rule["exclusiveMaximum"] == MAX_TIMESTAMP_MS


def test_dead_letter_reasons_match() -> None:
    reason_enum = load_schema("dead_letter")["properties"]["reason"]["enum"]

    assert tuple(reason_enum) == DEAD_LETTER_REASONS


def test_load_schema_returns_copy() -> None:
    load_schema("event")["properties"].clear()

    assert "ts" in load_schema("event")["properties"]


# Records on which the decoder and event.json must agree: (record, valid).
AGREEMENT = [
    ({**BASE, "type": "page_view"}, True),
    ({**BASE, "type": "page_view", "category": "electronics.smartphone", "price": "1081.98"}, True),
    ({**BASE, "type": "page_view", "category": None, "price": 0}, True),
    ({**BASE, "type": "page_view", "product_id": 1004237}, True),
    ({**BASE, "type": "page_view", "amount": "ignored", "extra": [1]}, True),
    ({**BASE, "type": "page_view", "ts": OCT_1_2019}, True),
    ({**BASE, "type": "page_view", "ts": "2019-10-01T08:00:00.123+08:00"}, True),
    ({**BASE, "type": "page_view", "customer_id": "顾客:1"}, True),
    ({**BASE, "type": "add_to_cart", "product_id": "p", "quantity": 2.0, "price": 9.9}, True),
    ({**BASE, "type": "remove_from_cart", "product_id": "p"}, True),
    ({**BASE, "type": "purchase", "amount": "1399.80", "currency": "CNY"}, True),
    ({**BASE, "type": "purchase", "amount": 0.01, "currency": "CNY", "order_id": 7}, True),
    ({**BASE, "type": "refund", "amount": 100, "currency": "CNY"}, True),
    ({**BASE, "type": "campaign_join", "campaign_id": "double11"}, True),
    ({**BASE, "type": "customer_update", "attributes": {"a": "b", "n": 1, "x": None}}, True),
    ({**BASE, "type": "customer_update", "attributes": {}}, True),
    ({**BASE, "type": "tag_assign", "tag": "key_account", "operator": "alice"}, True),
    ({**BASE, "type": "tag_unassign", "tag": "a.b"}, True),
    ({"customer_id": "c", "type": "page_view", "ts": OCT_1_2019}, False),
    ({**BASE, "type": "page_view", "event_id": ""}, False),
    ({**BASE, "type": "page_view", "event_id": 7}, False),
    ({**BASE, "type": "page_view", "customer_id": "a b"}, False),
    ({**BASE, "type": "page_view", "customer_id": "{a}"}, False),
    ({**BASE, "type": "page_view", "customer_id": "a\x7f"}, False),
    ({**BASE, "type": "page_view", "customer_id": "c" * 129}, False),
    ({**BASE, "type": "view"}, False),
    ({**BASE, "type": "page_view", "ts": "2019-10-01T00:00:00"}, False),
    ({**BASE, "type": "page_view", "ts": "2019-10-01 00:00:00Z"}, False),
    ({**BASE, "type": "page_view", "ts": "2016-12-31T23:59:60Z"}, False),
    ({**BASE, "type": "page_view", "ts": 1_569_888_000}, False),
    ({**BASE, "type": "page_view", "ts": True}, False),
    ({**BASE, "type": "page_view", "ts": 1569888000000.5}, False),
    ({**BASE, "type": "page_view", "category": "Electronics"}, False),
    ({**BASE, "type": "page_view", "category": "a..b"}, False),
    ({**BASE, "type": "page_view", "price": -1}, False),
    ({**BASE, "type": "page_view", "price": "-0"}, False),
    ({**BASE, "type": "page_view", "price": "1,081.98"}, False),
    ({**BASE, "type": "page_view", "price": True}, False),
    ({**BASE, "type": "page_view", "product_id": -1}, False),
    ({**BASE, "type": "page_view", "currency": "cny"}, False),
    ({**BASE, "type": "add_to_cart"}, False),
    ({**BASE, "type": "add_to_cart", "product_id": "p", "quantity": 0}, False),
    ({**BASE, "type": "add_to_cart", "product_id": "p", "quantity": True}, False),
    ({**BASE, "type": "purchase", "amount": "1399.80"}, False),
    ({**BASE, "type": "purchase", "currency": "CNY"}, False),
    ({**BASE, "type": "purchase", "amount": 0, "currency": "CNY"}, False),
    ({**BASE, "type": "purchase", "amount": "0.00", "currency": "CNY"}, False),
    ({**BASE, "type": "purchase", "amount": "1e3", "currency": "CNY"}, False),
    ({**BASE, "type": "purchase", "amount": None, "currency": "CNY"}, False),
    ({**BASE, "type": "purchase", "amount": "5", "currency": "XYZ"}, False),
    ({**BASE, "type": "refund", "amount": -5, "currency": "CNY"}, False),
    ({**BASE, "type": "campaign_join"}, False),
    ({**BASE, "type": "customer_update", "attributes": {"n": 1.5}}, False),
    ({**BASE, "type": "customer_update", "attributes": {"n": {"deep": 1}}}, False),
    ({**BASE, "type": "customer_update", "attributes": {"": 1}}, False),
    ({**BASE, "type": "customer_update", "attributes": [1]}, False),
    ({**BASE, "type": "tag_assign", "tag": "manual:x"}, False),
    ({**BASE, "type": "tag_assign", "tag": "t" * 65}, False),
    ({**BASE, "type": "tag_assign", "tag": "x", "operator": ""}, False),
]


@pytest.mark.parametrize(("record", "valid"), AGREEMENT)
def test_decoder_matches_schema(record: dict[str, Any], valid: bool) -> None:
    assert decoder_accepts(record) is valid
    assert schema_accepts("event", record) is valid


# Rules the decoder enforces and event.json cannot express: (record, decoder's reason).
DECODER_ONLY = [
    ({**BASE, "type": "page_view", "ts": "2019-02-30T00:00:00Z"}, "invalid_timestamp"),
    ({**BASE, "type": "page_view", "ts": "2100-01-01T00:00:00Z"}, "timestamp_out_of_range"),
    ({**BASE, "type": "page_view", "customer_id": "c\u200b"}, "invalid_customer_id"),
    ({**BASE, "type": "page_view", "price": "1081.985"}, "amount_precision"),
    ({**BASE, "type": "purchase", "amount": 0.123, "currency": "CNY"}, "amount_precision"),
    ({**BASE, "type": "purchase", "amount": 10**12, "currency": "CNY"}, "invalid_amount"),
    ({**BASE, "type": "purchase", "amount": "5", "currency": "USD"}, "currency_mismatch"),
    # Python's re.search lets "$" match before a final newline; ECMA-262 does not.
    ({**BASE, "type": "page_view", "category": "toys\n"}, "invalid_field"),
]


@pytest.mark.parametrize(("record", "reason"), DECODER_ONLY)
def test_decoder_only_rules(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(orjson.dumps(record), key=None, currency="CNY")

    assert caught.value.reason == reason
    assert schema_accepts("event", record)


@pytest.mark.parametrize(
    ("record", "valid"),
    [
        ({"type": "clock", "ts": OCT_1_2019}, True),
        ({"type": "clock", "ts": "2019-10-01T00:00:00Z", "extra": 1}, True),
        ({"type": "clock"}, False),
        ({"type": "clock", "ts": "now"}, False),
        ({"type": "clock", "ts": 5}, False),
    ],
)
def test_clock_decoder_matches_schema(record: dict[str, Any], valid: bool) -> None:
    assert decoder_accepts(record) is valid
    assert schema_accepts("clock", record) is valid


# Each field draws from values that both checks accept or both reject: (valid, invalid).
# MISSING leaves the field out.
MISSING = object()
FIELD_VALUES: dict[str, tuple[list[Any], list[Any]]] = {
    "event_id": (["e-1", "e" * 128], ["", "e" * 129, 7, None, MISSING]),
    "customer_id": (
        ["c-42", "顾客:1", "c" * 128],
        ["", "a b", "{c}", "c" * 129, "c\x00", 42, None, MISSING],
    ),
    "type": (list(EVENT_TYPES), ["view", 1, None, MISSING]),
    "ts": (
        ["2019-10-01T00:00:00Z", "2019-10-01T08:00:00.5+08:00", OCT_1_2019, 1.569888e12],
        [
            "2019-10-01T00:00:00",
            "2019-10-01 00:00:00Z",
            "2019-10-01T00:00:00.1234567890Z",
            1_569_888_000,
            True,
            None,
            MISSING,
        ],
    ),
    "product_id": (["p-1", 1004237, 0, None, MISSING], ["", -1, 1.5, True, 2**63]),
    "category": (
        ["electronics.smartphone", "a", None, MISSING],
        ["Electronics", "a..b", "", 5, "x" * 257],
    ),
    "price": (
        ["1081.98", "0", "0.00", 0, 9.9, None, MISSING],
        [-1, "-1", "abc", "1,081.98", True],
    ),
    "quantity": ([1, 2.0, 10**9, None, MISSING], [0, -1, 1.5, True, "2", 10**9 + 1]),
    "order_id": (["o-1", 77, None, MISSING], ["", True]),
    "amount": (["1399.80", 100, 0.01], [0, "0.00", -5, "-5", "1e3", "abc", True, None, MISSING]),
    "currency": (["CNY"], ["cny", "XYZ", 156, None, MISSING]),
    "campaign_id": (["double11", 2019], ["", True, None, MISSING]),
    "attributes": (
        [{"member_level": "vip"}, {}, {"n": 3.0, "b": False, "gone": None}],
        [{"n": 1.5}, {"": 1}, {"x": {"y": 1}}, ["a"], None, MISSING],
    ),
    "tag": (["key_account", "a.b"], ["manual:x", "Key", "", "t" * 65, 5, None, MISSING]),
    "operator": (["alice", None, MISSING], ["", 5]),
}


def field_value(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """Draw a valid value about two times in three, so that many records are valid."""
    return st.sampled_from(valid) | st.sampled_from(valid) | st.sampled_from(invalid)


event_records = st.fixed_dictionaries(
    {field: field_value(*values) for field, values in FIELD_VALUES.items()}
).map(lambda record: {field: value for field, value in record.items() if value is not MISSING})


@settings(max_examples=200, deadline=None)
@given(record=event_records)
def test_decoder_matches_schema_on_combinations(record: dict[str, Any]) -> None:
    assert decoder_accepts(record) is schema_accepts("event", record)


@pytest.mark.parametrize(
    "record",
    [record for record, valid in AGREEMENT if valid],
)
def test_encoded_event_matches_schema(record: dict[str, Any]) -> None:
    event = decode_event(orjson.dumps(record), key=None, currency="CNY")
    assert isinstance(event, Event)
    encoded = orjson.loads(encode_event(event, currency="CNY"))

    assert schema_errors("event", encoded) == []


DOCS = Path(__file__).resolve().parents[2] / "docs"


def doc_examples(name: str) -> list[Any]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]


@pytest.mark.parametrize("doc", ["events.md", "events.zh-CN.md"])
def test_doc_examples_match_schemas(doc: str) -> None:
    examples = doc_examples(doc)
    events = [example for example in examples if "type" in example]
    changes = [example for example in examples if "change_id" in example]
    dead_letters = [example for example in examples if "raw_b64" in example]

    assert len(events) == 7
    assert len(changes) == 1
    assert len(dead_letters) == 1
    assert [schema_errors("event", event) for event in events] == [[]] * len(events)
    assert all(decoder_accepts(event) for event in events)
    assert schema_errors("tag_change", changes[0]) == []
    assert schema_errors("dead_letter", dead_letters[0]) == []
