"""Batch processing: decode, route, apply the rulebook, publish, mirror.

The Faust agent hands every batch to `Processor.handle_batch`, and the
live-clock timer calls `Processor.tick`. Both run under one lock, so a
customer's state is never read by one while the other is writing it.

Order inside a batch, which the delivery guarantees rely on:
1. Each record is decoded; invalid ones become dead letters, misrouted ones
   are forwarded to the repartition topic, clock messages move clocks.
2. Valid events and erasure requests are applied in offset order per
   partition, loading each customer's state once per batch; due changes of
   other customers fire.
3. Each customer touched is written to the table once; an erased one is
   deleted, and its erasures record written with the changes it published.
4. Tag changes, dead letters and forwarded records are sent, and the batch
   waits for every acknowledgement. Then the erasures records are written
   again without those changes.
5. Each partition's record (clock, confirmed write sequence) is written.
6. Customers whose tags changed, and erased customers, are handed to the
   Redis mirror, which never blocks this path.
Faust commits the batch's offsets only after the agent asks for the next
batch, and flushes the producer (changelogs included) before committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter

from tagger.errors import InvalidEvent
from tagger.rules.aggregates import entry_count
from tagger.rules.engine import Engine, Position
from tagger.rules.rulebook import Rulebook
from tagger.rules.state import CustomerState, decode_state, encode_state
from tagger.schemas.dead_letter import dead_letter_record
from tagger.schemas.decode import decode_event
from tagger.schemas.events import ClockMessage, Event
from tagger.schemas.tag_change import TagChange, encode_tag_change
from tagger.streams.clock import PartitionState, partition_record_key
from tagger.streams.config import Settings
from tagger.streams.erasures import ErasureRecord
from tagger.streams.faults import FAULT_ENV, armed_fault, fault_point
from tagger.streams.metrics import TaggerMetrics
from tagger.streams.partitioning import partition_for
from tagger.streams.processor_erasures import (
    ErasureSteps,
    MirrorErase,
    encode_outbox,
    mirror_seq_of,
)
from tagger.streams.rulebook_versions import VersionGate

__all__ = ["InboundRecord", "Processor", "TableLike"]

log = structlog.get_logger(__name__)

# Firing and index building yield to the event loop after this many
# customers, so heartbeats and fetches keep running on big partitions.
_CHUNK = 500
# The mirror resync decodes this many customers per hold of the lock, a
# few milliseconds, so batches wait at most that long for it.
_RESYNC_CHUNK = 300
# Live mode: a caught-up partition with no event for this long follows the
# wall clock, lagging it by `_LIVE_CLOCK_LAG_MS` to leave room for
# records still in flight.
_LIVE_IDLE_S = 2.0
_LIVE_CLOCK_LAG_MS = 1_000
# A customer whose outbox reaches this many changes inside one batch is
# published and written at once, which bounds its state (about 700 bytes a
# change) far below the broker's 1 MiB record limit.
_OUTBOX_CHECKPOINT = 64
# Events stamped more than a day after the wall clock are rejected: they
# would move their partition's clock to the wall time at once, and no
# producer's clock is that far off.
_MAX_FUTURE_MS = 24 * 3_600_000
# Confirmations from Redis wait until their customer is next loaded. Past
# this many the oldest half is dropped, which only makes those customers'
# next mirror write a repeat.
_MAX_PENDING_CONFIRMATIONS = 200_000
# Decoded states of the customers written last are kept, so that a customer
# seen again within a few batches is not decoded again. An entry is used
# only while the table contains the very bytes it was encoded to. At about
# 5 KB a decoded state (estimate), this is some 20 MB.
_DECODED_STATES = 4_096


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One input record with its coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class TableLike:
    """The part of a Faust table the processor uses (a dict of bytes to bytes)."""

    def get(self, key: bytes) -> bytes | None:  # pragma: no cover - protocol
        raise NotImplementedError

    def __setitem__(self, key: bytes, value: bytes) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


Sender = Callable[[str, bytes | None, bytes], Awaitable[Any]]
MirrorSubmit = Callable[[str, int, dict[str, int]], None]


@dataclass(slots=True)
class _BatchWork:
    states: dict[int, dict[bytes, CustomerState]] = field(default_factory=dict)
    changed: set[bytes] = field(default_factory=set)
    changes: list[TagChange] = field(default_factory=list)
    sends: list[Awaitable[Any]] = field(default_factory=list)
    clocks_moved: set[int] = field(default_factory=set)
    # A redelivered record returns its customer's whole outbox; one copy of
    # each change per batch is enough.
    queued_ids: set[str] = field(default_factory=set)
    # Erasures records to write in this batch, by customer key, with their
    # partition. The stored state of each `erased` key is deleted, unless a
    # state of its next epoch replaced it later in the batch.
    # `mirror_erasures` maps a customer key to its Redis fence and the tags
    # whose sets to clean.
    erasures: dict[bytes, tuple[int, ErasureRecord]] = field(default_factory=dict)
    erased: set[bytes] = field(default_factory=set)
    mirror_erasures: dict[bytes, tuple[int, list[str]]] = field(default_factory=dict)

    def queue(self, key: bytes, changes: Iterable[TagChange]) -> None:
        """Add changes to publish at the end of the batch, each change_id once."""
        for change in changes:
            if change.change_id in self.queued_ids:
                continue
            self.queued_ids.add(change.change_id)
            self.changes.append(change)
            self.changed.add(key)


class Processor(ErasureSteps):
    """Applies batches of input records to customer state and publishes the results."""

    def __init__(
        self,
        *,
        settings: Settings,
        rulebook: Rulebook,
        customers: Any,
        partitions: Any,
        send: Sender,
        metrics: TaggerMetrics,
        mirror_submit: MirrorSubmit | None = None,
        gate: VersionGate | None = None,
        flush: Callable[[], Awaitable[None]] | None = None,
        erasures: Any = None,
        mirror_erase: MirrorErase | None = None,
    ) -> None:
        self.settings = settings
        self.rulebook = rulebook
        self.engine = Engine(rulebook)
        self.customers = customers
        self.partitions_table = partitions
        self.send = send
        self.metrics = metrics
        self.mirror_submit = mirror_submit
        self.mirror_erase = mirror_erase
        # The erasures table; a plain dict where the caller has none (tests).
        self.erasures = erasures if erasures is not None else {}
        self.gate = gate
        self.flush = flush if flush is not None else _no_flush
        self.lock = asyncio.Lock()
        self.assigned: dict[int, PartitionState] = {}
        self.mirror_confirmed: dict[str, int] = {}
        # Set when Redis may have lost data before this worker's partitions
        # were assigned: every assignment then re-submits all its customers.
        self.resubmit_on_assign = False
        self.processed_offsets: dict[tuple[str, int], int] = {}
        self._decoded: OrderedDict[bytes, tuple[bytes, CustomerState]] = OrderedDict()
        # Labelled children of the per-event and per-change counters, by
        # counter and label values: `labels` costs microseconds a call.
        self._labelled: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._lateness = rulebook.allowed_lateness_ms
        self._input_topics = frozenset(settings.input_topics)
        self._partition_keys = {
            p: partition_record_key(p, settings.partitions) for p in range(settings.partitions)
        }
        fault = armed_fault()
        if fault is not None:
            log.warning("a crash point is armed for testing", fault=fault, env=FAULT_ENV)

    def confirm_mirrored(self, customer_id: str, seq: int) -> None:
        """Record that Redis contains the customer's tags up to `seq`, until it is next loaded.

        `seq` is a `mirror_seq`, which counts across the customer's epochs.
        """
        confirmed = self.mirror_confirmed
        if seq <= confirmed.get(customer_id, 0):
            return
        confirmed[customer_id] = seq
        if len(confirmed) > _MAX_PENDING_CONFIRMATIONS:
            for stale in list(confirmed)[: len(confirmed) // 2]:
                del confirmed[stale]

    # -- wall time ---------------------------------------------------------

    def wall_now(self) -> int:
        """Return the wall time in epoch ms, shifted by TAGGER_WALL_CLOCK_OFFSET_MS."""
        return int(time.time() * 1000) + self.settings.wall_clock_offset_ms

    # -- assignment ----------------------------------------------------------

    async def assign(self, partitions: Iterable[int]) -> None:
        """Load clocks and build due indexes for newly assigned partitions, in chunks."""
        async with self.lock:
            pending = [p for p in partitions if p not in self.assigned]
            if not pending:
                return
            for p in pending:
                raw = self.partitions_table.get(self._partition_keys[p])
                self.assigned[p] = PartitionState.decode(p, raw)
            await self._build_indexes(set(pending))

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget clocks and due indexes of partitions this worker no longer owns."""
        self._decoded.clear()
        for p in partitions:
            if self.assigned.pop(p, None) is None:
                continue
            # Gauges of a partition another worker now owns would go stale; a
            # partition may never have had a value exported, hence KeyError.
            with contextlib.suppress(KeyError):
                self.metrics.partition_clock_ms.remove(str(p))
            with contextlib.suppress(KeyError):
                self.metrics.partition_caught_up.remove(str(p))
            topics = (
                *self.settings.input_topics,
                self.settings.repartition_topic,
                self.settings.erasure_topic,
            )
            for topic in topics:
                with contextlib.suppress(KeyError):
                    self.metrics.partition_lag.remove(topic, str(p))
            # Another worker may move the partition on before it comes back.
            for topic_partition in [tp for tp in self.processed_offsets if tp[1] == p]:
                del self.processed_offsets[topic_partition]
            log.info("partition revoked", partition=p)

    async def _build_indexes(self, partitions: set[int]) -> None:
        started = time.monotonic()
        scanned = 0
        resent: list[Awaitable[Any]] = []
        stale: dict[int, dict[bytes, CustomerState]] = {}
        async for p, key, state in self._stored_states(partitions):
            scanned += 1
            ps = self.assigned[p]
            # Changes decided by writes after the last confirmed one may never
            # have reached the broker: send them again, byte-identical.
            if state.pseq > ps.confirmed_pseq and state.outbox:
                for change in state.outbox:
                    resent.append(
                        self.send(self.settings.tag_change_topic, key, encode_outbox(change))
                    )
            if state.rulebook_version != self.rulebook.version and self._may_reevaluate():
                stale.setdefault(p, {})[key] = state
                continue
            ps.due.set(key, state.due)
            seq = mirror_seq_of(state)
            resubmit = state.mirrored_seq < seq or (self.resubmit_on_assign and state.seq > 0)
            if resubmit and self.mirror_submit is not None:
                self.mirror_submit(state.customer_id, seq, dict(state.tags))
        settled = await self._recover_erasures(partitions, resent)
        if resent:
            await send_in_order(resent)
        self._settle_erasures(settled)
        if stale:
            await self._reevaluate(stale)
        for p in partitions:
            ps = self.assigned[p]
            ps.index_ready = True
            ps.confirmed_pseq = ps.pseq
            self.partitions_table[self._partition_keys[p]] = ps.encode()
            self.metrics.partition_clock_ms.labels(str(p)).set(ps.clock)
            log.info(
                "partition ready",
                partition=p,
                clock=ps.clock,
                due_customers=len(ps.due),
            )
        self.metrics.due_index_size.set(sum(len(ps.due) for ps in self.assigned.values()))
        log.info(
            "due indexes built",
            partitions=sorted(partitions),
            customers=scanned,
            outbox_changes_resent=len(resent),
            seconds=round(time.monotonic() - started, 3),
        )

    async def resync_mirror(self) -> int:
        """Re-submit every customer of the ready partitions to the mirror; return how many.

        Used after Redis lost data. Customers with seq 0 never had a tag
        change, so Redis holds no key for them and they are skipped; every
        other customer is submitted, tagless ones too, so that their seq key
        again guards against a stale write being retried. The lock is taken
        per chunk, so batches run between chunks; a customer a batch changes
        meanwhile is submitted by the batch with a higher seq, and the mirror
        keeps the newest.
        """
        if self.mirror_submit is None:
            return 0
        keys = list(self.customers.keys())
        submitted = 0
        for start in range(0, len(keys), _RESYNC_CHUNK):
            async with self.lock:
                ready = {p for p, ps in self.assigned.items() if ps.index_ready}
                for key in keys[start : start + _RESYNC_CHUNK]:
                    if partition_for(key, self.settings.partitions) not in ready:
                        continue
                    raw = self.customers.get(key)
                    if raw is None:
                        continue
                    state = decode_state(raw)
                    if state.seq == 0:
                        continue
                    self.mirror_submit(state.customer_id, mirror_seq_of(state), dict(state.tags))
                    submitted += 1
            await asyncio.sleep(0)
        return submitted

    async def _stored_states(
        self, partitions: set[int]
    ) -> AsyncIterator[tuple[int, bytes, CustomerState]]:
        """Yield (partition, key, state) of every stored customer of `partitions`, in chunks."""
        for index, key in enumerate(list(self.customers.keys())):
            if index % _CHUNK == 0 and index:
                await asyncio.sleep(0)
            p = partition_for(key, self.settings.partitions)
            if p not in partitions:
                continue
            raw = self.customers.get(key)
            if raw is None:
                continue
            yield p, key, decode_state(raw)

    def _may_reevaluate(self) -> bool:
        return self.gate is None or self.gate.is_open

    async def reevaluate_all(self, _previous: str | None = None) -> None:
        """Re-evaluate every customer of the assigned partitions under this rulebook, in chunks."""
        async with self.lock:
            partitions = {p for p, ps in self.assigned.items() if ps.index_ready}
            stale: dict[int, dict[bytes, CustomerState]] = {}
            async for p, key, state in self._stored_states(partitions):
                if state.rulebook_version != self.rulebook.version:
                    stale.setdefault(p, {})[key] = state
            await self._reevaluate(stale)

    async def _reevaluate(self, stale: dict[int, dict[bytes, CustomerState]]) -> None:
        """Re-evaluate states decided under another rulebook version at their partition's clock."""
        started = time.monotonic()
        wall = self.wall_now()
        customers = 0
        for p, states in stale.items():
            ps = self.assigned[p]
            work = _BatchWork()
            for key, state in states.items():
                self.engine.start_batch(state)
                changes = self.engine.reevaluate(state, clock=ps.clock, now=wall)
                work.states.setdefault(p, {})[key] = state
                work.queue(key, changes)
                customers += 1
                if customers % _CHUNK == 0:
                    await asyncio.sleep(0)
            self._write_states(work)
            await self._flush_outputs(work)
            self._confirm_partitions(work)
            self._submit_to_mirror(work)
        if customers:
            log.info(
                "customers re-evaluated under the active rulebook",
                version=self.rulebook.version,
                customers=customers,
                partitions=sorted(stale),
                seconds=round(time.monotonic() - started, 3),
            )

    # -- batches -----------------------------------------------------------------

    async def handle_batch(self, records: Sequence[InboundRecord]) -> None:
        """Process one batch; return once every output is acknowledged."""
        if self.gate is not None:
            await self.gate.wait_open()
        started = time.perf_counter()
        async with self.lock:
            work = _BatchWork()
            for record in records:
                await self._handle_record(record, work)
            for p in sorted(work.clocks_moved | set(work.states)):
                await self._fire_due(p, work)
            self._write_states(work)
            fault_point("states_written")
            fault_point("batch_raises")
            await self._flush_outputs(work)
            fault_point("changes_published")
            self._settle_erasures(work.erasures)
            self._confirm_partitions(work)
            self._submit_to_mirror(work)
            for record in records:
                self.processed_offsets[(record.topic, record.partition)] = record.offset

        finished = time.perf_counter()
        self.metrics.batch_seconds.observe(finished - started)
        wall = time.time()
        for record in records:
            if record.timestamp_ms:
                self.metrics.event_latency_seconds.observe(
                    max(0.0, wall - record.timestamp_ms / 1000)
                )

    async def _handle_record(self, record: InboundRecord, work: _BatchWork) -> None:
        if record.topic == self.settings.erasure_topic:
            self._handle_erasure(record, work)
            return
        try:
            item = decode_event(record.value, key=None, currency=self.rulebook.currency)
        except InvalidEvent as exc:
            self._dead_letter(record, exc.reason, exc.detail, work)
            return

        if isinstance(item, ClockMessage):
            self._handle_clock(record, item, work)
            return

        key = item.customer_id.encode()
        expected_partition = partition_for(key, self.settings.partitions)
        if record.key != key or record.partition != expected_partition:
            self._reroute(record, key, expected_partition, work)
            return

        await self._apply(record, item, key, work)

    def _handle_clock(self, record: InboundRecord, message: ClockMessage, work: _BatchWork) -> None:
        if record.key is not None:
            self._dead_letter(record, "clock_with_key", "a clock message must have no key", work)
            return
        if self.settings.clock_mode != "replay" or record.topic not in self._input_topics:
            log.debug("clock message ignored", topic=record.topic, partition=record.partition)
            return
        ps = self._partition(record.partition)
        if message.ts > ps.clock:
            ps.clock = message.ts
            work.clocks_moved.add(record.partition)
            log.info("clock moved by clock message", partition=record.partition, clock=ps.clock)

    def _reroute(
        self, record: InboundRecord, key: bytes, expected_partition: int, work: _BatchWork
    ) -> None:
        if record.topic == self.settings.repartition_topic:
            # Records here were produced with the right key, so a wrong partition
            # means the topic's partition count differs from the tables'.
            self._dead_letter(
                record,
                "misrouted",
                f"partition {record.partition}, expected {expected_partition}",
                work,
            )
            return
        # TODO: in replay mode a clock message can reach a partition before the
        # events forwarded to it, which are then applied as late events.
        self.metrics.repartitioned_events.inc()
        log.debug(
            "record forwarded to the repartition topic",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            expected_partition=expected_partition,
        )
        assert record.value is not None  # decode_event rejected empty values
        work.sends.append(self.send(self.settings.repartition_topic, key, record.value))

    async def _apply(
        self, record: InboundRecord, event: Event, key: bytes, work: _BatchWork
    ) -> None:
        p = record.partition
        ps = self._partition(p)
        wall = self.wall_now()
        if event.ts > wall + _MAX_FUTURE_MS:
            self._dead_letter(
                record,
                "timestamp_in_future",
                f"ts {event.ts} is more than {_MAX_FUTURE_MS // 3_600_000} h after the "
                f"wall clock {wall}",
                work,
            )
            return
        ps.clock = max(ps.clock, min(event.ts, wall))
        ps.last_event_monotonic = time.monotonic()

        if self._applied_before_erasure(record, key, work):
            # Redelivered input that the erased state had applied: applying
            # it again would bring the customer back.
            self.metrics.duplicate_events.inc()
            log.debug(
                "event read before its customer's erasure skipped",
                topic=record.topic,
                partition=p,
                offset=record.offset,
            )
            return
        state = self._load(p, key, event.customer_id, work)
        try:
            outcome = self.engine.apply(
                state,
                event,
                position=Position(record.topic, p, record.offset),
                clock=ps.clock,
                now=wall,
            )
        except Exception as exc:
            # A bug must not stop the partition. NOTE: the engine may have
            # changed part of the state before it raised; that part is kept.
            self.metrics.errors.labels("apply").inc()
            log.exception(
                "event could not be applied",
                topic=record.topic,
                partition=p,
                offset=record.offset,
                customer_id=event.customer_id,
                event_id=event.event_id,
            )
            self._dead_letter(record, "processing_error", repr(exc), work)
            return
        if outcome.duplicate:
            self.metrics.duplicate_events.inc()
        else:
            self._counter(self.metrics.events, event.type).inc()
        if outcome.late:
            self.metrics.late_events.labels(outcome.late_policy or "apply").inc()
        work.queue(key, outcome.changes)
        if len(state.outbox) >= _OUTBOX_CHECKPOINT:
            await self._checkpoint(p, key, state, work)

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        """Return `metric.labels(*labels)`, kept from its first call."""
        key = (metric, labels)
        counter = self._labelled.get(key)
        if counter is None:
            counter = self._labelled[key] = metric.labels(*labels)
        return counter

    async def _checkpoint(self, p: int, key: bytes, state: CustomerState, work: _BatchWork) -> None:
        """Publish one customer's changes mid-batch, so its outbox and state stay bounded.

        A customer whose events flip tags many times in one batch would
        otherwise carry every change in its outbox until the batch ends.
        """
        ps = self._partition(p)
        ps.pseq += 1
        state.pseq = ps.pseq
        self.customers[key] = encode_state(state)
        await self.flush()
        mine = [change for change in work.changes if change.customer_id == state.customer_id]
        work.changes = [
            change for change in work.changes if change.customer_id != state.customer_id
        ]
        await send_in_order([self._send_change(change) for change in mine])
        self.engine.start_batch(state)
        log.info(
            "customer checkpointed mid-batch",
            customer_id=state.customer_id,
            partition=p,
            changes=len(mine),
        )

    def _load(self, p: int, key: bytes, customer_id: str, work: _BatchWork) -> CustomerState:
        states = work.states.setdefault(p, {})
        state = states.get(key)
        if state is not None:
            return state
        raw = None if key in work.erased else self.customers.get(key)
        state = self._new_state(key, customer_id, work) if raw is None else self._decode(key, raw)
        confirmed = self.mirror_confirmed.pop(state.customer_id, None)
        if confirmed is not None and confirmed > state.mirrored_seq:
            state.mirrored_seq = confirmed
        self.engine.start_batch(state)
        states[key] = state
        return state

    def _decode(self, key: bytes, raw: bytes) -> CustomerState:
        """Return the state stored as `raw`, kept decoded if `raw` is what it was written as."""
        kept = self._decoded.pop(key, None)
        if kept is not None and kept[0] == raw:
            return kept[1]
        return decode_state(raw)

    def _store(self, key: bytes, state: CustomerState) -> None:
        """Write a state to the table and keep it decoded for the batches that follow."""
        encoded = encode_state(state)
        if len(encoded) > self.settings.max_state_bytes:
            encoded = self._trim(state, encoded)
        self.customers[key] = encoded
        self._decoded[key] = (encoded, state)
        self._decoded.move_to_end(key)
        if len(self._decoded) > _DECODED_STATES:
            self._decoded.popitem(last=False)

    def _trim(self, state: CustomerState, encoded: bytes) -> bytes:
        """Shrink a state over the cap; return its encoding, logged, under the cap if possible.

        First the dedup memory goes (redeliveries are still caught by input
        position), then tracked `per` values whose tag is not held, those
        with the fewest windowed events first, as when their number is
        capped. Their tags may then come later than without the cap.
        """
        cap = self.settings.max_state_bytes
        before = len(encoded)
        state.recent.clear()
        encoded = encode_state(state)
        held = {tag.partition(":")[2] for tag in state.tags}
        dropped = 0
        for scopes in state.per.values():
            spare = sorted(
                (value for value in scopes if value not in held),
                key=lambda value: (entry_count(scopes[value]), value),
            )
            for value in spare:
                if len(encoded) <= cap:
                    break
                del scopes[value]
                dropped += 1
                encoded = encode_state(state)
        self.metrics.states_trimmed.inc()
        fields = {
            "customer_id": state.customer_id,
            "bytes_before": before,
            "bytes_after": len(encoded),
            "cap": cap,
            "per_values_dropped": dropped,
        }
        if len(encoded) > cap:
            # NOTE: the outbox (this batch's changes) and the scopes of held tags
            # are never dropped, so a customer with many changes in one batch
            # can stay over the cap until a later batch.
            log.error("customer state still over the size cap after trimming", **fields)
        else:
            log.warning("customer state over the size cap trimmed", **fields)
        return encoded

    async def _fire_due(self, p: int, work: _BatchWork) -> None:
        ps = self.assigned.get(p)
        if ps is None or not ps.index_ready:
            return
        # Customers loaded in this batch may have become due after the index
        # last saw them (a cart followed by a clock message in one batch).
        for key, state in work.states.get(p, {}).items():
            ps.due.set(key, state.due)
        watermark = ps.clock - self._lateness
        wall = self.wall_now()
        fired = 0
        while True:
            due_keys = ps.due.pop_due(watermark, _CHUNK)
            if not due_keys:
                break
            for key in due_keys:
                # Table keys are customer ids in UTF-8: the index holds only
                # customers that have a stored or in-batch state.
                state = self._load(p, key, key.decode(), work)
                try:
                    changes = self.engine.advance(state, watermark=watermark, now=wall)
                except Exception:
                    self.metrics.errors.labels("advance").inc()
                    log.exception(
                        "due changes could not be evaluated",
                        partition=p,
                        customer_id=state.customer_id,
                        watermark=watermark,
                    )
                    continue
                work.queue(key, changes)
                fired += 1
            await asyncio.sleep(0)
        if fired:
            log.debug("due customers evaluated", partition=p, customers=fired, watermark=watermark)

    def _write_states(self, work: _BatchWork) -> None:
        for p, states in work.states.items():
            ps = self._partition(p)
            for key, state in states.items():
                ps.pseq += 1
                state.pseq = ps.pseq
                self._store(key, state)
                ps.due.set(key, state.due)
        self._write_erasures(work)

    async def _flush_outputs(self, work: _BatchWork) -> None:
        # The states written for this batch, with the outbox and first
        # `emitted_at` of every change, must be durable before any change is
        # published: a crash in between then re-emits the same bytes.
        if work.states or work.erasures:
            await self.flush()
            fault_point("changelog_flushed")
        for change in work.changes:
            work.sends.append(self._send_change(change))
        if work.sends:
            await send_in_order(work.sends)

    def _send_change(self, change: TagChange) -> Awaitable[Any]:
        rule = change.tag.split(":", 1)[0] if not change.tag.startswith("manual:") else "manual"
        self._counter(self.metrics.tag_changes, rule, change.action, change.source).inc()
        return self.send(
            self.settings.tag_change_topic, change.customer_id.encode(), encode_tag_change(change)
        )

    def _confirm_partitions(self, work: _BatchWork) -> None:
        for p in work.clocks_moved | set(work.states):
            ps = self._partition(p)
            ps.confirmed_pseq = ps.pseq
            self.partitions_table[self._partition_keys[p]] = ps.encode()
            self.metrics.partition_clock_ms.labels(str(p)).set(ps.clock)
        self.metrics.due_index_size.set(sum(len(ps.due) for ps in self.assigned.values()))

    def _submit_to_mirror(self, work: _BatchWork) -> None:
        if self.mirror_erase is not None:
            for key, (fence, tags) in work.mirror_erasures.items():
                self.mirror_erase(key.decode(), fence, tags)
        if self.mirror_submit is None:
            return
        for states in work.states.values():
            for state in states.values():
                seq = mirror_seq_of(state)
                if seq > state.mirrored_seq:
                    self.mirror_submit(state.customer_id, seq, dict(state.tags))

    def _dead_letter(
        self, record: InboundRecord, reason: str, detail: str, work: _BatchWork
    ) -> None:
        self.metrics.invalid_events.labels(reason).inc()
        log.warning(
            "invalid record sent to the dead-letter topic",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            detail=detail,
        )
        payload = dead_letter_record(
            reason,
            detail,
            source={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            key=record.key,
            raw=record.value,
        )
        work.sends.append(self.send(self.settings.dead_letter_topic, record.key, payload))

    def _partition(self, p: int) -> PartitionState:
        ps = self.assigned.get(p)
        if ps is None:
            # A record can arrive before the assignment callback ran; start the
            # partition from its stored record then, and build its index later.
            ps = PartitionState.decode(p, self.partitions_table.get(self._partition_keys[p]))
            self.assigned[p] = ps
        return ps

    # -- the clock without events --------------------------------------------------

    async def tick(self, caught_up: Callable[[int], bool]) -> None:
        """Move idle, caught-up partitions to the wall clock (live mode) and fire what is due."""
        if self.settings.clock_mode != "live":
            return
        if self.gate is not None and not self.gate.is_open:
            return
        async with self.lock:
            work = _BatchWork()
            now_monotonic = time.monotonic()
            target = self.wall_now() - _LIVE_CLOCK_LAG_MS
            for p, ps in self.assigned.items():
                if not ps.index_ready or not caught_up(p):
                    continue
                if now_monotonic - ps.last_event_monotonic < _LIVE_IDLE_S:
                    continue
                if target > ps.clock:
                    ps.clock = target
                    work.clocks_moved.add(p)
            for p in sorted(work.clocks_moved):
                await self._fire_due(p, work)
            if not work.clocks_moved:
                return
            self._write_states(work)
            await self._flush_outputs(work)
            self._confirm_partitions(work)
            self._submit_to_mirror(work)


async def _no_flush() -> None:
    return None


async def send_in_order(sends: Sequence[Awaitable[Any]]) -> None:
    """Hand records to the producer in list order, then wait for every acknowledgement.

    Awaiting a Faust send queues the record and returns its delivery
    future. Gathering the sends instead would let a later one overtake an
    earlier one that waits for room in the producer, and publish a
    customer's changes out of sequence.
    """
    deliveries: list[Any] = []
    try:
        for send in sends:
            deliveries.append(await send)
    except BaseException:
        # The batch fails; the sends not started are dropped with it.
        for unsent in sends[len(deliveries) + 1 :]:
            if inspect.iscoroutine(unsent):
                unsent.close()
        raise
    pending = [delivery for delivery in deliveries if inspect.isawaitable(delivery)]
    if pending:
        await asyncio.gather(*pending)
