"""Type checking of rule conditions against the metric catalogue, before any event is seen."""

from __future__ import annotations

import difflib
import re
from typing import Final, Literal

from tagger.rules.expression import (
    BoolOp,
    Call,
    Compare,
    Constant,
    ExpressionError,
    Metric,
    MetricKind,
    Node,
    Not,
    Sum,
)
from tagger.schemas.events import EVENT_TYPES

__all__ = ["METRIC_NAMES", "PER_FIELDS", "TYPE_NAMES", "check_condition", "check_rank"]

# Event types a metric can count, plus `activity`, which stands for all of ACTIVITY_TYPES.
TYPE_NAMES: Final[tuple[str, ...]] = (*EVENT_TYPES, "activity")
METRIC_NAMES: Final[tuple[str, ...]] = (
    "count",
    "net_spend",
    "since",
    "cart_age",
    "attribute",
)
# Event fields a `per:` rule may split on (v1).
PER_FIELDS: Final[tuple[str, ...]] = ("category", "product_id", "campaign_id")
_ATTRIBUTE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

# The type of a checked node. `any` is a customer attribute, whose type is only
# known at run time; `duration` marks a duration metric, `duration_literal` a
# literal such as 30m.
_Type = Literal["bool", "number", "money", "duration", "duration_literal", "string", "null", "any"]
_NUMERIC: Final = frozenset({"number", "money"})
_TYPE_WORDS: Final[dict[str, str]] = {
    "bool": "a condition",
    "number": "a number",
    "money": "an amount of money",
    "duration": "a duration",
    "duration_literal": "a duration literal",
    "string": "a string",
    "null": "null",
    "any": "a customer attribute",
}


def check_condition(node: Node, text: str, *, per: str | None) -> Node:
    """Resolve metrics and check types of a `when:` condition; raises ExpressionError."""
    checked, found = _Checker(text, per).check(node)
    if found != "bool":
        raise ExpressionError(
            f"a condition must be true or false, but this is {_TYPE_WORDS[found]}: "
            "compare it, for example `count(purchase) >= 1`",
            node.start,
        )
    return checked


def check_rank(node: Node, text: str, *, per: str | None) -> Node:
    """Resolve metrics and check types of a `rank_by:` expression, a number or money."""
    checked, found = _Checker(text, per).check(node)
    if found not in _NUMERIC:
        raise ExpressionError(
            f"rank_by must be a number or an amount of money, found {_TYPE_WORDS[found]}",
            node.start,
        )
    return checked


class _Checker:
    def __init__(self, text: str, per: str | None) -> None:
        self._text = text
        self._per = per

    def check(self, node: Node) -> tuple[Node, _Type]:
        if isinstance(node, Constant):
            return node, _constant_type(node)
        if isinstance(node, Call):
            return self._metric(node)
        if isinstance(node, Metric):
            raise AssertionError("a condition is checked only once")
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

    def _compare(self, node: Compare) -> tuple[Node, _Type]:
        left, left_type = self.check(node.left)
        right, right_type = self.check(node.right)
        checked = Compare(node.op, left, right, node.start, node.end)
        types = {left_type, right_type}
        equality = node.op in ("==", "!=")

        if isinstance(left, Constant) and isinstance(right, Constant):
            raise ExpressionError(
                "this compares two literals, so it is always true or always false", node.start
            )
        if "bool" in types and types - {"bool", "any"}:
            self._mismatch(node, left_type, right_type)
        if "null" in types:
            other = (types - {"null"}) or {"null"}
            if not equality:
                raise ExpressionError("null compares only with == and !=", node.start)
            if other & (_NUMERIC | {"bool"}):
                raise ExpressionError(
                    f"{_TYPE_WORDS[next(iter(other))]} is never null, so this comparison "
                    "never changes",
                    node.start,
                )
            return checked, "bool"
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

    def _mismatch(self, node: Compare, left: _Type, right: _Type) -> None:
        raise ExpressionError(
            f"cannot compare {_TYPE_WORDS[left]} with {_TYPE_WORDS[right]}", node.start
        )

    def _sum(self, node: Sum) -> tuple[Node, _Type]:
        terms: list[Node] = []
        has_money = False
        has_count = False
        for term in node.terms:
            checked, found = self.check(term)
            if found not in _NUMERIC:
                raise ExpressionError(
                    f"only numbers and money can be added or subtracted, "
                    f"but {self._text[term.start : term.end]!r} is {_TYPE_WORDS[found]}",
                    term.start,
                )
            has_money = has_money or found == "money"
            has_count = has_count or (found == "number" and not _is_literal(checked))
            terms.append(checked)

        if has_money and has_count:
            raise ExpressionError("this adds an amount of money to a count", node.start)
        result: _Type = "money" if has_money else "number"
        return Sum(tuple(terms), node.signs, node.start, node.end), result

    def _metric(self, call: Call) -> tuple[Node, _Type]:
        text = self._text[call.start : call.end]
        if call.name not in METRIC_NAMES:
            raise ExpressionError(_unknown_name_message(call), call.start)

        args = call.args or ()
        if call.name == "cart_age":
            if args:
                raise ExpressionError("cart_age takes no arguments", call.start)
            if self._per is not None:
                raise ExpressionError(
                    f"cart_age is not available in a rule with `per: {self._per}` in v1",
                    call.start,
                )
            return self._made("cart_age", "", None, call, text), "duration"

        if call.args is None:
            raise ExpressionError(
                f"{call.name} needs arguments, for example {_EXAMPLES[call.name]}", call.start
            )
        if call.name == "count":
            self._arity(call, (1, 2))
            kind: MetricKind = "count" if len(args) == 1 else "count_window"
            window = self._window(args[1], call) if len(args) == 2 else None
            return self._made(kind, self._type_name(args[0], call), window, call, text), "number"
        if call.name == "net_spend":
            self._arity(call, (1,))
            window = self._window(args[0], call)
            return self._made("net_spend", "spend", window, call, text), "money"
        if call.name == "since":
            self._arity(call, (1,))
            return self._made("since", self._type_name(args[0], call), None, call, text), "duration"

        self._arity(call, (1,))
        name = args[0]
        if not (isinstance(name, Constant) and name.kind == "string"):
            raise ExpressionError(
                "attribute needs the attribute name as a string, "
                'for example attribute("member_level")',
                name.start,
            )
        if not _ATTRIBUTE_NAME_RE.fullmatch(str(name.value)):
            raise ExpressionError(
                f"invalid attribute name {name.value!r}: expected 1 to 64 letters, digits, "
                "`_`, `.` or `-`",
                name.start,
            )
        return self._made("attribute", str(name.value), None, call, text), "any"

    def _made(
        self, kind: MetricKind, key: str, window: int | None, call: Call, text: str
    ) -> Metric:
        return Metric(kind, key, window, text, call.start, call.end)

    def _arity(self, call: Call, allowed: tuple[int, ...]) -> None:
        found = len(call.args or ())
        if found not in allowed:
            expected = " or ".join(str(count) for count in allowed)
            raise ExpressionError(
                f"{call.name} takes {expected} argument{'s' if allowed != (1,) else ''}, "
                f"found {found}: for example {_EXAMPLES[call.name]}",
                call.start,
            )

    def _type_name(self, arg: Node, call: Call) -> str:
        if not (isinstance(arg, Call) and arg.args is None):
            raise ExpressionError(
                f"{call.name} needs an event type as its first argument, such as purchase "
                f"or activity; expected one of {', '.join(TYPE_NAMES)}",
                arg.start,
            )
        if arg.name not in TYPE_NAMES:
            raise ExpressionError(
                f"unknown event type {arg.name!r}{_suggestion(arg.name, TYPE_NAMES)}; "
                f"expected one of {', '.join(TYPE_NAMES)}",
                arg.start,
            )
        return arg.name

    def _window(self, arg: Node, call: Call) -> int:
        if not (isinstance(arg, Constant) and arg.kind == "duration"):
            raise ExpressionError(
                f"{call.name} needs a window such as 30d, found "
                f"{self._text[arg.start : arg.end]!r}",
                arg.start,
            )
        window = arg.value
        if not isinstance(window, int) or window <= 0:
            raise ExpressionError("a window must be longer than 0", arg.start)
        return window


_EXAMPLES: Final[dict[str, str]] = {
    "count": "count(purchase) or count(purchase, 30d)",
    "net_spend": "net_spend(180d)",
    "since": "since(purchase)",
    "cart_age": "cart_age",
    "attribute": 'attribute("member_level")',
}


def _constant_type(node: Constant) -> _Type:
    if node.kind == "duration":
        return "duration_literal"
    return node.kind


def _is_literal(node: Node) -> bool:
    if isinstance(node, Constant):
        return True
    if isinstance(node, Sum):
        return all(_is_literal(term) for term in node.terms)
    return False


def _unknown_name_message(call: Call) -> str:
    if call.name in TYPE_NAMES:
        return (
            f"{call.name!r} is an event type, not a metric: count it with "
            f"count({call.name}) or count({call.name}, 30d)"
        )
    return (
        f"unknown metric {call.name!r}{_suggestion(call.name, METRIC_NAMES)}; "
        f"expected one of {', '.join(METRIC_NAMES)}"
    )


def _suggestion(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return ""
