"""Engine.erase: removals with source erasure, and the new epoch of a returning customer."""

from __future__ import annotations

from rule_helpers import NOW, T0, Customer

from tagger.rules.engine import Engine
from tagger.schemas.tag_change import encode_tag_change, validate_tag_change


def _tagged(engine: Engine) -> Customer:
    customer = Customer(engine)
    customer.send("purchase", T0, amount=600_000, currency="CNY")
    customer.send("tag_assign", T0 + 1, tag="manual:call_back")
    return customer


def test_erase_removes_every_tag(customer: Customer) -> None:
    customer = _tagged(customer.engine)
    held = list(customer.state.tags)
    used_ids = {change.change_id for change in customer.changes}

    removals = customer.engine.erase(customer.state, at=T0 + 5, now=NOW, request_id="r1")

    assert sorted(change.tag for change in removals) == sorted(held)
    assert {change.action for change in removals} == {"removed"}
    assert {change.source for change in removals} == {"erasure"}
    assert {change.at for change in removals} == {T0 + 5}
    assert all(change.reason == {**change.reason, "values": {}} for change in removals)
    assert {change.reason["erasure_request_id"] for change in removals} == {"r1"}
    assert not {change.change_id for change in removals} & used_ids
    assert all(change.change_id.startswith("c1:0:") for change in removals)
    assert customer.state.tags == {}
    for change in removals:
        validate_tag_change(encode_tag_change(change))


def test_erase_at_is_never_before_customer_clock(customer: Customer) -> None:
    customer = _tagged(customer.engine)

    removals = customer.engine.erase(customer.state, at=0, now=NOW)

    assert {change.at for change in removals} == {customer.state.clock}
    assert "erasure_request_id" not in removals[0].reason


def test_erase_without_tags_records_nothing(customer: Customer) -> None:
    removals = customer.engine.erase(customer.state, at=T0, now=NOW)

    assert removals == ()
    assert customer.state.seq == 0


def test_new_epoch_ids_never_repeat(customer: Customer) -> None:
    engine = customer.engine
    before = _tagged(engine)
    removals = engine.erase(before.state, at=T0 + 5, now=NOW)
    old_ids = {change.change_id for change in [*before.changes, *removals]}

    returning = Customer(engine)
    returning.state = engine.new_state("c1", epoch=before.state.epoch + 1)
    returning.send("purchase", T0 + 10, amount=600_000, currency="CNY")
    returning.send("tag_assign", T0 + 11, tag="manual:call_back")

    new_ids = {change.change_id for change in returning.changes}
    assert returning.state.epoch == 1
    assert new_ids
    assert all(change_id.startswith("c1:1:") for change_id in new_ids)
    assert not new_ids & old_ids
