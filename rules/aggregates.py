"""Folding events into a customer's bounded aggregates: the series, counts and cart rules read.

What is stored follows from the rulebook (`make_plan`). Each distinct
selection of events, such as `page_view` or `page_view where category
matches "electronics.*"`, gets its own entries, stored under the
selection's canonical text and computed as events fold in. So a filter
costs one series, however many rules read it, and changing a filter starts
a new series.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from tagger.rules.calendar import MAX_PERIOD_MS
from tagger.rules.expression import Metric, Node, Selector, walk
from tagger.rules.filters import field_value, passes
from tagger.rules.metrics import MAX_DISTINCT_VALUES
from tagger.rules.rulebook import PARAM_RE, Rule
from tagger.rules.state import CustomerState, Scope
from tagger.schemas.events import Event

__all__ = [
    "MAX_CART_ITEMS",
    "MAX_DISTINCT_VALUES",
    "MAX_PER_VALUES",
    "MAX_SEQUENCE_TIMES",
    "MAX_SERIES_ENTRIES",
    "SPEND_KEY",
    "Feed",
    "Plan",
    "ScopePlan",
    "avg_count_key",
    "entry_count",
    "fold_event",
    "make_plan",
    "metrics_of",
    "prune",
    "window_entries",
]

# Bounds on one customer's state, whatever the number of events. Under the
# default rulebook the encoded state stays under about 70 KB plus the outbox:
# 62-70 KB when 64 categories each get more than 128 page views within 7
# days, the largest case measured with the engine alone. A series past
# MAX_SERIES_ENTRIES merges the two adjacent entries closest in time. That
# delays one event's exit from windows by the gap between them, which is at
# most window / 128 when all entries lie in one window.
MAX_SERIES_ENTRIES: Final = 128
# Parameter values tracked per `per` field; browsing_interest keeps 5 of them.
MAX_PER_VALUES: Final = 64
MAX_CART_ITEMS: Final = 128
# Times of the second event of a sequence kept after its latest first event.
# In time order one is enough; more cover first events that arrive late.
MAX_SEQUENCE_TIMES: Final = 16
SPEND_KEY: Final = "spend"

Combine = Literal["add", "min", "max"]
_COMBINES: Final[dict[str, Combine]] = {"sum": "add", "avg": "add", "min": "min", "max": "max"}
_Store = Literal["value", "distinct", "latest", "sequence_first", "sequence_then"]


@dataclass(frozen=True)
class Feed:
    """The source of one stored value: which events feed it, what each gives, how values combine.

    Each event passing `selector` gives 1, or its `field` when set (events
    without the field give nothing), or 1 for each event with the field when
    `presence` is set. `selector` is None for net spend: purchases give their
    amount and refunds minus theirs.
    """

    selector: Selector | None
    field: str | None = None
    combine: Combine = "add"
    presence: bool = False


@dataclass(frozen=True)
class ScopePlan:
    """The aggregates one kind of scope keeps.

    `windows` maps a series key to how long its entries are kept (ms).
    `counts` are lifetime values and `last` last-seen times. `feeds` tells
    how events feed each of those keys. `distinct` maps a count_distinct key
    to its retention (None: lifetime), `latest` holds the keys of `last(...)`
    and `sequences` maps a sequence key to its two selectors.
    """

    windows: dict[str, int] = field(default_factory=dict)
    counts: frozenset[str] = frozenset()
    last: frozenset[str] = frozenset()
    feeds: dict[str, Feed] = field(default_factory=dict)
    distinct: dict[str, int | None] = field(default_factory=dict)
    latest: frozenset[str] = frozenset()
    sequences: dict[str, tuple[Selector, Selector]] = field(default_factory=dict)
    # Event type → (store, key) pairs an event of that type may feed.
    by_type: dict[str, tuple[tuple[_Store, str], ...]] = field(default_factory=dict)
    # count_distinct and last keys → (selector, field) they read.
    projections: dict[str, tuple[Selector, str]] = field(default_factory=dict)


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
        for metric in metrics_of(rule):
            if metric.kind == "cart_age":
                cart = True
            elif metric.kind == "attribute":
                attributes.add(metric.key)
            else:
                builder.add(metric)

    totals = builders.pop(None).build()
    per = {name: builder.build() for name, builder in builders.items() if name is not None}
    return Plan(totals, per, cart, frozenset(attributes))


def metrics_of(rule: Rule) -> Iterable[Metric]:
    """Yield every metric a rule reads, in its condition, rank and leave condition."""
    expressions: list[Node] = [rule.condition]
    if rule.rank is not None:
        expressions.append(rule.rank)
    leave = getattr(rule, "leave", None)
    if leave is not None:
        expressions.append(leave)
    for expression in expressions:
        for node in walk(expression):
            if isinstance(node, Metric):
                yield node


def avg_count_key(metric: Metric) -> str:
    """Return the key of the series that counts the events an `avg` divides by."""
    return f"count {metric.key}"


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
            if _is_empty(scope):
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
        self.feeds: dict[str, Feed] = {}
        self.distinct: dict[str, int | None] = {}
        self.latest: set[str] = set()
        self.sequences: dict[str, tuple[Selector, Selector]] = {}
        self.projections: dict[str, tuple[Selector, str]] = {}

    def add(self, metric: Metric) -> None:
        kind = metric.kind
        if kind in ("count", "count_window"):
            assert metric.selector is not None
            self._value(metric, metric.key, Feed(metric.selector))
        elif kind == "net_spend":
            self._value(metric, SPEND_KEY, Feed(None))
        elif kind == "since":
            assert metric.selector is not None
            self.last.add(metric.key)
            self.feeds[metric.key] = Feed(metric.selector)
        elif kind in ("sum", "min", "max", "avg"):
            assert metric.selector is not None
            combine = _COMBINES[kind]
            self._value(metric, metric.key, Feed(metric.selector, metric.field, combine))
            if kind == "avg":
                presence = Feed(metric.selector, metric.field, "add", presence=True)
                self._value(metric, avg_count_key(metric), presence)
        elif kind == "count_distinct":
            assert metric.selector is not None and metric.field is not None
            retention = _retention(metric)
            known = self.distinct.get(metric.key, 0)
            self.distinct[metric.key] = (
                None if retention is None or known is None else max(known, retention)
            )
            self.projections[metric.key] = (metric.selector, metric.field)
        elif kind == "last":
            assert metric.selector is not None and metric.field is not None
            self.latest.add(metric.key)
            self.projections[metric.key] = (metric.selector, metric.field)
        elif kind in ("followed_by", "not_followed_by"):
            assert metric.selector is not None and metric.then is not None
            self.sequences[metric.key] = (metric.selector, metric.then)

    def _value(self, metric: Metric, key: str, feed: Feed) -> None:
        self.feeds[key] = feed
        retention = _retention(metric)
        if retention is None:
            self.counts.add(key)
        else:
            self.windows[key] = max(self.windows.get(key, 0), retention)

    def build(self) -> ScopePlan:
        by_type: dict[str, list[tuple[_Store, str]]] = {}
        for key, feed in self.feeds.items():
            types = feed.selector.types if feed.selector is not None else ("purchase", "refund")
            for name in types:
                by_type.setdefault(name, []).append(("value", key))
        for key in self.distinct:
            for name in self.projections[key][0].types:
                by_type.setdefault(name, []).append(("distinct", key))
        for key in self.latest:
            for name in self.projections[key][0].types:
                by_type.setdefault(name, []).append(("latest", key))
        for key, (first, then) in self.sequences.items():
            for name in first.types:
                by_type.setdefault(name, []).append(("sequence_first", key))
            for name in then.types:
                by_type.setdefault(name, []).append(("sequence_then", key))

        return ScopePlan(
            windows=dict(self.windows),
            counts=frozenset(self.counts),
            last=frozenset(self.last),
            feeds=dict(self.feeds),
            distinct=dict(self.distinct),
            latest=frozenset(self.latest),
            sequences=dict(self.sequences),
            by_type={name: tuple(stores) for name, stores in by_type.items()},
            projections=dict(self.projections),
        )


def _retention(metric: Metric) -> int | None:
    if metric.calendar is not None:
        return MAX_PERIOD_MS[metric.calendar]
    return metric.window


def _fold_scope(scope: Scope, event: Event, plan: ScopePlan, horizon: int) -> None:
    for store, key in plan.by_type.get(event.type, ()):
        if store == "value":
            _fold_value(scope, event, key, plan, horizon)
        elif store == "distinct":
            _fold_distinct(scope, event, key, plan, horizon)
        elif store == "latest":
            _fold_latest(scope, event, key, plan)
        else:
            _fold_sequence(scope, event, key, plan, first=store == "sequence_first")

    scope.newest = event.ts if scope.newest is None else max(scope.newest, event.ts)


def _fold_value(scope: Scope, event: Event, key: str, plan: ScopePlan, horizon: int) -> None:
    feed = plan.feeds[key]
    if feed.selector is None:
        if event.amount is None:
            return
        value = event.amount if event.type == "purchase" else -event.amount
    else:
        where = feed.selector.where
        if where is not None and not passes(where, event):
            return
        fed = _feed_value(feed, event)
        if fed is None:
            return
        value = fed

    if key in plan.windows:
        _add_entry(scope, key, event.ts, value, horizon - plan.windows[key], feed.combine)
    if key in plan.counts:
        known = scope.counts.get(key)
        scope.counts[key] = value if known is None else _combine(feed.combine, known, value)
    if key in plan.last:
        scope.last[key] = max(scope.last.get(key, event.ts), event.ts)


def _feed_value(feed: Feed, event: Event) -> int | None:
    if feed.field is None:
        return 1
    value = field_value(event, feed.field)
    if value is None:
        return None
    if feed.presence:
        return 1
    assert isinstance(value, int)
    return value


def _combine(combine: Combine, known: int, value: int) -> int:
    if combine == "min":
        return min(known, value)
    if combine == "max":
        return max(known, value)
    return known + value


def _add_entry(
    scope: Scope, key: str, time: int, value: int, expired_at_or_before: int, combine: Combine
) -> None:
    if time <= expired_at_or_before:
        return

    entries = scope.series.setdefault(key, [])
    index = bisect.bisect_right(entries, time, key=_entry_time)
    if index > 0 and entries[index - 1][0] == time:
        entries[index - 1][1] = _combine(combine, entries[index - 1][1], value)
        if combine == "add" and entries[index - 1][1] == 0:
            del entries[index - 1]
    else:
        entries.insert(index, [time, value])

    if len(entries) > MAX_SERIES_ENTRIES:
        # TODO: the merged entry leaves windows at the newer of the two times,
        # so the older event keeps counting up to that gap longer than it should.
        closest = min(
            range(1, len(entries)), key=lambda index: entries[index][0] - entries[index - 1][0]
        )
        entries[closest][1] = _combine(combine, entries[closest][1], entries[closest - 1][1])
        del entries[closest - 1]
    if not entries:
        del scope.series[key]


def _fold_distinct(scope: Scope, event: Event, key: str, plan: ScopePlan, horizon: int) -> None:
    selector, name = plan.projections[key]
    if selector.where is not None and not passes(selector.where, event):
        return
    value = field_value(event, name)
    retention = plan.distinct[key]
    if value is None or (retention is not None and event.ts <= horizon - retention):
        return

    values = scope.distinct.setdefault(key, {})
    text = str(value)
    times = values.setdefault(text, [])
    times.append(event.ts)
    _collapse(times, horizon)
    if len(values) > MAX_DISTINCT_VALUES:
        # TODO: past the cap the value seen least recently is dropped, so a
        # window holding more values than the cap reads only the cap.
        oldest = min(values, key=lambda known: (values[known][-1], known))
        del values[oldest]


def _collapse(times: list[int], time: int) -> None:
    # Of the times at or before `time` only the newest matters from then on,
    # because evaluation never goes back in time. Later times stay until the
    # clock reaches them.
    times.sort()
    past = bisect.bisect_right(times, time)
    if past > 1:
        del times[: past - 1]


def _fold_latest(scope: Scope, event: Event, key: str, plan: ScopePlan) -> None:
    selector, name = plan.projections[key]
    if selector.where is not None and not passes(selector.where, event):
        return
    value = field_value(event, name)
    if value is None:
        return

    known = scope.latest.get(key)
    # The newest event wins; at one instant the greater value does, so that
    # arrival order within a millisecond cannot change the result.
    if known is None or (event.ts, _order(value)) > (known[0], _order(known[1])):
        scope.latest[key] = [event.ts, value]


def _order(value: Any) -> tuple[int, str | int]:
    return (0, value) if isinstance(value, int) else (1, str(value))


def _fold_sequence(scope: Scope, event: Event, key: str, plan: ScopePlan, *, first: bool) -> None:
    selector = plan.sequences[key][0 if first else 1]
    if selector.where is not None and not passes(selector.where, event):
        return

    entry = scope.sequences.setdefault(key, [None, []])
    latest_first, then_times = entry[0], entry[1]
    if first:
        if latest_first is None or event.ts > latest_first:
            entry[0] = event.ts
            entry[1] = [time for time in then_times if time >= event.ts]
        return

    # A second event counts after the latest first event when its time is at
    # or after it, so a purchase in the same millisecond as the cart add counts.
    if latest_first is not None and event.ts < latest_first:
        return
    bisect.insort(then_times, event.ts)
    if len(then_times) > MAX_SEQUENCE_TIMES:
        # TODO: the earliest time and the newest ones stay. So a first event
        # that arrives late, after more than the cap of second events, may
        # find a later second event than the true first one after it.
        del then_times[1]


def _new_scope(scopes: dict[str, Scope], held: Set[str]) -> Scope:
    if len(scopes) >= MAX_PER_VALUES:
        # Evict the value with the fewest events still in its windows and,
        # among equals, the one seen last, sparing values whose tag is held
        # when there is any other choice. Values seen more than once are thus
        # kept while one-off values take turns in the free places. Evicting
        # the least recently seen value instead lost every value when more
        # than the cap were viewed in turn: each was evicted before its
        # count could reach a threshold.
        # TODO: an evicted value loses its counts, so a value that comes back
        # within its window starts again from zero. With more than the cap of
        # values in one window, a tag may come later than without a cap.
        candidates = [value for value in scopes if value not in held] or list(scopes)
        weakest = min(
            candidates,
            key=lambda value: (entry_count(scopes[value]), -(scopes[value].newest or 0), value),
        )
        del scopes[weakest]
    return Scope()


def entry_count(scope: Scope) -> int:
    """Return how many windowed entries a scope holds, over all its series."""
    return sum(len(entries) for entries in scope.series.values())


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

    for key in list(scope.distinct):
        if key not in plan.distinct:
            del scope.distinct[key]
            continue
        _prune_distinct(scope.distinct[key], plan.distinct[key], time)
        if not scope.distinct[key]:
            del scope.distinct[key]

    for key in list(scope.sequences):
        if key not in plan.sequences:
            del scope.sequences[key]
    for key in list(scope.latest):
        if key not in plan.latest:
            del scope.latest[key]


def _prune_distinct(values: dict[str, list[int]], retention: int | None, time: int) -> None:
    for value in list(values):
        times = values[value]
        _collapse(times, time)
        if retention is not None and times[-1] <= time - retention:
            del values[value]


def _is_empty(scope: Scope) -> bool:
    return not (
        scope.series
        or scope.counts
        or scope.last
        or scope.distinct
        or scope.latest
        or scope.sequences
    )


def _entry_time(entry: list[int]) -> int:
    return entry[0]
