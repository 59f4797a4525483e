"""Kafka's default partitioner (murmur2), as producers in every client library use it."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["partition_for"]


def partition_for(key: bytes, partitions: int) -> int:
    """Return the partition that Kafka's default partitioner picks for a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
