"""Engine behaviour beyond single tags: dedup, outbox, change ids, manual tags, time edges."""

from __future__ import annotations

from collections.abc import Callable

from rule_helpers import DAY, HOUR, MINUTE, NOW, T0, TOPIC, Customer

from tagger.rules.engine import DEDUP_MAX_AGE_MS, DEDUP_MAX_EVENTS, Engine, Position
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import decode_state, encode_state
from tagger.schemas.events import Event
from tagger.schemas.tag_change import encode_tag_change


def _event(event_id: str, ts: int, type: str = "page_view", **fields: object) -> Event:
    return Event(event_id=event_id, customer_id="c1", type=type, ts=ts, **fields)  # type: ignore[arg-type]


def test_same_position_is_duplicate(customer: Customer) -> None:
    engine = customer.engine
    event = _event("a", T0)
    first = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)
    before = encode_state(customer.state)

    again = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)

    assert again.duplicate
    assert again.changes == first.changes
    assert encode_state(customer.state) == before


def test_outbox_reemission_byte_identical(customer: Customer) -> None:
    engine = customer.engine
    event = _event("a", T0, "purchase", amount=512_340, currency="CNY")
    first = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)
    restored = decode_state(encode_state(customer.state))

    again = engine.apply(restored, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW + 999)

    assert [encode_tag_change(c) for c in again.changes] == [
        encode_tag_change(c) for c in first.changes
    ]


def test_outbox_survives_start_batch_until_next_change(customer: Customer) -> None:
    engine = customer.engine
    event = _event("a", T0)
    first = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)

    engine.start_batch(customer.state)
    again = engine.apply(customer.state, event, position=Position(TOPIC, 0, 7), clock=T0, now=NOW)

    assert again.changes == first.changes


def test_reemitted_outbox_kept_with_new_changes(customer: Customer) -> None:
    """A batch that re-emits a redelivered event's changes must keep them in the outbox.

    Otherwise a crash before that batch's output is flushed would lose them:
    the next redelivery would find only the newer changes.
    """
    engine = customer.engine
    first = engine.apply(
        customer.state, _event("a", T0), position=Position(TOPIC, 0, 7), clock=T0, now=NOW
    )
    engine.start_batch(customer.state)
    engine.apply(customer.state, _event("a", T0), position=Position(TOPIC, 0, 7), clock=T0, now=NOW)

    second = engine.apply(
        customer.state,
        _event("b", T0 + 1, "purchase", amount=1, currency="CNY"),
        position=Position(TOPIC, 0, 8),
        clock=T0 + 1,
        now=NOW,
    )

    assert [change["change_id"] for change in customer.state.outbox] == [
        change.change_id for change in first.changes + second.changes
    ]


def test_start_batch_clears_outbox_on_next_change(customer: Customer) -> None:
    engine = customer.engine
    engine.apply(customer.state, _event("a", T0), position=None, clock=T0, now=NOW)

    engine.start_batch(customer.state)
    second = engine.apply(
        customer.state,
        _event("b", T0 + 1, "purchase", amount=1, currency="CNY"),
        position=None,
        clock=T0 + 1,
        now=NOW,
    )

    assert [change["change_id"] for change in customer.state.outbox] == [
        change.change_id for change in second.changes
    ]


def test_same_event_id_is_duplicate(customer: Customer) -> None:
    customer.send("page_view", T0, event_id="same")
    tags = dict(customer.state.tags)

    outcome = customer.send("purchase", T0 + 1, event_id="same", amount=100, currency="CNY")

    assert outcome.duplicate
    assert outcome.changes == ()
    assert customer.state.tags == tags


def test_duplicate_event_id_records_position(customer: Customer) -> None:
    customer.send("page_view", T0, event_id="same")

    customer.send("page_view", T0 + 1, event_id="same")

    assert customer.state.applied[f"{TOPIC}:0"] == 2


def test_dedup_memory_forgets_after_ten_minutes(customer: Customer) -> None:
    engine = customer.engine
    engine.apply(customer.state, _event("same", T0), position=None, clock=T0, now=NOW)

    outcome = engine.apply(
        customer.state,
        _event("same", T0 + 1),
        position=None,
        clock=T0 + 1,
        now=NOW + DEDUP_MAX_AGE_MS + 1,
    )

    assert not outcome.duplicate


def test_dedup_memory_keeps_last_events(customer: Customer) -> None:
    for index in range(DEDUP_MAX_EVENTS + 10):
        customer.send("page_view", T0 + index, event_id=f"id{index}")

    assert len(customer.state.recent) == DEDUP_MAX_EVENTS
    assert customer.send("page_view", T0 + 999, event_id="id0").duplicate is False
    assert customer.send("page_view", T0 + 999, event_id="id73").duplicate is True


def test_change_ids_follow_sequence(customer: Customer) -> None:
    customer.send("page_view", T0)
    customer.send("purchase", T0 + 1, amount=100, currency="CNY")

    ids = [change.change_id for change in customer.changes]

    assert ids == [f"c1:0:{seq}" for seq in range(1, len(ids) + 1)]


def test_readded_tag_gets_new_change_id(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.tick(T0 + 30 * MINUTE)
    customer.send("remove_from_cart", T0 + 31 * MINUTE, product_id="p1")
    customer.send("add_to_cart", T0 + 32 * MINUTE, product_id="p1")
    customer.tick(T0 + 62 * MINUTE)

    added = [c.change_id for c in customer.changes if c.tag == "hesitant" and c.action == "added"]

    assert len(added) == 2
    assert added[0] != added[1]


def test_change_fields(customer: Customer, default_rulebook: Rulebook) -> None:
    outcome = customer.send("purchase", T0, amount=512_340, currency="CNY")

    high = next(change for change in outcome.changes if change.tag == "high_value")

    assert high.reason == {
        "rule": "high_value",
        "when": "net_spend(180d) >= 5000.00",
        "values": {"net_spend(180d)": "5123.40"},
    }
    assert high.emitted_at == NOW
    assert high.rulebook_version == default_rulebook.version
    assert high.source == "rule"
    assert high.labels == {"zh": "高价值", "en": "High value"}
    assert high.group == "value"


def test_missing_value_is_null(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.tick(T0 + 30 * MINUTE)

    outcome = customer.send("remove_from_cart", T0 + 31 * MINUTE, product_id="p1")

    removed = next(change for change in outcome.changes if change.tag == "hesitant")
    assert removed.reason["values"] == {"cart_age": None}


def test_money_exact(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: sixty_cents\n    group: test\n    labels: {zh: 六毛, en: Sixty cents}\n"
        "    description: Exactly 0.60 spent.\n    when: net_spend(30d) == 0.60\n"
    )
    customer = Customer(Engine(rulebook))

    for offset, amount in enumerate((10, 20, 30)):
        customer.send("purchase", T0 + offset, amount=amount, currency="CNY")

    assert customer.tags == {"sixty_cents"}


def test_net_spend_reads_zero_after_big_refund(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: refunded\n    group: test\n    labels: {zh: 退款, en: Refunded}\n"
        "    description: All spend refunded.\n"
        "    when: count(refund) >= 1 and net_spend(30d) == 0\n"
    )
    customer = Customer(Engine(rulebook))
    customer.send("purchase", T0, amount=100, currency="CNY")

    outcome = customer.send("refund", T0 + 1, amount=500, currency="CNY")

    assert outcome.changes[0].reason["values"] == {"count(refund)": 1, "net_spend(30d)": "0.00"}


def test_manual_tag_assign_and_unassign(customer: Customer) -> None:
    assigned = customer.send("tag_assign", T0, tag="key_account", operator="alice")
    unassigned = customer.send("tag_unassign", T0 + MINUTE, tag="key_account", operator="alice")

    assert [(c.tag, c.action, c.source, c.group) for c in assigned.changes] == [
        ("manual:key_account", "added", "manual", "manual")
    ]
    assert [(c.tag, c.action) for c in unassigned.changes] == [("manual:key_account", "removed")]


def test_manual_tag_labels(customer: Customer) -> None:
    outcome = customer.send("tag_assign", T0, tag="key_account")

    assert outcome.changes[0].labels == {"zh": "手动：key_account", "en": "Manual: key_account"}


def test_late_event_applies_at_watermark(customer: Customer) -> None:
    customer.send("page_view", T0 + DAY, product_id="p1")

    outcome = customer.send("purchase", T0, amount=100, currency="CNY")

    assert outcome.late
    assert {change.at for change in outcome.changes} == {T0 + DAY}
    assert "recent_buyer" in customer.tags


def test_late_event_outside_window_not_counted(customer: Customer) -> None:
    customer.send("page_view", T0 + 40 * DAY, product_id="p1")

    customer.send("purchase", T0, amount=100, currency="CNY")

    assert "recent_buyer" not in customer.tags
    assert "existing" in customer.tags


def test_late_attribute_update_ignored(customer: Customer) -> None:
    customer.send("customer_update", T0 + MINUTE, attributes={"member_level": "vip"})

    customer.send("customer_update", T0, attributes={"member_level": "gold"})

    assert "vip" in customer.tags


def test_allowed_lateness_delays_due(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: carted\n    group: test\n    labels: {zh: 加购, en: Carted}\n"
        "    description: Cart for 30 minutes.\n    when: cart_age >= 30m\n",
        header="allowed_lateness: 5m\n",
    )
    customer = Customer(Engine(rulebook))
    customer.send("add_to_cart", T0, product_id="p1")

    early = customer.tick(T0 + 35 * MINUTE - 1)
    on_time = customer.tick(T0 + 35 * MINUTE)

    assert early == ()
    assert [change.at for change in on_time] == [T0 + 30 * MINUTE]


def test_rulebook_change_reevaluates(
    customer: Customer, rulebook_from: Callable[..., Rulebook]
) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")
    rulebook = rulebook_from(
        "  - id: any_buyer\n    group: test\n    labels: {zh: 买家, en: Buyer}\n"
        "    description: Bought once.\n    when: count(purchase) >= 1\n"
    )

    changes = Engine(rulebook).advance(customer.state, watermark=T0, now=NOW)

    assert {change.source for change in changes} == {"rulebook_change"}
    assert set(customer.state.tags) == {"any_buyer"}


def test_advance_fires_in_time_order(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("purchase", T0 + 1, amount=100, currency="CNY")
    customer.send("add_to_cart", T0 + 2, product_id="p2")

    changes = customer.tick(T0 + 100 * DAY)

    times = [change.at for change in changes]
    assert times == sorted(times)
    assert times[0] == T0 + 2 + 30 * MINUTE


def test_due_never_fires_early(customer: Customer) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")
    customer.send("campaign_join", T0 + HOUR, campaign_id="spring")

    while customer.state.due is not None and customer.state.due < T0 + 400 * DAY:
        due = customer.state.due
        assert customer.tick(due - 1) == ()
        assert customer.tick(due) != ()
