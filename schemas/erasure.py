"""Erasure requests: the record `tagger forget` sends to make the worker forget one customer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from tagger.errors import InvalidEvent

from .decode import MAX_ID_CHARS, parse_customer_id
from .reasons import show_value

__all__ = [
    "ERASURE_TYPE",
    "ErasureRequest",
    "decode_erasure_request",
    "encode_erasure_request",
]

ERASURE_TYPE: Final = "erasure"
# A request is a few hundred bytes; this only bounds the cost of parsing a bad one.
_MAX_REQUEST_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """A data-subject erasure request for one customer.

    `request_id` identifies the request in logs and in the removals'
    reasons; `requested_at` is the wall time (epoch ms) it was sent.
    """

    customer_id: str
    request_id: str
    requested_at: int


def encode_erasure_request(request: ErasureRequest) -> bytes:
    """Serialise a request as the JSON object erasure_request.json describes."""
    return orjson.dumps(
        {
            "type": ERASURE_TYPE,
            "customer_id": request.customer_id,
            "request_id": request.request_id,
            "requested_at": request.requested_at,
        }
    )


def decode_erasure_request(raw: bytes | None, *, key: bytes | None) -> ErasureRequest:
    """Decode and validate one record of the erasures topic.

    The record key must be the customer_id in UTF-8, so that the request
    reaches the partition that holds the customer. Raises InvalidEvent, with
    a reason from `REASONS`, for any record that is not a valid request.
    """
    record = _parse_object(raw)
    kind = record.get("type")
    if kind != ERASURE_TYPE:
        raise InvalidEvent(
            "unknown_type", f"type: expected {ERASURE_TYPE!r}, got {show_value(kind)}"
        )

    customer_id = parse_customer_id(_required(record, "customer_id"))
    request_id = _required(record, "request_id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_ID_CHARS:
        raise InvalidEvent(
            "invalid_field",
            f"request_id: expected a string of 1 to {MAX_ID_CHARS} characters, "
            f"got {show_value(request_id)}",
        )
    requested_at = _required(record, "requested_at")
    if not isinstance(requested_at, int) or isinstance(requested_at, bool) or requested_at < 0:
        raise InvalidEvent(
            "invalid_field",
            f"requested_at: expected epoch milliseconds, got {show_value(requested_at)}",
        )

    if key != customer_id.encode():
        raise InvalidEvent(
            "key_mismatch",
            f"record key {show_value(key)} is not the UTF-8 bytes of customer_id "
            f"{show_value(customer_id)}; send erasure requests with `tagger forget`",
        )
    return ErasureRequest(customer_id, request_id, requested_at)


def _parse_object(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise InvalidEvent("empty_record", "the record has no value (a tombstone or empty bytes)")
    if len(raw) > _MAX_REQUEST_BYTES:
        raise InvalidEvent(
            "too_large", f"{len(raw)} bytes, above the limit of {_MAX_REQUEST_BYTES}"
        )
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", str(exc)[:200]) from None
    if not isinstance(record, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {show_value(record)}")
    return record


def _required(record: dict[str, Any], field: str) -> Any:
    value = record.get(field)
    if value is None:
        raise InvalidEvent("missing_field", f"{field}: required")
    return value
