"""Erasure requests in the processor: removals, deletion, epochs and redelivery, on dict tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tagger.rules.rulebook import load_rulebook
from tagger.rules.state import decode_state
from tagger.schemas.erasure import ErasureRequest, encode_erasure_request
from tagger.streams.config import Settings
from tagger.streams.erasures import ErasureRecord
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.mirror_lua import mirror_seq
from tagger.streams.partitioning import partition_for
from tagger.streams.processor import InboundRecord, Processor
from tests.e2e.events import purchase

_PARTITIONS = 4
_BASE = 1_709_251_200_000
_SETTINGS = Settings(partitions=_PARTITIONS, clock_mode="replay")
_INPUT = _SETTINGS.input_topics[0]


class _SendFailed(Exception):
    """Raised by the test's sender to stand for a crash before the broker acknowledged."""


@dataclass
class _World:
    """The tables and outputs that outlive one processor, as Kafka does across restarts."""

    customers: dict[bytes, bytes] = field(default_factory=dict)
    partitions: dict[bytes, bytes] = field(default_factory=dict)
    erasures: dict[bytes, bytes] = field(default_factory=dict)
    published: list[bytes] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    mirror: list[tuple[str, str, int]] = field(default_factory=list)
    fail_sends: bool = False

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if topic == _SETTINGS.tag_change_topic:
            if self.fail_sends:
                raise _SendFailed(value)
            self.published.append(value)
        elif topic == _SETTINGS.dead_letter_topic:
            self.dead_letters.append(orjson.loads(value))

    def processor(self) -> Processor:
        def submit(customer_id: str, seq: int, tags: dict[str, int]) -> None:
            self.mirror.append(("write", customer_id, seq))

        def erase(customer_id: str, fence: int, tags: list[str]) -> None:
            self.mirror.append(("erase", customer_id, fence))

        return Processor(
            settings=_SETTINGS,
            rulebook=load_rulebook(None),
            customers=self.customers,
            partitions=self.partitions,
            send=self.send,
            metrics=TaggerMetrics.create(CollectorRegistry()),
            mirror_submit=submit,
            erasures=self.erasures,
            mirror_erase=erase,
        )

    def changes(self) -> list[dict[str, Any]]:
        return [orjson.loads(value) for value in self.published]


def _event(customer: str, offset: int, ts: int, amount: str = "600.00") -> InboundRecord:
    key = customer.encode()
    return InboundRecord(
        topic=_INPUT,
        partition=partition_for(key, _PARTITIONS),
        offset=offset,
        key=key,
        value=orjson.dumps(purchase(customer, ts, amount, event_id=f"{customer}-{offset}")),
    )


def _erasure(customer: str, offset: int, request_id: str = "req-1") -> InboundRecord:
    key = customer.encode()
    request = ErasureRequest(customer, request_id, _BASE)
    return InboundRecord(
        topic=_SETTINGS.erasure_topic,
        partition=partition_for(key, _PARTITIONS),
        offset=offset,
        key=key,
        value=encode_erasure_request(request),
    )


async def _run(world: _World, *batches: list[InboundRecord]) -> Processor:
    processor = world.processor()
    await processor.assign(range(_PARTITIONS))
    for batch in batches:
        await processor.handle_batch(batch)
    return processor


async def test_erasure_removes_tags_and_state() -> None:
    world = _World()
    await _run(world, [_event("alice", 0, _BASE)])
    added = {change["tag"] for change in world.changes()}

    await _run(world, [_erasure("alice", 0)])

    removals = world.changes()[len(added) :]
    assert {change["tag"] for change in removals} == added
    assert {change["action"] for change in removals} == {"removed"}
    assert {change["source"] for change in removals} == {"erasure"}
    assert all(change["change_id"].startswith("alice:0:") for change in removals)
    assert all(change["reason"]["erasure_request_id"] == "req-1" for change in removals)
    assert b"alice" not in world.customers
    record = ErasureRecord.decode(world.erasures[b"alice"])
    assert record.epoch == 1
    assert record.outbox == []
    assert record.positions[f"{_INPUT}:{partition_for(b'alice', _PARTITIONS)}"] == 0
    assert ("erase", "alice", mirror_seq(1, 0)) in world.mirror


async def test_returning_customer_starts_new_epoch() -> None:
    world = _World()
    await _run(world, [_event("bob", 0, _BASE)], [_erasure("bob", 0)])
    before = {change["change_id"] for change in world.changes()}

    await _run(world, [_event("bob", 1, _BASE + 1000, "700.00")])

    returned = [c for c in world.changes() if c["change_id"] not in before]
    assert returned
    assert all(change["change_id"].startswith("bob:1:") for change in returned)
    writes = [seq for kind, customer, seq in world.mirror if kind == "write" and customer == "bob"]
    assert writes[-1] > mirror_seq(1, 0)


async def test_redelivered_input_does_not_resurrect() -> None:
    world = _World()
    await _run(world, [_event("carol", 0, _BASE)], [_erasure("carol", 0)])
    published = list(world.published)

    await _run(world, [_event("carol", 0, _BASE), _erasure("carol", 0)])

    assert world.published == published
    assert b"carol" not in world.customers
    assert ErasureRecord.decode(world.erasures[b"carol"]).epoch == 1


async def test_erasure_without_state_bumps_epoch() -> None:
    world = _World()

    await _run(world, [_erasure("nobody", 0)], [_erasure("nobody", 1, "req-2")])

    assert world.published == []
    assert b"nobody" not in world.customers
    assert ErasureRecord.decode(world.erasures[b"nobody"]).epoch == 2
    assert [m for m in world.mirror if m[0] == "erase"] == [
        ("erase", "nobody", mirror_seq(1, 0)),
        ("erase", "nobody", mirror_seq(2, 0)),
    ]


async def test_erasure_between_events_in_one_batch() -> None:
    world = _World()

    await _run(
        world,
        [_event("dave", 0, _BASE), _erasure("dave", 0), _event("dave", 1, _BASE + 1, "50.00")],
    )

    actions = [(c["change_id"].split(":")[1], c["action"], c["source"]) for c in world.changes()]
    assert ("0", "added", "rule") in actions
    assert ("0", "removed", "erasure") in actions
    assert ("1", "added", "rule") in actions
    stored = decode_state(world.customers[b"dave"])
    assert stored.epoch == 1


async def test_crash_before_ack_resends_same_bytes() -> None:
    """Pins lost removals: the state is gone when a crash comes before the broker acknowledged."""
    world = _World()
    await _run(world, [_event("erin", 0, _BASE)])
    world.fail_sends = True
    with pytest.raises(_SendFailed):
        await _run(world, [_erasure("erin", 0)])
    assert b"erin" not in world.customers
    assert ErasureRecord.decode(world.erasures[b"erin"]).outbox
    world.fail_sends = False
    published_before = len(world.published)

    # The restart: assignment sends the unacknowledged removals, and the
    # redelivered request changes nothing more.
    await _run(world, [_erasure("erin", 0)])

    resent = world.published[published_before:]
    assert [orjson.loads(value)["source"] for value in resent] == ["erasure"] * len(resent)
    assert resent
    assert len(set(resent)) == len(resent)
    assert ErasureRecord.decode(world.erasures[b"erin"]).outbox == []


async def test_repeated_request_resends_unacknowledged() -> None:
    world = _World()
    await _run(world, [_event("fay", 0, _BASE)])
    world.fail_sends = True
    with pytest.raises(_SendFailed) as failed:
        await _run(world, [_erasure("fay", 0)])
    first_bytes = failed.value.args[0]
    world.fail_sends = False
    processor = world.processor()
    # No assignment: the request arrives before the partition's index is built.

    await processor.handle_batch([_erasure("fay", 0)])

    assert first_bytes in world.published


async def test_invalid_requests_are_dead_letters() -> None:
    world = _World()
    good = _erasure("gus", 0)
    wrong_key = InboundRecord(good.topic, good.partition, 1, b"someone", good.value)
    not_json = InboundRecord(good.topic, good.partition, 2, b"gus", b"{")

    await _run(world, [wrong_key, not_json])

    assert [letter["reason"] for letter in world.dead_letters] == ["key_mismatch", "invalid_json"]
    assert world.erasures == {}
