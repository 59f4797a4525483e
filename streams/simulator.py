"""A deterministic shopper simulator whose events exercise every default tag."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tagger.schemas.money import format_money

__all__ = ["DEFAULT_START_MS", "PERSONAS", "persona_of", "simulate"]

# 2024-01-01T00:00:00Z: a fixed start keeps a seed's events identical on every run.
DEFAULT_START_MS: Final = 1_704_067_200_000

_MINUTE: Final = 60_000
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR

# Persona name → share of the customers. Each persona is also given to one of
# the first customers, so every persona shows up once there are enough customers.
_SHARES: Final[Mapping[str, float]] = {
    "window_shopper": 0.25,
    "hesitant_carter": 0.20,
    "loyal_buyer": 0.20,
    "big_spender": 0.08,
    "lapsed": 0.12,
    "campaign_joiner": 0.10,
    "refunder": 0.05,
}
PERSONAS: Final[tuple[str, ...]] = tuple(_SHARES)

_CATEGORIES: Final = (
    "electronics.smartphone",
    "electronics.audio.headphone",
    "computers.notebook",
    "appliances.kitchen.refrigerators",
    "furniture.living_room.sofa",
    "apparel.shoes",
    "beauty.skincare",
    "sport.bicycle",
)
_CAMPAIGNS: Final = ("spring_sale", "members_week", "new_arrivals")


def simulate(
    seed: int = 7,
    customers: int = 300,
    days: int = 120,
    start_ms: int = DEFAULT_START_MS,
    currency: str = "CNY",
) -> list[dict[str, Any]]:
    """Return the events of `customers` simulated shoppers over `days` days, sorted by time.

    The same arguments always give the same events. Customer ids start with
    their persona (`big_spender-0003`), event ids are `sim:{seed}:{n}` in time
    order and money is a decimal string in `currency`. `dormant` needs more
    than 90 days, and the personas are laid out for the default 120.
    """
    if customers < 0 or days < 1:
        raise ValueError(f"customers must be 0 or more and days 1 or more: {customers}, {days}")

    rng = random.Random(seed)
    end_ms = start_ms + days * _DAY
    shopper = _Shopper(rng=rng, start=start_ms, end=end_ms, currency=currency, seed=seed)
    weights = [_SHARES[name] for name in PERSONAS]
    for number in range(customers):
        if number < len(PERSONAS):
            persona = PERSONAS[number]
        else:
            persona = rng.choices(PERSONAS, weights=weights)[0]
        shopper.customer_id = f"{persona}-{number:04d}"
        _BEHAVIOUR[persona](shopper)

    shopper.events.sort(key=lambda pair: pair[0])
    result = []
    for number, (_, event) in enumerate(shopper.events):
        result.append({"event_id": f"sim:{seed}:{number}", **event})
    return result


def persona_of(customer_id: str) -> str:
    """Return the persona of a simulated customer id such as `lapsed-0004`."""
    return customer_id.rsplit("-", 1)[0]


@dataclass(slots=True)
class _Shopper:
    """Builds the events of one customer after another."""

    rng: random.Random
    start: int
    end: int
    currency: str
    seed: int
    customer_id: str = ""
    events: list[tuple[tuple[int, int], dict[str, Any]]] = field(default_factory=list)

    def at(self, low: int, high: int) -> int:
        """Return a random instant in [low, high), kept inside the simulated period."""
        low = max(low, self.start)
        high = min(high, self.end - _HOUR)
        return low if high <= low else self.rng.randrange(low, high)

    def add(self, ts: int, kind: str, **fields: Any) -> None:
        event = {"customer_id": self.customer_id, "type": kind, "ts": ts, **fields}
        self.events.append(((ts, len(self.events)), event))

    def view(self, ts: int, category: str | None) -> str:
        product_id = str(self.rng.randrange(100_000, 999_999))
        fields: dict[str, Any] = {"product_id": product_id, "price": self.money(5, 3000)}
        if category is not None:
            fields["category"] = category
        self.add(ts, "page_view", **fields)
        return product_id

    def purchase(self, ts: int, low: int, high: int) -> tuple[str, str]:
        order_id = f"sim{self.seed}-o{len(self.events)}"
        amount = self.money(low, high)
        self.add(
            ts,
            "purchase",
            order_id=order_id,
            amount=amount,
            currency=self.currency,
            category=self.rng.choice(_CATEGORIES),
        )
        return order_id, amount

    def money(self, low: int, high: int) -> str:
        """Return a random amount between two whole values, with cents."""
        return format_money(self.rng.randrange(low * 100, high * 100), self.currency)

    def browse(self, count: int, low: int, high: int) -> None:
        for _ in range(count):
            category = self.rng.choice((*_CATEGORIES, None))
            self.view(self.at(low, high), category)


def _window_shopper(shopper: _Shopper) -> None:
    # Many views of a few favourite categories in the last week: browsing_interest.
    rng, end = shopper.rng, shopper.end
    shopper.browse(rng.randint(2, 10), shopper.start, end)
    for category in rng.sample(_CATEGORIES, rng.randint(1, 3)):
        for _ in range(rng.randint(3, 8)):
            shopper.view(shopper.at(end - 6 * _DAY, end), category)


def _hesitant_carter(shopper: _Shopper) -> None:
    # Half leave the item in the cart; the others buy it later or remove it.
    rng, end = shopper.rng, shopper.end
    shopper.browse(rng.randint(1, 5), end - 20 * _DAY, end)
    carted = shopper.at(end - 10 * _DAY, end - 2 * _HOUR)
    product_id = shopper.view(carted - 5 * _MINUTE, rng.choice(_CATEGORIES))
    shopper.add(carted, "add_to_cart", product_id=product_id, quantity=rng.randint(1, 3))
    outcome = rng.random()
    if outcome < 0.25:
        shopper.purchase(shopper.at(carted + _HOUR, carted + 48 * _HOUR), 50, 900)
    elif outcome < 0.5:
        shopper.add(
            carted + rng.randrange(5, 20) * _MINUTE, "remove_from_cart", product_id=product_id
        )


def _loyal_buyer(shopper: _Shopper) -> None:
    # Regular orders up to the last weeks: existing, recent_buyer and a value tier.
    rng = shopper.rng
    ts = shopper.start + _HOUR + rng.randrange(0, 15 * _DAY)
    while ts < shopper.end - 2 * _DAY:
        product_id = shopper.view(ts - 10 * _MINUTE, rng.choice(_CATEGORIES))
        shopper.add(ts - 5 * _MINUTE, "add_to_cart", product_id=product_id)
        shopper.purchase(ts, 50, 1500)
        ts += rng.randrange(5 * _DAY, 20 * _DAY)


def _big_spender(shopper: _Shopper) -> None:
    # Most reach vip by spend, with at least 5 large orders in 180 days. The
    # rest stay high_value with fewer orders and become vip through the CRM.
    rng, end = shopper.rng, shopper.end
    by_spend = rng.random() < 0.6
    orders = rng.randint(5, 8) if by_spend else rng.randint(2, 3)
    for _ in range(orders):
        shopper.purchase(shopper.at(end - 100 * _DAY, end - _DAY), 4000, 9000)
    if not by_spend:
        ts = shopper.at(end - 30 * _DAY, end)
        shopper.add(ts, "customer_update", attributes={"member_level": "vip"})


def _lapsed(shopper: _Shopper) -> None:
    # Orders only before the last 95 days: dormant.
    rng, start = shopper.rng, shopper.start
    last = shopper.end - 95 * _DAY
    shopper.browse(rng.randint(1, 4), start, last)
    for _ in range(rng.randint(1, 4)):
        shopper.purchase(shopper.at(start, last), 30, 2500)


def _campaign_joiner(shopper: _Shopper) -> None:
    rng, end = shopper.rng, shopper.end
    joined = shopper.at(end - 25 * _DAY, end)
    shopper.add(joined, "campaign_join", campaign_id=rng.choice(_CAMPAIGNS))
    shopper.browse(rng.randint(1, 4), joined, end)


def _refunder(shopper: _Shopper) -> None:
    # Some return one order in part, some return their only order in full.
    rng, end = shopper.rng, shopper.end
    orders = rng.randint(1, 3)
    bought = [shopper.at(end - 60 * _DAY, end - 10 * _DAY) for _ in range(orders)]
    purchases = [(ts, *shopper.purchase(ts, 200, 3000)) for ts in bought]
    ts, order_id, amount = rng.choice(purchases)
    returned = amount if orders == 1 else shopper.money(10, 200)
    shopper.add(
        ts + rng.randrange(_DAY, 5 * _DAY),
        "refund",
        order_id=order_id,
        amount=returned,
        currency=shopper.currency,
    )


_BEHAVIOUR: Final[Mapping[str, Callable[[_Shopper], None]]] = {
    "window_shopper": _window_shopper,
    "hesitant_carter": _hesitant_carter,
    "loyal_buyer": _loyal_buyer,
    "big_spender": _big_spender,
    "lapsed": _lapsed,
    "campaign_joiner": _campaign_joiner,
    "refunder": _refunder,
}
