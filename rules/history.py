"""History a rulebook needs: which stored aggregates each metric reads, and how far back.

A metric that an earlier rulebook did not keep starts empty when a new one
takes effect, because the state keeps only what its rulebook reads. These
functions list the metrics of a new rulebook that start empty or short, so
that `tagger rules activate` and the worker can warn people before they
trust a tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tagger.rules.aggregates import SPEND_KEY, avg_count_key, metrics_of
from tagger.rules.calendar import MAX_PERIOD_MS
from tagger.rules.expression import Metric

if TYPE_CHECKING:
    from tagger.rules.rulebook import Rulebook

__all__ = ["history_gaps", "history_requirements"]

_DAY_MS: Final = 86_400_000
_PERIOD_WORDS: Final = {"today": "day", "this_week": "week", "this_month": "month"}


def history_requirements(rulebook: Rulebook) -> dict[str, int | None]:
    """Return each stored series the rulebook reads → how much history it needs, in ms.

    None means the whole history (lifetime counts, last-seen times, the
    cart, attributes, sequences). A series is named by its scope and key,
    for example `per category: window page_view` or `customer: lifetime
    purchase`.
    """
    requirements: dict[str, int | None] = {}
    for need in _needs(rulebook):
        known = requirements.get(need.series, 0)
        requirements[need.series] = (
            None if need.horizon is None or known is None else max(known, need.horizon)
        )
    return requirements


def history_gaps(old: Rulebook, new: Rulebook) -> list[str]:
    """Return one message per metric of `new` whose history `old` did not keep in full.

    Each message names the metric as written and states when it is complete,
    for example: `count(page_view, 30d)` starts empty: it is complete after
    30 days of events or a replay.
    """
    kept = history_requirements(old)
    messages: dict[str, None] = {}
    for need in _needs(new):
        if need.series not in kept:
            messages[f"`{need.text}` starts empty: {_complete_when(need, None)}"] = None
            continue
        held = kept[need.series]
        if held is None or (need.horizon is not None and need.horizon <= held):
            continue
        messages[
            f"`{need.text}` holds only the last {_duration_words(held)}: "
            f"{_complete_when(need, held)}"
        ] = None
    return list(messages)


@dataclass(frozen=True)
class _Need:
    series: str
    horizon: int | None
    text: str
    metric: Metric


def _needs(rulebook: Rulebook) -> Iterator[_Need]:
    for rule in rulebook.rules:
        scope = f"per {rule.per}" if rule.per is not None else "customer"
        for metric in metrics_of(rule):
            for series, horizon in _series_of(metric):
                # The cart and attributes are customer-wide, also in a `per` rule.
                customer_wide = series == "cart" or series.startswith("attribute ")
                where = "customer" if customer_wide else scope
                yield _Need(f"{where}: {series}", horizon, metric.text, metric)


def _series_of(metric: Metric) -> list[tuple[str, int | None]]:
    kind = metric.kind
    horizon = metric.window
    if metric.calendar is not None:
        horizon = MAX_PERIOD_MS[metric.calendar]
    windowed = "window" if horizon is not None else "lifetime"

    if kind in ("count", "count_window", "sum", "min", "max"):
        return [(f"{windowed} {metric.key}", horizon)]
    if kind == "net_spend":
        return [(f"{windowed} {SPEND_KEY}", horizon)]
    if kind == "avg":
        return [
            (f"{windowed} {metric.key}", horizon),
            (f"{windowed} {avg_count_key(metric)}", horizon),
        ]
    if kind == "count_distinct":
        return [(f"distinct {metric.key}", horizon)]
    if kind == "since":
        return [(f"last {metric.key}", None)]
    if kind == "last":
        return [(f"latest {metric.key}", None)]
    if kind in ("followed_by", "not_followed_by"):
        return [(f"sequence {metric.key}", None)]
    if kind == "attribute":
        return [(f"attribute {metric.key}", None)]
    if kind == "cart_age":
        return [("cart", None)]
    return []


def _complete_when(need: _Need, held: int | None) -> str:
    metric = need.metric
    if metric.calendar is not None:
        period = _PERIOD_WORDS[metric.calendar]
        return (
            f"it is complete from the start of the next {period} ({metric.timezone}) "
            "or after a replay"
        )
    if need.horizon is None:
        if metric.kind == "attribute":
            return "it is complete after the next customer_update that sets it, or a replay"
        return "it is complete only after a replay of each customer's history"
    missing = need.horizon - (held or 0)
    return f"it is complete after {_duration_words(missing)} of events or a replay"


def _duration_words(ms: int) -> str:
    units = ((_DAY_MS, "day"), (3_600_000, "hour"), (60_000, "minute"), (1_000, "second"))
    for size, word in units:
        if ms % size == 0:
            count = ms // size
            return f"{count} {word}{'s' if count != 1 else ''}"
    return f"{ms} ms"
