"""Static warnings: parts of conditions that can never be true or are always true.

The checks reason about integer ranges. A count is a whole number of at
least 0, and net spend and sums are whole minor units of at least 0. Each
comparison of such a metric with a literal allows a set of values, and
comparisons of one metric joined by `and` or `or` combine those sets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal

from tagger.rules.expression import BoolOp, Compare, Constant, Metric, Node, Not, Sum
from tagger.rules.metrics import MAX_DISTINCT_VALUES

if TYPE_CHECKING:
    from tagger.rules.rulebook import Rulebook

__all__ = ["RuleWarning", "check_warnings", "condition_warnings"]

_Truth = Literal["always", "never"] | None
# A set of whole numbers: sorted, disjoint, closed intervals; None is unbounded.
_Interval = tuple[int | None, int | None]
_Set = list[_Interval]
_FLIPPED: Final = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_MONEY_KINDS: Final = frozenset({"net_spend"})


@dataclass(frozen=True)
class RuleWarning:
    """A condition part that never or always holds: where it is and why."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: warning: {self.message}"


def check_warnings(rulebook: Rulebook) -> list[RuleWarning]:
    """Return the static warnings of a loaded rulebook, in file order."""
    return list(rulebook.warnings)


def condition_warnings(
    node: Node, text: str, *, exponent: int, exclusive: Mapping[str, str] | None = None
) -> list[tuple[int, str]]:
    """Return (offset in `text`, message) for each part of a checked condition that is constant.

    `exponent` is the currency's number of decimals. `exclusive` maps rule
    ids to their exclusive group, which makes `has_tag` of two rules of one
    exclusive group joined by `and` never true.
    """
    analysis = _Analysis(text, exponent, exclusive or {})
    analysis.truth(node)
    return analysis.found


@dataclass(frozen=True)
class _Range:
    """A metric's possible values as whole numbers, and how literals scale into them."""

    key: tuple[object, ...]
    domain: _Set
    nullable: bool
    scale: int
    words: str


class _Analysis:
    def __init__(self, text: str, exponent: int, exclusive: Mapping[str, str]) -> None:
        self._text = text
        self._exponent = exponent
        self._exclusive = exclusive
        self.found: list[tuple[int, str]] = []

    def truth(self, node: Node) -> _Truth:
        if isinstance(node, Not):
            inner = self.truth(node.operand)
            if inner is None:
                return None
            return "never" if inner == "always" else "always"
        if isinstance(node, BoolOp):
            return self._bool(node)
        if isinstance(node, Compare):
            return self._compare(node)
        return None

    def _compare(self, node: Compare) -> _Truth:
        comparison = self._comparison(node)
        if comparison is None:
            return None
        metric_range, allowed = comparison
        truth = _truth_of(allowed, metric_range)
        written = self._text[node.start : node.end]
        if truth == "never":
            self._warn(node, f"`{written}` is never true: {metric_range.words}")
        elif truth == "always":
            self._warn(node, f"`{written}` is always true: {metric_range.words}")
        return truth

    def _bool(self, node: BoolOp) -> _Truth:
        truths = [self.truth(operand) for operand in node.operands]
        settled: _Truth = "never" if node.op == "and" else "always"
        if settled in truths:
            return settled
        if all(truth is not None for truth in truths):
            return "always" if node.op == "and" else "never"

        written = self._text[node.start : node.end]
        if node.op == "and" and self._exclusive_tags(node):
            self._warn(node, f"`{written}` is never true: a customer holds one tag of a group")
            return "never"

        combined: dict[tuple[object, ...], tuple[_Range, _Set]] = {}
        for operand in node.operands:
            comparison = self._comparison(operand) if isinstance(operand, Compare) else None
            if comparison is None:
                continue
            metric_range, allowed = comparison
            known = combined.get(metric_range.key)
            if known is not None:
                join = _intersect if node.op == "and" else _union
                allowed = join(known[1], allowed)
            combined[metric_range.key] = (metric_range, allowed)

        for metric_range, allowed in combined.values():
            truth = _truth_of(allowed, metric_range)
            if node.op == "and" and truth == "never":
                self._warn(node, f"`{written}` is never true: the comparisons cannot all hold")
                return "never"
            if node.op == "or" and truth == "always":
                self._warn(node, f"`{written}` is always true: the comparisons cover every value")
                return "always"
        return None

    def _exclusive_tags(self, node: BoolOp) -> bool:
        groups: dict[str, str] = {}
        for operand in node.operands:
            if not (isinstance(operand, Metric) and operand.kind == "has_tag"):
                continue
            rule_id = operand.key.partition(":")[0]
            group = self._exclusive.get(rule_id)
            if group is None:
                continue
            if groups.setdefault(group, rule_id) != rule_id:
                return True
        return False

    def _comparison(self, node: Compare) -> tuple[_Range, _Set] | None:
        op: str
        if isinstance(node.left, Metric):
            metric, literal, op = node.left, _literal(node.right), node.op
        elif isinstance(node.right, Metric):
            metric, literal, op = node.right, _literal(node.left), _FLIPPED[node.op]
        else:
            return None
        if literal is None:
            return None
        metric_range = self._range(metric)
        if metric_range is None:
            return None
        return metric_range, _allowed(op, literal.scaleb(metric_range.scale))

    def _range(self, metric: Metric) -> _Range | None:
        key = (metric.kind, metric.key, metric.window, metric.calendar, metric.timezone)
        kind = metric.kind
        money = kind in _MONEY_KINDS or (
            metric.field in ("amount", "price") and kind in ("sum", "min", "max", "last")
        )
        scale = self._exponent if money else 0
        if kind in ("count", "count_window"):
            return _Range(key, [(0, None)], False, 0, "a count is a whole number, at least 0")
        if kind == "count_distinct":
            words = (
                f"count_distinct is a whole number from 0 to {MAX_DISTINCT_VALUES}, the most "
                "values it keeps"
            )
            return _Range(key, [(0, MAX_DISTINCT_VALUES)], False, 0, words)
        if kind == "net_spend":
            return _Range(key, [(0, None)], False, scale, "net spend reads 0 or more")
        if kind == "sum":
            return _Range(key, [(0, None)], False, scale, f"{metric.text} is 0 or more")
        if kind in ("min", "max") or (kind == "last" and metric.field not in _STRING_FIELDS):
            return _Range(key, [(0, None)], True, scale, f"{metric.text} is null or at least 0")
        if kind in ("since", "cart_age"):
            return _Range(key, [(None, None)], True, 0, f"{metric.text} can be null")
        return None

    def _warn(self, node: Node, message: str) -> None:
        self.found.append((node.start, message))


_STRING_FIELDS: Final = frozenset({"category", "product_id", "campaign_id", "order_id"})


def _literal(node: Node) -> Decimal | None:
    if isinstance(node, Constant):
        if node.kind == "number":
            assert isinstance(node.value, Decimal)
            return node.value
        if node.kind == "duration":
            assert isinstance(node.value, int)
            return Decimal(node.value)
        return None
    if isinstance(node, Sum):
        total = Decimal(0)
        for index, term in enumerate(node.terms):
            value = _literal(term)
            if value is None:
                return None
            negative = index > 0 and node.signs[index - 1] == "-"
            total += -value if negative else value
        return total
    return None


def _allowed(op: str, value: Decimal) -> _Set:
    whole = value == value.to_integral_value()
    ceiling = math.ceil(value)
    floor = math.floor(value)
    if op == ">=":
        return [(ceiling, None)]
    if op == ">":
        return [(floor + 1, None)]
    if op == "<=":
        return [(None, floor)]
    if op == "<":
        return [(None, ceiling - 1)]
    if op == "==":
        return [(int(value), int(value))] if whole else []
    if whole:
        return [(None, int(value) - 1), (int(value) + 1, None)]
    return [(None, None)]


def _truth_of(allowed: _Set, metric_range: _Range) -> _Truth:
    possible = _intersect(allowed, metric_range.domain)
    if not possible:
        return "never"
    if not metric_range.nullable and possible == _normal(metric_range.domain):
        return "always"
    return None


def _intersect(left: _Set, right: _Set) -> _Set:
    result: _Set = []
    for low_a, high_a in left:
        for low_b, high_b in right:
            low = _max_low(low_a, low_b)
            high = _min_high(high_a, high_b)
            if low is None or high is None or low <= high:
                result.append((low, high))
    return _normal(result)


def _union(left: _Set, right: _Set) -> _Set:
    return _normal([*left, *right])


def _normal(intervals: _Set) -> _Set:
    ordered = sorted(
        intervals, key=lambda interval: -math.inf if interval[0] is None else interval[0]
    )
    merged: _Set = []
    for low, high in ordered:
        if merged:
            last_low, last_high = merged[-1]
            if last_high is None or (low is not None and low <= last_high + 1):
                merged[-1] = (
                    last_low,
                    None if last_high is None or high is None else max(last_high, high),
                )
                continue
        merged.append((low, high))
    return merged


def _max_low(left: int | None, right: int | None) -> int | None:
    if left is None:
        return right
    if right is None:
        return left
    return max(left, right)


def _min_high(left: int | None, right: int | None) -> int | None:
    if left is None:
        return right
    if right is None:
        return left
    return min(left, right)
