"""The caching Faust sensor exports what faust-streaming's own Prometheus sensor exports."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from tagger.streams.faust_sensor import CachingPrometheusMonitor


@dataclass
class _Message:
    time_in: float | None = None


class _Task:
    """An agent's task, which the monitor keeps a weak reference to."""


@dataclass(eq=False)
class _Stream:
    shortlabel: str
    task_owner: _Task = field(default_factory=_Task)


@dataclass(frozen=True)
class _Table:
    name: str


def _drive(monitor: PrometheusMonitor) -> None:
    """Feed a monitor messages, events and table operations on two topics and two streams."""
    streams = [_Stream("Stream: Topic: app-events"), _Stream("Stream: Topic: app-clock")]
    tables = [_Table("customers"), _Table("partitions")]
    for n in range(40):
        tp = TP(topic=f"topic-{n % 2}", partition=n % 3)
        monitor.on_message_in(tp, n, _Message())  # type: ignore[arg-type]
        state = monitor.on_stream_event_in(tp, n, streams[n % 2], None)  # type: ignore[arg-type]
        table = tables[n % 2]
        monitor.on_table_get(table, b"key")  # type: ignore[arg-type]
        monitor.on_table_set(table, b"key", b"value")  # type: ignore[arg-type]
        if n % 5 == 0:
            monitor.on_table_del(table, b"key")  # type: ignore[arg-type]
        monitor.on_stream_event_out(tp, n, streams[n % 2], None, state)  # type: ignore[arg-type]
        if n % 4 == 0:
            monitor.on_message_out(tp, n, _Message(time_in=0.0))  # type: ignore[arg-type]
        if n == 25:
            # What a rebalance's start and end do to the metrics.
            monitor._clear_partition_related_metrics()


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample but the creation times and the measured latencies."""
    samples = {}
    for family in registry.collect():
        if family.name == "faust_events_runtime_ms":
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _exported(monitor_class: type[PrometheusMonitor]) -> dict[Any, float]:
    registry = CollectorRegistry()
    monitor = monitor_class(metrics=FaustMetrics.create(registry, "faust"))
    _drive(monitor)
    return _samples(registry)


def test_caching_sensor_matches_faust_sensor() -> None:
    expected = _exported(PrometheusMonitor)
    exported = _exported(CachingPrometheusMonitor)
    deleted = ("operation", "keys_deleted"), ("table", "table.customers")
    streams = [key for key in expected if key[0] == "faust_total_events_per_stream_total"]

    assert exported == expected
    assert ("faust_messages_received_per_topic_total", (("topic", "topic-0"),)) in expected
    assert expected[("faust_messages_received_total", ())] == 40
    assert expected[("faust_table_operations_total", deleted)] == 4
    assert len(streams) == 2


def test_caching_sensor_lets_streams_go() -> None:
    monitor = CachingPrometheusMonitor(metrics=FaustMetrics.create(CollectorRegistry(), "faust"))
    stream = _Stream("Stream: Topic: app-events")
    tp = TP(topic="topic-0", partition=0)
    monitor.on_stream_event_in(tp, 0, stream, None)  # type: ignore[arg-type]
    kept_before = len(monitor._stream_children)

    del stream
    gc.collect()

    assert kept_before == 1
    assert len(monitor._stream_children) == 0
