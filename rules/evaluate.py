"""Evaluation of checked expressions over a customer's aggregates at one instant."""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any, Final

from tagger.rules.aggregates import SPEND_KEY, avg_count_key, window_entries
from tagger.rules.calendar import period_bounds
from tagger.rules.expression import (
    BoolOp,
    CalendarPeriod,
    Compare,
    ComparisonOperator,
    Constant,
    Metric,
    Node,
    Not,
    Sum,
    walk,
)
from tagger.rules.filters import FIELD_TYPES
from tagger.rules.state import CustomerState, Scope
from tagger.schemas.money import format_money

__all__ = [
    "Compiled",
    "Compiler",
    "Context",
    "Timers",
    "Value",
    "changes_only_at_timers",
    "collect_timers",
    "evaluate",
    "next_change",
    "reason_values",
]

# An average is a Fraction, so that it compares exactly with a decimal literal.
Value = int | Decimal | Fraction | str | bool | None

_FLIPPED: Final[dict[ComparisonOperator, ComparisonOperator]] = {
    "<": ">",
    "<=": ">=",
    ">": "<",
    ">=": "<=",
    "==": "==",
    "!=": "!=",
}
_SERIES_KINDS: Final = frozenset({"count_window", "net_spend", "sum", "min", "max", "avg"})
_WILDCARD: Final = ":*"
# Decimals of a non-money average in a tag change's reason.
_AVERAGE_DECIMALS: Final = 4


class Context:
    """The state, scope and time an expression is evaluated at.

    `scope` is the customer's own or that of one `per` value. `tags` are the
    tags `has_tag` reads: the rule tags decided so far at this instant and
    the manual tags. None reads the tags the state holds.

    `memo` holds metric values that compiled expressions computed in this
    context, by metric slot (see `Compiler`), so that rules reading the same
    metric at the same instant compute it once. A context must not outlive
    a change to its state or scope.
    """

    __slots__ = ("currency", "exponent", "memo", "scope", "state", "tags", "time")

    def __init__(
        self,
        state: CustomerState,
        scope: Scope,
        time: int,
        currency: str,
        exponent: int,
        tags: Mapping[str, int] | None = None,
    ) -> None:
        self.state = state
        self.scope = scope
        self.time = time
        self.currency = currency
        self.exponent = exponent
        self.tags = tags
        self.memo: dict[int, Value] = {}


def evaluate(node: Node, context: Context) -> Value:
    """Return the value of a checked expression; a condition gives a bool."""
    if isinstance(node, Constant):
        return node.value
    if isinstance(node, Metric):
        return _metric_value(node, context)
    if isinstance(node, Compare):
        return _compare(node, context)
    if isinstance(node, Sum):
        return _sum(node, context)
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(evaluate(operand, context) is True for operand in node.operands)
        return any(evaluate(operand, context) is True for operand in node.operands)
    if isinstance(node, Not):
        return evaluate(node.operand, context) is not True
    raise TypeError(f"unchecked expression node {node!r}")


Compiled = Callable[[Context], Value]
_NUMBER_TYPES: Final = frozenset({int, Decimal, Fraction})
_OPERATORS: Final[dict[ComparisonOperator, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MISSING: Final = object()


class Compiler:
    """Turns checked expressions into closures that return what `evaluate` returns.

    A closure dispatches on node types once, when it is built, not on every
    call. Metrics other than `has_tag` keep their value in the context's
    memo, under a slot shared by every metric of this compiler with the same
    meaning, so rules that read one metric at one instant compute it once.
    `has_tag` is not kept, because the tags it reads grow while rules are
    decided.
    """

    def __init__(self) -> None:
        self._slots: dict[tuple[Any, ...], int] = {}

    def compile(self, node: Node) -> Compiled:
        """Return a closure that evaluates the checked expression `node` in a context."""
        if isinstance(node, Constant):
            constant = node.value
            return lambda context: constant
        if isinstance(node, Metric):
            return self._metric(node)
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, Sum):
            return self._sum(node)
        if isinstance(node, BoolOp):
            return _any_true(self._all(node.operands)) if node.op == "or" else self._and(node)
        if isinstance(node, Not):
            operand = self.compile(node.operand)
            return lambda context: operand(context) is not True
        raise TypeError(f"unchecked expression node {node!r}")

    def _all(self, nodes: Iterable[Node]) -> tuple[Compiled, ...]:
        return tuple(self.compile(node) for node in nodes)

    def _and(self, node: BoolOp) -> Compiled:
        operands = self._all(node.operands)

        def all_true(context: Context) -> bool:
            return all(operand(context) is True for operand in operands)

        return all_true

    def _metric(self, metric: Metric) -> Compiled:
        if metric.kind == "has_tag":
            pattern = metric.key
            return lambda context: _has_tag(pattern, context)
        meaning = (
            metric.kind,
            metric.key,
            metric.window,
            metric.field,
            metric.calendar,
            metric.timezone,
            metric.timeout,
        )
        slot = self._slots.setdefault(meaning, len(self._slots))
        compute = _metric_function(metric)

        def memoised(context: Context) -> Value:
            memo = context.memo
            value = memo.get(slot, _MISSING)
            if value is _MISSING:
                value = memo[slot] = compute(context)
            return value  # type: ignore[return-value]

        return memoised

    def _compare(self, node: Compare) -> Compiled:
        op = node.op
        left = self.compile(node.left)
        right = self.compile(node.right)
        if _is_null_literal(node.left) or _is_null_literal(node.right):
            other = right if _is_null_literal(node.left) else left
            is_equality = op == "=="
            return lambda context: (other(context) is None) == is_equality
        apply = _OPERATORS[op]
        numbers = _NUMBER_TYPES

        def compare(context: Context) -> bool:
            left_value = left(context)
            right_value = right(context)
            if left_value is None or right_value is None:
                return False
            if type(left_value) in numbers and type(right_value) in numbers:
                return apply(left_value, right_value)
            return _compare_values(op, left_value, right_value)

        return compare

    def _sum(self, node: Sum) -> Compiled:
        terms = self._all(node.terms)
        signs = _signs(node)

        def total(context: Context) -> Value:
            values: list[int | Decimal | Fraction] = []
            for term in terms:
                value = term(context)
                if value is None:
                    return None
                assert isinstance(value, int | Decimal | Fraction)
                values.append(value)
            return _add(values, signs)

        return total


def _any_true(operands: tuple[Compiled, ...]) -> Compiled:
    def any_true(context: Context) -> bool:
        return any(operand(context) is True for operand in operands)

    return any_true


def _metric_function(metric: Metric) -> Compiled:
    """Return a closure computing one metric; the common kinds skip `_metric_value`'s dispatch."""
    key = metric.key
    if metric.kind == "count":
        return lambda context: context.scope.counts.get(key, 0)
    if metric.kind == "count_window" and metric.window is not None:
        window = metric.window
        return lambda context: _recent_total(context.scope.series.get(key), window, context.time)
    if metric.kind == "net_spend" and metric.window is not None:
        window = metric.window

        def net_spend(context: Context) -> Value:
            total = _recent_total(context.scope.series.get(SPEND_KEY), window, context.time)
            return Decimal(max(0, total)).scaleb(-context.exponent)

        return net_spend
    if metric.kind == "cart_age":

        def cart_age(context: Context) -> Value:
            cart = context.state.cart
            return context.time - min(cart.values()) if cart else None

        return cart_age
    return lambda context: _metric_value(metric, context)


def _recent_total(entries: list[list[int]] | None, window: int, time: int) -> int:
    """Sum the values of series entries in (time - window, time]."""
    if not entries:
        return 0
    low = bisect.bisect_right(entries, time - window, key=_entry_time)
    high = bisect.bisect_right(entries, time, key=_entry_time)
    total = 0
    for index in range(low, high):
        total += entries[index][1]
    return total


def reason_values(nodes: Iterable[Node], context: Context) -> dict[str, Any]:
    """Return metric text → JSON value for every metric in `nodes`, for a tag change's reason.

    Money is a decimal string ("5123.40"), counts are ints, durations integer
    ms, attributes as stored, and a missing value null. An average is a
    decimal string rounded half-even to the currency's decimals for money,
    to 4 decimals otherwise.
    """
    values: dict[str, Any] = {}
    for root in nodes:
        for node in walk(root):
            if isinstance(node, Metric) and node.text not in values:
                values[node.text] = _reason_value(node, context)
    return values


@dataclass(frozen=True)
class Timers:
    """The parts of expressions whose value changes with time alone, without new events.

    `windows` contains distinct (series key, window ms) pairs. `durations`
    contains duration comparisons as (metric, operator, literal ms), with the
    metric on the left. `calendars` contains (series key, period, time zone)
    triples, `distinct` the count_distinct metrics and `sequences` the
    sequence metrics.
    """

    windows: tuple[tuple[str, int], ...]
    durations: tuple[tuple[Metric, ComparisonOperator, int], ...]
    calendars: tuple[tuple[str, CalendarPeriod, str], ...] = ()
    distinct: tuple[Metric, ...] = ()
    sequences: tuple[Metric, ...] = ()


def collect_timers(nodes: Iterable[Node]) -> Timers:
    """Find the windowed metrics, duration comparisons and sequences in `nodes`."""
    windows: dict[tuple[str, int], None] = {}
    calendars: dict[tuple[str, CalendarPeriod, str], None] = {}
    distinct: dict[tuple[str, int | None, CalendarPeriod | None, str], Metric] = {}
    sequences: dict[tuple[str, int | None], Metric] = {}
    durations: dict[
        tuple[str, str, ComparisonOperator, int], tuple[Metric, ComparisonOperator, int]
    ]
    durations = {}
    for root in nodes:
        for node in walk(root):
            if isinstance(node, Compare):
                duration = _duration_comparison(node)
                if duration is not None:
                    metric, op, literal = duration
                    durations[(metric.kind, metric.key, op, literal)] = duration
            if not isinstance(node, Metric):
                continue
            if node.kind in _SERIES_KINDS:
                for key in _series_keys(node):
                    if node.window is not None:
                        windows[(key, node.window)] = None
                    elif node.calendar is not None:
                        calendars[(key, node.calendar, node.timezone)] = None
            elif node.kind == "count_distinct":
                distinct[(node.key, node.window, node.calendar, node.timezone)] = node
            elif node.kind in ("followed_by", "not_followed_by"):
                sequences[(node.key, node.timeout)] = node
    return Timers(
        tuple(windows),
        tuple(durations.values()),
        tuple(calendars),
        tuple(distinct.values()),
        tuple(sequences.values()),
    )


def changes_only_at_timers(node: Node) -> bool:
    """Return True when, with no new event, `node` changes value only at `next_change` instants.

    Windowed, calendar, distinct and sequence metrics do. A duration metric
    (`since`, `cart_age`) does only where it is compared with a duration
    literal: elsewhere its value grows with every millisecond.
    """
    timed: set[int] = set()
    for part in walk(node):
        if isinstance(part, Compare):
            duration = _duration_comparison(part)
            if duration is not None:
                timed.add(id(duration[0]))
    return all(
        id(part) in timed
        for part in walk(node)
        if isinstance(part, Metric) and part.kind in ("since", "cart_age")
    )


def next_change(timers: Timers, context: Context) -> int | None:
    """Return the earliest instant after `context.time` at which a timed part can change value.

    With no new event, a windowed metric changes only when an entry enters
    its window (at the entry's time) or leaves it (at time + window), and a
    calendar window also when the period ends. A duration compared with a
    literal D changes only at reference + D or 1 ms later. A sequence
    changes when its timeout runs out or a second event stamped later
    than now comes due.
    """
    time = context.time
    scope = context.scope
    candidates: list[int | None] = []
    for key, window in timers.windows:
        entries = scope.series.get(key)
        if entries:
            candidates.append(_series_change(entries, window, time))
    for key, period, timezone in timers.calendars:
        entries = scope.series.get(key)
        if entries:
            candidates.append(_calendar_change(entries, period, timezone, time))
    for metric in timers.distinct:
        candidates.append(_distinct_change(metric, scope, time))
    for metric in timers.sequences:
        candidates.append(_sequence_change(metric, scope, time))
    for metric, op, literal in timers.durations:
        candidates.append(_duration_change(metric, op, literal, context))
    return min((candidate for candidate in candidates if candidate is not None), default=None)


def _metric_value(metric: Metric, context: Context) -> Value:
    kind = metric.kind
    scope = context.scope
    if kind == "count":
        return scope.counts.get(metric.key, 0)
    if kind == "count_window":
        return _window_total(metric, metric.key, context)
    if kind == "net_spend":
        # Exact: a Decimal scaled by a power of ten, never a float.
        return Decimal(_net_spend_minor(metric, context)).scaleb(-context.exponent)
    if kind == "attribute":
        entry = context.state.attributes.get(metric.key)
        return entry[0] if entry is not None else None
    if kind in ("sum", "min", "max", "avg", "last"):
        return _field_value(metric, context)
    if kind == "count_distinct":
        return _distinct_count(metric, scope, context.time)
    if kind in ("followed_by", "not_followed_by"):
        return _sequence_holds(metric, scope, context.time)
    if kind == "has_tag":
        return _has_tag(metric.key, context)

    reference = _reference_time(metric, context)
    return None if reference is None else context.time - reference


def _reason_value(metric: Metric, context: Context) -> Any:
    if metric.kind == "net_spend":
        return format_money(_net_spend_minor(metric, context), context.currency)
    if metric.kind == "avg":
        average = _average(metric, context)
        if average is None:
            return None
        decimals = context.exponent if _is_money(metric) else _AVERAGE_DECIMALS
        exact = Decimal(average.numerator) / Decimal(average.denominator)
        return str(exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN))
    if metric.kind in ("sum", "min", "max", "last") and _is_money(metric):
        minor = _field_minor(metric, context)
        return None if minor is None else format_money(minor, context.currency)
    return _metric_value(metric, context)


def _field_value(metric: Metric, context: Context) -> Value:
    if metric.kind == "avg":
        return _average(metric, context)
    if metric.kind == "last" and not _is_money(metric):
        entry = context.scope.latest.get(metric.key)
        return None if entry is None else entry[1]
    minor = _field_minor(metric, context)
    if minor is None or not _is_money(metric):
        return minor
    return Decimal(minor).scaleb(-context.exponent)


def _field_minor(metric: Metric, context: Context) -> int | None:
    """Return sum, min, max or last of a numeric field as stored: money in minor units."""
    if metric.kind == "last":
        entry = context.scope.latest.get(metric.key)
        return None if entry is None else int(entry[1])
    if metric.kind == "sum":
        return _window_total(metric, metric.key, context)

    bounds = _bounds(metric, context.time)
    if bounds is None:
        return context.scope.counts.get(metric.key)
    values = [
        value for _, value in window_entries(context.scope.series.get(metric.key, []), *bounds)
    ]
    if not values:
        return None
    return min(values) if metric.kind == "min" else max(values)


def _average(metric: Metric, context: Context) -> Fraction | None:
    count = _window_total(metric, avg_count_key(metric), context)
    if count == 0:
        return None
    average = Fraction(_window_total(metric, metric.key, context), count)
    if _is_money(metric):
        average /= 10**context.exponent
    return average


def _window_total(metric: Metric, key: str, context: Context) -> int:
    if metric.window is not None:
        return _recent_total(context.scope.series.get(key), metric.window, context.time)
    bounds = _bounds(metric, context.time)
    if bounds is None:
        return context.scope.counts.get(key, 0)
    return sum(value for _, value in window_entries(context.scope.series.get(key, []), *bounds))


def _bounds(metric: Metric, time: int) -> tuple[int, int] | None:
    """Return a metric's window at `time` as (start, end) for window_entries; None for lifetime."""
    if metric.window is not None:
        return time - metric.window, time
    if metric.calendar is not None:
        start, _ = period_bounds(metric.calendar, time, metric.timezone)
        return start - 1, time
    return None


def _net_spend_minor(metric: Metric, context: Context) -> int:
    # Refunds may outweigh purchases in a window; net spend never reads below 0.
    return max(0, _window_total(metric, SPEND_KEY, context))


def _distinct_count(metric: Metric, scope: Scope, time: int) -> int:
    bounds = _bounds(metric, time)
    low, high = bounds if bounds is not None else (None, time)
    count = 0
    for times in scope.distinct.get(metric.key, {}).values():
        index = bisect.bisect_right(times, high) - 1
        if index >= 0 and (low is None or times[index] > low):
            count += 1
    return count


def _sequence_holds(metric: Metric, scope: Scope, time: int) -> bool:
    entry = scope.sequences.get(metric.key)
    if entry is None or entry[0] is None:
        return False
    first: int = entry[0]
    then_times: list[int] = entry[1]
    assert metric.timeout is not None
    # The earliest second event at or after the first one, up to now.
    index = bisect.bisect_left(then_times, first)
    then = then_times[index] if index < len(then_times) and then_times[index] <= time else None
    if metric.kind == "followed_by":
        return then is not None and then <= first + metric.timeout
    return then is None and time >= first + metric.timeout


def _has_tag(pattern: str, context: Context) -> bool:
    tags = context.tags if context.tags is not None else context.state.tags
    if pattern.endswith(_WILDCARD):
        prefix = pattern.removesuffix("*")
        return any(tag.startswith(prefix) for tag in tags)
    return pattern in tags


def _is_money(metric: Metric) -> bool:
    return metric.field is not None and FIELD_TYPES[metric.field] == "money"


def _series_keys(metric: Metric) -> tuple[str, ...]:
    if metric.kind == "net_spend":
        return (SPEND_KEY,)
    if metric.kind == "avg":
        return (metric.key, avg_count_key(metric))
    return (metric.key,)


def _reference_time(metric: Metric, context: Context) -> int | None:
    if metric.kind == "cart_age":
        cart = context.state.cart
        return min(cart.values()) if cart else None
    return context.scope.last.get(metric.key)


def _compare(node: Compare, context: Context) -> bool:
    left = evaluate(node.left, context)
    right = evaluate(node.right, context)
    if _is_null_literal(node.left) or _is_null_literal(node.right):
        other = right if _is_null_literal(node.left) else left
        return (other is None) == (node.op == "==")

    if left is None or right is None:
        return False
    return _compare_values(node.op, left, right)


def _compare_values(op: ComparisonOperator, left: Value, right: Value) -> bool:
    """Compare two values, neither None: values of different kinds are only unequal."""
    if not _same_kind(left, right):
        return op == "!="
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if not (_is_number(left) and _is_number(right)):
        return False

    assert isinstance(left, int | Decimal | Fraction)
    assert isinstance(right, int | Decimal | Fraction)
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


def _sum(node: Sum, context: Context) -> Value:
    values: list[int | Decimal | Fraction] = []
    for term in node.terms:
        value = evaluate(term, context)
        if value is None:
            return None
        assert isinstance(value, int | Decimal | Fraction)
        values.append(value)
    return _add(values, _signs(node))


def _signs(node: Sum) -> tuple[int, ...]:
    return (1, *(1 if sign == "+" else -1 for sign in node.signs))


def _add(values: list[int | Decimal | Fraction], signs: tuple[int, ...]) -> Value:
    # Decimal and Fraction do not mix, so an average turns the sum into a Fraction.
    if any(isinstance(value, Fraction) for value in values):
        return sum(
            (sign * Fraction(value) for sign, value in zip(signs, values, strict=True)), Fraction(0)
        )
    total: int | Decimal = 0
    for sign, value in zip(signs, values, strict=True):
        assert not isinstance(value, Fraction)
        total += sign * value
    return total


def _series_change(entries: list[list[int]], window: int, time: int) -> int | None:
    best: int | None = None
    leaving = bisect.bisect_right(entries, time - window, key=_entry_time)
    if leaving < len(entries):
        best = entries[leaving][0] + window
    entering = bisect.bisect_right(entries, time, key=_entry_time)
    if entering < len(entries):
        future = entries[entering][0]
        best = future if best is None else min(best, future)
    return best


def _calendar_change(
    entries: list[list[int]], period: CalendarPeriod, timezone: str, time: int
) -> int | None:
    start, end = period_bounds(period, time, timezone)
    candidates: list[int] = []
    if window_entries(entries, start - 1, time):
        candidates.append(end)
    entering = bisect.bisect_right(entries, time, key=_entry_time)
    if entering < len(entries):
        candidates.append(entries[entering][0])
    return min(candidates, default=None)


def _distinct_change(metric: Metric, scope: Scope, time: int) -> int | None:
    values = scope.distinct.get(metric.key)
    if not values:
        return None
    start, end = 0, None
    if metric.calendar is not None:
        start, end = period_bounds(metric.calendar, time, metric.timezone)

    candidates: list[int] = []
    for times in values.values():
        index = bisect.bisect_right(times, time)
        if index < len(times):
            candidates.append(times[index])
        if index == 0:
            continue
        newest = times[index - 1]
        if metric.window is not None and newest + metric.window > time:
            candidates.append(newest + metric.window)
        elif end is not None and newest >= start:
            candidates.append(end)
    return min(candidates, default=None)


def _sequence_change(metric: Metric, scope: Scope, time: int) -> int | None:
    entry = scope.sequences.get(metric.key)
    if entry is None or entry[0] is None:
        return None
    assert metric.timeout is not None
    candidates = [entry[0] + metric.timeout]
    then_times: list[int] = entry[1]
    index = bisect.bisect_right(then_times, time)
    if index < len(then_times):
        candidates.append(then_times[index])
    future = [candidate for candidate in candidates if candidate > time]
    return min(future, default=None)


def _duration_comparison(node: Compare) -> tuple[Metric, ComparisonOperator, int] | None:
    if isinstance(node.left, Metric) and isinstance(node.right, Constant):
        metric, literal, op = node.left, node.right, node.op
    elif isinstance(node.right, Metric) and isinstance(node.left, Constant):
        metric, literal, op = node.right, node.left, _FLIPPED[node.op]
    else:
        return None
    if metric.kind not in ("since", "cart_age") or literal.kind != "duration":
        return None
    assert isinstance(literal.value, int)
    return metric, op, literal.value


def _duration_change(
    metric: Metric, op: ComparisonOperator, literal: int, context: Context
) -> int | None:
    reference = _reference_time(metric, context)
    if reference is None:
        return None
    # `age OP D` with age = time - reference flips when time reaches
    # reference + D (for >= and <) or reference + D + 1 (for > and <=).
    threshold = reference + literal
    instants = {
        ">=": (threshold,),
        "<": (threshold,),
        ">": (threshold + 1,),
        "<=": (threshold + 1,),
    }.get(op, (threshold, threshold + 1))
    future = [instant for instant in instants if instant > context.time]
    return min(future) if future else None


def _is_null_literal(node: Node) -> bool:
    return isinstance(node, Constant) and node.kind == "null"


def _is_number(value: Value) -> bool:
    return isinstance(value, int | Decimal | Fraction) and not isinstance(value, bool)


def _same_kind(left: Value, right: Value) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool)
    if _is_number(left):
        return _is_number(right)
    return type(left) is type(right)


def _entry_time(entry: list[int]) -> int:
    return entry[0]
