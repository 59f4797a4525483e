"""The summary table and the ratios between stages."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_table", "ratios"]

_LABELS = {
    "raw": "raw aiokafka loop",
    "bare": "bare Faust agent",
    "reference": "reference Faust agent",
    "worker": "tagger worker",
}


def ratios(stages: dict[str, Any]) -> dict[str, float]:
    """Return the worker's events/s divided by each other stage's events/s."""
    worker = stages.get("worker", {}).get("events_per_s")
    result: dict[str, float] = {}
    if not worker:
        return result
    for name in ("reference", "bare", "raw"):
        other = stages.get(name, {}).get("events_per_s")
        if other:
            result[f"worker/{name}"] = round(worker / other, 3)
    return result


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(figures: dict[str, Any]) -> None:
    """Print events/s, CPU use and ratios of the stages that ran, then the other sections."""
    console = Console()
    if figures["stages"]:
        _print_stages(console, figures)
    _print_state(console, figures)
    _print_latency(console, figures)


def _print_stages(console: Console, figures: dict[str, Any]) -> None:
    table = Table(
        title=f"{figures['input']['events']:,} events, {figures['input']['customers']:,} customers"
    )
    for column in ("stage", "events/s", "seconds", "CPU: consumer", "broker", "redis"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for name, stage in figures["stages"].items():
        cpu = stage.get("cpu_cores", {})
        consumer = cpu.get("consumer", cpu.get("worker"))
        table.add_row(
            _LABELS.get(name, name),
            f"{stage['events_per_s']:,.0f}",
            f"{stage['seconds']:.1f}",
            _cores(consumer),
            _cores(cpu.get("broker")),
            _cores(cpu.get("redis")),
        )
    console.print(table)
    for name, value in figures.get("ratios", {}).items():
        console.print(f"{name}: {value:.1%}")


def _print_state(console: Console, figures: dict[str, Any]) -> None:
    state = figures.get("state")
    if state:
        sizes = state.get("bytes_per_customer", {})
        console.print(
            f"changelog: {state['changelog_records']:,} records, "
            f"{state['changelog_bytes']:,} bytes, {state['customers']:,} customers; "
            f"bytes per customer mean {sizes.get('mean')}, p50 {sizes.get('p50')}, "
            f"p95 {sizes.get('p95')}, max {sizes.get('max')}"
        )
        fields = list(state.get("field_bytes_per_customer", {}).items())[:5]
        if fields:
            shown = ", ".join(f"{name} {size:,.0f}" for name, size in fields)
            console.print(f"largest state fields, mean bytes per customer: {shown}")
        rss = state.get("rss_bytes_per_100k_customers")
        if rss is not None:
            console.print(f"worker RSS per 100,000 customers: {rss / 1e6:,.0f} MB")
    recovery = figures.get("recovery")
    if recovery:
        console.print(
            f"recovery: ready in {recovery['seconds_to_ready']:.1f} s, "
            f"{recovery.get('restored', '?')} records restored in "
            f"{recovery.get('recovery_seconds', '?')} s, "
            f"{recovery.get('records_per_s', '?')} records/s"
        )
        growth = recovery.get("rss_growth_per_100k_customers")
        if growth is not None:
            console.print(
                f"recovered worker's RSS growth per 100,000 customers: {growth / 1e6:,.0f} MB"
            )


def _percentiles(figures: dict[str, Any]) -> str:
    if not figures.get("count"):
        return "no sample"
    return (
        f"p50 {figures['p50_ms']:,.1f} ms, p99 {figures['p99_ms']:,.1f} ms, "
        f"max {figures['max_ms']:,.1f} ms ({figures['count']:,} measured)"
    )


def _print_latency(console: Console, figures: dict[str, Any]) -> None:
    latency = figures.get("latency")
    if not latency:
        return
    cpu = latency.get("cpu_cores", {})
    console.print(
        f"latency: {latency['offered_events_per_s']:,.0f} events/s offered "
        f"({latency['rate_source']}), {latency['achieved_events_per_s']:,.0f} achieved "
        f"over {latency['seconds']:.0f} s; CPU worker {_cores(cpu.get('worker'))}, "
        f"load generator {_cores(cpu.get('bench'))}, broker {_cores(cpu.get('broker'))}, "
        f"redis {_cores(cpu.get('redis'))}"
    )
    console.print(f"event to tag change on the topic: {_percentiles(latency['topic'])}")
    console.print(f"event to tag change in Redis: {_percentiles(latency['redis'])}")
    same = latency["redis"].get("same_changes_on_topic")
    if same:
        console.print(f"the same changes on the topic: {_percentiles(same)}")
    fired = latency.get("time_driven")
    if fired:
        console.print(
            f"hesitant fired for {fired['fired']} of {fired['customers']} customers; "
            f"after the watermark passed its due time: {_percentiles(fired['after_watermark'])}"
        )
        console.print(f"after the due time itself: {_percentiles(fired['after_due'])}")
