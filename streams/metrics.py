"""The worker's own Prometheus metrics, built on a registry the caller passes in.

Labels stay bounded: event type, reason, rule id, action, outcome, topic
and partition. A customer id never becomes a label.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["TaggerMetrics"]

# Batch and event latencies on a loopback broker run from about a millisecond
# to seconds during recovery or a Redis outage.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A young-generation collection takes microseconds; a full one over a large
# heap can take a large part of a second.
_GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class TaggerMetrics:
    """Every metric the worker exports besides Faust's own sensor."""

    events: Counter
    invalid_events: Counter
    duplicate_events: Counter
    late_events: Counter
    repartitioned_events: Counter
    erasures: Counter
    tag_changes: Counter
    mirror_writes: Counter
    mirror_pending: Gauge
    mirror_resyncs: Counter
    errors: Counter
    states_trimmed: Counter
    batch_seconds: Histogram
    event_latency_seconds: Histogram
    gc_pause_seconds: Histogram
    partition_clock_ms: Gauge
    partition_lag: Gauge
    partition_caught_up: Gauge
    due_index_size: Gauge
    rulebook_active: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TaggerMetrics:
        """Register every metric on `registry` and return them."""
        return cls(
            events=Counter(
                "tagger_events_total",
                "Valid input events applied, by type.",
                ["type"],
                registry=registry,
            ),
            invalid_events=Counter(
                "tagger_invalid_events_total",
                "Input records sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=registry,
            ),
            duplicate_events=Counter(
                "tagger_duplicate_events_total",
                "Input events already applied (same position or same event_id).",
                registry=registry,
            ),
            late_events=Counter(
                "tagger_late_events_total",
                "Events older than their partition's watermark, by the rulebook's late policy.",
                ["policy"],
                registry=registry,
            ),
            repartitioned_events=Counter(
                "tagger_repartitioned_events_total",
                "Records with a wrong key or partition, forwarded to the repartition topic.",
                registry=registry,
            ),
            erasures=Counter(
                "tagger_erasures_total",
                "Erasure requests applied (`tagger forget`); a repeated request is not counted.",
                registry=registry,
            ),
            tag_changes=Counter(
                "tagger_tag_changes_total",
                "Tag changes published, by rule and action.",
                ["rule", "action", "source"],
                registry=registry,
            ),
            mirror_writes=Counter(
                "tagger_mirror_writes_total",
                "Customer writes to the Redis mirror, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            mirror_pending=Gauge(
                "tagger_mirror_pending",
                "Customers whose newest tags are not yet confirmed in Redis.",
                registry=registry,
            ),
            mirror_resyncs=Counter(
                "tagger_mirror_resyncs_total",
                "Times the worker found Redis had lost mirror data and re-submitted its customers.",
                registry=registry,
            ),
            errors=Counter(
                "tagger_errors_total",
                "Errors caught and handled by the worker, by kind.",
                ["kind"],
                registry=registry,
            ),
            states_trimmed=Counter(
                "tagger_states_trimmed_total",
                "Customer states trimmed to stay under TAGGER_MAX_STATE_BYTES.",
                registry=registry,
            ),
            batch_seconds=Histogram(
                "tagger_batch_seconds",
                "Time to process one batch of input records.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            event_latency_seconds=Histogram(
                "tagger_event_latency_seconds",
                "From an input record's Kafka timestamp to the end of its batch.",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            gc_pause_seconds=Histogram(
                "tagger_gc_pause_seconds",
                "Time the worker spent paused in Python's garbage collector, by generation.",
                ["generation"],
                buckets=_GC_BUCKETS,
                registry=registry,
            ),
            partition_clock_ms=Gauge(
                "tagger_partition_clock_ms",
                "Event-time clock of each assigned partition, epoch ms.",
                ["partition"],
                registry=registry,
            ),
            partition_lag=Gauge(
                "tagger_partition_lag",
                "Records between the last processed offset and the partition's end.",
                ["topic", "partition"],
                registry=registry,
            ),
            partition_caught_up=Gauge(
                "tagger_partition_caught_up",
                "1 when the partition has processed every record up to its end.",
                ["partition"],
                registry=registry,
            ),
            due_index_size=Gauge(
                "tagger_due_index_size",
                "Customers with a pending time-driven change, over assigned partitions.",
                registry=registry,
            ),
            rulebook_active=Gauge(
                "tagger_rulebook_active",
                "1 while this worker's rulebook version is the group's active one and it consumes.",
                registry=registry,
            ),
        )
