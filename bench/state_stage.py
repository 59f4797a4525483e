"""State size and changelog recovery, measured after the worker stage caught up.

State size comes from the raw records of the customers table's changelog.
Recovery runs a second worker with the same app id and an empty data folder,
so it rebuilds its tables from the changelog topics.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
import structlog
from kafka import TopicPartition

from bench.kafka_io import rss_bytes
from bench.worker_stage import get_path, start_worker, stop_worker
from tagger.streams.config import Settings
from tagger.streams.customers_changelog import changelog_topic
from tagger.streams.embedded import free_port
from tagger.streams.readers import standalone_consumer

if TYPE_CHECKING:
    from bench.runner import Context

__all__ = ["measure_recovery", "measure_state"]

log = structlog.get_logger(__name__)

_POLL_TIMEOUT_MS = 300
_MAX_RECORDS_PER_POLL = 5_000
# The embedded broker reports some end offsets too low, so reading stops only
# after this many empty polls in a row past the reported ends.
_EMPTY_POLLS_TO_STOP = 3
# Reading gives up after this many empty polls in a row (about a minute).
_STALLED_POLLS = 200
_POLL_INTERVAL_S = 0.1
# How long to wait for the `recovery finished` log line after the partitions are ready.
_RECOVERY_LINE_WAIT_S = 15.0
# One `key=value` field of a console log line (structlog's ConsoleRenderer).
_FIELD = re.compile(r"(\w+)=(\S+)")


def measure_state(settings: Settings, worker_rss_bytes: int | None) -> dict[str, Any]:
    """Read the customers changelog from the start and return its size figures.

    Bytes per customer are key plus value bytes of the last record of each
    key. A record with a null value (a tombstone) deletes its customer.
    """
    topic = changelog_topic(settings)
    consumer = standalone_consumer(settings, "bench-state")
    # Key -> value of the last record of each customer.
    latest: dict[bytes, bytes] = {}
    records = 0
    total_bytes = 0
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise click.ClickException(
                f"changelog topic {topic!r} not found: the worker wrote no state"
            )
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        empty = 0
        while True:
            batch = consumer.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_RECORDS_PER_POLL)
            if batch:
                empty = 0
                for partition_records in batch.values():
                    for record in partition_records:
                        records += 1
                        key = bytes(record.key or b"")
                        value = record.value
                        total_bytes += len(key) + (len(value) if value is not None else 0)
                        if value is None:
                            latest.pop(key, None)
                        else:
                            latest[key] = bytes(value)
                continue
            empty += 1
            passed = all(consumer.position(tp) >= int(end) for tp, end in ends.items())
            if empty >= _EMPTY_POLLS_TO_STOP and passed:
                break
            if empty >= _STALLED_POLLS:
                raise click.ClickException(
                    f"reading {topic!r} stalled before its end offsets: is the broker up?"
                )
    finally:
        consumer.close()

    sizes = sorted(len(key) + len(value) for key, value in latest.items())
    figures: dict[str, Any] = {
        "changelog_topic": topic,
        "changelog_records": records,
        "changelog_bytes": total_bytes,
        "customers": len(sizes),
    }
    if sizes:
        figures["bytes_per_customer"] = {
            "mean": round(statistics.fmean(sizes), 1),
            "p50": _percentile(sizes, 0.50),
            "p95": _percentile(sizes, 0.95),
            "max": sizes[-1],
        }
        if worker_rss_bytes is not None:
            # The whole process's RSS, baseline included, scaled linearly.
            figures["rss_bytes_per_100k_customers"] = round(worker_rss_bytes * 100_000 / len(sizes))
        figures["field_bytes_per_customer"] = _field_bytes(latest.values())
    log.info("changelog read", topic=topic, records=records, customers=len(sizes))
    return figures


def _field_bytes(values: Iterable[bytes]) -> dict[str, float]:
    """Return the mean bytes per customer of each top-level field of the JSON state.

    A field's bytes are its compact JSON `"name":value,`, so the figures add
    up to the value size less one byte. Values that are not JSON objects
    are counted under `(not an object)`.
    """
    totals: dict[str, int] = {}
    count = 0
    for value in values:
        count += 1
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            totals["(not an object)"] = totals.get("(not an object)", 0) + len(value)
            continue
        for name, field in data.items():
            size = len(orjson.dumps({name: field})) - 1
            totals[name] = totals.get(name, 0) + size
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    return {name: round(total / count, 1) for name, total in ranked}


def _percentile(sorted_values: list[int], fraction: float) -> int:
    """Return the nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def measure_recovery(
    context: Context, settings: Settings, customers: int, *, timeout_s: float
) -> dict[str, Any]:
    """Start a second worker on the same app id with an empty data folder and time its recovery.

    `seconds_to_ready` runs from the process start to the first /status poll
    that shows every partition assigned and its index ready (group join
    included). The restored count and rate come from the worker's
    `recovery finished` log lines for active tables. RSS is sampled at the
    first /status response (tables still empty) and when ready, and the growth
    between them is scaled to 100,000 customers.
    """
    data_dir = Path(context.workdir / "recovery-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    recovery_settings = dataclasses.replace(settings, data_dir=str(data_dir), web_port=free_port())
    log_path = context.workdir / "recovery-worker.log"
    started = time.monotonic()
    process = start_worker(recovery_settings, log_path, profile_output=None)
    try:
        ready = _wait_ready(context, recovery_settings, process, started, timeout_s)
        finished = _wait_recovery_lines(log_path)
    finally:
        stop_worker(process, profiled=False)

    figures: dict[str, Any] = {
        "seconds_to_ready": round(ready.seconds, 2),
        "rss_bytes_before_recovery": ready.rss_before,
        "rss_bytes_after_recovery": ready.rss_after,
    }
    if ready.rss_before is not None and ready.rss_after is not None and customers:
        growth = ready.rss_after - ready.rss_before
        figures["rss_growth_per_100k_customers"] = round(growth * 100_000 / customers)
    if finished:
        # More than one line when a rebalance started a second recovery.
        restored = sum(int(line.get("restored", 0)) for line in finished)
        recovery_seconds = sum(float(line.get("seconds", 0)) for line in finished)
        figures["recoveries"] = len(finished)
        figures["restored"] = restored
        figures["recovery_seconds"] = round(recovery_seconds, 2)
        figures["records_per_s"] = (
            round(restored / recovery_seconds, 1) if recovery_seconds else None
        )
    else:
        log.warning("no recovery finished line in the worker log", log=str(log_path))
    return figures


@dataclasses.dataclass(slots=True)
class _Ready:
    seconds: float
    rss_before: int | None
    rss_after: int | None


def _wait_ready(
    context: Context, settings: Settings, process: Any, started: float, timeout_s: float
) -> _Ready:
    deadline = started + timeout_s
    rss_before: int | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(
                f"recovery worker exited with code {process.returncode}; "
                f"see {context.workdir}/recovery-worker.log"
            )
        body = get_path(settings, "/status")
        status = orjson.loads(body) if body else None
        if status is not None and rss_before is None:
            rss_before = rss_bytes(process.pid)
        partitions = (status or {}).get("partitions", {})
        ready = len(partitions) >= context.partitions and all(
            view["index_ready"] for view in partitions.values()
        )
        if ready:
            return _Ready(time.monotonic() - started, rss_before, rss_bytes(process.pid))
        time.sleep(_POLL_INTERVAL_S)
    raise click.ClickException(f"recovery worker was not ready within {timeout_s:.0f} s")


def _wait_recovery_lines(log_path: Path) -> list[dict[str, str]]:
    """Wait for the `recovery finished` line, which the worker logs up to a sample interval
    (about a second) after its partitions are ready."""
    deadline = time.monotonic() + _RECOVERY_LINE_WAIT_S
    while True:
        lines = _recovery_lines(log_path)
        if lines or time.monotonic() >= deadline:
            return lines
        time.sleep(_POLL_INTERVAL_S)


def _recovery_lines(log_path: Path) -> list[dict[str, str]]:
    """Return the fields of each `recovery finished` line for active tables in the log."""
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "recovery finished" not in line:
            continue
        fields = dict(_FIELD.findall(line))
        if fields.get("kind") == "active":
            lines.append(fields)
    return lines
