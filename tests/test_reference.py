"""Tests of the independent reference: the sample data's published facts and the tag boundaries."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from reference import (
    DAY,
    MINUTE,
    Tags,
    cdnow_facts,
    hesitant_customers,
    rees46_cart_facts,
    reference_cdnow,
    reference_events,
    reference_rees46,
    reference_taobao,
    reference_uci,
    sample_data_dir,
    sample_data_path,
    taobao_cart_then_buy,
    uci_facts,
)

REES46 = "rees46_multicat_2019-10_head.csv"
UCI = "online_retail_customers_sample.csv"
TAOBAO = "taobao_userbehavior_tail10k.csv"
CDNOW = "cdnow_master.txt"
# Last event time of each sample, epoch ms.
REES46_LAST_TS = 1569898200000  # 2019-10-01T02:50:00Z
UCI_LAST_TS = 1323435000000  # 2011-12-09T12:50:00Z
TAOBAO_LAST_TS = 1512316768000  # 2017-12-03T15:59:28Z
CDNOW_LAST_TS = 899164800000  # 1998-06-30T00:00:00Z
T0 = 1_700_000_000_000


def data_file(name: str) -> Path:
    folder = sample_data_dir()
    if folder is None:
        pytest.skip(
            f"sample data folder {sample_data_path()} is absent: set TAGGER_SAMPLE_DATA to use it"
        )
    return folder / name


def event(kind: str, ts: int, customer: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"customer_id": customer, "type": kind, "ts": ts, **fields}


def purchase(ts: int, amount: str, customer: str = "c1") -> dict[str, Any]:
    return event("purchase", ts, customer, amount=amount, currency="CNY")


# The samples' published facts ------------------------------------------------


@pytest.mark.data
def test_rees46_cart_facts() -> None:
    carting, unbought = rees46_cart_facts(data_file(REES46))

    assert len(carting) == 111
    assert len(unbought) == 53


@pytest.mark.data
def test_rees46_hesitant_count() -> None:
    path = data_file(REES46)
    _, unbought = rees46_cart_facts(path)

    tags = reference_rees46(path, REES46_LAST_TS + 60 * MINUTE)

    assert len(hesitant_customers(tags)) == 53
    assert hesitant_customers(tags) == unbought


@pytest.mark.data
def test_rees46_hesitant_at_is_cart_plus_30m() -> None:
    path = data_file(REES46)
    tags = reference_rees46(path, REES46_LAST_TS + 60 * MINUTE)

    cart_times: dict[str, set[int]] = defaultdict(set)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["event_type"] == "cart":
                moment = datetime.fromisoformat(row["event_time"].replace(" UTC", "+00:00"))
                cart_times[row["user_id"]].add(int(moment.timestamp()) * 1000)

    for customer in hesitant_customers(tags):
        since = tags[customer]["hesitant"]
        assert since - 30 * MINUTE in cart_times[customer], customer


@pytest.mark.data
def test_rees46_before_deadline_not_hesitant() -> None:
    tags = reference_rees46(data_file(REES46), REES46_LAST_TS)

    assert len(hesitant_customers(tags)) < 53


@pytest.mark.data
def test_rees46_every_user_tagged() -> None:
    tags = reference_rees46(data_file(REES46), REES46_LAST_TS + 60 * MINUTE)

    assert len(tags) == 4504


@pytest.mark.data
def test_uci_facts() -> None:
    customers, invoices, cancellations = uci_facts(data_file(UCI))

    assert customers == 392
    assert invoices == 1815
    assert cancellations == 634


@pytest.mark.data
def test_uci_dormant_count() -> None:
    tags = reference_uci(data_file(UCI), UCI_LAST_TS + 60 * MINUTE)
    dormant = [customer for customer, held in tags.items() if "dormant" in held]

    # The data's description: 131 customers bought last 90 or more days before the end.
    assert len(dormant) == 131


@pytest.fixture(scope="module")
def cdnow_tags() -> Tags:
    """The CDNOW reference an hour past the data: about 4 s, so computed once."""
    return reference_cdnow(data_file(CDNOW), CDNOW_LAST_TS + 60 * MINUTE)


@pytest.mark.data
def test_taobao_every_user_tagged() -> None:
    tags = reference_taobao(data_file(TAOBAO), TAOBAO_LAST_TS + 60 * MINUTE)

    assert len(tags) == 114


@pytest.mark.data
def test_taobao_hesitant_count() -> None:
    tags = reference_taobao(data_file(TAOBAO), TAOBAO_LAST_TS + 60 * MINUTE)

    # The data's description: 61 of the 81 carting users bought nothing after their last cart.
    assert len(hesitant_customers(tags)) == 61


@pytest.mark.data
def test_taobao_cart_then_buy_days_later() -> None:
    found = taobao_cart_then_buy(data_file(TAOBAO), 2 * DAY)

    assert found


@pytest.mark.data
def test_taobao_hesitant_cleared_by_late_buy(tmp_path: Path) -> None:
    path = data_file(TAOBAO)
    user, (cart_at, bought_at) = sorted(taobao_cart_then_buy(path, 2 * DAY).items())[0]
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [row.split(",") for row in lines if row.split(",")[0] == user]
    before = tmp_path / "before.csv"
    before.write_text(
        "".join(",".join(r) + "\n" for r in rows if int(r[4]) * 1000 < bought_at),
        encoding="utf-8",
    )
    until = tmp_path / "until.csv"
    until.write_text(
        "".join(",".join(r) + "\n" for r in rows if int(r[4]) * 1000 <= bought_at),
        encoding="utf-8",
    )

    held_before = reference_taobao(before, bought_at - 1)[user]
    held_at = reference_taobao(until, bought_at)[user]

    assert held_before["hesitant"] == cart_at + 30 * MINUTE
    assert "hesitant" not in held_at


@pytest.mark.data
def test_cdnow_facts() -> None:
    facts = cdnow_facts(data_file(CDNOW), "19980630")

    assert facts.customers == 23_570
    assert facts.zero_dollar_rows == 80
    # The data's description counts every row: 20,269 last bought 90 or more days before the end.
    assert facts.last_row_90_days_old == 20_269


@pytest.mark.data
def test_cdnow_dormant_count(cdnow_tags: Tags) -> None:
    facts = cdnow_facts(data_file(CDNOW), "19980630")
    dormant = [customer for customer, held in cdnow_tags.items() if "dormant" in held]

    # Zero-dollar rows are no purchase, so customers with only those hold no tag at all.
    assert len(dormant) == facts.last_row_90_days_old - facts.zero_dollar_only_customers
    assert len(cdnow_tags) == facts.customers - facts.zero_dollar_only_customers


def test_taobao_fav_counts_as_view(tmp_path: Path) -> None:
    path = tmp_path / "taobao.csv"
    path.write_text(
        "1,10,7,pv,1511848894\n1,11,7,fav,1511848895\n1,12,7,fav,1511848896\n",
        encoding="utf-8",
    )

    held = reference_taobao(path, 1511848896000)["1"]

    assert held["browsing_interest:taobao.7"] == 1511848896000


def test_taobao_buy_is_nominal(tmp_path: Path) -> None:
    path = tmp_path / "taobao.csv"
    path.write_text("1,10,7,buy,1511848894\n", encoding="utf-8")

    held = reference_taobao(path, 1511848894000)["1"]

    assert held["low_value"] == 1511848894000


def test_cdnow_row_at_midnight_utc(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_text(
        " customer_id  date number_of_cds  dollar_value\r\n 00007 19970301  2   0.00\r\n"
        " 00007 19970302  2   1200.00\r\n",
        encoding="utf-8",
    )
    midnight = 857260800000  # 1997-03-02T00:00:00Z

    held = reference_cdnow(path, midnight + 100 * DAY)["00007"]

    assert held["dormant"] == midnight + 90 * DAY
    assert held["medium_value"] == midnight


# Boundaries of the default tags ----------------------------------------------


def test_dormant_when_window_closes() -> None:
    events = [purchase(T0, "10.00")]

    assert "dormant" in reference_events(events, T0 + 90 * DAY)["c1"]
    assert "existing" in reference_events(events, T0 + 90 * DAY - 1)["c1"]


def test_dormant_since_is_window_close() -> None:
    tags = reference_events([purchase(T0, "10.00")], T0 + 100 * DAY)

    assert tags["c1"]["dormant"] == T0 + 90 * DAY


def test_potential_without_purchase() -> None:
    tags = reference_events([event("page_view", T0)], T0)

    assert tags["c1"] == {"potential": T0, "active": T0}


def test_hesitant_at_deadline() -> None:
    events = [event("add_to_cart", T0, product_id="p1")]

    assert "hesitant" not in reference_events(events, T0 + 30 * MINUTE - 1)["c1"]
    assert reference_events(events, T0 + 30 * MINUTE)["c1"]["hesitant"] == T0 + 30 * MINUTE


def test_purchase_at_deadline_clears_hesitant() -> None:
    events = [event("add_to_cart", T0, product_id="p1"), purchase(T0 + 30 * MINUTE, "5.00")]

    assert "hesitant" not in reference_events(events, T0 + DAY)["c1"]


def test_purchase_before_deadline_prevents_hesitant() -> None:
    events = [event("add_to_cart", T0, product_id="p1"), purchase(T0 + MINUTE, "5.00")]

    assert "hesitant" not in reference_events(events, T0 + DAY)["c1"]


def test_remove_from_cart_clears_hesitant() -> None:
    events = [
        event("add_to_cart", T0, product_id="p1"),
        event("remove_from_cart", T0 + MINUTE, product_id="p1"),
    ]

    assert "hesitant" not in reference_events(events, T0 + DAY)["c1"]


def test_hesitant_uses_oldest_item() -> None:
    events = [
        event("add_to_cart", T0, product_id="p1"),
        event("add_to_cart", T0 + 10 * MINUTE, product_id="p2"),
        event("add_to_cart", T0 + 20 * MINUTE, product_id="p1"),
    ]

    assert reference_events(events, T0 + DAY)["c1"]["hesitant"] == T0 + 30 * MINUTE


@pytest.mark.parametrize(
    ("amount", "tier"),
    [("0.01", "low_value"), ("1000.00", "medium_value"), ("5000.00", "high_value")],
)
def test_value_tiers(amount: str, tier: str) -> None:
    tags = reference_events([purchase(T0, amount)], T0)

    assert tier in tags["c1"]


def test_refund_lowers_tier() -> None:
    events = [
        purchase(T0, "1000.00"),
        event("refund", T0 + DAY, amount="0.01", currency="CNY"),
    ]

    tags = reference_events(events, T0 + DAY)

    assert tags["c1"]["low_value"] == T0 + DAY
    assert "medium_value" not in tags["c1"]


def test_refund_floors_spend_at_zero() -> None:
    events = [purchase(T0, "10.00"), event("refund", T0 + DAY, amount="50.00", currency="CNY")]

    tags = reference_events(events, T0 + DAY)

    assert not {"low_value", "medium_value", "high_value"} & set(tags["c1"])


def test_vip_by_spend_needs_five_purchases() -> None:
    four = [purchase(T0 + n, "5000.00") for n in range(4)]
    five = [*four, purchase(T0 + 4, "1.00")]

    assert "vip" not in reference_events(four, T0 + DAY)["c1"]
    assert reference_events(five, T0 + DAY)["c1"]["vip"] == T0 + 4


def test_vip_by_member_level() -> None:
    events = [event("customer_update", T0, attributes={"member_level": "vip"})]

    assert "vip" in reference_events(events, T0)["c1"]


def test_browsing_interest_needs_three_views() -> None:
    views = [event("page_view", T0 + n, category="a.b") for n in range(3)]

    assert "browsing_interest:a.b" not in reference_events(views[:2], T0 + DAY)["c1"]
    assert reference_events(views, T0 + DAY)["c1"]["browsing_interest:a.b"] == T0 + 2


def test_browsing_interest_window_edge() -> None:
    views = [event("page_view", T0 + n, category="a.b") for n in range(3)]

    assert "browsing_interest:a.b" in reference_events(views, T0 + 7 * DAY - 1)["c1"]
    assert "browsing_interest:a.b" not in reference_events(views, T0 + 7 * DAY)["c1"]


def test_browsing_interest_top_five_ties_to_recent() -> None:
    categories = ["c0", "c1", "c2", "c3", "c4", "c5"]
    views = [
        event("page_view", T0 + 10 * index + n, category=category)
        for index, category in enumerate(categories)
        for n in range(3)
    ]

    held = reference_events(views, T0 + DAY)["c1"]
    interests = {tag for tag in held if tag.startswith("browsing_interest:")}

    assert interests == {f"browsing_interest:{category}" for category in categories[1:]}


def test_windowed_tags_expire_at_30_days() -> None:
    events = [purchase(T0, "10.00"), event("campaign_join", T0, campaign_id="x")]

    held = reference_events(events, T0 + 30 * DAY)["c1"]

    assert not {"recent_buyer", "campaign_participant", "active"} & set(held)


def test_end_clock_before_last_event_rejected() -> None:
    with pytest.raises(ValueError, match="before the last event"):
        reference_events([purchase(T0, "10.00")], T0 - 1)


def test_uci_reference_uses_uk_time(tmp_path: Path) -> None:
    path = tmp_path / "uci.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "550000,1,X,2,2011-06-01 12:00:00,600.00,12345,United Kingdom\n"
        "C550001,1,X,-1,2011-06-02 12:00:00,300.00,12345,United Kingdom\n",
        encoding="utf-8",
    )
    bought = 1306926000000  # 2011-06-01T11:00:00Z: noon British Summer Time

    held = reference_uci(path, bought + 2 * DAY)["12345"]

    assert held["existing"] == bought
    assert held["low_value"] == bought + DAY
