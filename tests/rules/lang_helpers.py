"""Helpers for the rule-language tests: small rulebooks and aggregates folded without the engine."""

from __future__ import annotations

from typing import Any

from tagger.rules.aggregates import fold_event, make_plan, prune
from tagger.rules.evaluate import Compiler, Context, Value, collect_timers, evaluate, next_change
from tagger.rules.expression import Call, parse_expression
from tagger.rules.metrics import MetricOptions, resolve_metric
from tagger.rules.rulebook import Rulebook, parse_rulebook
from tagger.rules.state import CustomerState
from tagger.schemas.events import Event

HEADER = """\
version: 1
currency: CNY
groups:
  test: {labels: {zh: 测试, en: Test}}
  tier: {exclusive: true, labels: {zh: 等级, en: Tier}}
"""


def rule_yaml(rule_id: str, when: str, *, group: str = "test", extra: str = "") -> str:
    """Return one rule as YAML, its condition single-quoted."""
    quoted = when.replace("'", "''")
    return (
        f"  - id: {rule_id}\n"
        f"    group: {group}\n"
        f"    labels: {{zh: 规则, en: Rule}}\n"
        f"    description: A test rule.\n"
        f"    when: '{quoted}'\n"
        f"{extra}"
    )


def book(*whens: str, header: str = "") -> Rulebook:
    """Build a rulebook whose rules r0, r1, ... have the given conditions."""
    rules = "".join(rule_yaml(f"r{index}", when) for index, when in enumerate(whens))
    return parse_rulebook(HEADER + header + "rules:\n" + rules, file="test.yaml")


class Folded:
    """One customer's aggregates under a rulebook, folded and evaluated without the engine.

    Events fold at a clock that only moves forward, as the engine folds them.
    """

    def __init__(self, rulebook: Rulebook) -> None:
        self.rulebook = rulebook
        self.plan = make_plan(rulebook.rules)
        self.state = CustomerState(customer_id="c1")
        self.clock = 0
        self.count = 0

    def add(self, type: str, ts: int, **fields: Any) -> None:
        """Fold one event; the clock moves to its time if that is later."""
        self.count += 1
        self.clock = max(self.clock, ts)
        event = Event(event_id=f"e{self.count}", customer_id="c1", type=type, ts=ts, **fields)  # type: ignore[arg-type]
        fold_event(self.state, event, self.plan, horizon=self.clock, held_values={})

    def holds(self, time: int, rule: int = 0) -> bool:
        """Return whether rule r<rule> holds at `time`.

        The engine's compiled condition must agree with `evaluate`, which
        explain and preview use, so every language test checks both.
        """
        condition = self.rulebook.rules[rule].condition
        interpreted = evaluate(condition, self._context(time))
        assert Compiler().compile(condition)(self._context(time)) == interpreted
        return interpreted is True

    def value(self, text: str, time: int) -> Value:
        """Return the value of one metric, written as in a rule, at `time`."""
        call = parse_expression(text)
        assert isinstance(call, Call)
        options = MetricOptions(
            exponent=self.rulebook.currency_exponent, timezone=self.rulebook.timezone
        )
        metric, _ = resolve_metric(call, text, options)
        interpreted = evaluate(metric, self._context(time))
        compiled = Compiler().compile(metric)(self._context(time))
        assert (compiled, type(compiled)) == (interpreted, type(interpreted))
        return interpreted

    def due(self, time: int) -> int | None:
        """Return the next instant after `time` at which any rule's metrics can change."""
        timers = collect_timers([rule.condition for rule in self.rulebook.rules])
        return next_change(timers, self._context(time))

    def _context(self, time: int) -> Context:
        self.clock = max(self.clock, time)
        prune(self.state, self.plan, time)
        return Context(
            self.state,
            self.state.totals,
            time,
            self.rulebook.currency,
            self.rulebook.currency_exponent,
        )
