"""The metric catalogue: resolves a call such as `count(page_view, 7d)` into a checked Metric."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

from tagger.rules.calendar import CALENDAR_PERIODS, DEFAULT_TIMEZONE
from tagger.rules.expression import (
    CalendarPeriod,
    Call,
    Constant,
    ExpressionError,
    Metric,
    MetricKind,
    Node,
    Selector,
    Where,
)
from tagger.rules.filters import EVENT_FIELDS, FIELD_TYPES, check_filter, event_types, filter_text
from tagger.rules.yaml_source import suggest
from tagger.schemas.events import EVENT_TYPES

__all__ = [
    "FIELD_METRICS",
    "LIFETIME",
    "MAX_DISTINCT_VALUES",
    "METRIC_NAMES",
    "TYPE_NAMES",
    "MetricOptions",
    "ValueType",
    "resolve_metric",
]

# Event types a metric can count, plus `activity`, which stands for all of ACTIVITY_TYPES.
TYPE_NAMES: Final[tuple[str, ...]] = (*EVENT_TYPES, "activity")
# The names a rulebook may call: every metric kind but the windowed count,
# which is `count` with a window.
METRIC_NAMES: Final[tuple[str, ...]] = tuple(
    kind for kind in get_args(MetricKind) if kind != "count_window"
)
# Values one count_distinct keeps: past it, the value seen least recently is
# dropped, so the metric never reads more than this.
MAX_DISTINCT_VALUES: Final = 128
# Metrics over one event field, written `TYPE.FIELD`.
FIELD_METRICS: Final = ("sum", "min", "max", "avg", "count_distinct", "last")
_NUMERIC_FIELD_METRICS: Final = ("sum", "min", "max", "avg")
_FIELD_KINDS: Final[dict[str, MetricKind]] = {
    "sum": "sum",
    "min": "min",
    "max": "max",
    "avg": "avg",
    "count_distinct": "count_distinct",
    "last": "last",
}
LIFETIME: Final = "lifetime"
_PERIODS: Final[dict[str, CalendarPeriod]] = {period: period for period in CALENDAR_PERIODS}
_WINDOW_WORDS: Final = (LIFETIME, *CALENDAR_PERIODS)

# The type of a checked node. `any` is a customer attribute, whose type is only
# known at run time; `duration` marks a duration metric, `duration_literal` a
# literal such as 30m. The `opt_` types are numbers or money that are null
# when no event gave them a value (min, max, avg, last).
ValueType = Literal[
    "bool",
    "number",
    "money",
    "opt_number",
    "opt_money",
    "duration",
    "duration_literal",
    "string",
    "null",
    "any",
]

_ATTRIBUTE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# has_tag: `rule_id`, `rule_id:param`, `rule_id:*`, `manual:name` or `manual:*`.
_TAG_PATTERN_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}(?::(?:\*|[a-z0-9_.]{1,64}))?")
_EXAMPLES: Final[dict[str, str]] = {
    "count": "count(purchase) or count(purchase, 30d)",
    "net_spend": "net_spend(180d)",
    "since": "since(purchase)",
    "cart_age": "cart_age",
    "attribute": 'attribute("member_level")',
    "sum": "sum(purchase.amount, 30d)",
    "min": "min(purchase.amount, 30d)",
    "max": "max(purchase.amount, 30d)",
    "avg": "avg(purchase.amount, 90d)",
    "count_distinct": "count_distinct(page_view.category, 7d)",
    "last": "last(page_view.category)",
    "followed_by": "followed_by(add_to_cart, purchase, 2d)",
    "not_followed_by": "not_followed_by(add_to_cart, purchase, 30m)",
    "has_tag": 'has_tag("vip")',
}


@dataclass(frozen=True)
class MetricOptions:
    """Rule settings that metrics read: the `per` field, the currency's decimals, the time zone."""

    per: str | None = None
    exponent: int = 2
    timezone: str = DEFAULT_TIMEZONE


@dataclass(frozen=True)
class _Window:
    duration: int | None = None
    calendar: CalendarPeriod | None = None


def resolve_metric(call: Call, text: str, options: MetricOptions) -> tuple[Metric, ValueType]:
    """Check a metric call and return it as a Metric with its type; raises ExpressionError.

    `text` is the whole condition, which `call` offsets index into.
    """
    return _Resolver(call, text, options).resolve()


class _Resolver:
    def __init__(self, call: Call, text: str, options: MetricOptions) -> None:
        self._call = call
        self._text = text
        self._written = text[call.start : call.end]
        self._options = options

    def resolve(self) -> tuple[Metric, ValueType]:
        call = self._call
        if call.name not in METRIC_NAMES:
            raise ExpressionError(_unknown_name_message(call), call.start)
        if call.name == "cart_age":
            return self._cart_age(), "duration"
        if call.args is None:
            raise ExpressionError(
                f"{call.name} needs arguments, for example {_EXAMPLES[call.name]}", call.start
            )

        args = call.args
        if call.name == "count":
            self._arity((1, 2))
            selector = self._selector(args[0])
            window = self._window(args[1]) if len(args) == 2 else _Window()
            lifetime = window.duration is None and window.calendar is None
            kind: MetricKind = "count" if lifetime else "count_window"
            return self._made(kind, selector.key, window, selector=selector), "number"
        if call.name == "net_spend":
            self._arity((1,))
            return self._made("net_spend", "spend", self._window(args[0])), "money"
        if call.name == "since":
            self._arity((1,))
            selector = self._selector(args[0])
            return self._made("since", selector.key, _Window(), selector=selector), "duration"
        if call.name == "attribute":
            self._arity((1,))
            return self._made("attribute", self._attribute_name(args[0]), _Window()), "any"
        if call.name == "has_tag":
            return self._has_tag(args), "bool"
        if call.name in ("followed_by", "not_followed_by"):
            return self._sequence(args), "bool"
        return self._field_metric(args)

    def _cart_age(self) -> Metric:
        if self._call.args:
            raise ExpressionError("cart_age takes no arguments", self._call.start)
        if self._options.per is not None:
            raise ExpressionError(
                f"cart_age is not available in a rule with `per: {self._options.per}`",
                self._call.start,
            )
        return self._made("cart_age", "", _Window())

    def _field_metric(self, args: tuple[Node, ...]) -> tuple[Metric, ValueType]:
        name = self._call.name
        if name == "last":
            self._arity((1,))
        else:
            self._arity((1, 2))
        selector, field = self._projection(args[0])
        window = self._window(args[1]) if len(args) == 2 else _Window()
        field_type = FIELD_TYPES[field]
        if name in _NUMERIC_FIELD_METRICS and field_type == "string":
            numeric = [field for field, kind in FIELD_TYPES.items() if kind != "string"]
            raise ExpressionError(
                f"{name} needs a numeric field ({', '.join(numeric)}), but {field} is a string",
                args[0].start,
            )

        projection = _projection_key(selector, field)
        key = {"min": f"min {projection}", "max": f"max {projection}"}.get(name, projection)
        metric = self._made(_FIELD_KINDS[name], key, window, selector=selector, field=field)
        if name == "count_distinct":
            return metric, "number"
        if name == "sum":
            return metric, "money" if field_type == "money" else "number"
        if field_type == "string":
            return metric, "string"
        return metric, "opt_money" if field_type == "money" else "opt_number"

    def _sequence(self, args: tuple[Node, ...]) -> Metric:
        self._arity((3,))
        first = self._selector(args[0])
        then = self._selector(args[1])
        if first.key == then.key:
            raise ExpressionError(
                f"{self._call.name} needs two different kinds of event: with {first.key!r} "
                "on both sides, every event would follow itself",
                args[1].start,
            )
        timeout = args[2]
        if not (isinstance(timeout, Constant) and timeout.kind == "duration"):
            raise ExpressionError(
                f"{self._call.name} needs a timeout such as 30m as its third argument, found "
                f"{self._text[timeout.start : timeout.end]!r}",
                timeout.start,
            )
        assert isinstance(timeout.value, int)
        if timeout.value <= 0:
            raise ExpressionError("a timeout must be longer than 0", timeout.start)

        kind: MetricKind = "followed_by" if self._call.name == "followed_by" else "not_followed_by"
        return Metric(
            kind,
            f"{first.key} -> {then.key}",
            None,
            self._written,
            self._call.start,
            self._call.end,
            selector=first,
            then=then,
            timeout=timeout.value,
        )

    def _has_tag(self, args: tuple[Node, ...]) -> Metric:
        self._arity((1,))
        if self._options.per is not None:
            # TODO: has_tag in a `per` rule would make the cached per-value
            # results depend on other rules' tags, so it is rejected for now.
            raise ExpressionError(
                f"has_tag is not available in a rule with `per: {self._options.per}`",
                self._call.start,
            )
        pattern = args[0]
        if not (isinstance(pattern, Constant) and pattern.kind == "string"):
            raise ExpressionError(
                'has_tag needs a tag as a string, for example has_tag("vip") or '
                'has_tag("browsing_interest:*")',
                pattern.start,
            )
        value = str(pattern.value)
        if not _TAG_PATTERN_RE.fullmatch(value):
            raise ExpressionError(
                f"invalid tag {value!r}: expected a rule id, `rule_id:value`, `rule_id:*` "
                "or `manual:name`",
                pattern.start,
            )
        return self._made("has_tag", value, _Window())

    def _made(
        self,
        kind: MetricKind,
        key: str,
        window: _Window,
        *,
        selector: Selector | None = None,
        field: str | None = None,
    ) -> Metric:
        timezone = self._options.timezone if window.calendar is not None else DEFAULT_TIMEZONE
        return Metric(
            kind,
            key,
            window.duration,
            self._written,
            self._call.start,
            self._call.end,
            selector=selector,
            field=field,
            calendar=window.calendar,
            timezone=timezone,
        )

    def _arity(self, allowed: tuple[int, ...]) -> None:
        call = self._call
        found = len(call.args or ())
        if found not in allowed:
            expected = " or ".join(str(count) for count in allowed)
            raise ExpressionError(
                f"{call.name} takes {expected} argument{'s' if allowed != (1,) else ''}, "
                f"found {found}: for example {_EXAMPLES[call.name]}",
                call.start,
            )

    def _selector(self, arg: Node) -> Selector:
        subject, condition = (arg.subject, arg.filter) if isinstance(arg, Where) else (arg, None)
        if not (isinstance(subject, Call) and subject.args is None):
            raise ExpressionError(
                f"{self._call.name} needs an event type here, such as purchase or activity; "
                f"expected one of {', '.join(TYPE_NAMES)}",
                subject.start,
            )
        if "." in subject.name:
            raise ExpressionError(
                f"{self._call.name} takes an event type such as purchase here, not the field "
                f"{subject.name!r}",
                subject.start,
            )
        return self._checked_selector(subject, subject.name, condition)

    def _projection(self, arg: Node) -> tuple[Selector, str]:
        subject, condition = (arg.subject, arg.filter) if isinstance(arg, Where) else (arg, None)
        name = self._call.name
        if not (isinstance(subject, Call) and subject.args is None and "." in subject.name):
            raise ExpressionError(
                f"{name} needs an event field such as purchase.amount, found "
                f"{self._text[subject.start : subject.end]!r}",
                subject.start,
            )
        type_name, _, field = subject.name.partition(".")
        if field not in FIELD_TYPES:
            raise ExpressionError(
                f"unknown event field {field!r}{suggest(field, FIELD_TYPES)}; "
                f"expected one of {', '.join(FIELD_TYPES)}",
                subject.start + len(type_name) + 1,
            )
        selector = self._checked_selector(subject, type_name, condition)
        if not any(field in EVENT_FIELDS[kind] for kind in selector.types):
            raise ExpressionError(
                f"{type_name} events have no {field}", subject.start + len(type_name) + 1
            )
        return selector, field

    def _checked_selector(self, subject: Call, type_name: str, condition: Node | None) -> Selector:
        if type_name not in TYPE_NAMES:
            raise ExpressionError(
                f"unknown event type {type_name!r}{suggest(type_name, TYPE_NAMES)}; "
                f"expected one of {', '.join(TYPE_NAMES)}",
                subject.start,
            )
        types = event_types(type_name)
        if condition is None:
            return Selector(types, None, type_name)
        key = f"{type_name} where {filter_text(condition)}"
        checked = check_filter(condition, types=types, exponent=self._options.exponent)
        return Selector(types, checked, key)

    def _window(self, arg: Node) -> _Window:
        if isinstance(arg, Call) and arg.args is None and arg.name in _WINDOW_WORDS:
            if arg.name == LIFETIME:
                return _Window()
            return _Window(calendar=_PERIODS[arg.name])
        if not (isinstance(arg, Constant) and arg.kind == "duration"):
            written = self._text[arg.start : arg.end]
            hint = suggest(written, _WINDOW_WORDS) if isinstance(arg, Call) else ""
            raise ExpressionError(
                f"{self._call.name} needs a window such as 30d, lifetime, today, this_week "
                f"or this_month, found {written!r}{hint}",
                arg.start,
            )
        window = arg.value
        if not isinstance(window, int) or window <= 0:
            raise ExpressionError("a window must be longer than 0", arg.start)
        return _Window(duration=window)

    def _attribute_name(self, name: Node) -> str:
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
        return str(name.value)


def _projection_key(selector: Selector, field: str) -> str:
    type_name, _, condition = selector.key.partition(" where ")
    key = f"{type_name}.{field}"
    return f"{key} where {condition}" if condition else key


def _unknown_name_message(call: Call) -> str:
    if call.name in TYPE_NAMES:
        return (
            f"{call.name!r} is an event type, not a metric: count it with "
            f"count({call.name}) or count({call.name}, 30d)"
        )
    if "." in call.name:
        return (
            f"{call.name!r} is an event field, not a metric: aggregate it with "
            f"sum({call.name}, 30d), last({call.name}) or another field metric"
        )
    return (
        f"unknown metric {call.name!r}{suggest(call.name, METRIC_NAMES)}; "
        f"expected one of {', '.join(METRIC_NAMES)}"
    )
