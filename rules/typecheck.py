"""Type checking of rule conditions against the metric catalogue, before any event is seen."""

from __future__ import annotations

from typing import Final

from tagger.rules.calendar import DEFAULT_TIMEZONE
from tagger.rules.expression import (
    BoolOp,
    Call,
    Compare,
    Constant,
    ExpressionError,
    FieldTest,
    Metric,
    Node,
    Not,
    Sum,
    Where,
)
from tagger.rules.metrics import METRIC_NAMES, TYPE_NAMES, MetricOptions, ValueType, resolve_metric

__all__ = ["METRIC_NAMES", "PER_FIELDS", "TYPE_NAMES", "check_condition", "check_rank"]

# Event fields a `per:` rule may split on.
PER_FIELDS: Final[tuple[str, ...]] = ("category", "product_id", "campaign_id")

_NUMERIC: Final = frozenset({"number", "money", "opt_number", "opt_money"})
# Numbers and money that may be null read as their plain type for every check
# except comparisons with null.
_BASE: Final[dict[ValueType, ValueType]] = {"opt_number": "number", "opt_money": "money"}
_TYPE_WORDS: Final[dict[ValueType, str]] = {
    "bool": "a condition",
    "number": "a number",
    "money": "an amount of money",
    "opt_number": "a number",
    "opt_money": "an amount of money",
    "duration": "a duration",
    "duration_literal": "a duration literal",
    "string": "a string",
    "null": "null",
    "any": "a customer attribute",
}


def check_condition(
    node: Node,
    text: str,
    *,
    per: str | None,
    exponent: int = 2,
    timezone: str = DEFAULT_TIMEZONE,
) -> Node:
    """Resolve metrics and check types of a `when:` condition; raises ExpressionError.

    `exponent` is the number of decimals of the rulebook's currency, used to
    convert money literals in filters. `timezone` is the IANA zone that
    calendar windows are read in.
    """
    options = MetricOptions(per=per, exponent=exponent, timezone=timezone)
    checked, found = _Checker(text, options).check(node)
    if found != "bool":
        raise ExpressionError(
            f"a condition must be true or false, but this is {_TYPE_WORDS[found]}: "
            "compare it, for example `count(purchase) >= 1`",
            node.start,
        )
    return checked


def check_rank(
    node: Node,
    text: str,
    *,
    per: str | None,
    exponent: int = 2,
    timezone: str = DEFAULT_TIMEZONE,
) -> Node:
    """Resolve metrics and check types of a `rank_by:` expression, a number or money."""
    options = MetricOptions(per=per, exponent=exponent, timezone=timezone)
    checked, found = _Checker(text, options).check(node)
    if found in ("opt_number", "opt_money"):
        raise ExpressionError(
            "rank_by must have a value for every customer, but this can be null "
            "(min, max, avg and last are null with no events): rank by a count or a sum",
            node.start,
        )
    if found not in _NUMERIC:
        raise ExpressionError(
            f"rank_by must be a number or an amount of money, found {_TYPE_WORDS[found]}",
            node.start,
        )
    return checked


class _Checker:
    def __init__(self, text: str, options: MetricOptions) -> None:
        self._text = text
        self._options = options

    def check(self, node: Node) -> tuple[Node, ValueType]:
        if isinstance(node, Constant):
            return node, _constant_type(node)
        if isinstance(node, Call):
            return resolve_metric(node, self._text, self._options)
        if isinstance(node, Metric):
            raise AssertionError("a condition is checked only once")
        if isinstance(node, Where | FieldTest):
            raise ExpressionError(
                "`where` filters the first argument of a metric, such as "
                'count(page_view where category matches "electronics.*", 7d)',
                node.start,
            )
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, Sum):
            return self._sum(node)
        if isinstance(node, BoolOp):
            operands = tuple(self._condition(operand, node.op) for operand in node.operands)
            return BoolOp(node.op, operands, node.start, node.end), "bool"
        operand = self._condition(node.operand, "not")
        return Not(operand, node.start, node.end), "bool"

    def _condition(self, node: Node, keyword: str) -> Node:
        checked, found = self.check(node)
        if found != "bool":
            raise ExpressionError(
                f"`{keyword}` needs conditions on both sides, but "
                f"{self._text[node.start : node.end]!r} is {_TYPE_WORDS[found]}: compare it",
                node.start,
            )
        return checked

    def _compare(self, node: Compare) -> tuple[Node, ValueType]:
        left, left_type = self.check(node.left)
        right, right_type = self.check(node.right)
        checked = Compare(node.op, left, right, node.start, node.end)
        equality = node.op in ("==", "!=")

        if isinstance(left, Constant) and isinstance(right, Constant):
            raise ExpressionError(
                "this compares two literals, so it is always true or always false", node.start
            )
        if "null" in (left_type, right_type):
            other = right_type if left_type == "null" else left_type
            if not equality:
                raise ExpressionError("null compares only with == and !=", node.start)
            if other in ("number", "money", "bool"):
                raise ExpressionError(
                    f"{_TYPE_WORDS[other]} is never null, so this comparison never changes",
                    node.start,
                )
            return checked, "bool"

        left_type = _BASE.get(left_type, left_type)
        right_type = _BASE.get(right_type, right_type)
        types = {left_type, right_type}
        if "bool" in types and types - {"bool", "any"}:
            self._mismatch(node, left_type, right_type)
        if "duration" in types or "duration_literal" in types:
            if types != {"duration", "duration_literal"}:
                raise ExpressionError(
                    "a duration metric compares only with a duration literal such as 30m or 90d "
                    f"(this compares {_TYPE_WORDS[left_type]} with {_TYPE_WORDS[right_type]})",
                    node.start,
                )
            return checked, "bool"
        if "string" in types or "bool" in types:
            if not equality:
                raise ExpressionError(
                    f"{_TYPE_WORDS['string' if 'string' in types else 'bool']} compares only "
                    "with == and !=",
                    node.start,
                )
            if types - {"string", "bool", "any"} or types == {"string", "bool"}:
                self._mismatch(node, left_type, right_type)
            return checked, "bool"
        if "any" in types:
            other_node = right if left_type == "any" else left
            if types != {"any"} and not isinstance(other_node, Constant):
                raise ExpressionError(
                    "an attribute compares only with a literal or another attribute", node.start
                )
            return checked, "bool"
        if types == {"number", "money"}:
            number_side = left if left_type == "number" else right
            if not _is_literal(number_side):
                raise ExpressionError(
                    "this compares an amount of money with a count: compare money with money "
                    "or with a number literal such as 1000.00",
                    node.start,
                )
        return checked, "bool"

    def _mismatch(self, node: Compare, left: ValueType, right: ValueType) -> None:
        raise ExpressionError(
            f"cannot compare {_TYPE_WORDS[left]} with {_TYPE_WORDS[right]}", node.start
        )

    def _sum(self, node: Sum) -> tuple[Node, ValueType]:
        terms: list[Node] = []
        has_money = False
        has_count = False
        nullable = False
        for term in node.terms:
            checked, found = self.check(term)
            if found not in _NUMERIC:
                raise ExpressionError(
                    f"only numbers and money can be added or subtracted, "
                    f"but {self._text[term.start : term.end]!r} is {_TYPE_WORDS[found]}",
                    term.start,
                )
            nullable = nullable or found in ("opt_number", "opt_money")
            base = _BASE.get(found, found)
            has_money = has_money or base == "money"
            has_count = has_count or (base == "number" and not _is_literal(checked))
            terms.append(checked)

        if has_money and has_count:
            raise ExpressionError("this adds an amount of money to a count", node.start)
        result: ValueType = "money" if has_money else "number"
        if nullable:
            result = "opt_money" if has_money else "opt_number"
        return Sum(tuple(terms), node.signs, node.start, node.end), result


def _constant_type(node: Constant) -> ValueType:
    if node.kind == "duration":
        return "duration_literal"
    return node.kind


def _is_literal(node: Node) -> bool:
    if isinstance(node, Constant):
        return True
    if isinstance(node, Sum):
        return all(_is_literal(term) for term in node.terms)
    return False
