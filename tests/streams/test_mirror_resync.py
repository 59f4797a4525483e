"""The processor's mirror resync: which customers it re-submits, and when."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from tagger.rules.rulebook import load_rulebook
from tagger.rules.state import CustomerState, encode_state
from tagger.streams.config import Settings
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.partitioning import partition_for
from tagger.streams.processor import Processor

_PARTITIONS = 4


def _processor(customers: dict[bytes, bytes], submitted: list[tuple[str, int]]) -> Processor:
    rulebook = load_rulebook(None)

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    def submit(customer_id: str, seq: int, tags: dict[str, int]) -> None:
        submitted.append((customer_id, seq))

    return Processor(
        settings=Settings(partitions=_PARTITIONS, clock_mode="replay"),
        rulebook=rulebook,
        customers=customers,
        partitions={},
        send=send,
        metrics=TaggerMetrics.create(CollectorRegistry()),
        mirror_submit=submit,
    )


def _table(*states: CustomerState) -> dict[bytes, bytes]:
    version = load_rulebook(None).version
    table: dict[bytes, bytes] = {}
    for state in states:
        state.rulebook_version = version
        table[state.customer_id.encode()] = encode_state(state)
    return table


def _mirrored(customer_id: str, seq: int, tags: dict[str, Any]) -> CustomerState:
    return CustomerState(customer_id=customer_id, seq=seq, tags=tags, mirrored_seq=seq)


async def test_resync_submits_changed_customers() -> None:
    submitted: list[tuple[str, int]] = []
    table = _table(
        _mirrored("tagged", 3, {"vip": 5}),
        _mirrored("untagged", 2, {}),
        _mirrored("never-changed", 0, {}),
    )
    processor = _processor(table, submitted)
    await processor.assign(range(_PARTITIONS))
    assert submitted == []

    count = await processor.resync_mirror()

    assert count == 2
    assert sorted(submitted) == [("tagged", 3), ("untagged", 2)]


async def test_resync_skips_unassigned_partitions() -> None:
    submitted: list[tuple[str, int]] = []
    processor = _processor(_table(_mirrored("tagged", 3, {"vip": 5})), submitted)
    mine = partition_for(b"tagged", _PARTITIONS)
    await processor.assign([p for p in range(_PARTITIONS) if p != mine])

    count = await processor.resync_mirror()

    assert count == 0
    assert submitted == []


async def test_assign_resubmits_mirrored_when_flagged() -> None:
    submitted: list[tuple[str, int]] = []
    processor = _processor(_table(_mirrored("tagged", 3, {"vip": 5})), submitted)
    processor.resubmit_on_assign = True

    await processor.assign(range(_PARTITIONS))

    assert submitted == [("tagged", 3)]
