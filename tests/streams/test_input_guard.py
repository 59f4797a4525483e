"""InputGuard: records the consumer skipped are read in from the broker, real gaps are accepted."""

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


class _Broker:
    """The range reader over a partition log that has every offset but `absent`."""

    def __init__(self, absent: set[int] | None = None) -> None:
        self.absent = absent or set()
        self.calls: list[tuple[TP, int, int]] = []

    async def __call__(self, tp: TP, start: int, end: int) -> list[InboundRecord]:
        self.calls.append((tp, start, end))
        offsets = [offset for offset in range(start, end) if offset not in self.absent]
        return _records(tp.partition, offsets)


async def test_contiguous_batches_pass() -> None:
    seeks = _Seeks()
    broker = _Broker()
    guard = InputGuard([_TOPIC], seeks, broker)

    first = await guard.admit(_records(0, range(20, 30)))
    guard.processed(first)
    second = await guard.admit(_records(0, range(30, 40)))

    assert len(first) == 10
    assert len(second) == 10
    assert seeks.calls == []
    assert broker.calls == []


async def test_skipped_records_read_in() -> None:
    seeks = _Seeks()
    broker = _Broker()
    gaps: list[int] = []
    guard = InputGuard([_TOPIC], seeks, broker, on_gap=lambda: gaps.append(1))
    guard.processed(await guard.admit(_records(1, range(20, 67))))

    jumped = await guard.admit(_records(1, range(1091, 1100)) + _records(2, [5]))
    guard.processed(jumped)
    following = await guard.admit(_records(1, range(1100, 1110)))

    # The skipped records come first, in offset order, then the batch's own.
    assert [r.offset for r in jumped if r.partition == 1] == list(range(67, 1100))
    assert [r.partition for r in jumped][-1] == 2
    assert [r.offset for r in following] == list(range(1100, 1110))
    assert broker.calls == [(TP(_TOPIC, 1), 67, 1091)]
    assert seeks.calls == []
    assert gaps == [1]


async def test_offsets_absent_on_broker_accepted() -> None:
    broker = _Broker(absent={11, 12, 13, 14})
    guard = InputGuard([_TOPIC], _Seeks(), broker)
    guard.processed(await guard.admit(_records(0, [10])))

    admitted = await guard.admit(_records(0, [15, 16]))

    assert [r.offset for r in admitted] == [15, 16]
    assert broker.calls == [(TP(_TOPIC, 0), 11, 15)]


async def test_first_record_checked_against_committed() -> None:
    broker = _Broker()
    committed = {TP(_TOPIC, 0): 40, TP(_TOPIC, 1): 8}
    guard = InputGuard([_TOPIC], _Seeks(), broker, committed=committed.get)

    admitted = await guard.admit(_records(0, [45, 46]) + _records(1, [8, 9]) + _records(2, [3]))

    assert [(r.partition, r.offset) for r in admitted] == [
        (0, 40),
        (0, 41),
        (0, 42),
        (0, 43),
        (0, 44),
        (0, 45),
        (0, 46),
        (1, 8),
        (1, 9),
        (2, 3),
    ]
    assert broker.calls == [(TP(_TOPIC, 0), 40, 45)]


async def test_first_record_without_commit_checked_against_log_start() -> None:
    broker = _Broker()
    committed = {TP(_TOPIC, 1): 8}
    starts = {TP(_TOPIC, 0): 0, TP(_TOPIC, 2): 3}
    requested: list[TP] = []

    async def log_start(tp: TP) -> int | None:
        requested.append(tp)
        return starts.get(tp)

    guard = InputGuard([_TOPIC], _Seeks(), broker, committed=committed.get, log_start=log_start)

    admitted = await guard.admit(_records(0, [4, 5]) + _records(1, [8]) + _records(2, [3]))
    guard.processed(admitted)
    await guard.admit(_records(0, [6]))

    # Partition 0 has nothing committed: its log starts at 0, so 0-3 were skipped.
    assert [(r.partition, r.offset) for r in admitted] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (0, 5),
        (1, 8),
        (2, 3),
    ]
    assert broker.calls == [(TP(_TOPIC, 0), 0, 4)]
    # Requested once per partition without a commit, and never again once processed.
    assert requested == [TP(_TOPIC, 0), TP(_TOPIC, 2)]


async def test_redelivered_records_pass() -> None:
    guard = InputGuard([_TOPIC], _Seeks(), _Broker())
    guard.processed(await guard.admit(_records(0, range(0, 50))))

    redelivered = await guard.admit(_records(0, range(20, 60)))

    assert len(redelivered) == 40


async def test_commit_limit_follows_processed() -> None:
    guard = InputGuard([_TOPIC], _Seeks(), _Broker())

    before = guard.commit_limit(TP(_TOPIC, 0))
    guard.processed(await guard.admit(_records(0, range(0, 5))))
    after = guard.commit_limit(TP(_TOPIC, 0))
    guard.forget([0])

    assert before == -1
    assert after == 5
    assert guard.commit_limit(TP(_TOPIC, 0)) == -1
    assert guard.commit_limit(TP("customers-changelog", 0)) is None


async def test_stalled_partition_sought_to_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks = _Seeks()
    counted: list[str] = []
    guard = InputGuard(
        [_TOPIC],
        seeks,
        _Broker(),
        on_gap=lambda: counted.append("gap"),
        committed={TP(_TOPIC, 0): 3}.get,
        on_stall=lambda: counted.append("stall"),
    )
    behind = [TP(_TOPIC, 0), TP(_TOPIC, 1)]
    guard.processed(await guard.admit(_records(1, [7])))
    now = time.monotonic()

    await guard.check_stalled(behind)
    monkeypatch.setattr(time, "monotonic", lambda: now + 11.0)
    await guard.check_stalled(behind)
    await guard.check_stalled(behind)

    # Partition 0 processed nothing: its committed offset; partition 1: the next one.
    assert seeks.calls == [(TP(_TOPIC, 0), 3), (TP(_TOPIC, 1), 8)]
    # A starved partition is counted as a stall, not as skipped records.
    assert counted == ["stall", "stall"]


async def test_caught_up_partition_never_sought(monkeypatch: pytest.MonkeyPatch) -> None:
    seeks = _Seeks()
    guard = InputGuard([_TOPIC], seeks, _Broker())
    now = time.monotonic()

    await guard.check_stalled([])
    monkeypatch.setattr(time, "monotonic", lambda: now + 60.0)
    await guard.check_stalled([])

    assert seeks.calls == []
