"""Tag dependencies: which rules `has_tag` reads, checked across the rulebook and put in order.

A rule that reads `has_tag("b")` depends on rule `b`. In an exclusive group
each rule also depends on the rules before it in the group, because it can
hold only when none of them does. Rules are evaluated in an order where
every rule comes after what it depends on, and otherwise in file order; a
cycle is an error.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NoReturn, Protocol

from tagger.rules.expression import Metric, Node, walk
from tagger.rules.yaml_source import suggest

__all__ = [
    "MANUAL_RULE_ID",
    "DependencyError",
    "TagReference",
    "check_references",
    "evaluation_order",
    "tag_references",
]

MANUAL_RULE_ID: Final = "manual"
ExpressionKey = Literal["when", "rank_by", "leave_when"]


class _Rule(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def per(self) -> str | None: ...

    @property
    def condition(self) -> Node: ...

    @property
    def rank(self) -> Node | None: ...


@dataclass(frozen=True)
class TagReference:
    """One `has_tag` in a rule: the expression key it is in and its offset in that text."""

    rule_id: str
    key: ExpressionKey
    offset: int
    pattern: str

    @property
    def target(self) -> str:
        """Return the id of the rule, or `manual`, whose tags the pattern reads."""
        return self.pattern.partition(":")[0]


class DependencyError(Exception):
    """A `has_tag` names an unknown tag, or tags depend on each other in a cycle.

    `reference` locates the `has_tag` to blame; None points at the rule itself.
    """

    def __init__(self, message: str, rule_id: str, reference: TagReference | None) -> None:
        super().__init__(message)
        self.message = message
        self.rule_id = rule_id
        self.reference = reference


def tag_references(rule: _Rule) -> Iterator[TagReference]:
    """Yield the `has_tag` uses of a rule, in its condition, rank and leave condition."""
    expressions: list[tuple[ExpressionKey, Node | None]] = [
        ("when", rule.condition),
        ("rank_by", rule.rank),
        ("leave_when", getattr(rule, "leave", None)),
    ]
    for key, expression in expressions:
        if expression is None:
            continue
        for node in walk(expression):
            if isinstance(node, Metric) and node.kind == "has_tag":
                yield TagReference(rule.id, key, node.start, node.key)


def check_references(rules: Sequence[_Rule]) -> None:
    """Check that every `has_tag` names a tag this rulebook can give; raises DependencyError."""
    by_id = {rule.id: rule for rule in rules}
    for rule in rules:
        for reference in tag_references(rule):
            message = _reference_problem(reference, by_id)
            if message is not None:
                raise DependencyError(f"rule {rule.id!r}: {message}", rule.id, reference)


def evaluation_order(
    rules: Sequence[_Rule], exclusive_groups: Mapping[str, bool]
) -> tuple[int, ...]:
    """Return rule indexes in an order that evaluates every rule after what it depends on.

    Ties go to file order, so a rulebook without `has_tag` keeps file order.
    Raises DependencyError naming a cycle.
    """
    edges = _edges(rules, exclusive_groups)
    _reject_cycles(rules, edges)

    waiting = [len(edges[index]) for index in range(len(rules))]
    dependents: dict[int, list[int]] = {}
    for index, needed in edges.items():
        for dependency, _ in needed:
            dependents.setdefault(dependency, []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for dependent in dependents.get(index, []):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    return tuple(order)


def _reference_problem(reference: TagReference, by_id: Mapping[str, _Rule]) -> str | None:
    pattern = reference.pattern
    target, _, param = pattern.partition(":")
    if target == MANUAL_RULE_ID:
        if not param:
            return 'has_tag("manual") needs a name: write has_tag("manual:<name>") or "manual:*"'
        return None

    rule = by_id.get(target)
    if rule is None:
        return (
            f"has_tag({pattern!r}) names no rule of this rulebook{suggest(target, by_id)}; "
            'a manual tag is written "manual:<name>"'
        )
    if rule.per is not None and not param:
        return (
            f"rule {target!r} gives one tag per {rule.per}: write "
            f'has_tag("{target}:*") for any of them or has_tag("{target}:<{rule.per}>")'
        )
    if rule.per is None and param:
        return (
            f"rule {target!r} has no `per`, so its only tag is {target!r}: "
            f'write has_tag("{target}")'
        )
    return None


# For each rule index, the rule indexes it depends on, each with the
# `has_tag` that makes it (None for an earlier rule of an exclusive group).
_Edges = dict[int, list[tuple[int, TagReference | None]]]


def _edges(rules: Sequence[_Rule], exclusive_groups: Mapping[str, bool]) -> _Edges:
    index_of = {rule.id: index for index, rule in enumerate(rules)}
    edges: _Edges = {index: [] for index in range(len(rules))}
    earlier_in_group: dict[str, list[int]] = {}
    for index, rule in enumerate(rules):
        for reference in tag_references(rule):
            target = index_of.get(reference.target)
            if target is not None:
                edges[index].append((target, reference))
        if exclusive_groups.get(rule.group, False):
            members = earlier_in_group.setdefault(rule.group, [])
            edges[index].extend((member, None) for member in members)
            members.append(index)
    return edges


def _reject_cycles(rules: Sequence[_Rule], edges: _Edges) -> None:
    # Depth-first search in file order; a rule met again while it is still on
    # the path closes a cycle.
    state = [0] * len(rules)  # 0 unvisited, 1 on the path, 2 done
    for root in range(len(rules)):
        if state[root] != 0:
            continue
        path: list[tuple[int, TagReference | None]] = [(root, None)]
        stack = [iter(edges[root])]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path[-1][0]] = 2
                path.pop()
                stack.pop()
                continue
            target, reference = step
            if state[target] == 1:
                _raise_cycle(rules, path, target, reference)
            if state[target] == 0:
                state[target] = 1
                path.append((target, reference))
                stack.append(iter(edges[target]))


def _raise_cycle(
    rules: Sequence[_Rule],
    path: list[tuple[int, TagReference | None]],
    target: int,
    closing: TagReference | None,
) -> NoReturn:
    start = next(position for position, (index, _) in enumerate(path) if index == target)
    steps = [*path[start + 1 :], (target, closing)]
    names = [repr(rules[target].id)]
    for index, reference in steps:
        name = repr(rules[index].id)
        if reference is None:
            name += f" (earlier in the exclusive group {rules[index].group!r})"
        names.append(name)

    message = (
        f"tags depend on each other in a cycle: rule {' -> '.join(names)}; a rule cannot "
        "depend on its own tag, also not through an exclusive group, where each rule "
        "depends on the rules before it"
    )
    raise DependencyError(message, rules[path[-1][0]].id, closing)
