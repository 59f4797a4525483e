"""The wire format of input events: decode and validate one Kafka record, or encode an event.

`decode_event` is on the hot path, so it checks fields by hand instead of running
the JSON Schema validator. tests/schemas checks that both accept the same samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import orjson

from tagger.errors import InvalidEvent

from .events import EVENT_TYPES, AttributeValue, ClockMessage, Event, EventType
from .money import CURRENCY_EXPONENTS, format_money, parse_money
from .reasons import REASONS, show_value
from .timestamps import parse_timestamp

__all__ = [
    "MAX_EVENT_BYTES",
    "REASONS",
    "KeyMismatch",
    "decode_event",
    "encode_event",
    "parse_customer_id",
]

# Real events are a few hundred bytes, so this only bounds the cost of parsing one record.
MAX_EVENT_BYTES: Final = 1024 * 1024

# Limits of string fields, in characters (code points), as the JSON Schema states them.
MAX_ID_CHARS: Final = 128
MAX_CATEGORY_CHARS: Final = 256
MAX_TAG_NAME_CHARS: Final = 64

# Integer ids (product_id, order_id, campaign_id) must fit a signed 64-bit database key.
MAX_INTEGER_ID: Final = 2**63 - 1

# Far above any real order line, so a larger quantity is a data error upstream.
MAX_QUANTITY: Final = 10**9

# Limits that keep one customer_update from bloating the customer's stored state.
MAX_ATTRIBUTES: Final = 100
MAX_ATTRIBUTE_NAME_CHARS: Final = 128
MAX_ATTRIBUTE_VALUE_CHARS: Final = 1024
_MIN_INT64: Final = -(2**63)
_MAX_INT64: Final = 2**63 - 1

_EVENT_TYPES: Final[Mapping[str, EventType]] = {name: name for name in EVENT_TYPES}
_PRODUCT_TYPES: Final = frozenset({"page_view", "add_to_cart", "remove_from_cart", "purchase"})
_CART_TYPES: Final = frozenset({"add_to_cart", "remove_from_cart"})
_CATEGORY = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*", re.ASCII)
_TAG_NAME = re.compile(rf"[a-z0-9_.]{{1,{MAX_TAG_NAME_CHARS}}}", re.ASCII)
_T = TypeVar("_T")


class KeyMismatch(InvalidEvent):
    """A valid event whose record key is not its customer_id.

    The worker may forward `event` re-keyed instead of dead-lettering it.
    """

    def __init__(self, event: Event, key: bytes) -> None:
        self.event = event
        self.key = key
        super().__init__(
            "key_mismatch",
            f"record key {show_value(key)} is not the UTF-8 bytes of customer_id"
            f" {show_value(event.customer_id)}; producers must key records by customer_id",
        )


def decode_event(raw: bytes | None, *, key: bytes | None, currency: str) -> Event | ClockMessage:
    """Decode and validate one input record.

    `key` is the Kafka record key: an event's key must be None or its customer_id
    in UTF-8 (else `KeyMismatch`), and a clock message must have no key. `currency`
    is the rulebook's ISO 4217 code: product prices are read in it, and a purchase
    or refund in another currency is rejected. Fields that the event's type does not
    use are ignored, and so is JSON null in an optional field.

    Raises InvalidEvent, with `reason` from `REASONS`, for any record that is not
    a valid event; it raises nothing else for any `raw`. Raises ValueError when
    `currency` is not a known code, which is a configuration error.
    """
    if currency not in CURRENCY_EXPONENTS:
        raise ValueError(f"unknown rulebook currency {currency!r}: expected an ISO 4217 code")

    record = _parse_object(raw)
    event_type = record.get("type")
    if event_type == "clock":
        return _decode_clock(record, key)
    if event_type is None:
        raise InvalidEvent("missing_field", "type: required")
    if not isinstance(event_type, str):
        raise InvalidEvent(
            "invalid_field", f"type: expected a string, got {show_value(event_type)}"
        )
    checked_type = _EVENT_TYPES.get(event_type)
    if checked_type is None:
        raise InvalidEvent(
            "unknown_type",
            f"type: {show_value(event_type)} is not one of {', '.join(EVENT_TYPES)}",
        )

    event = _decode_fields(record, checked_type, currency)
    if key is not None and key != event.customer_id.encode():
        raise KeyMismatch(event, key)

    return event


def _parse_object(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise InvalidEvent("empty_record", "the record has no value (a tombstone or empty bytes)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("too_large", f"{len(raw)} bytes, above the limit of {MAX_EVENT_BYTES}")

    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise InvalidEvent("invalid_utf8", str(utf8_error)) from None
        raise InvalidEvent("invalid_json", str(exc)[:200]) from None

    if not isinstance(record, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {show_value(record)}")
    return record


def _decode_clock(record: Mapping[str, Any], key: bytes | None) -> ClockMessage:
    if key is not None:
        raise InvalidEvent(
            "clock_with_key",
            f"a clock message must have no record key, got {show_value(key)}",
        )

    return ClockMessage(ts=parse_timestamp(_required(record, "ts")))


def _decode_fields(record: Mapping[str, Any], event_type: EventType, currency: str) -> Event:
    event_id = _string(_required(record, "event_id"), "event_id")
    customer_id = _customer_id(_required(record, "customer_id"))
    ts = parse_timestamp(_required(record, "ts"))

    product_id = category = order_id = event_currency = campaign_id = tag = operator = None
    price = quantity = amount = None
    attributes: dict[str, AttributeValue] | None = None

    if event_type in _PRODUCT_TYPES:
        if event_type in _CART_TYPES:
            product_id = _id(_required(record, "product_id"), "product_id")
        else:
            product_id = _optional(record, "product_id", _id)
        category = _optional(record, "category", _category)
        price = _optional(record, "price", lambda value, field: _money(value, field, currency, 0))
        if event_type != "page_view":
            quantity = _optional(record, "quantity", _quantity)
        if event_type != "purchase":
            event_currency = _optional(
                record, "currency", lambda value, field: _currency(value, currency)
            )

    if event_type in ("purchase", "refund"):
        order_id = _optional(record, "order_id", _id)
        event_currency = _currency(_required(record, "currency"), currency)
        amount = _money(_required(record, "amount"), "amount", currency, 1)
    elif event_type == "campaign_join":
        campaign_id = _id(_required(record, "campaign_id"), "campaign_id")
    elif event_type == "customer_update":
        attributes = _attributes(_required(record, "attributes"))
    elif event_type in ("tag_assign", "tag_unassign"):
        tag = _tag_name(_required(record, "tag"))
        operator = _optional(record, "operator", _string)

    return Event(
        event_id=event_id,
        customer_id=customer_id,
        type=event_type,
        ts=ts,
        product_id=product_id,
        category=category,
        price=price,
        quantity=quantity,
        order_id=order_id,
        amount=amount,
        currency=event_currency,
        campaign_id=campaign_id,
        attributes=attributes,
        tag=tag,
        operator=operator,
    )


def _required(record: Mapping[str, Any], field: str) -> Any:
    value = record.get(field)
    if value is None:
        raise InvalidEvent("missing_field", f"{field}: required")
    return value


def _optional(record: Mapping[str, Any], field: str, check: Callable[[Any, str], _T]) -> _T | None:
    """Check a field that may be absent. JSON null counts as absent."""
    value = record.get(field)
    return None if value is None else check(value, field)


def _string(value: Any, field: str) -> str:
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        return value

    raise InvalidEvent(
        "invalid_field",
        f"{field}: expected a string of 1 to {MAX_ID_CHARS} characters, got {show_value(value)}",
    )


def _id(value: Any, field: str) -> str:
    """Check an id that may be a string or a non-negative integer. Integers become strings."""
    number = _integer(value)
    if number is not None and 0 <= number <= MAX_INTEGER_ID:
        return str(number)
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        return value

    raise InvalidEvent(
        "invalid_field",
        f"{field}: expected a string of 1 to {MAX_ID_CHARS} characters or an integer"
        f" from 0 to {MAX_INTEGER_ID}, got {show_value(value)}",
    )


def parse_customer_id(value: Any) -> str:
    """Return a valid customer_id unchanged; raise InvalidEvent `invalid_customer_id` if not."""
    return _customer_id(value)


def _customer_id(value: Any) -> str:
    # str.isprintable() is false for every whitespace character except the space.
    if (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_ID_CHARS
        and value.isprintable()
        and " " not in value
        and "{" not in value
        and "}" not in value
    ):
        return value

    raise InvalidEvent(
        "invalid_customer_id",
        f"customer_id: expected 1 to {MAX_ID_CHARS} printable characters without"
        f" whitespace, '{{' or '}}', got {show_value(value)}",
    )


def _category(value: Any, field: str) -> str:
    if isinstance(value, str) and len(value) <= MAX_CATEGORY_CHARS and _CATEGORY.fullmatch(value):
        return value

    raise InvalidEvent(
        "invalid_field",
        f"{field}: expected a dotted lower-case path such as 'electronics.smartphone'"
        f" (a-z, 0-9 and _ between dots, at most {MAX_CATEGORY_CHARS} characters),"
        f" got {show_value(value)}",
    )


def _tag_name(value: Any) -> str:
    if isinstance(value, str) and _TAG_NAME.fullmatch(value):
        return value

    raise InvalidEvent(
        "invalid_field",
        f"tag: expected a manual tag name of 1 to {MAX_TAG_NAME_CHARS} characters from"
        f" a-z, 0-9, '_' and '.', without the 'manual:' prefix, got {show_value(value)}",
    )


def _currency(value: Any, rulebook_currency: str) -> str:
    if not isinstance(value, str) or value not in CURRENCY_EXPONENTS:
        raise InvalidEvent(
            "invalid_field",
            f"currency: expected an ISO 4217 code in upper case such as 'CNY',"
            f" got {show_value(value)}",
        )
    if value != rulebook_currency:
        raise InvalidEvent(
            "currency_mismatch",
            f"currency: {value!r}, but the rulebook counts money in {rulebook_currency!r};"
            " convert the amount before sending it",
        )

    return value


def _money(value: Any, field: str, currency: str, minimum: int) -> int:
    minor = parse_money(value, currency, field=field)
    # "-0" parses to 0, but event.json allows no sign in money strings, so it is rejected too.
    if minor < minimum or (isinstance(value, str) and value.startswith("-")):
        expected = "greater than 0" if minimum > 0 else "0 or more"
        raise InvalidEvent(
            "invalid_amount", f"{field}: must be {expected}, got {show_value(value)}"
        )

    return minor


def _quantity(value: Any, field: str) -> int:
    number = _integer(value)
    if number is not None and 1 <= number <= MAX_QUANTITY:
        return number

    raise InvalidEvent(
        "invalid_field",
        f"{field}: expected an integer from 1 to {MAX_QUANTITY}, got {show_value(value)}",
    )


def _attributes(value: Any) -> dict[str, AttributeValue]:
    if not isinstance(value, dict) or len(value) > MAX_ATTRIBUTES:
        raise InvalidEvent(
            "invalid_field",
            f"attributes: expected an object of at most {MAX_ATTRIBUTES} entries,"
            f" got {show_value(value)}",
        )

    attributes: dict[str, AttributeValue] = {}
    for name, item in value.items():
        if not 1 <= len(name) <= MAX_ATTRIBUTE_NAME_CHARS:
            raise InvalidEvent(
                "invalid_field",
                f"attributes: a name must have 1 to {MAX_ATTRIBUTE_NAME_CHARS} characters,"
                f" got {show_value(name)}",
            )
        attributes[name] = _attribute_value(name, item)

    return attributes


def _attribute_value(name: str, value: Any) -> AttributeValue:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= MAX_ATTRIBUTE_VALUE_CHARS:
        return value

    number = _integer(value)
    if number is not None and _MIN_INT64 <= number <= _MAX_INT64:
        return number

    raise InvalidEvent(
        "invalid_field",
        f"attributes.{name[:MAX_ID_CHARS]}: expected a string of at most"
        f" {MAX_ATTRIBUTE_VALUE_CHARS} characters, a 64-bit integer, a boolean or null"
        f" (null removes the attribute), got {show_value(value)}",
    )


def _integer(value: Any) -> int | None:
    """Return `value` as an int if JSON Schema calls it an integer (2 and 2.0, not true)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def encode_event(event: Event, *, currency: str | None = None) -> bytes:
    """Encode an event as `decode_event` reads it, for replays and tests.

    None fields are left out, `ts` is written as epoch milliseconds and money as a
    decimal string. Prices are written in the event's own currency, else in
    `currency`; raises ValueError when a price has neither.
    """
    price_currency = event.currency or currency
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "customer_id": event.customer_id,
        "type": event.type,
        "ts": event.ts,
    }
    optional: dict[str, Any] = {
        "product_id": event.product_id,
        "category": event.category,
        "price": event.price,
        "quantity": event.quantity,
        "order_id": event.order_id,
        "amount": event.amount,
        "currency": event.currency,
        "campaign_id": event.campaign_id,
        "attributes": dict(event.attributes) if event.attributes is not None else None,
        "tag": event.tag,
        "operator": event.operator,
    }
    for field, value in optional.items():
        if value is None:
            continue
        if field not in ("price", "amount"):
            record[field] = value
            continue

        if price_currency is None:
            raise ValueError(
                f"{field} of event {event.event_id!r} has no currency: pass currency= to encode it"
            )
        record[field] = format_money(value, price_currency)

    return orjson.dumps(record)
