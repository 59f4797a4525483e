"""Stored customer states: every version ever written still decodes and keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest
from rule_helpers import DAY, MINUTE, NOW, T0

from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import (
    STATE_VERSION,
    CustomerState,
    decode_state,
    encode_state,
    state_json,
)
from tagger.schemas.events import Event

# Written by the version 1 engine under the default rulebook: a VIP customer
# with a purchase, a refund, three shoe views, a manual tag and a cart that
# turned hesitant, just after that change was recorded.
STATE_V1 = Path(__file__).parent / "fixtures" / "state_v1.json"


@pytest.fixture
def state_v1() -> CustomerState:
    return decode_state(STATE_V1.read_bytes())


def test_v1_state_decodes(state_v1: CustomerState) -> None:
    assert state_v1.customer_id == "c1"
    assert state_v1.seq == 10
    assert state_v1.clock == T0 + 20 + 30 * MINUTE
    assert state_v1.due == T0 + 7 * DAY + 2
    assert state_v1.tags["hesitant"] == T0 + 20 + 30 * MINUTE
    assert state_v1.cart == {"p2": T0 + 20}
    assert state_v1.attributes == {"member_level": ("vip", T0)}
    assert state_v1.totals.series["spend"] == [[T0 + 10, 512_340], [T0 + 11, -50]]
    assert state_v1.outbox[0]["change_id"] == "c1:0:10"
    assert (state_v1.mirrored_seq, state_v1.pseq) == (3, 9)
    assert state_v1.applied == {"customer-events:0": 9}
    assert len(state_v1.recent) == 9


def test_v1_state_has_no_new_fields(state_v1: CustomerState) -> None:
    assert state_v1.pending == []
    assert state_v1.last_added == {}


def test_v1_state_keeps_working(state_v1: CustomerState, default_rulebook: Rulebook) -> None:
    assert state_v1.due is not None

    changes = Engine(default_rulebook).advance(state_v1, watermark=state_v1.due, now=NOW)

    assert ("browsing_interest:shoes", "removed", T0 + 7 * DAY + 2) in [
        (change.tag, change.action, change.at) for change in changes
    ]


def test_v1_state_reencodes_as_current(state_v1: CustomerState) -> None:
    encoded = encode_state(state_v1)

    assert state_json(encoded).startswith(b'{"v":%d,' % STATE_VERSION)
    assert decode_state(encoded) == state_v1


def test_new_fields_round_trip() -> None:
    state = CustomerState(customer_id="c1")
    state.pending = [
        (T0, Event("e1", "c1", "page_view", T0, category="shoes")),
        (T0 + 5, Event("e2", "c1", "customer_update", T0 + 9, attributes={"level": 3})),
    ]
    state.last_added = {"fan:shoes": T0}

    restored = decode_state(encode_state(state))

    assert restored.pending == state.pending
    assert restored.last_added == state.last_added


def test_unknown_version_names_readable_ones() -> None:
    with pytest.raises(ValueError, match="reads versions 1, 2, 3; upgrade the worker"):
        decode_state(b'{"v":4,"c":"c1"}')
