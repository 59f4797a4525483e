"""Tokenizer and parser of rule conditions: text in, syntax tree out, nothing evaluated."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

__all__ = [
    "COMPARISON_OPERATORS",
    "DURATION_UNITS",
    "BoolOp",
    "CalendarPeriod",
    "Call",
    "Compare",
    "ComparisonOperator",
    "Constant",
    "ExpressionError",
    "FieldTest",
    "FilterOperator",
    "Metric",
    "MetricKind",
    "Node",
    "Not",
    "Selector",
    "Sum",
    "Where",
    "parse_duration",
    "parse_expression",
    "walk",
]

# Milliseconds per unit; every time in the engine is an integer count of ms.
DURATION_UNITS: Final[dict[str, int]] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}

ComparisonOperator = Literal["==", "!=", "<", "<=", ">", ">="]
COMPARISON_OPERATORS: Final[tuple[ComparisonOperator, ...]] = ("==", "!=", "<", "<=", ">", ">=")
ConstantKind = Literal["number", "duration", "string", "bool", "null"]
MetricKind = Literal[
    "count",
    "count_window",
    "net_spend",
    "since",
    "cart_age",
    "attribute",
    "sum",
    "min",
    "max",
    "avg",
    "count_distinct",
    "last",
    "followed_by",
    "not_followed_by",
    "has_tag",
]
FilterOperator = Literal["==", "!=", "<", "<=", ">", ">=", "matches"]
_FILTER_OPERATORS: Final[dict[str, FilterOperator]] = {
    "==": "==",
    "!=": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "matches": "matches",
}
CalendarPeriod = Literal["today", "this_week", "this_month"]

# A condition is a short line of YAML; the cap keeps a hostile rulebook from
# making the recursive-descent parser recurse without end.
MAX_EXPRESSION_LENGTH: Final = 4_096
MAX_NESTING: Final = 64

_KEYWORDS: Final = frozenset({"and", "or", "not", "true", "false", "null", "where", "matches"})
_TOKEN_RE: Final = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<number>\d+(?:\.\d+)?)(?P<unit>[A-Za-z_]\w*)?
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<ident>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
    | (?P<op>==|!=|<=|>=|<|>|\+|-|\(|\)|,)
    """,
    re.VERBOSE,
)
_DURATION_RE: Final = re.compile(r"(\d+)(ms|s|m|h|d)")


class ExpressionError(Exception):
    """A condition is invalid; `offset` is the 0-based index of the culprit in its text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Constant:
    """A literal. Numbers are exact `Decimal`s and durations integer ms."""

    kind: ConstantKind
    value: Decimal | int | str | bool | None
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Call:
    """A metric reference: `name(args)`, or a bare `name` when `args` is None."""

    name: str
    args: tuple[Node, ...] | None
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Selector:
    """The events a metric reads: those of one of `types` that pass the filter `where`.

    `key` is the canonical text, such as `page_view where category matches
    "electronics.*"`: the same selection always gets the same key, whatever
    the spacing it was written with, and the state stores its aggregates
    under that key.
    """

    types: frozenset[str]
    where: Node | None
    key: str


@dataclass(frozen=True, slots=True)
class Metric:
    """A checked metric reference, which the type checker puts in place of a `Call`.

    `key` names what the state stores for it: the selector key for counts and
    `since`, `spend` for net spend, the attribute name, the field projection
    (`purchase.amount`) for field aggregates, or the tag pattern of `has_tag`.
    `window` is a duration window in ms; a calendar window sets `calendar`
    instead, read in `timezone`, and a lifetime window sets neither. `text`
    is the call as written, which names the value in a tag change's reason.
    A sequence reads `selector` then `then` within `timeout` ms.
    """

    kind: MetricKind
    key: str
    window: int | None
    text: str
    start: int
    end: int
    selector: Selector | None = None
    field: str | None = None
    calendar: CalendarPeriod | None = None
    timezone: str = "UTC"
    then: Selector | None = None
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    """`left op right`."""

    op: ComparisonOperator
    left: Node
    right: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sum:
    """`terms[0] signs[0] terms[1] ...` with each sign `+` or `-`."""

    terms: tuple[Node, ...]
    signs: tuple[Literal["+", "-"], ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    """`and` or `or` over two or more operands, evaluated left to right."""

    op: Literal["and", "or"]
    operands: tuple[Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Not:
    """`not operand`."""

    operand: Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class FieldTest:
    """`field op value` inside a `where` filter: an event field compared with a literal.

    After type checking, a money field's `value` is in minor units.
    """

    field: str
    op: FilterOperator
    value: Constant
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Where:
    """`subject where filter`: a metric's first argument restricted to the events that pass."""

    subject: Node
    filter: Node
    start: int
    end: int


Node = Constant | Call | Metric | Compare | Sum | BoolOp | Not | FieldTest | Where


def walk(node: Node) -> Iterator[Node]:
    """Yield `node` and every node below it, parents first."""
    yield node
    children: tuple[Node, ...] = ()
    if isinstance(node, Call) and node.args is not None:
        children = node.args
    elif isinstance(node, Compare):
        children = (node.left, node.right)
    elif isinstance(node, Sum):
        children = node.terms
    elif isinstance(node, BoolOp):
        children = node.operands
    elif isinstance(node, Not):
        children = (node.operand,)
    elif isinstance(node, Where):
        children = (node.subject, node.filter)
    for child in children:
        yield from walk(child)


def parse_duration(text: str) -> int | None:
    """Return a duration literal such as `30m` in ms, or None when it is not one."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_expression(text: str) -> Node:
    """Parse a condition into its syntax tree; raises ExpressionError."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"condition is {len(text)} characters long, the maximum is {MAX_EXPRESSION_LENGTH}",
            MAX_EXPRESSION_LENGTH,
        )

    parser = _Parser(_tokenize(text), len(text))
    node = parser.parse_or()
    parser.expect_end()
    return node


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["number", "duration", "string", "ident", "keyword", "op"]
    text: str
    start: int
    end: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected character {text[position]!r}", position)

        start, end = match.span()
        position = end
        if match.group("space"):
            continue

        if match.group("number") is not None:
            tokens.append(_number_token(match, start, end))
        elif match.group("string") is not None:
            tokens.append(_Token("string", match.group("string"), start, end))
        elif match.group("ident") is not None:
            word = match.group("ident")
            kind: Literal["ident", "keyword"] = "keyword" if word in _KEYWORDS else "ident"
            tokens.append(_Token(kind, word, start, end))
        else:
            tokens.append(_Token("op", match.group("op"), start, end))
    return tokens


def _number_token(match: re.Match[str], start: int, end: int) -> _Token:
    unit = match.group("unit")
    if unit is None:
        return _Token("number", match.group("number"), start, end)

    text = match.group(0)
    if unit not in DURATION_UNITS or "." in match.group("number"):
        raise ExpressionError(
            f"invalid duration {text!r}: expected whole digits followed by ms, s, m, h or d",
            start,
        )
    return _Token("duration", text, start, end)


class _Parser:
    """Recursive descent over the grammar in docs/rule-language.md."""

    def __init__(self, tokens: list[_Token], length: int) -> None:
        self._tokens = tokens
        self._index = 0
        self._length = length
        self._depth = 0

    def expect_end(self) -> None:
        token = self._peek()
        if token is not None and token.kind == "keyword" and token.text == "where":
            raise ExpressionError(
                "`where` filters the first argument of a metric, such as "
                'count(page_view where category matches "electronics.*", 7d)',
                token.start,
            )
        if token is not None:
            raise ExpressionError(
                f"unexpected {token.text!r} after a complete condition", token.start
            )

    def parse_or(self) -> Node:
        return self._bool_chain("or", self._parse_and)

    def _parse_and(self) -> Node:
        return self._bool_chain("and", self._parse_not)

    def _bool_chain(self, op: Literal["and", "or"], operand: Callable[[], Node]) -> Node:
        operands = [operand()]
        while self._accept("keyword", op):
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return BoolOp(op, tuple(operands), operands[0].start, operands[-1].end)

    def _parse_not(self) -> Node:
        token = self._peek()
        if token is not None and token.kind == "keyword" and token.text == "not":
            self._index += 1
            with _Nesting(self, token.start):
                operand = self._parse_not()
            return Not(operand, token.start, operand.end)
        return self._parse_compare()

    def _parse_compare(self) -> Node:
        left = self._parse_sum()
        token = self._peek()
        if token is None or token.kind != "op" or token.text not in COMPARISON_OPERATORS:
            return left

        self._index += 1
        right = self._parse_sum()
        after = self._peek()
        if after is not None and after.kind == "op" and after.text in COMPARISON_OPERATORS:
            raise ExpressionError(
                "comparisons cannot be chained: join them with `and`", after.start
            )
        op: ComparisonOperator = token.text
        return Compare(op, left, right, left.start, right.end)

    def _parse_sum(self) -> Node:
        terms = [self._parse_atom()]
        signs: list[Literal["+", "-"]] = []
        while True:
            token = self._peek()
            if token is None or token.kind != "op" or token.text not in ("+", "-"):
                break
            self._index += 1
            signs.append("+" if token.text == "+" else "-")
            terms.append(self._parse_atom())
        if not signs:
            return terms[0]
        return Sum(tuple(terms), tuple(signs), terms[0].start, terms[-1].end)

    def _parse_atom(self) -> Node:
        token = self._next("a value, a metric or `(`")
        if token.kind == "number":
            return Constant("number", Decimal(token.text), token.start, token.end)
        if token.kind == "duration":
            return Constant("duration", parse_duration(token.text), token.start, token.end)
        if token.kind == "string":
            return Constant("string", _unescape(token), token.start, token.end)
        if token.kind == "keyword":
            return self._keyword_atom(token)
        if token.kind == "ident":
            return self._call(token)
        if token.text == "(":
            with _Nesting(self, token.start):
                inner = self.parse_or()
            self._expect(")", "`)` to close the `(`")
            return inner
        raise ExpressionError(
            f"expected a value, a metric or `(`, found {token.text!r}", token.start
        )

    def _keyword_atom(self, token: _Token) -> Node:
        if token.text in ("true", "false"):
            return Constant("bool", token.text == "true", token.start, token.end)
        if token.text == "null":
            return Constant("null", None, token.start, token.end)
        raise ExpressionError(
            f"expected a value, a metric or `(`, found the keyword {token.text!r}", token.start
        )

    def _call(self, name: _Token) -> Node:
        if not self._accept("op", "("):
            return Call(name.text, None, name.start, name.end)

        args: list[Node] = []
        if not self._accept("op", ")"):
            with _Nesting(self, name.start):
                args.append(self._argument())
                while self._accept("op", ","):
                    args.append(self._argument())
            self._expect(")", f"`,` or `)` in the arguments of {name.text}()")
        end = self._tokens[self._index - 1].end
        return Call(name.text, tuple(args), name.start, end)

    def _argument(self) -> Node:
        argument = self.parse_or()
        if not self._accept("keyword", "where"):
            return argument
        condition = self._filter_or()
        return Where(argument, condition, argument.start, condition.end)

    def _filter_or(self) -> Node:
        return self._bool_chain("or", self._filter_and)

    def _filter_and(self) -> Node:
        return self._bool_chain("and", self._filter_not)

    def _filter_not(self) -> Node:
        token = self._peek()
        if token is not None and token.kind == "keyword" and token.text == "not":
            self._index += 1
            with _Nesting(self, token.start):
                operand = self._filter_not()
            return Not(operand, token.start, operand.end)
        return self._field_test()

    def _field_test(self) -> Node:
        token = self._next("an event field such as category, or `(`")
        if token.kind == "op" and token.text == "(":
            with _Nesting(self, token.start):
                inner = self._filter_or()
            self._expect(")", "`)` to close the `(`")
            return inner
        if token.kind != "ident":
            raise ExpressionError(
                f"expected an event field such as category after `where`, found {token.text!r}",
                token.start,
            )

        operator = self._next("a comparison or `matches`")
        is_match = operator.kind == "keyword" and operator.text == "matches"
        if not is_match and (operator.kind != "op" or operator.text not in COMPARISON_OPERATORS):
            raise ExpressionError(
                f"expected a comparison or `matches` after {token.text!r}, found {operator.text!r}",
                operator.start,
            )
        value = self._parse_atom()
        if not isinstance(value, Constant):
            raise ExpressionError(
                "a filter compares an event field with a literal, such as "
                '"electronics.*" or 100.00',
                value.start,
            )
        op = _FILTER_OPERATORS[operator.text]
        return FieldTest(token.text, op, value, token.start, value.end)

    def _peek(self) -> _Token | None:
        if self._index < len(self._tokens):
            return self._tokens[self._index]
        return None

    def _next(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            raise ExpressionError(
                f"expected {expected}, found the end of the condition", self._length
            )
        self._index += 1
        return token

    def _accept(self, kind: str, text: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == kind and token.text == text:
            self._index += 1
            return True
        return False

    def _expect(self, text: str, expected: str) -> None:
        token = self._next(expected)
        if token.kind != "op" or token.text != text:
            raise ExpressionError(f"expected {expected}, found {token.text!r}", token.start)


class _Nesting:
    """Count nesting depth while parsing one bracketed or negated part."""

    def __init__(self, parser: _Parser, offset: int) -> None:
        self._parser = parser
        self._offset = offset

    def __enter__(self) -> None:
        self._parser._depth += 1
        if self._parser._depth > MAX_NESTING:
            raise ExpressionError(
                f"condition is nested more than {MAX_NESTING} levels deep", self._offset
            )

    def __exit__(self, *exc_info: object) -> None:
        self._parser._depth -= 1


def _unescape(token: _Token) -> str:
    body = token.text[1:-1]
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        escaped = body[index + 1]
        if escaped not in ('"', "\\"):
            raise ExpressionError(
                f'invalid escape \\{escaped} in a string: only \\" and \\\\ are allowed',
                token.start + 1 + index,
            )
        out.append(escaped)
        index += 2
    return "".join(out)
