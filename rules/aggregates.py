"""Folding events into a customer's bounded aggregates: the series, counts and cart rules read."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Final

from tagger.rules.expression import Metric, Node, walk
from tagger.rules.rulebook import PARAM_RE, Rule
from tagger.rules.state import CustomerState, Scope
from tagger.schemas.events import ACTIVITY_TYPES, Event

__all__ = [
    "MAX_CART_ITEMS",
    "MAX_PER_VALUES",
    "MAX_SERIES_ENTRIES",
    "Plan",
    "ScopePlan",
    "fold_event",
    "make_plan",
    "prune",
    "window_entries",
]

# Bounds on one customer's state, whatever the number of events: under the
# default rulebook it stays under 10 KB encoded. A series past
# MAX_SERIES_ENTRIES merges the two adjacent entries closest in time. That
# delays one event's exit from windows by the gap between them, which is at
# most window / 128 when all entries lie in one window.
MAX_SERIES_ENTRIES: Final = 128
# Parameter values tracked per `per` field; browsing_interest keeps 5 of them.
MAX_PER_VALUES: Final = 64
MAX_CART_ITEMS: Final = 128
SPEND_KEY: Final = "spend"


@dataclass(frozen=True)
class ScopePlan:
    """The aggregates one kind of scope keeps: windowed series, counts and last-seen times."""

    windows: dict[str, int] = field(default_factory=dict)
    counts: frozenset[str] = frozenset()
    last: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    """The aggregates a rulebook reads; the state keeps these and nothing more."""

    totals: ScopePlan
    per: dict[str, ScopePlan]
    cart: bool
    attributes: frozenset[str]


def make_plan(rules: Iterable[Rule]) -> Plan:
    """Collect the series, counts, cart and attributes that `rules` read."""
    builders: dict[str | None, _PlanBuilder] = {None: _PlanBuilder()}
    cart = False
    attributes: set[str] = set()
    for rule in rules:
        builder = builders.setdefault(rule.per, _PlanBuilder())
        expressions: list[Node] = [rule.condition]
        if rule.rank is not None:
            expressions.append(rule.rank)
        for metric in _metrics(expressions):
            if metric.kind == "cart_age":
                cart = True
            elif metric.kind == "attribute":
                attributes.add(metric.key)
            else:
                builder.add(metric)

    totals = builders.pop(None).build()
    per = {name: builder.build() for name, builder in builders.items() if name is not None}
    return Plan(totals, per, cart, frozenset(attributes))


def fold_event(
    state: CustomerState,
    event: Event,
    plan: Plan,
    *,
    horizon: int,
    held_values: Mapping[str, Set[str]],
) -> None:
    """Add one event to the aggregates that `plan` keeps.

    `horizon` is the evaluation time: an entry already outside every window
    at that time is not stored. `held_values` maps a `per` field to the parameter
    values whose tags the customer holds, which eviction spares.
    """
    _fold_scope(state.totals, event, plan.totals, horizon)
    for name, scope_plan in plan.per.items():
        value = getattr(event, name, None)
        # A value that is not a valid tag parameter is counted nowhere.
        if not isinstance(value, str) or not PARAM_RE.fullmatch(value):
            continue
        scopes = state.per.setdefault(name, {})
        scope = scopes.get(value)
        if scope is None:
            scope = _new_scope(scopes, held_values.get(name, frozenset()))
            scopes[value] = scope
        _fold_scope(scope, event, scope_plan, horizon)

    if plan.cart:
        _fold_cart(state, event)
    if plan.attributes and event.type == "customer_update" and event.attributes:
        _fold_attributes(state, event, plan.attributes)


def prune(state: CustomerState, plan: Plan, time: int) -> None:
    """Drop entries that are outside every window at `time` and scopes left empty."""
    _prune_scope(state.totals, plan.totals, time)
    for name in list(state.per):
        scope_plan = plan.per.get(name)
        if scope_plan is None:
            del state.per[name]
            continue
        scopes = state.per[name]
        for value in list(scopes):
            scope = scopes[value]
            _prune_scope(scope, scope_plan, time)
            if not (scope.series or scope.counts or scope.last):
                del scopes[value]
        if not scopes:
            del state.per[name]


def window_entries(entries: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Return the entries whose time is in the half-open interval (start, end]."""
    low = bisect.bisect_right(entries, start, key=_entry_time)
    high = bisect.bisect_right(entries, end, key=_entry_time)
    return entries[low:high]


class _PlanBuilder:
    def __init__(self) -> None:
        self.windows: dict[str, int] = {}
        self.counts: set[str] = set()
        self.last: set[str] = set()

    def add(self, metric: Metric) -> None:
        if metric.kind in ("count_window", "net_spend"):
            assert metric.window is not None
            self.windows[metric.key] = max(self.windows.get(metric.key, 0), metric.window)
        elif metric.kind == "count":
            self.counts.add(metric.key)
        elif metric.kind == "since":
            self.last.add(metric.key)

    def build(self) -> ScopePlan:
        return ScopePlan(dict(self.windows), frozenset(self.counts), frozenset(self.last))


def _metrics(expressions: Iterable[Node]) -> Iterable[Metric]:
    for expression in expressions:
        for node in walk(expression):
            if isinstance(node, Metric):
                yield node


def _fold_scope(scope: Scope, event: Event, plan: ScopePlan, horizon: int) -> None:
    keys: list[str] = [event.type]
    if event.type in ACTIVITY_TYPES:
        keys.append("activity")

    for key in keys:
        if key in plan.windows:
            _add_entry(scope, key, event.ts, 1, horizon - plan.windows[key])
        if key in plan.counts:
            scope.counts[key] = scope.counts.get(key, 0) + 1
        if key in plan.last:
            scope.last[key] = max(scope.last.get(key, event.ts), event.ts)

    if SPEND_KEY in plan.windows and event.amount is not None:
        if event.type == "purchase":
            _add_entry(scope, SPEND_KEY, event.ts, event.amount, horizon - plan.windows[SPEND_KEY])
        elif event.type == "refund":
            _add_entry(scope, SPEND_KEY, event.ts, -event.amount, horizon - plan.windows[SPEND_KEY])

    scope.newest = event.ts if scope.newest is None else max(scope.newest, event.ts)


def _add_entry(scope: Scope, key: str, time: int, value: int, expired_at_or_before: int) -> None:
    if time <= expired_at_or_before:
        return

    entries = scope.series.setdefault(key, [])
    index = bisect.bisect_right(entries, time, key=_entry_time)
    if index > 0 and entries[index - 1][0] == time:
        entries[index - 1][1] += value
        if entries[index - 1][1] == 0:
            del entries[index - 1]
    else:
        entries.insert(index, [time, value])

    if len(entries) > MAX_SERIES_ENTRIES:
        # TODO: the merged entry leaves windows at the newer of the two times,
        # so the older event keeps counting up to that gap longer than it should.
        closest = min(
            range(1, len(entries)), key=lambda index: entries[index][0] - entries[index - 1][0]
        )
        entries[closest][1] += entries[closest - 1][1]
        del entries[closest - 1]
    if not entries:
        del scope.series[key]


def _new_scope(scopes: dict[str, Scope], held: Set[str]) -> Scope:
    if len(scopes) >= MAX_PER_VALUES:
        # Evict the value whose newest event is oldest, sparing values whose tag
        # is held when there is any other choice.
        # TODO: an evicted value loses its counts, so a value that comes back
        # within its window starts again from zero.
        candidates = [value for value in scopes if value not in held] or list(scopes)
        oldest = min(candidates, key=lambda value: (scopes[value].newest or 0, value))
        del scopes[oldest]
    return Scope()


def _fold_cart(state: CustomerState, event: Event) -> None:
    if event.type == "purchase":
        # A purchase clears every item added at or before it; a late purchase
        # leaves items added after it in the cart.
        if state.last_purchase is None or event.ts > state.last_purchase:
            state.last_purchase = event.ts
        state.cart = {item: added for item, added in state.cart.items() if added > event.ts}
        return

    product = event.product_id
    if product is None:
        return
    if event.type == "remove_from_cart":
        state.cart.pop(product, None)
        return
    if event.type != "add_to_cart":
        return

    if state.last_purchase is not None and state.last_purchase >= event.ts:
        return
    if product in state.cart:
        state.cart[product] = min(state.cart[product], event.ts)
        return
    if len(state.cart) >= MAX_CART_ITEMS:
        # TODO: an item added to a full cart is not tracked, so once the older
        # items leave the cart, cart_age does not see it.
        return
    state.cart[product] = event.ts


def _fold_attributes(state: CustomerState, event: Event, names: frozenset[str]) -> None:
    assert event.attributes is not None
    for name, value in event.attributes.items():
        if name not in names:
            continue
        previous = state.attributes.get(name)
        # The newest event time wins, so a late update cannot undo a newer one.
        if previous is None or previous[1] <= event.ts:
            state.attributes[name] = (value, event.ts)


def _prune_scope(scope: Scope, plan: ScopePlan, time: int) -> None:
    for key in list(scope.series):
        window = plan.windows.get(key)
        if window is None:
            del scope.series[key]
            continue
        entries = scope.series[key]
        expired = bisect.bisect_right(entries, time - window, key=_entry_time)
        if expired:
            del entries[:expired]
        if not entries:
            del scope.series[key]


def _entry_time(entry: list[int]) -> int:
    return entry[0]
