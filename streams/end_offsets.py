"""A workaround for Kafka-protocol brokers that report a partition's end offset too low.

The embedded Tansu broker (0.6.0, memory storage) answers ListOffsets
"latest" with the first offset of the partition's last record batch instead
of the offset after its last record. Faust's table recovery reads a
changelog up to that reported end, so it would skip the last batch of every
changelog partition and, for a partition that holds a single batch, read
nothing. `EndOffsetProbingConsumer` asks for the reported end as usual and
then reads forward from it to find the true end. Apache Kafka reports the
true end, so the worker turns this on only for Tansu (see `needs_probe`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.transport.drivers.aiokafka import Consumer as FaustAiokafkaConsumer
from faust.types import TP
from kafka.admin import KafkaAdminClient

from tagger.streams.security import faust_aiokafka_args

__all__ = ["EndOffsetProbingConsumer", "broker_cluster_id", "needs_probe", "probe_end_offsets"]

log = structlog.get_logger(__name__)

# One fetch returns at least one whole batch, so a few empty polls in a row
# mean the partition has no record past the last one seen.
_EMPTY_POLLS_TO_STOP = 2
_POLL_TIMEOUT_MS = 300


def broker_cluster_id(bootstrap_servers: str, **client_args: Any) -> str | None:
    """Return the broker's cluster id, read with one admin request.

    `client_args` are extra kafka-python arguments, such as those of
    `security.kafka_python_args`.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","),
        client_id="tagger-admin",
        **client_args,
    )
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    cluster_id = cluster.get("cluster_id")
    return str(cluster_id) if cluster_id is not None else None


def needs_probe(cluster_id: str | None) -> bool:
    """Return True when the broker's cluster id shows it is Tansu."""
    return cluster_id is not None and cluster_id.lower().startswith("tansu")


async def probe_end_offsets(
    bootstrap_servers: str, reported: Mapping[TP, int], **client_args: Any
) -> dict[TP, int]:
    """Read forward from each reported end offset and return the true end offsets.

    `client_args` are extra aiokafka arguments, such as those of
    `security.aiokafka_args`.
    """
    if not reported:
        return {}

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **client_args,
    )
    await consumer.start()
    try:
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
        consumer.assign(list(partitions))
        true_end = {tp: offset for tp, offset in reported.items()}
        for partition, tp in partitions.items():
            consumer.seek(partition, max(reported[tp], 0))

        empty_polls = 0
        while empty_polls < _EMPTY_POLLS_TO_STOP:
            batch = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            if not any(batch.values()):
                empty_polls += 1
                continue
            empty_polls = 0
            for partition, records in batch.items():
                tp = partitions[partition]
                true_end[tp] = max(true_end[tp], records[-1].offset + 1)
        return true_end
    finally:
        await consumer.stop()


class EndOffsetProbingConsumer(FaustAiokafkaConsumer):
    """Faust's aiokafka consumer, with end offsets read to the true end."""

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        reported = await super().highwaters(*partitions)
        client_args = faust_aiokafka_args(self.app.conf)
        bootstrap = ",".join(client_args.pop("bootstrap_servers"))
        corrected = await asyncio.shield(probe_end_offsets(bootstrap, reported, **client_args))
        moved = {
            f"{tp.topic}[{tp.partition}]": (reported[tp], corrected[tp])
            for tp in reported
            if corrected[tp] != reported[tp]
        }
        if moved:
            log.info("end offsets corrected", partitions=moved)
        return corrected
