"""The default rulebook's tags at their boundaries, in event time."""

from __future__ import annotations

import pytest
from rule_helpers import DAY, MINUTE, T0, Customer

from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook


@pytest.mark.parametrize(
    ("clock", "expected", "absent"),
    [
        (T0 + 90 * DAY - 1, "existing", "dormant"),
        (T0 + 90 * DAY, "dormant", "existing"),
    ],
)
def test_lifecycle_window_edge(customer: Customer, clock: int, expected: str, absent: str) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")

    customer.tick(clock)

    assert expected in customer.tags
    assert absent not in customer.tags


def test_dormant_change_at_due_time(customer: Customer) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")

    changes = customer.tick(T0 + 90 * DAY)

    added = [change for change in changes if change.action == "added"]
    assert [change.tag for change in added] == ["dormant"]
    assert added[0].at == T0 + 90 * DAY


def test_potential_before_first_purchase(customer: Customer) -> None:
    customer.send("page_view", T0, product_id="p1")

    assert "potential" in customer.tags


def test_potential_replaced_by_existing(customer: Customer) -> None:
    customer.send("page_view", T0, product_id="p1")

    outcome = customer.send("purchase", T0 + MINUTE, amount=100, currency="CNY")

    removed = [change for change in outcome.changes if change.tag == "potential"]
    assert removed[0].reason["replaced_by"] == "existing"
    assert "existing" in customer.tags


def test_refund_alone_is_not_activity(customer: Customer) -> None:
    customer.send("refund", T0, amount=100, currency="CNY")

    assert customer.tags == set()


@pytest.mark.parametrize(
    ("amount", "tier"),
    [
        (1, "low_value"),
        (99_999, "low_value"),
        (100_000, "medium_value"),
        (499_999, "medium_value"),
        (500_000, "high_value"),
    ],
)
def test_value_tier_thresholds(customer: Customer, amount: int, tier: str) -> None:
    customer.send("purchase", T0, amount=amount, currency="CNY")

    value_tags = customer.tags & {"low_value", "medium_value", "high_value"}

    assert value_tags == {tier}


@pytest.mark.parametrize(
    ("clock", "has_tier"),
    [(T0 + 180 * DAY - 1, True), (T0 + 180 * DAY, False)],
)
def test_value_window_edge(customer: Customer, clock: int, has_tier: bool) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")

    customer.tick(clock)

    assert ("low_value" in customer.tags) is has_tier


def test_refund_lowers_tier(customer: Customer) -> None:
    customer.send("purchase", T0, amount=150_000, currency="CNY")

    customer.send("refund", T0 + MINUTE, amount=60_000, currency="CNY")

    assert "low_value" in customer.tags
    assert "medium_value" not in customer.tags


def test_refund_floors_spend_at_zero(customer: Customer) -> None:
    customer.send("purchase", T0, amount=10_000, currency="CNY")
    customer.send("refund", T0 + MINUTE, amount=50_000, currency="CNY")

    outcome = customer.send("purchase", T0 + 2 * MINUTE, amount=10_000, currency="CNY")

    # Spend in the window is 100 - 500 + 100 < 0, read as 0: no tier at all.
    assert not customer.tags & {"low_value", "medium_value", "high_value"}
    assert outcome.changes == ()


def test_vip_from_attribute(customer: Customer) -> None:
    customer.send("customer_update", T0, attributes={"member_level": "vip"})

    assert "vip" in customer.tags


def test_vip_attribute_removed(customer: Customer) -> None:
    customer.send("customer_update", T0, attributes={"member_level": "vip"})

    customer.send("customer_update", T0 + MINUTE, attributes={"member_level": None})

    assert "vip" not in customer.tags


@pytest.mark.parametrize(("purchases", "is_vip"), [(4, False), (5, True)])
def test_vip_from_spend(customer: Customer, purchases: int, is_vip: bool) -> None:
    for index in range(purchases):
        customer.send("purchase", T0 + index * MINUTE, amount=2_000_000 // 4, currency="CNY")

    assert ("vip" in customer.tags) is is_vip


def test_vip_spend_below_threshold(customer: Customer) -> None:
    for index in range(5):
        customer.send("purchase", T0 + index * MINUTE, amount=399_999, currency="CNY")

    assert "vip" not in customer.tags


def test_hesitant_fires_without_event(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")

    before = customer.tick(T0 + 30 * MINUTE - 1)
    at_deadline = customer.tick(T0 + 30 * MINUTE)

    assert before == ()
    assert [(change.tag, change.action, change.at) for change in at_deadline] == [
        ("hesitant", "added", T0 + 30 * MINUTE)
    ]


def test_hesitant_due_is_exact(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")

    assert customer.state.due == T0 + 30 * MINUTE


def test_purchase_before_deadline_cancels_hesitant(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("purchase", T0 + 30 * MINUTE - 1, amount=100, currency="CNY")

    customer.tick(T0 + DAY)

    assert all(change.tag != "hesitant" for change in customer.changes)


def test_purchase_at_deadline_adds_then_removes(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")

    outcome = customer.send("purchase", T0 + 30 * MINUTE, amount=100, currency="CNY")

    hesitant = [
        (change.action, change.at) for change in outcome.changes if change.tag == "hesitant"
    ]
    assert hesitant == [("added", T0 + 30 * MINUTE), ("removed", T0 + 30 * MINUTE)]


def test_purchase_at_add_time_clears_item(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("purchase", T0, amount=100, currency="CNY")

    customer.tick(T0 + DAY)

    assert all(change.tag != "hesitant" for change in customer.changes)


def test_remove_only_item_clears_hesitant(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.tick(T0 + 30 * MINUTE)

    customer.send("remove_from_cart", T0 + 40 * MINUTE, product_id="p1")

    assert "hesitant" not in customer.tags


def test_hesitant_keeps_first_add_time(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("add_to_cart", T0 + 10 * MINUTE, product_id="p1")

    customer.tick(T0 + 30 * MINUTE)

    assert "hesitant" in customer.tags


def test_hesitant_follows_remaining_item(customer: Customer) -> None:
    customer.send("add_to_cart", T0, product_id="p1")
    customer.send("add_to_cart", T0 + 10 * MINUTE, product_id="p2")
    customer.send("remove_from_cart", T0 + 20 * MINUTE, product_id="p1")

    early = customer.tick(T0 + 40 * MINUTE - 1)
    on_time = customer.tick(T0 + 40 * MINUTE)

    assert early == ()
    assert [change.at for change in on_time] == [T0 + 40 * MINUTE]


def test_browsing_interest_needs_three_views(customer: Customer) -> None:
    customer.send("page_view", T0, category="shoes")
    customer.send("page_view", T0 + 1, category="shoes")
    assert "browsing_interest:shoes" not in customer.tags

    customer.send("page_view", T0 + 2, category="shoes")

    assert "browsing_interest:shoes" in customer.tags


@pytest.mark.parametrize(("clock", "held"), [(T0 + 7 * DAY - 1, True), (T0 + 7 * DAY, False)])
def test_browsing_interest_window_edge(customer: Customer, clock: int, held: bool) -> None:
    for offset in range(3):
        customer.send("page_view", T0 + offset, category="shoes")

    customer.tick(clock)

    assert ("browsing_interest:shoes" in customer.tags) is held


def test_browsing_interest_labels(customer: Customer) -> None:
    for offset in range(3):
        outcome = customer.send("page_view", T0 + offset, category="electronics.smartphone")

    added = next(c for c in outcome.changes if c.tag.startswith("browsing_interest"))

    assert added.labels == {
        "zh": "浏览兴趣：electronics.smartphone",
        "en": "Browsing interest: electronics.smartphone",
    }
    assert added.group == "intent"


def test_browsing_interest_no_parent_rollup(customer: Customer) -> None:
    customer.send("page_view", T0, category="electronics.smartphone")
    customer.send("page_view", T0 + 1, category="electronics.tablet")
    customer.send("page_view", T0 + 2, category="electronics")

    assert not any(tag.startswith("browsing_interest") for tag in customer.tags)


def test_browsing_interest_top_five(customer: Customer) -> None:
    # Categories c0..c6: c_i gets 3 + i views, so c2..c6 rank highest.
    time = T0
    for index in range(7):
        for _ in range(3 + index):
            time += 1
            customer.send("page_view", time, category=f"c{index}")

    interests = {tag for tag in customer.tags if tag.startswith("browsing_interest:")}

    assert interests == {f"browsing_interest:c{index}" for index in range(2, 7)}


def test_browsing_interest_tie_to_most_recent(customer: Customer) -> None:
    # Six categories with 3 views each; the one viewed least recently loses.
    time = T0
    for index in range(6):
        for _ in range(3):
            time += 1
            customer.send("page_view", time, category=f"c{index}")

    interests = {tag for tag in customer.tags if tag.startswith("browsing_interest:")}

    assert interests == {f"browsing_interest:c{index}" for index in range(1, 6)}


def test_browsing_interest_tie_moves_with_new_view(customer: Customer) -> None:
    time = T0
    for index in range(6):
        for _ in range(3):
            time += 1
            customer.send("page_view", time, category=f"c{index}")

    # c0 gets a fourth view: it now ranks first, and c1 (the oldest of the 3-view ties) drops.
    customer.send("page_view", time + 1, category="c0")

    interests = {tag for tag in customer.tags if tag.startswith("browsing_interest:")}
    assert interests == {f"browsing_interest:c{index}" for index in (0, 2, 3, 4, 5)}


def test_browsing_interest_skips_invalid_category(customer: Customer) -> None:
    for offset in range(3):
        customer.send("page_view", T0 + offset, category="Bad Category")

    assert customer.state.per.get("category", {}) == {}


@pytest.mark.parametrize(
    ("event_type", "fields", "tag"),
    [
        ("purchase", {"amount": 100, "currency": "CNY"}, "recent_buyer"),
        ("campaign_join", {"campaign_id": "spring"}, "campaign_participant"),
        ("page_view", {"product_id": "p1"}, "active"),
        ("add_to_cart", {"product_id": "p1"}, "active"),
        ("remove_from_cart", {"product_id": "p1"}, "active"),
        ("campaign_join", {"campaign_id": "spring"}, "active"),
    ],
)
def test_thirty_day_tags(
    default_rulebook: Rulebook, event_type: str, fields: dict[str, object], tag: str
) -> None:
    for clock, held in ((T0 + 30 * DAY - 1, True), (T0 + 30 * DAY, False)):
        customer = Customer(Engine(default_rulebook))
        customer.send(event_type, T0, **fields)

        customer.tick(clock)

        assert (tag in customer.tags) is held, f"clock T0 + {clock - T0} ms"


def test_removals_before_additions(customer: Customer) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")

    changes = customer.tick(T0 + 90 * DAY)

    actions = [change.action for change in changes]
    assert actions == sorted(actions, key=lambda action: action != "removed")


def test_same_instant_follows_rule_order(customer: Customer) -> None:
    customer.send("purchase", T0, amount=100, currency="CNY")

    changes = customer.tick(T0 + 30 * DAY)

    assert [(change.tag, change.action) for change in changes] == [
        ("recent_buyer", "removed"),
        ("active", "removed"),
    ]


def test_exclusive_group_never_holds_two(customer: Customer) -> None:
    customer.send("page_view", T0, product_id="p1")
    customer.send("purchase", T0 + DAY, amount=600_000, currency="CNY")
    customer.send("refund", T0 + 2 * DAY, amount=550_000, currency="CNY")
    customer.tick(T0 + 200 * DAY)

    held: set[str] = set()
    for change in customer.changes:
        if change.action == "added":
            held.add(change.tag)
        else:
            held.discard(change.tag)
        assert len(held & {"dormant", "existing", "potential"}) <= 1
        assert len(held & {"low_value", "medium_value", "high_value"}) <= 1
