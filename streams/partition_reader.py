"""Read one offset range of an input partition straight from the broker, outside Faust.

The input guard uses it to fetch the records Faust's consumer skipped
(see streams/input_guard.py). Seeking Faust's own consumer back raced with
records Faust had already fetched: they moved its read position on again,
and Faust then dropped the records read again as already delivered. A plain
aiokafka consumer with no group reads the range instead, so the skipped
records come back in order and Faust's position is left alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP

from tagger.errors import TaggerError
from tagger.streams.processor import InboundRecord

__all__ = ["PartitionRangeError", "read_range", "stop_consumer"]

log = structlog.get_logger(__name__)

_POLL_TIMEOUT_MS = 500
_MAX_RECORDS_PER_POLL = 5_000
_FETCH_BYTES = 4 * 1024 * 1024
# The embedded broker responds to a fetch only when its wait ends, so the
# wait is short. The range is known to exist up to `end`.
_FETCH_WAIT_MS = 10


class PartitionRangeError(TaggerError):
    """The records of an offset range could not be read in time."""


async def read_range(
    bootstrap_servers: list[str],
    tp: TP,
    start: int,
    end: int,
    *,
    timeout_s: float,
    **client_args: Any,
) -> list[InboundRecord]:
    """Return the records of `tp` from offset `start` up to, not including, `end`.

    Offsets the broker no longer has (deleted, compacted, or transaction
    markers) are left out. `client_args` are extra aiokafka arguments, such
    as security settings. Raises PartitionRangeError when the range is not
    read within `timeout_s`.
    """
    if start >= end:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=_FETCH_WAIT_MS,
        max_partition_fetch_bytes=_FETCH_BYTES,
        **client_args,
    )
    deadline = time.monotonic() + timeout_s
    await consumer.start()
    try:
        partition = TopicPartition(tp.topic, tp.partition)
        consumer.assign([partition])
        consumer.seek(partition, start)
        records: list[InboundRecord] = []
        while await consumer.position(partition) < end:
            if time.monotonic() > deadline:
                raise PartitionRangeError(
                    f"timed out after {timeout_s} s reading {tp.topic}[{tp.partition}] "
                    f"offsets {start} to {end - 1}: {len(records)} records read"
                )
            batch = await consumer.getmany(
                partition, timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS_PER_POLL
            )
            for record in batch.get(partition, []):
                if record.offset >= end:
                    break
                records.append(
                    InboundRecord(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                        timestamp_ms=record.timestamp,
                    )
                )
        return records
    finally:
        await stop_consumer(consumer)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer`, passing on a cancellation only when it is the caller's own.

    aiokafka 0.14 cancels an offset task of its own when a consumer without
    a group stops soon after `assign`, and `stop` then raises that
    CancelledError, though nothing cancelled the caller.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
