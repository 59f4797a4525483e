"""Faust's Prometheus sensor, with its labelled children kept between calls.

faust-streaming 0.15's `PrometheusMonitor` looks up a labelled child
(`labels(...)`) on every message, event and table access, and formats the
stream's label anew for each event. `CachingPrometheusMonitor` keeps each
child once looked up and exports the same metrics under the same names.
"""

from __future__ import annotations

import weakref
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors
from prometheus_client import CollectorRegistry

__all__ = ["CachingPrometheusMonitor", "install_faust_sensor"]


class CachingPrometheusMonitor(PrometheusMonitor):
    """A `PrometheusMonitor` that looks up each labelled child once."""

    def __init__(self, metrics: Any, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        # Not `_children`: mode.Service keeps its child services under that name.
        self._labelled: dict[tuple[Any, ...], Any] = {}
        # Weak keys, as in Faust's own monitor: a replaced stream is not kept alive.
        self._stream_children: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _child(self, metric: Any, key: tuple[Any, ...], **labels: Any) -> Any:
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(**labels)
        return child

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        """Count a message received and record its partition's offset."""
        Monitor.on_message_in(self, tp, offset, message)
        metrics = self._metrics
        metrics.messages_received.inc()
        metrics.active_messages.inc()
        self._child(metrics.messages_received_per_topics, ("topic", tp.topic), topic=tp.topic).inc()
        self._child(
            metrics.messages_received_per_topics_partition,
            ("partition", tp),
            topic=tp.topic,
            partition=tp.partition,
        ).set(offset)

    def on_stream_event_in(
        self, tp: Any, offset: int, stream: Any, event: Any
    ) -> dict[str, Any] | None:
        """Count an event that a stream starts to process."""
        state: dict[str, Any] | None = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        metrics = self._metrics
        metrics.total_events.inc()
        metrics.total_active_events.inc()
        child = self._stream_children.get(stream)
        if child is None:
            label = f"stream.{self._stream_label(stream)}.events"
            child = metrics.total_events_per_stream.labels(stream=label)
            self._stream_children[stream] = child
        child.inc()
        return state

    def _clear_partition_related_metrics(self) -> None:
        # Faust removes the per-topic and per-partition series at each rebalance,
        # so children kept from before would no longer be exported.
        super()._clear_partition_related_metrics()
        self._labelled.clear()
        self._stream_children.clear()

    def on_table_get(self, table: Any, key: Any) -> None:
        """Count a table read."""
        Monitor.on_table_get(self, table, key)
        self._table_operation(table, self.KEYS_RETRIEVED).inc()

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        """Count a table write."""
        Monitor.on_table_set(self, table, key, value)
        self._table_operation(table, self.KEYS_UPDATED).inc()

    def on_table_del(self, table: Any, key: Any) -> None:
        """Count a table deletion."""
        Monitor.on_table_del(self, table, key)
        self._table_operation(table, self.KEYS_DELETED).inc()

    def _table_operation(self, table: Any, operation: str) -> Any:
        return self._child(
            self._metrics.table_operations,
            ("table", table.name, operation),
            table=f"table.{table.name}",
            operation=operation,
        )


def install_faust_sensor(app: Any, registry: CollectorRegistry) -> None:
    """Export Faust's sensor metrics (`faust_…`) on `registry` and serve them at /metrics."""
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    # The stock monitor has not been added to the app's sensors yet: Faust
    # does that when the app starts. Its metrics are already registered, so
    # the caching monitor takes them over.
    app.monitor = CachingPrometheusMonitor(metrics=app.monitor._metrics)
