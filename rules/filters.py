"""Event filters: the `where` part of a metric, checked at load and applied as events fold."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final, Literal

from tagger.rules.expression import BoolOp, Constant, ExpressionError, FieldTest, Node, Not
from tagger.rules.yaml_source import suggest
from tagger.schemas.events import ACTIVITY_TYPES, Event

__all__ = [
    "EVENT_FIELDS",
    "FIELD_TYPES",
    "FieldType",
    "check_filter",
    "event_types",
    "field_value",
    "filter_text",
    "passes",
]

FieldType = Literal["string", "money", "number"]

# Event fields a filter or a field aggregate can read. Money is in minor units
# on the event and in major units in a rulebook.
FIELD_TYPES: Final[dict[str, FieldType]] = {
    "category": "string",
    "product_id": "string",
    "campaign_id": "string",
    "order_id": "string",
    "price": "money",
    "amount": "money",
    "quantity": "number",
}
# The fields of FIELD_TYPES that each event type can carry, as the published
# event schema (schemas/event.json) allows them.
EVENT_FIELDS: Final[dict[str, frozenset[str]]] = {
    "page_view": frozenset({"product_id", "category", "price"}),
    "add_to_cart": frozenset({"product_id", "category", "price", "quantity"}),
    "remove_from_cart": frozenset({"product_id", "category", "price", "quantity"}),
    "purchase": frozenset({"order_id", "amount", "product_id", "category", "price", "quantity"}),
    "refund": frozenset({"order_id", "amount"}),
    "campaign_join": frozenset({"campaign_id"}),
    "customer_update": frozenset(),
    "tag_assign": frozenset(),
    "tag_unassign": frozenset(),
}
# A category pattern: a dotted path, with an optional trailing `.*` that makes
# it match the path and everything below it.
_PATTERN_RE: Final = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*(?:\.\*)?")
_WILDCARD: Final = ".*"


def event_types(name: str) -> frozenset[str]:
    """Return the event types an event type name stands for: `activity` is several."""
    if name == "activity":
        return ACTIVITY_TYPES
    return frozenset({name})


def check_filter(node: Node, *, types: frozenset[str], exponent: int) -> Node:
    """Check a `where` filter against the fields `types` carry; raises ExpressionError.

    Returns the filter with money literals converted to minor units of a
    currency with `exponent` decimals, so that folding compares integers
    with exact decimals.
    """
    if isinstance(node, BoolOp):
        operands = tuple(
            check_filter(operand, types=types, exponent=exponent) for operand in node.operands
        )
        return BoolOp(node.op, operands, node.start, node.end)
    if isinstance(node, Not):
        operand = check_filter(node.operand, types=types, exponent=exponent)
        return Not(operand, node.start, node.end)
    if not isinstance(node, FieldTest):
        raise ExpressionError("expected an event field compared with a literal", node.start)
    return _check_test(node, types, exponent)


def filter_text(node: Node) -> str:
    """Return the canonical text of a filter: single spaces, brackets only where needed."""
    if isinstance(node, BoolOp):
        return f" {node.op} ".join(_bracketed(operand) for operand in node.operands)
    if isinstance(node, Not):
        return f"not {_bracketed(node.operand)}"
    if isinstance(node, FieldTest):
        return f"{node.field} {node.op} {_literal_text(node.value)}"
    raise TypeError(f"not a filter node: {node!r}")


def passes(node: Node, event: Event) -> bool:
    """Return whether `event` passes a checked filter.

    A comparison with a field the event lacks is false, except `== null`.
    """
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(passes(operand, event) for operand in node.operands)
        return any(passes(operand, event) for operand in node.operands)
    if isinstance(node, Not):
        return not passes(node.operand, event)
    assert isinstance(node, FieldTest)
    return _test(node, field_value(event, node.field))


def field_value(event: Event, name: str) -> str | int | None:
    """Return an event field as folded: strings as sent, money in minor units, None if absent."""
    value = getattr(event, name)
    assert value is None or isinstance(value, str | int)
    return value


def _check_test(node: FieldTest, types: frozenset[str], exponent: int) -> FieldTest:
    field_type = FIELD_TYPES.get(node.field)
    if field_type is None:
        raise ExpressionError(
            f"unknown event field {node.field!r}{suggest(node.field, FIELD_TYPES)}; "
            f"expected one of {', '.join(FIELD_TYPES)}",
            node.start,
        )
    if not any(node.field in EVENT_FIELDS[name] for name in types):
        carried = sorted(set().union(*(EVENT_FIELDS[name] for name in types)))
        raise ExpressionError(
            f"{_type_words(types)} events have no {node.field}; they carry "
            f"{', '.join(carried) if carried else 'none of the filter fields'}",
            node.start,
        )

    value = node.value
    if value.kind == "null":
        if node.op not in ("==", "!="):
            raise ExpressionError("null compares only with == and !=", node.start)
        return node
    if node.op == "matches":
        return _check_match(node, field_type)
    if field_type == "string":
        if value.kind != "string":
            raise ExpressionError(
                f'{node.field} is a string: compare it with a string such as "x"', value.start
            )
        if node.op not in ("==", "!="):
            raise ExpressionError(f"{node.field} compares only with ==, != or matches", node.start)
        return node

    if value.kind != "number":
        raise ExpressionError(
            f"{node.field} is {'an amount of money' if field_type == 'money' else 'a number'}: "
            f"compare it with a number such as {'100.00' if field_type == 'money' else '2'}",
            value.start,
        )
    if field_type == "money":
        assert isinstance(value.value, Decimal)
        minor = Constant("number", value.value.scaleb(exponent), value.start, value.end)
        return FieldTest(node.field, node.op, minor, node.start, node.end)
    return node


def _check_match(node: FieldTest, field_type: FieldType) -> FieldTest:
    if node.field != "category":
        raise ExpressionError(
            f"matches applies to category only; compare {node.field} with == or !=", node.start
        )
    assert field_type == "string"
    pattern = node.value.value
    if node.value.kind != "string" or not isinstance(pattern, str):
        raise ExpressionError(
            'matches needs a category path such as "electronics.*"', node.value.start
        )
    if not _PATTERN_RE.fullmatch(pattern):
        raise ExpressionError(
            f"invalid category pattern {pattern!r}: expected a dotted lower-case path, "
            'optionally ending in .*, such as "electronics" or "electronics.*"',
            node.value.start,
        )
    return node


def _test(node: FieldTest, actual: str | int | None) -> bool:
    expected = node.value.value
    if node.value.kind == "null":
        return (actual is None) == (node.op == "==")
    if actual is None:
        return False
    if node.op == "matches":
        assert isinstance(expected, str) and isinstance(actual, str)
        if expected.endswith(_WILDCARD):
            root = expected.removesuffix(_WILDCARD)
            return actual == root or actual.startswith(root + ".")
        return actual == expected
    if isinstance(actual, str) or isinstance(expected, str):
        # The type checker allows only == and != on string fields.
        return (actual == expected) == (node.op == "==")

    assert isinstance(expected, Decimal)
    if node.op == "==":
        return actual == expected
    if node.op == "!=":
        return actual != expected
    if node.op == "<":
        return actual < expected
    if node.op == "<=":
        return actual <= expected
    if node.op == ">":
        return actual > expected
    return actual >= expected


def _bracketed(node: Node) -> str:
    text = filter_text(node)
    return f"({text})" if isinstance(node, BoolOp) else text


def _literal_text(value: Constant) -> str:
    if value.kind == "string":
        assert isinstance(value.value, str)
        escaped = value.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if value.kind == "null":
        return "null"
    if value.kind == "bool":
        return "true" if value.value else "false"
    return str(value.value)


def _type_words(types: frozenset[str]) -> str:
    if types == ACTIVITY_TYPES:
        return "activity"
    return "/".join(sorted(types))
