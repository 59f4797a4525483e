"""read_range on a real broker: one offset range of one partition, in order, nothing past it."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP

from tagger.streams.partition_reader import PartitionRangeError, read_range, stop_consumer
from tests.streams.topic_data import Records, fill_topic

_RECORDS = 40


@pytest.fixture
def topic(kafka_bootstrap: str, namespace: str) -> str:
    name = f"{namespace}-range"
    records: Records = {
        partition: [(b"k", f"{partition}:{offset}".encode()) for offset in range(_RECORDS)]
        for partition in (0, 1)
    }
    fill_topic(kafka_bootstrap, name, 2, records)
    return name


def test_range_read_in_order(kafka_bootstrap: str, topic: str) -> None:
    records = asyncio.run(
        read_range(kafka_bootstrap.split(","), TP(topic, 1), 7, 31, timeout_s=30.0)
    )

    assert [record.offset for record in records] == list(range(7, 31))
    assert [record.value for record in records] == [f"1:{n}".encode() for n in range(7, 31)]
    assert all(record.partition == 1 for record in records)
    assert all(record.timestamp_ms for record in records)


def test_empty_range_reads_nothing(kafka_bootstrap: str, topic: str) -> None:
    records = asyncio.run(
        read_range(kafka_bootstrap.split(","), TP(topic, 0), 12, 12, timeout_s=30.0)
    )

    assert records == []


def test_range_past_end_times_out(kafka_bootstrap: str, topic: str) -> None:
    with pytest.raises(PartitionRangeError, match=r"offsets 30 to 59: 10 records read"):
        asyncio.run(read_range(kafka_bootstrap.split(","), TP(topic, 0), 30, 60, timeout_s=1.0))


def test_consumer_stops_right_after_assign(kafka_bootstrap: str, topic: str) -> None:
    async def start_and_stop() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap.split(","), group_id=None)
        await consumer.start()
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, 12)
        await stop_consumer(consumer)

    asyncio.run(start_and_stop())
