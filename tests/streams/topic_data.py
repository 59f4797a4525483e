"""Create a topic on the test broker and write records to chosen partitions."""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

# Per partition: (key, value) in offset order; a None value is a tombstone.
Records = dict[int, list[tuple[bytes, bytes | None]]]


def fill_topic(bootstrap: str, topic: str, partitions: int, records: Records) -> None:
    """Create `topic` with `partitions` partitions and write `records`, each acknowledged."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), linger_ms=0)
    try:
        for partition, written in records.items():
            for key, value in written:
                producer.send(topic, key=key, value=value, partition=partition).get(timeout=30)
    finally:
        producer.close()
