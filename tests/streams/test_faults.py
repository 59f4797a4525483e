"""The record-dropping faults fire on the batch they name, whatever its shape."""

from __future__ import annotations

import pytest

from tagger.streams import faults
from tagger.streams.processor import InboundRecord

_TOPIC = "events"


def _records(*spans: tuple[int, range]) -> list[InboundRecord]:
    return [
        InboundRecord(_TOPIC, partition, offset, b"k", b"{}")
        for partition, offsets in spans
        for offset in offsets
    ]


def _offsets(records: list[InboundRecord]) -> list[tuple[int, int]]:
    return [(record.partition, record.offset) for record in records]


def _arm(monkeypatch: pytest.MonkeyPatch, point: str, count: int) -> None:
    """Arm `point:count` as a fresh worker would, with no partition seen yet."""
    monkeypatch.setattr(faults._armed, "point", point)
    monkeypatch.setattr(faults._armed, "remaining", count)
    monkeypatch.setattr(faults, "_seen", set())


def test_head_drop_single_record_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first batch after a start can contain one record of every partition.
    # The fault must still drop records, or the e2e test that arms it checks nothing.
    _arm(monkeypatch, faults.DROP_HEAD_POINT, 1)
    batch = _records((0, range(1)), (1, range(1)), (2, range(1)), (3, range(1)))

    assert _offsets(faults.drop_records(batch)) == [(1, 0), (2, 0), (3, 0)]
    # The fault fires once, so later batches pass whole.
    later = _records((0, range(1, 5)))
    assert faults.drop_records(later) == later


def test_head_drop_first_half(monkeypatch: pytest.MonkeyPatch) -> None:
    _arm(monkeypatch, faults.DROP_HEAD_POINT, 2)
    first = _records((0, range(4)))
    assert faults.drop_records(first) == first

    # Partition 0 was in the first batch, so only partition 1 is new here.
    second = _records((0, range(4, 6)), (1, range(6)))
    assert _offsets(faults.drop_records(second)) == [(0, 4), (0, 5), (1, 3), (1, 4), (1, 5)]


def test_middle_drop_skips_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    _arm(monkeypatch, faults.DROP_POINT, 1)
    small = _records((0, range(2)))
    assert faults.drop_records(small) == small

    batch = _records((0, range(2, 8)))
    assert _offsets(faults.drop_records(batch)) == [(0, 2), (0, 6), (0, 7)]


def test_other_point_passes_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    _arm(monkeypatch, "states_written", 1)
    batch = _records((0, range(3)))
    assert faults.drop_records(batch) == batch
