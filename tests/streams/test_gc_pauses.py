"""The worker's garbage-collection timer, on a registry of its own."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from tagger.streams.gc_pauses import watch_gc
from tagger.streams.metrics import TaggerMetrics


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("tagger_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_full_collection_is_timed_until_stopped() -> None:
    registry = CollectorRegistry()
    metrics = TaggerMetrics.create(registry)
    stop = watch_gc(metrics.gc_pause_seconds)
    try:
        gc.collect()
        gc.collect(0)
    finally:
        stop()

    assert _count(registry, "2") == 1
    assert _count(registry, "0") >= 1
    total = registry.get_sample_value("tagger_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None
    assert total > 0

    gc.collect()
    # Stopped: the callback is gone, so nothing more is counted.
    assert _count(registry, "2") == 1
    stop()
