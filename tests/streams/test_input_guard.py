"""InputGuard: records the consumer skipped are read again, real gaps are accepted."""

from __future__ import annotations

import time

import pytest
from faust.types import TP

from tagger.streams.input_guard import InputGuard
from tagger.streams.processor import InboundRecord

_TOPIC = "events"


def _records(partition: int, offsets: range | list[int]) -> list[InboundRecord]:
    return [InboundRecord(_TOPIC, partition, offset, b"k", b"{}") for offset in offsets]


class _Seeks:
    def __init__(self) -> None:
        self.calls: list[tuple[TP, int]] = []

    async def __call__(self, tp: TP, offset: int) -> None:
        self.calls.append((tp, offset))


async def test_contiguous_batches_pass() -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks)

    first = await guard.admit(_records(0, range(20, 30)))
    guard.processed(first)
    second = await guard.admit(_records(0, range(30, 40)))

    assert len(first) == 10
    assert len(second) == 10
    assert seeks.calls == []


async def test_skipped_records_sought_back() -> None:
    seeks = _Seeks()
    gaps: list[int] = []
    guard = InputGuard([_TOPIC], seeks, on_gap=lambda: gaps.append(1))
    guard.processed(await guard.admit(_records(1, range(20, 67))))

    jumped = await guard.admit(_records(1, range(1091, 1100)) + _records(2, [5]))
    stale = await guard.admit(_records(1, range(1100, 1110)))
    again = await guard.admit(_records(1, range(67, 80)))

    assert [r.partition for r in jumped] == [2]
    assert stale == []
    assert [r.offset for r in again] == list(range(67, 80))
    assert seeks.calls == [(TP(_TOPIC, 1), 67)]
    assert gaps == [1]


async def test_missing_offsets_accepted_after_seek() -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks)
    guard.processed(await guard.admit(_records(0, [10])))

    assert await guard.admit(_records(0, [15, 16])) == []
    # Read again from 11, the first record is still 15: 11 to 14 do not exist.
    accepted = await guard.admit(_records(0, [15, 16]))

    assert [r.offset for r in accepted] == [15, 16]
    assert seeks.calls == [(TP(_TOPIC, 0), 11)]


async def test_redelivered_records_pass() -> None:
    guard = InputGuard([_TOPIC], _Seeks())
    guard.processed(await guard.admit(_records(0, range(0, 50))))

    redelivered = await guard.admit(_records(0, range(20, 60)))

    assert len(redelivered) == 40


async def test_commit_limit_follows_processed() -> None:
    guard = InputGuard([_TOPIC], _Seeks())

    before = guard.commit_limit(TP(_TOPIC, 0))
    guard.processed(await guard.admit(_records(0, range(0, 5))))
    after = guard.commit_limit(TP(_TOPIC, 0))
    guard.forget([0])

    assert before == -1
    assert after == 5
    assert guard.commit_limit(TP(_TOPIC, 0)) == -1
    assert guard.commit_limit(TP("customers-changelog", 0)) is None


async def test_seek_retried_when_records_never_come(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks)
    guard.processed(await guard.admit(_records(0, [10])))
    await guard.admit(_records(0, [40]))
    await guard.retry()
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 3.0)

    await guard.retry()

    assert seeks.calls == [(TP(_TOPIC, 0), 11), (TP(_TOPIC, 0), 11)]


async def test_stalled_partition_sought_to_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks)
    behind = [TP(_TOPIC, 0), TP(_TOPIC, 1)]
    guard.processed(await guard.admit(_records(1, [7])))
    now = time.monotonic()

    await guard.check_stalled(behind, lambda tp: 3)
    monkeypatch.setattr(time, "monotonic", lambda: now + 11.0)
    await guard.check_stalled(behind, lambda tp: 3)
    await guard.check_stalled(behind, lambda tp: 3)

    # Partition 0 processed nothing: its committed offset; partition 1: the next one.
    assert seeks.calls == [(TP(_TOPIC, 0), 3), (TP(_TOPIC, 1), 8)]


async def test_caught_up_partition_never_sought(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks)
    now = time.monotonic()

    await guard.check_stalled([], lambda tp: None)
    monkeypatch.setattr(time, "monotonic", lambda: now + 60.0)
    await guard.check_stalled([], lambda tp: None)

    assert seeks.calls == []
