"""Properties of event time: arrival order within the lateness and live ticking change nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rule_helpers import DAY, MINUTE, NOW, SECOND, T0, TOPIC

from tagger.rules.engine import Engine, Position
from tagger.rules.rulebook import Rulebook, parse_rulebook
from tagger.schemas.events import Event
from tagger.schemas.tag_change import TagChange

LATENESS = 10 * MINUTE
# Live mode moves an idle partition's clock to wall time minus this.
LIVE_CLOCK_LAG = SECOND

# Windows, cart_age, since, attributes, manual tags, hysteresis and cooldown,
# in an exclusive group and in a ranked `per` rule.
RULEBOOK_TEXT = """\
version: 1
currency: CNY
allowed_lateness: {lateness}
groups:
  test: {{labels: {{zh: 测试, en: Test}}}}
  tier: {{exclusive: true, labels: {{zh: 等级, en: Tier}}}}
rules:
  - id: hesitant
    group: test
    labels: {{zh: 犹豫, en: Hesitant}}
    description: Cart for 30 minutes.
    when: cart_age >= 30m
  - id: big
    group: tier
    labels: {{zh: 大, en: Big}}
    description: Net spend of 100.00 in a day; leaves below 50.00; once in 2 hours.
    when: net_spend(1d) >= 100.00
    leave_when: net_spend(1d) < 50.00
    cooldown: 2h
  - id: small
    group: tier
    labels: {{zh: 小, en: Small}}
    description: Some net spend in a day.
    when: net_spend(1d) > 0
  - id: fan
    group: test
    labels: {{zh: "粉丝：{{param}}", en: "Fan: {{param}}"}}
    description: Two views in an hour; leaves when none is left; two categories; once in 3 hours.
    per: category
    when: count(page_view, 1h) >= 2
    leave_when: count(page_view, 1h) == 0
    rank_by: count(page_view, 1h)
    limit: 2
    cooldown: 3h
  - id: lapsed
    group: test
    labels: {{zh: 流失, en: Lapsed}}
    description: No purchase for 3 hours.
    when: since(purchase) >= 3h
  - id: active
    group: test
    labels: {{zh: 活跃, en: Active}}
    description: Activity in 2 hours; once in 4 hours.
    when: count(activity, 2h) >= 1
    cooldown: 4h
  - id: vip
    group: test
    labels: {{zh: 贵宾, en: VIP}}
    description: VIP in the CRM.
    when: attribute("member_level") == "vip"
"""
LATE_RULEBOOK = parse_rulebook(RULEBOOK_TEXT.format(lateness="10m"), file="late.yaml")
ON_TIME_RULEBOOK = parse_rulebook(RULEBOOK_TEXT.format(lateness="0s"), file="on_time.yaml")

_AMOUNT = st.sampled_from([3_000, 6_000, 10_000, 12_000]) | st.integers(1, 20_000)
_MONEY = st.fixed_dictionaries({"amount": _AMOUNT, "currency": st.just("CNY")})
_EVENT = st.one_of(
    st.tuples(st.just("page_view"), st.fixed_dictionaries({"category": st.sampled_from("abc")})),
    st.tuples(
        st.sampled_from(["add_to_cart", "remove_from_cart"]),
        st.fixed_dictionaries({"product_id": st.sampled_from(["p1", "p2"])}),
    ),
    st.tuples(st.sampled_from(["purchase", "purchase", "refund"]), _MONEY),
    st.tuples(st.just("page_view"), st.fixed_dictionaries({"category": st.just("a")})),
    st.tuples(
        st.just("customer_update"),
        st.fixed_dictionaries(
            {"attributes": st.fixed_dictionaries({"member_level": st.sampled_from(["vip", "x"])})}
        ),
    ),
    st.tuples(
        st.sampled_from(["tag_assign", "tag_unassign"]),
        st.fixed_dictionaries({"tag": st.just("k")}),
    ),
)
# Minutes since the previous event: bursts that arrive out of order, and gaps
# that let windows, durations and cooldowns run out.
_GAP_MINUTES = st.sampled_from([0, 0, 0, 1, 2, 5, 10, 30, 60, 180, 600])
# (gap, arrival delay in ms within the lateness, event kind and fields)
_HISTORY = st.lists(
    st.tuples(_GAP_MINUTES, st.sampled_from([0, LATENESS]) | st.integers(0, LATENESS), _EVENT),
    min_size=1,
    max_size=30,
)

Change = tuple[str, str, str, int]


@settings(max_examples=80, deadline=None)
@given(history=_HISTORY)
def test_arrival_within_lateness_same_changes(history: list[Any]) -> None:
    events = _events(history)
    in_order = sorted(events, key=lambda item: item[0].ts)
    arrived = sorted(events, key=lambda item: (item[0].ts + item[1], item[0].ts))

    late_sorted = _replay(LATE_RULEBOOK, in_order)
    late_shuffled = _replay(LATE_RULEBOOK, arrived)
    on_time_sorted = _replay(ON_TIME_RULEBOOK, in_order)

    assert late_shuffled == late_sorted
    assert on_time_sorted == late_sorted


@settings(max_examples=80, deadline=None)
@given(history=_HISTORY, ticks=st.lists(st.integers(0, LATENESS), max_size=30))
def test_live_run_same_changes_as_replay(history: list[Any], ticks: list[int]) -> None:
    events = _events(history)
    arrived = sorted(events, key=lambda item: (item[0].ts + item[1], item[0].ts))

    live = _live(LATE_RULEBOOK, arrived, ticks)
    replay = _replay(LATE_RULEBOOK, arrived)

    assert live == replay


def _events(history: list[Any]) -> list[tuple[Event, int]]:
    """Build events with distinct times (the index breaks ties), each with its arrival delay."""
    events = []
    minutes = 0
    for index, (gap, delay, (kind, fields)) in enumerate(history):
        minutes += gap
        ts = T0 + minutes * MINUTE + index
        events.append((Event(f"e{index}", "c1", kind, ts, **fields), delay))
    return events


def _replay(rulebook: Rulebook, arrived: list[tuple[Event, int]]) -> tuple[list[Change], set[str]]:
    """Apply events in arrival order with only events moving the clock, then one final advance."""
    engine = Engine(rulebook)
    state = engine.new_state("c1")
    changes: list[TagChange] = []
    clock = 0
    for offset, (event, _) in enumerate(arrived):
        clock = max(clock, event.ts)
        outcome = engine.apply(
            state, event, position=Position(TOPIC, 0, offset), clock=clock, now=NOW
        )
        assert not outcome.late
        changes.extend(outcome.changes)
    end = clock + 3 * DAY
    changes.extend(engine.advance(state, watermark=end - rulebook.allowed_lateness_ms, now=NOW))
    return [(c.customer_id, c.tag, c.action, c.at) for c in changes], set(state.tags)


def _live(
    rulebook: Rulebook, arrived: list[tuple[Event, int]], ticks: list[int]
) -> tuple[list[Change], set[str]]:
    """Apply events as a live worker would, the clock following wall time between them.

    Each event arrives at wall time ts + delay. Before it, the idle
    partition's clock follows wall time at some moments, and at last reaches
    wall time − LIVE_CLOCK_LAG, each time firing what is due.
    """
    engine = Engine(rulebook)
    state = engine.new_state("c1")
    changes: list[TagChange] = []
    clock = 0
    wall = 0
    for offset, (event, delay) in enumerate(arrived):
        arrival = event.ts + delay
        gap = max(0, arrival - wall)
        wall = max(wall, arrival)
        moments = [arrival - gap * tick // LATENESS for tick in ticks[offset : offset + 2]]
        for moment in [*sorted(moments), wall]:
            clock = max(clock, moment - LIVE_CLOCK_LAG)
            engine.start_batch(state)
            changes.extend(
                engine.advance(state, watermark=clock - rulebook.allowed_lateness_ms, now=NOW)
            )
        clock = max(clock, min(event.ts, wall))
        outcome = engine.apply(
            state, event, position=Position(TOPIC, 0, offset), clock=clock, now=NOW
        )
        assert not outcome.late
        changes.extend(outcome.changes)
    end = clock + 3 * DAY
    changes.extend(engine.advance(state, watermark=end - rulebook.allowed_lateness_ms, now=NOW))
    return [(c.customer_id, c.tag, c.action, c.at) for c in changes], set(state.tags)
