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
    console = Console()
    console.print(table)
    for name, value in figures.get("ratios", {}).items():
        console.print(f"{name}: {value:.1%}")
