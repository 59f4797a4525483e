"""The latency stage: event to tag change at a fixed offered load, and time-driven lateness.

A worker in live clock mode runs on topics and a Redis prefix of its own.
Events shaped like the benchmark input, each stamped with the wall time at
which it is sent, arrive at a fixed rate paced by the wall clock. Every tag
change read back is matched to the event that caused it. Its latency runs
from that event's send to the change being read from the tag-change topic,
and to the mirror's seq key showing it in Redis. The load's first seconds
are a warm-up: their events are sent and matched like the others, but left
out of the figures, because the first batches pay for connections,
metadata and cold caches. Then carts that are never
bought measure how late `hesitant` fires after the watermark passes its due
time.

With `target="publishing"` the same load goes to the publishing Faust agent
of bench/agents.py instead. It writes one table entry per customer per batch,
then publishes records after the changelog is acknowledged, as the worker
does, but runs no rules and writes no Redis. Its latency is what Faust and
the broker alone add on this machine at this load.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
import redis.asyncio
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.agents import OutputSpread
from bench.data import BaseEvent, BenchInput
from bench.kafka_io import ProcessTimes
from bench.worker_stage import get_path, start_worker, stop_worker
from tagger.rules.rulebook import load_rulebook
from tagger.streams.config import Settings
from tagger.streams.gc_pauses import time_collections
from tagger.streams.mirror_lua import mirror_seq, seq_key
from tagger.streams.partitioning import partition_for

# The live clock's rules, imported so that the lateness figures follow the worker.
from tagger.streams.processor import _LIVE_CLOCK_LAG_MS, _LIVE_IDLE_S
from tagger.streams.topics import create_topics
from tagger.streams.worker_process import caught_up_to

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = [
    "DEFAULT_RATE",
    "EventTimes",
    "MirrorWatch",
    "measure_latency",
    "mirror_seq_of_change",
    "summarise",
    "watermark_passed_at",
]

log = structlog.get_logger(__name__)

# Offered load (events/s) when the worker stage did not run in the same
# command. NOTE: about half of the 1,100 events/s the worker reached on the
# 2-core machine of docs/benchmarks.md; elsewhere pass --latency-rate.
DEFAULT_RATE = 500.0
# The embedded broker does not return a fetch as soon as records arrive. An
# aiokafka consumer waiting up to 1,500 ms read records a median 386 ms after
# their send at 500 records/s. The consumer here waits at most this long (ms),
# which adds a few milliseconds to the topic figures.
_FETCH_MAX_WAIT_MS = 5
_FETCH_MAX_RECORDS = 5_000
# Sends awaited together, which bounds the delivery futures in flight.
_SEND_WINDOW = 5_000
# Redis polling: one MGET of every watched seq key this often (seconds), at
# most this many customers watched at once, each for this long after its
# last event was sent.
_REDIS_POLL_INTERVAL_S = 0.002
_REDIS_WATCH_LIMIT = 64
_REDIS_WATCH_S = 3.0
_CPU_SAMPLE_INTERVAL_S = 0.1
_STATUS_POLL_INTERVAL_S = 0.2
# After the last event: stop once the worker has caught up and no change has
# arrived for this long, or give up after the timeout.
_DRAIN_QUIET_S = 1.0
_DRAIN_TIMEOUT_S = 60.0
# Time-driven lateness: this many customers add one item to their cart and
# never buy it, sent at this rate (events/s).
_HESITANT_CUSTOMERS = 300
_HESITANT_RATE = 100.0
# The default rulebook's `hesitant`: `cart_age >= 30m`.
_HESITANT_AFTER_MS = 30 * 60_000
# Each cart is due this long after the last cart is sent, plus its own
# place in the burst, so that every partition is idle for the live clock's
# 2 s before its first due time (see `_send_carts`).
_HESITANT_MARGIN_MS = 3_000
_FIRE_TIMEOUT_S = 30.0
# Written by the publishing agent once its partitions are assigned and recovered.
_READY_FILE = "latency-publishing.ready"


def summarise(latencies_s: list[float]) -> dict[str, Any]:
    """Return the count and the nearest-rank p50, p99 and max of latencies in milliseconds."""
    if not latencies_s:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies_s)

    def rank(fraction: float) -> float:
        index = max(0, math.ceil(fraction * len(ordered)) - 1)
        return round(ordered[index] * 1000, 1)

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def mirror_seq_of_change(change_id: str) -> int:
    """Return the seq-key value at which Redis contains a change `{customer_id}:{epoch}:{seq}`.

    Customer ids may contain colons, so the id is split from the right.
    """
    _customer, epoch, seq = change_id.rsplit(":", 2)
    return mirror_seq(int(epoch), int(seq))


def watermark_passed_at(
    due_ms: int, *, lateness_ms: int, offset_ms: int, partition_idle_from_s: float
) -> float:
    """Return the wall time (epoch s) at which a live partition's watermark reaches `due_ms`.

    A caught-up partition with no event for `_LIVE_IDLE_S` moves its clock to
    the worker's wall time (the real one plus `offset_ms`) less
    `_LIVE_CLOCK_LAG_MS`, and its watermark is the clock less the allowed
    lateness. `partition_idle_from_s` is the wall time of the partition's last
    event, before which the clock does not follow the wall. The worker moves
    the clock in ticks of 0.25 s, so a tag firing in the tick after this
    instant is up to that much late.
    """
    by_clock = (due_ms - offset_ms + lateness_ms + _LIVE_CLOCK_LAG_MS) / 1000
    return max(by_clock, partition_idle_from_s + _LIVE_IDLE_S)


class EventTimes:
    """Event times stamped at send, and the wall time each event was sent.

    A change decided by an event holds (`at`) from its partition's clock once
    the event moved it. Times never decrease in send order, and every
    partition receives its events in send order, so that clock is the
    event's own time. Times are also unique per customer, so
    (customer id, `at`) finds the event behind each change.
    """

    def __init__(self) -> None:
        self._last_ms = 0
        self._last_by_customer: dict[str, int] = {}
        self._sent: dict[tuple[str, int], float] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def stamp(self, customer_id: str, wall_s: float) -> int:
        """Return the event time (epoch ms) of an event sent at `wall_s`, and record the send."""
        ts = max(int(wall_s * 1000), self._last_ms, self._last_by_customer.get(customer_id, -1) + 1)
        self._last_ms = ts
        self._last_by_customer[customer_id] = ts
        self._sent[(customer_id, ts)] = wall_s
        return ts

    def sent_at(self, customer_id: str, at: int) -> float | None:
        """Return the send time of the customer's event stamped `at`, or None when there is none."""
        return self._sent.get((customer_id, at))


@dataclass(slots=True)
class _Segment:
    """One uninterrupted watch of a customer's seq key: its start and each value change."""

    start_s: float
    end_s: float
    values: list[tuple[float, int]] = field(default_factory=list)


class MirrorWatch:
    """Polled values of the Redis seq keys of a bounded sample of customers.

    A customer is watched from the send of an event until `window_s` after
    its last event, if fewer than `limit` customers are watched at the
    send. Events sent while their customer is not watched are not sampled.
    Each poll's time is when the reply arrived, so a value is known to be
    readable by then.
    """

    def __init__(self, *, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._open: dict[str, _Segment] = {}
        self._segments: dict[str, list[_Segment]] = {}

    def offer(self, customer_id: str, sent_s: float) -> bool:
        """Watch the customer from `sent_s` on, if there is room; return whether it is watched."""
        segment = self._open.get(customer_id)
        if segment is not None:
            segment.end_s = sent_s + self.window_s
            return True
        if len(self._open) >= self.limit:
            return False
        segment = _Segment(start_s=sent_s, end_s=sent_s + self.window_s)
        self._open[customer_id] = segment
        self._segments.setdefault(customer_id, []).append(segment)
        return True

    def watched(self, now_s: float) -> list[str]:
        """Close the watches that ended before `now_s`; return the customers still watched."""
        for customer_id in [c for c, s in self._open.items() if s.end_s < now_s]:
            del self._open[customer_id]
        return list(self._open)

    def record(self, customer_id: str, polled_s: float, value: int) -> None:
        """Record a polled seq-key value (0 when the key does not exist)."""
        segment = self._open.get(customer_id)
        if segment is None:
            return
        if not segment.values or segment.values[-1][1] != value:
            segment.values.append((polled_s, value))

    def __len__(self) -> int:
        return len(self._segments)

    def covers(self, customer_id: str, sent_s: float) -> bool:
        """Return True when the customer was watched at `sent_s`, so its event was sampled."""
        return self._covering(customer_id, sent_s) is not None

    def visible_at(self, customer_id: str, seq: int, sent_s: float) -> float | None:
        """Return when the seq key first showed `seq` or more, in the watch that covers the
        send of the event behind it; None when that watch never saw it."""
        segment = self._covering(customer_id, sent_s)
        if segment is None:
            return None
        for polled_s, value in segment.values:
            if value >= seq:
                # Seen before the event was sent: the change is not this event's.
                return polled_s if polled_s >= sent_s else None
        return None

    def _covering(self, customer_id: str, sent_s: float) -> _Segment | None:
        for segment in self._segments.get(customer_id, ()):
            if segment.start_s <= sent_s <= segment.end_s:
                return segment
        return None


@dataclass(slots=True)
class _LoadResult:
    # (customer id, mirror seq, sent, received) of each change matched to an event.
    matched: list[tuple[str, int, float, float]] = field(default_factory=list)
    unmatched: int = 0
    events_with_changes: set[tuple[str, float]] = field(default_factory=set)
    # Changes of events sent during the warm-up, matched but left out of the figures.
    warmup_changes: int = 0


@dataclass(slots=True)
class _Session:
    """The clients and what they collected during one run of the stage."""

    settings: Settings
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    # None when the target writes no Redis (the publishing agent).
    redis: redis.asyncio.Redis | None
    events: EventTimes = field(default_factory=EventTimes)
    watch: MirrorWatch = field(
        default_factory=lambda: MirrorWatch(limit=_REDIS_WATCH_LIMIT, window_s=_REDIS_WATCH_S)
    )
    load: _LoadResult = field(default_factory=_LoadResult)
    # Customer id -> (`at`, received) of each hesitant customer's first `added` change.
    fired: dict[str, tuple[int, float]] = field(default_factory=dict)
    hesitant: set[str] = field(default_factory=set)
    all_fired: asyncio.Event = field(default_factory=asyncio.Event)
    last_change_s: float = 0.0
    stopping: bool = False
    polls: int = 0
    # Wall time from which sent events count. Those sent before are the warm-up.
    measure_from_s: float = 0.0
    # Every record read from the output topic, matched or not.
    received: int = 0
    # Records the publishing agent sends per event. Unused for the worker.
    outputs_per_event: float = 1.0

    def on_change(self, change: dict[str, Any], received_s: float) -> None:
        """Match one tag change to its event, or note when a hesitant tag fired."""
        self.last_change_s = received_s
        self.received += 1
        customer_id = str(change["customer_id"])
        if customer_id in self.hesitant:
            if change["tag"] == "hesitant" and change["action"] == "added":
                self.fired.setdefault(customer_id, (int(change["at"]), received_s))
                if len(self.fired) == len(self.hesitant):
                    self.all_fired.set()
            return
        sent_s = self.events.sent_at(customer_id, int(change["at"]))
        if sent_s is None:
            self.load.unmatched += 1
            return
        if sent_s < self.measure_from_s:
            self.load.warmup_changes += 1
            return
        # The publishing agent's records have no change id, and no Redis to compare.
        seq = mirror_seq_of_change(str(change["change_id"])) if "change_id" in change else 0
        self.load.matched.append((customer_id, seq, sent_s, received_s))
        self.load.events_with_changes.add((customer_id, sent_s))


def measure_latency(
    context: Context,
    *,
    rate: float,
    seconds: float,
    warmup_s: float,
    base: list[BaseEvent],
    timeout_s: float,
    target: str = "worker",
    outputs_per_event: float = 1.0,
) -> dict[str, Any]:
    """Run the latency stage and return its figures (see the module docstring).

    `rate` is the offered load in events/s and `seconds` how long it is
    measured, after `warmup_s` seconds of the same load that are left out.
    The events follow the benchmark input's shape, with its ratio of events
    to customers. `target` is "worker" or "publishing". The publishing agent
    publishes `outputs_per_event` records per event on average.
    """
    settings = _stage_settings(context, target)
    create_topics(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log_path = context.workdir / f"latency-{target}.log"
    if target == "worker":
        process = start_worker(settings, log_path, profile_output=None)
    else:
        process = _start_publishing(settings, log_path, context.workdir, outputs_per_event)
    try:
        if target == "worker":
            _wait_ready(settings, process, log_path, timeout_s)
        else:
            _wait_file(context.workdir / _READY_FILE, process, log_path, timeout_s)
        times = ProcessTimes({"worker": process.pid, "bench": os.getpid(), **context.server_pids})
        planned = math.ceil(rate * (seconds + warmup_s))
        customers = max(1, round(planned * context.customers / context.events))
        bench_input = BenchInput(base, planned, customers)
        figures = asyncio.run(
            _measure(
                settings,
                bench_input,
                base,
                load=_Load(rate=rate, seconds=seconds, warmup_s=warmup_s),
                times=times,
                worker=target == "worker",
                outputs_per_event=outputs_per_event,
            )
        )
    finally:
        stop_worker(
            process, profiled=False, label="worker" if target == "worker" else "publishing agent"
        )
    figures["customers"] = customers
    return figures


def _stage_settings(context: Context, target: str) -> Settings:
    """Return settings of a live-mode worker on input and output topics of this stage only."""
    name = "latency" if target == "worker" else f"latency-{target}"
    settings = context.worker_settings(name)
    prefix = f"{context.run_id}-{name}"
    return settings.with_changes(input_topics=(f"{prefix}-events",), clock_mode="live")


def _start_publishing(
    settings: Settings, log_path: Path, workdir: Path, outputs_per_event: float
) -> subprocess.Popen[bytes]:
    """Start the publishing Faust agent on the stage's topics.

    The agent writes `_READY_FILE` in `workdir` once its partitions are assigned
    and recovered.
    """
    from bench.runner import faust_agent_command, start_child

    (workdir / _READY_FILE).unlink(missing_ok=True)
    command = faust_agent_command(
        "publishing",
        settings,
        extra=(
            "--out-topic",
            settings.tag_change_topic,
            "--outputs-per-event",
            str(outputs_per_event),
            "--ready-file",
            str(workdir / _READY_FILE),
        ),
    )
    return start_child(command, log_path)


def _wait_file(
    path: Path, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Wait until `process` writes `path`. Raise when it exits or the timeout passes."""
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if process.poll() is not None:
            raise click.ClickException(
                f"publishing agent exited with code {process.returncode}; see {log_path}"
            )
        if path.exists():
            log.info("publishing agent ready", seconds=round(time.monotonic() - started, 1))
            return
        time.sleep(_STATUS_POLL_INTERVAL_S)
    raise click.ClickException(f"publishing agent was not ready within {timeout_s:.0f} s")


def _wait_ready(
    settings: Settings, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Wait until every partition is assigned, recovered and caught up with its input."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(
                f"latency worker exited with code {process.returncode}; see {log_path}"
            )
        body = get_path(settings, "/status")
        status = orjson.loads(body) if body else None
        if (
            status is not None
            and status["ready"]
            and caught_up_to(status, end_clock=None, partitions=settings.partitions)
        ):
            log.info("latency worker ready", seconds=round(time.monotonic() - started, 1))
            return
        time.sleep(_STATUS_POLL_INTERVAL_S)
    raise click.ClickException(f"latency worker was not ready within {timeout_s:.0f} s")


async def _measure(
    settings: Settings,
    bench_input: BenchInput,
    base: list[BaseEvent],
    *,
    load: _Load,
    times: ProcessTimes,
    worker: bool,
    outputs_per_event: float,
) -> dict[str, Any]:
    session = _Session(
        settings=settings,
        producer=AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            linger_ms=0,
            client_id="bench-latency",
        ),
        consumer=AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            client_id="bench-latency-changes",
        ),
        redis=redis.asyncio.Redis.from_url(settings.redis_url) if worker else None,
        outputs_per_event=outputs_per_event,
    )
    await session.producer.start()
    await session.consumer.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        await _assign_from_start(session.consumer, settings.tag_change_topic)
        tasks = [asyncio.create_task(_consume(session))]
        if worker:
            tasks.append(asyncio.create_task(_poll_redis(session)))
        figures = await _offer_load(session, bench_input, load, times)
        if worker:
            figures["time_driven"] = await _measure_lateness(session, base)
    finally:
        session.stopping = True
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await session.consumer.stop()
        await session.producer.stop()
        if session.redis is not None:
            await session.redis.aclose()

    # A reader that failed would leave the figures short without a sign.
    failures = [result for result in results if isinstance(result, Exception)]
    if failures:
        raise click.ClickException(
            f"reading tag changes or polling Redis failed: {failures[0]!r}; "
            "the figures would be incomplete, so run the stage again"
        )
    return figures


async def _assign_from_start(consumer: AIOKafkaConsumer, topic: str) -> None:
    # `topics()` refreshes the metadata that `partitions_for_topic` reads.
    await consumer.topics()
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise click.ClickException(f"tag-change topic {topic!r} not found: was it created?")
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)


async def _consume(session: _Session) -> None:
    """Read every tag change, stamping each fetched batch with the time it arrived."""
    while not session.stopping:
        batch = await session.consumer.getmany(timeout_ms=100, max_records=_FETCH_MAX_RECORDS)
        received_s = time.time()
        for records in batch.values():
            for record in records:
                session.on_change(orjson.loads(record.value), received_s)


async def _poll_redis(session: _Session) -> None:
    """Read the seq keys of the watched customers in one MGET every poll interval."""
    assert session.redis is not None
    prefix = session.settings.redis_prefix
    while not session.stopping:
        started = time.monotonic()
        customers = session.watch.watched(time.time())
        if customers:
            values = await session.redis.mget([seq_key(prefix, c) for c in customers])
            polled_s = time.time()
            session.polls += 1
            for customer_id, value in zip(customers, values, strict=True):
                session.watch.record(customer_id, polled_s, int(value) if value else 0)
        elapsed = time.monotonic() - started
        await asyncio.sleep(max(0.0, _REDIS_POLL_INTERVAL_S - elapsed))


async def _sample_cpu(times: ProcessTimes) -> None:
    while True:
        times.sample()
        await asyncio.sleep(_CPU_SAMPLE_INTERVAL_S)


async def _offer_load(
    session: _Session, bench_input: BenchInput, load: _Load, times: ProcessTimes
) -> dict[str, Any]:
    """Send events at the load's rate, wait for their changes, and return the figures.

    The bench process's own objects are frozen for the garbage collector
    first, and its collections during the load are timed: a long one would
    delay sends and reads, and add to every latency measured meanwhile.
    """
    topic = session.settings.input_topics[0]
    gc.collect()
    gc.freeze()
    pauses = _GcPauses()
    stop_timing = time_collections(pauses.record)
    sampler = asyncio.create_task(_sample_cpu(times))
    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    session.measure_from_s = time.time() + load.warmup_s
    measured = 0
    try:
        for index, (key, value, _ts) in enumerate(bench_input.records()):
            delay = started + index / load.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - started >= load.warmup_s + load.seconds:
                break

            event = orjson.loads(value)
            customer_id = str(event["customer_id"])
            sent_s = time.time()
            event["ts"] = session.events.stamp(customer_id, sent_s)
            pending.append(await session.producer.send(topic, orjson.dumps(event), key=key))
            if sent_s >= session.measure_from_s:
                measured += 1
                if session.redis is not None:
                    session.watch.offer(customer_id, sent_s)
            if len(pending) >= _SEND_WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        send_seconds = max(0.0, time.monotonic() - started - load.warmup_s)
        cpu = times.shares(send_seconds)
    finally:
        sampler.cancel()
        stop_timing()
        gc.unfreeze()

    sent = len(session.events)
    log.info("latency load sent", events=sent, measured=measured, seconds=round(send_seconds, 2))
    if session.redis is not None:
        histograms = await _drain(session, sent)
    else:
        histograms = {}
        await _drain_outputs(session, sent)
    figures = _load_figures(
        session, rate=load.rate, sent=measured, send_seconds=send_seconds, cpu=cpu
    )
    figures["warmup"] = {
        "seconds": load.warmup_s,
        "events": sent - measured,
        "changes": session.load.warmup_changes,
    }
    figures["bench_gc"] = pauses.summary()
    figures["worker_histograms"] = histograms
    return figures


@dataclass(slots=True)
class _Load:
    """The offered load: events/s, measured seconds, and warm-up seconds before them."""

    rate: float
    seconds: float
    warmup_s: float


@dataclass(slots=True)
class _GcPauses:
    """The bench process's garbage collections during the load: count, total and longest."""

    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0

    def record(self, _generation: int, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.longest_s = max(self.longest_s, seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "collections": self.count,
            "total_ms": round(self.total_s * 1000, 1),
            "longest_ms": round(self.longest_s * 1000, 1),
        }


async def _drain(session: _Session, sent: int) -> dict[str, Any]:
    """Wait until the worker has processed every event sent and no change has arrived for
    a while; return its histograms then.

    The worker observes `tagger_event_latency_seconds` once per input record,
    after the batch's changes were acknowledged. `/status` is not enough,
    because the embedded broker can report an end offset below the last
    record, so a partition may look caught up too early.
    """
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    histograms: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = await asyncio.to_thread(get_path, session.settings, "/metrics")
        histograms = _worker_histograms(body)
        processed = histograms.get("event_latency", {}).get("count", 0)
        if processed >= sent and time.time() - session.last_change_s >= _DRAIN_QUIET_S:
            return histograms
        await asyncio.sleep(_STATUS_POLL_INTERVAL_S)
    log.warning(
        "latency worker did not process every event in time",
        sent=sent,
        processed=histograms.get("event_latency", {}).get("count", 0),
        timeout_s=_DRAIN_TIMEOUT_S,
    )
    return histograms


async def _drain_outputs(session: _Session, sent: int) -> None:
    """Wait until every record the publishing agent owes for the events sent was read.

    The agent spreads its records over the events as `OutputSpread` does, so
    the count it owes for `sent` events is known exactly.
    """
    expected = OutputSpread.total(sent, session.outputs_per_event)
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if session.received >= expected and time.time() - session.last_change_s >= _DRAIN_QUIET_S:
            return
        await asyncio.sleep(_STATUS_POLL_INTERVAL_S)
    log.warning(
        "publishing agent did not publish every record in time",
        sent=sent,
        expected=expected,
        received=session.received,
        timeout_s=_DRAIN_TIMEOUT_S,
    )


def _load_figures(
    session: _Session, *, rate: float, sent: int, send_seconds: float, cpu: dict[str, Any]
) -> dict[str, Any]:
    matched = session.load.matched
    topic = [received - sent_s for _c, _seq, sent_s, received in matched]
    # The Redis sample is not spread over the run like all changes are, so
    # the topic latency of the same changes is reported beside it.
    mirrored: list[float] = []
    same_on_topic: list[float] = []
    not_seen = 0
    for customer_id, seq, sent_s, received_s in matched:
        if not session.watch.covers(customer_id, sent_s):
            continue
        visible = session.watch.visible_at(customer_id, seq, sent_s)
        if visible is None:
            not_seen += 1
        else:
            mirrored.append(visible - sent_s)
            same_on_topic.append(received_s - sent_s)
    redis_figures: dict[str, Any] | None = None
    if session.redis is not None:
        redis_figures = {
            **summarise(mirrored),
            "watched_customers": len(session.watch),
            "not_seen": not_seen,
            "same_changes_on_topic": summarise(same_on_topic),
            "polls": session.polls,
        }
    return {
        "offered_events_per_s": round(rate, 1),
        "achieved_events_per_s": round(sent / send_seconds, 1) if send_seconds > 0 else 0.0,
        "events": sent,
        "seconds": round(send_seconds, 2),
        "events_with_changes": len(session.load.events_with_changes),
        "unmatched_changes": session.load.unmatched,
        "topic": summarise(topic),
        "redis": redis_figures,
        "cpu_cores": cpu,
    }


def _worker_histograms(body: bytes | None) -> dict[str, Any]:
    """Summarise the worker's batch, event-latency and GC histograms since it started.

    `tagger_event_latency_seconds` runs from a record's Kafka timestamp (the
    event time here, stamped at send) to the end of its batch, so the rest of
    the topic latency is publishing the changes and reading them back.
    `tagger_gc_pause_seconds` is summarised per generation, as `gc_<n>`.
    """
    if body is None:
        return {}
    families = {
        "tagger_batch_seconds": "batch",
        "tagger_event_latency_seconds": "event_latency",
        "tagger_gc_pause_seconds": "gc",
    }
    collected: dict[str, tuple[list[tuple[float, float]], list[float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        name = families.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation")
            series = name if generation is None else f"{name}_{generation}"
            buckets, sums = collected.setdefault(series, ([], [0.0, 0.0]))
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                sums[0] = sample.value
            elif sample.name.endswith("_sum"):
                sums[1] = sample.value
    summaries: dict[str, Any] = {}
    for series, (buckets, (count, total)) in sorted(collected.items()):
        summary = _histogram_summary(sorted(buckets), count, total)
        summary["total_ms"] = round(total * 1000, 1)
        summaries[series] = summary
    return summaries


def _histogram_summary(
    buckets: list[tuple[float, float]], count: float, total: float
) -> dict[str, Any]:
    """Return the count, mean and the bucket bounds (ms) that hold p50 and p99 of a histogram."""

    def bound(fraction: float) -> float | None:
        for upper, cumulative in buckets:
            if cumulative >= fraction * count:
                return None if math.isinf(upper) else round(upper * 1000, 1)
        return None

    return {
        "count": int(count),
        "mean_ms": round(total / count * 1000, 2) if count else None,
        "p50_at_most_ms": bound(0.50) if count else None,
        "p99_at_most_ms": bound(0.99) if count else None,
    }


async def _measure_lateness(session: _Session, base: list[BaseEvent]) -> dict[str, Any]:
    """Send carts that are never bought and measure how late `hesitant` fires for each.

    The carts carry event times in the past, so that they are due a few
    seconds after they are sent instead of 30 minutes. The other way, the
    worker's TAGGER_WALL_CLOCK_OFFSET_MS, gives the worker the same input.
    With the default allowed lateness of 0, an idle partition's watermark
    is the wall time less 1 s. So either way each cart is a late event by
    the same amount, which the default late policy `apply` applies, and its
    `hesitant` takes the same path (due index, live tick, firing). Event
    times in the past are used because they leave the worker's wall clock
    true. The latency load before this step runs on the same worker, and
    its events, stamped with the real time, would be half an hour behind a
    shifted watermark. A rulebook with `late_policy: ignore` would drop
    these carts.
    """
    settings = session.settings
    lateness_ms = load_rulebook(settings.rulebook_path).allowed_lateness_ms
    offset_ms = settings.wall_clock_offset_ms
    carts = await _send_carts(session, base, offset_ms)

    last_due_s = (max(carts.due_ms.values()) - offset_ms) / 1000
    deadline_s = last_due_s + _LIVE_CLOCK_LAG_MS / 1000 + _FIRE_TIMEOUT_S
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(session.all_fired.wait(), timeout=deadline_s - time.time())

    after_watermark: list[float] = []
    after_due: list[float] = []
    wrong_due = 0
    for customer_id, (at, received_s) in session.fired.items():
        partition = carts.partition[customer_id]
        wrong_due += at != carts.due_ms[customer_id]
        passed_s = watermark_passed_at(
            at,
            lateness_ms=lateness_ms,
            offset_ms=offset_ms,
            partition_idle_from_s=carts.last_sent_s[partition],
        )
        after_watermark.append(received_s - passed_s)
        after_due.append(received_s - (at - offset_ms) / 1000)
    log.info("hesitant tags fired", customers=len(carts.due_ms), fired=len(session.fired))
    return {
        "customers": len(carts.due_ms),
        "fired": len(session.fired),
        "fired_at_other_due_time": wrong_due,
        "lead_ms": carts.lead_ms,
        "after_watermark": summarise(after_watermark),
        "after_due": summarise(after_due),
    }


@dataclass(slots=True)
class _Carts:
    """The carts sent for the lateness step: due times in the worker's clock, partitions,
    and the send time of each partition's last cart."""

    lead_ms: int
    due_ms: dict[str, int] = field(default_factory=dict)
    partition: dict[str, int] = field(default_factory=dict)
    last_sent_s: dict[int, float] = field(default_factory=dict)


async def _send_carts(session: _Session, base: list[BaseEvent], offset_ms: int) -> _Carts:
    """Send one cart per customer at `_HESITANT_RATE`, each due `lead_ms` after its send.

    The lead is the burst's length plus `_HESITANT_MARGIN_MS`, so that every
    partition has been idle for the live clock's 2 s before its watermark
    reaches the first due time, and due times are spread like the sends.
    """
    settings = session.settings
    templates = [dict(item.event) for item in base if item.event.get("type") == "add_to_cart"]
    if not templates:
        templates = [{"type": "add_to_cart", "product_id": "p1", "price": "99.00"}]
    carts = _Carts(lead_ms=int(_HESITANT_CUSTOMERS / _HESITANT_RATE * 1000) + _HESITANT_MARGIN_MS)
    customers = [f"hesitant-{index}" for index in range(_HESITANT_CUSTOMERS)]
    session.hesitant.update(customers)

    topic = settings.input_topics[0]
    pending: list[asyncio.Future[Any]] = []
    started = time.monotonic()
    for index, customer_id in enumerate(customers):
        delay = started + index / _HESITANT_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_s = time.time()
        due_ms = int(sent_s * 1000) + carts.lead_ms + offset_ms
        event = {
            **templates[index % len(templates)],
            "customer_id": customer_id,
            "event_id": f"lateness-{index}",
            "ts": due_ms - _HESITANT_AFTER_MS,
        }
        key = customer_id.encode()
        pending.append(await session.producer.send(topic, orjson.dumps(event), key=key))
        partition = partition_for(key, settings.partitions)
        carts.due_ms[customer_id] = due_ms
        carts.partition[customer_id] = partition
        carts.last_sent_s[partition] = sent_s
    await asyncio.gather(*pending)
    log.info("carts sent", customers=len(customers), lead_ms=carts.lead_ms)
    return carts
