"""The worker's garbage-collection timer, on a registry of its own."""

from __future__ import annotations

import gc
import subprocess
import sys

from prometheus_client import CollectorRegistry

from tagger.streams.gc_pauses import YOUNG_COLLECTION_THRESHOLD, watch_gc
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


def test_tune_gc_freezes_and_raises_threshold() -> None:
    # In a child process, because freezing and the threshold are global to a process.
    # The last output line is the script's, after tune_gc's log line.
    script = (
        "import gc\n"
        "from tagger.streams.gc_pauses import tune_gc\n"
        "before = gc.get_threshold()\n"
        "tune_gc()\n"
        "print(gc.get_freeze_count(), *gc.get_threshold(), *before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    frozen, young, middle, oldest, _, middle_before, oldest_before = map(
        int, result.stdout.splitlines()[-1].split()
    )

    assert frozen > 1_000
    assert young == YOUNG_COLLECTION_THRESHOLD
    assert (middle, oldest) == (middle_before, oldest_before)
