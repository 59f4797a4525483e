"""Tests of the file readers: REES46, UCI, JSON Lines, Taobao and CDNOW into events and bad rows."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from tagger.errors import ConfigError
from tagger.schemas.reasons import DEAD_LETTER_REASONS
from tagger.streams.formats import (
    INVALID_JSON,
    UNCONVERTIBLE_ROW,
    WRONG_FIELD_COUNT,
    BadRow,
    ConvertedEvent,
    Item,
    detect_format,
    read_items,
)

REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
CDNOW_HEADER = " customer_id  date number_of_cds  dollar_value"


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def events(items: list[Item]) -> list[ConvertedEvent]:
    return [item for item in items if isinstance(item, ConvertedEvent)]


def bad_rows(items: list[Item]) -> list[BadRow]:
    return [item for item in items if isinstance(item, BadRow)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# Detection ----------------------------------------------------------------


def test_detect_rees46(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", REES46_HEADER)

    assert detect_format(path) == "rees46"


def test_detect_uci_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbf" + UCI_HEADER.encode() + b"\r\n")

    assert detect_format(path) == "uci"


def test_detect_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"type": "page_view"}')

    assert detect_format(path) == "jsonl"


def test_detect_unknown_names_formats(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "user,item,category,behavior,time")

    with pytest.raises(ConfigError, match="rees46, uci, jsonl, taobao, cdnow"):
        detect_format(path)


def test_detect_taobao(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "999477,2200475,3607361,pv,1511848894")

    assert detect_format(path) == "taobao"


def test_detect_taobao_needs_known_behavior(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "999477,2200475,3607361,like,1511848894")

    with pytest.raises(ConfigError, match="cannot detect"):
        detect_format(path)


def test_detect_cdnow_header(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(CDNOW_HEADER.encode() + b"\r\n")

    assert detect_format(path) == "cdnow"


def test_detect_cdnow_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", " 00001 19970101  1   11.77")

    assert detect_format(path) == "cdnow"


def test_detect_cdnow_needs_eight_digit_date(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", " 00001 970101  1   11.77")

    with pytest.raises(ConfigError, match="cannot detect"):
        detect_format(path)


def test_explicit_format_checks_header(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", UCI_HEADER)

    with pytest.raises(ConfigError, match="expected the header"):
        list(read_items(path, fmt="rees46", currency="CNY"))


def test_unknown_format_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", UCI_HEADER)

    with pytest.raises(ConfigError, match="unknown format 'parquet'"):
        read_items(path, fmt="parquet", currency="CNY")


def test_unknown_currency_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", UCI_HEADER)

    with pytest.raises(ConfigError, match="invalid replay currency"):
        read_items(path, currency="XYZ")


def test_bad_row_reasons_are_dead_letter_reasons() -> None:
    for reason in (WRONG_FIELD_COUNT, UNCONVERTIBLE_ROW, INVALID_JSON):
        assert reason in DEAD_LETTER_REASONS


# REES46 ------------------------------------------------------------------


def test_rees46_maps_event_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.csv",
        REES46_HEADER,
        "2019-10-01 00:00:00 UTC,view,1,9,electronics.smartphone,apple,10.00,u1,s1",
        "2019-10-01 00:00:01 UTC,cart,1,9,electronics.smartphone,apple,10.00,u1,s1",
        "2019-10-01 00:00:02 UTC,remove_from_cart,1,9,,apple,10.00,u1,s1",
        "2019-10-01 00:00:03 UTC,purchase,1,9,,apple,10.00,u1,s1",
    )

    types = [event.type for event in events(list(read_items(path, currency="CNY")))]

    assert types == ["page_view", "add_to_cart", "remove_from_cart", "purchase"]


def test_rees46_view_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.csv",
        REES46_HEADER,
        "2019-10-01 00:00:01 UTC,view,44600062,21038,electronics.smartphone,,35.79,541312140,s1",
    )

    [event] = events(list(read_items(path, currency="CNY")))

    assert event.event() == {
        "event_id": f"rees46:{digest(path)}:2",
        "customer_id": "541312140",
        "type": "page_view",
        "ts": 1569888001000,
        "product_id": "44600062",
        "category": "electronics.smartphone",
        "price": "35.79",
    }
    assert event.customer_id == "541312140"
    assert event.line == 2
    assert event.ts == 1569888001000


def test_rees46_empty_category_left_out(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.csv", REES46_HEADER, "2019-10-01 00:00:00 UTC,view,1,9,,shiseido,35.79,u1,s1"
    )

    [event] = events(list(read_items(path, currency="CNY")))

    assert "category" not in event.event()


def test_rees46_purchase_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.csv",
        REES46_HEADER,
        "2019-10-01 00:02:14 UTC,purchase,1004856,2053,electronics.smartphone,samsung,130.76,"
        "543272936,8187d148-3c41-46d4-b0c0-9c08cd9dc564",
    )

    [event] = events(list(read_items(path, currency="USD")))
    fields = event.event()

    assert fields["amount"] == "130.76"
    assert fields["currency"] == "USD"
    assert fields["order_id"] == "8187d148-3c41-46d4-b0c0-9c08cd9dc564:1004856:1569888134000"


def test_rees46_identical_rows_stay_separate(tmp_path: Path) -> None:
    row = "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1"
    path = write(tmp_path, "r.csv", REES46_HEADER, row, row)

    ids = [event.event()["event_id"] for event in events(list(read_items(path, currency="CNY")))]

    assert ids == [f"rees46:{digest(path)}:2", f"rees46:{digest(path)}:3"]


def test_rees46_truncated_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.csv",
        REES46_HEADER,
        "2019-10-01 02:50:00 UTC,view,10900305,2053,appliances.kitchen.mixer,elenberg,25.71,5204",
    )

    [row] = bad_rows(list(read_items(path, currency="CNY")))

    assert row.reason == WRONG_FIELD_COUNT
    assert row.line == 2
    assert row.detail == "expected 9 fields, found 8"
    assert row.raw.endswith(b",25.71,5204")


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("2019-10-01 00:00:00 UTC,purchase,1,9,,b,0.00,u1,s1", "purchase with price 0"),
        ("2019-10-01 00:00:00 UTC,purchase,1,9,,b,0,u1,s1", "purchase with price 0"),
        ("2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,,s1", "missing user_id"),
        ("2019-10-01 00:00:00,view,1,9,,b,1.00,u1,s1", "invalid event_time"),
        ("2019-13-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1", "invalid event_time"),
        ("2019-10-01 00:00:00 UTC,view,1,9,,b,abc,u1,s1", "price"),
        ("2019-10-01 00:00:00 UTC,view,1,9,,b,1.005,u1,s1", "more than 2 decimals"),
        ("2019-10-01 00:00:00 UTC,view,1,9,,b,-1.00,u1,s1", "negative price"),
        ("2019-10-01 00:00:00 UTC,view,1,9,Bad Category,b,1.00,u1,s1", "invalid category_code"),
        ("2019-10-01 00:00:00 UTC,like,1,9,,b,1.00,u1,s1", "unknown event_type 'like'"),
        ("2019-10-01 00:00:00 UTC,purchase,1,9,,b,5.00,u1,", "cannot build an order id"),
    ],
)
def test_rees46_unconvertible_rows(tmp_path: Path, row: str, detail: str) -> None:
    path = write(tmp_path, "r.csv", REES46_HEADER, row)

    [bad] = bad_rows(list(read_items(path, currency="CNY")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert detail in bad.detail
    assert bad.line == 2


def test_rees46_price_zero_view_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", REES46_HEADER, "2019-10-01 00:00:00 UTC,view,1,9,,b,0,u1,s1")

    [event] = events(list(read_items(path, currency="CNY")))

    assert event.event()["price"] == "0.00"


def test_rees46_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.csv", REES46_HEADER, "", "2019-10-01 00:00:00 UTC,view,1,9,,b,1.00,u1,s1"
    )

    items = list(read_items(path, currency="CNY"))

    assert [item.line for item in items] == [3]


def test_rees46_invalid_utf8_row(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(
        REES46_HEADER.encode() + b"\n2019-10-01 00:00:00 UTC,view,1,9,,\xff,1.00,u1,s1\n"
    )

    [bad] = bad_rows(list(read_items(path, currency="CNY")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert "UTF-8" in bad.detail


# UCI Online Retail ---------------------------------------------------------


def test_uci_groups_invoice_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        UCI_HEADER,
        "536371,22086,PAPER CHAIN KIT,3,2010-12-01 09:00:00,0.10,13748,United Kingdom",
        "536372,22114,HOT WATER BOTTLE,1,2010-12-01 09:05:00,5.00,15291,United Kingdom",
        '536371,22087,"CARD, BIRTHDAY",2,2010-12-01 09:01:00,0.20,13748,United Kingdom',
        "536371,22088,RIBBON,1,2010-12-01 09:00:00,0.30,13748,United Kingdom",
    )

    converted = events(list(read_items(path, currency="GBP")))
    first = converted[0].event()

    assert len(converted) == 2
    assert first == {
        "event_id": "uci:536371",
        "customer_id": "13748",
        "type": "purchase",
        "ts": 1291194000000,
        "order_id": "536371",
        "amount": "1.00",
        "currency": "GBP",
    }
    assert converted[0].line == 2
    assert converted[0].rows == 3


def test_uci_cancellation_is_refund(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        UCI_HEADER,
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.50,14527,United Kingdom",
        "C536379,22,MUG,-2,2010-12-01 09:41:00,1.25,14527,United Kingdom",
    )

    [event] = events(list(read_items(path, currency="GBP")))
    fields = event.event()

    assert fields["type"] == "refund"
    assert fields["amount"] == "30.00"
    assert fields["order_id"] == "C536379"
    assert fields["event_id"] == "uci:C536379"


def test_uci_summer_time(tmp_path: Path) -> None:
    path = write(
        tmp_path, "u.csv", UCI_HEADER, "550000,1,X,1,2011-06-01 12:00:00,1.00,12345,United Kingdom"
    )

    [event] = events(list(read_items(path, currency="GBP")))

    # 12:00 British Summer Time is 11:00 UTC.
    assert event.ts == 1306926000000


def test_uci_winter_time(tmp_path: Path) -> None:
    path = write(
        tmp_path, "u.csv", UCI_HEADER, "550000,1,X,1,2011-01-05 12:00:00,1.00,12345,United Kingdom"
    )

    [event] = events(list(read_items(path, currency="GBP")))

    assert event.ts == 1294228800000


def test_uci_float_customer_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        UCI_HEADER,
        "550000,1,X,1,2011-01-05 12:00:00,1.00,17850.0,United Kingdom",
    )

    [event] = events(list(read_items(path, currency="GBP")))

    assert event.customer_id == "17850"


def test_uci_missing_customer_is_bad_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        UCI_HEADER,
        "550000,1,X,1,2011-01-05 12:00:00,1.00,,United Kingdom",
        "550000,2,Y,1,2011-01-05 12:00:00,2.00,12345,United Kingdom",
    )

    items = list(read_items(path, currency="GBP"))
    [bad] = bad_rows(items)
    [event] = events(items)

    assert bad.reason == UNCONVERTIBLE_ROW
    assert bad.detail == "missing CustomerID"
    assert bad.line == 2
    assert event.event()["amount"] == "2.00"


@pytest.mark.parametrize(
    ("lines", "detail"),
    [
        (["550000,1,X,1,2011-01-05 12:00:00,0,12345,UK"], "invoice 550000 of 1 lines totals 0"),
        (["C550000,1,X,1,2011-01-05 12:00:00,1.00,12345,UK"], "cancellation C550000"),
        (
            [
                "550000,1,X,1,2011-01-05 12:00:00,1.00,1,UK",
                "550000,1,X,1,2011-01-05 12:00:00,1,2,UK",
            ],
            "has lines of customers 1 and 2",
        ),
    ],
)
def test_uci_bad_invoice(tmp_path: Path, lines: list[str], detail: str) -> None:
    path = write(tmp_path, "u.csv", UCI_HEADER, *lines)

    [bad] = bad_rows(list(read_items(path, currency="GBP")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert detail in bad.detail
    assert bad.line == 2
    assert bad.rows == len(lines)


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("550000,1,X,one,2011-01-05 12:00:00,1.00,12345,UK", "invalid Quantity 'one'"),
        ("550000,1,X,1,2011-01-05 12:00:00,1.0.0,12345,UK", "invalid UnitPrice"),
        ("550000,1,X,1,05/01/2011 12:00,1.00,12345,UK", "invalid InvoiceDate"),
    ],
)
def test_uci_unconvertible_rows(tmp_path: Path, row: str, detail: str) -> None:
    path = write(tmp_path, "u.csv", UCI_HEADER, row)

    [bad] = bad_rows(list(read_items(path, currency="GBP")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert detail in bad.detail


def test_uci_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", UCI_HEADER, "550000,1,X,1,2011-01-05 12:00:00,1.00,12345")

    [bad] = bad_rows(list(read_items(path, currency="GBP")))

    assert bad.reason == WRONG_FIELD_COUNT


def test_uci_quoted_newline_keeps_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        UCI_HEADER,
        '550000,1,"TWO',
        'LINES",1,2011-01-05 12:00:00,1.00,12345,UK',
        "550001,1,X,1,2011-01-05 12:00:00,1.00,12345,UK",
    )

    lines = [event.line for event in events(list(read_items(path, currency="GBP")))]

    assert lines == [2, 4]


# Taobao UserBehavior ---------------------------------------------------------


def test_taobao_maps_behaviors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "1,10,7,pv,1511848894",
        "1,10,7,fav,1511848895",
        "1,10,7,cart,1511848896",
        "1,10,7,buy,1511848897",
    )

    types = [event.type for event in events(list(read_items(path, currency="CNY")))]

    assert types == ["page_view", "page_view", "add_to_cart", "purchase"]


def test_taobao_view_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "999477,2200475,3607361,pv,1511848894")

    [event] = events(list(read_items(path, currency="CNY")))

    assert event.event() == {
        "event_id": f"taobao:{digest(path)}:1",
        "customer_id": "999477",
        "type": "page_view",
        "ts": 1511848894000,
        "product_id": "2200475",
        "category": "taobao.3607361",
    }
    assert event.customer_id == "999477"
    assert event.ts == 1511848894000


def test_taobao_buy_is_nominal_purchase(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "999477,2200475,3607361,buy,1511848894")

    [event] = events(list(read_items(path, currency="CNY")))
    fields = event.event()

    assert fields["amount"] == "1.00"
    assert fields["currency"] == "CNY"
    assert fields["order_id"] == "999477:2200475:1511848894000"


def test_taobao_nominal_in_currency_units(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "999477,2200475,3607361,buy,1511848894")

    [event] = events(list(read_items(path, currency="JPY")))

    assert event.event()["amount"] == "1"


def test_taobao_empty_category_left_out(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "1,10,,pv,1511848894")

    [event] = events(list(read_items(path, fmt="taobao", currency="CNY")))

    assert "category" not in event.event()


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        ("1,10,7,like,1511848894", "unknown behavior_type 'like'"),
        ("1,10,7,pv,2017-11-28", "invalid timestamp '2017-11-28'"),
        ("1,10,7,pv,1511848894000", "outside the years 1990 to 2099"),
        ("1,10,7,pv,0", "outside the years 1990 to 2099"),
        ("1,10,7,pv," + "9" * 5000, "invalid timestamp"),
        ("1,10,books,pv,1511848894", "invalid category_id 'books'"),
        (",10,7,pv,1511848894", "missing user_id"),
        ("1,,7,pv,1511848894", "missing item_id"),
    ],
)
def test_taobao_unconvertible_rows(tmp_path: Path, row: str, detail: str) -> None:
    path = write(tmp_path, "t.csv", "1,10,7,pv,1511848894", row)

    [bad] = bad_rows(list(read_items(path, fmt="taobao", currency="CNY")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert detail in bad.detail
    assert bad.line == 2


def test_taobao_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "1,10,7,pv,1511848894", "1,10,7,pv")

    [bad] = bad_rows(list(read_items(path, currency="CNY")))

    assert bad.reason == WRONG_FIELD_COUNT
    assert bad.detail == "expected 5 fields, found 4"


# CDNOW -----------------------------------------------------------------------


def test_cdnow_purchase_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(CDNOW_HEADER.encode() + b"\r\n 00002 19970112  5   77.00\r\n")

    [event] = events(list(read_items(path, currency="USD")))

    assert event.event() == {
        "event_id": f"cdnow:{digest(path)}:2",
        "customer_id": "00002",
        "type": "purchase",
        "ts": 853027200000,
        "order_id": "00002:19970112:2",
        "amount": "77.00",
        "currency": "USD",
        "quantity": 5,
    }
    assert event.line == 2


def test_cdnow_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "c.txt", " 00001 19970101  1   11.77")

    [event] = events(list(read_items(path, currency="USD")))

    assert event.line == 1
    assert event.ts == 852076800000


def test_cdnow_same_day_rows_stay_separate(tmp_path: Path) -> None:
    path = write(
        tmp_path, "c.txt", CDNOW_HEADER, " 00002 19970112  1   12.00", " 00002 19970112  5   77.00"
    )

    orders = [event.event()["order_id"] for event in events(list(read_items(path, currency="USD")))]

    assert orders == ["00002:19970112:2", "00002:19970112:3"]


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        (" 00455 19970102  1    0.00", "purchase with dollar_value 0.00"),
        (" 00455 19970102  1   -5.00", "purchase with dollar_value -5.00"),
        (" 00455 19970102  1   1.005", "more than 2 decimals"),
        (" 00455 19970102  1   ten", "dollar_value"),
        (" 00455 19970230  1   5.00", "invalid date '19970230': no such day"),
        (" 00455 1997-01-02  1   5.00", "invalid date '1997-01-02'"),
        (" 00455 19700102  1   5.00", "outside the years 1990 to 2099"),
        (" 00455 19970102  0   5.00", "invalid number_of_cds '0'"),
        (" 00455 19970102  x   5.00", "invalid number_of_cds 'x'"),
        (" 00455 19970102  " + "9" * 5000 + " 5.00", "invalid number_of_cds"),
    ],
)
def test_cdnow_unconvertible_rows(tmp_path: Path, row: str, detail: str) -> None:
    path = write(tmp_path, "c.txt", CDNOW_HEADER, row)

    [bad] = bad_rows(list(read_items(path, currency="USD")))

    assert bad.reason == UNCONVERTIBLE_ROW
    assert detail in bad.detail
    assert bad.line == 2
    assert bad.raw == row.encode()


def test_cdnow_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, "c.txt", CDNOW_HEADER, " 00455 19970102  1")

    [bad] = bad_rows(list(read_items(path, currency="USD")))

    assert bad.reason == WRONG_FIELD_COUNT
    assert bad.detail == "expected 4 fields, found 3"


def test_cdnow_header_only_on_line_one(tmp_path: Path) -> None:
    path = write(tmp_path, "c.txt", " 00001 19970101  1   11.77", CDNOW_HEADER)

    [bad] = bad_rows(list(read_items(path, currency="USD")))

    assert bad.line == 2


# JSON Lines ----------------------------------------------------------------


def test_jsonl_line_kept_as_is(tmp_path: Path) -> None:
    line = (
        '{"event_id":"e1", "customer_id":"c1","type":"page_view","ts":"2024-01-01T00:00:00+08:00"}'
    )
    path = write(tmp_path, "e.jsonl", line)

    [event] = events(list(read_items(path, currency="CNY")))

    assert event.value == line.encode()
    assert event.customer_id == "c1"
    assert event.ts == 1704038400000


def test_jsonl_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path, "e.jsonl", '{"customer_id":"c1","ts":1}', "  ", '{"customer_id":"c2","ts":2}'
    )

    lines = [item.line for item in read_items(path, currency="CNY")]

    assert lines == [1, 3]


def test_jsonl_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, "e.jsonl", '{"customer_id":"c1","ts":1}', "{not json")

    [bad] = bad_rows(list(read_items(path, currency="CNY")))

    assert bad.reason == INVALID_JSON
    assert bad.line == 2
    assert bad.raw == b"{not json"


def test_jsonl_clock_line_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "e.jsonl", '{"type":"clock","ts":5}')

    [bad] = bad_rows(list(read_items(path, currency="CNY")))

    assert bad.reason == UNCONVERTIBLE_ROW


def test_jsonl_unreadable_time_follows_previous(tmp_path: Path) -> None:
    path = write(
        tmp_path, "e.jsonl", '{"customer_id":"c1","ts":7}', '{"customer_id":"c1","ts":"soon"}'
    )

    times = [event.ts for event in events(list(read_items(path, currency="CNY")))]

    assert times == [7, 7]


def test_jsonl_without_customer_has_no_key(tmp_path: Path) -> None:
    path = write(tmp_path, "e.jsonl", "[1, 2]")

    [event] = events(list(read_items(path, fmt="jsonl", currency="CNY")))

    assert event.customer_id is None
    assert event.type == "unknown"


# The real samples ------------------------------------------------------------


@pytest.mark.data
def test_rees46_sample(sample_data: Path) -> None:
    items = list(read_items(sample_data / "rees46_multicat_2019-10_head.csv", currency="CNY"))
    [bad] = bad_rows(items)
    types = Counter(event.type for event in events(items))

    assert bad.reason == WRONG_FIELD_COUNT
    assert bad.line == 17436
    assert types == {"page_view": 17055, "add_to_cart": 165, "purchase": 214}


@pytest.mark.data
def test_uci_sample(sample_data: Path) -> None:
    items = list(read_items(sample_data / "online_retail_customers_sample.csv", currency="GBP"))
    converted = events(items)
    refund_rows = sum(event.rows for event in converted if event.type == "refund")
    customers = {event.customer_id for event in converted}

    assert bad_rows(items) == []
    assert len(converted) == 1815
    assert sum(event.rows for event in converted) == 32397
    assert refund_rows == 634
    assert len(customers) == 392


@pytest.mark.data
def test_uci_sample_amounts_exact(sample_data: Path) -> None:
    path = sample_data / "online_retail_customers_sample.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = sum(Decimal(row["Quantity"]) * Decimal(row["UnitPrice"]) for row in rows)

    total = Decimal(0)
    for event in events(list(read_items(path, currency="GBP"))):
        amount = Decimal(event.event()["amount"])
        total += -amount if event.type == "refund" else amount

    assert total == expected


@pytest.mark.data
def test_taobao_sample(sample_data: Path) -> None:
    items = list(read_items(sample_data / "taobao_userbehavior_tail10k.csv", currency="CNY"))
    types = Counter(event.type for event in events(items))
    users = {event.customer_id for event in events(items)}

    assert bad_rows(items) == []
    # 9,046 views and 212 favourites, which replay as views.
    assert types == {"page_view": 9258, "add_to_cart": 536, "purchase": 206}
    assert len(users) == 114


@pytest.mark.data
def test_cdnow_sample(sample_data: Path) -> None:
    items = list(read_items(sample_data / "cdnow_master.txt", currency="USD"))
    bad = bad_rows(items)
    converted = events(items)

    assert len(converted) == 69_579
    assert len(bad) == 80
    assert {row.reason for row in bad} == {UNCONVERTIBLE_ROW}
    assert all(row.raw.endswith(b" 0.00") for row in bad)


@pytest.mark.data
def test_cdnow_sample_amounts_exact(sample_data: Path) -> None:
    path = sample_data / "cdnow_master.txt"
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    expected = sum(Decimal(row.split()[3]) for row in rows)

    converted = events(list(read_items(path, currency="USD")))
    total = sum(Decimal(event.event()["amount"]) for event in converted)

    assert total == expected
