"""Small builders of input events in the published JSON format, for end-to-end tests."""

from __future__ import annotations

from typing import Any

MINUTE = 60_000
DAY = 24 * 60 * MINUTE


def cart(
    customer: str, ts: int, product: str = "p1", *, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"{customer}:cart:{ts}",
        "customer_id": customer,
        "type": "add_to_cart",
        "ts": ts,
        "product_id": product,
        "price": "99.00",
    }


def purchase(
    customer: str,
    ts: int,
    amount: str = "99.00",
    *,
    currency: str = "CNY",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"{customer}:buy:{ts}",
        "customer_id": customer,
        "type": "purchase",
        "ts": ts,
        "order_id": f"o-{customer}-{ts}",
        "amount": amount,
        "currency": currency,
    }
