"""The latency stage's matching and summary helpers, without a broker or Redis."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench.agents import OutputSpread
from bench.latency_stage import (
    EventTimes,
    MirrorWatch,
    _load_figures,
    _Session,
    _worker_histograms,
    mirror_seq_of_change,
    summarise,
    watermark_passed_at,
)
from tagger.streams.config import Settings
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.mirror_lua import mirror_seq


def test_summarise_nearest_rank() -> None:
    figures = summarise([index / 1000 for index in range(1, 101)])

    assert figures["count"] == 100
    assert figures["p50_ms"] == 50.0
    assert figures["p99_ms"] == 99.0
    assert figures["max_ms"] == 100.0


def test_summarise_empty() -> None:
    assert summarise([]) == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_mirror_seq_of_change_with_colons() -> None:
    assert mirror_seq_of_change("shop:c1:2:7") == mirror_seq(2, 7)


def test_event_times_unique_per_customer() -> None:
    times = EventTimes()

    first = times.stamp("c1", 100.0)
    second = times.stamp("c1", 100.0)
    other = times.stamp("c2", 100.0)

    assert first == 100_000
    assert second == 100_001
    # Never below an earlier stamp, so each partition's clock follows send order.
    assert other == 100_001
    assert times.sent_at("c1", 100_001) == 100.0
    assert times.sent_at("c1", 100_002) is None
    assert len(times) == 3


def test_watermark_passed_by_wall_clock() -> None:
    passed = watermark_passed_at(
        10_000, lateness_ms=500, offset_ms=2_000, partition_idle_from_s=0.0
    )

    # Due 10 s on the worker's clock is 8 s real; plus 0.5 s lateness and 1 s lag.
    assert passed == pytest.approx(9.5)


def test_watermark_waits_for_idle_partition() -> None:
    passed = watermark_passed_at(10_000, lateness_ms=0, offset_ms=0, partition_idle_from_s=10.5)

    assert passed == pytest.approx(12.5)


def test_mirror_watch_limit() -> None:
    watch = MirrorWatch(limit=1, window_s=1.0)

    assert watch.offer("c1", 10.0)
    assert not watch.offer("c2", 10.0)
    assert watch.offer("c1", 10.5)
    assert watch.watched(11.2) == ["c1"]
    assert watch.watched(11.6) == []
    assert watch.offer("c2", 11.6)


def test_mirror_watch_visible_after_send() -> None:
    watch = MirrorWatch(limit=10, window_s=5.0)
    watch.offer("c1", 10.0)
    watch.record("c1", 10.01, 0)
    watch.record("c1", 10.02, 0)
    watch.record("c1", 10.05, 3)

    assert watch.covers("c1", 10.0)
    assert watch.visible_at("c1", 3, 10.0) == 10.05
    assert watch.visible_at("c1", 4, 10.0) is None


def test_mirror_watch_uncovered_send() -> None:
    watch = MirrorWatch(limit=10, window_s=1.0)
    watch.offer("c1", 10.0)
    watch.record("c1", 10.01, 2)
    watch.watched(12.0)

    assert not watch.covers("c1", 12.5)
    assert watch.visible_at("c1", 2, 12.5) is None
    assert not watch.covers("c2", 10.0)


def test_mirror_watch_value_before_send() -> None:
    """A value polled before the send cannot come from the event: it is not counted."""
    watch = MirrorWatch(limit=10, window_s=5.0)
    watch.offer("c1", 10.0)
    watch.record("c1", 10.01, 5)
    watch.offer("c1", 10.5)

    assert watch.visible_at("c1", 5, 10.5) is None


def test_worker_histograms_split_gc_by_generation() -> None:
    registry = CollectorRegistry()
    metrics = TaggerMetrics.create(registry)
    metrics.batch_seconds.observe(0.02)
    metrics.gc_pause_seconds.labels("0").observe(0.0002)
    metrics.gc_pause_seconds.labels("2").observe(0.08)
    metrics.gc_pause_seconds.labels("2").observe(0.02)

    figures = _worker_histograms(generate_latest(registry))

    assert figures["batch"]["count"] == 1
    assert figures["gc_0"]["count"] == 1
    assert figures["gc_2"]["count"] == 2
    assert figures["gc_2"]["total_ms"] == 100.0
    assert figures["gc_2"]["p99_at_most_ms"] == 100.0
    # A generation with no series (never labelled) is left out.
    assert "gc_1" not in figures


def test_publishing_agent_records_matched() -> None:
    # The publishing Faust agent's records carry no change id, and it writes no Redis.
    session = _Session(settings=Settings(), producer=None, consumer=None, redis=None)  # type: ignore[arg-type]
    at = session.events.stamp("c1", 100.0)

    session.on_change({"customer_id": "c1", "at": at}, 100.02)
    session.on_change({"customer_id": "c9", "at": 5}, 100.03)
    figures = _load_figures(session, rate=1.0, sent=1, send_seconds=1.0, cpu={})

    assert session.received == 2
    assert figures["unmatched_changes"] == 1
    assert figures["topic"]["count"] == 1
    assert figures["topic"]["p50_ms"] == 20.0
    assert figures["redis"] is None


def test_output_spread_even_total() -> None:
    spread = OutputSpread(0.5)

    assert [spread.next_event() for _ in range(4)] == [0, 1, 0, 1]
    assert OutputSpread.total(10, 1.5) == 15
    # The total the latency stage waits for: a fraction of a record per event.
    assert OutputSpread.total(26_400, 0.322) == 8_500
