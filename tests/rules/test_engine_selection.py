"""Rule selection: evaluating only the rules that may change gives the same changes.

The engine skips customer-wide rules that read nothing an event feeds, and
at a due instant those whose windows no entry enters or leaves. An engine
built with `select_rules=False` evaluates every rule every time; both must
publish the same changes, reasons included, and keep the same state.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rule_helpers import DAY, MINUTE, NOW, T0, TOPIC

from tagger.rules.engine import Engine, Position
from tagger.rules.rulebook import Rulebook, load_rulebook, parse_rulebook
from tagger.rules.state import encode_state
from tagger.schemas.events import Event

# Every kind of timed part, has_tag, a duration compared with null (which
# selection treats as changing at any time), cooldown, leave_when and an
# exclusive group whose rules read different events.
MIXED_RULEBOOK = parse_rulebook(
    """\
version: 1
currency: CNY
groups:
  test: {labels: {zh: 测试, en: Test}}
  tier: {exclusive: true, labels: {zh: 等级, en: Tier}}
rules:
  - id: hesitant
    group: test
    labels: {zh: 犹豫, en: Hesitant}
    description: Cart for 30 minutes.
    when: cart_age >= 30m
  - id: big
    group: tier
    labels: {zh: 大, en: Big}
    description: Net spend of 100.00 in a day; leaves below 50.00.
    when: net_spend(1d) >= 100.00
    leave_when: net_spend(1d) < 50.00
  - id: browser
    group: tier
    labels: {zh: 浏览, en: Browser}
    description: Three views in an hour.
    when: count(page_view, 1h) >= 3
  - id: quiet
    group: tier
    labels: {zh: 安静, en: Quiet}
    description: Anything else with some activity.
    when: count(activity) >= 1
  - id: loyal
    group: test
    labels: {zh: 忠诚, en: Loyal}
    description: Big and a VIP.
    when: has_tag("big") and attribute("member_level") == "vip"
  - id: drifting
    group: test
    labels: {zh: 疏远, en: Drifting}
    description: Views but never a purchase.
    when: since(purchase) == null and count(page_view) >= 1
  - id: today
    group: test
    labels: {zh: 今天, en: Today}
    description: Two purchases today.
    when: count(purchase, today) >= 2
  - id: converted
    group: test
    labels: {zh: 转化, en: Converted}
    description: A cart add followed by a purchase within an hour.
    when: followed_by(add_to_cart, purchase, 1h)
  - id: steady
    group: test
    labels: {zh: 稳定, en: Steady}
    description: Average order of 30.00 or more in a week; once in 3 hours.
    when: avg(purchase.amount, 7d) >= 30.00
    cooldown: 3h
  - id: fan
    group: test
    labels: {zh: "粉丝：{param}", en: "Fan: {param}"}
    description: Two views of the category in an hour.
    per: category
    when: count(page_view, 1h) >= 2
    rank_by: count(page_view, 1h)
    limit: 2
""",
    file="mixed.yaml",
)

_MONEY = st.fixed_dictionaries(
    {"amount": st.sampled_from([1_000, 3_000, 6_000, 12_000]), "currency": st.just("CNY")}
)
_EVENT = st.one_of(
    st.tuples(st.just("page_view"), st.fixed_dictionaries({"category": st.sampled_from("abc")})),
    st.tuples(
        st.sampled_from(["add_to_cart", "remove_from_cart"]),
        st.fixed_dictionaries({"product_id": st.sampled_from(["p1", "p2"])}),
    ),
    st.tuples(st.sampled_from(["purchase", "purchase", "refund"]), _MONEY),
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
    st.tuples(st.just("campaign_join"), st.fixed_dictionaries({"campaign_id": st.just("s1")})),
)
# Minutes since the previous event, and whether the clock ticks (no event)
# some minutes before it: windows, durations, calendar days and cooldowns
# run out in between.
_GAP_MINUTES = st.sampled_from([0, 0, 1, 5, 30, 61, 180, 600, 1_440, 40_000, 200_000])
_HISTORY = st.lists(
    st.tuples(_GAP_MINUTES, st.sampled_from([None, 1, 45, 130]), _EVENT), min_size=1, max_size=40
)


@pytest.mark.parametrize("rulebook", [MIXED_RULEBOOK, load_rulebook()], ids=["mixed", "default"])
@settings(max_examples=120, deadline=None)
@given(history=_HISTORY)
def test_selection_matches_every_rule(rulebook: Rulebook, history: list[Any]) -> None:
    selected = _run(Engine(rulebook), history)
    every = _run(Engine(rulebook, select_rules=False), history)

    assert selected == every


def _run(engine: Engine, history: list[Any]) -> tuple[list[dict[str, Any]], bytes]:
    """Apply the history with ticks between events, then advance 200 days.

    Returns the changes and the encoded state.
    """
    state = engine.new_state("c1")
    changes = []
    minutes = 0
    for offset, (gap, tick_before, (kind, fields)) in enumerate(history):
        minutes += gap
        ts = T0 + minutes * MINUTE + offset
        if tick_before is not None and tick_before < gap:
            watermark = ts - tick_before * MINUTE
            changes.extend(engine.advance(state, watermark=watermark, now=NOW))
        event = Event(f"e{offset}", "c1", kind, ts, **fields)
        outcome = engine.apply(state, event, position=Position(TOPIC, 0, offset), clock=ts, now=NOW)
        changes.extend(outcome.changes)
    end = T0 + minutes * MINUTE + 200 * DAY
    changes.extend(engine.advance(state, watermark=end, now=NOW))
    return [change.to_dict() for change in changes], encode_state(state)
