"""Dead-letter records: an input that could not become an event, kept with its reason."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any, Final, TypedDict

import orjson

from .contract import schema_errors
from .reasons import DEAD_LETTER_REASONS, REASONS, REPLAY_REASONS, WORKER_REASONS

__all__ = [
    "DEAD_LETTER_REASONS",
    "MAX_DETAIL_CHARS",
    "MAX_KEY_BYTES",
    "MAX_RAW_BYTES",
    "REASONS",
    "REPLAY_REASONS",
    "WORKER_REASONS",
    "DeadLetter",
    "dead_letter_raw",
    "dead_letter_record",
    "decode_dead_letter",
]

# A dead-letter record keeps at most this prefix of the value. Even for a 1 MiB input the
# record stays far below the 1 MiB default of the Java producer's max.request.size.
MAX_RAW_BYTES: Final = 64 * 1024

# A customer id is at most 512 bytes in UTF-8, so only a wrong key can be longer.
MAX_KEY_BYTES: Final = 1024

MAX_DETAIL_CHARS: Final = 1000

_KAFKA_SOURCE: Final = frozenset({"topic", "partition", "offset"})
_FILE_SOURCE: Final = frozenset({"file", "line"})


class DeadLetter(TypedDict):
    """A decoded dead-letter record, as dead_letter.json describes it."""

    reason: str
    detail: str
    source: dict[str, Any]
    key_b64: str | None
    raw_b64: str | None
    raw_size: int | None
    raw_sha256: str | None
    truncated: bool


def dead_letter_record(
    reason: str,
    detail: str,
    *,
    source: Mapping[str, object],
    key: bytes | None,
    raw: bytes | None,
) -> bytes:
    """Encode a dead-letter record as JSON.

    `source` is `{"topic", "partition", "offset"}` for a Kafka record or `{"file",
    "line"}` for a line of a replayed file. The size and SHA-256 cover the whole
    `raw` value even when only its first `MAX_RAW_BYTES` are kept. Raises ValueError
    for a reason outside `DEAD_LETTER_REASONS` or a malformed `source`, because
    both are bugs in the caller.
    """
    if reason not in DEAD_LETTER_REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}: add it to tagger.schemas.reasons")

    truncated = False
    key_b64 = None
    if key is not None:
        truncated = len(key) > MAX_KEY_BYTES
        key_b64 = base64.b64encode(key[:MAX_KEY_BYTES]).decode("ascii")

    raw_b64 = raw_sha256 = raw_size = None
    if raw is not None:
        truncated = truncated or len(raw) > MAX_RAW_BYTES
        raw_b64 = base64.b64encode(raw[:MAX_RAW_BYTES]).decode("ascii")
        raw_sha256 = hashlib.sha256(raw).hexdigest()
        raw_size = len(raw)

    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 3] + "..."

    record = {
        "reason": reason,
        "detail": detail,
        "source": _checked_source(source),
        "key_b64": key_b64,
        "raw_b64": raw_b64,
        "raw_size": raw_size,
        "raw_sha256": raw_sha256,
        "truncated": truncated,
    }
    return orjson.dumps(record)


def _checked_source(source: Mapping[str, object]) -> dict[str, object]:
    keys = set(source)
    if keys == _KAFKA_SOURCE:
        topic, partition, offset = source["topic"], source["partition"], source["offset"]
        if isinstance(topic, str) and topic and _is_count(partition) and _is_count(offset):
            return {"topic": topic, "partition": partition, "offset": offset}
    elif keys == _FILE_SOURCE:
        file, line = source["file"], source["line"]
        if isinstance(file, str) and file and _is_count(line) and line != 0:
            return {"file": file, "line": line}

    raise ValueError(
        "invalid dead-letter source: expected {topic, partition, offset} or {file, line}"
        f" with non-negative integers (line from 1), got {dict(source)!r}"
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Parse a dead-letter record and check it against dead_letter.json.

    Raises ValueError listing every field that does not match the schema.
    """
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"invalid dead-letter record: not JSON ({exc})") from None

    errors = schema_errors("dead_letter", record)
    if errors:
        raise ValueError(f"invalid dead-letter record: {'; '.join(errors)}")

    return DeadLetter(
        reason=record["reason"],
        detail=record["detail"],
        source=record["source"],
        key_b64=record["key_b64"],
        raw_b64=record["raw_b64"],
        raw_size=record["raw_size"],
        raw_sha256=record["raw_sha256"],
        truncated=record["truncated"],
    )


def dead_letter_raw(record: DeadLetter) -> bytes | None:
    """Return the kept bytes of the rejected value, or None when it had none.

    The bytes are only a prefix when `record["truncated"]` is true; compare
    `raw_size` with their length to tell whether the value or the key was cut.
    """
    if record["raw_b64"] is None:
        return None
    try:
        return base64.b64decode(record["raw_b64"], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid dead-letter record: raw_b64 is not base64 ({exc})") from None
