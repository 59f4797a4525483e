"""Helpers for the pure rule tests: time constants and one customer driven through an engine."""

from __future__ import annotations

from typing import Any

from tagger.rules.engine import Engine, Outcome, Position
from tagger.rules.state import CustomerState
from tagger.schemas.events import Event
from tagger.schemas.tag_change import TagChange

# 2023-11-14T22:13:20Z: a round epoch-ms start for every scenario.
T0 = 1_700_000_000_000
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Wall time stamped as emitted_at; fixed so that outputs are comparable.
NOW = 1_800_000_000_000
TOPIC = "customer-events"


class Customer:
    """One customer's state, fed events in order on one partition, as the worker would."""

    def __init__(self, engine: Engine, customer_id: str = "c1") -> None:
        self.engine = engine
        self.state: CustomerState = engine.new_state(customer_id)
        self.customer_id = customer_id
        self.clock = 0
        self.offset = 0
        self.changes: list[TagChange] = []

    def send(self, type: str, ts: int, *, event_id: str | None = None, **fields: Any) -> Outcome:
        """Apply one event at time `ts`; the partition clock moves to it if it is later."""
        self.offset += 1
        event = Event(
            event_id=event_id or f"e{self.offset}",
            customer_id=self.customer_id,
            type=type,  # type: ignore[arg-type]
            ts=ts,
            **fields,
        )
        self.clock = max(self.clock, ts)
        outcome = self.engine.apply(
            self.state,
            event,
            position=Position(TOPIC, 0, self.offset),
            clock=self.clock,
            now=NOW,
        )
        self.changes.extend(outcome.changes)
        return outcome

    def tick(self, clock: int) -> tuple[TagChange, ...]:
        """Move the clock to `clock` with no event and fire what is due by then."""
        self.clock = max(self.clock, clock)
        changes = self.engine.advance(
            self.state,
            watermark=self.clock - self.engine.rulebook.allowed_lateness_ms,
            now=NOW,
        )
        self.changes.extend(changes)
        return changes

    @property
    def tags(self) -> set[str]:
        return set(self.state.tags)
