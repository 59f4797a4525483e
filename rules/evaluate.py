"""Evaluation of checked expressions over a customer's aggregates at one instant."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from tagger.rules.aggregates import SPEND_KEY, window_entries
from tagger.rules.expression import (
    BoolOp,
    Compare,
    ComparisonOperator,
    Constant,
    Metric,
    Node,
    Not,
    Sum,
    walk,
)
from tagger.rules.state import CustomerState, Scope
from tagger.schemas.money import format_money

__all__ = [
    "Context",
    "Timers",
    "Value",
    "collect_timers",
    "evaluate",
    "next_change",
    "reason_values",
]

Value = int | Decimal | str | bool | None

_FLIPPED: Final[dict[ComparisonOperator, ComparisonOperator]] = {
    "<": ">",
    "<=": ">=",
    ">": "<",
    ">=": "<=",
    "==": "==",
    "!=": "!=",
}


@dataclass(frozen=True)
class Context:
    """The state, scope and time an expression is evaluated at.

    `scope` is the customer's own or that of one `per` value.
    """

    state: CustomerState
    scope: Scope
    time: int
    currency: str
    exponent: int


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


def reason_values(nodes: Iterable[Node], context: Context) -> dict[str, Any]:
    """Return metric text → JSON value for every metric in `nodes`, for a tag change's reason.

    Money is a decimal string ("5123.40"), counts are ints, durations integer
    ms, attributes as stored, and a missing value null.
    """
    values: dict[str, Any] = {}
    for root in nodes:
        for node in walk(root):
            if not isinstance(node, Metric) or node.text in values:
                continue
            if node.kind == "net_spend":
                values[node.text] = format_money(_net_spend_minor(node, context), context.currency)
            else:
                values[node.text] = _metric_value(node, context)
    return values


@dataclass(frozen=True)
class Timers:
    """The parts of expressions whose value changes with time alone, without new events.

    `windows` contains distinct (series key, window ms) pairs. `durations`
    contains duration comparisons as (metric, operator, literal ms), with the
    metric on the left.
    """

    windows: tuple[tuple[str, int], ...]
    durations: tuple[tuple[Metric, ComparisonOperator, int], ...]


def collect_timers(nodes: Iterable[Node]) -> Timers:
    """Find the windowed metrics and duration comparisons in `nodes`."""
    windows: dict[tuple[str, int], None] = {}
    durations: dict[
        tuple[str, str, ComparisonOperator, int], tuple[Metric, ComparisonOperator, int]
    ]
    durations = {}
    for root in nodes:
        for node in walk(root):
            if isinstance(node, Metric) and node.window is not None:
                windows[(node.key, node.window)] = None
            elif isinstance(node, Compare):
                duration = _duration_comparison(node)
                if duration is not None:
                    metric, op, literal = duration
                    durations[(metric.kind, metric.key, op, literal)] = duration
    return Timers(tuple(windows), tuple(durations.values()))


def next_change(timers: Timers, context: Context) -> int | None:
    """Return the earliest instant after `context.time` at which a timed part can change value.

    With no new event, a windowed metric changes only when an entry enters
    its window (at the entry's time) or leaves it (at time + window). A
    duration compared with a literal D changes only at reference + D or 1 ms
    later.
    """
    best: int | None = None
    for key, window in timers.windows:
        entries = context.scope.series.get(key)
        if not entries:
            continue
        candidate = _series_change(entries, window, context.time)
        if candidate is not None and (best is None or candidate < best):
            best = candidate
    for metric, op, literal in timers.durations:
        candidate = _duration_change(metric, op, literal, context)
        if candidate is not None and (best is None or candidate < best):
            best = candidate
    return best


def _metric_value(metric: Metric, context: Context) -> Value:
    scope = context.scope
    if metric.kind == "count":
        return scope.counts.get(metric.key, 0)
    if metric.kind == "count_window":
        assert metric.window is not None
        entries = window_entries(
            _series(metric, context), context.time - metric.window, context.time
        )
        return sum(value for _, value in entries)
    if metric.kind == "net_spend":
        # Exact: a Decimal scaled by a power of ten, never a float.
        return Decimal(_net_spend_minor(metric, context)).scaleb(-context.exponent)
    if metric.kind == "attribute":
        entry = context.state.attributes.get(metric.key)
        return entry[0] if entry is not None else None

    reference = _reference_time(metric, context)
    return None if reference is None else context.time - reference


def _net_spend_minor(metric: Metric, context: Context) -> int:
    assert metric.window is not None
    entries = window_entries(
        context.scope.series.get(SPEND_KEY, []), context.time - metric.window, context.time
    )
    # Refunds may outweigh purchases in a window; net spend never reads below 0.
    return max(0, sum(value for _, value in entries))


def _series(metric: Metric, context: Context) -> list[list[int]]:
    return context.scope.series.get(metric.key, [])


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
    if not _same_kind(left, right):
        return node.op == "!="
    if node.op == "==":
        return left == right
    if node.op == "!=":
        return left != right
    if not (_is_number(left) and _is_number(right)):
        return False

    assert isinstance(left, int | Decimal) and isinstance(right, int | Decimal)
    if node.op == "<":
        return left < right
    if node.op == "<=":
        return left <= right
    if node.op == ">":
        return left > right
    return left >= right


def _sum(node: Sum, context: Context) -> Value:
    total: int | Decimal = 0
    for index, term in enumerate(node.terms):
        value = evaluate(term, context)
        assert isinstance(value, int | Decimal)
        if index > 0 and node.signs[index - 1] == "-":
            total -= value
        else:
            total += value
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
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _same_kind(left: Value, right: Value) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool)
    if _is_number(left):
        return _is_number(right)
    return type(left) is type(right)


def _entry_time(entry: list[int]) -> int:
    return entry[0]
