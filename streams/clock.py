"""Per-partition event-time clocks and due-time indexes.

Each table partition p has a clock C(p) that never moves backwards and a
watermark W(p) = C(p) - allowed lateness. The due index keeps, for the
customers of p, the next instant at which a time-driven change may fire, so
that firing touches only customers that are due.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import orjson

from tagger.streams.partitioning import partition_for

__all__ = ["DueIndex", "PartitionState", "partition_record_key"]


class DueIndex:
    """Customers of one partition ordered by their next due time.

    A heap with lazy deletion: `current` holds the valid due time of each
    customer, and heap entries that no longer match it are skipped.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, bytes]] = []
        self._current: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._current)

    def set(self, customer_key: bytes, due: int | None) -> None:
        """Record a customer's next due time, or drop it when `due` is None."""
        if due is None:
            self._current.pop(customer_key, None)
            return
        if self._current.get(customer_key) == due:
            return
        self._current[customer_key] = due
        heapq.heappush(self._heap, (due, customer_key))

    def next_due(self) -> int | None:
        """Return the earliest due time in the index, or None when it is empty."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, watermark: int, limit: int) -> list[bytes]:
        """Remove and return up to `limit` customers whose due time is at or before `watermark`."""
        due: list[bytes] = []
        while self._heap and len(due) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > watermark:
                break
            _, customer_key = heapq.heappop(self._heap)
            del self._current[customer_key]
            due.append(customer_key)
        return due

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._current.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)


@dataclass(slots=True)
class PartitionState:
    """What the worker keeps for one assigned table partition.

    `clock`, `pseq` and `confirmed_pseq` are stored in the partitions table so
    that they survive a restart. `pseq` numbers the customer-state writes of
    the partition; every tag change decided by writes up to `confirmed_pseq`
    has been acknowledged by the broker, so after a restart only customers
    written later need their outbox sent again.
    """

    partition: int
    clock: int = 0
    pseq: int = 0
    confirmed_pseq: int = 0
    last_event_monotonic: float = 0.0
    index_ready: bool = False
    due: DueIndex = field(default_factory=DueIndex)

    def encode(self) -> bytes:
        """Serialise the durable part for the partitions table."""
        return orjson.dumps(
            {"clock": self.clock, "pseq": self.pseq, "confirmed": self.confirmed_pseq}
        )

    @classmethod
    def decode(cls, partition: int, raw: bytes | None) -> PartitionState:
        """Rebuild from a partitions-table value, or start empty when there is none."""
        if raw is None:
            return cls(partition)
        data = orjson.loads(raw)
        return cls(
            partition,
            clock=int(data["clock"]),
            pseq=int(data["pseq"]),
            confirmed_pseq=int(data["confirmed"]),
        )


def partition_record_key(partition: int, partitions: int) -> bytes:
    """Return a key that the default partitioner places in `partition`.

    Tables use the producer's partitioner to pick a changelog partition, so a
    per-partition record needs a key that hashes to that partition.
    """
    for attempt in range(100_000):
        key = f"__partition__:{partition}:{attempt}".encode()
        if partition_for(key, partitions) == partition:
            return key
    raise AssertionError(f"no key found for partition {partition} of {partitions}")
