"""Explaining a customer's tags from their state, read-only, in text and JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from rule_helpers import DAY, HOUR, MINUTE, T0

from tagger.rules.engine import Engine
from tagger.rules.explain import (
    TagExplanation,
    explain,
    format_duration,
    render_json,
    render_text,
)
from tagger.rules.preview import Replay
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import CustomerState, encode_state
from tagger.schemas.events import Event


def _state(rulebook: Rulebook, *events: tuple[str, int, dict[str, Any]]) -> CustomerState:
    """Replay events of customer c1 and return its state."""
    replay = Replay(Engine(rulebook))
    for number, (event_type, ts, fields) in enumerate(events):
        replay.apply(_event(event_type, ts, number, fields))
    return replay.states.get("c1") or replay.engine.new_state("c1")


def _event(event_type: str, ts: int, number: int, fields: dict[str, Any]) -> Event:
    return Event(f"e{number}", "c1", event_type, ts, **fields)  # type: ignore[arg-type]


def _one(explanations: list[TagExplanation], tag: str) -> TagExplanation:
    return next(explanation for explanation in explanations if explanation.tag == tag)


def test_held_tag_with_values(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("purchase", T0, {"amount": 150_000, "currency": "CNY"}))

    explanation = _one(explain(default_rulebook, state, clock=T0 + DAY), "medium_value")

    assert explanation.held
    assert explanation.since == T0
    assert explanation.condition
    assert explanation.decided
    assert explanation.values == {"net_spend(180d)": "1500.00"}
    assert explanation.units == {"net_spend(180d)": "money"}


def test_exclusive_group_winner(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("purchase", T0, {"amount": 150_000, "currency": "CNY"}))

    low = _one(explain(default_rulebook, state, clock=T0), "low_value")

    assert low.condition
    assert not low.decided
    assert not low.held
    assert low.winner == "medium_value"
    assert low.exclusive


def test_due_change_not_yet_fired(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("add_to_cart", T0, {"product_id": "p1"}))

    hesitant = explain(default_rulebook, state, clock=T0 + 30 * MINUTE, tag="hesitant")[0]

    assert hesitant.decided
    assert not hesitant.held
    assert hesitant.values == {"cart_age": 30 * MINUTE}
    assert "its addition is due and not yet fired" in render_text([hesitant])


def test_clock_before_state_reads_state_clock(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("page_view", T0 + DAY, {}))

    active = explain(default_rulebook, state, clock=T0, tag="active")[0]

    assert active.clock == T0 + DAY
    assert active.values == {"count(activity, 30d)": 1}


def test_explain_changes_no_state(default_rulebook: Rulebook) -> None:
    state = _state(
        default_rulebook,
        ("add_to_cart", T0, {"product_id": "p1"}),
        ("page_view", T0 + 1, {"category": "shoes"}),
    )
    before = encode_state(state)

    explain(default_rulebook, state, clock=T0 + 100 * DAY)

    assert encode_state(state) == before


def test_per_rule_ranked_like_engine(default_rulebook: Rulebook) -> None:
    # Six categories with 3 views each, viewed in reverse alphabetical order,
    # then a fourth view of the first: the engine keeps 5, dropping the
    # least recently viewed of the 3-view ties, whatever the names.
    names = ["f", "e", "d", "c", "b", "a"]
    views = [
        ("page_view", T0 + index * 3 + repeat, {"category": name})
        for index, name in enumerate(names)
        for repeat in range(3)
    ]
    views.append(("page_view", T0 + MINUTE, {"category": "f"}))
    state = _state(default_rulebook, *views)

    interest = explain(default_rulebook, state, clock=T0 + MINUTE, tag="browsing_interest")[0]

    selected = {value.tag for value in interest.ranked if value.selected}
    held = {tag for tag in state.tags if tag.startswith("browsing_interest:")}
    assert selected == held
    assert [value.param for value in interest.ranked] == ["f", "a", "b", "c", "d", "e"]
    assert interest.ranked[0].rank == 4
    assert not interest.ranked[-1].selected
    assert interest.ranked[-1].condition


def test_per_tag_focus(default_rulebook: Rulebook) -> None:
    state = _state(
        default_rulebook,
        ("page_view", T0, {"category": "shoes"}),
        ("page_view", T0 + 1, {"category": "shoes"}),
    )

    shoes = explain(default_rulebook, state, clock=T0 + 1, tag="browsing_interest:shoes")[0]
    unseen = explain(default_rulebook, state, clock=T0 + 1, tag="browsing_interest:bags")[0]

    assert not shoes.condition
    assert shoes.values == {"count(page_view, 7d)": 2}
    assert shoes.labels["en"] == "Browsing interest: shoes"
    assert unseen.values == {"count(page_view, 7d)": 0}
    assert not unseen.held


def test_manual_tags_listed(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("tag_assign", T0, {"tag": "call_back"}))

    explanations = explain(default_rulebook, state, clock=T0)

    manual = _one(explanations, "manual:call_back")
    assert manual.held
    assert manual.since == T0
    assert manual.group == "manual"


def test_every_rule_explained(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook)

    explanations = explain(default_rulebook, state, clock=T0)

    assert [e.rule for e in explanations] == [rule.id for rule in default_rulebook.rules]
    assert not any(e.held for e in explanations)


def test_unknown_tag_suggests(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook)

    with pytest.raises(ValueError, match=r"unknown tag 'hesitnt' \(did you mean 'hesitant'\?\)"):
        explain(default_rulebook, state, clock=T0, tag="hesitnt")


def test_param_on_plain_rule_rejected(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook)

    with pytest.raises(ValueError, match="has no `per`"):
        explain(default_rulebook, state, clock=T0, tag="active:x")


def test_render_text(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("add_to_cart", T0, {"product_id": "p1"}))
    explanations = explain(default_rulebook, state, clock=T0 + 90 * MINUTE)

    text = render_text(explanations)

    assert text.startswith("Customer c1 at 2023-11-14T23:43:20.000Z")
    assert "potential (Potential): held since 2023-11-14T22:13:20.000Z" in text
    assert "  when cart_age >= 30m  ->  true" in text
    assert "  cart_age = 1h30m (5400000 ms)" in text
    assert "  group lifecycle is exclusive: potential wins" in text


def test_render_json(default_rulebook: Rulebook) -> None:
    state = _state(default_rulebook, ("purchase", T0, {"amount": 150_000, "currency": "CNY"}))

    data = orjson.loads(render_json(explain(default_rulebook, state, clock=T0, tag="vip")))

    assert data[0]["tag"] == "vip"
    assert data[0]["values"] == {
        'attribute("member_level")': None,
        "net_spend(180d)": "1500.00",
        "count(purchase, 180d)": 1,
    }
    assert data[0]["held"] is False


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(DAY + 2 * MINUTE + 5) == "1d2m5ms"


def test_leave_when_keeps_tag(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: engaged\n"
        "    group: test\n"
        "    labels: {zh: 投入, en: Engaged}\n"
        "    description: Three views in 7 days, until none.\n"
        "    when: count(page_view, 7d) >= 3\n"
        "    leave_when: count(page_view, 7d) < 1\n"
    )
    state = _state(rulebook, *[("page_view", T0 + offset, {}) for offset in range(3)])

    engaged = explain(rulebook, state, clock=T0 + 7 * DAY + 1, tag="engaged")[0]

    assert not engaged.condition
    assert engaged.leave is False
    assert engaged.decided
    assert engaged.values == {"count(page_view, 7d)": 1}


def test_cooldown_blocks_addition(rulebook_from: Callable[..., Rulebook]) -> None:
    rulebook = rulebook_from(
        "  - id: browsing_now\n"
        "    group: test\n"
        "    labels: {zh: 正在浏览, en: Browsing now}\n"
        "    description: A view in the last hour, at most once a day.\n"
        "    when: count(page_view, 1h) >= 1\n"
        "    cooldown: 1d\n"
    )
    state = _state(rulebook, ("page_view", T0, {}), ("page_view", T0 + 2 * HOUR, {}))

    browsing = explain(rulebook, state, clock=T0 + 2 * HOUR, tag="browsing_now")[0]

    assert browsing.condition
    assert not browsing.decided
    assert browsing.cooldown_until == T0 + DAY
    assert "cooldown runs until" in render_text([browsing])
