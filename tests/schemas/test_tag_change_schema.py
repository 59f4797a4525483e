"""Tag-change records match tag_change.json, and the schema matches the TagChange fields."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from tagger.schemas.contract import load_schema
from tagger.schemas.tag_change import (
    TagChange,
    decode_tag_change,
    encode_tag_change,
    validate_tag_change,
)


def change(**overrides: Any) -> TagChange:
    fields: dict[str, Any] = {
        "change_id": "c-42:0:7",
        "customer_id": "c-42",
        "tag": "hesitant",
        "action": "added",
        "at": 1_569_889_800_000,
        "emitted_at": 1_569_889_801_234,
        "rulebook_version": "sha256:4f2a9c",
        "source": "rule",
        "reason": {
            "rule": "hesitant",
            "when": "cart_age_minutes >= 30 and purchases_since_cart == 0",
            "values": {"cart_age_minutes": 30, "purchases_since_cart": 0},
        },
        "group": None,
        "labels": {"zh": "犹豫客户", "en": "Hesitant"},
    }
    fields.update(overrides)
    return TagChange(**fields)


VALID = [
    change(),
    change(tag="browsing_interest:electronics.smartphone", group="interest"),
    change(tag="manual:key_account", source="manual", action="removed"),
    change(change_id="user:with:colons:3:12", customer_id="user:with:colons"),
    change(source="late_correction", reason={"rule": "r", "when": "w", "values": {}, "text": "t"}),
    change(tag="dormant", group="lifecycle", source="rulebook_change"),
    change(source="erasure", action="removed"),
]


@pytest.mark.parametrize("tag_change", VALID)
def test_encoded_change_matches_schema(tag_change: TagChange) -> None:
    validate_tag_change(encode_tag_change(tag_change))


def test_encode_decode_round_trips() -> None:
    assert decode_tag_change(encode_tag_change(change())) == change()


INVALID = [
    change(tag="Hesitant"),
    change(tag="browsing_interest:Electronics"),
    change(tag="browsing_interest:" + "x" * 65),
    change(tag="manual:"),
    change(tag="9lives"),
    change(change_id="c-42:7"),
    change(change_id="c 42:0:7"),
    change(change_id="c-42:0:-1"),
    change(action="add"),
    change(source="robot"),
    change(at=-1),
    change(rulebook_version=""),
    change(reason={"rule": "hesitant"}),
    change(labels={"zh": "犹豫客户"}),
    change(labels={}),
    change(group=5),
]


@pytest.mark.parametrize("tag_change", INVALID)
def test_invalid_change_rejected(tag_change: TagChange) -> None:
    with pytest.raises(ValueError, match="invalid tag-change record"):
        validate_tag_change(encode_tag_change(tag_change))


def test_missing_field_rejected() -> None:
    record = orjson.loads(encode_tag_change(change()))
    del record["emitted_at"]

    with pytest.raises(ValueError, match="emitted_at"):
        validate_tag_change(orjson.dumps(record))


def test_not_json_rejected() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        validate_tag_change(b"{")


def test_schema_lists_dataclass_fields() -> None:
    schema = load_schema("tag_change")
    field_names = {field.name for field in dataclasses.fields(TagChange)}

    assert set(schema["properties"]) == field_names
    assert set(schema["required"]) == field_names


def test_encoding_matches_field_order_free_json() -> None:
    """Pins the bytes of a change: a repeat must stay byte-identical across versions."""
    change = TagChange(
        change_id="c1:0:3",
        customer_id="c1",
        tag="browsing_interest:sport.bicycle",
        action="added",
        at=1_569_890_400_000,
        emitted_at=1_569_890_401_234,
        rulebook_version="3f9a0c2e71b4d855",
        source="rule",
        reason={"rule": "browsing_interest", "values": {"count(page_view, 7d)": 3}},
        group="interest",
        labels={"zh": "浏览兴趣：sport.bicycle", "en": "Browsing interest: sport.bicycle"},
    )

    encoded = encode_tag_change(change)

    assert encoded == orjson.dumps(dataclasses.asdict(change), option=orjson.OPT_SORT_KEYS)
    assert change.to_dict() == dataclasses.asdict(change)
