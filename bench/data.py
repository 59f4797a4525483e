"""Benchmark input: the real REES46 and Online Retail samples, repeated with remapped customers.

Each copy ("cycle") of the two samples is shifted in time past the previous
one, and its customer ids are mapped onto `customers` ids `c<n>`, so that the
stream has the requested number of events and of distinct customers while
every customer keeps the order and shape of real histories. When the events
are too few to reach the requested customer count with whole histories, one
sample customer's events are dealt round-robin to several benchmark customers.
Without the samples, `tagger.streams.simulator` provides the base events.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog

from tagger.rules.rulebook import load_rulebook
from tagger.schemas.timestamps import MIN_TIMESTAMP_MS
from tagger.streams.formats import ConvertedEvent, read_items
from tagger.streams.simulator import simulate

__all__ = ["BaseEvent", "BenchInput", "default_data_dir", "load_base_events"]

log = structlog.get_logger(__name__)

_SAMPLES = ("rees46_multicat_2019-10_head.csv", "online_retail_customers_sample.csv")
_DAY_MS = 86_400_000
# The first benchmark event: one day after the earliest time the input accepts.
_START_MS = MIN_TIMESTAMP_MS + _DAY_MS


@dataclass(frozen=True, slots=True)
class BaseEvent:
    """One sample event, its customer's index among the sample customers, and its
    ordinal within that customer's events."""

    customer: int
    ordinal: int
    ts: int  # epoch ms, rebased so the sample starts at 0
    event: dict[str, object]


def default_data_dir() -> Path:
    """Return the sample data folder: TAGGER_SAMPLE_DATA, else ../shared/data beside the repo."""
    configured = os.environ.get("TAGGER_SAMPLE_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_base_events(data_dir: Path | None) -> tuple[list[BaseEvent], str]:
    """Read the samples (or simulate events when they are missing); return them and a label.

    Each sample is rebased to start at time 0, then both are merged in time order.
    """
    converted: list[ConvertedEvent] = []
    label = "simulator"
    # Money is labelled with the default rulebook's currency, as `tagger replay`
    # does by default: events in another currency would be rejected as invalid.
    currency = load_rulebook(None).currency
    if data_dir is not None and all((data_dir / name).is_file() for name in _SAMPLES):
        for name in _SAMPLES:
            events = [
                item
                for item in read_items(data_dir / name, currency=currency)
                if isinstance(item, ConvertedEvent) and item.customer_id is not None
            ]
            start = min(event.ts for event in events)
            converted.extend(
                ConvertedEvent(
                    line=event.line,
                    ts=event.ts - start,
                    customer_id=event.customer_id,
                    type=event.type,
                    value=event.value,
                )
                for event in events
            )
        label = "REES46 + Online Retail samples"
    else:
        log.warning("sample data not found, using the simulator", data_dir=str(data_dir))
        for number, event in enumerate(simulate(seed=7, customers=2000, currency=currency)):
            ts = int(event["ts"])
            converted.append(
                ConvertedEvent(
                    line=number,
                    ts=ts,
                    customer_id=str(event["customer_id"]),
                    type=str(event["type"]),
                    value=orjson.dumps(event),
                )
            )
    converted.sort(key=lambda event: event.ts)

    indexes: dict[str, int] = {}
    ordinals: dict[str, int] = {}
    base: list[BaseEvent] = []
    for event in converted:
        customer_id = event.customer_id or ""
        index = indexes.setdefault(customer_id, len(indexes))
        ordinal = ordinals.get(customer_id, 0)
        ordinals[customer_id] = ordinal + 1
        decoded = orjson.loads(event.value)
        base.append(BaseEvent(index, ordinal, event.ts - converted[0].ts, decoded))
    return base, label


@dataclass(frozen=True, slots=True)
class BenchInput:
    """The benchmark's input stream: `events` events over `customers` distinct customers."""

    base: list[BaseEvent]
    events: int
    customers: int

    @property
    def base_customers(self) -> int:
        """Number of distinct customers in the samples."""
        return max(event.customer for event in self.base) + 1

    @property
    def cycles(self) -> int:
        """Copies of the samples needed for `events` events (the last one may be partial)."""
        return math.ceil(self.events / len(self.base))

    @property
    def split(self) -> int:
        """Benchmark customers that share one sample customer's events within a cycle.

        The smallest split whose cycles reach `customers` distinct ids, or one
        customer per event when even that does not reach them.
        """
        counts = self._event_counts()
        needed = math.ceil(self.customers / self.cycles)
        split = 1
        while sum(min(count, split) for count in counts) < needed and split < max(counts):
            split *= 2
        return split

    def _event_counts(self) -> list[int]:
        counts = [0] * self.base_customers
        for event in self.base:
            counts[event.customer] += 1
        return counts

    def time_scale(self, span: int) -> float:
        """Return the factor that fits every copy between 1990 and a day before now.

        The worker rejects events dated more than a few hours after its wall
        clock, so copies cannot simply follow each other into the future.
        Below 1.0, every gap between events shrinks by this factor.
        """
        available = int(time.time() * 1000) - _DAY_MS - _START_MS
        return min(1.0, available / (self.cycles * span))

    def records(self) -> Iterator[tuple[bytes, bytes, int]]:
        """Yield (key, value, ts) of every event in produce order, time never going back."""
        span = self.base[-1].ts + _DAY_MS
        scale = self.time_scale(span)
        split = self.split
        # Slots of one cycle: customer c gets min(its event count, split)
        # consecutive slots starting at offsets[c], so no slot stays unused.
        offsets: list[int] = []
        stride = 0
        for count in self._event_counts():
            offsets.append(stride)
            stride += min(count, split)
        produced = 0
        for cycle in range(self.cycles):
            shift = cycle * span
            for base in self.base:
                if produced == self.events:
                    return
                slot = offsets[base.customer] + base.ordinal % split + cycle * stride
                customer_id = f"c{slot % self.customers}"
                event = dict(base.event)
                event["customer_id"] = customer_id
                event["event_id"] = f"{event['event_id']}#{cycle}"
                if "order_id" in event:
                    event["order_id"] = f"{event['order_id']}#{cycle}"
                ts = _START_MS + int((base.ts + shift) * scale)
                event["ts"] = ts
                produced += 1
                yield customer_id.encode(), orjson.dumps(event), ts
