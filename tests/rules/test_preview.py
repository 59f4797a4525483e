"""Replaying events with the worker's partition clocks, and previewing a rulebook change."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.rules.engine import Engine
from tagger.rules.preview import DiffRow, Replay, preview
from tagger.rules.rulebook import Rulebook, parse_rulebook
from tagger.schemas.events import Event
from tagger.schemas.tag_change import TagChange

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "rules" / "default.yaml"


def _event(customer_id: str, type: str, ts: int, number: int, **fields: Any) -> Event:
    return Event(f"{customer_id}-{number}", customer_id, type, ts, **fields)  # type: ignore[arg-type]


def _variant(rulebook_text: str, old: str, new: str) -> Rulebook:
    assert old in rulebook_text
    return parse_rulebook(rulebook_text.replace(old, new), file="new.yaml")


@pytest.fixture(scope="module")
def default_text() -> str:
    return DEFAULT_PATH.read_text(encoding="utf-8")


def test_replay_matches_one_customer(default_rulebook: Rulebook) -> None:
    engine = Engine(default_rulebook)
    replay = Replay(engine)
    customer = Customer(Engine(default_rulebook))
    events: list[tuple[str, int, dict[str, Any]]] = [
        ("page_view", T0, {"category": "shoes"}),
        ("add_to_cart", T0 + MINUTE, {"product_id": "p1"}),
        ("purchase", T0 + 40 * MINUTE, {"amount": 120_000, "currency": "CNY"}),
    ]

    changes: list[TagChange] = []
    for number, (event_type, ts, fields) in enumerate(events):
        changes.extend(replay.apply(_event("c1", event_type, ts, number, **fields)))
        customer.send(event_type, ts, **fields)
    changes.extend(replay.finish(T0 + 100 * DAY))
    customer.tick(T0 + 100 * DAY)

    assert [(c.tag, c.action, c.at) for c in changes] == [
        (c.tag, c.action, c.at) for c in customer.changes
    ]


def test_replay_fires_other_customers_before_event(default_rulebook: Rulebook) -> None:
    replay = Replay(Engine(default_rulebook))
    replay.apply(_event("a", "add_to_cart", T0, 1, product_id="p1"))

    changes = replay.apply(_event("b", "page_view", T0 + 31 * MINUTE, 1))

    fired = [(c.customer_id, c.tag, c.at) for c in changes if c.tag == "hesitant"]
    assert fired == [("a", "hesitant", T0 + 30 * MINUTE)]


def test_replay_shared_clock_makes_event_late(default_rulebook: Rulebook) -> None:
    replay = Replay(Engine(default_rulebook))
    replay.apply(_event("a", "page_view", T0 + DAY, 1))

    changes = replay.apply(_event("b", "page_view", T0, 1))

    # One partition: b's event is behind the clock that a moved, so its changes hold from there.
    assert {c.at for c in changes} == {T0 + DAY}


def test_replay_partitions_keep_own_clocks(default_rulebook: Rulebook) -> None:
    replay = Replay(Engine(default_rulebook), partition_of=lambda customer: ord(customer[0]))
    replay.apply(_event("a", "page_view", T0 + DAY, 1))

    changes = replay.apply(_event("b", "page_view", T0, 1))

    assert {c.at for c in changes} == {T0}
    assert replay.clock("a") == T0 + DAY
    assert replay.clock("b") == T0


def test_replay_wall_caps_clock(default_rulebook: Rulebook) -> None:
    replay = Replay(Engine(default_rulebook), wall=T0)

    replay.apply(_event("a", "page_view", T0 + DAY, 1))

    assert replay.clock("a") == T0


def test_replay_finish_without_end_clock(default_rulebook: Rulebook) -> None:
    replay = Replay(Engine(default_rulebook))
    replay.apply(_event("a", "add_to_cart", T0, 1, product_id="p1"))

    assert replay.finish(None) == []
    assert [c.tag for c in replay.finish(T0 + 30 * MINUTE)] == ["hesitant"]


def test_preview_same_rulebook_no_diff(default_rulebook: Rulebook) -> None:
    events = [_event(f"c{n}", "add_to_cart", T0 + n, n, product_id="p1") for n in range(20)]

    report = preview(default_rulebook, default_rulebook, events, end_clock=T0 + DAY)

    assert report.tags == {}
    assert list(report.rows()) == []
    assert report.customers == 20
    assert report.customers_changed == 0
    assert report.changes_current == report.changes_new


def test_preview_shorter_cart_window(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "cart_age >= 30m", "cart_age >= 20m")
    events = [_event(f"c{n:02d}", "add_to_cart", T0 + n, n, product_id="p1") for n in range(8)]

    report = preview(default_rulebook, new, events, end_clock=T0 + 25 * MINUTE, samples=3)

    diff = report.tags["hesitant"]
    assert diff.added == 8
    assert diff.removed == 0
    assert diff.added_samples == ("c00", "c01", "c02")
    assert set(report.tags) == {"hesitant"}
    assert report.customers_changed == 8


def test_preview_rows(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "net_spend(180d) >= 1000.00", "net_spend(180d) >= 2000.00")
    events = [
        _event("big", "purchase", T0, 1, amount=150_000, currency="CNY"),
        _event("small", "purchase", T0 + 1, 1, amount=10_000, currency="CNY"),
    ]

    report = preview(default_rulebook, new, events, end_clock=None)

    assert list(report.rows()) == [
        DiffRow("big", "low_value", "added", None, T0),
        DiffRow("big", "medium_value", "removed", T0, None),
    ]


def test_preview_json_and_text(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "cart_age >= 30m", "cart_age >= 20m")
    events = [_event("c1", "add_to_cart", T0, 1, product_id="p1")]

    report = preview(default_rulebook, new, events, end_clock=T0 + 25 * MINUTE)

    summary = orjson.loads(orjson.dumps(report.to_json()))
    row = next(report.rows()).to_json()
    assert summary["tags"]["hesitant"]["added"] == 1
    assert summary["new_version"] == new.version
    assert row == {
        "customer_id": "c1",
        "tag": "hesitant",
        "change": "added",
        "current_since": None,
        "new_since": T0 + 20 * MINUTE,
    }
    assert "hesitant" in report.render_text()
    assert "added e.g. c1" in report.render_text()


def test_preview_counts_moved_since(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "cart_age >= 30m", "cart_age >= 20m")
    events = [_event(f"c{n}", "add_to_cart", T0, n, product_id="p1") for n in range(3)]

    report = preview(default_rulebook, new, events, end_clock=T0 + DAY)

    diff = report.tags["hesitant"]
    assert diff.moved == 3
    assert diff.added == 0
    assert list(report.rows()) == []
    assert report.customers_changed == 0


def test_preview_text_totals_per_rule(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "count(page_view, 7d) >= 3\n", "count(page_view, 7d) >= 2\n")
    events = [
        _event("c1", "page_view", T0 + n, n, category=category)
        for n, category in enumerate(["shoes", "shoes", "bags", "bags"])
    ]

    text = preview(default_rulebook, new, events, end_clock=None).render_text()

    assert "  browsing_interest:* (2 tags)  +2      -0      ~0" in text
    assert "  browsing_interest:shoes       +1      -0      ~0       added e.g. c1" in text


def test_preview_rejects_other_currency(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "currency: CNY", "currency: USD")

    with pytest.raises(ValueError, match="currency USD differs from the current CNY"):
        preview(default_rulebook, new, [], end_clock=None)


def test_preview_two_thousand_events_fast(default_rulebook: Rulebook, default_text: str) -> None:
    new = _variant(default_text, "count(page_view, 7d) >= 3", "count(page_view, 7d) >= 2")
    categories = ("shoes", "bags", "phones", "toys")
    events = [
        _event(f"c{n % 200}", "page_view", T0 + n * 1000, n, category=categories[n % 4])
        for n in range(2_000)
    ]

    started = time.perf_counter()
    report = preview(default_rulebook, new, events, end_clock=None)
    elapsed = time.perf_counter() - started

    assert report.events == 2_000
    # About 0.5 s on a shared 2-core machine; the bound leaves room for a busy one.
    assert elapsed < 3.0
