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
    """Print events/s, CPU use and ratios of the stages that ran."""
    store = figures["input"].get("store", "memory://")
    table = Table(
        title=f"{figures['input']['events']:,} events, {figures['input']['customers']:,} "
        f"customers, store {store}"
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
    console = Console()
    if figures["stages"]:
        console.print(table)
    for name, value in figures.get("ratios", {}).items():
        console.print(f"{name}: {value:.1%}")
    _print_state(console, figures)
    _print_recovery_comparison(console, figures)
    _print_scale2(console, figures.get("scale2"))
    _print_customers(console, figures.get("customers"))
    _print_latency(console, figures)
    _print_faust_latency(console, figures.get("faust_latency"))


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
            console.print(
                f"worker RSS, scaled to 100,000 customers with its base: {rss / 1e6:,.0f} MB"
            )
        growth = state.get("rss_growth_per_100k_customers")
        if growth is not None:
            console.print(
                f"worker RSS growth per 100,000 customers, from its start: {growth / 1e6:,.0f} MB"
            )
    recovery = figures.get("recovery")
    if recovery:
        console.print(
            f"recovery ({recovery.get('store', 'memory://')}): "
            f"{_ready(recovery.get('seconds_to_ready'))}, "
            f"{recovery.get('restored', '?')} records restored in "
            f"{recovery.get('recovery_seconds', '?')} s, "
            f"{recovery.get('records_per_s', '?')} records/s"
        )
        growth = recovery.get("rss_growth_per_100k_customers")
        if growth is not None:
            console.print(
                f"recovered worker's RSS growth per 100,000 customers: {growth / 1e6:,.0f} MB"
            )


def _ready(seconds: float | None) -> str:
    return "never ready" if seconds is None else f"ready in {seconds:.1f} s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _print_phases(console: Console, name: str, phases: dict[str, float] | None) -> None:
    if phases:
        console.print(
            f"{name}'s first recovery: waited {phases['waiting_for_first_record_s']} s for "
            f"the first record, stalled {phases['stalled_s']} s, read for "
            f"{phases['reading_s']} s at {_rate(phases['records_per_s_while_reading'])} records/s"
        )


def _print_recovery_comparison(console: Console, figures: dict[str, Any]) -> None:
    """Print the worker's recovery rate beside the plain Faust app's, and each variant."""
    comparison = figures.get("recovery_comparison")
    if not comparison:
        return
    faust = comparison["faust_default"]
    ratio = comparison.get("worker_over_faust")
    runs = comparison.get("runs", 1)
    runs_label = f"median of {runs} runs" if runs > 1 else "one run"
    console.print(
        f"recovery, {runs_label}: "
        f"worker {_rate(comparison.get('worker_records_per_s'))} records/s, "
        f"plain Faust app (default recovery) {_rate(comparison.get('faust_records_per_s'))} "
        f"records/s (first run {faust.get('restored', '?')} records in "
        f"{faust.get('recovery_seconds', '?')} s); "
        f"worker / Faust: {'-' if ratio is None else f'{ratio:.2f}'} (goal 1.5)"
    )
    _print_phases(console, "worker", figures.get("recovery", {}).get("phases"))
    _print_phases(console, "plain Faust app", faust.get("phases"))

    _print_variants(console, comparison.get("variants", []))

    for name, profile in comparison.get("profiles", {}).items():
        inclusive = profile["summary"].get("inclusive", {})
        shown = ", ".join(f"{label} {share:.0%}" for label, share in inclusive.items() if share)
        console.print(f"recovery profile, {name} ({profile['path']}): {shown}")


def _print_variants(console: Console, variants: list[dict[str, Any]]) -> None:
    if not variants:
        return
    table = Table(title="recovery with one Faust setting changed")
    table.add_column("setting", no_wrap=True)
    for column in ("worker records/s", "change", "Faust records/s", "change"):
        table.add_column(column, justify="right")
    for variant in variants:
        table.add_row(
            variant["setting"],
            _rate(variant.get("worker_records_per_s")),
            _share(variant.get("worker_change")),
            _rate(variant.get("faust_records_per_s")),
            _share(variant.get("faust_change")),
        )
    console.print(table)


def _print_scale2(console: Console, scale: dict[str, Any] | None) -> None:
    """Print one worker against two, with each process's CPU use."""
    if not scale:
        return
    table = Table(title=f"one worker against two (standby replicas {scale['standby_replicas']})")
    columns = ("workers", "events/s", "seconds", "CPU: worker 1", "worker 2", "broker", "redis")
    for column in columns:
        table.add_column(column, justify="right")
    for key in ("one_worker", "two_workers"):
        group = scale[key]
        cpu = group.get("cpu_cores", {})
        table.add_row(
            str(group["workers"]),
            f"{group['events_per_s']:,.0f}",
            f"{group['seconds']:.1f}",
            _cores(cpu.get("worker1")),
            _cores(cpu.get("worker2")),
            _cores(cpu.get("broker")),
            _cores(cpu.get("redis")),
        )
    console.print(table)
    ratio = scale.get("two_over_one")
    console.print(f"two workers / one: {'-' if ratio is None else f'{ratio:.2f}'} (goal 1.3)")


def _print_customers(console: Console, customers: dict[str, Any] | None) -> None:
    """Print the worker's rate at each customer count and the last-to-first ratio."""
    if not customers:
        return
    per_customer = customers.get("events_per_customer")
    title = (
        f"worker over customer counts, {customers['events']:,} events each"
        if per_customer is None
        else f"worker over customer counts, events per customer: {per_customer:g}"
    )
    table = Table(title=title)
    # Short headings, so that eight columns fit an 80-column terminal.
    columns = (
        "customers",
        "distinct",
        "events each",
        "changes each",
        "events/s",
        "CPU",
        "broker",
        "redis",
    )
    for column in columns:
        table.add_column(column, justify="right", no_wrap=column == "customers")
    for count, figures in customers["by_customers"].items():
        shape = figures["input"]
        cpu = figures.get("cpu_cores", {})
        table.add_row(
            f"{int(count):,}",
            f"{shape['distinct_customers']:,}",
            str(shape["events_per_customer"]),
            str(shape["tag_changes_per_event"]),
            f"{figures['events_per_s']:,.0f}",
            _cores(cpu.get("worker")),
            _cores(cpu.get("broker")),
            _cores(cpu.get("redis")),
        )
    console.print(table)
    if customers.get("shape_held") is False:
        console.print(
            "note: events per customer differ by more than 10% between the counts, so the "
            "ratio compares inputs of different shapes"
        )
    ratio = customers.get("last_over_first")
    console.print(
        f"last count / first: {'-' if ratio is None else f'{ratio:.2f}'} (goal 0.8 or more)"
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
    warmup_s = latency.get("warmup", {}).get("seconds", 0)
    console.print(
        f"latency: {latency['offered_events_per_s']:,.0f} events/s offered "
        f"({latency['rate_source']}), {latency['achieved_events_per_s']:,.0f} achieved "
        f"over {latency['seconds']:.0f} s after a warm-up of {warmup_s:.0f} s; "
        f"CPU worker {_cores(cpu.get('worker'))}, "
        f"load generator {_cores(cpu.get('bench'))}, broker {_cores(cpu.get('broker'))}, "
        f"redis {_cores(cpu.get('redis'))}"
    )
    console.print(f"event to tag change on the topic: {_percentiles(latency['topic'])}")
    bench_gc = latency.get("bench_gc")
    if bench_gc:
        console.print(
            f"load generator's garbage collections: {bench_gc['collections']}, "
            f"{bench_gc['total_ms']:,.0f} ms in all, longest {bench_gc['longest_ms']:,.0f} ms"
        )
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


def _print_faust_latency(console: Console, latency: dict[str, Any] | None) -> None:
    """Print the latency of the publishing Faust agent under the same load as the worker's."""
    if not latency:
        return
    cpu = latency.get("cpu_cores", {})
    console.print(
        f"Faust agent latency: {latency['offered_events_per_s']:,.0f} events/s offered, "
        f"{latency['achieved_events_per_s']:,.0f} achieved over {latency['seconds']:.0f} s; "
        f"CPU agent {_cores(cpu.get('worker'))}, load generator {_cores(cpu.get('bench'))}, "
        f"broker {_cores(cpu.get('broker'))}; records published per event: "
        f"{latency.get('outputs_per_event', 1.0):g} ({latency.get('outputs_source', 'default')})"
    )
    console.print(f"event to published record on the topic: {_percentiles(latency['topic'])}")
