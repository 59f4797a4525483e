"""An independent, plain-loop reference of the default rulebook's final tags.

It reads the raw sample files with its own minimal parsing and recomputes every
tag from the customer's whole history at each instant where a tag can change.
It imports nothing from tagger on purpose, so a bug in the replay readers or the
rule engine cannot hide in both. Slow by design (quadratic per customer).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

__all__ = [
    "CdnowFacts",
    "Tags",
    "cdnow_facts",
    "hesitant_customers",
    "rees46_cart_facts",
    "reference_cdnow",
    "reference_events",
    "reference_rees46",
    "reference_taobao",
    "reference_uci",
    "sample_data_dir",
    "tags_at",
    "taobao_cart_then_buy",
    "uci_facts",
]

Tags = dict[str, dict[str, int]]  # customer id → tag → since (epoch ms), the `at` that added it

MINUTE = 60_000
DAY = 24 * 60 * MINUTE
# The default rulebook's thresholds, in minor units of a two-decimal currency.
HIGH_VALUE = 500_000
MEDIUM_VALUE = 100_000
VIP_SPEND = 2_000_000
VIP_PURCHASES = 5
HESITANT_AFTER = 30 * MINUTE
BROWSING_VIEWS = 3
BROWSING_LIMIT = 5
WINDOWS = (7 * DAY, 30 * DAY, 90 * DAY, 180 * DAY)

ACTIVITY = frozenset({"page_view", "add_to_cart", "remove_from_cart", "purchase", "campaign_join"})
TAG_PARAMETER = re.compile(r"[a-z0-9_.]{1,64}")
REES46_TYPES = {
    "view": "page_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
# A Taobao favourite replays as a view of the item. A buy is worth a nominal
# 1.00, because the data has no prices.
TAOBAO_TYPES = {"pv": "page_view", "fav": "page_view", "cart": "add_to_cart", "buy": "purchase"}
TAOBAO_NOMINAL = 100


@dataclass(frozen=True)
class Ev:
    """One event in the reference's own form: money in minor units, time in epoch ms."""

    ts: int
    order: int  # position in the input, the tie-break at equal times
    customer: str
    type: str
    category: str | None = None
    product: str | None = None
    amount: int = 0
    attributes: Mapping[str, Any] | None = None
    tag: str | None = None


def sample_data_path() -> Path:
    """Return where sample data belongs: TAGGER_SAMPLE_DATA, else shared/data beside the repo."""
    configured = os.environ.get("TAGGER_SAMPLE_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def sample_data_dir() -> Path | None:
    """Return the sample data folder, or None when it is absent."""
    folder = sample_data_path()
    return folder if folder.is_dir() else None


def reference_rees46(path: Path, end_clock_ms: int) -> Tags:
    """Return every REES46 customer's final tags at `end_clock_ms`."""
    return _tags_of_all(_rees46_events(path), end_clock_ms)


def reference_uci(path: Path, end_clock_ms: int) -> Tags:
    """Return every UCI Online Retail customer's final tags at `end_clock_ms`."""
    return _tags_of_all(_uci_events(path), end_clock_ms)


def reference_taobao(path: Path, end_clock_ms: int) -> Tags:
    """Return every Taobao UserBehavior user's final tags at `end_clock_ms`."""
    return _tags_of_all(_taobao_events(path), end_clock_ms)


def reference_cdnow(path: Path, end_clock_ms: int) -> Tags:
    """Return every CDNOW customer's final tags at `end_clock_ms`."""
    return _tags_of_all(_cdnow_events(path), end_clock_ms)


def reference_events(events: Iterable[Mapping[str, Any]], end_clock_ms: int) -> Tags:
    """Return the final tags of events in the input format with integer `ts` (the simulator's)."""
    converted = []
    for order, event in enumerate(events):
        amount = event.get("amount")
        converted.append(
            Ev(
                ts=event["ts"],
                order=order,
                customer=event["customer_id"],
                type=event["type"],
                category=event.get("category"),
                product=event.get("product_id"),
                amount=_cents(amount) if amount is not None else 0,
                attributes=event.get("attributes"),
                tag=event.get("tag"),
            )
        )
    return _tags_of_all(converted, end_clock_ms)


def hesitant_customers(tags: Tags) -> set[str]:
    """Return the customers holding `hesitant`."""
    return {customer for customer, held in tags.items() if "hesitant" in held}


def rees46_cart_facts(path: Path) -> tuple[set[str], set[str]]:
    """Return the users who carted, and those who bought nothing at or after their last cart."""
    by_user: dict[str, list[Ev]] = defaultdict(list)
    for event in _rees46_events(path):
        by_user[event.customer].append(event)
    carting = {user for user, events in by_user.items() if _has(events, "add_to_cart")}
    unbought = set()
    for user in carting:
        last_cart = max(event.ts for event in by_user[user] if event.type == "add_to_cart")
        if not any(e.type == "purchase" and e.ts >= last_cart for e in by_user[user]):
            unbought.add(user)
    return carting, unbought


def uci_facts(path: Path) -> tuple[int, int, int]:
    """Return the UCI sample's customer, invoice and cancellation-line counts."""
    rows = _csv_rows(path)
    customers = {row["CustomerID"] for row in rows}
    invoices = {row["InvoiceNo"] for row in rows}
    cancellations = sum(1 for row in rows if row["InvoiceNo"].startswith("C"))
    return len(customers), len(invoices), cancellations


def taobao_cart_then_buy(path: Path, min_gap_ms: int) -> dict[str, tuple[int, int]]:
    """Return users whose first cart was followed by a buy `min_gap_ms` or later.

    Only users with no buy before that first cart, and no other buy in
    between, are returned, as user → (cart time, buy time) in epoch ms.
    """
    by_user: dict[str, list[Ev]] = defaultdict(list)
    for event in sorted(_taobao_events(path), key=lambda e: (e.ts, e.order)):
        by_user[event.customer].append(event)

    found = {}
    for user, events in by_user.items():
        carts = [event.ts for event in events if event.type == "add_to_cart"]
        if not carts:
            continue
        first_cart = carts[0]
        if any(e.type == "purchase" and e.ts < first_cart for e in events):
            continue
        buys = [e.ts for e in events if e.type == "purchase" and e.ts >= first_cart]
        if buys and buys[0] - first_cart >= min_gap_ms:
            found[user] = (first_cart, buys[0])
    return found


class CdnowFacts(NamedTuple):
    """Counts of the CDNOW file, over every row, zero-dollar rows included."""

    customers: int
    zero_dollar_rows: int
    zero_dollar_only_customers: int  # customers whose every row is worth 0
    last_row_90_days_old: int  # customers whose last row is 90 or more days before the end


def cdnow_facts(path: Path, end_day: str) -> CdnowFacts:
    """Return the CDNOW file's counts; `end_day` (YYYYMMDD) is the day the data ends."""
    end = _day(end_day)
    last_row: dict[str, str] = {}
    paying: set[str] = set()
    zero_rows = 0
    for _, customer, day, _, dollars in _cdnow_rows(path):
        last_row[customer] = max(last_row.get(customer, day), day)
        if Decimal(dollars) == 0:
            zero_rows += 1
        else:
            paying.add(customer)
    old = sum(1 for day in last_row.values() if (end - _day(day)).days >= 90)
    return CdnowFacts(len(last_row), zero_rows, len(last_row) - len(paying), old)


def tags_at(history: list[Ev], clock: int) -> set[str]:
    """Return the tags the default rulebook gives a customer with `history` at `clock`."""

    def within(event: Ev, window: int) -> bool:
        return clock - window < event.ts <= clock

    tags: set[str] = set()
    purchases = [event for event in history if event.type == "purchase"]
    recent_purchases = [event for event in purchases if within(event, 180 * DAY)]

    if purchases:
        tags.add("existing" if any(within(e, 90 * DAY) for e in purchases) else "dormant")
    elif any(event.type in ACTIVITY for event in history):
        tags.add("potential")

    refunds = [e for e in history if e.type == "refund" and within(e, 180 * DAY)]
    net = max(0, sum(e.amount for e in recent_purchases) - sum(e.amount for e in refunds))
    if net >= HIGH_VALUE:
        tags.add("high_value")
    elif net >= MEDIUM_VALUE:
        tags.add("medium_value")
    elif net > 0:
        tags.add("low_value")

    if _member_level(history) == "vip" or (
        net >= VIP_SPEND and len(recent_purchases) >= VIP_PURCHASES
    ):
        tags.add("vip")

    oldest_in_cart = _oldest_cart_item(history)
    if oldest_in_cart is not None and clock - oldest_in_cart >= HESITANT_AFTER:
        tags.add("hesitant")

    tags.update(_browsing_interests(history, clock))

    if any(within(e, 30 * DAY) for e in purchases):
        tags.add("recent_buyer")
    if any(e.type == "campaign_join" and within(e, 30 * DAY) for e in history):
        tags.add("campaign_participant")
    if any(e.type in ACTIVITY and within(e, 30 * DAY) for e in history):
        tags.add("active")

    tags.update(_manual_tags(history))
    return tags


def _tags_of_all(events: list[Ev], end_clock_ms: int) -> Tags:
    by_customer: dict[str, list[Ev]] = defaultdict(list)
    for event in sorted(events, key=lambda e: (e.ts, e.order)):
        by_customer[event.customer].append(event)
    return {
        customer: _final_tags(history, end_clock_ms) for customer, history in by_customer.items()
    }


def _final_tags(events: list[Ev], end: int) -> dict[str, int]:
    """Walk one customer's events and due instants in time order; return tag → since."""
    if events[-1].ts > end:
        raise ValueError(f"end clock {end} is before the last event at {events[-1].ts}")

    # Every instant where a rule's truth can change without a new event: an
    # entry leaving a window, and a cart item reaching 30 minutes.
    due: set[int] = set()
    for event in events:
        due.update(event.ts + window for window in WINDOWS)
        if event.type == "add_to_cart":
            due.add(event.ts + HESITANT_AFTER)
    pending = sorted(instant for instant in due if instant <= end)

    held: dict[str, int] = {}
    history: list[Ev] = []
    next_due = 0
    for event in events:
        while next_due < len(pending) and pending[next_due] <= event.ts:
            _evaluate(held, history, pending[next_due])
            next_due += 1
        history.append(event)
        _evaluate(held, history, event.ts)

    for instant in pending[next_due:]:
        _evaluate(held, history, instant)
    _evaluate(held, history, end)
    return held


def _evaluate(held: dict[str, int], history: list[Ev], clock: int) -> None:
    now = tags_at(history, clock)
    for tag in set(held) - now:
        del held[tag]
    for tag in now - set(held):
        held[tag] = clock


def _oldest_cart_item(history: list[Ev]) -> int | None:
    # product → time first added; a purchase empties the whole cart.
    cart: dict[str | None, int] = {}
    for event in history:
        if event.type == "add_to_cart":
            cart.setdefault(event.product, event.ts)
        elif event.type == "remove_from_cart":
            cart.pop(event.product, None)
        elif event.type == "purchase":
            cart.clear()
    return min(cart.values()) if cart else None


def _browsing_interests(history: list[Ev], clock: int) -> set[str]:
    counts: Counter[str] = Counter()
    latest: dict[str, tuple[int, int]] = {}
    for event in history:
        if event.type != "page_view" or event.category is None:
            continue
        if not TAG_PARAMETER.fullmatch(event.category):
            continue
        if clock - 7 * DAY < event.ts <= clock:
            counts[event.category] += 1
            latest[event.category] = (event.ts, event.order)
    eligible = [category for category, count in counts.items() if count >= BROWSING_VIEWS]
    # Highest count first; ties go to the most recent view, then the later row.
    eligible.sort(key=lambda category: (counts[category], latest[category]), reverse=True)
    return {f"browsing_interest:{category}" for category in eligible[:BROWSING_LIMIT]}


def _member_level(history: list[Ev]) -> Any:
    level = None
    for event in history:
        if (
            event.type == "customer_update"
            and event.attributes
            and "member_level" in event.attributes
        ):
            level = event.attributes["member_level"]
    return level


def _manual_tags(history: list[Ev]) -> set[str]:
    tags: set[str] = set()
    for event in history:
        if event.type == "tag_assign":
            tags.add(f"manual:{event.tag}")
        elif event.type == "tag_unassign":
            tags.discard(f"manual:{event.tag}")
    return tags


def _has(events: list[Ev], kind: str) -> bool:
    return any(event.type == kind for event in events)


def _rees46_events(path: Path) -> list[Ev]:
    events = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            line = reader.line_num
            if len(row) != 9:
                continue
            event_time, event_type, product, _, category, _, price, user, _ = row
            cents = _cents(price)
            if event_type == "purchase" and cents == 0:
                continue
            moment = datetime.strptime(event_time, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
            events.append(
                Ev(
                    ts=int(moment.timestamp()) * 1000,
                    order=line,
                    customer=user,
                    type=REES46_TYPES[event_type],
                    category=category or None,
                    product=product,
                    amount=cents if event_type == "purchase" else 0,
                )
            )
    return events


def _uci_events(path: Path) -> list[Ev]:
    london = ZoneInfo("Europe/London")
    invoices: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(_csv_rows(path), start=2):
        if not row["CustomerID"]:
            continue
        total = Decimal(row["Quantity"]) * Decimal(row["UnitPrice"])
        invoice = invoices.setdefault(
            row["InvoiceNo"],
            {"line": line, "date": row["InvoiceDate"], "customer": row["CustomerID"], "total": 0},
        )
        invoice["total"] += total

    events = []
    for number, invoice in invoices.items():
        refund = number.startswith("C")
        amount = -invoice["total"] if refund else invoice["total"]
        if amount <= 0:
            continue
        moment = datetime.strptime(invoice["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=london)
        events.append(
            Ev(
                ts=int(moment.timestamp()) * 1000,
                order=invoice["line"],
                customer=invoice["customer"],
                type="refund" if refund else "purchase",
                amount=_cents(str(amount)),
            )
        )
    return events


def _taobao_events(path: Path) -> list[Ev]:
    events = []
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            user, item, category, behavior, seconds = row
            kind = TAOBAO_TYPES[behavior]
            events.append(
                Ev(
                    ts=int(seconds) * 1000,
                    order=line,
                    customer=user,
                    type=kind,
                    category=f"taobao.{category}",
                    product=item,
                    amount=TAOBAO_NOMINAL if kind == "purchase" else 0,
                )
            )
    return events


def _cdnow_events(path: Path) -> list[Ev]:
    events = []
    for line, customer, day, _, dollars in _cdnow_rows(path):
        cents = _cents(dollars)
        if cents == 0:
            continue
        moment = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        events.append(
            Ev(
                ts=int(moment.timestamp()) * 1000,
                order=line,
                customer=customer,
                type="purchase",
                amount=cents,
            )
        )
    return events


def _cdnow_rows(path: Path) -> list[tuple[int, str, str, str, str]]:
    """Return (line, customer, YYYYMMDD, cds, dollars) per row, after the header."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            fields = text.split()
            if line == 1 and fields[0] == "customer_id":
                continue
            customer, day, cds, dollars = fields
            rows.append((line, customer, day, cds, dollars))
    return rows


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _cents(text: str) -> int:
    value = Decimal(text) * 100
    if value != value.to_integral_value():
        raise ValueError(f"{text} is not a whole number of cents")
    return int(value)
