"""The Faust application: topics, tables, the batch agent, the clock timer and web views."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import structlog
from faust.types import TP
from prometheus_client import CollectorRegistry

import tagger.streams.stores  # noqa: F401 - makes rocksdb:// the key-partitioned store
from tagger.rules.rulebook import Rulebook
from tagger.streams.bulk_recovery import BulkTableManager
from tagger.streams.config import Settings
from tagger.streams.faults import drop_records
from tagger.streams.faust_app import TaggerApp, TaggerWorker
from tagger.streams.faust_sensor import install_faust_sensor
from tagger.streams.input_guard import InputGuard
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.partition_reader import read_range
from tagger.streams.processor import InboundRecord, Processor
from tagger.streams.rulebook_versions import BatchAbandoned, VersionGate
from tagger.streams.security import faust_aiokafka_args, faust_app_args
from tagger.streams.web import register_views, web_application_options

__all__ = [
    "BATCH_FAILED_EXIT_CODE",
    "PRODUCER_BUFFER_RECORDS",
    "PRODUCER_LINGER_MS",
    "TaggerApp",
    "TaggerRuntime",
    "TaggerWorker",
    "build_app",
    "fetch_max_wait_ms",
]

log = structlog.get_logger(__name__)

# The live clock and lag gauges are refreshed this often (seconds); firing a
# time-driven change lags its due time by at most this plus the live clock lag.
_TICK_INTERVAL_S = 0.25
# The fetch wait on the embedded Tansu broker (ms), which responds to a fetch
# only when the wait ends. 10 ms took an aiokafka consumer's p99 delivery
# delay from 750 ms (Faust's 1,500 ms wait) to 11 ms at 500 records/s.
_TANSU_FETCH_WAIT_MS = 10
# How long the input guard may take to read records the consumer skipped
# before the batch fails and the worker exits, to consume it again.
_RANGE_READ_TIMEOUT_S = 30.0
# Producer linger (ms). Each batch waits for two rounds of acknowledgements
# (changelogs, then tag changes), and each round waited the whole linger:
# 5.9 ms at 5 ms of linger, 0.6 ms without. The batch already groups records.
PRODUCER_LINGER_MS = 1
# The fetch size stays at Faust's 1 MiB per partition: larger fetches left
# input partitions without records for 10-80 s under large backlogs
# (docs/benchmarks.md).
# Records Faust's producer buffer holds before a stream waits for it to drain.
# Faust's 100 is below the changelog records of one batch (up to one per
# customer), so every batch stalled on it and logged "producer buffer full"
# (10,404 times in a 1,000,000-event run). The batch flushes the producer
# before it commits anyway, so the buffer holds at most about one batch.
PRODUCER_BUFFER_RECORDS = 10_000
# Exit code of a worker whose batch raised (EX_SOFTWARE): a supervisor
# restarts it, and the batch is consumed again.
BATCH_FAILED_EXIT_CODE = 70


@dataclass(slots=True)
class TaggerRuntime:
    """The pieces a worker process runs, and that the web views report on."""

    app: TaggerApp
    settings: Settings
    rulebook: Rulebook
    processor: Processor
    registry: CollectorRegistry
    metrics: TaggerMetrics
    mirror: Any = None
    gate: VersionGate | None = None

    def input_partitions(self, partition: int) -> list[TP]:
        """Return the input, repartition and erasure topic-partitions of one table partition."""
        topics = (
            *self.settings.input_topics,
            self.settings.repartition_topic,
            self.settings.erasure_topic,
        )
        return [TP(topic, partition) for topic in topics]

    def lag(self, tp: TP) -> int | None:
        """Return records left to process in `tp`, or None when its end is unknown yet."""
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:
            return None
        if highwater is None:
            return None
        processed = self.processor.processed_offsets.get((tp.topic, tp.partition))
        if processed is None:
            # Nothing processed since this worker got the partition: it starts
            # at the group's committed offset.
            return max(0, int(highwater) - (self.committed_offset(tp) or 0))
        return max(0, int(highwater) - (processed + 1))

    def committed_offset(self, tp: TP) -> int | None:
        """Return the group's committed offset of `tp` as Faust last read it, or None.

        Faust keeps it per partition in a private attribute (faust-streaming 0.15).
        """
        consumer: Any = self.app.consumer
        committed = consumer._committed_offset.get(tp)
        return int(committed) if committed else None

    def caught_up(self, partition: int) -> bool:
        """Return True when every record of the partition's input has been processed."""
        for tp in self.input_partitions(partition):
            lag = self.lag(tp)
            if lag is None or lag > 0:
                return False
        return True


def fetch_max_wait_ms(configured: int, *, tansu: bool) -> int | None:
    """Return the consumer's fetch wait (ms) for TAGGER_FETCH_MAX_WAIT_MS, or None for Faust's.

    0 means 10 ms on the embedded Tansu broker and Faust's 1,500 ms elsewhere.
    """
    if configured:
        return configured
    return _TANSU_FETCH_WAIT_MS if tansu else None


def build_app(  # noqa: PLR0915 - the app's wiring reads best in one place
    settings: Settings,
    rulebook: Rulebook,
    *,
    probe_end_offsets: bool = False,
    tansu: bool = False,
    mirror: Any = None,
    gate: VersionGate | None = None,
) -> TaggerRuntime:
    """Create the Faust app with its topics, tables, agent, timer and views."""
    registry = CollectorRegistry()
    metrics = TaggerMetrics.create(registry)
    TaggerApp.probe_end_offsets = probe_end_offsets
    TaggerApp.fetch_max_wait_ms = fetch_max_wait_ms(settings.fetch_max_wait_ms, tansu=tansu)
    TaggerApp.recovery_bulk_s = settings.recovery_bulk_s
    app = TaggerApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store=settings.extra.get("store", "memory://"),
        TableManager=BulkTableManager,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=PRODUCER_LINGER_MS,
        table_standby_replicas=settings.standby_replicas,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        web_application_options=web_application_options(settings),
        **faust_app_args(settings),
    )

    app.producer.buffer.max_messages = PRODUCER_BUFFER_RECORDS

    # Erasure requests share the agent with events, so they are applied in
    # the same batches, under the same lock, in offset order.
    source = app.topic(
        *settings.input_topics,
        settings.repartition_topic,
        settings.erasure_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    customers = app.Table(
        "customers",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )
    partition_records = app.Table(
        "partitions",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )
    # Erased customers: their next epoch and the input positions read before
    # the erasure (see streams/erasures.py). Keyed and partitioned like `customers`.
    erasures = app.Table(
        "erasures",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        use_partitioner=True,
    )

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        # Straight to the producer, past Faust's topic machinery (message
        # futures, the 100-message send buffer and a sensor call per record),
        # none of which output records need. The key picks the partition with
        # the client's default partitioner, as Topic.send does;
        # app.producer.flush waits for these records too.
        return await app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None
        )

    processor = Processor(
        settings=settings,
        rulebook=rulebook,
        customers=customers,
        partitions=partition_records,
        send=send,
        metrics=metrics,
        mirror_submit=None if mirror is None else mirror.submit,
        gate=gate,
        flush=app.producer.flush,
        erasures=erasures,
        mirror_erase=None if mirror is None else mirror.erase,
    )
    runtime = TaggerRuntime(
        app=app,
        settings=settings,
        rulebook=rulebook,
        processor=processor,
        registry=registry,
        metrics=metrics,
        mirror=mirror,
        gate=gate,
    )

    guard = _input_guard(runtime)

    @app.agent(source, name=f"{settings.app_id}.process")
    async def process(stream: Any) -> None:
        async for events in stream.take_events(
            settings.batch_size, within=settings.batch_timeout_s
        ):
            records = [
                InboundRecord(
                    topic=event.message.topic,
                    partition=event.message.partition,
                    offset=event.message.offset,
                    key=event.message.key,
                    value=event.message.value,
                    timestamp_ms=int(event.message.timestamp * 1000)
                    if event.message.timestamp
                    else None,
                )
                for event in events
            ]
            try:
                records = await guard.admit(drop_records(records))
                if not records:
                    continue
                await processor.handle_batch(records)
            except BatchAbandoned:
                # Stopping while the rulebook version is not active: the batch
                # stays unprocessed, and the commit fence keeps it uncommitted.
                continue
            except Exception:
                # Events are applied with their input positions, so a batch
                # skipped now would count as already applied when consumed
                # again. Exiting leaves its offsets uncommitted instead: the
                # next worker consumes it, and what was written repeats
                # byte-identically.
                log.critical(
                    "batch failed, exiting so that it is consumed again",
                    exit_code=BATCH_FAILED_EXIT_CODE,
                    records=len(records),
                    first={f"{r.topic}/{r.partition}": r.offset for r in reversed(records)},
                    exc_info=True,
                )
                logging.shutdown()
                os._exit(BATCH_FAILED_EXIT_CODE)
            guard.processed(records)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        partitions = {tp.partition for tp in revoked if tp.topic in settings.input_topics}
        processor.revoke(partitions)
        guard.forget(partitions)

    async def on_recovered() -> None:
        actives = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic in settings.input_topics
        }
        processor.revoke(set(processor.assigned) - actives)
        await processor.assign(sorted(actives))

    customers.on_recover(on_recovered)

    @app.timer(_TICK_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        for partition in list(processor.assigned):
            for tp in runtime.input_partitions(partition):
                lag = runtime.lag(tp)
                if lag is not None:
                    metrics.partition_lag.labels(tp.topic, str(partition)).set(lag)
            metrics.partition_caught_up.labels(str(partition)).set(
                1 if runtime.caught_up(partition) else 0
            )
        if mirror is not None:
            metrics.mirror_pending.set(mirror.pending_count)
        if gate is not None:
            metrics.rulebook_active.set(1 if gate.is_open else 0)
        await guard.check_stalled(_stalled_candidates(runtime))
        await processor.tick(runtime.caught_up)

    install_faust_sensor(app, registry)
    register_views(runtime)
    return runtime


def _input_guard(runtime: TaggerRuntime) -> InputGuard:
    """Create the agent's input guard and fence the app's commits with it."""
    app = runtime.app

    async def seek(tp: TP, offset: int) -> None:
        # seek_wait seeks inside the consumer's thread and resets Faust's
        # read offset, so the records read again are delivered.
        await app.consumer.seek_wait({tp: offset})

    auth = faust_aiokafka_args(app.conf)
    bootstrap = auth.pop("bootstrap_servers")

    async def read(tp: TP, start: int, end: int) -> list[InboundRecord]:
        return await read_range(bootstrap, tp, start, end, timeout_s=_RANGE_READ_TIMEOUT_S, **auth)

    async def log_start(tp: TP) -> int | None:
        offsets = await app.consumer.earliest_offsets(tp)
        offset = offsets.get(tp)
        return None if offset is None else int(offset)

    guard = InputGuard(
        {tp.topic for tp in runtime.input_partitions(0)},
        seek,
        read,
        on_gap=runtime.metrics.errors.labels("input_gap").inc,
        committed=runtime.committed_offset,
        on_stall=runtime.metrics.errors.labels("input_stall").inc,
        log_start=log_start,
    )
    # Commits never pass the first record not processed, whatever Faust acknowledged.
    app.commit_fence = guard.commit_limit
    return guard


def _stalled_candidates(runtime: TaggerRuntime) -> list[TP]:
    """Return the input topic-partitions that are behind while the worker is consuming."""
    gate = runtime.gate
    if gate is not None and not gate.is_open:
        # A worker waiting for its rulebook version takes no records on purpose.
        return []
    behind = []
    for partition, state in list(runtime.processor.assigned.items()):
        if not state.index_ready:
            continue
        for tp in runtime.input_partitions(partition):
            lag = runtime.lag(tp)
            if lag is not None and lag > 0:
                behind.append(tp)
    return behind
