"""Dead-letter records: contents, truncation, validation and reading them back."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest

from tagger.schemas.contract import schema_errors
from tagger.schemas.dead_letter import (
    DEAD_LETTER_REASONS,
    MAX_DETAIL_CHARS,
    MAX_KEY_BYTES,
    MAX_RAW_BYTES,
    REASONS,
    REPLAY_REASONS,
    WORKER_REASONS,
    dead_letter_raw,
    dead_letter_record,
    decode_dead_letter,
)

KAFKA_SOURCE = {"topic": "customer-events", "partition": 3, "offset": 1234}
FILE_SOURCE = {"file": "rees46_multicat_2019-10_head.csv", "line": 17435}


def record_of(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "reason": "invalid_json",
        "detail": "unexpected character",
        "source": KAFKA_SOURCE,
        "key": b"c-42",
        "raw": b"{not json",
    }
    arguments.update(overrides)
    reason, detail = arguments.pop("reason"), arguments.pop("detail")
    return orjson.loads(dead_letter_record(reason, detail, **arguments))  # type: ignore[no-any-return]


def test_record_fields() -> None:
    record = record_of()

    assert record["reason"] == "invalid_json"
    assert record["detail"] == "unexpected character"
    assert record["source"] == KAFKA_SOURCE
    assert base64.b64decode(record["key_b64"]) == b"c-42"
    assert base64.b64decode(record["raw_b64"]) == b"{not json"
    assert record["raw_size"] == 9
    assert record["raw_sha256"] == hashlib.sha256(b"{not json").hexdigest()
    assert record["truncated"] is False


def test_record_matches_schema() -> None:
    assert schema_errors("dead_letter", record_of()) == []


def test_file_source() -> None:
    record = record_of(reason="wrong_field_count", source=FILE_SOURCE, key=None)

    assert record["source"] == FILE_SOURCE
    assert record["key_b64"] is None
    assert schema_errors("dead_letter", record) == []


def test_missing_value() -> None:
    record = record_of(reason="empty_record", raw=None)

    assert record["raw_b64"] is None
    assert record["raw_size"] is None
    assert record["raw_sha256"] is None
    assert schema_errors("dead_letter", record) == []


def test_empty_value_differs_from_missing() -> None:
    record = record_of(reason="empty_record", raw=b"")

    assert record["raw_b64"] == ""
    assert record["raw_size"] == 0


def test_large_value_keeps_prefix_and_whole_hash() -> None:
    raw = bytes(range(256)) * (MAX_RAW_BYTES // 256 * 4)

    record = record_of(reason="too_large", raw=raw)

    assert base64.b64decode(record["raw_b64"]) == raw[:MAX_RAW_BYTES]
    assert record["raw_size"] == len(raw)
    assert record["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["truncated"] is True
    assert schema_errors("dead_letter", record) == []


def test_value_at_limit_not_truncated() -> None:
    record = record_of(raw=b"x" * MAX_RAW_BYTES)

    assert record["truncated"] is False


def test_long_key_truncated() -> None:
    record = record_of(key=b"k" * (MAX_KEY_BYTES + 1))

    assert base64.b64decode(record["key_b64"]) == b"k" * MAX_KEY_BYTES
    assert record["truncated"] is True
    assert schema_errors("dead_letter", record) == []


def test_long_detail_truncated() -> None:
    record = record_of(detail="d" * 5000)

    assert len(record["detail"]) == MAX_DETAIL_CHARS
    assert record["detail"].endswith("...")


@pytest.mark.parametrize("reason", DEAD_LETTER_REASONS)
def test_every_reason_accepted(reason: str) -> None:
    assert schema_errors("dead_letter", record_of(reason=reason)) == []


def test_reason_lists() -> None:
    assert DEAD_LETTER_REASONS == REASONS + REPLAY_REASONS + WORKER_REASONS
    assert len(set(DEAD_LETTER_REASONS)) == len(DEAD_LETTER_REASONS)
    assert {"wrong_field_count", "unconvertible_row"} <= set(REPLAY_REASONS)


def test_unknown_reason_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        record_of(reason="something_else")


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"topic": "t", "partition": 0},
        {"topic": "t", "partition": 0, "offset": 1, "file": "f"},
        {"topic": "", "partition": 0, "offset": 1},
        {"topic": "t", "partition": -1, "offset": 1},
        {"topic": "t", "partition": True, "offset": 1},
        {"topic": "t", "partition": 0, "offset": "1"},
        {"file": "f", "line": 0},
        {"file": "", "line": 1},
    ],
)
def test_malformed_source_rejected(source: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid dead-letter source"):
        record_of(source=source)


def test_decode_round_trips() -> None:
    raw = dead_letter_record(
        "invalid_amount", "price: 'abc'", source=KAFKA_SOURCE, key=None, raw=b"{}"
    )

    decoded = decode_dead_letter(raw)

    assert decoded["reason"] == "invalid_amount"
    assert decoded["source"] == KAFKA_SOURCE
    assert dead_letter_raw(decoded) == b"{}"


def test_raw_of_missing_value() -> None:
    decoded = decode_dead_letter(record_bytes(raw=None))

    assert dead_letter_raw(decoded) is None


def record_bytes(**overrides: Any) -> bytes:
    return orjson.dumps(record_of(**overrides))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        orjson.dumps({**record_of(), "reason": "nope"}),
        orjson.dumps({**record_of(), "truncated": "no"}),
        orjson.dumps({**record_of(), "raw_sha256": "XYZ"}),
        orjson.dumps({key: value for key, value in record_of().items() if key != "source"}),
    ],
)
def test_decode_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(ValueError, match="invalid dead-letter record"):
        decode_dead_letter(raw)
