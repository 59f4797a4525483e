"""Re-evaluation after a rulebook change, explicit or on the customer's next event."""

from __future__ import annotations

from collections.abc import Callable

from rule_helpers import DAY, MINUTE, NOW, T0, Customer

from tagger.rules.engine import Engine
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import decode_state, encode_state

BUYER = """\
  - id: buyer
    group: test
    labels: {zh: 买家, en: Buyer}
    description: Bought at least {count} times.
    when: count(purchase) >= {count}
"""


def _buyer(rulebook_from: Callable[..., Rulebook], count: int, header: str = "") -> Engine:
    return Engine(rulebook_from(BUYER.replace("{count}", str(count)), header=header))


def _bought_once(engine: Engine) -> Customer:
    customer = Customer(engine)
    customer.send("purchase", T0, amount=100, currency="CNY")
    customer.tick(T0 + DAY)
    return customer


def test_same_version_is_noop(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 1))
    before = encode_state(customer.state)

    changes = customer.engine.reevaluate(customer.state, clock=T0 + 5 * DAY, now=NOW)

    assert changes == ()
    assert encode_state(customer.state) == before


def test_changes_at_partition_clock(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))
    v1 = _buyer(rulebook_from, 1)

    changes = v1.reevaluate(customer.state, clock=T0 + 5 * DAY, now=NOW)

    assert [(c.tag, c.action, c.at, c.source) for c in changes] == [
        ("buyer", "added", T0 + 5 * DAY, "rulebook_change")
    ]
    assert changes[0].rulebook_version == v1.rulebook.version


def test_records_version(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))
    v1 = _buyer(rulebook_from, 1)

    v1.reevaluate(customer.state, clock=T0 + 5 * DAY, now=NOW)

    assert customer.state.rulebook_version == v1.rulebook.version
    assert v1.reevaluate(customer.state, clock=T0 + 6 * DAY, now=NOW) == ()


def test_never_before_customer_clock(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))

    changes = _buyer(rulebook_from, 1).reevaluate(customer.state, clock=T0 - DAY, now=NOW)

    assert [change.at for change in changes] == [T0]


def test_readded_tag_gets_new_change_id(rulebook_from: Callable[..., Rulebook]) -> None:
    v1 = _buyer(rulebook_from, 1)
    v2 = _buyer(rulebook_from, 2)
    customer = _bought_once(v1)

    removed = v2.reevaluate(customer.state, clock=T0 + 2 * DAY, now=NOW)
    added = v1.reevaluate(customer.state, clock=T0 + 3 * DAY, now=NOW)

    ids = [customer.changes[0].change_id, removed[0].change_id, added[0].change_id]
    assert [change.action for change in (*removed, *added)] == ["removed", "added"]
    assert ids == ["c1:0:1", "c1:0:2", "c1:0:3"]


def test_next_event_migrates_at_watermark(rulebook_from: Callable[..., Rulebook]) -> None:
    """Without an explicit re-evaluation, the next event migrates at the watermark it brings."""
    customer = _bought_once(_buyer(rulebook_from, 2))
    customer.engine = _buyer(rulebook_from, 1)

    outcome = customer.send("page_view", T0 + 5 * DAY, category="a")

    assert [(c.tag, c.at, c.source) for c in outcome.changes] == [
        ("buyer", T0 + 5 * DAY, "rulebook_change")
    ]


def test_advance_migrates_at_watermark(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))

    changes = _buyer(rulebook_from, 1).advance(customer.state, watermark=T0 + 4 * DAY, now=NOW)

    assert [(c.at, c.source) for c in changes] == [(T0 + 4 * DAY, "rulebook_change")]


def test_evaluates_at_watermark_with_lateness(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))
    late = _buyer(rulebook_from, 1, header="allowed_lateness: 1h\n")

    changes = late.reevaluate(customer.state, clock=T0 + 5 * DAY, now=NOW)

    assert [change.at for change in changes] == [T0 + 5 * DAY - 60 * MINUTE]


def test_pending_events_keep_time_order(rulebook_from: Callable[..., Rulebook]) -> None:
    """A customer with pending events is re-evaluated no later than the earliest of them."""
    header = "allowed_lateness: 1h\n"
    customer = Customer(_buyer(rulebook_from, 3, header=header))
    customer.send("purchase", T0, amount=100, currency="CNY")
    customer.send("purchase", T0 + 10 * MINUTE, amount=100, currency="CNY")
    v2 = _buyer(rulebook_from, 2, header=header)

    v2.reevaluate(customer.state, clock=T0 + 90 * MINUTE, now=NOW)
    migrated_at = customer.state.clock
    fired = v2.advance(customer.state, watermark=T0 + 30 * MINUTE, now=NOW)

    assert migrated_at == T0
    assert [(c.tag, c.at, c.source) for c in fired] == [("buyer", T0 + 10 * MINUTE, "rule")]


def test_reevaluated_state_encodes(rulebook_from: Callable[..., Rulebook]) -> None:
    customer = _bought_once(_buyer(rulebook_from, 2))
    _buyer(rulebook_from, 1).reevaluate(customer.state, clock=T0 + 5 * DAY, now=NOW)

    assert decode_state(encode_state(customer.state)) == customer.state
