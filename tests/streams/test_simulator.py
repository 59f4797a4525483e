"""Tests of the shopper simulator: determinism, valid events and every default tag exercised."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import pytest
from reference import Tags, reference_events

from tagger.errors import InvalidEvent
from tagger.schemas.decode import decode_event
from tagger.streams.simulator import DEFAULT_START_MS, PERSONAS, persona_of, simulate

HOUR = 3_600_000
DEFAULT_TAGS = (
    "dormant",
    "existing",
    "potential",
    "high_value",
    "medium_value",
    "low_value",
    "vip",
    "hesitant",
    "browsing_interest",
    "recent_buyer",
    "campaign_participant",
    "active",
)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return simulate()


@pytest.fixture(scope="module")
def final_tags(events: list[dict[str, Any]]) -> Tags:
    return reference_events(events, events[-1]["ts"] + HOUR)


def test_same_seed_same_events() -> None:
    assert simulate(seed=3, customers=40) == simulate(seed=3, customers=40)


def test_other_seed_other_events() -> None:
    assert simulate(seed=3, customers=40) != simulate(seed=4, customers=40)


def test_every_persona_shows_up(events: list[dict[str, Any]]) -> None:
    personas = {persona_of(event["customer_id"]) for event in events}

    assert personas == set(PERSONAS)


def test_few_customers_take_personas_in_order() -> None:
    personas = {persona_of(event["customer_id"]) for event in simulate(customers=2)}

    assert personas == set(PERSONAS[:2])


def test_events_sorted_by_time(events: list[dict[str, Any]]) -> None:
    times = [event["ts"] for event in events]

    assert times == sorted(times)


def test_events_inside_period(events: list[dict[str, Any]]) -> None:
    assert events[0]["ts"] >= DEFAULT_START_MS
    assert events[-1]["ts"] < DEFAULT_START_MS + 120 * 24 * HOUR


def test_event_ids_count_up(events: list[dict[str, Any]]) -> None:
    assert [event["event_id"] for event in events] == [f"sim:7:{n}" for n in range(len(events))]


def test_every_event_decodes(events: list[dict[str, Any]]) -> None:
    failures = []
    for event in events:
        try:
            decode_event(orjson.dumps(event), key=event["customer_id"].encode(), currency="CNY")
        except InvalidEvent as exc:
            failures.append((event["event_id"], str(exc)))

    assert failures == []


def test_currency_argument_used() -> None:
    currencies = {
        event["currency"] for event in simulate(customers=20, currency="USD") if "currency" in event
    }

    assert currencies == {"USD"}


def test_every_default_tag_reached(final_tags: Tags) -> None:
    reached = {tag.split(":")[0] for held in final_tags.values() for tag in held}

    for tag in DEFAULT_TAGS:
        assert tag in reached, tag


@pytest.mark.parametrize(
    ("persona", "tag"),
    [
        ("window_shopper", "browsing_interest"),
        ("window_shopper", "potential"),
        ("hesitant_carter", "hesitant"),
        ("loyal_buyer", "recent_buyer"),
        ("loyal_buyer", "existing"),
        ("big_spender", "vip"),
        ("big_spender", "high_value"),
        ("lapsed", "dormant"),
        ("campaign_joiner", "campaign_participant"),
        ("refunder", "low_value"),
    ],
)
def test_persona_reaches_its_tag(final_tags: Tags, persona: str, tag: str) -> None:
    by_persona: dict[str, set[str]] = defaultdict(set)
    for customer, held in final_tags.items():
        by_persona[persona_of(customer)].update(name.split(":")[0] for name in held)

    assert tag in by_persona[persona]


def test_lapsed_are_all_dormant(final_tags: Tags) -> None:
    lapsed = {
        customer: held for customer, held in final_tags.items() if customer.startswith("lapsed")
    }

    assert all("dormant" in held for held in lapsed.values())


def test_vip_both_ways(events: list[dict[str, Any]], final_tags: Tags) -> None:
    updated = {event["customer_id"] for event in events if event["type"] == "customer_update"}
    vips = {customer for customer, held in final_tags.items() if "vip" in held}

    assert vips & updated
    assert vips - updated


def test_negative_customers_rejected() -> None:
    with pytest.raises(ValueError, match="customers must be 0 or more"):
        simulate(customers=-1)
