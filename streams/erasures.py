"""The erasures table: what the worker keeps about a customer after erasing it.

One record per erased customer id, in the table `erasures`, keyed like the
customers table. It contains no personal data besides the id: the customer's
next epoch, when and by which request it was erased, and the input
positions applied before the erasure, so that redelivered input cannot
bring the customer back. The removals of the erased tags stay in `outbox`
only until the broker has acknowledged them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["ErasureRecord", "position_key"]


def position_key(topic: str, partition: int) -> str:
    """Return the key of a topic-partition in recorded positions (as in a customer's state)."""
    return f"{topic}:{partition}"


@dataclass(slots=True)
class ErasureRecord:
    """The value of one customer's entry in the erasures table.

    `epoch` is the epoch a new state of the customer starts in. `positions`
    maps `topic:partition` to the highest offset applied for the customer
    before the erasure, the erasure request's own offset included. `outbox`
    keeps the tag changes published with the erasure (encoded as in a
    customer's outbox) until the broker acknowledged them, so that a
    redelivered request can send them again byte-identical.
    """

    epoch: int
    erased_at: int
    request_id: str
    positions: dict[str, int] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def covers(self, topic: str, partition: int, offset: int) -> bool:
        """Return True when the record at these coordinates was read before the erasure."""
        return self.positions.get(position_key(topic, partition), -1) >= offset

    def encode(self) -> bytes:
        """Serialise as compact JSON for the erasures table."""
        data: dict[str, Any] = {
            "epoch": self.epoch,
            "erased_at": self.erased_at,
            "request_id": self.request_id,
            "positions": self.positions,
        }
        if self.outbox:
            data["outbox"] = self.outbox
        return orjson.dumps(data)

    @classmethod
    def decode(cls, raw: bytes) -> ErasureRecord:
        """Parse a value written by `encode`."""
        data = orjson.loads(raw)
        return cls(
            epoch=int(data["epoch"]),
            erased_at=int(data["erased_at"]),
            request_id=str(data["request_id"]),
            positions={str(k): int(v) for k, v in data.get("positions", {}).items()},
            outbox=list(data.get("outbox", [])),
        )
