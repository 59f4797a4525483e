"""Typed input events, as the decoder returns them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ACTIVITY_TYPES",
    "EVENT_TYPES",
    "AttributeValue",
    "ClockMessage",
    "Event",
    "EventType",
]

EventType = Literal[
    "page_view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "refund",
    "campaign_join",
    "customer_update",
    "tag_assign",
    "tag_unassign",
]

EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "page_view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "refund",
    "campaign_join",
    "customer_update",
    "tag_assign",
    "tag_unassign",
)

# Event types that count as customer activity (lifecycle `potential`, `active`).
ACTIVITY_TYPES: Final[frozenset[str]] = frozenset(
    {"page_view", "add_to_cart", "remove_from_cart", "purchase", "campaign_join"}
)

AttributeValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class Event:
    """One validated input event.

    Times are epoch milliseconds (UTC). Money (`price`, `amount`) is an
    integer count of the currency's minor unit, never a float.
    """

    event_id: str
    customer_id: str
    type: EventType
    ts: int
    product_id: str | None = None
    category: str | None = None
    price: int | None = None
    quantity: int | None = None
    order_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    campaign_id: str | None = None
    attributes: Mapping[str, AttributeValue] | None = None
    tag: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class ClockMessage:
    """A keyless `{"type": "clock", "ts": ...}` record that moves a replay's clock."""

    ts: int
