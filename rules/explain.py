"""Explaining a customer's tags: which rules hold, since when, and the metric values behind them."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

from tagger.rules.engine import Engine
from tagger.rules.evaluate import Context, Value, evaluate, reason_values
from tagger.rules.expression import DURATION_UNITS, Metric, Node, walk
from tagger.rules.rulebook import MANUAL_GROUP, MANUAL_PREFIX, Rule, Rulebook
from tagger.rules.state import CustomerState, Scope
from tagger.rules.yaml_source import suggest
from tagger.schemas.timestamps import format_timestamp

__all__ = [
    "RankedValue",
    "TagExplanation",
    "explain",
    "explanation_to_json",
    "format_duration",
    "render_json",
    "render_text",
]

_MANUAL_DESCRIPTION: Final = "Set by a person with tag_assign; removed with tag_unassign."
# The unit of each metric kind's value in `values`; other kinds are shown as they are.
_UNITS: Final[dict[str, str]] = {
    "count": "count",
    "count_window": "count",
    "net_spend": "money",
    "since": "ms",
    "cart_age": "ms",
    "attribute": "attribute",
}


@dataclass(frozen=True)
class RankedValue:
    """One tracked value of a `per` rule at the explained clock.

    `rank` is the `rank_by` value (0 without `rank_by`) of a value whose
    condition holds or whose held tag stays by `leave_when`, else None.
    `newest` is the time of the value's newest counted event, which breaks
    ties. `selected` is True when the rulebook gives the value's tag at the
    clock.
    """

    param: str
    tag: str
    condition: bool
    leave: bool | None
    rank: Any
    newest: int | None
    selected: bool
    held: bool
    since: int | None
    values: dict[str, Any]


@dataclass(frozen=True)
class TagExplanation:
    """Why a customer holds a tag, or does not, at one clock (epoch ms).

    `held` and `since` are what the customer's state stores. `decided` is
    whether the rulebook gives the tag once the watermark reaches `clock`,
    after exclusive groups, limits, `leave_when` and cooldowns. It differs
    from `held` only while a change is due and not yet fired. `condition` is
    the value of `when` at `clock`, `leave` that of `leave_when` (None
    without one), and `cooldown_until` the end of a running cooldown.
    `values` maps each metric of the rule to its value at `clock`, as a tag
    change's reason writes it, and `units` maps each of them to `count`,
    `money` (a decimal string), `ms`, `attribute` or `value`. `winner` is the
    tag that an exclusive group gives at `clock`, None when none. `ranked`
    lists the tracked values of a `per` rule, the selected ones first.
    `held_events` counts the customer's events held until the watermark
    reaches their time.
    """

    customer_id: str
    clock: int
    tag: str
    rule: str
    group: str
    exclusive: bool
    labels: dict[str, str]
    description: str
    when: str
    leave_when: str | None
    rank_by: str | None
    limit: int | None
    held: bool
    since: int | None
    condition: bool
    leave: bool | None
    decided: bool
    cooldown_until: int | None
    values: dict[str, Any]
    units: dict[str, str]
    winner: str | None
    ranked: tuple[RankedValue, ...]
    held_events: int


def explain(
    rulebook: Rulebook,
    state: CustomerState,
    *,
    clock: int,
    tag: str | None = None,
    engine: Engine | None = None,
) -> list[TagExplanation]:
    """Explain every rule of `rulebook` for one customer at `clock`, or only `tag`.

    `tag` is a rule id, a `rule_id:param` tag of a `per` rule, or a manual
    tag; with no tag, held manual tags follow the rules. What the rulebook
    gives at `clock` comes from running `engine` (a new one for `rulebook`
    when None) on a copy of the state up to `clock`, so it is exactly what
    the worker decides once its watermark reaches `clock`. A clock before the
    state's own clock reads as the state's clock, because older entries may
    be pruned. The state itself is not changed. Raises ValueError for a tag
    the rulebook does not know.
    """
    time = max(clock, state.clock)
    engine = engine if engine is not None else Engine(rulebook)
    projected = copy.deepcopy(state)
    engine.advance(projected, watermark=time, now=0)
    explainer = _Explainer(rulebook, state, projected, time)
    if tag is None:
        explanations = [explainer.rule(rule, None) for rule in rulebook.rules]
        manual = sorted(
            held
            for held in state.tags.keys() | projected.tags.keys()
            if held.startswith(MANUAL_PREFIX)
        )
        explanations.extend(explainer.manual(held) for held in manual)
        return explanations

    if tag.startswith(MANUAL_PREFIX):
        return [explainer.manual(tag)]
    rule_id, _, param = tag.partition(":")
    rule = rulebook.rule_for(tag)
    if rule is None:
        known = [rule.id for rule in rulebook.rules]
        raise ValueError(
            f"unknown tag {tag!r}{suggest(rule_id, known)}: expected a rule id of rulebook "
            f"{rulebook.version}, `rule_id:param` of a rule with `per`, or manual:<name>"
        )
    if param and rule.per is None:
        raise ValueError(f"rule {rule_id!r} has no `per`, so its tag is {rule_id!r}, not {tag!r}")
    return [explainer.rule(rule, param or None)]


def explanation_to_json(explanation: TagExplanation) -> dict[str, Any]:
    """Return an explanation as a JSON object; times are epoch ms."""
    return {
        "customer_id": explanation.customer_id,
        "clock": explanation.clock,
        "tag": explanation.tag,
        "rule": explanation.rule,
        "group": explanation.group,
        "exclusive": explanation.exclusive,
        "labels": explanation.labels,
        "description": explanation.description,
        "when": explanation.when,
        "leave_when": explanation.leave_when,
        "rank_by": explanation.rank_by,
        "limit": explanation.limit,
        "held": explanation.held,
        "since": explanation.since,
        "condition": explanation.condition,
        "leave": explanation.leave,
        "decided": explanation.decided,
        "cooldown_until": explanation.cooldown_until,
        "values": explanation.values,
        "units": explanation.units,
        "winner": explanation.winner,
        "ranked": [
            {
                "param": ranked.param,
                "tag": ranked.tag,
                "condition": ranked.condition,
                "leave": ranked.leave,
                "rank": ranked.rank,
                "newest": ranked.newest,
                "selected": ranked.selected,
                "held": ranked.held,
                "since": ranked.since,
                "values": ranked.values,
            }
            for ranked in explanation.ranked
        ],
        "held_events": explanation.held_events,
    }


def render_json(explanations: Iterable[TagExplanation]) -> str:
    """Return explanations as a JSON array, keys sorted."""
    data = [explanation_to_json(explanation) for explanation in explanations]
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode("utf-8")


def render_text(explanations: Iterable[TagExplanation]) -> str:
    """Return explanations as English text for people, one block per tag or rule."""
    explanations = list(explanations)
    if not explanations:
        return "Nothing to explain."

    first = explanations[0]
    lines = [f"Customer {first.customer_id} at {format_timestamp(first.clock)}"]
    if first.held_events:
        lines.append(
            f"{first.held_events} events are held until the watermark reaches their time; "
            "they count from then"
        )
    for explanation in explanations:
        lines.append("")
        lines.extend(_text_block(explanation))
    return "\n".join(lines)


def format_duration(ms: int) -> str:
    """Write a duration in ms with the largest units first: 5430000 gives "1h30m30s"."""
    sign = "-" if ms < 0 else ""
    remaining = abs(ms)
    terms: list[str] = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = DURATION_UNITS[unit]
        if remaining >= size:
            terms.append(f"{remaining // size}{unit}")
            remaining %= size
    return sign + ("".join(terms) or "0s")


def _text_block(explanation: TagExplanation) -> list[str]:
    lines = [f"{explanation.tag} ({explanation.labels.get('en', '')}): {_status(explanation)}"]
    if explanation.rule == MANUAL_GROUP:
        lines.append(f"  {explanation.description}")
        return lines

    lines.append(f"  when {explanation.when}  ->  {_show(explanation.condition)}")
    if explanation.leave_when is not None:
        lines.append(f"  leave_when {explanation.leave_when}  ->  {_show(explanation.leave)}")
    if explanation.cooldown_until is not None:
        lines.append(f"  cooldown runs until {format_timestamp(explanation.cooldown_until)}")
    units = explanation.units
    lines.extend(
        f"  {name} = {_show(value, units.get(name))}" for name, value in explanation.values.items()
    )
    if explanation.exclusive:
        winner = explanation.winner or "no tag"
        lines.append(f"  group {explanation.group} is exclusive: {winner} wins")
    if explanation.ranked:
        order = f"rank by {explanation.rank_by}" if explanation.rank_by else "no rank_by"
        limit = f", limit {explanation.limit}" if explanation.limit is not None else ""
        lines.append(f"  values ({order}{limit}; ties to the most recent event):")
        for ranked in explanation.ranked:
            lines.append("    " + _ranked_line(ranked, units))
    return lines


def _status(explanation: TagExplanation) -> str:
    if explanation.held and explanation.since is not None:
        status = f"held since {format_timestamp(explanation.since)}"
    elif explanation.held:
        status = "held"
    else:
        status = "not held"
    if explanation.held and not explanation.decided:
        status += "; its removal is due and not yet fired"
    elif explanation.decided and not explanation.held:
        status += "; its addition is due and not yet fired"
    return status


def _ranked_line(ranked: RankedValue, units: dict[str, str]) -> str:
    if ranked.selected:
        mark = "selected"
    elif ranked.rank is not None:
        mark = "matches, not selected"
    else:
        mark = "condition false"
    parts = [f"{ranked.param}: {mark}"]
    if ranked.rank is not None:
        # The rank_by value, not a position: "rank 7" read as seventh place.
        parts.append(f"rank_by value {_show(ranked.rank)}")
    if ranked.newest is not None:
        parts.append(f"newest {format_timestamp(ranked.newest)}")
    if ranked.held and ranked.since is not None:
        parts.append(f"held since {format_timestamp(ranked.since)}")
    values = ", ".join(
        f"{name} = {_show(value, units.get(name))}" for name, value in ranked.values.items()
    )
    if values:
        parts.append(values)
    return "; ".join(parts)


def _show(value: Any, unit: str | None = None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if unit == "ms" and isinstance(value, int):
        return f"{format_duration(value)} ({value} ms)"
    if isinstance(value, str) and unit == "attribute":
        return orjson.dumps(value).decode("utf-8")
    return str(value)


class _Explainer:
    """Evaluates rules at one time on the state as it will be then, without changing it.

    `state` is the customer's state as stored; `projected` is a copy that the
    engine has run up to `time`.
    """

    def __init__(
        self, rulebook: Rulebook, state: CustomerState, projected: CustomerState, time: int
    ) -> None:
        self.rulebook = rulebook
        self.state = state
        self.projected = projected
        self.time = time

    def rule(self, rule: Rule, param: str | None) -> TagExplanation:
        if rule.per is None:
            context = self._context(self.projected.totals)
            return self._explanation(
                rule,
                tag=rule.id,
                condition=evaluate(rule.condition, context) is True,
                leave=self._leave(rule, context),
                values=reason_values(_expressions(rule), context),
                ranked=(),
            )

        ranked = self._ranked(rule)
        if param is None:
            return self._explanation(
                rule,
                tag=rule.id,
                condition=any(value.condition for value in ranked),
                leave=None,
                values={},
                ranked=ranked,
            )

        focus = next((value for value in ranked if value.param == param), None)
        if focus is None:
            # A value never seen, or evicted: its metrics read as for no events.
            context = self._context(Scope())
            return self._explanation(
                rule,
                tag=f"{rule.id}:{param}",
                condition=evaluate(rule.condition, context) is True,
                leave=self._leave(rule, context),
                values=reason_values(_expressions(rule), context),
                ranked=ranked,
            )
        return self._explanation(
            rule,
            tag=focus.tag,
            condition=focus.condition,
            leave=focus.leave,
            values=focus.values,
            ranked=ranked,
        )

    def manual(self, tag: str) -> TagExplanation:
        return TagExplanation(
            customer_id=self.state.customer_id,
            clock=self.time,
            tag=tag,
            rule=MANUAL_GROUP,
            group=MANUAL_GROUP,
            exclusive=False,
            labels=self.rulebook.labels_for(tag),
            description=_MANUAL_DESCRIPTION,
            when="",
            leave_when=None,
            rank_by=None,
            limit=None,
            held=tag in self.state.tags,
            since=self.state.tags.get(tag),
            condition=tag in self.projected.tags,
            leave=None,
            decided=tag in self.projected.tags,
            cooldown_until=None,
            values={},
            units={},
            winner=None,
            ranked=(),
            held_events=len(self.projected.pending),
        )

    def _explanation(
        self,
        rule: Rule,
        *,
        tag: str,
        condition: bool,
        leave: bool | None,
        values: dict[str, Any],
        ranked: tuple[RankedValue, ...],
    ) -> TagExplanation:
        group = self.rulebook.groups[rule.group]
        if tag == rule.id and rule.per is not None:
            # The rule as a whole: held and decided when any of its values is.
            held = any(value.held for value in ranked)
            decided = any(value.selected for value in ranked)
            labels = dict(rule.labels)
        else:
            held = tag in self.state.tags
            decided = tag in self.projected.tags
            labels = self.rulebook.labels_for(tag)
        return TagExplanation(
            customer_id=self.state.customer_id,
            clock=self.time,
            tag=tag,
            rule=rule.id,
            group=rule.group,
            exclusive=group.exclusive,
            labels=labels,
            description=rule.description,
            when=rule.when,
            leave_when=rule.leave_when,
            rank_by=rule.rank_by,
            limit=rule.limit,
            held=held,
            since=self.state.tags.get(tag),
            condition=condition,
            leave=leave,
            decided=decided,
            cooldown_until=self._cooldown_until(rule, tag),
            values=values,
            units=_units(rule),
            winner=self._winner(rule.group) if group.exclusive else None,
            ranked=ranked,
            held_events=len(self.projected.pending),
        )

    def _winner(self, group: str) -> str | None:
        for tag in self.projected.tags:
            if self.rulebook.group_for(tag) == group:
                return tag
        return None

    def _cooldown_until(self, rule: Rule, tag: str) -> int | None:
        added = self.projected.last_added.get(tag)
        if rule.cooldown_ms is None or added is None or added + rule.cooldown_ms <= self.time:
            return None
        return added + rule.cooldown_ms

    def _leave(self, rule: Rule, context: Context) -> bool | None:
        if rule.leave is None:
            return None
        return evaluate(rule.leave, context) is True

    def _ranked(self, rule: Rule) -> tuple[RankedValue, ...]:
        """List a `per` rule's tracked values: selected first, then by rank and newest event."""
        assert rule.per is not None
        ranked: list[RankedValue] = []
        for param, scope in self.projected.per.get(rule.per, {}).items():
            context = self._context(scope)
            tag = f"{rule.id}:{param}"
            condition = evaluate(rule.condition, context) is True
            leave = self._leave(rule, context)
            staying = tag in self.projected.tags and leave is False
            rank: Value = None
            if condition or staying:
                rank = evaluate(rule.rank, context) if rule.rank is not None else 0
            ranked.append(
                RankedValue(
                    param=param,
                    tag=tag,
                    condition=condition,
                    leave=leave,
                    rank=_json_number(rank),
                    newest=_newest_counted(rule, scope, self.time),
                    selected=tag in self.projected.tags,
                    held=tag in self.state.tags,
                    since=self.state.tags.get(tag),
                    values=reason_values(_expressions(rule), context),
                )
            )
        ranked.sort(key=_rank_order, reverse=True)
        return tuple(ranked)

    def _context(self, scope: Scope) -> Context:
        return Context(
            self.projected,
            scope,
            self.time,
            self.rulebook.currency,
            self.rulebook.currency_exponent,
        )


def _rank_order(value: RankedValue) -> tuple[bool, bool, Decimal, int, str]:
    rank = Decimal(value.rank) if value.rank is not None else Decimal(0)
    newest = value.newest if value.newest is not None else -1
    return (value.selected, value.rank is not None, rank, newest, value.param)


def _expressions(rule: Rule) -> list[Node]:
    expressions = [rule.condition]
    if rule.leave is not None:
        expressions.append(rule.leave)
    if rule.rank is not None:
        expressions.append(rule.rank)
    return expressions


def _units(rule: Rule) -> dict[str, str]:
    units: dict[str, str] = {}
    for root in _expressions(rule):
        for node in walk(root):
            if isinstance(node, Metric):
                units.setdefault(node.text, _UNITS.get(node.kind, "value"))
    return units


def _newest_counted(rule: Rule, scope: Scope, time: int) -> int | None:
    """Return the time of the scope's newest event at or before `time` in a series the rule ranks.

    It follows the engine's tie-break: the series of `rank_by`, or of the
    condition without it, else the scope's newest event. Only the order of
    the listing depends on it; `selected` comes from the engine.
    """
    # TODO: this repeats the engine's private tie-break, so if that changes
    # the listing order may disagree with `selected` until this follows it.
    newest: int | None = None
    root = rule.rank if rule.rank is not None else rule.condition
    for node in walk(root):
        if not isinstance(node, Metric) or node.window is None:
            continue
        for entry_time, _ in reversed(scope.series.get(node.key, [])):
            if entry_time <= time:
                newest = entry_time if newest is None else max(newest, entry_time)
                break
    return newest if newest is not None else scope.newest


def _json_number(value: Value) -> Any:
    # Decimal ranks (money) become exact decimal strings, as in a tag change's reason.
    if isinstance(value, Decimal):
        return str(value)
    return value
