"""Readers that turn data files (REES46, UCI, JSON Lines, Taobao, CDNOW) into input events."""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from tagger.errors import ConfigError, InvalidEvent
from tagger.schemas.money import currency_exponent, format_money, parse_money
from tagger.schemas.timestamps import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS

__all__ = [
    "FORMATS",
    "INVALID_JSON",
    "NOMINAL_AMOUNT",
    "UNCONVERTIBLE_ROW",
    "WRONG_FIELD_COUNT",
    "BadRow",
    "ConvertedEvent",
    "Format",
    "Item",
    "SourceFile",
    "detect_format",
    "event_time_ms",
    "read_items",
]

# Dead-letter reasons of rows that never became an event.
WRONG_FIELD_COUNT: Final = "wrong_field_count"
UNCONVERTIBLE_ROW: Final = "unconvertible_row"
INVALID_JSON: Final = "invalid_json"

# Taobao UserBehavior has no prices, but a purchase needs an amount above 0.
# Every `buy` is worth this nominal amount, in major units of the replay
# currency, so value tiers on Taobao data mean nothing.
# TODO: no replay option sets another amount yet.
NOMINAL_AMOUNT: Final = Decimal(1)

# Bytes read to detect a format: a header or a first JSON line fits easily.
DETECT_BYTES = 64 * 1024
# Physical lines one quoted CSV field may span before the row counts as broken,
# so a stray quote cannot swallow the rest of the file.
MAX_RECORD_LINES = 64
# Hex digits of the file's SHA-256 in event ids: 48 bits tell files apart.
DIGEST_HEX = 12

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_UK = ZoneInfo("Europe/London")
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_CATEGORY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
_ID_LENGTH = 128
_MAX_QUANTITY = 1_000_000_000  # the input format's largest quantity


@dataclass(frozen=True, slots=True)
class ConvertedEvent:
    """One input event read from a file, with the Kafka record it becomes."""

    line: int  # 1-based physical line of the row; for UCI the invoice's first line
    ts: int  # event time in epoch ms (UTC), used for sorting and pacing
    customer_id: str | None  # the record key; None when a JSON line names no customer
    type: str
    value: bytes  # the record value: UTF-8 JSON in the input event format
    rows: int = 1  # file rows it was built from: an invoice's line count for UCI

    def event(self) -> dict[str, Any]:
        """Return the record value decoded as a JSON object."""
        decoded: dict[str, Any] = orjson.loads(self.value)
        return decoded


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot become an event; replay sends it to the dead-letter topic."""

    line: int  # 1-based physical line of the row
    reason: str  # WRONG_FIELD_COUNT, UNCONVERTIBLE_ROW or INVALID_JSON
    detail: str
    raw: bytes  # the row as it is in the file, without its line terminator
    rows: int = 1  # file rows it stands for: a rejected invoice's line count for UCI


Item = ConvertedEvent | BadRow


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A data file being read, with the digest that event ids carry."""

    path: Path
    digest: str  # first DIGEST_HEX hex digits of the file's SHA-256

    @classmethod
    def open(cls, path: str | Path) -> SourceFile:
        """Hash the file and return its description."""
        resolved = Path(path)
        digest = hashlib.sha256()
        with resolved.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(path=resolved, digest=digest.hexdigest()[:DIGEST_HEX])

    def event_id(self, fmt: str, line: int) -> str:
        """Return the id of the event read from `line`, unique across files and rows."""
        return f"{fmt}:{self.digest}:{line}"


@dataclass(frozen=True, slots=True)
class Format:
    """A file format: how to recognise its first line and how to read its rows.

    A new format is one `read` function and one entry in FORMATS.
    """

    name: str
    matches: Callable[[str], bool]  # called with the file's first line, decoded
    read: Callable[[SourceFile, str], Iterator[Item]]  # called with the file and the currency


def detect_format(path: str | Path) -> str:
    """Return the name of the format whose header or first line the file starts with."""
    with Path(path).open("rb") as handle:
        head = handle.read(DETECT_BYTES)
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig", errors="replace")
    for fmt in FORMATS.values():
        if fmt.matches(first):
            return fmt.name

    names = ", ".join(FORMATS)
    raise ConfigError(
        f"cannot detect the format of {path}: its first line {first[:100]!r} matches "
        f"none of {names}; pass the format explicitly"
    )


def read_items(path: str | Path, *, fmt: str | None = None, currency: str) -> Iterator[Item]:
    """Read a file lazily into converted events and bad rows, in file order.

    `fmt` None detects the format. `currency` labels the money of formats that
    carry none. UCI invoices come after all rows are read, because the lines of
    one invoice need not be next to each other.
    """
    name = detect_format(path) if fmt is None else fmt
    if name not in FORMATS:
        raise ConfigError(f"unknown format {name!r}: use one of {', '.join(FORMATS)}")
    try:
        currency_exponent(currency)
    except InvalidEvent as exc:
        raise ConfigError(f"invalid replay currency: {exc.detail}") from exc

    source = SourceFile.open(path)
    return FORMATS[name].read(source, currency)


def event_time_ms(value: object) -> int | None:
    """Return an event's `ts` (epoch ms or RFC 3339 with offset) as epoch ms, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return (moment - _EPOCH) // _MS


# REES46 ------------------------------------------------------------------

_REES46_HEADER: Final = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
_REES46_TYPES: Final[Mapping[str, str]] = {
    "view": "page_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}


def _read_rees46(source: SourceFile, currency: str) -> Iterator[Item]:
    records = _csv_records(source.path)
    _expect_header(source, records, _REES46_HEADER)
    for line, raw, fields in records:
        if isinstance(fields, str):
            yield BadRow(line, UNCONVERTIBLE_ROW, fields, raw)
            continue
        if len(fields) != len(_REES46_HEADER):
            detail = f"expected {len(_REES46_HEADER)} fields, found {len(fields)}"
            yield BadRow(line, WRONG_FIELD_COUNT, detail, raw)
            continue

        try:
            yield _rees46_event(source, line, fields, currency)
        except _UnconvertibleError as exc:
            yield BadRow(line, UNCONVERTIBLE_ROW, str(exc), raw)


def _rees46_event(
    source: SourceFile, line: int, fields: list[str], currency: str
) -> ConvertedEvent:
    event_time, event_type, product_id, _, category, _, price, user_id, session = fields
    kind = _REES46_TYPES.get(event_type)
    if kind is None:
        raise _UnconvertibleError(f"unknown event_type {event_type!r}")
    customer_id = _required("user_id", user_id)
    ts = _utc_time(event_time)
    price_minor = _money("price", price, currency)
    if price_minor < 0:
        raise _UnconvertibleError(f"negative price {price!r}")

    event: dict[str, Any] = {
        "event_id": source.event_id("rees46", line),
        "customer_id": customer_id,
        "type": kind,
        "ts": ts,
        "product_id": _required("product_id", product_id),
    }
    if category:
        event["category"] = _category(category)
    event["price"] = format_money(price_minor, currency)
    if kind == "purchase":
        if price_minor == 0:
            raise _UnconvertibleError("purchase with price 0: an amount must be above 0")
        event["order_id"] = _rees46_order_id(session, product_id, ts)
        event["amount"] = event["price"]
        event["currency"] = currency
    return ConvertedEvent(line, ts, customer_id, kind, _json_bytes(event))


def _rees46_order_id(session: str, product_id: str, ts: int) -> str:
    # REES46 has no order id. A purchase row is one product bought in one
    # session at one time, so those three name it, the same in every replay.
    order_id = f"{session}:{product_id}:{ts}"
    if not session or len(order_id) > _ID_LENGTH:
        raise _UnconvertibleError(f"cannot build an order id from user_session {session!r}")
    return order_id


# UCI Online Retail -------------------------------------------------------

_UCI_HEADER: Final = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
# Exports of the original spreadsheet through pandas write CustomerID as a float.
_UCI_FLOAT_ID = re.compile(r"([0-9]+)\.0")


@dataclass(slots=True)
class _Invoice:
    number: str
    line: int
    raw: bytes
    ts: int
    customer_id: str
    total: Decimal
    lines: int
    other_customer: str | None = None


def _read_uci(source: SourceFile, currency: str) -> Iterator[Item]:
    records = _csv_records(source.path)
    _expect_header(source, records, _UCI_HEADER)
    invoices: dict[str, _Invoice] = {}
    for line, raw, fields in records:
        if isinstance(fields, str):
            yield BadRow(line, UNCONVERTIBLE_ROW, fields, raw)
            continue
        if len(fields) != len(_UCI_HEADER):
            detail = f"expected {len(_UCI_HEADER)} fields, found {len(fields)}"
            yield BadRow(line, WRONG_FIELD_COUNT, detail, raw)
            continue

        try:
            _add_uci_line(invoices, line, raw, fields)
        except _UnconvertibleError as exc:
            yield BadRow(line, UNCONVERTIBLE_ROW, str(exc), raw)

    for invoice in invoices.values():
        try:
            yield _uci_event(invoice, currency)
        except _UnconvertibleError as exc:
            yield BadRow(invoice.line, UNCONVERTIBLE_ROW, str(exc), invoice.raw, invoice.lines)


def _add_uci_line(invoices: dict[str, _Invoice], line: int, raw: bytes, fields: list[str]) -> None:
    number, _, _, quantity_text, date, unit_price, customer, _ = fields
    number = _required("InvoiceNo", number)
    customer_id = _uci_customer_id(customer)
    try:
        quantity = int(quantity_text)
    except ValueError:
        raise _UnconvertibleError(f"invalid Quantity {quantity_text!r}") from None
    amount = quantity * _decimal("UnitPrice", unit_price)

    invoice = invoices.get(number)
    if invoice is None:
        ts = _uk_time(date)
        invoices[number] = _Invoice(number, line, raw, ts, customer_id, amount, 1)
        return
    invoice.total += amount
    invoice.lines += 1
    if customer_id != invoice.customer_id:
        invoice.other_customer = customer_id


def _uci_customer_id(text: str) -> str:
    customer_id = _required("CustomerID", text)
    float_id = _UCI_FLOAT_ID.fullmatch(customer_id)
    if float_id is not None:
        return float_id.group(1)
    return customer_id


def _uci_event(invoice: _Invoice, currency: str) -> ConvertedEvent:
    if invoice.other_customer is not None:
        raise _UnconvertibleError(
            f"invoice {invoice.number} has lines of customers {invoice.customer_id} "
            f"and {invoice.other_customer}"
        )
    refund = invoice.number.startswith("C")
    amount = -invoice.total if refund else invoice.total
    if amount <= 0:
        kind = "cancellation" if refund else "invoice"
        raise _UnconvertibleError(
            f"{kind} {invoice.number} of {invoice.lines} lines totals {invoice.total}: "
            "an order amount must be above 0"
        )

    # NOTE: a total finer than the currency's minor unit (UnitPrice with more
    # decimals) is rounded half-even; every total of the UCI sample is exact.
    minor = _minor_units(amount, currency)
    kind = "refund" if refund else "purchase"
    event = {
        "event_id": f"uci:{invoice.number}",
        "customer_id": invoice.customer_id,
        "type": kind,
        "ts": invoice.ts,
        "order_id": invoice.number,
        "amount": format_money(minor, currency),
        "currency": currency,
    }
    value = _json_bytes(event)
    return ConvertedEvent(invoice.line, invoice.ts, invoice.customer_id, kind, value, invoice.lines)


# JSON Lines --------------------------------------------------------------


def _read_jsonl(source: SourceFile, _currency: str) -> Iterator[Item]:
    # A line that parses goes to Kafka byte for byte and the worker validates
    # it. Only lines replay cannot route (not JSON, clock messages) stop here.
    last_ts = 0
    with source.path.open("rb") as handle:
        for line, physical in enumerate(handle, start=1):
            raw = physical.rstrip(b"\r\n")
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield BadRow(line, INVALID_JSON, f"not valid JSON: {exc}", raw)
                continue

            fields = document if isinstance(document, dict) else {}
            kind = fields.get("type")
            if kind == "clock":
                detail = "a clock message in a file is not replayed: use the end clock option"
                yield BadRow(line, UNCONVERTIBLE_ROW, detail, raw)
                continue
            # A line whose time cannot be read sorts with the line before it;
            # the worker dead-letters it.
            ts = event_time_ms(fields.get("ts"))
            last_ts = last_ts if ts is None else ts
            customer_id = fields.get("customer_id")
            key = customer_id if isinstance(customer_id, str) else None
            type_name = kind if isinstance(kind, str) else "unknown"
            yield ConvertedEvent(line, last_ts, key, type_name, raw)


# Taobao UserBehavior -------------------------------------------------------

_TAOBAO_FIELDS: Final = 5
_TAOBAO_TYPES: Final[Mapping[str, str]] = {
    "pv": "page_view",
    # The input format has no favourite event. A favourite is given to an item
    # the customer is looking at, so it replays as a view of that item. It
    # counts as activity and toward browsing_interest like any view.
    "fav": "page_view",
    "cart": "add_to_cart",
    "buy": "purchase",
}
_DIGITS = re.compile(r"[0-9]+")
# Longest digit string converted with int(): Python rejects strings of more
# than 4,300 digits, and any count past 18 digits is out of range anyway.
_MAX_DIGITS = 18


def _read_taobao(source: SourceFile, currency: str) -> Iterator[Item]:
    amount = format_money(_minor_units(NOMINAL_AMOUNT, currency), currency)
    for line, raw, fields in _csv_records(source.path):
        if isinstance(fields, str):
            yield BadRow(line, UNCONVERTIBLE_ROW, fields, raw)
            continue
        if len(fields) != _TAOBAO_FIELDS:
            detail = f"expected {_TAOBAO_FIELDS} fields, found {len(fields)}"
            yield BadRow(line, WRONG_FIELD_COUNT, detail, raw)
            continue

        try:
            yield _taobao_event(source, line, fields, currency, amount)
        except _UnconvertibleError as exc:
            yield BadRow(line, UNCONVERTIBLE_ROW, str(exc), raw)


def _taobao_event(
    source: SourceFile, line: int, fields: list[str], currency: str, amount: str
) -> ConvertedEvent:
    user_id, item_id, category_id, behavior, timestamp = fields
    kind = _TAOBAO_TYPES.get(behavior)
    if kind is None:
        raise _UnconvertibleError(f"unknown behavior_type {behavior!r}")
    customer_id = _required("user_id", user_id)
    product_id = _required("item_id", item_id)
    if not _DIGITS.fullmatch(timestamp) or len(timestamp) > _MAX_DIGITS:
        raise _UnconvertibleError(f"invalid timestamp {timestamp[:40]!r}: expected unix seconds")
    ts = _in_range("timestamp", timestamp, int(timestamp) * 1000)

    event: dict[str, Any] = {
        "event_id": source.event_id("taobao", line),
        "customer_id": customer_id,
        "type": kind,
        "ts": ts,
        "product_id": product_id,
    }
    if category_id:
        if not _DIGITS.fullmatch(category_id):
            raise _UnconvertibleError(f"invalid category_id {category_id[:100]!r}: expected digits")
        event["category"] = _category(f"taobao.{category_id}")
    if kind == "purchase":
        # Taobao has no order id, so the user, the item and the second name the order.
        order_id = f"{customer_id}:{product_id}:{ts}"
        if len(order_id) > _ID_LENGTH:
            raise _UnconvertibleError(f"cannot build an order id from item_id {product_id!r}")
        event["order_id"] = order_id
        event["amount"] = amount
        event["currency"] = currency
    return ConvertedEvent(line, ts, customer_id, kind, _json_bytes(event))


def _looks_like_taobao(first_line: str) -> bool:
    fields = first_line.split(",")
    if len(fields) != _TAOBAO_FIELDS or fields[3] not in _TAOBAO_TYPES:
        return False
    return all(_DIGITS.fullmatch(fields[index]) for index in (0, 1, 2, 4))


# CDNOW ---------------------------------------------------------------------

_CDNOW_HEADER: Final = ("customer_id", "date", "number_of_cds", "dollar_value")
_CDNOW_DATE = re.compile(r"[0-9]{8}")
_CDNOW_MONEY = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _read_cdnow(source: SourceFile, currency: str) -> Iterator[Item]:
    with source.path.open("rb") as handle:
        for line, physical in enumerate(handle, start=1):
            raw = physical.rstrip(b"\r\n")
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                fields = raw.decode("utf-8").split()
            except UnicodeDecodeError as exc:
                yield BadRow(line, UNCONVERTIBLE_ROW, f"not valid UTF-8 at byte {exc.start}", raw)
                continue
            if line == 1 and tuple(fields) == _CDNOW_HEADER:
                continue
            if len(fields) != len(_CDNOW_HEADER):
                detail = f"expected {len(_CDNOW_HEADER)} fields, found {len(fields)}"
                yield BadRow(line, WRONG_FIELD_COUNT, detail, raw)
                continue

            try:
                yield _cdnow_event(source, line, fields, currency)
            except _UnconvertibleError as exc:
                yield BadRow(line, UNCONVERTIBLE_ROW, str(exc), raw)


def _cdnow_event(source: SourceFile, line: int, fields: list[str], currency: str) -> ConvertedEvent:
    customer, date, cds, dollars = fields
    customer_id = _required("customer_id", customer)
    ts = _cdnow_date(date)
    if not _DIGITS.fullmatch(cds) or len(cds) > _MAX_DIGITS or not 1 <= int(cds) <= _MAX_QUANTITY:
        raise _UnconvertibleError(
            f"invalid number_of_cds {cds[:40]!r}: expected a whole number from 1 to {_MAX_QUANTITY}"
        )
    amount = _money("dollar_value", dollars, currency)
    if amount <= 0:
        raise _UnconvertibleError(
            f"purchase with dollar_value {dollars}: an amount must be above 0"
        )

    event = {
        "event_id": source.event_id("cdnow", line),
        "customer_id": customer_id,
        "type": "purchase",
        "ts": ts,
        # CDNOW has no order id, and a customer may have two rows on one day.
        "order_id": f"{customer_id}:{date}:{line}",
        "amount": format_money(amount, currency),
        "currency": currency,
        "quantity": int(cds),
    }
    return ConvertedEvent(line, ts, customer_id, "purchase", _json_bytes(event))


def _cdnow_date(text: str) -> int:
    # A CDNOW row has a day, not a time: the purchase is placed at 00:00 UTC.
    if not _CDNOW_DATE.fullmatch(text):
        raise _UnconvertibleError(f"invalid date {text!r}: expected YYYYMMDD")
    try:
        day = datetime(int(text[:4]), int(text[4:6]), int(text[6:]), tzinfo=UTC)
    except ValueError:
        raise _UnconvertibleError(f"invalid date {text!r}: no such day") from None
    return _in_range("date", text, (day - _EPOCH) // _MS)


def _looks_like_cdnow(first_line: str) -> bool:
    fields = first_line.split()
    if tuple(fields) == _CDNOW_HEADER:
        return True
    if len(fields) != len(_CDNOW_HEADER) or not _CDNOW_DATE.fullmatch(fields[1]):
        return False
    return bool(
        _DIGITS.fullmatch(fields[0])
        and _DIGITS.fullmatch(fields[2])
        and _CDNOW_MONEY.fullmatch(fields[3])
    )


def _header_matches(expected: tuple[str, ...]) -> Callable[[str], bool]:
    def matches(first_line: str) -> bool:
        return tuple(field.strip() for field in first_line.split(",")) == expected

    return matches


def _looks_like_json(first_line: str) -> bool:
    return first_line.lstrip().startswith("{")


FORMATS: Final[Mapping[str, Format]] = {
    "rees46": Format("rees46", _header_matches(_REES46_HEADER), _read_rees46),
    "uci": Format("uci", _header_matches(_UCI_HEADER), _read_uci),
    "jsonl": Format("jsonl", _looks_like_json, _read_jsonl),
    "taobao": Format("taobao", _looks_like_taobao, _read_taobao),
    "cdnow": Format("cdnow", _looks_like_cdnow, _read_cdnow),
}


# Shared parsing ----------------------------------------------------------

_Record = tuple[int, bytes, list[str] | str]


class _UnconvertibleError(ValueError):
    """A row's field cannot be converted; the message names the field and value."""


def _csv_records(path: Path) -> Iterator[_Record]:
    """Yield (first physical line, raw bytes, fields or an error message) per CSV row."""
    with path.open("rb") as handle:
        pending: list[bytes] = []
        start = 0
        for number, physical in enumerate(handle, start=1):
            if not pending:
                start = number
            pending.append(physical)
            raw = b"".join(pending).rstrip(b"\r\n")
            if raw.count(b'"') % 2 == 1 and len(pending) < MAX_RECORD_LINES:
                continue
            pending = []
            if not raw.strip():
                continue
            yield start, raw, _csv_fields(raw, first=start == 1)

        if pending:
            raw = b"".join(pending).rstrip(b"\r\n")
            yield start, raw, _csv_fields(raw, first=start == 1)


def _csv_fields(raw: bytes, *, first: bool) -> list[str] | str:
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}"
    try:
        return next(csv.reader(text.splitlines(keepends=True)), [])
    except csv.Error as exc:
        return f"invalid CSV: {exc}"


def _expect_header(source: SourceFile, records: Iterator[_Record], header: tuple[str, ...]) -> None:
    first = next(records, None)
    found = None if first is None else first[2]
    if isinstance(found, list) and tuple(field.strip() for field in found) == header:
        return
    raise ConfigError(
        f"{source.path}: expected the header {','.join(header)!r} on line 1, found {found!r}"
    )


def _required(name: str, value: str) -> str:
    if not value:
        raise _UnconvertibleError(f"missing {name}")
    if len(value) > _ID_LENGTH:
        raise _UnconvertibleError(f"{name} longer than {_ID_LENGTH} characters: {value[:40]!r}…")
    return value


def _decimal(name: str, text: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise _UnconvertibleError(f"invalid {name} {text!r}: expected a decimal number")
    return Decimal(text)


def _money(name: str, text: str, currency: str) -> int:
    try:
        return parse_money(text, currency, field=name)
    except InvalidEvent as exc:
        raise _UnconvertibleError(exc.detail) from None


def _category(text: str) -> str:
    if len(text) > 256 or not _CATEGORY.fullmatch(text):
        raise _UnconvertibleError(
            f"invalid category_code {text[:100]!r}: expected a dotted lower-case path"
        )
    return text


def _utc_time(text: str) -> int:
    # REES46 writes `2019-10-01 00:00:00 UTC`.
    if not text.endswith(" UTC"):
        raise _UnconvertibleError(f"invalid event_time {text!r}: expected '... UTC'")
    try:
        moment = datetime.fromisoformat(text[:-4])
    except ValueError:
        raise _UnconvertibleError(f"invalid event_time {text!r}") from None
    if moment.tzinfo is not None:
        raise _UnconvertibleError(f"invalid event_time {text!r}: expected no offset before 'UTC'")
    return (moment.replace(tzinfo=UTC) - _EPOCH) // _MS


def _uk_time(text: str) -> int:
    # UCI dates are UK wall-clock time. An hour that occurs twice when summer
    # time ends resolves to its first occurrence (fold=0), British Summer Time.
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _UnconvertibleError(f"invalid InvoiceDate {text!r}") from None
    if moment.tzinfo is not None:
        raise _UnconvertibleError(f"invalid InvoiceDate {text!r}: expected UK local time")
    return (moment.replace(tzinfo=_UK) - _EPOCH) // _MS


def _json_bytes(document: dict[str, Any]) -> bytes:
    # orjson 3.13 returns bytes that keep about 4 KiB of memory each, whatever
    # their length, measured on Linux with glibc. A sorted replay holds every
    # event, so each is copied to its own size: 70,000 events take 10 MB, not 290.
    return bytes(memoryview(orjson.dumps(document)))


def _in_range(name: str, text: str, ts: int) -> int:
    # The worker rejects these times too. Rejecting them here keeps them out
    # of the replay's order and its "auto" end clock.
    if not MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS:
        raise _UnconvertibleError(f"{name} {text!r} is outside the years 1990 to 2099")
    return ts


def _minor_units(value: Decimal, currency: str) -> int:
    scaled = value.scaleb(currency_exponent(currency))
    return int(scaled.to_integral_value(rounding=ROUND_HALF_EVEN))
