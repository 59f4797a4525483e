"""Table recovery that reads the active changelog partitions in bulk before Faust does.

faust-streaming restores a table by passing every changelog record through
its consumer's stream machinery, about 70 to 80 µs a record on one core here
(docs/benchmarks.md). A plain aiokafka consumer reads and decodes a record
in a few µs. `BulkRecovery` uses one, with no consumer group, to read each
active changelog partition straight into the table's in-memory store, up to
the end offset Faust has just looked up. It records how far it got in
Faust's own offsets, so Faust's recovery then reads only what is left, as
after a restart with local state. Standby partitions are left to Faust.

The bulk read runs inside Faust's offset step, which Faust bounds by
`broker_request_timeout` and cancels when a new rebalance starts. It stops
at `TaggerApp.recovery_bulk_s` or before that bound, and every record it
applied is counted in the offsets, so Faust's recovery goes on from there:
nothing is read twice or skipped. An error makes it stop the same way.

Only tables in Faust's memory store with raw keys and values qualify; any
other table is restored by Faust alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP
from faust.types.enums import ProcessingGuarantee

from tagger.streams.partition_reader import stop_consumer
from tagger.streams.security import faust_aiokafka_args

__all__ = ["BulkReader", "BulkRecovery", "BulkTableManager", "bulk_readable"]

log = structlog.get_logger(__name__)

# Faust stops the recovery service when its offset step outlasts the broker
# request timeout, so the bulk read ends at this share of it.
_SHARE_OF_REQUEST_TIMEOUT = 0.75
_FETCH_BYTES = 4 * 1024 * 1024
_POLL_TIMEOUT_MS = 500
_MAX_RECORDS_PER_POLL = 10_000
_PROGRESS_INTERVAL_S = 10.0


def bulk_readable(table: Any) -> bool:
    """Return True when the bulk read can fill `table`: memory store, raw keys and values."""
    return (
        table is not None
        and isinstance(table.data, MemoryStore)
        and getattr(table, "window", None) is None
        and table.key_serializer == "raw"
        and table.value_serializer == "raw"
    )


class BulkRecovery(Recovery):
    """Faust's table recovery, with a bulk read of the active changelog partitions first.

    `start_offsets` contains, for each active changelog partition of the
    current recovery, the offset of the last record already applied before
    it began (-1 for none), so progress can be counted from there.
    """

    start_offsets: dict[TP, int]

    def __init__(self, app: Any, tables: Any, **kwargs: Any) -> None:
        super().__init__(app, tables, **kwargs)
        self.start_offsets = {}

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        self.start_offsets = {}
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def need_recovery(self) -> bool:
        # faust-streaming 0.15 leaves out partitions whose start offset is not
        # read yet, so while that request was pending on a slow broker its
        # changelog reader ended the recovery as if nothing were left.
        if any(self.active_offsets.get(tp) is None for tp in self.active_tps):
            return True
        result: bool = super().need_recovery()
        return result

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        # Faust's timeout covers this whole step, the offset request included.
        started = time.monotonic()
        await super()._build_offsets(consumer, tps, destination, title)
        if title != "active":
            return
        self.start_offsets = {tp: destination[tp] for tp in tps}
        limit_s = min(
            float(getattr(self.app, "recovery_bulk_s", 0.0)),
            _SHARE_OF_REQUEST_TIMEOUT * float(self.app.conf.broker_request_timeout),
        )
        if limit_s <= 0:
            return
        stores: dict[TP, MemoryStore[Any, Any]] = {}
        ends: dict[TP, int] = {}
        for tp in tps:
            table: Any = self.tp_to_table.get(tp)
            end = self.active_highwaters.get(tp)
            if not bulk_readable(table) or end is None or end <= destination[tp]:
                continue
            stores[tp] = table.data
            ends[tp] = end
        if not stores:
            return
        reader = BulkReader(
            self.app, stores, ends, destination, rebalancing=self.signal_recovery_start.is_set
        )
        await reader.run(deadline=started + limit_s)


class BulkTableManager(TableManager):
    """Faust's table manager, restoring tables with `BulkRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class BulkReader:
    """Reader of changelog partitions into memory stores, moving `offsets` along as it goes.

    `offsets[tp]` is the offset of the last record applied (Faust's meaning);
    the read starts after it and ends at `ends[tp]`, included. `clock`
    returns monotonic seconds, the time `run`'s deadline is in.
    `rebalancing` returns True once a new rebalance has started: Faust has
    then dropped revoked partitions from `offsets`, so nothing more is
    applied.
    """

    def __init__(
        self,
        app: Any,
        stores: Mapping[TP, MemoryStore[Any, Any]],
        ends: Mapping[TP, int],
        offsets: MutableMapping[TP, int],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_records_per_poll: int = _MAX_RECORDS_PER_POLL,
        rebalancing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.stores = stores
        self.ends = ends
        self.offsets = offsets
        self.clock = clock
        self.max_records_per_poll = max_records_per_poll
        self.rebalancing = rebalancing
        self.applied = 0
        # Set when a new rebalance stopped the read.
        self.interrupted = False

    def _remaining(self, tps: Iterable[TP]) -> int:
        return sum(self.ends[tp] - self.offsets[tp] for tp in tps)

    async def run(self, *, deadline: float) -> None:
        started = self.clock()
        names = {_name(tp): (self.offsets[tp], self.ends[tp]) for tp in sorted(self.stores)}
        log.info(
            "changelog bulk read started",
            partitions=names,
            records_to_read=self._remaining(self.stores),
        )
        pending = set(self.stores)
        try:
            pending = await self._read(pending, deadline)
        except asyncio.CancelledError:
            # A new rebalance or a stop. After a rebalance, Faust starts its
            # recovery again from the offsets.
            log.info(
                "changelog bulk read cancelled",
                applied=self.applied,
                partitions_left=sorted(_name(tp) for tp in pending),
            )
            raise
        except Exception as exc:
            # Faust's own reader takes over from the offsets applied so far.
            log.warning(
                "changelog bulk read failed; faust reads the rest",
                error=repr(exc),
                applied=self.applied,
                partitions=sorted(_name(tp) for tp in self.stores),
            )
            return
        seconds = self.clock() - started
        if self.interrupted:
            return
        if pending:
            log.warning(
                "changelog bulk read stopped at its time limit; faust reads the rest",
                applied=self.applied,
                seconds=round(seconds, 2),
                records_left=self._remaining(pending),
                partitions_left=sorted(_name(tp) for tp in pending),
            )
            return
        log.info(
            "changelog bulk read finished",
            applied=self.applied,
            seconds=round(seconds, 2),
            rate_per_s=round(self.applied / max(seconds, 1e-9), 1),
        )

    async def _read(self, pending: set[TP], deadline: float) -> set[TP]:
        """Read until every partition reaches its end or `deadline`; return those left."""
        conf = self.app.conf
        consumer = AIOKafkaConsumer(
            client_id=f"{conf.broker_client_id}-bulk-recovery",
            group_id=None,
            enable_auto_commit=False,
            # A start offset that retention deleted meanwhile reads from the
            # log start, never from the end.
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_FETCH_BYTES,
            isolation_level=(
                "read_committed"
                if conf.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE
                else "read_uncommitted"
            ),
            **faust_aiokafka_args(conf),
        )
        await consumer.start()
        try:
            partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in pending}
            consumer.assign(list(partitions))
            for partition, tp in partitions.items():
                consumer.seek(partition, self.offsets[tp] + 1)
            last_log = self.clock()
            while pending and (now := self.clock()) < deadline:
                wait_ms = int(min(_POLL_TIMEOUT_MS, max(1.0, (deadline - now) * 1000)))
                batch = await consumer.getmany(
                    *[p for p, tp in partitions.items() if tp in pending],
                    timeout_ms=wait_ms,
                    max_records=self.max_records_per_poll,
                )
                if self.rebalancing():
                    log.info(
                        "changelog bulk read stopped by a new rebalance",
                        applied=self.applied,
                        partitions_left=sorted(_name(tp) for tp in pending),
                    )
                    self.interrupted = True
                    return pending
                for partition, records in batch.items():
                    self._apply(partitions[partition], records)
                for partition, tp in partitions.items():
                    if tp in pending and await consumer.position(partition) > self.ends[tp]:
                        # Records past the last one may be control records,
                        # which the consumer skips.
                        self.offsets[tp] = self.ends[tp]
                        pending.discard(tp)
                now = self.clock()
                if now - last_log >= _PROGRESS_INTERVAL_S:
                    last_log = now
                    log.info(
                        "changelog bulk read progress",
                        applied=self.applied,
                        records_left=self._remaining(pending),
                    )
        finally:
            await stop_consumer(consumer)
        return pending

    def _apply(self, tp: TP, records: list[Any]) -> None:
        store = self.stores[tp]
        data = store.data
        key_partition = store._key_partition
        end = self.ends[tp]
        last = self.offsets[tp]
        for record in records:
            if record.offset > end:
                # Written after Faust read the end offset: Faust's own
                # reader applies it, as its consistency check expects.
                break
            key = record.key
            if record.value is None:
                data.pop(key, None)
                key_partition.pop(key, None)
            else:
                data[key] = record.value
                key_partition[key] = record.partition
            last = record.offset
            self.applied += 1
        self.offsets[tp] = last


def _name(tp: TP) -> str:
    return f"{tp.topic}[{tp.partition}]"
